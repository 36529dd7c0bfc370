// model_costs: the BOPs and peak activation memory costs (quant/costs.hpp) of a built network,
// found by walking its layers with the activation shape (issue #22).
//
//   auto net = nn::lenet5(nn::act_model_options<float, quant::frac_bits>{});
//   auto costs = nn::model_costs_of(net, {.channels = 1, .height = 28, .width = 28});
//   loss += quant::apply_cost_penalty(costs.bops, penalty);
//
// The network: a flat nn::sequential (lenet5, vgg_small, or any chain) of conv2d, linear,
// activation_quant, relu, max_pool2d, avg_pool2d, global_avg_pool and flatten. Any other leaf
// (batch norm, dropout, a nested composition such as a residual block) is a config_error
// naming it: what it does to the grid is not known here.
//
// Walking the layers, the bits of the tensor in flight (a bits source over its channels):
//   the input image            model_input::bits (default 8: 8-bit unsigned image data, as a
//                              deployed runtime reads it), a constant
//   after an activation_quant  its learned bitwidths (gradients flow into them)
//   after relu, max_pool2d,    unchanged: they keep values on the quantizer's grid (max and
//   flatten                    a ReLU of grid values are grid values)
//   after anything else        model_input::unquantized_bits (default 32: float), a constant
// BOPs: one term per conv2d / linear, MACs x b_w x b_a with b_w its weight quantizer's group
// bitwidths (no_quant: 32) and b_a the bits in flight at its input (bop_layer_of).
// Peak activation memory: the input image and every activation_quant's output, each at its
// bits, H W elements per channel at that point (1 after a flatten). Tensors not behind an
// activation quantizer (a conv's accumulators, a float ReLU output) are not counted: the cost
// is what an integer runtime keeps between layers.
//
// The costs keep references to the network's quantizers: the network must outlive them and
// must not be moved while they are in use.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/costs.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/pooling.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/quant/costs.hpp>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

namespace bitgrad::nn {

/// The input a network's costs are computed at (one image).
struct model_input {
  std::size_t channels = 1;
  std::size_t height = 28;
  std::size_t width = 28;
  double bits = 8;              ///< bits per input element (8-bit image data)
  double unquantized_bits = 32; ///< bits of a tensor no activation quantizer sets (float)
};

/// The network's costs (see the top of the file), both per image.
struct model_costs {
  quant::bops_cost bops;
  quant::activation_memory_cost memory; ///< hard maximum
};

namespace detail {
template <class L>
struct cost_kind {
  static constexpr int value = 0; // unsupported
};
template <class T, template <class> class Q>
struct cost_kind<conv2d<T, Q>> {
  static constexpr int value = 1;
};
template <class T, template <class> class Q>
struct cost_kind<linear<T, Q>> {
  static constexpr int value = 2;
};
template <class T, std::size_t R, template <class> class A>
struct cost_kind<activation_quant<T, R, A>> {
  static constexpr int value = 3;
};
template <class T, std::size_t R>
struct cost_kind<relu<T, R>> {
  static constexpr int value = 4; // keeps the grid
};
template <class T>
struct cost_kind<flatten<T>> {
  static constexpr int value = 5; // keeps the grid
};
template <class T>
struct cost_kind<max_pool2d<T>> {
  static constexpr int value = 6; // keeps the grid
};
template <class T>
struct cost_kind<avg_pool2d<T>> {
  static constexpr int value = 7; // leaves it
};
template <class T>
struct cost_kind<global_avg_pool<T>> {
  static constexpr int value = 8; // leaves it
};

/// The walk's state: the tensor in flight (C, H, W per image; H = W = 1 after a flatten or
/// global pool, with `per_channel` features per channel after a flatten) and its bits.
struct cost_walk {
  const model_input& in;
  model_costs& out;
  std::size_t c, h, w;
  bool flat = false;
  quant::bits_source bits;

  void unquantized(std::size_t channels) {
    bits = quant::bits_source::constant(in.unquantized_bits, channels);
  }

  template <class L>
  void step(std::size_t index, L& l) {
    constexpr int kind = cost_kind<std::remove_cv_t<L>>::value;
    const std::string who = "model_costs: layer " + std::to_string(index) + " '" + l.name() + "'";
    if constexpr (kind == 0) {
      throw config_error(who + " (" + l.describe() +
                         ") is not supported: expected a flat sequential of conv2d, linear, "
                         "activation_quant, relu, max / avg pooling and flatten");
    } else if constexpr (kind == 1) {
      const conv2d_options& o = l.options();
      if (flat || o.in_channels != c)
        throw config_error(who + ": expected an input of " + std::to_string(o.in_channels) +
                           " channels (N, C, H, W), got " +
                           (flat ? std::string("a flat tensor") : std::to_string(c) + " channels"));
      out.bops.add_layer(bop_layer_of(l, h, w, bits));
      const std::size_t span = o.dilation * (o.kernel - 1) + 1;
      h = (h + 2 * o.padding - span) / o.stride + 1; // bop_layer_of checked h, w >= span
      w = (w + 2 * o.padding - span) / o.stride + 1;
      c = o.out_channels;
      unquantized(c);
    } else if constexpr (kind == 2) {
      const std::size_t features = c * h * w;
      if (l.in_features() != features)
        throw config_error(who + ": expected " + std::to_string(l.in_features()) +
                           " input features, got " + std::to_string(features));
      out.bops.add_layer(bop_layer_of(l, bits));
      c = l.out_features();
      h = w = 1;
      flat = true;
      unquantized(c);
    } else if constexpr (kind == 3) {
      const std::size_t ch = l.activation_quantizer().channels();
      // after a flatten the quantizer sees features, not the channels before it
      const std::size_t have = flat ? c * h * w : c;
      if (ch != have)
        throw config_error(who + ": quantizes " + std::to_string(ch) +
                           " channels, the tensor has " + std::to_string(have));
      if (flat) {
        c = have;
        h = w = 1;
      }
      bits = bits_of(l);
      out.memory.add_tensor(activation_tensor_of(l, h * w));
    } else if constexpr (kind == 4) {
      // y = max(0, x): shape and grid kept
    } else if constexpr (kind == 5) {
      flat = true; // (C, H, W) features, the bits still over the C channels
    } else {
      if (flat) throw config_error(who + ": expected an (N, C, H, W) input, got a flat tensor");
      if constexpr (kind == 8) {
        h = w = 1;
        flat = true;
      } else {
        const std::size_t k = l.kernel(), s = l.stride(), p = l.padding();
        if (h + 2 * p < k || w + 2 * p < k)
          throw config_error(who + ": a " + std::to_string(h) + "x" + std::to_string(w) +
                             " input is smaller than the window " + std::to_string(k));
        h = (h + 2 * p - k) / s + 1;
        w = (w + 2 * p - k) / s + 1;
      }
      if constexpr (kind != 6) unquantized(c);
    }
  }
};
} // namespace detail

/// The BOPs and peak activation memory costs of `net` (a flat sequential) at input `in`.
template <class... Layers>
model_costs model_costs_of(sequential<Layers...>& net, const model_input& in) {
  if (in.channels == 0 || in.height == 0 || in.width == 0)
    throw config_error("model_costs: expected an input of at least 1x1x1, got " +
                       std::to_string(in.channels) + "x" + std::to_string(in.height) + "x" +
                       std::to_string(in.width));
  model_costs out;
  const auto image = quant::bits_source::constant(in.bits, in.channels);
  out.memory.add_tensor({"input", in.height * in.width, image});
  detail::cost_walk walk{in, out, in.channels, in.height, in.width, false, image};
  auto each = [&]<std::size_t... I>(std::index_sequence<I...>) {
    (walk.step(I, net.template get<I>()), ...);
  };
  each(std::index_sequence_for<Layers...>{});
  return out;
}

} // namespace bitgrad::nn
