// no_quant: the identity quantizer, for FP32 layers. Weights are stored as float32.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace bitgrad::quant {

template <class T>
class no_quant {
public:
  using value_type = T;
  struct options {};
  static constexpr bool is_identity = true;
  static constexpr const char* policy_name = "no_quant";

  no_quant() = default;
  explicit no_quant(const options&) {}

  void bind(std::size_t channels, std::size_t per_channel, const T*) {
    channels_ = channels;
    per_channel_ = per_channel;
  }
  void forward(const T* w, T* wq, bool) const { std::copy(w, w + weight_count(), wq); }
  void backward(const T*, const T* grad_wq, T* grad_w) const {
    for (std::size_t i = 0; i < weight_count(); ++i) grad_w[i] += grad_wq[i];
  }
  template <class F>
  void visit_parameters(F&&) {}
  void zero_grad() {}
  /// Every weight as float32.
  double size_bits() const { return 32.0 * static_cast<double>(weight_count()); }
  void add_size_gradient(T) {}
  void project() {}
  void freeze(rounding) {}
  bool frozen() const { return true; }
  std::size_t groups() const { return 1; }
  std::size_t group_size() const { return channels_; }
  std::size_t weight_count() const { return channels_ * per_channel_; }
  std::vector<double> group_bits() const { return {32.0}; }

private:
  std::size_t channels_ = 0;
  std::size_t per_channel_ = 0;
};

static_assert(quantizer<no_quant<float>>);

} // namespace bitgrad::quant
