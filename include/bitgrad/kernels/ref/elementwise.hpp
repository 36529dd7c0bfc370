// Reference elementwise and reduction kernels: plain loops, oracles for kernels/elementwise.hpp.
// Formulas: see kernels/elementwise.hpp.
#pragma once

#include <bitgrad/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

namespace bitgrad::ref {

template <class T>
void relu_fprop(std::size_t n, const T* x, T* y) {
  for (std::size_t i = 0; i < n; ++i) y[i] = x[i] <= T(0) ? T(0) : x[i]; // NaN stays NaN
}

template <class T>
void relu_bprop(std::size_t n, const T* y_or_x, const T* dy, T* dx) {
  for (std::size_t i = 0; i < n; ++i) dx[i] = y_or_x[i] > T(0) ? dy[i] : T(0);
}

template <class T>
void relu6_fprop(std::size_t n, const T* x, T* y) {
  for (std::size_t i = 0; i < n; ++i) // NaN stays NaN
    y[i] = x[i] <= T(0) ? T(0) : (x[i] > T(6) ? T(6) : x[i]);
}

template <class T>
void relu6_bprop(std::size_t n, const T* x, const T* dy, T* dx) {
  for (std::size_t i = 0; i < n; ++i) dx[i] = (x[i] > T(0) && x[i] < T(6)) ? dy[i] : T(0);
}

template <class T>
void bias_grad_rows(std::size_t rows, std::size_t cols, const T* dy, T* dbias) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) dbias[c] += dy[r * cols + c];
}

/// Two-pass: mean first, then the mean of squared deviations (biased, divisor batch*plane).
template <class T>
void channel_mean_var(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                      T* mean, T* var) {
  const T count = T(batch * plane);
  for (std::size_t c = 0; c < channels; ++c) {
    T sum = 0;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) sum += x[(n * channels + c) * plane + k];
    const T m = sum / count;
    T sq = 0;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) {
        const T d = x[(n * channels + c) * plane + k] - m;
        sq += d * d;
      }
    mean[c] = m;
    var[c] = sq / count;
  }
}

namespace detail {
inline void check_label(std::int32_t label, std::size_t classes, std::size_t row) {
  if (label < 0 || std::size_t(label) >= classes)
    throw config_error("softmax_cross_entropy: label " + std::to_string(label) + " of sample " +
                       std::to_string(row) + " is out of range [0, " + std::to_string(classes) +
                       ")");
}
} // namespace detail

template <class T>
T softmax_cross_entropy_fprop(std::size_t batch, std::size_t classes, const T* logits,
                              const std::int32_t* labels, T* probs, double smoothing = 0) {
  const T label_smoothing = static_cast<T>(smoothing);
  const T off = label_smoothing / T(classes), on = T(1) - label_smoothing + off;
  T total = 0;
  for (std::size_t r = 0; r < batch; ++r) {
    detail::check_label(labels[r], classes, r);
    const T* z = logits + r * classes;
    T* p = probs + r * classes;
    T mx = z[0];
    for (std::size_t c = 1; c < classes; ++c) mx = std::max(mx, z[c]);
    T sum = 0;
    for (std::size_t c = 0; c < classes; ++c) sum += std::exp(z[c] - mx);
    const T log_sum = std::log(sum);
    T loss = 0;
    for (std::size_t c = 0; c < classes; ++c) {
      const T log_p = z[c] - mx - log_sum;
      p[c] = std::exp(log_p);
      loss -= (std::size_t(labels[r]) == c ? on : off) * log_p;
    }
    total += loss;
  }
  return total / T(batch);
}

template <class T>
void softmax_cross_entropy_bprop(std::size_t batch, std::size_t classes, const T* probs,
                                 const std::int32_t* labels, T* dlogits, double smoothing = 0) {
  const T label_smoothing = static_cast<T>(smoothing);
  const T off = label_smoothing / T(classes), on = T(1) - label_smoothing + off;
  for (std::size_t r = 0; r < batch; ++r) {
    detail::check_label(labels[r], classes, r);
    for (std::size_t c = 0; c < classes; ++c)
      dlogits[r * classes + c] =
          (probs[r * classes + c] - (std::size_t(labels[r]) == c ? on : off)) / T(batch);
  }
}

} // namespace bitgrad::ref
