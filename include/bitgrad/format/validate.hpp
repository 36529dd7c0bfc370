// What a valid model is: shape inference and the consistency checks of every operation
// (attributes, tensor references and their shapes, input ranks), shared by the reader
// (format/codec.hpp) and by whoever builds a model_file (infer_shapes, train/export.hpp).
//
//   format::infer_shapes(m);   // fills every operation's output shape; config_error if m is
//                              // inconsistent (the reader throws format_error instead)
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/format/model.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bitgrad::format {

inline constexpr std::uint32_t max_window = 65535; ///< kernel, stride, padding, dilation
inline constexpr std::uint64_t max_extent = std::uint64_t(1) << 24;
inline constexpr std::uint64_t max_elements = std::uint64_t(1) << 28;

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
  case op_kind::act_quant: {
    const act_quant_attrs& q = op.act;
    const std::uint32_t channels = a.dims[0];
    if (q.group_size < 1 || q.group_size > channels)
      fail("act_quant group size " + std::to_string(q.group_size) + " outside 1.." +
           std::to_string(channels) + " (the input's channels)");
    else if (q.bits.size() != (channels + q.group_size - 1) / q.group_size ||
             q.ranges.size() != q.bits.size())
      fail("act_quant has " + std::to_string(q.bits.size()) + " groups, expected " +
           std::to_string((channels + q.group_size - 1) / q.group_size) + " for " +
           std::to_string(channels) + " channels in groups of " + std::to_string(q.group_size));
    return a;
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

} // namespace detail

/// Fills every operation's output shape from the input shape (for builders of model_file);
/// throws config_error on an inconsistent graph.
inline void infer_shapes(model_file& m) {
  detail::check_graph(m,
                      [](std::size_t, const std::string& reason) { throw config_error(reason); });
}

} // namespace bitgrad::format
