// ONNX export of a model file (docs/onnx.md): format::model_file -> an ONNX ModelProto, written
// with bitgrad's own protobuf encoder (onnx/protobuf.hpp, onnx/onnx_proto.hpp). Reads format/
// only, like the runtime: no training code.
//
//   auto m = format::read_model_file("model.bgm");
//   onnx::write_onnx_file("model.onnx", m, {.form = onnx::form::qdq});   // atomic
//
// Three forms, each meaning what deploy::runtime computes:
//   float32   opset 13. Every weight decoded to float, code * scale * channel_scale, exactly
//             the runtime's float path.
//   qdq       opset 13. The runtime's int8 path as QuantizeLinear / DequantizeLinear pairs:
//             weights are int8 initializers (the codes themselves when every group has at
//             most 8 bits; otherwise requantized per output channel to max|w| / 127, as the
//             runtime does) dequantized per output channel (axis 0) with
//             scale[o] = group_scale[group of o] * channel_scale[o]: a group's scale repeated
//             for each channel of the group, the folded batch norm multiplied in. Each conv2d /
//             linear with a calibrated input range quantizes its input to int8 with the
//             per-tensor scale range / 127 (zero point 0) and dequantizes it again. Biases stay
//             float32 and are added by an Add after the Conv / Gemm, as the runtime adds them
//             after the integer sums: given to Conv / Gemm directly, ONNX Runtime's optimizer
//             (WeightBiasQuantization) would round them to int32 at scale s_x * s_w[o] whenever
//             the layer's output reaches a QuantizeLinear through Relu / Clip only.
//   qdq_int4  opset 21 (IR 10): as qdq, but weight tensors whose groups all have at most 4 bits
//             travel as int4 (two codes per byte). python3-onnx 1.12 cannot check it; ONNX
//             Runtime runs it.
//
// Operations: conv2d -> Conv, linear -> Gemm (transB = 1) (QDQ forms: + Add of the bias),
// max_pool2d -> MaxPool,
// avg_pool2d -> AveragePool (count_include_pad = 1), global_avg_pool -> GlobalAveragePool +
// Flatten, relu -> Relu, relu6 -> Clip(0, 6), flatten -> Flatten (axis 1), add -> Add,
// act_quant (at most 8 bits; more is refused, naming the operation) -> [Max, Min,]
// QuantizeLinear, DequantizeLinear on the learned grid in every form (graph_builder.hpp:
// act_quantize).
// The graph input "input" is the normalised image batch (N, C, H, W) (or (N, F)), the output
// "output"; the normalisation x = (pixel / 255 - mean[c]) / stddev[c] is the model's input
// contract, stored as metadata (bitgrad.mean, bitgrad.stddev) and in the input's doc string,
// not as operations.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/onnx/form.hpp>
#include <bitgrad/onnx/graph_builder.hpp>
#include <bitgrad/onnx/onnx_proto.hpp>
#include <bitgrad/version.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad::onnx {

struct export_options {
  onnx::form form = form::float32;
  std::string graph_name = "bitgrad";
};

/// ONNX files are one protobuf message, which protobuf limits to 2 GiB.
inline constexpr std::size_t max_onnx_bytes = (std::size_t(1) << 31) - 1;

namespace detail {

inline std::vector<dimension> batch_shape(const format::shape& s) {
  std::vector<dimension> d{{0, "batch"}};
  d.push_back({s.dims[0], ""});
  if (s.rank == 3) {
    d.push_back({s.dims[1], ""});
    d.push_back({s.dims[2], ""});
  }
  return d;
}

inline bool supported(format::op_kind k) {
  switch (k) {
  case format::op_kind::conv2d:
  case format::op_kind::linear:
  case format::op_kind::max_pool2d:
  case format::op_kind::avg_pool2d:
  case format::op_kind::global_avg_pool:
  case format::op_kind::relu:
  case format::op_kind::relu6:
  case format::op_kind::flatten:
  case format::op_kind::add:
  case format::op_kind::act_quant:
    return true;
  }
  return false;
}

} // namespace detail

/// The ONNX model of m in the chosen form. Throws config_error naming the operation when m
/// holds an operation the export does not support, or when m is not a consistent model.
inline model_proto to_onnx(const format::model_file& model, const export_options& o = {}) {
  for (std::size_t i = 0; i < model.ops.size(); ++i)
    if (!detail::supported(model.ops[i].kind))
      throw config_error("onnx export: operation " + std::to_string(i) + " (" + model.ops[i].name +
                         ") has kind " + std::to_string(static_cast<int>(model.ops[i].kind)) +
                         ", which the ONNX export does not support yet");
  if (model.ops.empty()) throw config_error("onnx export: the model has no operations");
  format::model_file m = model;
  format::infer_shapes(m); // checks every shape and tensor reference

  detail::graph_builder b(o.form);
  b.g.name = o.graph_name;
  const std::string input = b.unique("input");
  (void)b.unique("output");
  std::vector<std::string> value{input};
  bool calibrated = true;
  for (std::size_t i = 0; i < m.ops.size(); ++i) {
    const format::operation& op = m.ops[i];
    const std::string base = b.unique_node(op.name.empty() ? "op" + std::to_string(i) : op.name);
    const std::string out = i + 1 == m.ops.size() ? "output" : b.unique(base);
    const std::string& x = value[op.input];
    switch (op.kind) {
    case format::op_kind::conv2d:
    case format::op_kind::linear: {
      std::string in = x;
      if (o.form != form::float32) {
        if (op.input_range > 0)
          in = b.fake_quantize_input(x, base, op.input_range);
        else
          calibrated = false;
      }
      std::string doc;
      std::vector<std::string> inputs{in, b.weight(m, op, base, doc)};
      // The bias: an input of Conv / Gemm in the float32 form; in the QDQ forms an Add after
      // them (see the top of this header), shaped (out, 1, 1) for a conv's NCHW output.
      std::string bias, result = out;
      if (op.bias != format::no_index) {
        const std::vector<float>& v = m.tensors[op.bias].values;
        const auto n = static_cast<std::int64_t>(v.size());
        if (o.form == form::float32) {
          inputs.push_back(b.floats(base + ".bias", {n}, v));
        } else {
          bias = b.floats(base + ".bias",
                          op.kind == format::op_kind::conv2d ? std::vector<std::int64_t>{n, 1, 1}
                                                             : std::vector<std::int64_t>{n},
                          v);
          result = b.unique(base + ".without_bias");
        }
      }
      if (op.channel_scale != format::no_index) doc += ", batch norm folded";
      if (op.kind == format::op_kind::conv2d) {
        const format::conv_attrs& c = op.conv;
        node_proto& n = b.node("Conv", base, inputs, {result}, true);
        n.attribute = {attribute_proto::of_ints("dilations", {c.dilation_h, c.dilation_w}),
                       attribute_proto::of_int("group", c.groups),
                       attribute_proto::of_ints("kernel_shape", {c.kernel_h, c.kernel_w}),
                       attribute_proto::of_ints("pads", {c.pad_h, c.pad_w, c.pad_h, c.pad_w}),
                       attribute_proto::of_ints("strides", {c.stride_h, c.stride_w})};
        n.doc_string = doc;
      } else {
        node_proto& n = b.node("Gemm", base, inputs, {result}, true);
        n.attribute = {attribute_proto::of_int("transB", 1)};
        n.doc_string = doc;
      }
      if (!bias.empty()) b.node("Add", base + ".add_bias", {result, bias}, {out});
      break;
    }
    case format::op_kind::max_pool2d:
    case format::op_kind::avg_pool2d: {
      const format::pool_attrs& p = op.pool;
      const bool max = op.kind == format::op_kind::max_pool2d;
      node_proto& n = b.node(max ? "MaxPool" : "AveragePool", base, {x}, {out}, true);
      n.attribute = {attribute_proto::of_ints("kernel_shape", {p.kernel_h, p.kernel_w}),
                     attribute_proto::of_ints("pads", {p.pad_h, p.pad_w, p.pad_h, p.pad_w}),
                     attribute_proto::of_ints("strides", {p.stride_h, p.stride_w})};
      if (!max) n.attribute.push_back(attribute_proto::of_int("count_include_pad", 1));
      break;
    }
    case format::op_kind::global_avg_pool: {
      const std::string pooled = b.unique(base + ".pooled");
      b.node("GlobalAveragePool", base, {x}, {pooled}, true);
      b.node("Flatten", base + ".flatten", {pooled}, {out})
          .attribute.push_back(attribute_proto::of_int("axis", 1));
      break;
    }
    case format::op_kind::relu:
      b.node("Relu", base, {x}, {out}, true);
      break;
    case format::op_kind::relu6: {
      const auto [lo, hi] = b.relu6_bounds();
      b.node("Clip", base, {x, lo, hi}, {out}, true);
      break;
    }
    case format::op_kind::flatten:
      b.node("Flatten", base, {x}, {out}, true)
          .attribute.push_back(attribute_proto::of_int("axis", 1));
      break;
    case format::op_kind::add:
      b.node("Add", base, {x, value[op.input_b]}, {out}, true);
      break;
    case format::op_kind::act_quant: {
      for (std::size_t g = 0; g < op.act.bits.size(); ++g)
        if (op.act.bits[g] > 8)
          throw config_error("onnx export: operation " + std::to_string(i) + " (" + op.name +
                             "): act_quant group " + std::to_string(g) + " has " +
                             std::to_string(op.act.bits[g]) +
                             " bits; QuantizeLinear (opset 13) holds at most 8");
      b.act_quantize(x, base, op.act, op.output.dims[0], op.output.rank, out);
      break;
    }
    }
    value.push_back(out);
  }

  // Input contract and output.
  std::vector<double> mean = m.mean, stddev = m.stddev;
  const std::string contract =
      "x[c] = (pixel / 255 - mean[c]) / stddev[c] for 8-bit pixels, computed in double and "
      "rounded to float32 (bitgrad.mean, bitgrad.stddev: one value for every channel or one per "
      "channel; none recorded means mean 0, stddev 1)";
  value_info_proto in{input, "the normalised images, NCHW: " + contract, data_type::float32,
                      detail::batch_shape(m.input)};
  if (m.input.rank == 1) in.doc_string = "the normalised inputs (batch, features)";
  b.g.input.push_back(std::move(in));
  b.g.output.push_back({"output", "the network output (batch, ...)", data_type::float32,
                        detail::batch_shape(m.output())});
  b.g.doc_string = "exported by bitgrad from a .bgm model file";

  model_proto p;
  p.ir_version = ir_version_of(o.form);
  p.producer_name = "bitgrad";
  p.producer_version = BITGRAD_VERSION_STRING;
  p.doc_string = std::string("bitgrad mixed-precision model, ") + to_string(o.form) + " form";
  p.opset_import.push_back({"", opset_of(o.form)});
  p.graph = std::move(b.g);
  p.metadata_props = {{"bitgrad.form", to_string(o.form)},
                      {"bitgrad.input", contract},
                      {"bitgrad.mean", detail::number_list(mean)},
                      {"bitgrad.stddev", detail::number_list(stddev)}};
  if (o.form != form::float32)
    p.metadata_props.push_back(
        {"bitgrad.activation_quantization",
         calibrated ? "every conv / linear input: int8, scale = calibrated range / 127"
                    : "off for the conv / linear layers without a calibrated input range"});
  return p;
}

/// The bytes of the .onnx file of m (at most 2 GiB; config_error above).
inline std::string to_onnx_bytes(const format::model_file& m, const export_options& o = {}) {
  std::string bytes = serialize(to_onnx(m, o));
  if (bytes.size() > max_onnx_bytes)
    throw config_error("onnx export: the " + std::string(to_string(o.form)) + " model takes " +
                       std::to_string(bytes.size()) +
                       " bytes; ONNX files without external data are limited to 2 GiB");
  return bytes;
}

/// Writes m as an ONNX file atomically (temporary + rename: a failed write leaves no partial
/// file). Returns the bytes written.
inline std::size_t write_onnx_file(const std::filesystem::path& path, const format::model_file& m,
                                   const export_options& o = {}) {
  const std::string bytes = to_onnx_bytes(m, o);
  write_file_atomically(path, bytes);
  return bytes.size();
}

} // namespace bitgrad::onnx
