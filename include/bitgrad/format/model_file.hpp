// The bit-packed mixed-precision model file (.bgm), specified in docs/model-format.md. This
// umbrella includes its three parts:
//   format/model.hpp     the model description: pure data (shapes, operations, tensors)
//   format/validate.hpp  what a valid model is: shape inference and consistency checks
//   format/codec.hpp     its bytes: to_bytes / from_bytes, write_model_file / read_model_file
//
//   model_file m = format::read_model_file("model.bgm");        // or from_bytes(span)
//   std::vector<std::uint8_t> b = format::to_bytes(m);          // checks by reading it back
//   format::write_model_file("model.bgm", m);                   // atomic (temp + rename)
//
// Anything malformed throws bitgrad::format_error(file, offset, reason); the reader never reads
// outside the span it was given (fuzzed: tests/fuzz/fuzz_model_file.cpp). No training types.
#pragma once

#include <bitgrad/format/codec.hpp>
#include <bitgrad/format/model.hpp>
#include <bitgrad/format/validate.hpp>
