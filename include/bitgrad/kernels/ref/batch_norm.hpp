// Reference batch normalisation kernels: the formulas as plain loops, oracles for
// kernels/batch_norm.hpp (layout and formulas there). The batch_norm_relu_* twins are the unfused
// kernels with y = max(0, y) after the forward and dy = (y > 0 ? dy : 0) before the backward;
// the batch_norm_add_relu_* forwards add the skip operand before the ReLU.
// The optimised backward kernels can also recompute xhat from x (batch_norm_xhat); their oracle
// is then these kernels given the xhat of ref::batch_norm_fprop.
#pragma once

#include <bitgrad/kernels/ref/elementwise.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

namespace bitgrad::ref {

template <class T>
void batch_norm_running_update(std::size_t channels, T momentum, T unbias, const T* mean,
                               const T* var, T* running_mean, T* running_var) {
  for (std::size_t c = 0; c < channels; ++c) {
    running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = (T(1) - momentum) * running_var[c] + momentum * var[c] * unbias;
  }
}

template <class T>
void batch_norm_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                      const T* mean, const T* var, T eps, const T* gamma, const T* beta, T* inv_std,
                      T* xhat, T* y) {
  for (std::size_t c = 0; c < channels; ++c) inv_std[c] = T(1) / std::sqrt(var[c] + eps);
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t c = 0; c < channels; ++c)
      for (std::size_t k = 0; k < plane; ++k) {
        const std::size_t i = (n * channels + c) * plane + k;
        xhat[i] = (x[i] - mean[c]) * inv_std[c];
        y[i] = gamma[c] * xhat[i] + beta[c];
      }
}

/// channel_mean_var, then batch_norm_fprop (xhat not null here).
template <class T>
void batch_norm_train_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                            T eps, const T* gamma, const T* beta, T* mean, T* var, T* inv_std,
                            T* xhat, T* y) {
  channel_mean_var(batch, channels, plane, x, mean, var);
  batch_norm_fprop(batch, channels, plane, x, mean, var, eps, gamma, beta, inv_std, xhat, y);
}

template <class T>
void batch_norm_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const T* xhat, const T* gamma, const T* inv_std, bool batch_stats, T* dx,
                      T* dgamma, T* dbeta) {
  const T m = T(batch * plane);
  for (std::size_t c = 0; c < channels; ++c) {
    T sum_dy = 0, sum_dy_xhat = 0;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) {
        const std::size_t i = (n * channels + c) * plane + k;
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * xhat[i];
      }
    dgamma[c] += sum_dy_xhat;
    dbeta[c] += sum_dy;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) {
        const std::size_t i = (n * channels + c) * plane + k;
        dx[i] = batch_stats
                    ? gamma[c] * inv_std[c] / m * (m * dy[i] - sum_dy - xhat[i] * sum_dy_xhat)
                    : gamma[c] * inv_std[c] * dy[i];
      }
  }
}

template <class T>
void batch_norm_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                          const T* xhat, T* sum_dy, T* sum_dy_xhat) {
  for (std::size_t c = 0; c < channels; ++c) {
    sum_dy[c] = 0;
    sum_dy_xhat[c] = 0;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) {
        const std::size_t i = (n * channels + c) * plane + k;
        sum_dy[c] += dy[i];
        sum_dy_xhat[c] += dy[i] * xhat[i];
      }
  }
}

template <class T>
void batch_norm_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const T* xhat, const T* gamma, const T* inv_std, T count, const T* sum_dy,
                      const T* sum_dy_xhat, bool batch_stats, T* dx) {
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t c = 0; c < channels; ++c)
      for (std::size_t k = 0; k < plane; ++k) {
        const std::size_t i = (n * channels + c) * plane + k;
        dx[i] = batch_stats ? gamma[c] * inv_std[c] / count *
                                  (count * dy[i] - sum_dy[c] - xhat[i] * sum_dy_xhat[c])
                            : gamma[c] * inv_std[c] * dy[i];
      }
}

template <class T>
void batch_norm_relu_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                           const T* mean, const T* var, T eps, const T* gamma, const T* beta,
                           T* inv_std, T* xhat, T* y) {
  batch_norm_fprop(batch, channels, plane, x, mean, var, eps, gamma, beta, inv_std, xhat, y);
  for (std::size_t i = 0; i < batch * channels * plane; ++i) y[i] = y[i] <= T(0) ? T(0) : y[i];
}

template <class T>
void batch_norm_relu_train_fprop(std::size_t batch, std::size_t channels, std::size_t plane,
                                 const T* x, T eps, const T* gamma, const T* beta, T* mean, T* var,
                                 T* inv_std, T* xhat, T* y) {
  channel_mean_var(batch, channels, plane, x, mean, var);
  batch_norm_relu_fprop(batch, channels, plane, x, mean, var, eps, gamma, beta, inv_std, xhat, y);
}

/// batch_norm_fprop, then y = max(0, y + skip).
template <class T>
void batch_norm_add_relu_fprop(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* x, const T* skip, const T* mean, const T* var, T eps,
                               const T* gamma, const T* beta, T* inv_std, T* xhat, T* y) {
  batch_norm_fprop(batch, channels, plane, x, mean, var, eps, gamma, beta, inv_std, xhat, y);
  for (std::size_t i = 0; i < batch * channels * plane; ++i) {
    const T v = y[i] + skip[i];
    y[i] = v <= T(0) ? T(0) : v;
  }
}

template <class T>
void batch_norm_add_relu_train_fprop(std::size_t batch, std::size_t channels, std::size_t plane,
                                     const T* x, const T* skip, T eps, const T* gamma,
                                     const T* beta, T* mean, T* var, T* inv_std, T* xhat, T* y) {
  channel_mean_var(batch, channels, plane, x, mean, var);
  batch_norm_add_relu_fprop(batch, channels, plane, x, skip, mean, var, eps, gamma, beta, inv_std,
                            xhat, y);
}

namespace detail {
/// dy where y > 0, else 0: the ReLU's backward in front of the batch norm's.
template <class T>
std::vector<T> relu_masked(std::size_t n, const T* dy, const T* y) {
  std::vector<T> d(n);
  for (std::size_t i = 0; i < n; ++i) d[i] = y[i] > T(0) ? dy[i] : T(0);
  return d;
}
} // namespace detail

template <class T>
void batch_norm_relu_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* dy, const T* xhat, const T* y, T* sum_dy, T* sum_dy_xhat) {
  const std::vector<T> d = detail::relu_masked(batch * channels * plane, dy, y);
  batch_norm_grad_sums(batch, channels, plane, d.data(), xhat, sum_dy, sum_dy_xhat);
}

template <class T>
void batch_norm_relu_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const T* xhat, const T* y, const T* gamma, const T* inv_std, T count,
                           const T* sum_dy, const T* sum_dy_xhat, bool batch_stats, T* dx) {
  const std::vector<T> d = detail::relu_masked(batch * channels * plane, dy, y);
  batch_norm_dgrad(batch, channels, plane, d.data(), xhat, gamma, inv_std, count, sum_dy,
                   sum_dy_xhat, batch_stats, dx);
}

template <class T>
void batch_norm_relu_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const T* xhat, const T* y, const T* gamma, const T* inv_std,
                           bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  const std::vector<T> d = detail::relu_masked(batch * channels * plane, dy, y);
  batch_norm_bprop(batch, channels, plane, d.data(), xhat, gamma, inv_std, batch_stats, dx, dgamma,
                   dbeta);
}

} // namespace bitgrad::ref
