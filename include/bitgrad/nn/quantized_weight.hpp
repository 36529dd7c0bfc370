// quantized_weight: a layer's weight tensor with the quantizer it goes through, the one member
// that linear and conv2d share for everything about the weight that is not their own kernel.
//
//   W    : the weight (Tensor, channel-major: the first extent is the quantizer's channel)
//   wq   : Q(W), the weight the layer's kernels use; W itself for the identity quantizer
//          (no_quant), which owns no copy
//   dW   : dL/dW, accumulated across backward calls until zero_grad()
//   dwq  : dL/dwq, written by the layer's weight-gradient kernel, then turned into dW (and the
//          quantizer's parameter gradients) by Q.backward
//
// One step through it:
//   forward  : w = qw.forward()                      wq = Q(W, training) (or W)
//   backward : t = qw.wgrad_target(zeroed)           where the kernel writes dwq, and its beta
//              kernel(..., t.data, beta = t.beta)    (identity: t = dW with beta 1, accumulate)
//              qw.wgrad_done()                       dW += Q.backward(dwq) (nothing: identity)
// training / eval: train(on) sets what forward passes to Q (noise and relaxed bitwidths while
// training, the integer grid at evaluation); freezing is the quantizer's (visit_quantizers).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace bitgrad::nn {

/// Tensor: the weight's tensor type (tensor2 for linear, tensor4 for conv2d).
/// Quantizer: the weight quantizer (quant::no_quant<T> for FP32).
template <class Tensor, class Quantizer>
class quantized_weight {
public:
  using value_type = typename Quantizer::value_type;
  using quantizer_type = Quantizer;
  static_assert(quant::quantizer<quantizer_type>);
  using T = value_type;

  /// Where the weight-gradient kernel writes dL/dwq, with the beta to pass it.
  struct wgrad_target {
    T* data;
    T beta;
  };

  /// W of shape `shape` (uninitialised: the layer fills it, then calls bind), dW zero.
  quantized_weight(const typename Tensor::shape_type& shape,
                   const typename quantizer_type::options& qopt)
      : weight_(Tensor::from_shape(shape)), grad_weight_(xt::zeros<T>(shape)), quantizer_(qopt) {
    if constexpr (!quantizer_type::is_identity) {
      wq_ = Tensor::from_shape(shape);
      grad_wq_ = Tensor::from_shape(shape);
    }
  }

  /// Binds the quantizer to W (channels x per_channel weights); a config_error names `layer`.
  void bind(const std::string& layer, std::size_t channels, std::size_t per_channel) {
    try {
      quantizer_.bind(channels, per_channel, weight_.data());
    } catch (const config_error& e) {
      throw config_error(layer + ": " + e.what());
    }
  }

  /// Q(W) for this forward (W itself for the identity quantizer).
  const T* forward() {
    if constexpr (quantizer_type::is_identity) {
      return weight_.data();
    } else {
      quantizer_.forward(weight_.data(), wq_.data(), training_);
      return wq_.data();
    }
  }
  /// The weight the last forward used, for dgrad.
  const T* used() const {
    if constexpr (quantizer_type::is_identity)
      return weight_.data();
    else
      return wq_.data();
  }

  /// The identity: dW itself, beta 1 (the kernel accumulates). Otherwise the dwq buffer with
  /// beta 0, zero-filled first when `zeroed` (for kernels that always accumulate).
  wgrad_target wgrad_target_for(bool zeroed) {
    if constexpr (quantizer_type::is_identity) {
      return {grad_weight_.data(), T(1)};
    } else {
      if (zeroed) grad_wq_.fill(T(0));
      return {grad_wq_.data(), T(0)};
    }
  }
  /// After the kernel wrote dwq: dW (and the quantizer's gradients) from it.
  void wgrad_done() {
    if constexpr (!quantizer_type::is_identity)
      quantizer_.backward(weight_.data(), grad_wq_.data(), grad_weight_.data());
  }

  void zero_grad() {
    grad_weight_.fill(T(0));
    quantizer_.zero_grad();
  }
  void train(bool on) { training_ = on; }
  bool training() const { return training_; }

  /// "<layer>.weight" (kind weight).
  template <class F>
  void visit_weight(std::string_view layer, F& f) {
    visit_prefixed(layer,
                   param_ref<T>{"weight", weight_.data(), grad_weight_.data(), weight_.size(),
                                param_kind::weight},
                   f);
  }
  /// The quantizer's parameters as "<layer>.<name>".
  template <class F>
  void visit_quantizer_parameters(std::string_view layer, F& f) {
    quantizer_.visit_parameters([&](param_ref<T>& p) { visit_prefixed(layer, p, f); });
  }
  /// f(layer, quantizer).
  template <class F>
  void visit_quantizers(std::string_view layer, F& f) {
    f(layer, quantizer_);
  }

  Tensor& weight() { return weight_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& weight_grad() const { return grad_weight_; }
  quantizer_type& quantizer() { return quantizer_; }
  const quantizer_type& quantizer() const { return quantizer_; }

private:
  Tensor weight_, grad_weight_, wq_, grad_wq_;
  quantizer_type quantizer_;
  bool training_ = true;
};

} // namespace bitgrad::nn
