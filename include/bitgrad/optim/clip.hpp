// Gradient checks and gradient-norm clipping over a parameter source (see param_groups.hpp).
//
//   norm = sqrt(sum over the selected parameters of sum_k grad[k]^2)    (accumulated in double)
//   if norm > max_norm: grad *= max_norm / (norm + 1e-6)               (torch's clip_grad_norm_)
//
// Parameters whose grad pointer is null are ignored. The element type cannot be deduced from a
// generic visitor lambda, so it is named:
//   auto params = [&](auto&& f) { net.visit_parameters(f); };
//   double norm = optim::clip_grad_norm<float>(params, 5.0);
//   if (auto bad = optim::grad_is_finite<float>(params); !bad.empty()) skip_step(bad);
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/optim/param_groups.hpp>

#include <cmath>
#include <cstddef>
#include <string>

namespace bitgrad::optim {

/// Global L2 norm of the gradients of the parameters whose kind is in `kinds` (default: all).
template <class T, param_source<T> V>
double grad_norm(V&& visit, kind_set kinds = {}) {
  double sum = 0.0;
  visit([&](param_ref<T>& p) {
    if (p.grad == nullptr || !kinds.contains(p.kind)) return;
    for (std::size_t k = 0; k < p.size; ++k) {
      double g = static_cast<double>(p.grad[k]);
      sum += g * g;
    }
  });
  return std::sqrt(sum);
}

/// Scales the selected gradients so that their global L2 norm is at most `max_norm`; returns
/// the norm before clipping. A non-finite norm is returned as it is and no gradient changes
/// (check grad_is_finite() and skip the step).
template <class T, param_source<T> V>
double clip_grad_norm(V&& visit, double max_norm, kind_set kinds = {}) {
  if (!(max_norm > 0.0))
    throw config_error("clip_grad_norm: max_norm must be > 0, got " + std::to_string(max_norm));
  const double norm = grad_norm<T>(visit, kinds);
  if (!std::isfinite(norm) || norm <= max_norm) return norm;
  const T scale = static_cast<T>(max_norm / (norm + 1e-6));
  visit([&](param_ref<T>& p) {
    if (p.grad == nullptr || !kinds.contains(p.kind)) return;
    for (std::size_t k = 0; k < p.size; ++k) p.grad[k] *= scale;
  });
  return norm;
}

/// The name of the first parameter (in visitation order) with a NaN or infinite gradient,
/// or an empty string when every gradient is finite.
template <class T, param_source<T> V>
std::string grad_is_finite(V&& visit) {
  std::string bad;
  visit([&](param_ref<T>& p) {
    if (!bad.empty() || p.grad == nullptr) return;
    for (std::size_t k = 0; k < p.size; ++k)
      if (!std::isfinite(p.grad[k])) {
        bad = p.name.empty() ? "(unnamed parameter)" : p.name;
        return;
      }
  });
  return bad;
}

} // namespace bitgrad::optim
