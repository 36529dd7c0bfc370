// Trainable parameters as optimizers and reports see them.
#pragma once

#include <cstddef>
#include <string>

namespace bitgrad {

/// What a parameter is, so optimizers can treat kinds differently (bitwidths typically get
/// their own learning rate and no weight decay).
enum class param_kind { weight, bias, bitwidth, scale, norm };

inline const char* to_string(param_kind kind) {
  switch (kind) {
  case param_kind::weight:
    return "weight";
  case param_kind::bias:
    return "bias";
  case param_kind::bitwidth:
    return "bitwidth";
  case param_kind::scale:
    return "scale";
  case param_kind::norm:
    return "norm";
  }
  return "?";
}

/// The bitwidth parameters hold bitwidths in [1, 16] (frac_bits' and step_bits' `bits`), except
/// noise_bits' `logit`, which parameterises its bitwidth as b_min + (b_max - b_min) sigmoid(l)
/// and is kept in [-bitwidth_logit_limit, bitwidth_logit_limit] by its project().
inline constexpr double bitwidth_logit_limit = 10.0;

/// Whether a bitwidth parameter is a logit (noise_bits' `logit`, by its local or prefixed name).
inline bool is_bitwidth_logit(const std::string& name) {
  return name.size() >= 5 && name.compare(name.size() - 5, 5, "logit") == 0;
}

/// Whether a value is in range for the bitwidth parameter `name`.
inline bool bitwidth_value_in_range(const std::string& name, double v) {
  return is_bitwidth_logit(name) ? v >= -bitwidth_logit_limit && v <= bitwidth_logit_limit
                                 : v >= 1 && v <= 16;
}

/// A view of one parameter tensor and its gradient (same length, contiguous).
/// `name` is the local name inside its owner ("weight", "bits"); visitors prefix layer names.
template <class T>
struct param_ref {
  std::string name;
  T* value;
  T* grad;
  std::size_t size;
  param_kind kind;
};

} // namespace bitgrad
