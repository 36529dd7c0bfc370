// dropout: in training mode each element is kept with probability 1 - p and scaled by
// 1 / (1 - p) ("inverted" dropout, so eval needs no rescaling); in eval mode y = x.
// The mask comes from a std::mt19937_64 seeded at construction: the same seed and the same
// sequence of calls give the same masks. hold_mask(true) reuses the last mask (for gradient
// checks, where the loss must be a fixed function of the input).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <string>

namespace bitgrad::nn {

struct dropout_options {
  double p = 0.5; ///< probability of dropping an element, in [0, 1)
  std::uint64_t seed = 0;
  std::string name = "dropout";
};

template <class T, std::size_t Rank>
class dropout {
public:
  using value_type = T;
  using input_type = tensor<T, Rank>;
  using output_type = tensor<T, Rank>;

  explicit dropout(const dropout_options& opt = {}) : name_(opt.name), p_(opt.p), rng_(opt.seed) {
    if (!(p_ >= 0.0 && p_ < 1.0))
      throw config_error(name_ + ": p must be in [0, 1), got " + std::to_string(p_));
  }

  const output_type& forward(const input_type& x) {
    ensure_shape(y_, x.shape());
    const std::size_t n = x.size();
    if (!training_ || p_ == 0.0) {
      std::copy(x.data(), x.data() + n, y_.data());
    } else {
      const bool same_shape = mask_.size() == n;
      if (!held_ || !same_shape) {
        ensure_shape(mask_, x.shape());
        std::bernoulli_distribution keep(1.0 - p_);
        const T scale = static_cast<T>(1.0 / (1.0 - p_));
        for (std::size_t i = 0; i < n; ++i) mask_.data()[i] = keep(rng_) ? scale : T(0);
      }
      for (std::size_t i = 0; i < n; ++i) y_.data()[i] = x.data()[i] * mask_.data()[i];
    }
    masked_ = training_ && p_ != 0.0;
    seen_ = true;
    return y_;
  }
  const input_type& backward(const output_type& dy) {
    if (!seen_) throw config_error(name_ + ": backward called before forward");
    std::array<std::size_t, Rank> want{};
    for (std::size_t i = 0; i < Rank; ++i) want[i] = y_.shape()[i];
    check_shape(name_, "output gradient", dy.shape(), want);
    ensure_shape(dx_, y_.shape());
    const std::size_t n = dy.size();
    if (masked_)
      for (std::size_t i = 0; i < n; ++i) dx_.data()[i] = dy.data()[i] * mask_.data()[i];
    else
      std::copy(dy.data(), dy.data() + n, dx_.data());
    return dx_;
  }

  /// true: forward reuses the last mask while the shape stays the same.
  void hold_mask(bool on) { held_ = on; }
  /// The last mask: 0 (dropped) or 1/(1-p) (kept) per element.
  const tensor<T, Rank>& mask() const { return mask_; }
  double p() const { return p_; }

  void zero_grad() {}
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&&) {}
  template <class F>
  void visit_quantizers(F&&) {}
  /// Dimension 1 passes through (nn/layer.hpp).
  std::optional<std::size_t> output_features(std::optional<std::size_t> in) const { return in; }
  std::string describe() const { return "dropout p=" + std::to_string(p_); }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

private:
  std::string name_;
  double p_;
  std::mt19937_64 rng_;
  bool training_ = true;
  bool held_ = false;
  bool masked_ = false;
  bool seen_ = false;
  tensor<T, Rank> mask_;
  output_type y_;
  input_type dx_;
};

static_assert(layer<dropout<float, 2>>);

} // namespace bitgrad::nn
