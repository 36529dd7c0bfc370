// Building an ONNX graph from a model file's operations (used by onnx/export.hpp): unique
// names, initializers, nodes, and the QDQ forms' weights and activation quantization.
//
//   weights (QDQ forms)   the runtime's int8 weights: the codes when every group has <= 8 bits
//                         (int4 in the qdq_int4 form when every group has <= 4 bits), otherwise
//                         each channel requantized to max|w| / 127; one scale per output channel,
//                         scale[o] = group_scale[group of o] * channel_scale[o]; zero points 0.
//   activations           QuantizeLinear -> DequantizeLinear, int8, scale range / 127, zero 0.
#pragma once

#include <bitgrad/deploy/int8_gemm.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/kernels/ref/act_quantize.hpp>
#include <bitgrad/onnx/form.hpp>
#include <bitgrad/onnx/onnx_proto.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::onnx::detail {

/// v as a JSON list with 17 significant digits (enough to read every double back exactly).
inline std::string number_list(const std::vector<double>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) {
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", v[i]);
    if (i) s += ", ";
    s += b;
  }
  return s + "]";
}

/// n values as ONNX raw_data: little-endian, back to back.
template <class U>
std::string raw_bytes(const U* p, std::size_t n) {
  io::byte_writer w;
  w.put_array(std::span<const U>(p, n));
  return w.take();
}

/// int4 elements two per byte, element 2i in the low 4 bits of byte i (two's complement).
inline std::string pack_int4(const std::vector<std::int8_t>& v) {
  std::string out((v.size() + 1) / 2, '\0');
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto nibble = static_cast<unsigned char>(static_cast<unsigned char>(v[i]) & 0x0F);
    out[i / 2] =
        static_cast<char>(static_cast<unsigned char>(out[i / 2]) | (i % 2 ? nibble << 4 : nibble));
  }
  return out;
}

/// A weight tensor as the QDQ forms store it: int8 values and one scale per output channel.
struct qdq_weight {
  std::vector<std::int8_t> values;
  std::vector<float> scale; ///< per output channel, the folded channel scale multiplied in
  bool codes = false;       ///< values are the file's codes (every group <= 8 bits)
  int max_bits = 0;         ///< the widest group (0: a float32 tensor)
};

/// The runtime's int8 weights (deploy/runtime.hpp, prepare): the codes when every group has at
/// most 8 bits, else each channel requantized to max|w| / 127.
inline qdq_weight quantize_weight(const format::model_file& m, const format::operation& op) {
  const format::tensor_data& t = m.tensors[op.weight];
  const std::size_t out = t.channels(), per = t.per_channel();
  std::vector<float> cs(out, 1.0f);
  if (op.channel_scale != format::no_index) cs = m.tensors[op.channel_scale].values;
  qdq_weight q;
  q.values.resize(t.element_count());
  q.scale.resize(out);
  if (t.kind == format::tensor_kind::quantized)
    q.max_bits = *std::max_element(t.bits.begin(), t.bits.end());
  q.codes = t.kind == format::tensor_kind::quantized && q.max_bits <= 8;
  if (q.codes) {
    const std::vector<std::int32_t> c = t.codes();
    for (std::size_t k = 0; k < c.size(); ++k) q.values[k] = static_cast<std::int8_t>(c[k]);
    for (std::size_t o = 0; o < out; ++o) q.scale[o] = t.channel_scale(o) * cs[o];
    return q;
  }
  std::vector<float> w(t.element_count());
  t.dequantize(w.data());
  for (std::size_t o = 0; o < out; ++o) {
    const float* row = w.data() + o * per;
    float amax = 0;
    for (std::size_t k = 0; k < per; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float s = amax > 0 ? amax / 127.0f : 1.0f;
    deploy::quantize_int8(per, row, 1.0f / s, q.values.data() + o * per);
    q.scale[o] = s * cs[o];
  }
  return q;
}

/// Builds the graph: unique names, initializers, nodes.
class graph_builder {
public:
  explicit graph_builder(form f) : form_(f) {}

  /// base if no value / initializer has that name yet, else base_2, base_3, ...
  std::string unique(const std::string& base) {
    std::string name = base;
    for (int k = 2; used_.count(name); ++k) name = base + "_" + std::to_string(k);
    used_.insert(name);
    return name;
  }
  std::string unique_node(const std::string& base) {
    std::string name = base;
    for (int k = 2; used_nodes_.count(name); ++k) name = base + "_" + std::to_string(k);
    used_nodes_.insert(name);
    return name;
  }

  std::string initializer(const std::string& base, data_type type, std::vector<std::int64_t> dims,
                          std::string raw) {
    tensor_proto t;
    t.name = unique(base);
    t.type = type;
    t.dims = std::move(dims);
    t.raw_data = std::move(raw);
    g.initializer.push_back(std::move(t));
    return g.initializer.back().name;
  }
  std::string floats(const std::string& base, std::vector<std::int64_t> dims,
                     const std::vector<float>& v) {
    return initializer(base, data_type::float32, std::move(dims), raw_bytes(v.data(), v.size()));
  }

  /// Appends a node; its name is made unique unless `reserved` says it already is.
  node_proto& node(std::string op_type, const std::string& name, std::vector<std::string> in,
                   std::vector<std::string> out, bool reserved = false) {
    node_proto n;
    n.op_type = std::move(op_type);
    n.name = reserved ? name : unique_node(name);
    n.input = std::move(in);
    n.output = std::move(out);
    g.node.push_back(std::move(n));
    return g.node.back();
  }

  /// Quantize then dequantize x (per-tensor int8, zero point 0, scale range / 127): the
  /// activation quantization of the runtime's int8 path. Returns the dequantized value's name.
  std::string fake_quantize_input(const std::string& x, const std::string& base, float range) {
    const float scale = range / 127.0f;
    const std::string s = floats(base + ".input_scale", {}, {scale});
    const std::int8_t zero = 0;
    const std::string z =
        initializer(base + ".input_zero_point", data_type::int8, {}, raw_bytes(&zero, 1));
    const std::string q = unique(base + ".input_quantized");
    const std::string dq = unique(base + ".input_dequantized");
    node("QuantizeLinear", base + ".quantize_input", {x, s, z}, {q});
    node("DequantizeLinear", base + ".dequantize_input", {q, s, z}, {dq});
    return dq;
  }

  /// An act_quant operation as QuantizeLinear / DequantizeLinear on its learned grid (every
  /// form: the grid is part of the model). Per channel c of group g: step s_c, codes
  /// lower_c..L_c (make_act_grid); unsigned grids use uint8 with zero point 0, signed ones
  /// int8 with zero point 0; one group gives per-tensor scales, several a per-channel scale
  /// (axis 1). Where the 8-bit type is wider than the grid (unsigned k < 8; signed: int8 holds
  /// -128 but the grid stops at -L), Max / Min first clamp x to [lower_c s_c, L_c s_c], so the
  /// rounding lands on lower_c..L_c: ONNX rounds x / s half to even, as bitgrad rounds x (1 / s)
  /// with nearbyint (the two can differ at an exact tie by the division's last bit).
  /// The DequantizeLinear writes `out`.
  void act_quantize(const std::string& x, const std::string& base, const format::act_quant_attrs& a,
                    std::size_t channels, int rank, const std::string& out) {
    const std::size_t groups = a.bits.size();
    const bool per_channel = groups > 1;
    const std::size_t n = per_channel ? channels : 1;
    std::vector<float> scale(n), lo(n), hi(n);
    bool clamp = false;
    for (std::size_t c = 0; c < n; ++c) {
      const std::size_t group = c / a.group_size;
      const act_grid<float> q =
          make_act_grid<float>(a.bits[group], a.ranges[group], a.is_signed, format::act_min_scale);
      scale[c] = q.scale;
      lo[c] = q.lower * q.scale;
      hi[c] = q.limit * q.scale;
      clamp = clamp || a.is_signed || q.limit < 255.0f;
    }
    std::vector<std::int64_t> bound_dims;
    if (per_channel) {
      bound_dims = {static_cast<std::int64_t>(channels)};
      if (rank == 3) bound_dims.insert(bound_dims.end(), {1, 1});
    }
    std::string v = x;
    if (clamp) {
      const std::string above = unique(base + ".clamped_below");
      node("Max", base + ".clamp_below", {v, floats(base + ".lower", bound_dims, lo)}, {above});
      v = unique(base + ".clamped");
      node("Min", base + ".clamp_above", {above, floats(base + ".upper", bound_dims, hi)}, {v});
    }
    const std::vector<std::int64_t> dims =
        per_channel ? std::vector<std::int64_t>{static_cast<std::int64_t>(channels)}
                    : std::vector<std::int64_t>{};
    const std::string s = floats(base + ".scale", dims, scale);
    const std::vector<std::uint8_t> zeros(n, 0);
    const std::string z =
        initializer(base + ".zero_point", a.is_signed ? data_type::int8 : data_type::uint8, dims,
                    raw_bytes(zeros.data(), zeros.size()));
    const std::string q = unique(base + ".quantized");
    node("QuantizeLinear", base + ".quantize", {v, s, z}, {q});
    if (per_channel) g.node.back().attribute.push_back(attribute_proto::of_int("axis", 1));
    node("DequantizeLinear", base, {q, s, z}, {out}, true);
    if (per_channel) g.node.back().attribute.push_back(attribute_proto::of_int("axis", 1));
  }

  /// The weight of a conv2d / linear as a value name: a float initializer (float32 form) or
  /// the output of a DequantizeLinear of int8 / int4 codes (QDQ forms).
  std::string weight(const format::model_file& m, const format::operation& op,
                     const std::string& base, std::string& doc) {
    const format::tensor_data& t = m.tensors[op.weight];
    const std::vector<std::int64_t> dims(t.extents.begin(), t.extents.end());
    if (t.kind == format::tensor_kind::quantized) {
      const auto [lo, hi] = std::minmax_element(t.bits.begin(), t.bits.end());
      doc = std::to_string(t.group_count()) + " groups of " + std::to_string(t.group_size) +
            " channels, bitwidths " + std::to_string(int(*lo)) + ".." + std::to_string(int(*hi));
    } else {
      doc = "float32 weights";
    }
    if (form_ == form::float32) {
      std::vector<float> w(t.element_count());
      t.dequantize(w.data());
      if (op.channel_scale != format::no_index) {
        const std::vector<float>& cs = m.tensors[op.channel_scale].values;
        const std::size_t per = t.per_channel();
        for (std::size_t k = 0; k < w.size(); ++k) w[k] *= cs[k / per];
      }
      return floats(base + ".weight", dims, w);
    }
    const qdq_weight q = quantize_weight(m, op);
    const bool int4 = form_ == form::qdq_int4 && q.codes && q.max_bits <= 4;
    const std::vector<std::int8_t> zeros(q.scale.size(), 0);
    const data_type type = int4 ? data_type::int4 : data_type::int8;
    auto pack = [&](const std::vector<std::int8_t>& v) {
      return int4 ? pack_int4(v) : raw_bytes(v.data(), v.size());
    };
    doc += q.codes ? (int4 ? ", codes in int4" : ", codes in int8")
                   : ", requantized to int8 per channel (max|w| / 127)";
    const std::string wq = initializer(base + ".weight_quantized", type, dims, pack(q.values));
    const std::int64_t out = static_cast<std::int64_t>(q.scale.size());
    const std::string s = floats(base + ".weight_scale", {out}, q.scale);
    const std::string z = initializer(base + ".weight_zero_point", type, {out}, pack(zeros));
    const std::string w = unique(base + ".weight");
    node("DequantizeLinear", base + ".dequantize_weight", {wq, s, z}, {w})
        .attribute.push_back(attribute_proto::of_int("axis", 0));
    return w;
  }

  /// The shared Clip bounds of relu6.
  std::pair<std::string, std::string> relu6_bounds() {
    if (relu6_min_.empty()) {
      relu6_min_ = floats("relu6.min", {}, {0.0f});
      relu6_max_ = floats("relu6.max", {}, {6.0f});
    }
    return {relu6_min_, relu6_max_};
  }

  graph_proto g;

private:
  form form_;
  std::set<std::string> used_, used_nodes_;
  std::string relu6_min_, relu6_max_;
};

} // namespace bitgrad::onnx::detail
