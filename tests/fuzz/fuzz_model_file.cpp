// libFuzzer target over the model-file reader: any byte string must either parse or throw
// bitgrad::format_error, never crash or hit undefined behaviour (run under ASan + UBSan).
// A file that parses is also decoded (codes, dequantized weights) and re-encoded; the
// re-encoding must parse and re-encode to itself. tests/fuzz/CMakeLists.txt defines
// FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION for fuzz builds, which makes the reader skip its CRC
// checks (see format/model_file.hpp) so mutations reach the section parsers.
//
// Build and run: `make fuzz` (scripts/run-fuzzers.sh), or by hand with clang++-14
// -fsanitize=fuzzer,address,undefined -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, then
// ./fuzz_model_file -max_total_time=60 -max_len=20000 tests/fuzz/corpus/model_file
#include <bitgrad/format/model_file.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const bitgrad::format::model_file m =
        bitgrad::format::from_bytes(std::span<const std::uint8_t>(data, size), "fuzz");
    for (const auto& t : m.tensors) {
      std::vector<float> w(t.element_count());
      t.dequantize(w.data());
    }
    const std::vector<std::uint8_t> again = bitgrad::format::to_bytes(m);
    if (bitgrad::format::to_bytes(bitgrad::format::from_bytes(again)) != again) std::abort();
  } catch (const bitgrad::format_error&) {
  }
  return 0;
}
