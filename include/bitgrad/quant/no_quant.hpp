// no_quant: the identity quantizer, for FP32 layers. Weights are stored as float32.
// It meets the whole quantizer contract (quant/quantizer.hpp) trivially: always frozen, no
// integer groups (frozen_bits() and group_scales() are empty, freeze_to takes only an empty
// list), codes() is a config_error (float32 weights have no codes), and its state is the
// "not frozen, 0 groups" record of quant/group_quantizer.hpp.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/quant/group_quantizer.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bitgrad::quant {

template <class T>
class no_quant {
public:
  using value_type = T;
  struct options {};
  static constexpr bool is_identity = true;
  static constexpr const char* policy_name = "no_quant";
  static constexpr int lowest_bits = 32;

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
  /// Only an empty list: there are no integer groups.
  void freeze_to(const std::vector<int>& bits) {
    detail::check_count(policy_name, "bitwidths (float32 weights)", 0, bits.size());
  }
  bool frozen() const { return true; }
  double b_min() const { return 32.0; }
  double b_max() const { return 32.0; }
  std::size_t groups() const { return 1; }
  std::size_t group_size() const { return channels_; }
  std::size_t weight_count() const { return channels_ * per_channel_; }
  std::size_t group_weight_count(std::size_t) const { return weight_count(); }
  std::vector<double> group_bits() const { return {32.0}; }

  std::vector<int> frozen_bits() const { return {}; }
  std::vector<T> group_scales(const T*) const { return {}; }
  void codes(const T*, std::int32_t*) const {
    throw config_error("no_quant: float32 weights have no integer codes");
  }
  void save(io::byte_writer& w) const { detail::save_frozen_state(w, {}); }
  void load(io::byte_reader& r, std::string_view who = policy_name) {
    (void)detail::load_frozen_state(r, 0, who);
  }

private:
  std::size_t channels_ = 0;
  std::size_t per_channel_ = 0;
};

static_assert(quantizer<no_quant<float>>);

} // namespace bitgrad::quant
