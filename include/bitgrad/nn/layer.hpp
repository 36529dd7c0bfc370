// The layer contract, written once. Every layer, and every composition of layers
// (sequential, residual), satisfies `bitgrad::nn::layer`.
//
// A layer L with element type T = L::value_type maps L::input_type to L::output_type; both are
// batch-major tensors: tensor4<T> (N, C, H, W) or tensor2<T> (N, features).
//
//   const output_type& forward(const input_type& x)
//       Computes the output into a buffer the layer owns (reused across calls: no allocation in
//       steady state while the batch size stays the same) and keeps what backward needs. The
//       reference stays valid until the next forward. (`identity` returns x itself, so its
//       output lives as long as x.) Layers may keep a pointer to x for backward: the caller
//       keeps x alive and unchanged until backward. A wrong shape throws shape_error naming the
//       layer, the expected and the actual shape.
//   const input_type& backward(const output_type& dy)
//       Given dL/dy for the last forward, returns dL/dx (a buffer the layer owns) and
//       ACCUMULATES (+=) the gradients of its parameters (call zero_grad() between steps).
//   void zero_grad()                  sets every parameter gradient to 0.
//   void train(bool on), bool training() const
//       mode: batch norm uses batch statistics and dropout drops only in training mode;
//       quantizers may add noise only in training mode.
//   void visit_parameters(F&& f)      calls f(param_ref<T>&) for each trainable tensor, in a fixed
//       order; names are prefixed with the layer's name ("conv1.weight", "conv1.bits").
//       Compositions prefix their own name when it is not empty ("layer1.0.conv1.weight").
//   void visit_quantizers(F&& f)      calls f(std::string_view layer_name, Q& quantizer) for every
//       quantizer (generic lambda: Q differs by layer); layers without weights call nothing.
//   std::string describe() const      one short line per layer ("conv2d 1->6 5x5 frac_bits g=1").
//   const std::string& name() const   the layer's name, used in messages and reports.
//
// Compositions (sequential, residual) also have
//   void visit_layers(F& f, std::string_view prefix)   f(full_name, leaf_layer&) for every leaf
// and the free function nn::visit_layers(l, f) (nn/visit.hpp) works on any layer.
//
// Optional, for the shape check of compositions at construction (not part of the concept: a
// layer without them is "unknown" and the check stops there, leaving it to the first forward).
// "Features" is the size of dimension 1: channels of (N, C, H, W), features of (N, F).
//   std::optional<std::size_t> input_features() const
//       the features the layer requires of its input (linear: in_features, conv2d: in_channels,
//       batch_norm: features), nullopt when any count is accepted (relu, pooling, flatten, ...).
//   std::optional<std::size_t> output_features(std::optional<std::size_t> in) const
//       the features of its output given `in` (nullopt: unknown) for the input: out_features /
//       out_channels, `in` itself for layers that keep dimension 1 (activations, dropout,
//       identity, pooling), nullopt when it depends on more than dimension 1 (flatten, which
//       therefore defines neither). A composition checks its own chain against `in` here and
//       throws shape_error on a mismatch.
// nn::input_features_of(l) and nn::output_features_of(l, in) below read them, or nullopt.
//
// A quantized layer (linear, conv2d; the concept quantized_layer below) is a leaf layer whose
// weight goes through a quantizer (quant/quantizer.hpp):
//   using quantizer_type                       a quant::quantizer
//   quantizer_type& quantizer(), const too     the layer's quantizer, bound to its weight
//   weight(), weight_grad()                    tensors of the float weight and its gradient,
//                                              channel-major (dimension 0: output channels)
//
// Ranks are checked at compile time: a fixed-rank tensor of another rank than input_type would
// convert implicitly (xtensor allows it, and its rank conversion recurses until the stack
// overflows), so sequential and linear stop `forward(tensor4)` into a layer that takes
// (N, features) with a static_assert that names the missing nn::flatten; sequential also
// rejects a (N, C, H, W) -> (N, features) step between two of its layers.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <concepts>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

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

/// Optional fused epilogue (nn/residual.hpp, nn/sequential.hpp): l.forward_add_relu(x, skip)
/// computes relu(l.forward(x) + skip()) in the layer's own pass, skip() giving a tensor of the
/// output's shape (called once, after any layer inside l that runs before the last one); l's
/// backward is then forward's (it takes the gradient of l(x), the sum's gradient, masked by the
/// caller). batch_norm and a sequential ending in one have it.
template <class L>
concept add_relu_fusable = requires(L& l, const typename L::input_type& x,
                                    const typename L::output_type& (&skip)()) {
  { l.forward_add_relu(x, skip) } -> std::same_as<const typename L::output_type&>;
};

template <class L>
concept quantized_layer = layer<L> && quant::quantizer<typename L::quantizer_type> &&
    requires(L& l, const L& cl) {
  { l.quantizer() } -> std::same_as<typename L::quantizer_type&>;
  { cl.quantizer() } -> std::same_as<const typename L::quantizer_type&>;
  { l.weight().data() } -> std::same_as<typename L::value_type*>;
  { cl.weight_grad().data() } -> std::convertible_to<const typename L::value_type*>;
  { l.weight().shape(0) } -> std::convertible_to<std::size_t>;
  { l.weight().size() } -> std::convertible_to<std::size_t>;
};

/// The rank of a fixed-rank tensor type (one whose shape is a std::array), 0 for any other.
template <class X>
constexpr std::size_t static_rank() {
  if constexpr (requires { std::tuple_size<typename X::shape_type>::value; })
    return std::tuple_size<typename X::shape_type>::value;
  else
    return 0;
}

/// X is a fixed-rank tensor whose rank differs from Input's (a conversion that must not happen).
template <class X, class Input>
concept tensor_of_other_rank = static_rank<X>()
!= 0 && static_rank<Input>() != 0 && static_rank<X>() != static_rank<Input>();

/// false, but only when instantiated (for static_assert in a template that must not be used).
template <class>
inline constexpr bool always_false = false;

/// l.input_features() when the layer defines it, else nullopt (any input accepted, as far as
/// construction can tell).
template <class L>
std::optional<std::size_t> input_features_of(const L& l) {
  if constexpr (requires {
                  { l.input_features() } -> std::convertible_to<std::optional<std::size_t>>;
                })
    return l.input_features();
  else
    return std::nullopt;
}

/// l.output_features(in) when the layer defines it, else nullopt (unknown).
template <class L>
std::optional<std::size_t> output_features_of(const L& l, std::optional<std::size_t> in) {
  if constexpr (requires {
                  { l.output_features(in) } -> std::convertible_to<std::optional<std::size_t>>;
                })
    return l.output_features(in);
  else
    return std::nullopt;
}

/// "channels" for a layer taking (N, C, H, W), "features" otherwise (messages).
template <class L>
const char* feature_word() {
  if constexpr (requires { std::tuple_size<typename L::input_type::shape_type>::value; })
    return std::tuple_size<typename L::input_type::shape_type>::value == 4 ? "channels"
                                                                           : "features";
  else
    return "features";
}

/// "linear 5->2 no_quant 'fc2'" (the name left out when empty), for messages.
template <class L>
std::string layer_label(const L& l) {
  std::string out = l.describe();
  if (!l.name().empty()) out.append(" '").append(l.name()).append("'");
  return out;
}

/// "conv1" + "weight" -> "conv1.weight"; an empty prefix or name adds no dot.
inline std::string join_name(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  if (name.empty()) return std::string(prefix);
  std::string out;
  out.reserve(prefix.size() + 1 + name.size());
  out.append(prefix).append(1, '.').append(name);
  return out;
}

/// Gives `buffer` the shape `shape` (reallocating only when the size changes).
template <class Tensor, class Shape>
void ensure_shape(Tensor& buffer, const Shape& shape) {
  bool same = buffer.shape().size() == shape.size();
  for (std::size_t i = 0; same && i < shape.size(); ++i)
    same = static_cast<std::size_t>(buffer.shape()[i]) == static_cast<std::size_t>(shape[i]);
  if (!same) buffer.resize(shape);
}

/// Calls f on a copy of `p` whose name is prefixed with `prefix`.
template <class T, class F>
void visit_prefixed(std::string_view prefix, const param_ref<T>& p, F& f) {
  param_ref<T> named = p;
  named.name = join_name(prefix, p.name);
  f(named);
}

} // namespace bitgrad::nn
