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
//   ActQuant   activation quantizers (issue #22): quant::act_quantizer puts an
//              nn::activation_quant (unsigned grid) after every ReLU of lenet5, vgg_small and
//              resnet20 (each of them feeds a conv / linear, in lenet5 and vgg_small through at
//              most a max pool and a flatten, which keep values on the grid), built with
//              model_options::act_quant. It goes
//              there whatever the weight policy of the layer it feeds (a float last layer
//              still reads quantized activations). Named "<relu>_quant": "relu1_quant.bits",
//              "relu1_quant.range". The first conv reads the image unquantized (nn/
//              model_costs.hpp counts it as 8-bit data).
//              Default: nn::no_act_quant, a marker that adds no layer at all.
//              Why a template parameter and not a run-time flag or an identity-like layer: a
//              layer changes the network's type, and with the option off the network must be
//              exactly today's (the same sequential<...> type, the same parameter names, the
//              same outputs, bit for bit), so code and files written for it stay valid. A
//              run-time flag would need the quantizer layers in the type always (a "maybe
//              quantize" layer), changing every model's type and leaf list (summary, export,
//              visit_layers); a marker template adds nothing. resnet20 takes ActQuant too
//              (after its stem's ReLU and both ReLUs of every block); nn/model_costs.hpp does
//              not walk residual networks yet.
//              Spelled with nn::act_model_options<T, Quant> (EdgeQuant = Quant):
//                nn::act_model_options<float, quant::frac_bits> o{.act_quant = {.b_init = 4}};
//                auto net = nn::lenet5(o);
//
// Names follow PyTorch's conventions: "conv1", "fc3", "layer2.0.conv1", "layer2.0.shortcut.conv".
// Each layer draws its initial weights from its own seed (options.seed + its index).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/identity.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/pooling.hpp>
#include <bitgrad/nn/residual.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/quant/act_quantizer.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace bitgrad::nn {

/// model_options' default ActQuant: no activation quantizers (the builders add no layer).
template <class T>
struct no_act_quant {
  struct options {};
};

namespace detail {
template <class Q>
typename Q::options edge_defaults() {
  typename Q::options o{};
  if constexpr (std::is_same_v<Q, quant::fixed_bits<typename Q::value_type>>) o.bits = 8;
  return o;
}
template <template <class> class ActQuant>
inline constexpr bool has_act_quant = !std::is_same_v<ActQuant<float>, no_act_quant<float>>;

/// The activation quantizer after ReLU `relu_name` of a rank-Rank activation with `channels`
/// channels, as a tuple of one layer; an empty tuple for no_act_quant.
template <class T, std::size_t Rank, template <class> class ActQuant>
auto act_quant_after(const std::string& relu_name, std::size_t channels,
                     const typename ActQuant<T>::options& o) {
  if constexpr (!has_act_quant<ActQuant>) {
    return std::tuple<>{};
  } else {
    return std::tuple<activation_quant<T, Rank, ActQuant>>(activation_quant<T, Rank, ActQuant>(
        {.channels = channels, .name = relu_name + "_quant"}, o));
  }
}

/// The activation quantizers after ReLU use the unsigned grid: config_error otherwise.
template <class Options>
void check_act_options(const char* model, const Options& o) {
  if constexpr (requires { o.is_signed; })
    if (o.is_signed)
      throw config_error(std::string(model) +
                         ": the activation quantizers after ReLU use the unsigned grid; "
                         "expected act_quant.is_signed = false");
}

/// sequential(layers...) from a tuple of layers (moved out).
template <class Tuple>
auto sequential_of(Tuple&& layers) {
  return std::apply([](auto&&... l) { return sequential(std::move(l)...); },
                    std::forward<Tuple>(layers));
}
} // namespace detail

/// What every builder takes. Zeros mean "the model's default" (see each builder).
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant, template <class> class ActQuant = no_act_quant>
struct model_options {
  std::uint64_t seed = 0;
  /// The options of every quantizer (the edge layers' too unless edge_quant says otherwise).
  typename Quant<T>::options quant{};
  /// The options of the first conv and the last linear; unset: see edge_options().
  std::optional<typename EdgeQuant<T>::options> edge_quant{};
  /// The options of every activation quantizer (initial bits, bounds, range, relaxation);
  /// nothing to set for no_act_quant.
  typename ActQuant<T>::options act_quant{};
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

/// model_options with activation quantizers (quant::act_quantizer) and one weight policy.
template <class T, template <class> class Quant = quant::no_quant>
using act_model_options = model_options<T, Quant, Quant, quant::act_quantizer>;

/// LeNet-5 (28x28x1 by default): conv 1->6 5x5 -> relu -> maxpool 2 -> conv 6->16 5x5 -> relu
/// -> maxpool 2 -> flatten (16*4*4 = 256) -> fc 256->120 -> relu -> fc 120->84 -> relu ->
/// fc 84->classes. Input (N, in_channels, in_size, in_size), output (N, classes).
/// With ActQuant, "reluK_quant" right after each of the four ReLUs.
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant, template <class> class ActQuant = no_act_quant>
auto lenet5(const model_options<T, Quant, EdgeQuant, ActQuant>& o = {}) {
  const std::size_t c = o.in_channels ? o.in_channels : 1;
  const std::size_t s = o.in_size ? o.in_size : 28;
  if (s < 16 || (s - 4) % 2 != 0 || ((s - 4) / 2 - 4) % 2 != 0)
    throw config_error("lenet5: in_size must be >= 16 with (in_size - 4)/2 - 4 even, got " +
                       std::to_string(s));
  detail::check_act_options("lenet5", o.act_quant);
  const std::size_t f = ((s - 4) / 2 - 4) / 2;
  const std::uint64_t seed = o.seed;
  auto aq4 = [&](const char* relu, std::size_t ch) {
    return detail::act_quant_after<T, 4, ActQuant>(relu, ch, o.act_quant);
  };
  auto aq2 = [&](const char* relu, std::size_t ch) {
    return detail::act_quant_after<T, 2, ActQuant>(relu, ch, o.act_quant);
  };
  return detail::sequential_of(std::tuple_cat(
      std::make_tuple(
          conv2d<T, EdgeQuant>(
              {.in_channels = c, .out_channels = 6, .kernel = 5, .seed = seed, .name = "conv1"},
              o.edge_options()),
          relu<T, 4>("relu1")),
      aq4("relu1", 6),
      std::make_tuple(max_pool2d<T>({.kernel = 2, .name = "pool1"}),
                      conv2d<T, Quant>({.in_channels = 6,
                                        .out_channels = 16,
                                        .kernel = 5,
                                        .seed = seed + 1,
                                        .name = "conv2"},
                                       o.quant),
                      relu<T, 4>("relu2")),
      aq4("relu2", 16),
      std::make_tuple(
          max_pool2d<T>({.kernel = 2, .name = "pool2"}), flatten<T>("flatten"),
          linear<T, Quant>(
              {.in_features = 16 * f * f, .out_features = 120, .seed = seed + 2, .name = "fc1"},
              o.quant),
          relu<T, 2>("relu3")),
      aq2("relu3", 120),
      std::make_tuple(
          linear<T, Quant>(
              {.in_features = 120, .out_features = 84, .seed = seed + 3, .name = "fc2"}, o.quant),
          relu<T, 2>("relu4")),
      aq2("relu4", 84),
      std::make_tuple(linear<T, EdgeQuant>(
          {.in_features = 84, .out_features = o.num_classes, .seed = seed + 4, .name = "fc3"},
          o.edge_options()))));
}

/// A small VGG-style net (28x28x1 by default, width w = 32): conv3x3 pad 1 c->w -> relu ->
/// w->w -> relu -> maxpool 2 -> w->2w -> relu -> 2w->2w -> relu -> maxpool 2 -> flatten
/// (2w * (s/4)^2) -> fc hidden -> relu -> fc classes. in_size must be a multiple of 4.
/// With ActQuant, "reluK_quant" right after each of the five ReLUs.
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant, template <class> class ActQuant = no_act_quant>
auto vgg_small(const model_options<T, Quant, EdgeQuant, ActQuant>& o = {}) {
  const std::size_t c = o.in_channels ? o.in_channels : 1;
  const std::size_t s = o.in_size ? o.in_size : 28;
  const std::size_t w = o.width ? o.width : 32;
  if (s < 4 || s % 4 != 0)
    throw config_error("vgg_small: in_size must be a positive multiple of 4, got " +
                       std::to_string(s));
  if (o.hidden == 0) throw config_error("vgg_small: hidden must be >= 1");
  detail::check_act_options("vgg_small", o.act_quant);
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
  auto aq4 = [&](const char* relu, std::size_t ch) {
    return detail::act_quant_after<T, 4, ActQuant>(relu, ch, o.act_quant);
  };
  return detail::sequential_of(std::tuple_cat(
      std::make_tuple(conv2d<T, EdgeQuant>({.in_channels = c,
                                            .out_channels = w,
                                            .kernel = 3,
                                            .padding = 1,
                                            .seed = seed,
                                            .name = "conv1"},
                                           o.edge_options()),
                      relu<T, 4>("relu1")),
      aq4("relu1", w), std::make_tuple(conv(w, w, 1, "conv2"), relu<T, 4>("relu2")),
      aq4("relu2", w),
      std::make_tuple(max_pool2d<T>({.kernel = 2, .name = "pool1"}), conv(w, 2 * w, 2, "conv3"),
                      relu<T, 4>("relu3")),
      aq4("relu3", 2 * w), std::make_tuple(conv(2 * w, 2 * w, 3, "conv4"), relu<T, 4>("relu4")),
      aq4("relu4", 2 * w),
      std::make_tuple(max_pool2d<T>({.kernel = 2, .name = "pool2"}), flatten<T>("flatten"),
                      linear<T, Quant>({.in_features = 2 * w * (s / 4) * (s / 4),
                                        .out_features = o.hidden,
                                        .seed = seed + 4,
                                        .name = "fc1"},
                                       o.quant),
                      relu<T, 2>("relu5")),
      detail::act_quant_after<T, 2, ActQuant>("relu5", o.hidden, o.act_quant),
      std::make_tuple(linear<T, EdgeQuant>(
          {.in_features = o.hidden, .out_features = o.num_classes, .seed = seed + 5, .name = "fc2"},
          o.edge_options()))));
}

namespace detail {

/// ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs without
/// bias; the shortcut is identity, or conv 1x1 stride s + bn when the shape changes. With
/// ActQuant, "relu1_quant" after relu1 (it feeds conv2) and "relu_quant" after the block's
/// relu (it feeds the next block's conv1 and shortcut, or the average pool before fc).
template <class T, template <class> class Quant, template <class> class ActQuant, bool Projection>
auto basic_block(const std::string& name, std::size_t in, std::size_t out, std::size_t stride,
                 std::uint64_t seed, const typename Quant<T>::options& q,
                 const typename ActQuant<T>::options& aq) {
  auto body = sequential_of(std::tuple_cat(
      std::make_tuple(conv2d<T, Quant>({.in_channels = in,
                                        .out_channels = out,
                                        .kernel = 3,
                                        .stride = stride,
                                        .padding = 1,
                                        .bias = false,
                                        .seed = seed,
                                        .name = "conv1"},
                                       q),
                      batch_norm<T, 4>({.features = out, .name = "bn1"}), relu<T, 4>("relu1")),
      act_quant_after<T, 4, ActQuant>("relu1", out, aq),
      std::make_tuple(conv2d<T, Quant>({.in_channels = out,
                                        .out_channels = out,
                                        .kernel = 3,
                                        .padding = 1,
                                        .bias = false,
                                        .seed = seed + 1,
                                        .name = "conv2"},
                                       q),
                      batch_norm<T, 4>({.features = out, .name = "bn2"}))));
  auto tail = act_quant_after<T, 4, ActQuant>("relu", out, aq);
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
    return sequential_of(std::tuple_cat(
        std::make_tuple(name, residual(std::string(), std::move(body), std::move(shortcut)),
                        relu<T, 4>("relu")),
        std::move(tail)));
  } else {
    return sequential_of(std::tuple_cat(
        std::make_tuple(name, residual(std::string(), std::move(body), identity<T, 4>("shortcut")),
                        relu<T, 4>("relu")),
        std::move(tail)));
  }
}

/// Three basic blocks named "<stage>.0" .. "<stage>.2"; the first one projects when asked.
template <class T, template <class> class Quant, template <class> class ActQuant, bool Projection>
auto resnet_stage(const std::string& stage, std::size_t in, std::size_t out, std::size_t stride,
                  std::uint64_t seed, const typename Quant<T>::options& q,
                  const typename ActQuant<T>::options& aq) {
  return sequential(stage,
                    basic_block<T, Quant, ActQuant, Projection>("0", in, out, stride, seed, q, aq),
                    basic_block<T, Quant, ActQuant, false>("1", out, out, 1, seed + 3, q, aq),
                    basic_block<T, Quant, ActQuant, false>("2", out, out, 1, seed + 6, q, aq));
}

} // namespace detail

/// ResNet-20 for CIFAR (32x32x3 by default, width w = 16): conv3x3 c->w + bn + relu; three
/// stages of 3 basic blocks with w, 2w, 4w channels (stages 2 and 3 start with stride 2 and a
/// 1x1-conv + bn projection shortcut); global average pool; fc 4w->classes.
/// Convolutions have no bias (batch norm follows each one). With ActQuant, "relu_quant" after
/// the stem's relu and two in every block (see detail::basic_block): 19 in all.
template <class T, template <class> class Quant = quant::no_quant,
          template <class> class EdgeQuant = Quant, template <class> class ActQuant = no_act_quant>
auto resnet20(const model_options<T, Quant, EdgeQuant, ActQuant>& o = {}) {
  const std::size_t c = o.in_channels ? o.in_channels : 3;
  const std::size_t s = o.in_size ? o.in_size : 32;
  const std::size_t w = o.width ? o.width : 16;
  if (s < 4) throw config_error("resnet20: in_size must be >= 4, got " + std::to_string(s));
  detail::check_act_options("resnet20", o.act_quant);
  const std::uint64_t seed = o.seed;
  const auto& aq = o.act_quant;
  return detail::sequential_of(std::tuple_cat(
      std::make_tuple(conv2d<T, EdgeQuant>({.in_channels = c,
                                            .out_channels = w,
                                            .kernel = 3,
                                            .padding = 1,
                                            .bias = false,
                                            .seed = seed,
                                            .name = "conv1"},
                                           o.edge_options()),
                      batch_norm<T, 4>({.features = w, .name = "bn1"}), relu<T, 4>("relu")),
      detail::act_quant_after<T, 4, ActQuant>("relu", w, aq),
      std::make_tuple(detail::resnet_stage<T, Quant, ActQuant, false>("layer1", w, w, 1, seed + 10,
                                                                      o.quant, aq),
                      detail::resnet_stage<T, Quant, ActQuant, true>("layer2", w, 2 * w, 2,
                                                                     seed + 20, o.quant, aq),
                      detail::resnet_stage<T, Quant, ActQuant, true>("layer3", 2 * w, 4 * w, 2,
                                                                     seed + 30, o.quant, aq),
                      global_avg_pool<T>("avgpool"),
                      linear<T, EdgeQuant>({.in_features = 4 * w,
                                            .out_features = o.num_classes,
                                            .seed = seed + 40,
                                            .name = "fc"},
                                           o.edge_options()))));
}

} // namespace bitgrad::nn
