// The bit-packed mixed-precision model file: pure data structs, the byte writer and the reader.
// The layout is specified in docs/model-format.md; this header implements exactly that.
//
// Words (as in quant/quantizer.hpp and format/bitpack.hpp)
//   operation  one step of the network (conv2d, linear, pooling, activation, flatten, add);
//              reads one or two values, produces one value (value 0 = the network input,
//              operation i produces value i + 1).
//   tensor     a weight, bias or channel-scale tensor an operation refers to by index;
//              float32 or quantized (per group: bitwidth k in 1..16, float32 scale, codes
//              bit-packed at exactly k bits).
//   shape      an activation's per-image shape: rank 1 (features) or 3 (C, H, W).
//
//   model_file m = format::read_model_file("model.bgm");        // or from_bytes(span)
//   std::vector<std::uint8_t> b = format::to_bytes(m);          // checks by reading it back
//   format::write_model_file("model.bgm", m);                   // atomic (temp + rename)
//
// Anything malformed throws bitgrad::format_error(file, offset, reason); the reader never reads
// outside the span it was given (fuzzed: tests/fuzz/fuzz_model_file.cpp). No training types.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/format/bitpack.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::format {

static_assert(std::endian::native == std::endian::little,
              "bitgrad model files are little-endian; big-endian hosts are unsupported");

inline constexpr char file_magic[8] = {'B', 'G', 'M', 'O', 'D', 'E', 'L', '\n'};
inline constexpr std::uint32_t file_version = 1;
inline constexpr std::uint32_t no_index = 0xFFFFFFFFu; ///< "no tensor" / "no second input"
inline constexpr std::size_t header_bytes = 32;
inline constexpr std::size_t section_entry_bytes = 16;
inline constexpr std::uint32_t max_sections = 65536;
inline constexpr std::uint32_t max_operations = 4096;
inline constexpr std::size_t max_name_bytes = 255;
inline constexpr std::uint32_t max_window = 65535; ///< kernel, stride, padding, dilation
inline constexpr std::uint64_t max_extent = std::uint64_t(1) << 24;
inline constexpr std::uint64_t max_elements = std::uint64_t(1) << 28;
inline constexpr std::uint64_t max_file_bytes = (std::uint64_t(1) << 32) - 1;
/// Fuzzing builds (libFuzzer's FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION) skip the CRC checks so
/// that mutated inputs reach the parsers behind them; every other build checks them.
#if defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
inline constexpr bool check_checksums = false;
#else
inline constexpr bool check_checksums = true;
#endif
inline constexpr std::uint32_t tag_graph = 0x48505247u;  // "GRPH"
inline constexpr std::uint32_t tag_tensor = 0x52534E54u; // "TNSR"

enum class op_kind : std::uint8_t {
  conv2d = 1,
  linear = 2,
  max_pool2d = 3,
  avg_pool2d = 4,
  global_avg_pool = 5,
  relu = 6,
  relu6 = 7,
  flatten = 8,
  add = 9
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

  /// Packs `codes` (one per weight, channel-major) at their group's bitwidth.
  static tensor_data from_codes(std::vector<std::uint32_t> extents, std::uint32_t group_size,
                                std::vector<std::uint8_t> bits, std::vector<float> scales,
                                const std::vector<std::int32_t>& codes) {
    tensor_data t;
    t.kind = tensor_kind::quantized;
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
        if (!code_in_range(codes[at + i], k))
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

// ---- shape inference (shared by the reader and by whoever builds a model_file) -------------

namespace detail {

/// A value in a message: "nan" for every NaN (std::to_string may say "-nan"), else to_string.
inline std::string value_str(double v) {
  return std::isnan(v) ? std::string("nan") : std::to_string(v);
}

/// "(a, b, ...)", appended piece by piece (see shape::str()).
inline std::string extents_str(const std::vector<std::uint32_t>& extents) {
  std::string s(1, '(');
  for (std::size_t i = 0; i < extents.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(extents[i]);
  }
  s += ')';
  return s;
}

inline std::uint64_t pool_out(std::uint64_t in, std::uint64_t k, std::uint64_t s, std::uint64_t p) {
  return (in + 2 * p - k) / s + 1;
}

/// The calibrated input range of a conv2d / linear: finite and >= 0 (0 = not calibrated).
template <class Fail>
void check_input_range(const operation& op, Fail&& fail) {
  if (!(std::isfinite(op.input_range) && op.input_range >= 0))
    fail("input range must be finite and >= 0, got " + value_str(op.input_range));
}

/// Output shape of `op` given its input shapes; fail(reason) on any inconsistency.
/// Checks attributes, tensor references (kind, shape) and input ranks.
template <class Fail>
shape infer_output(const operation& op, const shape& a, const shape* b,
                   const std::vector<tensor_data>& tensors, Fail&& fail) {
  auto need_rank = [&](const shape& s, int r) {
    if (s.rank != r)
      fail(std::string(to_string(op.kind)) + " needs an input of rank " + std::to_string(r) +
           ", got " + s.str());
  };
  auto positive = [&](std::uint64_t v, const char* what) {
    if (v == 0 || v > max_extent)
      fail(std::string(what) + " must be in 1..2^24, got " + std::to_string(v));
  };
  auto check_tensor = [&](std::uint32_t idx, const char* what,
                          const std::vector<std::uint32_t>& want, bool may_quantize,
                          bool optional) {
    if (idx == no_index) {
      if (!optional) fail(std::string(what) + " tensor missing");
      return;
    }
    if (idx >= tensors.size())
      fail(std::string(what) + " tensor " + std::to_string(idx) + " does not exist (" +
           std::to_string(tensors.size()) + " tensors)");
    const tensor_data& t = tensors[idx];
    if (!may_quantize && t.kind != tensor_kind::float32)
      fail(std::string(what) + " tensor " + std::to_string(idx) + " must be float32");
    if (t.extents != want)
      fail(std::string(what) + " tensor " + std::to_string(idx) + " has shape " +
           extents_str(t.extents) + ", expected " + extents_str(want));
  };
  if (op.kind != op_kind::add && op.input_b != no_index)
    fail(std::string(to_string(op.kind)) + " takes one input, got a second one");
  switch (op.kind) {
  case op_kind::conv2d: {
    const conv_attrs& c = op.conv;
    need_rank(a, 3);
    positive(c.in_channels, "in_channels");
    positive(c.out_channels, "out_channels");
    positive(c.kernel_h, "kernel_h");
    positive(c.kernel_w, "kernel_w");
    positive(c.stride_h, "stride_h");
    positive(c.stride_w, "stride_w");
    positive(c.dilation_h, "dilation_h");
    positive(c.dilation_w, "dilation_w");
    positive(c.groups, "groups");
    for (std::uint32_t v : {c.kernel_h, c.kernel_w, c.stride_h, c.stride_w, c.pad_h, c.pad_w,
                            c.dilation_h, c.dilation_w})
      if (v > max_window) fail("kernel, stride, padding and dilation must be <= 65535");
    if (a.dims[0] != c.in_channels)
      fail("input has " + std::to_string(a.dims[0]) + " channels, conv2d expects " +
           std::to_string(c.in_channels));
    if (c.in_channels % c.groups || c.out_channels % c.groups)
      fail("channels " + std::to_string(c.in_channels) + "->" + std::to_string(c.out_channels) +
           " are not divisible by groups " + std::to_string(c.groups));
    const std::uint64_t eh = std::uint64_t(c.dilation_h) * (c.kernel_h - 1) + 1;
    const std::uint64_t ew = std::uint64_t(c.dilation_w) * (c.kernel_w - 1) + 1;
    if (eh > a.dims[1] + 2ull * c.pad_h || ew > a.dims[2] + 2ull * c.pad_w)
      fail("kernel larger than the padded input " + a.str());
    const std::uint64_t oh = (a.dims[1] + 2ull * c.pad_h - eh) / c.stride_h + 1;
    const std::uint64_t ow = (a.dims[2] + 2ull * c.pad_w - ew) / c.stride_w + 1;
    positive(oh, "output height");
    positive(ow, "output width");
    const std::uint64_t wcount =
        std::uint64_t(c.out_channels) * (c.in_channels / c.groups) * c.kernel_h * c.kernel_w;
    if (wcount > max_elements) fail("weight tensor larger than 2^28 elements");
    check_tensor(op.weight, "weight",
                 {c.out_channels, c.in_channels / c.groups, c.kernel_h, c.kernel_w}, true, false);
    check_tensor(op.bias, "bias", {c.out_channels}, false, true);
    check_tensor(op.channel_scale, "channel scale", {c.out_channels}, false, true);
    check_input_range(op, fail);
    const shape out = shape::image(c.out_channels, static_cast<std::uint32_t>(oh),
                                   static_cast<std::uint32_t>(ow));
    if (out.elements() > max_elements) fail("output larger than 2^28 elements");
    return out;
  }
  case op_kind::linear: {
    need_rank(a, 1);
    positive(op.fc.in_features, "in_features");
    positive(op.fc.out_features, "out_features");
    if (a.dims[0] != op.fc.in_features)
      fail("input has " + std::to_string(a.dims[0]) + " features, linear expects " +
           std::to_string(op.fc.in_features));
    if (std::uint64_t(op.fc.in_features) * op.fc.out_features > max_elements)
      fail("weight tensor larger than 2^28 elements");
    check_tensor(op.weight, "weight", {op.fc.out_features, op.fc.in_features}, true, false);
    check_tensor(op.bias, "bias", {op.fc.out_features}, false, true);
    check_tensor(op.channel_scale, "channel scale", {op.fc.out_features}, false, true);
    check_input_range(op, fail);
    return shape::features(op.fc.out_features);
  }
  case op_kind::max_pool2d:
  case op_kind::avg_pool2d: {
    const pool_attrs& p = op.pool;
    need_rank(a, 3);
    for (std::uint32_t v : {p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w})
      if (v > max_window) fail("kernel, stride and padding must be <= 65535");
    positive(p.kernel_h, "kernel_h");
    positive(p.kernel_w, "kernel_w");
    positive(p.stride_h, "stride_h");
    positive(p.stride_w, "stride_w");
    if (2ull * p.pad_h > p.kernel_h || 2ull * p.pad_w > p.kernel_w)
      fail("padding must be at most half the kernel");
    if (p.kernel_h > a.dims[1] + 2ull * p.pad_h || p.kernel_w > a.dims[2] + 2ull * p.pad_w)
      fail("window larger than the padded input " + a.str());
    return shape::image(
        a.dims[0], static_cast<std::uint32_t>(pool_out(a.dims[1], p.kernel_h, p.stride_h, p.pad_h)),
        static_cast<std::uint32_t>(pool_out(a.dims[2], p.kernel_w, p.stride_w, p.pad_w)));
  }
  case op_kind::global_avg_pool:
    need_rank(a, 3);
    return shape::features(a.dims[0]);
  case op_kind::relu:
  case op_kind::relu6:
    return a;
  case op_kind::flatten: {
    need_rank(a, 3);
    return shape::features(static_cast<std::uint32_t>(a.elements()));
  }
  case op_kind::add:
    if (b == nullptr) fail("add needs a second input");
    if (!(a == *b)) fail("add of different shapes " + a.str() + " and " + b->str());
    return a;
  }
  fail("unknown operation kind " + std::to_string(int(op.kind)));
  return a;
}

/// Infers every output shape into m; fail(op_index, reason) on the first problem.
template <class Fail>
void check_graph(model_file& m, Fail&& fail) {
  std::vector<shape> values{m.input};
  for (std::size_t i = 0; i < m.ops.size(); ++i) {
    const operation& op = m.ops[i];
    auto f = [&](const std::string& reason) {
      fail(i, "operation " + std::to_string(i) + " (" + op.name + "): " + reason);
    };
    if (op.input >= values.size())
      f("input value " + std::to_string(op.input) + " is not computed before it");
    if (op.kind == op_kind::add && op.input_b >= values.size())
      f("input value " + std::to_string(op.input_b) + " is not computed before it");
    const shape* b = op.kind == op_kind::add ? &values[op.input_b] : nullptr;
    m.ops[i].output = infer_output(op, values[op.input], b, m.tensors, f);
    values.push_back(m.ops[i].output);
  }
}

inline void put_shape(io::byte_writer& o, const shape& s) {
  o.put<std::uint8_t>(s.rank);
  for (auto d : s.dims) o.put<std::uint32_t>(d);
}

/// A shape: rank 1 or 3, used extents in 1..2^24, unused extents 1, at most 2^28 elements.
inline shape get_shape(io::byte_reader& in, const char* what) {
  const std::uint64_t at = in.offset();
  shape s;
  s.rank = in.get<std::uint8_t>(what);
  for (auto& d : s.dims) d = in.get<std::uint32_t>(what);
  if (s.rank != 1 && s.rank != 3)
    in.fail_at(at, std::string(what) + ": rank must be 1 or 3, got " + std::to_string(s.rank));
  for (std::size_t i = 0; i < 3; ++i) {
    const bool used = i == 0 || s.rank == 3;
    if (used ? (s.dims[i] == 0 || s.dims[i] > max_extent) : s.dims[i] != 1)
      in.fail_at(at, std::string(what) + ": extent " + std::to_string(s.dims[i]) + " out of range");
  }
  if (s.elements() > max_elements) in.fail_at(at, std::string(what) + ": more than 2^28 elements");
  return s;
}

inline void write_graph(io::byte_writer& o, const model_file& m) {
  put_shape(o, m.input);
  o.put<std::uint32_t>(static_cast<std::uint32_t>(m.mean.size()));
  for (double v : m.mean) o.put<double>(v);
  for (std::size_t i = 0; i < m.mean.size(); ++i)
    o.put<double>(i < m.stddev.size() ? m.stddev[i] : 0.0);
  o.put<std::uint32_t>(static_cast<std::uint32_t>(m.ops.size()));
  auto u16 = [&](std::uint32_t v) {
    o.put<std::uint16_t>(static_cast<std::uint16_t>(std::min<std::uint32_t>(v, 0xFFFF)));
  };
  for (const operation& op : m.ops) {
    o.put<std::uint8_t>(static_cast<std::uint8_t>(op.kind));
    const std::size_t len = std::min(op.name.size(), max_name_bytes);
    o.put<std::uint8_t>(static_cast<std::uint8_t>(len));
    o.put_bytes(op.name.data(), len);
    o.put<std::uint32_t>(op.input);
    if (op.kind == op_kind::add) o.put<std::uint32_t>(op.input_b);
    switch (op.kind) {
    case op_kind::conv2d: {
      const conv_attrs& c = op.conv;
      o.put<std::uint32_t>(c.in_channels);
      o.put<std::uint32_t>(c.out_channels);
      o.put<std::uint32_t>(c.groups);
      for (std::uint32_t v : {c.kernel_h, c.kernel_w, c.stride_h, c.stride_w, c.pad_h, c.pad_w,
                              c.dilation_h, c.dilation_w})
        u16(v);
      [[fallthrough]];
    }
    case op_kind::linear:
      if (op.kind == op_kind::linear) {
        o.put<std::uint32_t>(op.fc.in_features);
        o.put<std::uint32_t>(op.fc.out_features);
      }
      o.put<std::uint32_t>(op.weight);
      o.put<std::uint32_t>(op.bias);
      o.put<std::uint32_t>(op.channel_scale);
      o.put<float>(op.input_range);
      break;
    case op_kind::max_pool2d:
    case op_kind::avg_pool2d: {
      const pool_attrs& p = op.pool;
      for (std::uint32_t v : {p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w})
        u16(v);
      break;
    }
    default:
      break;
    }
  }
}

inline void write_tensor(io::byte_writer& o, const tensor_data& t) {
  o.put<std::uint8_t>(static_cast<std::uint8_t>(t.kind));
  o.put<std::uint8_t>(static_cast<std::uint8_t>(t.extents.size()));
  o.put<std::uint16_t>(0);
  for (auto e : t.extents) o.put<std::uint32_t>(e);
  if (t.kind == tensor_kind::float32) {
    o.put_array(t.values);
    return;
  }
  const std::size_t start = o.size() - 4 - 4 * t.extents.size();
  o.put<std::uint32_t>(t.group_size);
  o.put<std::uint32_t>(static_cast<std::uint32_t>(t.bits.size()));
  o.put_bytes(t.bits.data(), t.bits.size());
  while ((o.size() - start) % 4) o.put<std::uint8_t>(0);
  o.put_array(t.scales);
  o.put<std::uint64_t>(t.code_bits());
  o.put_bytes(t.packed.data(), t.packed.size());
}

inline operation read_operation(io::byte_reader& in) {
  operation op;
  const std::uint64_t at = in.offset();
  const auto kind = in.get<std::uint8_t>("operation kind");
  if (kind < 1 || kind > 9) in.fail_at(at, "unknown operation kind " + std::to_string(kind));
  op.kind = static_cast<op_kind>(kind);
  const auto len = in.get<std::uint8_t>("name length");
  const auto name = in.take(len, "operation name");
  op.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
  op.input = in.get<std::uint32_t>("input");
  if (op.kind == op_kind::add) op.input_b = in.get<std::uint32_t>("second input");
  auto u16 = [&](const char* what) { return std::uint32_t(in.get<std::uint16_t>(what)); };
  switch (op.kind) {
  case op_kind::conv2d: {
    conv_attrs& c = op.conv;
    c.in_channels = in.get<std::uint32_t>("conv2d attributes");
    c.out_channels = in.get<std::uint32_t>("conv2d attributes");
    c.groups = in.get<std::uint32_t>("conv2d attributes");
    for (std::uint32_t* v : {&c.kernel_h, &c.kernel_w, &c.stride_h, &c.stride_w, &c.pad_h, &c.pad_w,
                             &c.dilation_h, &c.dilation_w})
      *v = u16("conv2d attributes");
    [[fallthrough]];
  }
  case op_kind::linear:
    if (op.kind == op_kind::linear) {
      op.fc.in_features = in.get<std::uint32_t>("linear attributes");
      op.fc.out_features = in.get<std::uint32_t>("linear attributes");
    }
    op.weight = in.get<std::uint32_t>("weight tensor");
    op.bias = in.get<std::uint32_t>("bias tensor");
    op.channel_scale = in.get<std::uint32_t>("channel-scale tensor");
    op.input_range = in.get<float>("input range");
    break;
  case op_kind::max_pool2d:
  case op_kind::avg_pool2d: {
    pool_attrs& p = op.pool;
    for (std::uint32_t* v :
         {&p.kernel_h, &p.kernel_w, &p.stride_h, &p.stride_w, &p.pad_h, &p.pad_w})
      *v = u16("pool attributes");
    break;
  }
  default:
    break;
  }
  return op;
}

/// For each of `count` tensors, the words naming it in messages: "operation i (name): bias
/// tensor t" for the first operation that reads it, "tensor t (read by no operation)" else.
inline std::vector<std::string> tensor_readers(const std::vector<operation>& ops,
                                               std::size_t count) {
  std::vector<std::string> who(count);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const operation& op = ops[i];
    if (op.kind != op_kind::conv2d && op.kind != op_kind::linear) continue;
    const std::pair<std::uint32_t, const char*> refs[] = {
        {op.weight, "weight"}, {op.bias, "bias"}, {op.channel_scale, "channel-scale"}};
    for (const auto& [t, field] : refs)
      if (t < count && who[t].empty())
        who[t] = "operation " + std::to_string(i) + " (" + op.name + "): " + field + " tensor " +
                 std::to_string(t);
  }
  for (std::size_t t = 0; t < count; ++t)
    if (who[t].empty()) who[t] = "tensor " + std::to_string(t) + " (read by no operation)";
  return who;
}

/// Index of the first value of v that is NaN or infinite, or v.size().
inline std::size_t first_non_finite(const std::vector<float>& v) {
  std::size_t i = 0;
  while (i < v.size() && std::isfinite(v[i])) ++i;
  return i;
}

/// Reads one tensor section; `who` names the tensor in the messages of value checks.
inline tensor_data read_tensor(io::byte_reader& in, std::uint64_t section_begin,
                               const std::string& who) {
  tensor_data t;
  const std::uint64_t at = in.offset();
  const auto kind = in.get<std::uint8_t>("tensor kind");
  if (kind != 1 && kind != 2) in.fail_at(at, "unknown tensor kind " + std::to_string(kind));
  t.kind = static_cast<tensor_kind>(kind);
  const auto rank = in.get<std::uint8_t>("tensor rank");
  if (rank < 1 || rank > 4)
    in.fail_at(at + 1, "tensor rank must be 1..4, got " + std::to_string(rank));
  if (in.get<std::uint16_t>("reserved") != 0) in.fail_at(at + 2, "reserved field is not 0");
  std::uint64_t count = 1;
  for (int i = 0; i < rank; ++i) {
    const std::uint64_t eat = in.offset();
    const auto e = in.get<std::uint32_t>("tensor extent");
    if (e == 0 || e > max_extent)
      in.fail_at(eat, "tensor extent " + std::to_string(e) + " out of range");
    count *= e;
    if (count > max_elements) in.fail_at(eat, "tensor larger than 2^28 elements");
    t.extents.push_back(e);
  }
  if (t.kind == tensor_kind::float32) {
    if (in.remaining() != count * 4)
      in.fail("float32 tensor of " + std::to_string(count) + " values needs " +
              std::to_string(count * 4) + " bytes, section has " + std::to_string(in.remaining()));
    t.values.resize(count);
    const std::uint64_t vat = in.offset();
    in.get_array(t.values.data(), t.values.size(), "float32 values");
    // A NaN or infinite weight, bias or channel scale would make every output garbage.
    if (const std::size_t j = first_non_finite(t.values); j < count)
      in.fail_at(vat + 4 * j, who + ": value " + std::to_string(j) + " of " +
                                  std::to_string(count) + " is not finite (" +
                                  value_str(t.values[j]) + ")");
    return t;
  }
  const std::uint64_t gat = in.offset();
  t.group_size = in.get<std::uint32_t>("group size");
  const auto groups = in.get<std::uint32_t>("group count");
  const std::size_t channels = t.extents[0];
  if (t.group_size == 0 || t.group_size > channels)
    in.fail_at(gat, "group size " + std::to_string(t.group_size) + " outside 1.." +
                        std::to_string(channels));
  if (groups != (channels + t.group_size - 1) / t.group_size)
    in.fail_at(gat + 4, "group count " + std::to_string(groups) + " but " +
                            std::to_string(channels) + " channels in groups of " +
                            std::to_string(t.group_size));
  const std::uint64_t bat = in.offset();
  const auto bits = in.take(groups, "bitwidths");
  t.bits.assign(bits.begin(), bits.end());
  for (std::size_t g = 0; g < groups; ++g)
    if (t.bits[g] < min_code_bits || t.bits[g] > max_code_bits)
      in.fail_at(bat + g, "bitwidth " + std::to_string(t.bits[g]) + " of group " +
                              std::to_string(g) + " outside 1..16");
  while ((in.offset() - section_begin) % 4) {
    if (in.get<std::uint8_t>("padding") != 0) in.fail_at(in.offset() - 1, "padding byte is not 0");
  }
  const std::uint64_t sat = in.offset();
  t.scales.resize(groups);
  in.get_array(t.scales.data(), groups, "scales");
  for (std::size_t g = 0; g < groups; ++g)
    if (!(std::isfinite(t.scales[g]) && t.scales[g] > 0))
      in.fail_at(sat + 4 * g, who + ": scale of group " + std::to_string(g) +
                                  " is not finite and positive (" + value_str(t.scales[g]) + ")");
  const std::uint64_t cat = in.offset();
  const auto code_bits = in.get<std::uint64_t>("code bit count");
  if (code_bits != t.code_bits())
    in.fail_at(cat, "code bit count " + std::to_string(code_bits) + " but the groups need " +
                        std::to_string(t.code_bits()));
  const std::size_t nbytes = packed_bytes(code_bits);
  if (in.remaining() != nbytes)
    in.fail("packed codes need " + std::to_string(nbytes) + " bytes, section has " +
            std::to_string(in.remaining()));
  const std::uint64_t pat = in.offset();
  const auto packed = in.take(nbytes, "packed codes");
  t.packed.assign(packed.begin(), packed.end());
  if (code_bits % 8 && (t.packed.back() >> (code_bits % 8)) != 0)
    in.fail_at(pat + nbytes - 1, "unused bits of the last code byte are not 0");
  // No code outside its range (only -2^(k-1) can be, for k >= 2).
  std::vector<std::int32_t> buf;
  std::uint64_t bit = 0;
  for (std::size_t g = 0; g < groups; ++g) {
    const std::size_t n = t.group_weights(g);
    buf.resize(n);
    unpack_codes(t.bits[g], t.packed.data(), bit, n, buf.data());
    for (std::size_t i = 0; i < n; ++i)
      if (!code_in_range(buf[i], t.bits[g]))
        in.fail_at(pat + (bit + std::uint64_t(i) * t.bits[g]) / 8,
                   "code " + std::to_string(buf[i]) + " outside the " +
                       std::to_string(int(t.bits[g])) + "-bit range in group " + std::to_string(g));
    bit += std::uint64_t(n) * t.bits[g];
  }
  return t;
}

} // namespace detail

/// Parses and checks a model file held in memory. `file` names it in error messages.
inline model_file from_bytes(std::span<const std::uint8_t> bytes,
                             const std::string& file = "<memory>") {
  const std::size_t size = bytes.size();
  io::byte_reader head(bytes, file);
  const auto magic = head.take(8, "magic");
  if (std::memcmp(magic.data(), file_magic, 8) != 0)
    head.fail_at(0, "not a bitgrad model file (bad magic)");
  const auto version = head.get<std::uint32_t>("version");
  if (version != file_version)
    head.fail_at(8, "format version " + std::to_string(version) +
                        " is not supported (this reader: " + std::to_string(file_version) + ")");
  const auto sections = head.get<std::uint32_t>("section count");
  if (sections < 1 || sections > max_sections)
    head.fail_at(12, "section count " + std::to_string(sections) + " outside 1..65536");
  const auto recorded = head.get<std::uint64_t>("file size");
  if (recorded != size)
    head.fail_at(16, "header records " + std::to_string(recorded) + " bytes, file has " +
                         std::to_string(size));
  const auto header_crc = head.get<std::uint32_t>("header CRC");
  if (head.get<std::uint32_t>("reserved") != 0) head.fail_at(28, "reserved header field is not 0");
  const std::uint64_t table_bytes = std::uint64_t(sections) * section_entry_bytes;
  head.need(table_bytes, "section table");
  std::uint32_t crc = io::crc32(bytes.data(), 24);
  crc = io::crc32(bytes.data() + header_bytes, table_bytes, crc);
  if (check_checksums && crc != header_crc)
    head.fail_at(24, "header CRC mismatch (header or section table corrupted)");

  struct entry {
    std::uint32_t tag, crc;
    std::uint32_t offset, size;
  };
  std::vector<entry> table(sections);
  std::uint64_t expect = header_bytes + table_bytes;
  for (std::uint32_t s = 0; s < sections; ++s) {
    const std::uint64_t at = head.offset();
    entry& e = table[s];
    e.tag = head.get<std::uint32_t>("section tag");
    e.crc = head.get<std::uint32_t>("section CRC");
    e.offset = head.get<std::uint32_t>("section offset");
    e.size = head.get<std::uint32_t>("section size");
    const std::uint32_t want = s == 0 ? tag_graph : tag_tensor;
    if (e.tag != want)
      head.fail_at(at, "section " + std::to_string(s) + " has tag " + std::to_string(e.tag) +
                           ", expected " + (s == 0 ? "GRPH" : "TNSR"));
    if (e.offset != expect)
      head.fail_at(at + 8, "section " + std::to_string(s) + " starts at " +
                               std::to_string(e.offset) + ", expected " + std::to_string(expect));
    if (e.size > size - e.offset)
      head.fail_at(at + 12, "section " + std::to_string(s) + " of " + std::to_string(e.size) +
                                " bytes runs past the end of the file");
    expect = e.offset + e.size;
  }
  if (expect != size)
    head.fail_at(expect, std::to_string(size - expect) + " bytes after the last section");
  for (std::uint32_t s = 0; s < sections; ++s) {
    const entry& e = table[s];
    if (check_checksums &&
        io::crc32(bytes.data() + e.offset, static_cast<std::size_t>(e.size)) != e.crc)
      head.fail_at(e.offset, "CRC mismatch in section " + std::to_string(s) +
                                 (s == 0 ? " (graph)" : " (tensor " + std::to_string(s - 1) + ")"));
  }

  model_file m;
  // Graph.
  io::byte_reader g(bytes.subspan(table[0].offset, table[0].size), file, table[0].offset);
  m.input = detail::get_shape(g, "input shape");
  const std::uint64_t norm_at = g.offset();
  const auto norm = g.get<std::uint32_t>("normalisation count");
  if (norm != 0 && norm != 1 && norm != m.input.dims[0])
    g.fail_at(norm_at, "normalisation count " + std::to_string(norm) + " is neither 0, 1 nor the " +
                           std::to_string(m.input.dims[0]) + " input channels");
  for (std::uint32_t i = 0; i < 2 * norm; ++i) {
    const std::uint64_t at = g.offset();
    const auto v = g.get<double>("normalisation");
    if (!std::isfinite(v) || (i >= norm && !(v > 0)))
      g.fail_at(at, "normalisation mean must be finite and stddev finite and > 0");
    (i < norm ? m.mean : m.stddev).push_back(v);
  }
  const std::uint64_t count_at = g.offset();
  const auto nops = g.get<std::uint32_t>("operation count");
  if (nops < 1 || nops > max_operations)
    g.fail_at(count_at, "operation count " + std::to_string(nops) + " outside 1..4096");
  std::vector<std::uint64_t> op_offsets;
  for (std::uint32_t i = 0; i < nops; ++i) {
    op_offsets.push_back(g.offset());
    m.ops.push_back(detail::read_operation(g));
  }
  if (g.remaining() != 0)
    g.fail(std::to_string(g.remaining()) + " unexpected bytes after the operations");
  // Tensors, named by the operation that reads them.
  const std::vector<std::string> readers = detail::tensor_readers(m.ops, sections - 1);
  for (std::uint32_t s = 1; s < sections; ++s) {
    io::byte_reader t(bytes.subspan(table[s].offset, table[s].size), file, table[s].offset);
    m.tensors.push_back(detail::read_tensor(t, table[s].offset, readers[s - 1]));
  }
  // Shapes and references.
  detail::check_graph(m, [&](std::size_t i, const std::string& reason) {
    throw format_error(file, op_offsets[i], reason);
  });
  return m;
}

/// The bytes of m, laid out and checksummed but NOT checked for consistency (tests and fuzz
/// seeds use it to make malformed files; everyone else calls to_bytes).
inline std::vector<std::uint8_t> encode(const model_file& m) {
  std::vector<std::string> sections;
  {
    io::byte_writer graph;
    detail::write_graph(graph, m);
    sections.push_back(graph.take());
  }
  for (const tensor_data& t : m.tensors) {
    io::byte_writer o;
    detail::write_tensor(o, t);
    sections.push_back(o.take());
  }
  io::byte_writer out;
  const std::uint64_t table = sections.size() * section_entry_bytes;
  std::uint64_t total = header_bytes + table;
  for (const auto& s : sections) total += s.size();
  if (total >= max_file_bytes) throw config_error("to_bytes: model larger than 4 GiB");
  out.put_bytes(file_magic, 8);
  out.put<std::uint32_t>(file_version);
  out.put<std::uint32_t>(static_cast<std::uint32_t>(sections.size()));
  out.put<std::uint64_t>(total);
  out.put<std::uint32_t>(0); // header CRC, patched below
  out.put<std::uint32_t>(0);
  std::uint64_t offset = header_bytes + table;
  for (std::size_t s = 0; s < sections.size(); ++s) {
    out.put<std::uint32_t>(s == 0 ? tag_graph : tag_tensor);
    out.put<std::uint32_t>(io::crc32(sections[s].data(), sections[s].size()));
    out.put<std::uint32_t>(static_cast<std::uint32_t>(offset));
    out.put<std::uint32_t>(static_cast<std::uint32_t>(sections[s].size()));
    offset += sections[s].size();
  }
  std::uint32_t crc = io::crc32(out.bytes().data(), 24);
  crc = io::crc32(out.bytes().data() + header_bytes, table, crc);
  out.patch<std::uint32_t>(24, crc);
  for (const auto& s : sections) out.put_bytes(s.data(), s.size());
  const std::string& b = out.bytes();
  return std::vector<std::uint8_t>(b.begin(), b.end());
}

/// The bytes of m (docs/model-format.md). Throws config_error when m is not a valid model
/// (the bytes are read back with from_bytes before being returned).
inline std::vector<std::uint8_t> to_bytes(const model_file& m) {
  std::vector<std::uint8_t> bytes = encode(m);
  try {
    (void)from_bytes(bytes, "<model being written>");
  } catch (const format_error& e) {
    throw config_error(std::string("to_bytes: the model is not valid: ") + e.what());
  }
  return bytes;
}

/// Reads and checks a model file (at most 4 GiB).
inline model_file read_model_file(const std::filesystem::path& path) {
  const std::vector<std::uint8_t> bytes = read_file_bytes(path, max_file_bytes);
  return from_bytes(bytes, path.string());
}

/// Writes m to path atomically (temporary file + rename). Returns the bytes written.
inline std::size_t write_model_file(const std::filesystem::path& path, const model_file& m) {
  const std::vector<std::uint8_t> bytes = to_bytes(m);
  write_file_atomically(
      path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  return bytes.size();
}

/// Fills every operation's output shape from the input shape (for builders of model_file);
/// throws config_error on an inconsistent graph.
inline void infer_shapes(model_file& m) {
  detail::check_graph(m,
                      [](std::size_t, const std::string& reason) { throw config_error(reason); });
}

} // namespace bitgrad::format
