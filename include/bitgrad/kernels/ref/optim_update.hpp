// Reference optimizer updates: the per-element formulas of kernels/optim_update.hpp (and of
// optim/sgd.hpp, optim/adam.hpp) as plain loops, the oracle for bitgrad::adam_update and
// bitgrad::sgd_update.
#pragma once

#include <cmath>
#include <cstddef>

namespace bitgrad {

/// Adam's constants for one tensor and step (see kernels/optim_update.hpp for the formula).
template <class T>
struct adam_update_params {
  T beta1, beta2;
  T one_minus_beta1, one_minus_beta2; ///< computed in double first, as torch does
  T eps;
  T step_size; ///< lr / (1 - beta1^t)
  T sqrt_bc2;  ///< sqrt(1 - beta2^t)
  T decay = 0; ///< Adam: g += decay * w (L2 decay added to the gradient)
  T keep = 1;  ///< AdamW: w *= keep (1 - lr * decay, before the update)
  bool decoupled = false;
  bool shared_second_moment = false; ///< v takes mean_square instead of g^2
  T mean_square = 0;
};

/// SGD's constants for one tensor (see kernels/optim_update.hpp for the formula).
template <class T>
struct sgd_update_params {
  T lr, decay;
  T momentum = 0; ///< 0: no buffer
  bool nesterov = false;
};

namespace ref {

template <class T>
void adam_update(std::size_t n, T* w, const T* g, T* m, T* v, const adam_update_params<T>& k) {
  // The constants in locals (a store to w could alias k's members otherwise).
  const T beta1 = k.beta1, beta2 = k.beta2, c1 = k.one_minus_beta1, c2 = k.one_minus_beta2;
  const T eps = k.eps, step_size = k.step_size, sqrt_bc2 = k.sqrt_bc2, decay = k.decay;
  const T keep = k.keep, mean_square = k.mean_square;
  const bool decoupled = k.decoupled, shared = k.shared_second_moment;
  for (std::size_t i = 0; i < n; ++i) {
    T gi = g[i];
    if (decoupled)
      w[i] *= keep;
    else
      gi += decay * w[i];
    m[i] = beta1 * m[i] + c1 * gi;
    v[i] = beta2 * v[i] + c2 * (shared ? mean_square : gi * gi);
    w[i] -= step_size * m[i] / (std::sqrt(v[i]) / sqrt_bc2 + eps);
  }
}

/// buf is unused (may be null) when momentum is 0.
template <class T>
void sgd_update(std::size_t n, T* w, const T* g, T* buf, const sgd_update_params<T>& k) {
  const T lr = k.lr, decay = k.decay, momentum = k.momentum;
  const bool nesterov = k.nesterov;
  for (std::size_t i = 0; i < n; ++i) {
    const T d = g[i] + decay * w[i];
    if (momentum == T(0)) {
      w[i] -= lr * d;
      continue;
    }
    buf[i] = momentum * buf[i] + d;
    w[i] -= lr * (nesterov ? d + momentum * buf[i] : buf[i]);
  }
}

} // namespace ref
} // namespace bitgrad
