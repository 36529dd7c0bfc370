// What the packed integer engine computes, decided from a model file alone: which operations
// it fuses, the u8 scale and zero point of every activation between layers and the integer
// weights of every conv2d / linear. Shared by the engine (deploy/packed_engine.hpp) and its
// plain reference twin (deploy::ref::run_integer), so the two differ only in how they compute.
//
// Words
//   step        one conv2d or linear with the operations fused behind it: relu, one max_pool2d
//               (no padding), flatten, act_quant, and one residual add (before them: see
//               "residual"); or one global_avg_pool. Every other operation (avg_pool2d, relu6,
//               a pool with padding, a grouped conv) makes the model unsupported (supported()
//               says which and why).
//   values      the graph need not be a chain (a ResNet block's input is read by the block's
//               first conv and by its shortcut): a step reads any value an earlier step wrote
//               (format/model.hpp: value 0 = the input, operation i writes value i + 1). A
//               chain stops at a value more than one operation reads, so it is kept. A kept
//               value is u8 on one grid when a conv2d / linear step reads it (the largest of
//               their calibrated input ranges) or an act_quant sets it; else it is float (a
//               projection shortcut's output that only an add reads, or a block output that
//               only a global_avg_pool reads): the file stores no range for it, so it is not
//               quantized (ranges are derived from readers: the format has no new field).
//   residual    an add whose one operand is the step's own output is fused into its output
//               stage (output_stage.hpp: add_u8 / add_f32), before the relu:
//                 v = acc * scale[j] + bias[j] + s_r (q_r - z_r)    (u8 operand, its grid)
//                 v = acc * scale[j] + bias[j] + r                  (float operand)
//                 q' = clamp(round_half_even(max(v, 0) / s_out) + z_out, lo, hi)
//               in float32 (each multiply-add rounded twice, product then sum, on every target),
//               the same arithmetic as every output stage here. Not a separate u8 + u8 add:
//               the block's pre-add sum is never rounded to u8, so it needs no calibrated
//               range of its own (the file has none) and the add rounds once, not twice.
//   global pool mean over H W per channel, u8 input: v = (sum_p q_p - H W z) * (s_in / (H W)),
//               the sum exact in int32 (a plane of more than 2^31 / 255 pixels is refused);
//               float input: v = (sum_p x_p) * (1 / (H W)), summed in pixel order; then
//               quantize_u8 onto the readers' grid, or float logits.
//   activation  the u8 value q between two steps, x = s (q - z): after a ReLU z = 0 and
//               s = range / 255, else z = 128 and s = range / 127, with range the calibrated
//               max |x| the file stores as its readers' input_range (op.input_range). The
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
//   output      every conv2d / linear step: acc(i, j) = sum_p (q(i, p) - z) code(j, p), exact
//               in int32, then
//                 v = acc * scale[j] + bias[j]       scale[j] = s_in * s_w(j) * cs[j]
//                 v = v + residual                   when an add is fused (above)
//                 v = max(v, 0)                      when the step has a ReLU
//                 q' = clamp(round(v / s_out) + z_out, 0, 255)   or float v (logits, or a
//                                                    kept float value)
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
#include <limits>
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

/// What a step is: a conv2d / linear with its fused chain, or a global average pool.
enum class step_kind : std::uint8_t { gemm, global_pool };

/// One conv2d / linear and what is fused behind it (see "step" at the top), or one
/// global_avg_pool (kind global_pool: in_shape, out_shape and the grids only).
struct integer_step {
  step_kind kind = step_kind::gemm;
  std::size_t op = 0; ///< index of the conv2d / linear (global_avg_pool) in the file's operations
  std::uint32_t in_value = 0;  ///< the value id read (format: value 0 = input, op i makes i + 1)
  std::uint32_t out_value = 0; ///< the value id written: the last of the fused chain
  bool network_output = false; ///< out_value is the network output (float logits)
  bool conv = false;
  format::conv_attrs c;   ///< conv2d
  format::shape in_shape; ///< per image: (C, H, W) for a conv, and for a linear fed by a
                          ///< flatten of one; else (features)
  format::shape conv_out; ///< conv2d: (C, OH, OW) before the pool
  format::shape out_shape;
  format::shape out_image; ///< the last (C, H, W) of the step's chain (before a flatten)
  std::size_t channels = 0, depth = 0;
  // input: x = in_scale * (q - in_zero), q in in_lo..in_hi; in_u8 false: a float input (a
  // global pool reading a value no conv2d / linear reads, so it has no calibrated range)
  bool in_u8 = true;
  float in_scale = 1;
  std::uint8_t in_zero = 128;
  std::uint8_t in_lo = 0, in_hi = 255;
  int in_bits = 8;                       ///< the input grid's bitwidth (8: calibrated)
  std::size_t in_act = format::no_index; ///< the act_quant operation that sets the input grid
  // residual add fused into the output stage (see "residual" at the top)
  std::size_t add_op = format::no_index;     ///< the add operation, or none
  std::uint32_t residual = format::no_index; ///< the add's other operand (a value id)
  bool residual_u8 = false;                  ///< u8 on its grid, else float
  float residual_scale = 1;
  std::uint8_t residual_zero = 0;
  // output stage
  std::vector<float> scale, bias; ///< per channel (then zeros to output::padded_length(channels));
                                  ///< bias 0 when the layer has none
  bool relu = false;              ///< after the residual add, when there is one
  bool pool = false;
  format::pool_attrs p;
  bool out_u8 = false; ///< false: float (the network output, or a value without a u8 grid)
  float out_inv_scale = 1;
  std::uint8_t out_zero = 0;
  std::uint8_t out_lo = 0, out_hi = 255;  ///< the readers' in_lo, in_hi
  std::size_t out_act = format::no_index; ///< the act_quant in the chain (the readers' grid)
  float pool_scale = 1; ///< global_pool: in_scale / (H W) (u8 input) or 1 / (H W) (float)

  bool gemm() const { return kind == step_kind::gemm; }

  /// The float network input -> this step's u8 input (the first step).
  output::quantize_u8 in_quantizer() const {
    return {1.0f / in_scale, in_zero, float(in_lo), float(in_hi)};
  }
  /// The output stage's requantization to the readers' u8 input.
  output::quantize_u8 out_quantizer() const {
    return {out_inv_scale, out_zero, float(out_lo), float(out_hi)};
  }
  /// The residual operand as an output stage reading r[i * stride + j].
  output::add_u8 residual_u8_stage(const std::uint8_t* r, std::size_t stride) const {
    return {r, stride, residual_scale, residual_zero};
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

/// The grid of a value between steps: u8 codes q with x = scale (q - zero), q in lo..hi, or
/// float (no u8 grid: see "values" at the top).
struct value_grid {
  bool u8 = false;
  float scale = 1;
  std::uint8_t zero = 128, lo = 0, hi = 255;
  int bits = 8;
  std::size_t act = format::no_index; ///< the act_quant operation that sets it
};

/// The steps of a model file, or why it cannot run on the integer engine.
struct integer_plan {
  std::vector<integer_step> steps;
  std::vector<value_grid> values; ///< per value id (0..ops), meaningful for materialised values
  std::uint32_t input_value = 0;  ///< the value the float input is quantized into (0, or 1
                                  ///< after an act_quant of the input)
  std::string unsupported;        ///< empty when the graph is supported
  bool calibrated = false;        ///< every step has an input range (the scales are set)

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
      plan.values.clear();
      return plan;
    };
    using format::op_kind;
    const std::size_t n = m.ops.size();
    if (n == 0) {
      plan.unsupported = "the model has no operation";
      return plan;
    }
    // readers[v]: operations reading value v (the network output counts as one more).
    std::vector<std::size_t> readers(n + 1, 0);
    for (const format::operation& op : m.ops) {
      ++readers[op.input];
      if (op.input_b != format::no_index) ++readers[op.input_b];
    }
    ++readers[n];
    std::vector<format::shape> shape_of(n + 1), image_of(n + 1);
    shape_of[0] = m.input;
    image_of[0] = m.input.rank == 3 ? m.input : format::shape{};
    for (std::size_t i = 0; i < n; ++i) shape_of[i + 1] = m.ops[i].output;
    // made[v]: the step writing value v (values read across steps must be written by one).
    constexpr std::size_t none = std::size_t(-1);
    std::vector<std::size_t> made(n + 1, none);
    std::vector<char> nonneg(n + 1, 0); // value after a ReLU (its u8 zero point is 0)
    // An act_quant of the network input sets the grid of the first value.
    std::size_t first = 0, input_act = format::no_index;
    if (m.ops[0].kind == op_kind::act_quant) {
      if (m.ops[0].input != 0 || readers[0] != 1)
        return refuse(0, "the network input must be read by its act_quant only");
      input_act = 0;
      first = 1;
    }
    plan.input_value = static_cast<std::uint32_t>(first);
    image_of[first] = image_of[0];
    for (std::size_t i = first; i < n;) {
      const format::operation& op = m.ops[i];
      if (op.input_b != format::no_index)
        return refuse(i, "an add must follow the conv2d / linear whose output it reads (the "
                         "integer engine fuses it into that layer's output stage)");
      if (op.input != plan.input_value && made[op.input] == none)
        return refuse(i, "reads value " + std::to_string(op.input) +
                             ", which the integer engine fuses into a layer and does not keep");
      integer_step s;
      s.op = i;
      s.in_value = op.input;
      s.in_shape = shape_of[op.input];
      if (op.kind == op_kind::global_avg_pool) {
        s.kind = step_kind::global_pool;
        s.channels = s.in_shape.dims[0];
        const std::uint64_t plane = s.in_shape.elements() / s.channels;
        if (plane * 255 > std::uint64_t(std::numeric_limits<std::int32_t>::max()))
          return refuse(i, "a plane of " + std::to_string(plane) +
                               " pixels: its sum of u8 codes may not fit int32");
        s.out_shape = op.output;
        s.out_value = static_cast<std::uint32_t>(i + 1);
        nonneg[i + 1] = nonneg[op.input];
        made[i + 1] = plan.steps.size();
        plan.steps.push_back(std::move(s));
        ++i;
        continue;
      }
      if (op.kind != op_kind::conv2d && op.kind != op_kind::linear)
        return refuse(i, "not supported by the integer engine (it runs conv2d / linear with "
                         "relu, max_pool2d, flatten, act_quant and a residual add fused, and "
                         "global_avg_pool)");
      s.conv = op.kind == op_kind::conv2d;
      if (s.conv) {
        s.c = op.conv;
        if (op.conv.groups != 1) return refuse(i, "grouped conv2d is not supported");
        if (s.in_shape.rank != 3) return refuse(i, "conv2d input is not an image");
        s.conv_out = op.output;
        s.channels = op.conv.out_channels;
        s.depth = std::size_t(op.conv.in_channels) * op.conv.kernel_h * op.conv.kernel_w;
      } else {
        s.channels = op.fc.out_features;
        s.depth = op.fc.in_features;
        const format::shape& image = image_of[op.input];
        if (image.rank == 3 && image.elements() == s.depth)
          s.in_shape = image; // fed by a flatten of an image: columns in (c, h, w) order
        else
          s.in_shape = format::shape::features(op.fc.in_features);
      }
      format::shape cur = op.output;
      format::shape image = cur.rank == 3 ? cur : format::shape{};
      bool flat = false;
      std::size_t j = i + 1;
      for (; j < n; ++j) {
        const format::operation& f = m.ops[j];
        if (readers[j] != 1) break; // value j is also read elsewhere (or is the output): kept
        const bool reads_cur = f.input == j || f.input_b == j;
        if (!reads_cur) break;
        if (f.kind == op_kind::add) {
          const std::uint32_t other = f.input == j ? f.input_b : f.input;
          if (s.add_op != format::no_index) return refuse(j, "a second add after one layer");
          if (s.relu || s.pool || flat || s.out_act != format::no_index)
            return refuse(j, "an add after the relu, max_pool2d, flatten or act_quant of a "
                             "layer (the integer engine adds the residual before them)");
          if (other == j || (other != plan.input_value && made[other] == none))
            return refuse(j, "its second operand, value " + std::to_string(other) +
                                 ", is not kept by the integer engine");
          s.add_op = j;
          s.residual = other;
        } else if (f.input_b != format::no_index) {
          break;
        } else if (f.kind == op_kind::relu) {
          s.relu = true;
        } else if (f.kind == op_kind::max_pool2d) {
          if (s.pool || !s.conv) return refuse(j, "only one max_pool2d after a conv2d is fused");
          if (f.pool.pad_h || f.pool.pad_w) return refuse(j, "max_pool2d with padding");
          if (f.pool.kernel_h > f.pool.stride_h || f.pool.kernel_w > f.pool.stride_w)
            return refuse(j, "overlapping max_pool2d windows");
          s.pool = true;
          s.p = f.pool;
        } else if (f.kind == op_kind::act_quant) {
          if (s.out_act != format::no_index)
            return refuse(j, "a second act_quant after one conv2d / linear");
          s.out_act = j;
        } else if (f.kind == op_kind::flatten) {
          flat = true;
        } else {
          break;
        }
        cur = f.output;
        if (cur.rank == 3) image = cur;
      }
      s.out_shape = cur;
      s.out_image = image;
      s.out_value = static_cast<std::uint32_t>(j);
      nonneg[j] = s.relu;
      image_of[j] = image;
      if (s.out_act != format::no_index && j == n)
        return refuse(s.out_act, "an act_quant on the network output: the integer engine "
                                 "gives float logits");
      made[j] = plan.steps.size();
      plan.steps.push_back(std::move(s));
      i = j;
    }
    if (made[n] == none) return refuse(n - 1, "the network output is not a layer's output");
    if (plan.steps.front().in_value != plan.input_value)
      return refuse(plan.steps.front().op, "the first layer does not read the network input");
    plan.steps[made[n]].network_output = true;

    // Grids (see "values" at the top): act_quant, else the largest calibrated input range of
    // the conv2d / linear steps reading the value, else float.
    plan.values.assign(n + 1, value_grid{});
    std::vector<float> range(n + 1, 0.0f);
    std::vector<char> gemm_read(n + 1, 0);
    for (const integer_step& s : plan.steps) {
      if (!s.gemm()) continue;
      gemm_read[s.in_value] = 1;
      const float r = m.ops[s.op].input_range;
      if (r > 0 && std::isfinite(r)) range[s.in_value] = std::max(range[s.in_value], r);
    }
    auto set_act = [&](std::uint32_t v, std::size_t a) -> std::string {
      const act_u8_grid g = act_u8_grid::of(m.ops[a].act);
      if (!g.refused.empty()) return g.refused;
      value_grid& vg = plan.values[v];
      vg.u8 = true;
      vg.scale = g.scale, vg.zero = g.zero, vg.lo = g.lo, vg.hi = g.hi, vg.bits = g.bits;
      vg.act = a;
      return {};
    };
    auto set_range = [&](std::uint32_t v) {
      value_grid& vg = plan.values[v];
      if (!gemm_read[v] || !(range[v] > 0)) return;
      vg.u8 = true;
      vg.zero = nonneg[v] ? 0 : 128;
      vg.scale = range[v] / (nonneg[v] ? 255.0f : 127.0f);
    };
    if (input_act != format::no_index) {
      const std::string why = set_act(plan.input_value, input_act);
      if (!why.empty()) return refuse(input_act, why);
    } else {
      set_range(plan.input_value);
    }
    for (const integer_step& s : plan.steps) {
      if (s.network_output) continue; // float logits
      if (s.out_act != format::no_index) {
        const std::string why = set_act(s.out_value, s.out_act);
        if (!why.empty()) return refuse(s.out_act, why);
      } else {
        set_range(s.out_value);
      }
    }
    // Calibrated: every conv2d / linear reads a u8 grid (an act grid or a calibrated range).
    plan.calibrated = true;
    for (const integer_step& s : plan.steps)
      if (s.gemm() && !plan.values[s.in_value].u8) plan.calibrated = false;
    if (!plan.calibrated) return plan;
    if (!plan.values[plan.input_value].u8)
      return refuse(plan.steps.front().op, "the network input is not read by a conv2d / linear");

    for (integer_step& s : plan.steps) {
      const value_grid& in = plan.values[s.in_value];
      s.in_u8 = in.u8;
      s.in_scale = in.scale, s.in_zero = in.zero, s.in_lo = in.lo, s.in_hi = in.hi;
      s.in_bits = in.bits, s.in_act = in.act;
      if (!s.network_output) {
        const value_grid& out = plan.values[s.out_value];
        s.out_u8 = out.u8;
        s.out_inv_scale = 1.0f / out.scale;
        s.out_zero = out.zero, s.out_lo = out.lo, s.out_hi = out.hi;
      }
      if (s.residual != format::no_index) {
        const value_grid& r = plan.values[s.residual];
        s.residual_u8 = r.u8;
        s.residual_scale = r.scale;
        s.residual_zero = r.zero;
      }
      if (!s.gemm()) {
        const float plane = float(s.in_shape.elements() / s.channels);
        s.pool_scale = s.in_u8 ? s.in_scale / plane : 1.0f / plane;
        continue;
      }
      const format::operation& op = m.ops[s.op];
      const format::tensor_data* cs =
          op.channel_scale == format::no_index ? nullptr : &m.tensors[op.channel_scale];
      const format::tensor_data* b = op.bias == format::no_index ? nullptr : &m.tensors[op.bias];
      // Padded with zeros to a multiple of the lanes: padded output pipelines read whole lane
      // batches (output_stage.hpp, "Padded rows").
      s.scale.assign(output::padded_length(s.channels), 0.0f);
      s.bias.assign(output::padded_length(s.channels), 0.0f);
      for (std::size_t j = 0; j < s.channels; ++j) {
        s.scale[j] = s.in_scale * weights_scale(s.op, j) * (cs ? cs->values[j] : 1.0f);
        if (b) s.bias[j] = b->values[j];
      }
    }
    return plan;
  }
};

} // namespace bitgrad::deploy
