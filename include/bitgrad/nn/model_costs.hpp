// model_costs: the BOPs and peak activation memory costs (quant/costs.hpp) of a built network,
// found by walking its layers with the activation shape (issues #22, #24).
//
//   auto net = nn::lenet5(nn::act_model_options<float, quant::frac_bits>{});
//   auto costs = nn::model_costs_of(net, {.channels = 1, .height = 28, .width = 28});
//   loss += quant::apply_cost_penalty(costs.bops, penalty);
//
// The network: an nn::sequential (lenet5, vgg_small, resnet20, or any chain) of conv2d, linear,
// activation_quant, relu, batch_norm, max_pool2d, avg_pool2d, global_avg_pool, flatten and
// identity, and of nested nn::sequential and nn::residual compositions of them. Any other leaf
// (dropout, a user layer) is a config_error naming it: what it does to the grid is not known
// here.
//
// Walking the layers, the bits of the tensor in flight (a bits source over its channels):
//   the input image            model_input::bits (default 8: 8-bit unsigned image data, as a
//                              deployed runtime reads it), a constant
//   after an activation_quant  its learned bitwidths (gradients flow into them)
//   after relu, max_pool2d,    unchanged: they keep values on the quantizer's grid (max and
//   flatten, identity          a ReLU of grid values are grid values)
//   after anything else        model_input::unquantized_bits (default 32: float), a constant
//   (batch_norm, avg pools, a residual's add, conv2d, linear)
// A residual y = block(x) + shortcut(x): block and shortcut are each walked from x (the same
// shape and bits), must end at the same shape, and y is unquantized (a sum of two grids is on
// neither); its relu and activation_quant, outside the residual, put it back on a grid.
// BOPs: one term per conv2d / linear, MACs x b_w x b_a with b_w its weight quantizer's group
// bitwidths (no_quant: 32) and b_a the bits in flight at its input (bop_layer_of). Layers and
// tensors are named by their full names ("layer2.0.conv1", "layer3.2.relu_quant").
// Peak activation memory: the input image and every activation_quant's output, each at its
// bits, H W elements per channel at that point (1 after a flatten). Tensors not behind an
// activation quantizer (a conv's accumulators, a float ReLU output) are not counted: the cost
// is what an integer runtime keeps between layers. It is the largest single such tensor: in a
// residual network the block input a runtime keeps for the add while the block runs is not
// added to the block's own tensors.
//
// The costs keep references to the network's quantizers: the network must outlive them and
// must not be moved while they are in use.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/costs.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/identity.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/pooling.hpp>
#include <bitgrad/nn/residual.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/nn/visit.hpp>
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
template <class T, std::size_t R>
struct cost_kind<batch_norm<T, R>> {
  static constexpr int value = 9; // leaves it, shape kept
};
template <class T, std::size_t R>
struct cost_kind<identity<T, R>> {
  static constexpr int value = 10; // keeps everything
};
template <class... Ls>
struct cost_kind<sequential<Ls...>> {
  static constexpr int value = 11; // walked layer by layer
};
template <class B, class S>
struct cost_kind<residual<B, S>> {
  static constexpr int value = 12; // block and shortcut from the same input, then an add
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
  static std::string shape_text(std::size_t c, std::size_t h, std::size_t w, bool flat) {
    return flat ? std::to_string(c * h * w) + " features"
                : std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w);
  }

  /// The layers of `net` in order; `index` and `prefix` are net's own place in the network
  /// (empty at the top): layer i is named "index.i" and "prefix.<its name>" in messages.
  template <class... Ls>
  void walk(sequential<Ls...>& net, const std::string& index, std::string_view prefix) {
    auto each = [&]<std::size_t... I>(std::index_sequence<I...>) {
      (step(index.empty() ? std::to_string(I) : index + "." + std::to_string(I), prefix,
            net.template get<I>()),
       ...);
    };
    each(std::index_sequence_for<Ls...>{});
  }

  /// One layer: `index` its position ("4.0.1" inside compositions), `prefix` the names of the
  /// compositions around it.
  template <class L>
  void step(const std::string& index, std::string_view prefix, L& l) {
    constexpr int kind = cost_kind<std::remove_cv_t<L>>::value;
    const std::string full_name = join_name(prefix, l.name());
    const std::string who = "model_costs: layer " + index + " '" + full_name + "'";
    if constexpr (kind == 0) {
      throw config_error(who + " (" + l.describe() +
                         ") is not supported: expected conv2d, linear, activation_quant, relu, "
                         "batch_norm, max / avg pooling, flatten, identity, or a sequential or "
                         "residual of them");
    } else if constexpr (kind == 11) {
      walk(l, index, full_name);
    } else if constexpr (kind == 12) {
      // y = block(x) + shortcut(x): both from x, the same shape at the end, y off the grid.
      const std::size_t c0 = c, h0 = h, w0 = w;
      const bool flat0 = flat;
      const quant::bits_source bits0 = bits;
      step(index + ".0", full_name, l.block());
      const std::size_t cb = c, hb = h, wb = w;
      const bool flatb = flat;
      c = c0, h = h0, w = w0, flat = flat0, bits = bits0;
      step(index + ".1", full_name, l.shortcut());
      if (c != cb || h != hb || w != wb || flat != flatb)
        throw config_error(who + ": the block gives " + shape_text(cb, hb, wb, flatb) +
                           ", the shortcut " + shape_text(c, h, w, flat));
      unquantized(c);
    } else if constexpr (kind == 9) {
      // y = gamma (x - mean) / sigma + beta per channel (per feature after a flatten)
      const std::size_t have = flat ? c * h * w : c;
      if (l.features() != have)
        throw config_error(who + ": normalises " + std::to_string(l.features()) +
                           " channels, the tensor has " + std::to_string(have));
      if (flat) {
        c = have;
        h = w = 1;
      }
      unquantized(c);
    } else if constexpr (kind == 10) {
      // y = x
    } else if constexpr (kind == 1) {
      const conv2d_options& o = l.options();
      if (flat || o.in_channels != c)
        throw config_error(who + ": expected an input of " + std::to_string(o.in_channels) +
                           " channels (N, C, H, W), got " +
                           (flat ? std::string("a flat tensor") : std::to_string(c) + " channels"));
      quant::bop_layer layer = bop_layer_of(l, h, w, bits);
      layer.name = full_name; // "layer2.0.conv1", as the summary names it
      out.bops.add_layer(std::move(layer));
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
      quant::bop_layer layer = bop_layer_of(l, bits);
      layer.name = full_name;
      out.bops.add_layer(std::move(layer));
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
      quant::activation_tensor tensor = activation_tensor_of(l, h * w);
      tensor.name = full_name; // "layer3.2.relu_quant"
      out.memory.add_tensor(std::move(tensor));
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

/// The BOPs and peak activation memory costs of `net` (a sequential, see the top of the file)
/// at input `in`.
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
  walk.walk(net, "", net.name());
  return out;
}

} // namespace bitgrad::nn
