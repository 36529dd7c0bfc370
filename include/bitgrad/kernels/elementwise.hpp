// Elementwise activations and the small reductions layers need.
//
//   relu   : y = max(0, x);            bprop dx = dy where x > 0 (equivalently y > 0), else 0
//   relu6  : y = min(6, max(0, x));    bprop dx = dy where 0 < x < 6, else 0 (the kinks at 0 and
//                                      6 get gradient 0)
//   Both keep NaN (relu(NaN) = relu6(NaN) = NaN, as in PyTorch), so a NaN in the data or in a
//   weight reaches the loss instead of being hidden as 0 (issue #17).
//   bias_grad_rows  : dbias[c] += sum_r dy[r][c]        (dy rows x cols, batch-major; ACCUMULATES)
//   channel_mean_var: x NCHW viewed as (batch, channels, plane); per channel c over the
//                     batch*plane values: mean = sum/count, var = sum (x - mean)^2 / count
//                     (biased; two passes, so no catastrophic cancellation); large inputs are
//                     split over the threads by channel (the same bits on any count)
//   softmax_cross_entropy (logits: batch x classes, row-major; labels in [0, classes)):
//     p = softmax(z) = exp(z - max z) / sum exp(z - max z)
//     target t = (1 - s) * onehot(label) + s / classes           (s = label_smoothing)
//     loss = mean over the batch of  -sum_c t_c log p_c,  log p_c = z_c - max z - log sum exp(...)
//     dlogits = (p - t) / batch
// Clamps are written as xsimd::select rather than xsimd::max/min: GCC 12 reports a false
// -Wmaybe-uninitialized inside the AVX-512 max/min intrinsics. All pointers are contiguous arrays;
// outputs may alias inputs for the activations. SIMD over simd_batch<T> with scalar tails.
// Reference twins: kernels/ref/elementwise.hpp.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/ref/elementwise.hpp>
#include <bitgrad/kernels/vec.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace bitgrad {

namespace detail {
/// out[i] = f(i) over [0, n) with SIMD steps: fv(batch offset) / fs(scalar index). Every element
/// is computed independently, so large passes are split into contiguous chunks (whole SIMD
/// batches, the last one takes the tail) across the OpenMP threads (kernels/parallel.hpp).
template <class T, class FV, class FS>
inline void elementwise_loop(std::size_t n, FV&& fv, FS&& fs) {
  constexpr std::size_t L = simd_lanes<T>;
  auto run = [&](std::size_t begin, std::size_t end) {
    std::size_t i = begin;
    if constexpr (BITGRAD_HAS_SIMD) {
      for (; i + L <= end; i += L) fv(i);
    }
    for (; i < end; ++i) fs(i);
  };
  const std::size_t batches = n / L;
  const std::size_t threads = n >= elementwise_parallel_min ? batch_threads(batches) : 1;
  if (threads <= 1) {
    run(0, n);
    return;
  }
  parallel_chunks(threads, batches, [&](std::size_t, std::size_t b, std::size_t e) {
    run(b * L, e == batches ? n : e * L);
  });
}
} // namespace detail

template <class T>
void relu_fprop(std::size_t n, const T* x, T* y) {
  using B = simd_batch<T>;
  detail::elementwise_loop<T>(
      n,
      [&](std::size_t i) {
        const B v = B::load_unaligned(x + i);
        xsimd::select(v <= B(T(0)), B(T(0)), v).store_unaligned(y + i);
      },
      [&](std::size_t i) { y[i] = x[i] <= T(0) ? T(0) : x[i]; });
}

template <class T>
void relu_bprop(std::size_t n, const T* y_or_x, const T* dy, T* dx) {
  using B = simd_batch<T>;
  detail::elementwise_loop<T>(
      n,
      [&](std::size_t i) {
        xsimd::select(B::load_unaligned(y_or_x + i) > B(T(0)), B::load_unaligned(dy + i), B(T(0)))
            .store_unaligned(dx + i);
      },
      [&](std::size_t i) { dx[i] = y_or_x[i] > T(0) ? dy[i] : T(0); });
}

template <class T>
void relu6_fprop(std::size_t n, const T* x, T* y) {
  using B = simd_batch<T>;
  detail::elementwise_loop<T>(
      n,
      [&](std::size_t i) {
        const B v = B::load_unaligned(x + i), six(T(6)), zero(T(0));
        xsimd::select(v <= zero, zero, xsimd::select(v > six, six, v)).store_unaligned(y + i);
      },
      [&](std::size_t i) { y[i] = x[i] <= T(0) ? T(0) : (x[i] > T(6) ? T(6) : x[i]); });
}

template <class T>
void relu6_bprop(std::size_t n, const T* x, const T* dy, T* dx) {
  using B = simd_batch<T>;
  detail::elementwise_loop<T>(
      n,
      [&](std::size_t i) {
        const B v = B::load_unaligned(x + i);
        xsimd::select((v > B(T(0))) && (v < B(T(6))), B::load_unaligned(dy + i), B(T(0)))
            .store_unaligned(dx + i);
      },
      [&](std::size_t i) { dx[i] = (x[i] > T(0) && x[i] < T(6)) ? dy[i] : T(0); });
}

/// dbias[c] += sum over rows of dy[r][c], rows in order. From elementwise_parallel_min
/// elements on, the columns are cut into contiguous runs, one per thread; each column still
/// adds its rows in order, so the result is the same bits on any number of threads.
template <class T>
void bias_grad_rows(std::size_t rows, std::size_t cols, const T* dy, T* dbias) {
  const std::size_t threads = rows * cols >= detail::elementwise_parallel_min
                                  ? detail::batch_threads(cols / (4 * simd_lanes<T>))
                                  : 1;
  detail::parallel_chunks(threads, cols, [&](std::size_t, std::size_t b, std::size_t e) {
    for (std::size_t r = 0; r < rows; ++r) detail::axpy(e - b, T(1), dy + r * cols + b, dbias + b);
  });
}

namespace detail {
/// channel_mean_var of channel c alone.
template <class T>
inline void channel_mean_var_of(std::size_t batch, std::size_t channels, std::size_t plane,
                                const T* x, std::size_t c, T& mean, T& var) {
  const T count = T(batch * plane);
  T s = 0;
  for (std::size_t n = 0; n < batch; ++n) s += sum(plane, x + (n * channels + c) * plane);
  const T m = s / count;
  T sq = 0;
  for (std::size_t n = 0; n < batch; ++n) {
    const T* xc = x + (n * channels + c) * plane;
    std::size_t i = 0;
    if constexpr (BITGRAD_HAS_SIMD) {
      using B = simd_batch<T>;
      constexpr std::size_t L = B::size;
      B acc(T(0));
      const B mv(m);
      for (; i + L <= plane; i += L) {
        const B d = B::load_unaligned(xc + i) - mv;
        acc = xsimd::fma(d, d, acc);
      }
      sq += lane_sum(acc);
    }
    for (; i < plane; ++i) sq += (xc[i] - m) * (xc[i] - m);
  }
  mean = m;
  var = sq / count;
}

inline void check_channel_count(std::size_t batch, std::size_t plane) {
  if (batch * plane == 0)
    throw config_error("channel_mean_var: batch*plane must be >= 1, got " + std::to_string(batch) +
                       "*" + std::to_string(plane));
}
} // namespace detail

/// Per channel mean and biased variance over batch*plane values (two passes).
template <class T>
void channel_mean_var(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                      T* mean, T* var) {
  detail::check_channel_count(batch, plane);
  detail::batch_norm_channel_runs(batch, channels, plane, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c)
      detail::channel_mean_var_of(batch, channels, plane, x, c, mean[c], var[c]);
  });
}

/// Mean softmax cross-entropy over the batch; probs = softmax(logits) (kept for bprop).
/// The row sums and the batch total are accumulated in double, in index order (the loss layer's
/// arithmetic, nn/loss.hpp, bit for bit). Throws config_error for a label outside [0, classes).
template <class T>
T softmax_cross_entropy_fprop(std::size_t batch, std::size_t classes, const T* logits,
                              const std::int32_t* labels, T* probs, double label_smoothing = 0) {
  if (batch == 0 || classes == 0)
    throw config_error("softmax_cross_entropy: batch and classes must be >= 1, got " +
                       std::to_string(batch) + " and " + std::to_string(classes));
  const double on = 1.0 - label_smoothing, off = label_smoothing / static_cast<double>(classes);
  double total = 0.0;
  for (std::size_t r = 0; r < batch; ++r) {
    ref::detail::check_label(labels[r], classes, r);
    const T* z = logits + r * classes;
    T* p = probs + r * classes;
    T mx = z[0];
    for (std::size_t c = 1; c < classes; ++c) mx = z[c] > mx ? z[c] : mx;
    double s = 0.0, shifted_sum = 0.0;
    for (std::size_t c = 0; c < classes; ++c) {
      const T shifted = z[c] - mx;
      p[c] = std::exp(shifted);
      s += static_cast<double>(p[c]);
      shifted_sum += static_cast<double>(shifted);
    }
    const double log_s = std::log(s);
    const T inv = static_cast<T>(1.0 / s);
    for (std::size_t c = 0; c < classes; ++c) p[c] *= inv;
    // -sum_c t_c log p_c with log p_c = (z_c - max) - log_s and sum_c t_c = 1:
    //   log_s - (1 - s) (z_label - max) - (s / classes) sum_c (z_c - max)
    const double shifted_label = static_cast<double>(z[labels[r]] - mx);
    total += log_s - on * shifted_label - (label_smoothing > 0 ? off * shifted_sum : 0.0);
  }
  return static_cast<T>(total / static_cast<double>(batch));
}

/// dlogits = (probs - target) / batch; overwritten. The constants 1/batch, s/classes and 1 - s
/// are formed in double and rounded to T once (as the loss layer does).
template <class T>
void softmax_cross_entropy_bprop(std::size_t batch, std::size_t classes, const T* probs,
                                 const std::int32_t* labels, T* dlogits,
                                 double label_smoothing = 0) {
  const T inv_batch = static_cast<T>(1.0 / static_cast<double>(batch));
  const T off = static_cast<T>(label_smoothing / static_cast<double>(classes));
  const T on = static_cast<T>(1.0 - label_smoothing);
  for (std::size_t r = 0; r < batch; ++r) {
    ref::detail::check_label(labels[r], classes, r);
    const T* p = probs + r * classes;
    T* g = dlogits + r * classes;
    for (std::size_t c = 0; c < classes; ++c) g[c] = (p[c] - off) * inv_batch;
    g[labels[r]] -= on * inv_batch;
  }
}

} // namespace bitgrad
