// activation_quant: a layer that fake-quantizes the activations flowing through it with a
// learned bitwidth and a learned range (the math: quant/act_quantizer.hpp; the kernels:
// kernels/act_quantize.hpp). Put it between layers:
//
//   conv1 -> relu -> activation_quant (unsigned) -> conv2 ...   zero exact, grid s {0..2^k-1}
//   conv1 -> activation_quant (unsigned)         -> conv2 ...   the same: the unsigned grid
//                                                               maps x < 0 to 0 (a clipped ReLU)
//   ... -> activation_quant (is_signed)          -> ...         where activations have a sign
//
//   x, y : (N, C, H, W) or (N, C): C channels (dimension 1), `channels` in the options;
//          groups of group_size channels share one bitwidth and one range (default: one group).
//
// Parameters (visit_parameters): "<name>.bits" (kind bitwidth: the optimizer's bitwidth group
// applies) and "<name>.range" (kind scale). visit_quantizers visits nothing: the weight-size
// accounting (quant/size.hpp), budget freezing and export walk weight quantizers only; reach
// activation quantizers with nn::visit_activation_quantizers(net, f) (nn/visit.hpp), which calls
// f(full_name, act_quantizer&) for every activation_quant leaf of a network.
// train(on) / training(): recorded; the arithmetic is the same in both modes (act_quantizer).
// State: save / load of the quantizer (bitwidths once frozen, calibration), see act_quantizer.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/quant/act_quantizer.hpp>

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace bitgrad::nn {

struct activation_quant_options {
  std::size_t channels = 0;              ///< C, dimension 1 of the input (>= 1)
  std::string name = "activation_quant"; ///< used in messages and parameter names
};

/// T: element type; Rank: 4 for (N, C, H, W), 2 for (N, C); AQuant: the activation quantizer
/// (a quant::activation_quantizer).
template <class T, std::size_t Rank, template <class> class AQuant = quant::act_quantizer>
class activation_quant {
public:
  using value_type = T;
  using input_type = tensor<T, Rank>;
  using output_type = tensor<T, Rank>;
  using act_quantizer_type = AQuant<T>;
  static_assert(quant::activation_quantizer<act_quantizer_type>);
  static_assert(Rank >= 2, "activation_quant: the input needs a batch and a channel dimension");

  explicit activation_quant(const activation_quant_options& opt,
                            const typename act_quantizer_type::options& qopt = {})
      : name_(opt.name), channels_(opt.channels), q_(qopt) {
    try {
      q_.bind(opt.channels);
    } catch (const config_error& e) {
      throw config_error(name_ + ": " + e.what());
    }
  }

  const output_type& forward(const input_type& x) {
    std::array<std::size_t, Rank> want{};
    want[1] = channels_;
    check_shape(name_, "input", x.shape(), want);
    ensure_shape(y_, x.shape());
    try {
      q_.forward(x.data(), y_.data(), x.shape()[0], inner(x), training_);
    } catch (const config_error& e) {
      throw config_error(name_ + ": " + e.what());
    }
    x_ = &x;
    return y_;
  }

  const input_type& backward(const output_type& dy) {
    if (x_ == nullptr) throw config_error(name_ + ": backward called before forward");
    std::array<std::size_t, Rank> want{};
    for (std::size_t i = 0; i < Rank; ++i) want[i] = x_->shape()[i];
    check_shape(name_, "output gradient", dy.shape(), want);
    ensure_shape(dx_, x_->shape());
    q_.backward(x_->data(), dy.data(), dx_.data(), x_->shape()[0], inner(*x_));
    return dx_;
  }

  void zero_grad() { q_.zero_grad(); }
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }
  template <class F>
  void visit_parameters(F&& f) {
    q_.visit_parameters([&](param_ref<T>& p) { visit_prefixed(name_, p, f); });
  }
  /// Nothing: activation quantizers are not weight quantizers (see the top of this file).
  template <class F>
  void visit_quantizers(F&&) {}

  std::optional<std::size_t> input_features() const { return channels_; }
  std::optional<std::size_t> output_features(std::optional<std::size_t>) const { return channels_; }
  std::string describe() const {
    const auto& o = q_.opts();
    std::string d = "activation_quant " + std::to_string(channels_) +
                    (o.is_signed ? " signed " : " unsigned ") + q_.relaxation_name();
    if (q_.groups() > 1) d += " g=" + std::to_string(q_.group_size());
    return d;
  }
  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  act_quantizer_type& activation_quantizer() { return q_; }
  const act_quantizer_type& activation_quantizer() const { return q_; }
  void save(io::byte_writer& w) const { q_.save(w); }
  void load(io::byte_reader& r) { q_.load(r, name_); }

private:
  static std::size_t inner(const input_type& x) {
    std::size_t n = 1;
    for (std::size_t i = 2; i < Rank; ++i) n *= x.shape()[i];
    return n;
  }

  std::string name_;
  std::size_t channels_;
  act_quantizer_type q_;
  bool training_ = true;
  output_type y_;
  input_type dx_;
  const input_type* x_ = nullptr;
};

static_assert(layer<activation_quant<float, 4>>);
static_assert(layer<activation_quant<double, 2>>);

} // namespace bitgrad::nn
