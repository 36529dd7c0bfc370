// Losses: fused softmax cross-entropy and mean squared error, plus argmax accuracy.
//
// softmax_cross_entropy (logits z: N x C, labels y_i in [0, C), label smoothing eps in [0, 1)):
//   p_ic   = exp(z_ic - max_c z_ic) / sum_c exp(z_ic - max_c z_ic)   (stable for any z)
//   q_ic   = (1 - eps) [c == y_i] + eps / C                          (the smoothed target)
//   L      = (1/N) sum_i sum_c -q_ic log p_ic
//   dL/dz  = (p - q) / N
// The log-probabilities are formed as (z - max) - log(sum exp(z - max)), so no log(0) occurs
// even when a probability underflows.
//
// mse_loss (prediction and target of the same shape, n elements in all):
//   L = (1/n) sum (pred - target)^2,   dL/dpred = 2 (pred - target) / n     (torch's "mean")
//
// forward() keeps what backward() needs; backward() returns a buffer the loss owns, valid
// until the next forward.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bitgrad::nn {

namespace detail {

/// Throws unless logits is a non-empty N x C batch with N labels, each in [0, C).
template <class T>
void check_labels(const char* who, const tensor2<T>& logits,
                  const std::vector<std::int32_t>& labels) {
  const std::size_t n = logits.shape(0), c = logits.shape(1);
  if (c == 0)
    throw shape_error(std::string(who) + ": logits of shape " + shape_string(logits.shape()) +
                      " have no classes");
  if (labels.size() != n)
    throw shape_error(std::string(who) + ": " + std::to_string(labels.size()) +
                      " labels for a batch of " + std::to_string(n) + " (logits of shape " +
                      shape_string(logits.shape()) + ")");
  for (std::size_t i = 0; i < n; ++i)
    if (labels[i] < 0 || static_cast<std::size_t>(labels[i]) >= c)
      throw config_error(std::string(who) + ": label " + std::to_string(labels[i]) + " of sample " +
                         std::to_string(i) + " is outside [0, " + std::to_string(c) + ")");
}

} // namespace detail

/// Softmax followed by cross-entropy, fused. T: element type (float or double).
template <class T>
class softmax_cross_entropy {
public:
  using value_type = T;

  /// label_smoothing: eps in [0, 1); the target is (1 - eps) onehot + eps / C.
  explicit softmax_cross_entropy(double label_smoothing = 0.0) : eps_(label_smoothing) {
    if (!(label_smoothing >= 0.0 && label_smoothing < 1.0))
      throw config_error("softmax_cross_entropy: label smoothing must be in [0, 1), got " +
                         std::to_string(label_smoothing));
  }

  /// The mean loss over the batch; keeps the probabilities and the labels for backward().
  T forward(const tensor2<T>& logits, const std::vector<std::int32_t>& labels) {
    detail::check_labels("softmax_cross_entropy", logits, labels);
    const std::size_t n = logits.shape(0), c = logits.shape(1);
    if (n == 0) throw shape_error("softmax_cross_entropy: empty batch");
    if (probs_.shape(0) != n || probs_.shape(1) != c) probs_.resize({n, c});
    labels_ = labels;
    const double on = 1.0 - eps_;
    const double off = eps_ / static_cast<double>(c);
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const T* z = &logits(i, 0);
      T* p = &probs_(i, 0);
      T zmax = z[0];
      for (std::size_t k = 1; k < c; ++k) zmax = z[k] > zmax ? z[k] : zmax;
      double sum = 0.0, shifted_sum = 0.0;
      for (std::size_t k = 0; k < c; ++k) {
        const T s = z[k] - zmax;
        p[k] = std::exp(s);
        sum += static_cast<double>(p[k]);
        shifted_sum += static_cast<double>(s);
      }
      const double log_sum = std::log(sum);
      const T inv = static_cast<T>(1.0 / sum);
      for (std::size_t k = 0; k < c; ++k) p[k] *= inv;
      // -sum_c q_c log p_c with log p_c = s_c - log_sum and sum_c q_c = 1.
      const double s_label = static_cast<double>(z[labels[i]] - zmax);
      total += log_sum - on * s_label - (eps_ > 0 ? off * shifted_sum : 0.0);
    }
    ready_ = true;
    return static_cast<T>(total / static_cast<double>(n));
  }

  /// dL/dlogits for the last forward, (p - q) / N.
  const tensor2<T>& backward() {
    if (!ready_) throw config_error("softmax_cross_entropy: backward() before forward()");
    const std::size_t n = probs_.shape(0), c = probs_.shape(1);
    if (grad_.shape(0) != n || grad_.shape(1) != c) grad_.resize({n, c});
    const T inv_n = static_cast<T>(1.0 / static_cast<double>(n));
    const T off = static_cast<T>(eps_ / static_cast<double>(c));
    const T on = static_cast<T>(1.0 - eps_);
    for (std::size_t i = 0; i < n; ++i) {
      const T* p = &probs_(i, 0);
      T* g = &grad_(i, 0);
      for (std::size_t k = 0; k < c; ++k) g[k] = (p[k] - off) * inv_n;
      g[labels_[i]] -= on * inv_n;
    }
    return grad_;
  }

  /// Softmax probabilities of the last forward (N x C).
  const tensor2<T>& probabilities() const { return probs_; }
  double label_smoothing() const { return eps_; }

private:
  double eps_;
  tensor2<T> probs_ = tensor2<T>::from_shape({0, 0});
  tensor2<T> grad_ = tensor2<T>::from_shape({0, 0});
  std::vector<std::int32_t> labels_;
  bool ready_ = false;
};

/// Mean squared error over all elements. T: element type (float or double).
template <class T>
class mse_loss {
public:
  using value_type = T;

  /// The mean of (pred - target)^2 over all elements; keeps the difference for backward().
  T forward(const tensor2<T>& pred, const tensor2<T>& target) {
    if (pred.shape(0) != target.shape(0) || pred.shape(1) != target.shape(1))
      throw shape_error("mse_loss: prediction of shape " + shape_string(pred.shape()) +
                        " and target of shape " + shape_string(target.shape()) + " differ");
    if (pred.size() == 0) throw shape_error("mse_loss: empty prediction");
    if (diff_.shape(0) != pred.shape(0) || diff_.shape(1) != pred.shape(1))
      diff_.resize({pred.shape(0), pred.shape(1)});
    const T* p = pred.data();
    const T* t = target.data();
    T* d = diff_.data();
    double total = 0.0;
    for (std::size_t k = 0, n = pred.size(); k < n; ++k) {
      d[k] = p[k] - t[k];
      total += static_cast<double>(d[k]) * static_cast<double>(d[k]);
    }
    ready_ = true;
    return static_cast<T>(total / static_cast<double>(pred.size()));
  }

  /// dL/dpred for the last forward, 2 (pred - target) / n.
  const tensor2<T>& backward() {
    if (!ready_) throw config_error("mse_loss: backward() before forward()");
    if (grad_.shape(0) != diff_.shape(0) || grad_.shape(1) != diff_.shape(1))
      grad_.resize({diff_.shape(0), diff_.shape(1)});
    const T scale = static_cast<T>(2.0 / static_cast<double>(diff_.size()));
    const T* d = diff_.data();
    T* g = grad_.data();
    for (std::size_t k = 0, n = diff_.size(); k < n; ++k) g[k] = scale * d[k];
    return grad_;
  }

private:
  tensor2<T> diff_ = tensor2<T>::from_shape({0, 0});
  tensor2<T> grad_ = tensor2<T>::from_shape({0, 0});
  bool ready_ = false;
};

/// Index of the largest value of row i (ties: the lowest index).
template <class T>
std::size_t argmax_row(const tensor2<T>& x, std::size_t i) {
  const T* row = &x(i, 0);
  std::size_t best = 0;
  for (std::size_t k = 1, c = x.shape(1); k < c; ++k)
    if (row[k] > row[best]) best = k;
  return best;
}

/// How many rows of `logits` have their argmax (ties: lowest index) at the label.
template <class T>
std::size_t count_correct(const tensor2<T>& logits, const std::vector<std::int32_t>& labels) {
  detail::check_labels("count_correct", logits, labels);
  std::size_t correct = 0;
  for (std::size_t i = 0, n = logits.shape(0); i < n; ++i)
    correct += argmax_row(logits, i) == static_cast<std::size_t>(labels[i]) ? 1 : 0;
  return correct;
}

/// Fraction of rows classified correctly, count_correct / N (N must be > 0).
template <class T>
double accuracy(const tensor2<T>& logits, const std::vector<std::int32_t>& labels) {
  if (logits.shape(0) == 0) throw shape_error("accuracy: empty batch");
  return static_cast<double>(count_correct(logits, labels)) / static_cast<double>(logits.shape(0));
}

} // namespace bitgrad::nn
