// Batch normalisation kernels: the arithmetic of nn::batch_norm, per channel.
//
// Layout: x, xhat, y, dy, dx are (batch, channels, plane) row-major: NCHW with plane = H*W, or
// (N, F) with plane = 1. Per-channel arrays (mean, var, inv_std, gamma, beta, ...) have
// `channels` entries. m = batch * plane values per channel.
//   batch_norm_running_update: running_mean = (1 - momentum) running_mean + momentum mean
//                              running_var  = (1 - momentum) running_var + momentum var unbias
//                              (unbias = m / (m - 1) in training; the caller passes it)
//   batch_norm_fprop : inv_std = 1 / sqrt(var + eps)
//                      xhat = (x - mean) inv_std,   y = gamma xhat + beta
//   batch_norm_bprop : sum_dy = sum dy,  sum_dy_xhat = sum dy xhat (over the channel's m values)
//                      dgamma += sum_dy_xhat,  dbeta += sum_dy             (ACCUMULATE)
//                      batch statistics: dx = gamma inv_std / m (m dy - sum_dy - xhat sum_dy_xhat)
//                      running statistics (eval): dx = gamma inv_std dy
//   batch_norm_grad_sums: the two sums of batch_norm_bprop alone (written, not accumulated)
//   batch_norm_dgrad   : dx of batch_norm_bprop from given sums and count m (synchronised
//                        batch norm passes the global batch's: nn/batch_norm_sync.hpp);
//                        batch_norm_bprop is batch_norm_grad_sums, then batch_norm_dgrad
// The two sums run over the channel's values in index order, one scalar accumulator each (a
// SIMD tree sum would change the bits of training); the elementwise passes are SIMD over
// simd_batch<T> with scalar tails and compute each element exactly as the scalar formula (no
// fused multiply-add). Reference twins: kernels/ref/batch_norm.hpp.
#pragma once

#include <bitgrad/core/simd.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

namespace bitgrad {

namespace detail {
/// f(batch offset) over whole SIMD batches of [0, n), then fs(index) over the tail.
template <class T, class FV, class FS>
inline void batch_norm_plane_loop(std::size_t n, FV&& fv, FS&& fs) {
  std::size_t i = 0;
  if constexpr (BITGRAD_HAS_SIMD) {
    for (; i + simd_lanes<T> <= n; i += simd_lanes<T>) fv(i);
  }
  for (; i < n; ++i) fs(i);
}
} // namespace detail

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
    for (std::size_t c = 0; c < channels; ++c) {
      const std::size_t off = (n * channels + c) * plane;
      const T m = mean[c], is = inv_std[c], g = gamma[c], b = beta[c];
      const T* xc = x + off;
      T* hc = xhat + off;
      T* yc = y + off;
      detail::batch_norm_plane_loop<T>(
          plane,
          [&](std::size_t k) {
            using B = simd_batch<T>;
            const B h = (B::load_unaligned(xc + k) - B(m)) * B(is);
            h.store_unaligned(hc + k);
            (B(g) * h + B(b)).store_unaligned(yc + k);
          },
          [&](std::size_t k) {
            const T h = (xc[k] - m) * is;
            hc[k] = h;
            yc[k] = g * h + b;
          });
    }
}

template <class T>
void batch_norm_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                          const T* xhat, T* sum_dy, T* sum_dy_xhat) {
  for (std::size_t c = 0; c < channels; ++c) {
    T s = 0, sh = 0;
    for (std::size_t n = 0; n < batch; ++n) {
      const std::size_t off = (n * channels + c) * plane;
      for (std::size_t k = 0; k < plane; ++k) {
        s += dy[off + k];
        sh += dy[off + k] * xhat[off + k];
      }
    }
    sum_dy[c] = s;
    sum_dy_xhat[c] = sh;
  }
}

template <class T>
void batch_norm_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const T* xhat, const T* gamma, const T* inv_std, T count, const T* sum_dy,
                      const T* sum_dy_xhat, bool batch_stats, T* dx) {
  for (std::size_t c = 0; c < channels; ++c) {
    const T gs = gamma[c] * inv_std[c];
    const T scale = gs / count;
    const T s = sum_dy[c], sh = sum_dy_xhat[c];
    for (std::size_t n = 0; n < batch; ++n) {
      const std::size_t off = (n * channels + c) * plane;
      const T* d = dy + off;
      const T* h = xhat + off;
      T* o = dx + off;
      using B = simd_batch<T>;
      if (batch_stats)
        detail::batch_norm_plane_loop<T>(
            plane,
            [&](std::size_t k) {
              const B v = B(scale) * (B(count) * B::load_unaligned(d + k) - B(s) -
                                      B::load_unaligned(h + k) * B(sh));
              v.store_unaligned(o + k);
            },
            [&](std::size_t k) { o[k] = scale * (count * d[k] - s - h[k] * sh); });
      else
        detail::batch_norm_plane_loop<T>(
            plane,
            [&](std::size_t k) { (B(gs) * B::load_unaligned(d + k)).store_unaligned(o + k); },
            [&](std::size_t k) { o[k] = gs * d[k]; });
    }
  }
}

template <class T>
void batch_norm_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const T* xhat, const T* gamma, const T* inv_std, bool batch_stats, T* dx,
                      T* dgamma, T* dbeta) {
  std::vector<T> sums(2 * channels);
  T* sum_dy = sums.data();
  T* sum_dy_xhat = sums.data() + channels;
  batch_norm_grad_sums(batch, channels, plane, dy, xhat, sum_dy, sum_dy_xhat);
  for (std::size_t c = 0; c < channels; ++c) {
    dgamma[c] += sum_dy_xhat[c];
    dbeta[c] += sum_dy[c];
  }
  batch_norm_dgrad(batch, channels, plane, dy, xhat, gamma, inv_std, T(batch * plane), sum_dy,
                   sum_dy_xhat, batch_stats, dx);
}

} // namespace bitgrad
