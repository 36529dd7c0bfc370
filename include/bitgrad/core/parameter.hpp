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
