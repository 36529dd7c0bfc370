// Model builders: LeNet-5, a small VGG-style net and ResNet-20 (CIFAR), on any element type and
// any weight quantizer.
//
//   auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
//   auto net = nn::resnet20<float, quant::frac_bits, quant::fixed_bits>({.in_channels = 3});
//
// Template parameters
//   T          element type (float for training, double for gradient checks)
//   Quant      the quantizer of every conv2d / linear in the middle of the network
//   EdgeQuant  the quantizer of the FIRST conv and the LAST linear (the "edge" layers).
//              Default: Quant, and then the edge layers take model_options::quant like every
//              other layer (no exception) unless model_options::edge_quant is set.
//              This is the "keep first and last layers at 8 bits" switch: pass quant::fixed_bits
//              (8 bits per channel unless edge_quant says otherwise) to keep them at 8 bits, or
//              quant::no_quant to keep them in float. It is a template parameter, not a run-time
//              flag, because it changes the layers' types. With the same policy everywhere, set
//              edge_quant to give the edge layers other options of it at run time, e.g.
//                model_options<float, quant::frac_bits> o{.quant = {.b_min = 2, .b_max = 4}};
//                o.edge_quant = o.quant;  o.edge_quant->b_min = o.edge_quant->b_max = 8;
//
// Names follow PyTorch's conventions: "conv1", "fc3", "layer2.0.conv1", "layer2.0.shortcut.conv".
// Each layer draws its initial weights from its own seed (options.seed + its index).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/identity.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/pooling.hpp>
#include <bitgrad/nn/residual.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

namespace bitgrad::nn {

namespace detail {
template <class Q>
typename Q::options edge_defaults() {
  typename Q::options o{};
  if constexpr (std::is_same_v<Q, quant::fixed_bits<typename Q::value_type>>) o.bits = 8;
  return o;
}
} // namespace detail

/// What every builder takes. Zeros mean "the model's default" (see each builder).
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant>
struct model_options {
  std::uint64_t seed = 0;
  /// The options of every quantizer (the edge layers' too unless edge_quant says otherwise).
  typename Quant<T>::options quant{};
  /// The options of the first conv and the last linear; unset: see edge_options().
  std::optional<typename EdgeQuant<T>::options> edge_quant{};
  std::size_t in_channels = 0; ///< lenet5 / vgg_small: 1; resnet20: 3
  std::size_t in_size = 0;     ///< square input side; lenet5 / vgg_small: 28; resnet20: 32
  std::size_t num_classes = 10;
  std::size_t width = 0;    ///< vgg_small: first conv width (32); resnet20: first stage (16)
  std::size_t hidden = 256; ///< vgg_small: the hidden fully connected layer

  /// The options the first conv and the last linear are built with: edge_quant when set;
  /// otherwise `quant` when EdgeQuant is Quant, 8 bits per channel when EdgeQuant is
  /// fixed_bits (and Quant is not), and EdgeQuant's default options for any other EdgeQuant.
  typename EdgeQuant<T>::options edge_options() const {
    if (edge_quant) return *edge_quant;
    if constexpr (std::is_same_v<Quant<T>, EdgeQuant<T>>)
      return quant;
    else
      return detail::edge_defaults<EdgeQuant<T>>();
  }
};

/// LeNet-5 (28x28x1 by default): conv 1->6 5x5 -> relu -> maxpool 2 -> conv 6->16 5x5 -> relu
/// -> maxpool 2 -> flatten (16*4*4 = 256) -> fc 256->120 -> relu -> fc 120->84 -> relu ->
/// fc 84->classes. Input (N, in_channels, in_size, in_size), output (N, classes).
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant>
auto lenet5(const model_options<T, Quant, EdgeQuant>& o = {}) {
  const std::size_t c = o.in_channels ? o.in_channels : 1;
  const std::size_t s = o.in_size ? o.in_size : 28;
  if (s < 16 || (s - 4) % 2 != 0 || ((s - 4) / 2 - 4) % 2 != 0)
    throw config_error("lenet5: in_size must be >= 16 with (in_size - 4)/2 - 4 even, got " +
                       std::to_string(s));
  const std::size_t f = ((s - 4) / 2 - 4) / 2;
  const std::uint64_t seed = o.seed;
  return sequential(
      conv2d<T, EdgeQuant>(
          {.in_channels = c, .out_channels = 6, .kernel = 5, .seed = seed, .name = "conv1"},
          o.edge_options()),
      relu<T, 4>("relu1"), max_pool2d<T>({.kernel = 2, .name = "pool1"}),
      conv2d<T, Quant>(
          {.in_channels = 6, .out_channels = 16, .kernel = 5, .seed = seed + 1, .name = "conv2"},
          o.quant),
      relu<T, 4>("relu2"), max_pool2d<T>({.kernel = 2, .name = "pool2"}), flatten<T>("flatten"),
      linear<T, Quant>(
          {.in_features = 16 * f * f, .out_features = 120, .seed = seed + 2, .name = "fc1"},
          o.quant),
      relu<T, 2>("relu3"),
      linear<T, Quant>({.in_features = 120, .out_features = 84, .seed = seed + 3, .name = "fc2"},
                       o.quant),
      relu<T, 2>("relu4"),
      linear<T, EdgeQuant>(
          {.in_features = 84, .out_features = o.num_classes, .seed = seed + 4, .name = "fc3"},
          o.edge_options()));
}

/// A small VGG-style net (28x28x1 by default, width w = 32): conv3x3 pad 1 c->w -> relu ->
/// w->w -> relu -> maxpool 2 -> w->2w -> relu -> 2w->2w -> relu -> maxpool 2 -> flatten
/// (2w * (s/4)^2) -> fc hidden -> relu -> fc classes. in_size must be a multiple of 4.
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant>
auto vgg_small(const model_options<T, Quant, EdgeQuant>& o = {}) {
  const std::size_t c = o.in_channels ? o.in_channels : 1;
  const std::size_t s = o.in_size ? o.in_size : 28;
  const std::size_t w = o.width ? o.width : 32;
  if (s < 4 || s % 4 != 0)
    throw config_error("vgg_small: in_size must be a positive multiple of 4, got " +
                       std::to_string(s));
  if (o.hidden == 0) throw config_error("vgg_small: hidden must be >= 1");
  const std::uint64_t seed = o.seed;
  auto conv = [&](std::size_t in, std::size_t out, std::uint64_t k, const char* name) {
    return conv2d<T, Quant>({.in_channels = in,
                             .out_channels = out,
                             .kernel = 3,
                             .padding = 1,
                             .seed = seed + k,
                             .name = name},
                            o.quant);
  };
  return sequential(
      conv2d<T, EdgeQuant>({.in_channels = c,
                            .out_channels = w,
                            .kernel = 3,
                            .padding = 1,
                            .seed = seed,
                            .name = "conv1"},
                           o.edge_options()),
      relu<T, 4>("relu1"), conv(w, w, 1, "conv2"), relu<T, 4>("relu2"),
      max_pool2d<T>({.kernel = 2, .name = "pool1"}), conv(w, 2 * w, 2, "conv3"),
      relu<T, 4>("relu3"), conv(2 * w, 2 * w, 3, "conv4"), relu<T, 4>("relu4"),
      max_pool2d<T>({.kernel = 2, .name = "pool2"}), flatten<T>("flatten"),
      linear<T, Quant>({.in_features = 2 * w * (s / 4) * (s / 4),
                        .out_features = o.hidden,
                        .seed = seed + 4,
                        .name = "fc1"},
                       o.quant),
      relu<T, 2>("relu5"),
      linear<T, EdgeQuant>(
          {.in_features = o.hidden, .out_features = o.num_classes, .seed = seed + 5, .name = "fc2"},
          o.edge_options()));
}

namespace detail {

/// ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs without
/// bias; the shortcut is identity, or conv 1x1 stride s + bn when the shape changes.
template <class T, template <class> class Quant, bool Projection>
auto basic_block(const std::string& name, std::size_t in, std::size_t out, std::size_t stride,
                 std::uint64_t seed, const typename Quant<T>::options& q) {
  auto body = sequential(conv2d<T, Quant>({.in_channels = in,
                                           .out_channels = out,
                                           .kernel = 3,
                                           .stride = stride,
                                           .padding = 1,
                                           .bias = false,
                                           .seed = seed,
                                           .name = "conv1"},
                                          q),
                         batch_norm<T, 4>({.features = out, .name = "bn1"}), relu<T, 4>("relu1"),
                         conv2d<T, Quant>({.in_channels = out,
                                           .out_channels = out,
                                           .kernel = 3,
                                           .padding = 1,
                                           .bias = false,
                                           .seed = seed + 1,
                                           .name = "conv2"},
                                          q),
                         batch_norm<T, 4>({.features = out, .name = "bn2"}));
  if constexpr (Projection) {
    auto shortcut = sequential(std::string("shortcut"),
                               conv2d<T, Quant>({.in_channels = in,
                                                 .out_channels = out,
                                                 .kernel = 1,
                                                 .stride = stride,
                                                 .bias = false,
                                                 .seed = seed + 2,
                                                 .name = "conv"},
                                                q),
                               batch_norm<T, 4>({.features = out, .name = "bn"}));
    return sequential(name, residual(std::string(), std::move(body), std::move(shortcut)),
                      relu<T, 4>("relu"));
  } else {
    return sequential(name, residual(std::string(), std::move(body), identity<T, 4>("shortcut")),
                      relu<T, 4>("relu"));
  }
}

/// Three basic blocks named "<stage>.0" .. "<stage>.2"; the first one projects when asked.
template <class T, template <class> class Quant, bool Projection>
auto resnet_stage(const std::string& stage, std::size_t in, std::size_t out, std::size_t stride,
                  std::uint64_t seed, const typename Quant<T>::options& q) {
  return sequential(stage, basic_block<T, Quant, Projection>("0", in, out, stride, seed, q),
                    basic_block<T, Quant, false>("1", out, out, 1, seed + 3, q),
                    basic_block<T, Quant, false>("2", out, out, 1, seed + 6, q));
}

} // namespace detail

/// ResNet-20 for CIFAR (32x32x3 by default, width w = 16): conv3x3 c->w + bn + relu; three
/// stages of 3 basic blocks with w, 2w, 4w channels (stages 2 and 3 start with stride 2 and a
/// 1x1-conv + bn projection shortcut); global average pool; fc 4w->classes.
/// Convolutions have no bias (batch norm follows each one).
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant>
auto resnet20(const model_options<T, Quant, EdgeQuant>& o = {}) {
  const std::size_t c = o.in_channels ? o.in_channels : 3;
  const std::size_t s = o.in_size ? o.in_size : 32;
  const std::size_t w = o.width ? o.width : 16;
  if (s < 4) throw config_error("resnet20: in_size must be >= 4, got " + std::to_string(s));
  const std::uint64_t seed = o.seed;
  return sequential(
      conv2d<T, EdgeQuant>({.in_channels = c,
                            .out_channels = w,
                            .kernel = 3,
                            .padding = 1,
                            .bias = false,
                            .seed = seed,
                            .name = "conv1"},
                           o.edge_options()),
      batch_norm<T, 4>({.features = w, .name = "bn1"}), relu<T, 4>("relu"),
      detail::resnet_stage<T, Quant, false>("layer1", w, w, 1, seed + 10, o.quant),
      detail::resnet_stage<T, Quant, true>("layer2", w, 2 * w, 2, seed + 20, o.quant),
      detail::resnet_stage<T, Quant, true>("layer3", 2 * w, 4 * w, 2, seed + 30, o.quant),
      global_avg_pool<T>("avgpool"),
      linear<T, EdgeQuant>(
          {.in_features = 4 * w, .out_features = o.num_classes, .seed = seed + 40, .name = "fc"},
          o.edge_options()));
}

} // namespace bitgrad::nn
