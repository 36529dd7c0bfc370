// The model description of a bit-packed mixed-precision model file: pure data (shapes,
// operations, tensors), no I/O and no training types. What a valid model is lives in
// format/validate.hpp, its bytes in format/codec.hpp (the layout: docs/model-format.md);
// format/model_file.hpp includes all three.
//
// Words (as in quant/quantizer.hpp and format/bitpack.hpp)
//   operation  one step of the network (conv2d, linear, pooling, activation, flatten, add,
//              act_quant: activation fake-quantization on a learned grid, format version 2);
//              reads one or two values, produces one value (value 0 = the network input,
//              operation i produces value i + 1).
//   tensor     a weight, bias or channel-scale tensor an operation refers to by index;
//              float32 or quantized (per group: bitwidth k in 1..16, float32 scale, codes
//              bit-packed at exactly k bits).
//   shape      an activation's per-image shape: rank 1 (features) or 3 (C, H, W).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/format/bitpack.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::format {

inline constexpr std::uint32_t no_index = 0xFFFFFFFFu; ///< "no tensor" / "no second input"

enum class op_kind : std::uint8_t {
  conv2d = 1,
  linear = 2,
  max_pool2d = 3,
  avg_pool2d = 4,
  global_avg_pool = 5,
  relu = 6,
  relu6 = 7,
  flatten = 8,
  add = 9,
  act_quant = 10 ///< format version 2
};

inline const char* to_string(op_kind k) {
  switch (k) {
  case op_kind::conv2d:
    return "conv2d";
  case op_kind::linear:
    return "linear";
  case op_kind::max_pool2d:
    return "max_pool2d";
  case op_kind::avg_pool2d:
    return "avg_pool2d";
  case op_kind::global_avg_pool:
    return "global_avg_pool";
  case op_kind::relu:
    return "relu";
  case op_kind::relu6:
    return "relu6";
  case op_kind::flatten:
    return "flatten";
  case op_kind::add:
    return "add";
  case op_kind::act_quant:
    return "act_quant";
  }
  return "?";
}

enum class tensor_kind : std::uint8_t { quantized = 1, float32 = 2 };

/// Per-image activation shape: rank 1 (features) or 3 (channels, height, width).
struct shape {
  std::uint8_t rank = 1;
  std::array<std::uint32_t, 3> dims{1, 1, 1};

  static shape features(std::uint32_t f) { return {1, {f, 1, 1}}; }
  static shape image(std::uint32_t c, std::uint32_t h, std::uint32_t w) { return {3, {c, h, w}}; }
  std::uint64_t elements() const {
    return std::uint64_t(dims[0]) * (rank == 3 ? std::uint64_t(dims[1]) * dims[2] : 1);
  }
  bool operator==(const shape&) const = default;
  /// "(f)" or "(c, h, w)". Built by appending only: GCC 12 at -O3 reports a false
  /// -Wrestrict in char_traits for `"(" + std::to_string(...)` (an insert at position 0).
  std::string str() const {
    std::string s(1, '(');
    s += std::to_string(dims[0]);
    if (rank == 3) {
      s += ", ";
      s += std::to_string(dims[1]);
      s += ", ";
      s += std::to_string(dims[2]);
    }
    s += ')';
    return s;
  }
};

/// A weight, bias or channel-scale tensor.
struct tensor_data {
  tensor_kind kind = tensor_kind::float32;
  std::vector<std::uint32_t> extents; ///< rank 1..4; channels = extents[0]
  std::vector<float> values;          ///< float32 tensors: the values, row-major
  // quantized tensors:
  std::uint32_t group_size = 1;     ///< channels per group
  bool full_grid = false;           ///< codes may be -2^(k-1) (k >= 2; format version 3)
  std::vector<std::uint8_t> bits;   ///< per group, 1..16
  std::vector<float> scales;        ///< per group
  std::vector<std::uint8_t> packed; ///< the code bit stream (format/bitpack.hpp)

  std::size_t channels() const { return extents.empty() ? 0 : extents[0]; }
  std::size_t per_channel() const {
    std::size_t n = 1;
    for (std::size_t i = 1; i < extents.size(); ++i) n *= extents[i];
    return n;
  }
  std::size_t element_count() const { return channels() * per_channel(); }
  std::size_t group_count() const { return kind == tensor_kind::quantized ? bits.size() : 0; }
  /// Weights in group g (the last group may hold fewer channels).
  std::size_t group_weights(std::size_t g) const {
    const std::size_t c0 = g * group_size;
    return std::min<std::size_t>(group_size, channels() - c0) * per_channel();
  }
  /// sum_g n_g k_g.
  std::uint64_t code_bits() const {
    std::uint64_t total = 0;
    for (std::size_t g = 0; g < bits.size(); ++g)
      total += std::uint64_t(group_weights(g)) * bits[g];
    return total;
  }
  /// The codes of every weight (quantized tensors).
  std::vector<std::int32_t> codes() const {
    std::vector<std::int32_t> out(element_count());
    std::uint64_t bit = 0;
    std::size_t at = 0;
    for (std::size_t g = 0; g < bits.size(); ++g) {
      const std::size_t n = group_weights(g);
      unpack_codes(bits[g], packed.data(), bit, n, out.data() + at);
      bit += std::uint64_t(n) * bits[g];
      at += n;
    }
    return out;
  }
  /// code * scale of every weight (quantized) or the values (float32), into out.
  void dequantize(float* out) const {
    if (kind == tensor_kind::float32) {
      std::copy(values.begin(), values.end(), out);
      return;
    }
    const std::vector<std::int32_t> c = codes();
    std::size_t at = 0;
    for (std::size_t g = 0; g < bits.size(); ++g) {
      const std::size_t n = group_weights(g);
      for (std::size_t i = 0; i < n; ++i, ++at) out[at] = static_cast<float>(c[at]) * scales[g];
    }
  }
  /// The scale of the group holding channel c.
  float channel_scale(std::size_t c) const { return scales[c / group_size]; }

  static tensor_data from_floats(std::vector<std::uint32_t> extents, std::vector<float> values) {
    tensor_data t;
    t.kind = tensor_kind::float32;
    t.extents = std::move(extents);
    t.values = std::move(values);
    if (t.values.size() != t.element_count())
      throw config_error("tensor_data: " + std::to_string(t.values.size()) +
                         " values for a tensor of " + std::to_string(t.element_count()));
    return t;
  }

  /// Packs `codes` (one per weight, channel-major) at their group's bitwidth; `full_grid`: the
  /// codes are on the full grid (down to -2^(k-1)), else the symmetric one.
  static tensor_data from_codes(std::vector<std::uint32_t> extents, std::uint32_t group_size,
                                std::vector<std::uint8_t> bits, std::vector<float> scales,
                                const std::vector<std::int32_t>& codes, bool full_grid = false) {
    tensor_data t;
    t.kind = tensor_kind::quantized;
    t.full_grid = full_grid;
    t.extents = std::move(extents);
    t.group_size = group_size;
    t.bits = std::move(bits);
    t.scales = std::move(scales);
    const std::size_t channels = t.channels();
    if (group_size == 0 || channels == 0 ||
        t.bits.size() != (channels + group_size - 1) / group_size ||
        t.scales.size() != t.bits.size() || codes.size() != t.element_count())
      throw config_error("tensor_data::from_codes: inconsistent groups, scales or codes");
    t.packed.assign(packed_bytes(t.code_bits()), 0);
    std::uint64_t bit = 0;
    std::size_t at = 0;
    for (std::size_t g = 0; g < t.bits.size(); ++g) {
      const int k = t.bits[g];
      if (k < min_code_bits || k > max_code_bits)
        throw config_error("tensor_data::from_codes: bitwidth " + std::to_string(k) +
                           " outside 1..16 in group " + std::to_string(g));
      const std::size_t n = t.group_weights(g);
      for (std::size_t i = 0; i < n; ++i)
        if (!code_in_range(codes[at + i], k, full_grid))
          throw config_error("tensor_data::from_codes: code " + std::to_string(codes[at + i]) +
                             " does not fit " + std::to_string(k) + " bits (group " +
                             std::to_string(g) + ")");
      pack_codes(k, codes.data() + at, n, t.packed.data(), bit);
      bit += std::uint64_t(n) * std::uint64_t(k);
      at += n;
    }
    return t;
  }
};

struct conv_attrs {
  std::uint32_t in_channels = 0, out_channels = 0, kernel_h = 1, kernel_w = 1;
  std::uint32_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  std::uint32_t dilation_h = 1, dilation_w = 1, groups = 1;
};
struct linear_attrs {
  std::uint32_t in_features = 0, out_features = 0;
};
struct pool_attrs {
  std::uint32_t kernel_h = 2, kernel_w = 2, stride_h = 2, stride_w = 2, pad_h = 0, pad_w = 0;
};

/// An act_quant operation's grid per channel group (docs/model-format.md): group g of
/// group_size channels quantizes to bits[g] bits over [0, ranges[g]] (unsigned) or
/// [-ranges[g], ranges[g]] (signed): y = s nearbyint(clamp(x / s, lower, L)) with
/// L = 2^k - 1, lower = 0 (unsigned) or L = 2^(k-1) - 1, lower = -L (signed), and
/// s = max(range / L, 1e-20) (kernels/ref/act_quantize.hpp: make_act_grid).
struct act_quant_attrs {
  bool is_signed = false;
  std::uint32_t group_size = 1;
  std::vector<std::uint8_t> bits; ///< per group, 1..16 (signed: 2..16)
  std::vector<float> ranges;      ///< per group, finite and > 0
};

/// The smallest step of an activation grid (quant/groups.hpp's scale_floor, as trained).
inline constexpr float act_min_scale = 1e-20f;

/// One operation. Attributes not of its kind are ignored (and not stored).
struct operation {
  op_kind kind = op_kind::relu;
  std::string name;
  std::uint32_t input = 0;          ///< value id read
  std::uint32_t input_b = no_index; ///< second value id (add)
  shape output; ///< per-image output shape: not stored, inferred (reader, infer_shapes)
  conv_attrs conv;
  linear_attrs fc;
  pool_attrs pool;
  act_quant_attrs act;
  std::uint32_t weight = no_index, bias = no_index, channel_scale = no_index;
  float input_range = 0; ///< calibrated max |input| (int8 path); 0 = not calibrated
};

struct model_file {
  shape input;
  /// Input normalisation x = (pixel / 255 - mean[c]) / stddev[c] for 8-bit images, as the
  /// data loader does: empty (none), one value for all channels, or one per input channel.
  std::vector<double> mean, stddev;
  std::vector<operation> ops;
  std::vector<tensor_data> tensors;

  /// The network output's shape (the last operation's).
  const shape& output() const { return ops.back().output; }
};

} // namespace bitgrad::format
