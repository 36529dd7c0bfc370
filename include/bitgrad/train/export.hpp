// Export: a trained network -> a model file (docs/model-format.md), and the calibration of the
// integer inference path.
//
//   net.visit_quantizers([](auto, auto& q) { q.freeze(quant::rounding::nearest); });
//   train::export_model(net, "runs/x/model.bgm", train_set, normalise);   // writes atomically
//   train::export_model(trainer, "runs/x/model.bgm");  // after trainer.run(): its quantized
//                                                      // net, training set and normalisation
//
// What is written, layer by layer (the network is walked through its sequential / residual
// structure, as nn::visit_layers does):
//   conv2d, linear   the weights from the frozen quantizer: group size, frozen_bits(),
//                    group_scales(w) and codes(w) (code * scale == the eval forward's weight,
//                    exactly); no_quant layers as float32. Bias as float32. A batch norm right
//                    after the layer is folded (eval mode) into a float32 channel scale
//                    gamma / sqrt(var + eps) and the bias (b - mean) * scale + beta, leaving the
//                    codes as trained. A fused ReLU becomes a relu operation.
//   max/avg pool, global average pool, relu, relu6, flatten: one operation each.
//   activation_quant an act_quant operation (format version 2) with the frozen bitwidths and
//                    the learned ranges per group; the runtime's fake-quant on that grid is the
//                    eval forward's, exactly.
//   residual         block and shortcut read the same value, then an add.
//   identity, dropout (eval: identity): nothing.
// Operation names are the layers' full names, as nn::visit_layers and the trainer's summary give
// them: "conv1", "layer2.0.conv1", "layer2.0.shortcut.conv", "layer2.0.add".
// Each layer type says how it is written through a specialisation of export_rule (below): a new
// layer type joins the export by adding its own, without touching this header.
// Anything else (an unfoldable batch norm, a layer without a rule) throws config_error, and so does
// a NaN or infinite weight, group scale, bias or folded channel scale (naming the layer).
//
// Calibration (int8 path): the first `calibration_images` images of a data set go through the
// float runtime in eval mode; each conv2d / linear records max |input| over them (its
// input_range; the int8 scale is range / 127).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/dropout.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/identity.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/pooling.hpp>
#include <bitgrad/nn/residual.hpp>
#include <bitgrad/nn/sequential.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace bitgrad::train {

namespace detail {

template <class L>
inline constexpr bool is_batch_norm = false;
template <class T, std::size_t R>
inline constexpr bool is_batch_norm<nn::batch_norm<T, R>> = true;

/// Builds a model_file operation by operation, inferring shapes as it goes.
class model_builder {
public:
  explicit model_builder(format::shape input) {
    m_.input = input;
    shapes_.push_back(input);
  }

  std::uint32_t value() const { return value_; }
  void set_value(std::uint32_t v) { value_ = v; }

  std::uint32_t add_tensor(format::tensor_data t) {
    m_.tensors.push_back(std::move(t));
    return static_cast<std::uint32_t>(m_.tensors.size() - 1);
  }

  /// Appends op reading the current value (and op.input_b for add); it becomes the current value.
  void push(format::operation op) {
    op.input = value_;
    const std::size_t i = m_.ops.size();
    auto fail = [&](const std::string& reason) {
      throw config_error("export: layer " + op.name + " (" + format::to_string(op.kind) +
                         "): " + reason);
    };
    const format::shape* b = op.kind == format::op_kind::add ? &shapes_[op.input_b] : nullptr;
    op.output = format::detail::infer_output(op, shapes_[op.input], b, m_.tensors, fail);
    shapes_.push_back(op.output);
    m_.ops.push_back(std::move(op));
    value_ = static_cast<std::uint32_t>(i + 1);
  }

  format::model_file take() { return std::move(m_); }

private:
  format::model_file m_;
  std::vector<format::shape> shapes_;
  std::uint32_t value_ = 0;
};

template <class V>
std::vector<float> to_floats(const V& v, std::size_t n) {
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

/// Throws config_error naming the layer when one of the n values is NaN or infinite
/// (`what` names the values: "weight", "bias", ...; `origin`, if any, where they come from).
template <class V>
void check_finite(const std::string& layer, const char* what, const V* v, std::size_t n,
                  const std::string& origin = "") {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw config_error("export: layer " + layer + ": " + what + " " + std::to_string(i) + " of " +
                         std::to_string(n) + " is not finite (" +
                         format::detail::value_str(static_cast<double>(v[i])) +
                         (origin.empty() ? "" : "; " + origin) + ")");
}

/// The weight tensor of a conv2d / linear from its (frozen) quantizer.
template <class Layer>
format::tensor_data weight_tensor(const Layer& l, std::vector<std::uint32_t> extents) {
  using Q = typename Layer::quantizer_type;
  const auto& w = l.weight();
  const Q& q = l.quantizer();
  // Before the codes: a NaN weight has no code (its conversion to an integer is undefined).
  check_finite(l.name(), "weight", w.data(), w.size());
  if constexpr (Q::is_identity) {
    std::vector<float> values = to_floats(w.data(), w.size());
    check_finite(l.name(), "weight (as float32)", values.data(), values.size());
    return format::tensor_data::from_floats(std::move(extents), std::move(values));
  } else {
    if (!q.frozen())
      throw config_error("export: " + l.name() +
                         ": the quantizer is not frozen; call freeze() on every quantizer first");
    const auto group_scales = q.group_scales(w.data());
    const std::vector<float> scales = to_floats(group_scales, group_scales.size());
    for (std::size_t g = 0; g < scales.size(); ++g)
      if (!(std::isfinite(scales[g]) && scales[g] > 0))
        throw config_error("export: layer " + l.name() + ": scale of group " + std::to_string(g) +
                           " is not finite and positive (" + format::detail::value_str(scales[g]) +
                           ")");
    std::vector<std::int32_t> codes(w.size());
    q.codes(w.data(), codes.data());
    const std::vector<int> kbits = q.frozen_bits();
    std::vector<std::uint8_t> bits(kbits.size());
    for (std::size_t g = 0; g < kbits.size(); ++g) bits[g] = static_cast<std::uint8_t>(kbits[g]);
    // The full grid (fixed_bits' options::grid) is stored per tensor: its codes reach -2^(k-1).
    bool full_grid = false;
    if constexpr (requires { q.full_grid(); }) full_grid = q.full_grid();
    return format::tensor_data::from_codes(std::move(extents),
                                           static_cast<std::uint32_t>(q.group_size()),
                                           std::move(bits), scales, codes, full_grid);
  }
}

} // namespace detail

/// How a layer type is written to a model file. A layer type joins the export by specialising
/// export_rule (beside the layer, or in the user's code), with
///   static void emit(exporter& e, L& l);    // push the layer's operations through e
/// and, for a layer a batch norm right after it is folded into (conv2d, linear),
///   static constexpr bool absorbs_batch_norm = true;
///   template <class BN> static void emit(exporter& e, L& l, const BN* bn);   // bn: nullptr or
///                                                                             // the next layer
/// A layer type without a rule makes the export throw config_error naming the layer.
template <class L>
struct export_rule {};

/// Walks a network and builds its model file: layers add their operations through push(),
/// their tensors through add_tensor(); emit() hands a (sub)layer to its export_rule.
class exporter {
public:
  explicit exporter(format::shape input) : b_(input) {}

  template <class L>
  void emit(L& l) {
    using rule = export_rule<std::remove_cvref_t<L>>;
    if constexpr (requires { rule::emit(*this, l); })
      rule::emit(*this, l);
    else
      throw config_error("export: layer " + l.name() + " (" + l.describe() +
                         ") has no model-file operation");
  }

  /// Emits the layers of a sequential in order, folding each batch norm into the layer before it
  /// when that layer's rule absorbs batch norms.
  template <std::size_t I = 0, class Seq>
  void emit_sequential(Seq& s) {
    if constexpr (I < Seq::size) {
      auto& l = s.template get<I>();
      using rule = export_rule<std::remove_cvref_t<decltype(l)>>;
      if constexpr (I + 1 < Seq::size) {
        if constexpr (requires { requires rule::absorbs_batch_norm; }) {
          auto& next = s.template get<I + 1>();
          if constexpr (detail::is_batch_norm<std::remove_cvref_t<decltype(next)>>) {
            rule::emit(*this, l, &next);
            emit_sequential<I + 2>(s);
            return;
          }
        }
      }
      emit(l);
      emit_sequential<I + 1>(s);
    }
  }

  /// The current value (the output of the last operation; 0: the network's input).
  std::uint32_t value() const { return b_.value(); }
  void set_value(std::uint32_t v) { b_.set_value(v); }
  /// Adds a tensor to the file; returns its index for an operation's weight / bias / scale.
  std::uint32_t add_tensor(format::tensor_data t) { return b_.add_tensor(std::move(t)); }
  /// Appends op reading the current value (and op.input_b for add); it becomes the current value.
  /// Its name is prefixed with the enclosing compositions' names, as nn::visit_layers names
  /// leaves ("layer1.0.conv1", "layer1.0.add"), so every operation of a nested network has the
  /// name the trainer's summary gives its layer.
  void push(format::operation op) {
    op.name = nn::join_name(scope_, op.name);
    b_.push(std::move(op));
  }

  /// Emits `emit_contents()` inside the composition named `name` (empty: no new scope).
  template <class F>
  void within(std::string_view name, F&& emit_contents) {
    const std::string outer = scope_;
    scope_ = nn::join_name(outer, name);
    try {
      emit_contents();
    } catch (...) {
      scope_ = outer;
      throw;
    }
    scope_ = outer;
  }

  format::model_file take() { return b_.take(); }

private:
  detail::model_builder b_;
  std::string scope_; ///< joined names of the compositions being emitted
};

namespace detail {

/// A conv2d or linear as one operation (weights from the frozen quantizer, bias, a folded batch
/// norm's channel scale), then a relu operation for a fused ReLU.
template <class Layer, class BN>
void emit_weighted(exporter& e, Layer& l, const BN* bn) {
  using T = typename Layer::value_type;
  format::operation op;
  op.name = l.name();
  std::vector<std::uint32_t> extents;
  std::size_t out = 0;
  bool fused_relu = false;
  if constexpr (requires { l.options().fuse_relu; }) { // conv2d
    const nn::conv2d_options& o = l.options();
    auto u = [](std::size_t v) { return static_cast<std::uint32_t>(v); };
    op.kind = format::op_kind::conv2d;
    op.conv = {u(o.in_channels), u(o.out_channels), u(o.kernel),  u(o.kernel),
               u(o.stride),      u(o.stride),       u(o.padding), u(o.padding),
               u(o.dilation),    u(o.dilation),     u(o.groups)};
    extents = {u(o.out_channels), u(o.in_channels / o.groups), u(o.kernel), u(o.kernel)};
    out = o.out_channels;
    fused_relu = o.fuse_relu;
    if (fused_relu && bn != nullptr)
      throw config_error("export: " + l.name() + " fuses a ReLU before batch norm " + bn->name() +
                         "; cannot fold");
  } else { // linear
    op.kind = format::op_kind::linear;
    op.fc = {static_cast<std::uint32_t>(l.in_features()),
             static_cast<std::uint32_t>(l.out_features())};
    extents = {op.fc.out_features, op.fc.in_features};
    out = l.out_features();
  }
  op.weight = e.add_tensor(weight_tensor(l, extents));
  const std::uint32_t n = static_cast<std::uint32_t>(out);
  if (bn != nullptr) {
    if (bn->features() != out)
      throw config_error("export: batch norm " + bn->name() + " has " +
                         std::to_string(bn->features()) + " channels but " + l.name() + " has " +
                         std::to_string(out));
    std::vector<float> scale(out), bias(out);
    for (std::size_t c = 0; c < out; ++c) {
      const T s = bn->gamma()[c] / std::sqrt(bn->running_var()[c] + bn->eps());
      const T b0 = l.has_bias() ? l.bias()[c] : T(0);
      scale[c] = static_cast<float>(s);
      bias[c] = static_cast<float>((b0 - bn->running_mean()[c]) * s + bn->beta()[c]);
    }
    const std::string origin = "batch norm " + bn->name() + " folded in";
    check_finite(l.name(), "channel scale", scale.data(), out, origin);
    check_finite(l.name(), "bias", bias.data(), out, origin);
    op.channel_scale = e.add_tensor(format::tensor_data::from_floats({n}, std::move(scale)));
    op.bias = e.add_tensor(format::tensor_data::from_floats({n}, std::move(bias)));
  } else if (l.has_bias()) {
    std::vector<float> bias = to_floats(l.bias().data(), out);
    check_finite(l.name(), "bias", bias.data(), out);
    op.bias = e.add_tensor(format::tensor_data::from_floats({n}, std::move(bias)));
  }
  e.push(std::move(op));
  if (fused_relu) {
    format::operation r;
    r.kind = format::op_kind::relu;
    r.name = l.name() + ".relu";
    e.push(std::move(r));
  }
}

/// A layer that is one operation of `kind` with no parameters.
template <format::op_kind Kind>
struct plain_op_rule {
  template <class L>
  static void emit(exporter& e, L& l) {
    format::operation op;
    op.kind = Kind;
    op.name = l.name();
    e.push(std::move(op));
  }
};

/// A pooling layer (kernel, stride, padding; square) as one operation of `kind`.
template <format::op_kind Kind>
struct pool_rule {
  template <class L>
  static void emit(exporter& e, L& l) {
    format::operation op;
    op.kind = Kind;
    op.name = l.name();
    const auto k = static_cast<std::uint32_t>(l.kernel()),
               s = static_cast<std::uint32_t>(l.stride()),
               p = static_cast<std::uint32_t>(l.padding());
    op.pool = {k, k, s, s, p, p};
    e.push(std::move(op));
  }
};

/// A layer that is y = x in eval mode: no operation.
struct passthrough_rule {
  template <class L>
  static void emit(exporter&, L&) {}
};

/// A layer with weights that a following batch norm folds into.
struct weighted_rule {
  static constexpr bool absorbs_batch_norm = true;
  template <class L>
  static void emit(exporter& e, L& l) {
    emit_weighted(e, l, static_cast<const nn::batch_norm<typename L::value_type, 2>*>(nullptr));
  }
  template <class L, class BN>
  static void emit(exporter& e, L& l, const BN* bn) {
    emit_weighted(e, l, bn);
  }
};

} // namespace detail

// The rules of bitgrad's own layers.
template <class... L>
struct export_rule<nn::sequential<L...>> {
  static void emit(exporter& e, nn::sequential<L...>& s) {
    e.within(s.name(), [&] { e.emit_sequential(s); });
  }
};
template <class B, class S>
struct export_rule<nn::residual<B, S>> {
  /// block and shortcut read the same value, then an add.
  static void emit(exporter& e, nn::residual<B, S>& l) {
    e.within(l.name(), [&] {
      const std::uint32_t x = e.value();
      e.emit(l.block());
      const std::uint32_t a = e.value();
      e.set_value(x);
      e.emit(l.shortcut());
      format::operation add;
      add.kind = format::op_kind::add;
      add.name = "add";
      add.input_b = e.value();
      e.set_value(a);
      e.push(std::move(add));
    });
  }
};
template <class T, template <class> class Q>
struct export_rule<nn::conv2d<T, Q>> : detail::weighted_rule {};
template <class T, template <class> class Q>
struct export_rule<nn::linear<T, Q>> : detail::weighted_rule {};
template <class T, std::size_t R>
struct export_rule<nn::batch_norm<T, R>> {
  /// Only folded into the layer before it (exporter::emit_sequential).
  static void emit(exporter&, nn::batch_norm<T, R>& l) {
    throw config_error("export: batch norm " + l.name() +
                       " does not follow a conv2d or linear layer; it cannot be folded");
  }
};
template <class T>
struct export_rule<nn::max_pool2d<T>> : detail::pool_rule<format::op_kind::max_pool2d> {};
template <class T>
struct export_rule<nn::avg_pool2d<T>> : detail::pool_rule<format::op_kind::avg_pool2d> {};
template <class T>
struct export_rule<nn::global_avg_pool<T>>
    : detail::plain_op_rule<format::op_kind::global_avg_pool> {};
template <class T, std::size_t R>
struct export_rule<nn::relu<T, R>> : detail::plain_op_rule<format::op_kind::relu> {};
template <class T, std::size_t R>
struct export_rule<nn::relu6<T, R>> : detail::plain_op_rule<format::op_kind::relu6> {};
template <class T>
struct export_rule<nn::flatten<T>> : detail::plain_op_rule<format::op_kind::flatten> {};
template <class T, std::size_t R>
struct export_rule<nn::identity<T, R>> : detail::passthrough_rule {};
template <class T, std::size_t R, template <class> class A>
struct export_rule<nn::activation_quant<T, R, A>> {
  /// The frozen bitwidths and the ranges of every group.
  static void emit(exporter& e, nn::activation_quant<T, R, A>& l) {
    const auto& q = l.activation_quantizer();
    if (!q.frozen())
      throw config_error("export: layer '" + l.name() +
                         "': the activation quantizer is not frozen (freeze its bitwidths first)");
    format::operation op;
    op.kind = format::op_kind::act_quant;
    op.name = l.name();
    op.act.is_signed = q.is_signed();
    op.act.group_size = static_cast<std::uint32_t>(q.group_size());
    for (int k : q.frozen_bits()) op.act.bits.push_back(static_cast<std::uint8_t>(k));
    for (auto r : q.group_ranges()) {
      const float f = static_cast<float>(r);
      if (!std::isfinite(f) || !(f > 0))
        throw config_error("export: layer '" + l.name() + "': activation range " +
                           std::to_string(f) + " is not finite and > 0");
      op.act.ranges.push_back(f);
    }
    e.push(std::move(op));
  }
};
template <class T, std::size_t R>
struct export_rule<nn::dropout<T, R>> : detail::passthrough_rule {};

/// The model file of `net` (every quantizer frozen) for per-image inputs of shape `input`,
/// with the input normalisation `mean` / `stddev` (as loader_options: empty, one value, or one
/// per channel). Not calibrated (see calibrate).
template <class Net>
format::model_file to_model_file(Net& net, format::shape input, std::vector<double> mean = {},
                                 std::vector<double> stddev = {}) {
  exporter e(input);
  e.emit(net);
  format::model_file m = e.take();
  m.mean = std::move(mean);
  m.stddev = std::move(stddev);
  if (m.stddev.size() != m.mean.size())
    throw config_error("export: mean and stddev must have the same number of values");
  return m;
}

/// Sets every conv2d / linear input range of m to max |input| over the first `images` images
/// of `data` (normalised with m's normalisation), run through the float runtime in batches.
inline void calibrate(format::model_file& m, const dataset& data, std::size_t images = 1024,
                      std::size_t batch = 256) {
  validate(data, "calibration data");
  if (data.image_size() != m.input.elements())
    throw config_error("calibrate: images of " + std::to_string(data.image_size()) +
                       " values, model input " + m.input.str());
  const deploy::runtime rt(m);
  images = std::min(images, data.size());
  std::vector<float> range(m.ops.size(), 0.0f);
  for (std::size_t at = 0; at < images; at += batch) {
    const std::size_t n = std::min(batch, images - at);
    const std::vector<float> x = rt.normalise(data.pixels.data() + at * data.image_size(), n);
    const std::vector<float> r = rt.input_ranges(x.data(), n);
    for (std::size_t i = 0; i < r.size(); ++i) range[i] = std::max(range[i], r[i]);
  }
  for (std::size_t i = 0; i < m.ops.size(); ++i)
    if (m.ops[i].kind == format::op_kind::conv2d || m.ops[i].kind == format::op_kind::linear)
      m.ops[i].input_range = range[i] > 0 ? range[i] : 1.0f;
}

/// Exports `net` (quantizers frozen) to `path` atomically, calibrated on the first
/// `calibration_images` images of `calibration` and normalised as `normalise` says (its mean
/// and stddev are stored in the file, so the runtime normalises by itself). Returns the bytes
/// written. With a train::trainer, export_model(trainer, path) below passes all of this.
template <class Net>
std::size_t export_model(Net& net, const std::filesystem::path& path, const dataset& calibration,
                         const loader_options& normalise, std::size_t calibration_images = 1024) {
  format::model_file m =
      to_model_file(net,
                    format::shape::image(static_cast<std::uint32_t>(calibration.channels),
                                         static_cast<std::uint32_t>(calibration.height),
                                         static_cast<std::uint32_t>(calibration.width)),
                    normalise.mean, normalise.stddev);
  calibrate(m, calibration, calibration_images);
  return format::write_model_file(path, m);
}

/// Exports a train::trainer's quantized network (after run(): quantizers frozen) to `path`,
/// calibrated on the first `calibration_images` images of the trainer's training set and
/// normalised as its trainer_options::normalise says: the trainer already holds the network,
/// the data and the normalisation, so none of them is passed a second time. Returns the bytes
/// written. (Any Trainer with quantized(), train_set() and options().normalise will do.)
template <class Trainer>
requires requires(Trainer& t) {
  t.quantized();
  { t.train_set() } -> std::convertible_to<const dataset&>;
  { t.options().normalise } -> std::convertible_to<const loader_options&>;
}
std::size_t export_model(Trainer& trainer, const std::filesystem::path& path,
                         std::size_t calibration_images = 1024) {
  return export_model(trainer.quantized(), path, trainer.train_set(), trainer.options().normalise,
                      calibration_images);
}

} // namespace bitgrad::train
