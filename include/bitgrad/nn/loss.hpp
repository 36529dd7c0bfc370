// Losses: fused softmax cross-entropy and mean squared error, plus argmax accuracy.
//
// softmax_cross_entropy (logits z: N x C, labels y_i in [0, C), label smoothing eps in [0, 1)):
//   p_ic   = exp(z_ic - max_c z_ic) / sum_c exp(z_ic - max_c z_ic)   (stable for any z)
//   q_ic   = (1 - eps) [c == y_i] + eps / C                          (the smoothed target)
//   L      = (1/N) sum_i sum_c -q_ic log p_ic
//   dL/dz  = (p - q) / N
// The log-probabilities are formed as (z - max) - log(sum exp(z - max)), so no log(0) occurs
// even when a probability underflows. The arithmetic is the kernel's (kernels/elementwise.hpp,
// softmax_cross_entropy_fprop / _bprop); the layer checks the input and keeps the buffers.
//
// mse_loss (prediction and target of the same shape, n elements in all):
//   L = (1/n) sum (pred - target)^2,   dL/dpred = 2 (pred - target) / n     (torch's "mean")
//
// forward() keeps what backward() needs; backward() returns a buffer the loss owns, valid
// until the next forward.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/kernels/elementwise.hpp>

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
    const T loss = bitgrad::softmax_cross_entropy_fprop(n, c, logits.data(), labels.data(),
                                                        probs_.data(), eps_);
    ready_ = true;
    return loss;
  }

  /// dL/dlogits for the last forward, (p - q) / N.
  const tensor2<T>& backward() {
    if (!ready_) throw config_error("softmax_cross_entropy: backward() before forward()");
    const std::size_t n = probs_.shape(0), c = probs_.shape(1);
    if (grad_.shape(0) != n || grad_.shape(1) != c) grad_.resize({n, c});
    bitgrad::softmax_cross_entropy_bprop(n, c, probs_.data(), labels_.data(), grad_.data(), eps_);
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
