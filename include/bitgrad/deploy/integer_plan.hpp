// What the packed integer engine computes, decided from a model file alone: which operations
// it fuses, the u8 scale and zero point of every activation between layers and the integer
// weights of every conv2d / linear. Shared by the engine (deploy/packed_engine.hpp) and its
// plain reference twin (deploy::ref::run_integer), so the two differ only in how they compute.
//
// Words
//   step        one conv2d or linear with the operations fused behind it: relu, one max_pool2d
//               (no padding), flatten, in any order. The engine runs chains of steps only:
//               every other operation (add, avg / global pools, relu6, a pool with padding, a
//               grouped conv) makes the model unsupported (supported() says which and why).
//   activation  the u8 value q between two steps, x = s (q - z): after a ReLU z = 0 and
//               s = range / 255, else z = 128 and s = range / 127, with range the calibrated
//               max |x| the file stores as the next step's input_range (op.input_range). The
//               network input is a float tensor quantized the same way (z = 128).
//   act grid    an act_quant (format version 2) in a step's chain, or as the first operation,
//               sets the u8 activation it feeds instead of the calibration: q is the learned
//               grid's code, so the integer path runs on exactly the levels the float runtime
//               applies (kernels/ref/act_quantize.hpp: make_act_grid):
//                 unsigned k bits: z = 0,   q in 0..L,             L = 2^k - 1
//                 signed   k bits: z = 128, q in 128 - L..128 + L, L = 2^(k-1) - 1
//                 s = max(range / L, 1e-20), the output stage q' = clamp(round(v / s) + z, ..)
//               Quantizing is monotone and commutes with ReLU, max-pool and flatten, so its
//               place in the chain does not matter. Refused (supported() says which): more
//               than 8 bits (u8 holds 2^8 codes), groups with different grids (the next
//               layer's int32 sum over input channels needs one step s for all of them: a
//               per-channel s does not fold into the per-output-channel scale), a second
//               act_quant in one chain, and an act_quant on the network output (float logits).
//   output      every step: acc(i, j) = sum_p (q(i, p) - z) code(j, p), exact in int32, then
//                 v = acc * scale[j] + bias[j]       scale[j] = s_in * s_w(j) * cs[j]
//                 v = max(v, 0)                      when the step has a ReLU
//                 q' = clamp(round(v / s_out) + z_out, 0, 255)   or float v at the last step
//               then the max-pool, if any, on q' (exact: quantizing is monotone, so the max of
//               the quantized values is the quantized max).
//   weights     a quantized tensor of <= 8 bits is used as stored (codes, groups, scales); a
//               float32 tensor or one with wider codes is requantized per output channel to
//               8 bits: s_w(j) = max_p |w(j, p)| / 127, code = round(w / s_w(j)).
//
// Calibration: the ranges are the ones the model file stores (train::calibrate writes them at
// export); runtime::calibrate sets them from a few given images when the file has none.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/format/model.hpp>
#include <bitgrad/kernels/packed/output_stage.hpp>
#include <bitgrad/kernels/ref/act_quantize.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bitgrad::deploy {

/// Integer weights of one conv2d / linear in the file's order: channels x depth codes, and per
/// group of group_size channels a bitwidth (1..8) and a scale.
struct integer_weights {
  std::size_t channels = 0, depth = 0, group_size = 1;
  std::vector<std::uint8_t> bits;
  std::vector<float> scales;
  std::vector<std::int32_t> codes;

  float channel_scale(std::size_t j) const { return scales[j / group_size]; }

  /// The weights of tensor t, requantized to 8 bits per channel when t is float32 or wider
  /// than 8 bits (see the top of this header).
  static integer_weights of(const format::tensor_data& t) {
    integer_weights w;
    w.channels = t.channels();
    w.depth = t.per_channel();
    const bool narrow = t.kind == format::tensor_kind::quantized && !t.bits.empty() &&
                        *std::max_element(t.bits.begin(), t.bits.end()) <= 8;
    if (narrow) {
      w.group_size = std::min<std::size_t>(t.group_size, w.channels);
      w.bits = t.bits;
      w.scales = t.scales;
      w.codes = t.codes();
      return w;
    }
    std::vector<float> v(t.element_count());
    t.dequantize(v.data());
    w.group_size = 1;
    w.bits.assign(w.channels, 8);
    w.scales.resize(w.channels);
    w.codes.resize(v.size());
    for (std::size_t j = 0; j < w.channels; ++j) {
      const float* row = v.data() + j * w.depth;
      float amax = 0;
      for (std::size_t p = 0; p < w.depth; ++p) amax = std::max(amax, std::fabs(row[p]));
      const float s = amax > 0 ? amax / 127.0f : 1.0f;
      w.scales[j] = s;
      for (std::size_t p = 0; p < w.depth; ++p) {
        const float q = std::nearbyint(row[p] / s);
        w.codes[j * w.depth + p] = static_cast<std::int32_t>(std::clamp(q, -127.0f, 127.0f));
      }
    }
    return w;
  }
};

/// One conv2d / linear and what is fused behind it (see "step" at the top).
struct integer_step {
  std::size_t op = 0; ///< index of the conv2d / linear in the file's operations
  bool conv = false;
  format::conv_attrs c;   ///< conv2d
  format::shape in_shape; ///< per image: (C, H, W) for a conv, and for a linear fed by a
                          ///< flatten of one; else (features)
  format::shape conv_out; ///< conv2d: (C, OH, OW) before the pool
  format::shape out_shape;
  format::shape out_image; ///< the last (C, H, W) of the step's chain (before a flatten)
  std::size_t channels = 0, depth = 0;
  // input: x = in_scale * (q - in_zero), q in in_lo..in_hi
  float in_scale = 1;
  std::uint8_t in_zero = 128;
  std::uint8_t in_lo = 0, in_hi = 255;
  int in_bits = 8;                       ///< the input grid's bitwidth (8: calibrated)
  std::size_t in_act = format::no_index; ///< the act_quant operation that sets the input grid
  // output stage
  std::vector<float> scale, bias; ///< per channel; bias 0 when the layer has none
  bool relu = false;
  bool pool = false;
  format::pool_attrs p;
  bool out_u8 = false; ///< false: float (the last step)
  float out_inv_scale = 1;
  std::uint8_t out_zero = 0;
  std::uint8_t out_lo = 0, out_hi = 255;  ///< the next step's in_lo, in_hi
  std::size_t out_act = format::no_index; ///< the act_quant in the chain (the next step's grid)

  /// The float network input -> this step's u8 input (the first step).
  output::quantize_u8 in_quantizer() const {
    return {1.0f / in_scale, in_zero, float(in_lo), float(in_hi)};
  }
  /// The output stage's requantization to the next step's u8 input.
  output::quantize_u8 out_quantizer() const {
    return {out_inv_scale, out_zero, float(out_lo), float(out_hi)};
  }
};

/// The u8 grid of an act_quant operation (see "act grid" at the top), or why it has none.
struct act_u8_grid {
  float scale = 1;
  std::uint8_t zero = 0, lo = 0, hi = 255;
  int bits = 8;
  std::string refused; ///< empty when the grid fits u8

  static act_u8_grid of(const format::act_quant_attrs& a) {
    act_u8_grid g;
    if (a.bits.empty() || a.ranges.size() != a.bits.size()) {
      g.refused = "act_quant without groups";
      return g;
    }
    for (std::size_t i = 1; i < a.bits.size(); ++i)
      if (a.bits[i] != a.bits[0] || a.ranges[i] != a.ranges[0]) {
        g.refused = "act_quant groups 0 and " + std::to_string(i) + " have different grids (" +
                    std::to_string(a.bits[0]) + " bits, range " + std::to_string(a.ranges[0]) +
                    " vs " + std::to_string(a.bits[i]) + " bits, range " +
                    std::to_string(a.ranges[i]) +
                    "): the next layer's int32 sum over input channels needs one step";
        return g;
      }
    g.bits = a.bits[0];
    if (g.bits > 8) {
      g.refused = "act_quant of " + std::to_string(g.bits) +
                  " bits: the integer engine's u8 activations hold at most 8 bits";
      return g;
    }
    const act_grid<float> q =
        make_act_grid<float>(g.bits, a.ranges[0], a.is_signed, format::act_min_scale);
    const int limit = static_cast<int>(q.limit);
    g.scale = q.scale;
    g.zero = a.is_signed ? 128 : 0;
    g.lo = static_cast<std::uint8_t>(g.zero + (a.is_signed ? -limit : 0));
    g.hi = static_cast<std::uint8_t>(g.zero + limit);
    return g;
  }
};

/// The steps of a model file, or why it cannot run on the integer engine.
struct integer_plan {
  std::vector<integer_step> steps;
  std::string unsupported; ///< empty when the graph is a supported chain
  bool calibrated = false; ///< every step has an input range (the scales are set)

  bool supported() const { return unsupported.empty(); }

  /// Builds the plan of m; `weights_scale(i, j)` is s_w(j) of the conv2d / linear at operation
  /// i (so the engine and the reference may hold the weights as they like).
  template <class WeightScale>
  static integer_plan of(const format::model_file& m, const WeightScale& weights_scale) {
    integer_plan plan;
    auto refuse = [&](std::size_t i, const std::string& why) {
      plan.unsupported = "operation " + std::to_string(i) + " (" + m.ops[i].name + ", " +
                         format::to_string(m.ops[i].kind) + "): " + why;
      plan.steps.clear();
      return plan;
    };
    const std::size_t n = m.ops.size();
    format::shape cur = m.input, image = m.input;
    // An act_quant of the network input sets the first step's input grid.
    std::size_t first = 0, input_act = format::no_index;
    if (n > 0 && m.ops[0].kind == format::op_kind::act_quant) {
      if (m.ops[0].input != 0 || m.ops[0].input_b != format::no_index)
        return refuse(0, "the integer engine runs chains of operations only");
      input_act = 0;
      first = 1;
    }
    for (std::size_t i = first; i < n;) {
      const format::operation& op = m.ops[i];
      if (op.input != i || op.input_b != format::no_index)
        return refuse(i, "the integer engine runs chains of operations only");
      if (op.kind != format::op_kind::conv2d && op.kind != format::op_kind::linear)
        return refuse(i, "the integer engine needs a conv2d or linear here");
      integer_step s;
      s.op = i;
      s.conv = op.kind == format::op_kind::conv2d;
      s.in_shape = cur;
      if (s.conv) {
        s.c = op.conv;
        if (op.conv.groups != 1) return refuse(i, "grouped conv2d is not supported");
        if (cur.rank != 3) return refuse(i, "conv2d input is not an image");
        s.conv_out = op.output;
        s.channels = op.conv.out_channels;
        s.depth = std::size_t(op.conv.in_channels) * op.conv.kernel_h * op.conv.kernel_w;
      } else {
        s.channels = op.fc.out_features;
        s.depth = op.fc.in_features;
        if (image.rank == 3 && image.elements() == s.depth)
          s.in_shape = image; // fed by a flatten of an image: columns in (c, h, w) order
        else
          s.in_shape = format::shape::features(op.fc.in_features);
      }
      cur = op.output;
      image = cur.rank == 3 ? cur : format::shape{};
      std::size_t j = i + 1;
      for (; j < n; ++j) {
        const format::operation& f = m.ops[j];
        if (f.input != j || f.input_b != format::no_index) break;
        if (f.kind == format::op_kind::relu) {
          s.relu = true;
        } else if (f.kind == format::op_kind::max_pool2d) {
          if (s.pool || !s.conv) return refuse(j, "only one max_pool2d after a conv2d is fused");
          if (f.pool.pad_h || f.pool.pad_w) return refuse(j, "max_pool2d with padding");
          if (f.pool.kernel_h > f.pool.stride_h || f.pool.kernel_w > f.pool.stride_w)
            return refuse(j, "overlapping max_pool2d windows");
          s.pool = true;
          s.p = f.pool;
        } else if (f.kind == format::op_kind::act_quant) {
          if (s.out_act != format::no_index)
            return refuse(j, "a second act_quant after one conv2d / linear");
          s.out_act = j;
        } else if (f.kind != format::op_kind::flatten) {
          break;
        }
        cur = f.output;
        if (cur.rank == 3) image = cur;
      }
      s.out_shape = cur;
      s.out_image = image;
      if (s.out_act != format::no_index && j == n)
        return refuse(s.out_act, "an act_quant on the network output: the integer engine "
                                 "gives float logits");
      plan.steps.push_back(std::move(s));
      if (j < n && m.ops[j].kind != format::op_kind::conv2d &&
          m.ops[j].kind != format::op_kind::linear)
        return refuse(j, "not supported by the integer engine");
      i = j;
    }
    if (plan.steps.empty()) {
      plan.unsupported = "the model has no operation";
      return plan;
    }
    // The act grids: each act_quant's grid is the input of the step after it.
    plan.steps.front().in_act = input_act;
    for (std::size_t k = 0; k + 1 < plan.steps.size(); ++k)
      plan.steps[k + 1].in_act = plan.steps[k].out_act;
    std::vector<act_u8_grid> grids(plan.steps.size());
    for (std::size_t k = 0; k < plan.steps.size(); ++k) {
      const std::size_t a = plan.steps[k].in_act;
      if (a == format::no_index) continue;
      grids[k] = act_u8_grid::of(m.ops[a].act);
      if (!grids[k].refused.empty()) return refuse(a, grids[k].refused);
    }
    // Scales: each step's input from an act grid, else from the calibrated range after its
    // producer's ReLU (z = 0) or not (z = 128).
    plan.calibrated = true;
    for (std::size_t k = 0; k < plan.steps.size(); ++k) {
      integer_step& s = plan.steps[k];
      const format::operation& op = m.ops[s.op];
      const bool after_relu = k > 0 && plan.steps[k - 1].relu;
      if (s.in_act != format::no_index) {
        const act_u8_grid& g = grids[k];
        s.in_zero = g.zero, s.in_lo = g.lo, s.in_hi = g.hi, s.in_bits = g.bits;
        s.in_scale = g.scale;
      } else if (!(op.input_range > 0) || !std::isfinite(op.input_range)) {
        plan.calibrated = false;
        continue;
      } else {
        s.in_zero = after_relu ? 0 : 128;
        s.in_scale = op.input_range / (after_relu ? 255.0f : 127.0f);
      }
      if (k > 0) {
        integer_step& prev = plan.steps[k - 1];
        prev.out_u8 = true;
        prev.out_inv_scale = 1.0f / s.in_scale;
        prev.out_zero = s.in_zero;
        prev.out_lo = s.in_lo, prev.out_hi = s.in_hi;
      }
      const format::tensor_data* cs =
          op.channel_scale == format::no_index ? nullptr : &m.tensors[op.channel_scale];
      const format::tensor_data* b = op.bias == format::no_index ? nullptr : &m.tensors[op.bias];
      s.scale.resize(s.channels);
      s.bias.assign(s.channels, 0.0f);
      for (std::size_t j = 0; j < s.channels; ++j) {
        s.scale[j] = s.in_scale * weights_scale(s.op, j) * (cs ? cs->values[j] : 1.0f);
        if (b) s.bias[j] = b->values[j];
      }
    }
    return plan;
  }
};

} // namespace bitgrad::deploy
