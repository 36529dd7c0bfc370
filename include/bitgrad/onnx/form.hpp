// The three ONNX forms bitgrad exports (docs/onnx.md): their names and the opset and IR
// version each is written for.
#pragma once

#include <bitgrad/core/error.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace bitgrad::onnx {

/// float32: decoded weights. qdq: int8 codes and QuantizeLinear / DequantizeLinear, opset 13.
/// qdq_int4: as qdq with int4 weights where every group has <= 4 bits, opset 21.
enum class form { float32, qdq, qdq_int4 };

/// "float32", "qdq" or "qdq-int4" (the CLI's --form values).
inline const char* to_string(form f) {
  switch (f) {
  case form::float32:
    return "float32";
  case form::qdq:
    return "qdq";
  case form::qdq_int4:
    return "qdq-int4";
  }
  return "?";
}

inline form parse_form(std::string_view s) {
  if (s == "float32" || s == "float") return form::float32;
  if (s == "qdq") return form::qdq;
  if (s == "qdq-int4") return form::qdq_int4;
  throw config_error("onnx export: unknown form \"" + std::string(s) +
                     "\" (expected float32, qdq or qdq-int4)");
}

/// The default-domain opset a form is written for, and the IR version that goes with it.
inline std::int64_t opset_of(form f) {
  return f == form::qdq_int4 ? 21 : 13;
}
inline std::int64_t ir_version_of(form f) {
  return f == form::qdq_int4 ? 10 : 7;
}

} // namespace bitgrad::onnx
