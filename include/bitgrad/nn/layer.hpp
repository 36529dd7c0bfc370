// The layer contract, written once. Every layer, and every composition of layers
// (sequential, residual), satisfies `bitgrad::nn::layer`.
//
// A layer L with element type T = L::value_type maps L::input_type to L::output_type; both are
// batch-major tensors: tensor4<T> (N, C, H, W) or tensor2<T> (N, features).
//
//   const output_type& forward(const input_type& x)
//       Computes the output into a buffer the layer owns (reused across calls: no allocation in
//       steady state) and keeps what backward needs (in training mode). The reference stays
//       valid until the next forward. A wrong shape throws shape_error naming the layer, the
//       expected and the actual shape.
//   const input_type& backward(const output_type& dy)
//       Given dL/dy for the last forward, returns dL/dx (a buffer the layer owns) and
//       ACCUMULATES (+=) the gradients of its parameters (call zero_grad() between steps).
//   void zero_grad()                  sets every parameter gradient to 0.
//   void train(bool on), bool training() const
//       mode: batch norm uses batch statistics and dropout drops only in training mode;
//       quantizers may add noise only in training mode.
//   void visit_parameters(F&& f)      calls f(param_ref<T>&) for each trainable tensor, in a fixed
//       order; names are prefixed with the layer's name ("conv1.weight", "conv1.bits").
//   void visit_quantizers(F&& f)      calls f(std::string_view layer_name, Q& quantizer) for every
//       quantizer (generic lambda: Q differs by layer); layers without weights call nothing.
//   std::string describe() const      one short line per layer ("conv2d 1->6 5x5 frac_bits g=1").
//   const std::string& name() const   the layer's name, used in messages and reports.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>

#include <concepts>
#include <string>
#include <string_view>

namespace bitgrad::nn {

/// A parameter visitor that accepts anything (used to state the concept).
template <class T>
struct any_param_visitor {
  void operator()(param_ref<T>&) const {}
};

/// A quantizer visitor that accepts anything (used to state the concept).
struct any_quantizer_visitor {
  template <class Q>
  void operator()(std::string_view, Q&) const {}
};

template <class L>
concept layer = requires(L& l, const L& cl, const typename L::input_type& x,
                         const typename L::output_type& dy, bool on) {
  typename L::value_type;
  typename L::input_type;
  typename L::output_type;
  { l.forward(x) } -> std::same_as<const typename L::output_type&>;
  { l.backward(dy) } -> std::same_as<const typename L::input_type&>;
  l.zero_grad();
  l.train(on);
  { cl.training() } -> std::convertible_to<bool>;
  l.visit_parameters(any_param_visitor<typename L::value_type>{});
  l.visit_quantizers(any_quantizer_visitor{});
  { cl.describe() } -> std::convertible_to<std::string>;
  { cl.name() } -> std::convertible_to<std::string>;
};

} // namespace bitgrad::nn
