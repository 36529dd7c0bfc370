// The cost terms of quant/costs.hpp from a network's layers: the BOPs term of a conv2d or a
// linear layer and the memory term of an activation_quant layer. Each keeps references to the
// layer's quantizers (the network must outlive the cost).
//
//   quant::bops_cost bops;
//   bops.add_layer(nn::bop_layer_of(conv1, 28, 28, quant::bits_source::constant(8)));  // image
//   bops.add_layer(nn::bop_layer_of(fc1, nn::bits_of(aq2)));   // fc1's input quantized by aq2
//   quant::activation_memory_cost mem;
//   mem.add_tensor(nn::activation_tensor_of(aq1, 24 * 24));    // aq1's output, per channel
//
// conv2d's output size: out = (in + 2 pad - dilation (kernel - 1) - 1) / stride + 1.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/quant/costs.hpp>

#include <cstddef>
#include <string>

namespace bitgrad::nn {

/// The bitwidths of an activation_quant layer, over its channels.
template <class T, std::size_t Rank, template <class> class A>
quant::bits_source bits_of(activation_quant<T, Rank, A>& l) {
  auto& q = l.activation_quantizer();
  return quant::bits_source::of(q, q.channels());
}

/// The BOPs term of conv on in_h x in_w inputs, its input's bitwidths from `input`.
template <class T, template <class> class Q>
quant::bop_layer bop_layer_of(conv2d<T, Q>& conv, std::size_t in_h, std::size_t in_w,
                              quant::bits_source input) {
  const conv2d_options& o = conv.options();
  auto out = [&](std::size_t in) {
    const std::size_t span = o.dilation * (o.kernel - 1) + 1;
    if (in + 2 * o.padding < span)
      throw config_error(conv.name() + ": a " + std::to_string(in_h) + "x" + std::to_string(in_w) +
                         " input is smaller than the kernel");
    return (in + 2 * o.padding - span) / o.stride + 1;
  };
  quant::bop_layer l;
  l.name = conv.name();
  l.out_channels = o.out_channels;
  l.in_channels = o.in_channels;
  l.conv_groups = o.groups;
  l.macs_per_connection = static_cast<double>(o.kernel * o.kernel * out(in_h) * out(in_w));
  l.weight = quant::bits_source::of(conv.quantizer(), o.out_channels);
  l.input = std::move(input);
  return l;
}

/// The BOPs term of a linear layer, its input's bitwidths from `input` (after a flatten of
/// (C, H, W), the source over C channels: each covers H W input features).
template <class T, template <class> class Q>
quant::bop_layer bop_layer_of(linear<T, Q>& fc, quant::bits_source input) {
  quant::bop_layer l;
  l.name = fc.name();
  l.out_channels = fc.out_features();
  l.in_channels = fc.in_features();
  l.macs_per_connection = 1;
  l.weight = quant::bits_source::of(fc.quantizer(), fc.out_features());
  l.input = std::move(input);
  return l;
}

/// The memory term of an activation_quant layer's output, `elements_per_channel` (H W) per
/// channel and image.
template <class T, std::size_t Rank, template <class> class A>
quant::activation_tensor activation_tensor_of(activation_quant<T, Rank, A>& l,
                                              std::size_t elements_per_channel) {
  return {l.name(), elements_per_channel, bits_of(l)};
}

} // namespace bitgrad::nn
