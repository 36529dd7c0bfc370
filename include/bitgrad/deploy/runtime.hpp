// Inference on a model file, with no training code: reads format/, runs kernels/.
//
//   auto rt = deploy::runtime::load("model.bgm");
//   std::vector<float> x = rt.normalise(pixels, batch);         // 8-bit images -> network input
//   tensor2<float> y = rt.run(x.data(), batch, deploy::precision::packed);  // packed integer
//   tensor2<float> logits = rt.run(x.data(), batch);            // float path
//   double acc = rt.accuracy(test_set, deploy::precision::packed);  // normalise + run + top-1
//   deploy::evaluation e = rt.evaluate(test_set, deploy::precision::int8);  // + predictions
//
// Weights stay packed: at load every conv2d / linear of a graph the packed integer engine runs
// (deploy/packed_engine.hpp: conv2d / linear with relu, max-pool, flatten and residual adds
// fused, global average pools; deploy/integer_plan.hpp) is packed
// into the low-bit formats of kernels/packed/packed_weights.hpp, and the file's code streams of
// those layers are released. resident_weight_bytes() counts what the runtime keeps for weights,
// weight_payload_bytes() what the file stores for them (<= 1.25x when only the packed engine
// has run). Other graphs keep the file's code streams.
//
// Packed integer path (precision::packed): u8 activations between layers, packed_gemm with the
// requantize + bias + ReLU + max-pool output stage, float only at the logits; the ISA path is
// the fastest this CPU runs unless run() is given one. Its activation scales come from the
// learned grids of the file's act_quant operations (at most 8 bits: the u8 codes are the
// grid's codes), else from the calibrated input ranges the file stores (train::calibrate at
// export), or from calibrate() on a few images when the file has none.
//
// Float path (precision::float32) and the older int8 path (precision::int8): the first run of
// either decodes the weights once (from the packed formats) to float and int8 and keeps them,
// which resident_weight_bytes() then counts. The float path runs the same SIMD kernels as
// training (conv2d_fprop, gemm with a bias epilogue, the pool and elementwise kernels), so a
// network without batch norm gives exactly the trained network's eval-mode outputs.
//
// int8 path: weight codes widened to int8 (tensors wider than 8 bits or float32 are
// requantized to int8 per output channel, scale max|w| / 127); at each conv2d / linear the
// float input is quantized to int8 with the per-tensor scale s_x = range / 127 calibrated at
// export (the operation's input_range), the int8 x int8 -> int32 GEMM of deploy/int8_gemm.hpp
// runs (a conv through im2row), and the requantizing output stage turns the int32 sums into
// acc * s_x * s_w[o] * channel_scale[o] + bias[o]. Pooling, activations and residual adds run
// in float between the integer layers.
//
// Blocks: every path runs the batch in blocks of whole images (deploy/image_blocks.hpp: the
// largest activation of a block <= image_block_bytes), all operations on one block before the
// next, in per-thread buffers reused across blocks and calls (slots by liveness); threads take
// whole blocks when the batch has the work for them. A block's outputs equal its images' own.
//
// Thread safety: run() is const and keeps all its state on the stack or in thread_local
// scratch (the one-time weight decode is guarded by std::call_once), so any number of threads
// may run one loaded model at once.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/deploy/image_blocks.hpp>
#include <bitgrad/deploy/int8_gemm.hpp>
#include <bitgrad/deploy/packed_engine.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/kernels/act_quantize.hpp>
#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/pool2d.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::deploy {

/// float32: float weights and activations; int8: int8 x int8 GEMMs with float between layers;
/// packed: the packed integer engine (low-bit weights, u8 activations, float logits).
enum class precision { float32, int8, packed };

inline const char* to_string(precision p) {
  return p == precision::int8 ? "int8" : p == precision::packed ? "packed" : "float32";
}

/// Top-1 accuracy of a runtime on a labelled data set (runtime::evaluate).
struct evaluation {
  double accuracy = 0;                  ///< correct / images
  std::size_t correct = 0;              ///< images whose top-1 class is their label
  std::size_t images = 0;               ///< images evaluated (the whole data set)
  std::vector<std::size_t> predictions; ///< the top-1 class of every image, in data-set order
};

class runtime {
public:
  explicit runtime(format::model_file m)
      : m_(std::move(m)), lazy_(std::make_shared<lazy_weights>()) {
    const std::size_t n = m_.ops.size();
    lazy_->w.resize(n);
    last_use_.assign(n + 1, 0);
    step_of_.assign(n, no_step);
    for (std::size_t i = 0; i < n; ++i) {
      const format::operation& op = m_.ops[i];
      last_use_[op.input] = i;
      if (op.input_b != format::no_index) last_use_[op.input_b] = i;
    }
    last_use_[n] = n; // the output lives to the end
    assign_slots();
    engine_ = packed_engine(m_);
    if (engine_.supported()) {
      // The packed weights replace the file's code streams of <= 8-bit tensors.
      for (std::size_t k = 0; k < engine_.plan().steps.size(); ++k) {
        if (!engine_.plan().steps[k].gemm()) continue; // a global pool: no weights
        const std::size_t i = engine_.plan().steps[k].op;
        step_of_[i] = k;
        format::tensor_data& t = m_.tensors[m_.ops[i].weight];
        if (t.kind == format::tensor_kind::quantized &&
            *std::max_element(t.bits.begin(), t.bits.end()) <= 8)
          std::vector<std::uint8_t>().swap(t.packed);
      }
    }
    for (const auto& op : m_.ops)
      if (op.kind == format::op_kind::conv2d || op.kind == format::op_kind::linear) {
        const format::tensor_data& t = m_.tensors[op.weight];
        payload_ += t.kind == format::tensor_kind::quantized
                        ? std::size_t((t.code_bits() + 7) / 8) + 5 * t.bits.size()
                        : t.element_count() * sizeof(float);
      }
  }

  static runtime load(const std::filesystem::path& path) {
    return runtime(format::read_model_file(path));
  }

  /// The file's description (the code streams of packed layers are released after packing).
  const format::model_file& model() const { return m_; }

  /// The packed integer engine (its plan, packed weights, supported() / why()).
  const packed_engine& engine() const { return engine_; }
  /// See packed_engine::set_parallel_min.
  void set_engine_parallel_min(std::size_t work) { engine_.set_parallel_min(work); }
  /// packed_engine::set_flat_min_width: the output widths from which stride-1 convs run on
  /// the flat plane (tests force 0 and SIZE_MAX to cover both ways).
  void set_engine_flat_min_width(std::size_t w) { engine_.set_flat_min_width(w); }
  void set_engine_flat_min_width(std::size_t whole_quads, std::size_t padded) {
    engine_.set_flat_min_width(whole_quads, padded);
  }
  /// Multiply-adds of a whole batch from which the float / int8 paths split its image blocks
  /// across threads, and the packed engine its layers (default engine_parallel_threshold(); 0
  /// splits whenever there are two blocks, as the tests do).
  void set_parallel_min(std::size_t work) {
    parallel_min_ = work;
    engine_.set_parallel_min(work);
  }
  /// Images per block (image_blocks.hpp) of the float / int8 paths and of the packed engine: 0
  /// (default) sizes blocks to image_block_bytes; tests force small blocks.
  void set_block_images(std::size_t n) {
    block_images_ = n;
    engine_.set_block_images(n);
  }
  /// The most images one block of the float / int8 paths holds: set_block_images' value, else
  /// image_block_bytes / the largest float activation of one image.
  std::size_t block_images() const {
    return block_images_ ? block_images_ : detail::image_block_cap(image_bytes_);
  }
  /// True when the packed integer path can run: a supported graph with calibrated ranges.
  bool packed_ready() const { return engine_.supported() && engine_.calibrated(); }

  /// Bytes the runtime keeps for conv2d / linear weights: the packed formats, the file's code
  /// streams it did not pack, and the float / int8 copies once a float or int8 run made them.
  std::size_t resident_weight_bytes() const {
    std::size_t n = engine_.resident_bytes();
    for (const auto& op : m_.ops)
      if (op.kind == format::op_kind::conv2d || op.kind == format::op_kind::linear) {
        const format::tensor_data& t = m_.tensors[op.weight];
        n += t.packed.capacity() + t.values.capacity() * sizeof(float);
        if (step_of_[&op - m_.ops.data()] == no_step)
          n += t.bits.capacity() + t.scales.capacity() * sizeof(float);
      }
    if (lazy_->ready.load())
      for (const auto& lw : lazy_->w)
        n += lw.w.capacity() * sizeof(float) + lw.w8.capacity() + lw.w8_scale.capacity() * 4;
    return n;
  }
  /// What the file stores for the same weights: codes at their bitwidths + 5 bytes per group
  /// (bitwidth + scale); 4 bytes per float32 weight.
  std::size_t weight_payload_bytes() const { return payload_; }

  /// Sets every conv2d / linear input range to max |input| over these `batch` inputs on the
  /// float path (for a file exported without calibration), and the packed engine's scales.
  void calibrate(const float* x, std::size_t batch) {
    const std::vector<float> r = input_ranges(x, batch);
    for (std::size_t i = 0; i < m_.ops.size(); ++i)
      if (m_.ops[i].kind == format::op_kind::conv2d || m_.ops[i].kind == format::op_kind::linear)
        m_.ops[i].input_range = r[i] > 0 ? r[i] : 1.0f;
    engine_.set_ranges(m_);
  }
  /// Elements of one input image / of one output row.
  std::size_t input_size() const { return static_cast<std::size_t>(m_.input.elements()); }
  std::size_t output_size() const { return static_cast<std::size_t>(m_.output().elements()); }
  /// True when every conv2d / linear has a calibrated input range (the int8 path can run).
  bool int8_ready() const {
    for (const auto& op : m_.ops)
      if ((op.kind == format::op_kind::conv2d || op.kind == format::op_kind::linear) &&
          !(op.input_range > 0))
        return false;
    return true;
  }

  /// Network input for `batch` 8-bit images (input_size() bytes each): pixel / 255 normalised
  /// with the file's mean and stddev per channel, computed as the data loader does.
  std::vector<float> normalise(const std::uint8_t* pixels, std::size_t batch) const {
    const std::size_t c = m_.input.rank == 3 ? m_.input.dims[0] : 1;
    const std::size_t plane = input_size() / c;
    std::vector<float> lut(c * 256);
    for (std::size_t ch = 0; ch < c; ++ch) {
      const double mean = m_.mean.empty() ? 0.0 : m_.mean[m_.mean.size() == 1 ? 0 : ch];
      const double sd = m_.stddev.empty() ? 1.0 : m_.stddev[m_.stddev.size() == 1 ? 0 : ch];
      for (std::size_t p = 0; p < 256; ++p)
        lut[ch * 256 + p] = static_cast<float>((static_cast<double>(p) / 255.0 - mean) / sd);
    }
    std::vector<float> x(batch * input_size());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = lut[(i / plane) % c * 256 + pixels[i]];
    return x;
  }

  /// Outputs (batch, output_size()) for `batch` inputs of input_size() floats each.
  /// precision::packed runs on path `isa` (default: the fastest this CPU runs).
  tensor2<float> run(const float* x, std::size_t batch, precision p = precision::float32,
                     int_isa isa = best_int_isa()) const {
    if (p == precision::packed) return engine_.run(x, batch, isa);
    return execute(
        x, batch, p, [](std::size_t, const float*, std::size_t) {}, true);
  }

  /// The same on an (N, C, H, W) tensor; its shape must match the file's input shape.
  tensor2<float> run(const tensor4<float>& x, precision p = precision::float32,
                     int_isa isa = best_int_isa()) const {
    const auto& s = x.shape();
    if (m_.input.rank != 3 || s[1] != m_.input.dims[0] || s[2] != m_.input.dims[1] ||
        s[3] != m_.input.dims[2])
      throw shape_error("runtime: input of shape " + shape_string(s) +
                        " does not match the model's input " + m_.input.str());
    return run(x.data(), s[0], p, isa);
  }

  /// max |input| of every operation over this batch, on the float path (0 for operations
  /// without weights): the calibration of the int8 path.
  std::vector<float> input_ranges(const float* x, std::size_t batch) const {
    std::vector<float> r(m_.ops.size(), 0.0f);
    // The blocks run in order on this thread (the observer is not thread-safe): max over them.
    execute(
        x, batch, precision::float32,
        [&](std::size_t op, const float* in, std::size_t n) {
          float mx = r[op];
          for (std::size_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(in[i]));
          r[op] = mx;
        },
        false);
    return r;
  }

  /// Top-1 accuracy on every image of `data`, in data-set order: each batch of `batch` 8-bit
  /// images is normalised with the file's mean and stddev (normalise), run at precision p
  /// (run) and its rows' largest outputs compared with the labels (top1). The images must have
  /// the model's input shape and every label must be an output index.
  evaluation evaluate(const dataset& data, precision p = precision::float32,
                      std::size_t batch = 256) const {
    const std::string who = "runtime::evaluate";
    if (batch == 0) throw config_error(who + ": batch must be >= 1, got 0");
    validate(data, who);
    if (data.empty()) throw config_error(who + ": the data set is empty");
    const bool same_shape = m_.input.rank == 3 ? data.channels == m_.input.dims[0] &&
                                                     data.height == m_.input.dims[1] &&
                                                     data.width == m_.input.dims[2]
                                               : data.image_size() == input_size();
    if (!same_shape)
      throw config_error(who + ": images of " + std::to_string(data.channels) + "x" +
                         std::to_string(data.height) + "x" + std::to_string(data.width) +
                         ", the model's input is " + m_.input.str());
    for (std::size_t i = 0; i < data.size(); ++i)
      if (static_cast<std::size_t>(data.labels[i]) >= output_size())
        throw config_error(who + ": label " + std::to_string(data.labels[i]) + " of image " +
                           std::to_string(i) + " is not one of the model's " +
                           std::to_string(output_size()) + " outputs");
    evaluation e;
    e.images = data.size();
    e.predictions.resize(e.images);
    for (std::size_t at = 0; at < e.images; at += batch) {
      const std::size_t n = std::min(batch, e.images - at);
      const std::vector<float> x = normalise(data.pixels.data() + at * data.image_size(), n);
      const std::vector<std::size_t> top = top1(run(x.data(), n, p));
      for (std::size_t i = 0; i < n; ++i) {
        e.predictions[at + i] = top[i];
        e.correct += top[i] == static_cast<std::size_t>(data.labels[at + i]);
      }
    }
    e.accuracy = static_cast<double>(e.correct) / static_cast<double>(e.images);
    return e;
  }

  /// evaluate(data, p, batch).accuracy: the fraction of images whose top-1 class is their label.
  double accuracy(const dataset& data, precision p = precision::float32,
                  std::size_t batch = 256) const {
    return evaluate(data, p, batch).accuracy;
  }

  /// Index of the largest value of every row.
  static std::vector<std::size_t> top1(const tensor2<float>& y) {
    const std::size_t n = y.shape()[0], k = y.shape()[1];
    std::vector<std::size_t> out(n);
    for (std::size_t i = 0; i < n; ++i) {
      const float* r = y.data() + i * k;
      out[i] = static_cast<std::size_t>(std::max_element(r, r + k) - r);
    }
    return out;
  }

private:
  struct layer_weights {
    std::vector<float> w;        ///< float path: code * scale * channel scale
    std::vector<float> bias;     ///< empty = none
    std::vector<std::int8_t> w8; ///< int8 path: codes (or per-channel requantized weights)
    std::vector<float> w8_scale; ///< per output channel: weight step * channel scale
  };

  static constexpr std::size_t no_step = std::size_t(-1);

  /// The float / int8 weights, made on the first float or int8 run.
  struct lazy_weights {
    std::once_flag once;
    std::atomic<bool> ready{false};
    std::vector<layer_weights> w;
  };

  const std::vector<layer_weights>& decoded() const {
    std::call_once(lazy_->once, [&] {
      for (std::size_t i = 0; i < m_.ops.size(); ++i)
        if (m_.ops[i].kind == format::op_kind::conv2d || m_.ops[i].kind == format::op_kind::linear)
          prepare(i, lazy_->w[i]);
      lazy_->ready.store(true);
    });
    return lazy_->w;
  }

  /// The codes of operation i's weight in the file's order (from the packed formats when the
  /// file's stream was released).
  std::vector<std::int32_t> file_codes(std::size_t i) const {
    const format::tensor_data& t = m_.tensors[m_.ops[i].weight];
    if (step_of_[i] == no_step || !t.packed.empty() || t.kind != format::tensor_kind::quantized)
      return t.codes();
    const std::size_t k = step_of_[i];
    const packed_weights& pw = engine_.weights(k);
    const std::vector<std::size_t> perm = packed_engine::depth_order(engine_.plan().steps[k]);
    const std::vector<std::size_t> at = engine_.packed_index(k); // padded kernel rows
    std::vector<std::uint32_t> order(pw.channels());
    pw.channel_order(order.data());
    const std::size_t depth = perm.size();
    std::vector<std::int32_t> codes(pw.channels() * depth);
    for (int b = 1; b <= packed_max_bits; ++b)
      for (std::size_t v = 0; v < pw.class_channels(b); ++v) {
        const std::size_t j = order[pw.class_begin(b) + v];
        for (std::size_t q = 0; q < depth; ++q)
          codes[j * depth + perm[q]] = pw.code_at(b, v, at[q]);
      }
    return codes;
  }

  void prepare(std::size_t i, layer_weights& lw) const {
    const format::operation& op = m_.ops[i];
    const format::tensor_data& t = m_.tensors[op.weight];
    const std::size_t out = t.channels(), per = t.per_channel();
    std::vector<float> cs(out, 1.0f);
    if (op.channel_scale != format::no_index) cs = m_.tensors[op.channel_scale].values;
    if (op.bias != format::no_index) lw.bias = m_.tensors[op.bias].values;
    lw.w.resize(t.element_count());
    std::vector<std::int32_t> file;
    if (t.kind == format::tensor_kind::quantized) {
      file = file_codes(i);
      for (std::size_t k = 0; k < file.size(); ++k)
        lw.w[k] = static_cast<float>(file[k]) * t.channel_scale(k / per);
    } else {
      t.dequantize(lw.w.data());
    }
    lw.w8.resize(t.element_count());
    lw.w8_scale.resize(out);
    const bool narrow = t.kind == format::tensor_kind::quantized &&
                        *std::max_element(t.bits.begin(), t.bits.end()) <= 8;
    if (narrow) {
      const std::vector<std::int32_t>& codes = file;
      for (std::size_t k = 0; k < codes.size(); ++k) lw.w8[k] = static_cast<std::int8_t>(codes[k]);
      for (std::size_t o = 0; o < out; ++o) lw.w8_scale[o] = t.channel_scale(o) * cs[o];
    } else {
      for (std::size_t o = 0; o < out; ++o) {
        const float* w = lw.w.data() + o * per;
        float amax = 0;
        for (std::size_t k = 0; k < per; ++k) amax = std::max(amax, std::fabs(w[k]));
        const float s = amax > 0 ? amax / 127.0f : 1.0f;
        quantize_int8(per, w, 1.0f / s, lw.w8.data() + o * per);
        lw.w8_scale[o] = s * cs[o];
      }
    }
    if (op.channel_scale != format::no_index)
      for (std::size_t o = 0; o < out; ++o)
        for (std::size_t k = 0; k < per; ++k) lw.w[o * per + k] *= cs[o];
  }

  static conv2d_geometry geometry(const format::operation& op, const format::shape& in,
                                  std::size_t batch) {
    const format::conv_attrs& c = op.conv;
    conv2d_geometry g;
    g.batch = batch;
    g.in_channels = c.in_channels;
    g.in_h = in.dims[1];
    g.in_w = in.dims[2];
    g.out_channels = c.out_channels;
    g.kernel_h = c.kernel_h;
    g.kernel_w = c.kernel_w;
    g.stride_h = c.stride_h;
    g.stride_w = c.stride_w;
    g.pad_h = c.pad_h;
    g.pad_w = c.pad_w;
    g.dilation_h = c.dilation_h;
    g.dilation_w = c.dilation_w;
    g.groups = c.groups;
    return g;
  }

  /// Per output channel: s_x * s_w[o] for the requantizing output stage.
  std::vector<float> int8_scales(std::size_t i, float& inv_sx) const {
    const format::operation& op = m_.ops[i];
    if (!(op.input_range > 0))
      throw config_error("runtime: operation " + std::to_string(i) + " (" + op.name +
                         ") has no calibrated input range; the int8 path needs a model exported "
                         "with calibration data");
    const float sx = op.input_range / 127.0f;
    inv_sx = 1.0f / sx;
    std::vector<float> s(decoded()[i].w8_scale);
    for (float& v : s) v *= sx;
    return s;
  }

  void conv_int8(std::size_t i, const format::shape& in, std::size_t batch, const float* x,
                 float* y) const {
    const format::operation& op = m_.ops[i];
    const conv2d_geometry g = geometry(op, in, batch);
    float inv_sx = 0;
    const std::vector<float> scale = int8_scales(i, inv_sx);
    const layer_weights& lw = decoded()[i];
    const float* bias = lw.bias.empty() ? nullptr : lw.bias.data();
    thread_local std::vector<std::int8_t> xq, cols;
    xq.resize(g.input_count());
    quantize_int8(xq.size(), x, inv_sx, xq.data());
    const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
    const std::size_t k = g.filter_size(), p = g.out_plane();
    const std::size_t threads = bitgrad::detail::batch_threads(batch);
    cols.resize(threads * p * k);
    // The lambda runs on other threads, where the names xq and cols would mean those threads'
    // own (empty) thread_local vectors: it sees this thread's buffers through pointers.
    const std::int8_t* const xq_data = xq.data();
    std::int8_t* const cols_data = cols.data();
    bitgrad::detail::parallel_chunks(
        threads, batch, [&](std::size_t t, std::size_t b, std::size_t e) {
          std::int8_t* col = cols_data + t * p * k;
          for (std::size_t n = b; n < e; ++n)
            for (std::size_t gi = 0; gi < g.groups; ++gi) {
              im2row(g, xq_data + (n * g.in_channels + gi * cin) * g.in_plane(), col);
              requantize stage{scale.data() + gi * cout,
                               bias ? bias + gi * cout : nullptr,
                               y + (n * g.out_channels + gi * cout) * p,
                               1,
                               p,
                               false};
              int8_gemm_nt(p, cout, k, col, k, lw.w8.data() + gi * cout * k, k, stage);
            }
        });
  }

  /// One group of one image as rows of patches: col[(oh*OW + ow) * K + (c*kh + i)*kw + j].
  static void im2row(const conv2d_geometry& g, const std::int8_t* x, std::int8_t* col) {
    const std::size_t cin = g.in_channels_per_group(), k = g.filter_size();
    const std::size_t oh_n = g.out_h(), ow_n = g.out_w();
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        std::int8_t* row = col + (oh * ow_n + ow) * k;
        for (std::size_t c = 0; c < cin; ++c)
          for (std::size_t a = 0; a < g.kernel_h; ++a) {
            const std::ptrdiff_t ih =
                std::ptrdiff_t(oh * g.stride_h + a * g.dilation_h) - std::ptrdiff_t(g.pad_h);
            for (std::size_t b = 0; b < g.kernel_w; ++b) {
              const std::ptrdiff_t iw =
                  std::ptrdiff_t(ow * g.stride_w + b * g.dilation_w) - std::ptrdiff_t(g.pad_w);
              const bool inside =
                  ih >= 0 && iw >= 0 && std::size_t(ih) < g.in_h && std::size_t(iw) < g.in_w;
              *row++ = inside ? x[(c * g.in_h + std::size_t(ih)) * g.in_w + std::size_t(iw)]
                              : std::int8_t(0);
            }
          }
      }
  }

  /// Per value (0: the input, i + 1: operation i's output): the buffer slot of a block's
  /// activations. A value's slot is free again after its last reader, so a chain of operations
  /// cycles through a few buffers that stay in cache.
  void assign_slots() {
    const std::size_t n = m_.ops.size();
    slot_of_.assign(n + 1, 0);
    std::vector<std::size_t> free;
    std::vector<bool> released(n + 1, false);
    slots_ = 0;
    std::size_t macs = 0, biggest = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const format::operation& op = m_.ops[i];
      if (free.empty()) {
        slot_of_[i + 1] = slots_++;
      } else {
        slot_of_[i + 1] = free.back();
        free.pop_back();
      }
      for (std::uint32_t v : {op.input, op.input_b})
        if (v != format::no_index && v != 0 && last_use_[v] == i && !released[v]) {
          released[v] = true;
          free.push_back(slot_of_[v]);
        }
      const std::size_t out = static_cast<std::size_t>(op.output.elements());
      biggest = std::max(biggest, out);
      if (op.kind == format::op_kind::conv2d)
        macs += out * m_.tensors[op.weight].per_channel();
      else if (op.kind == format::op_kind::linear)
        macs += std::size_t(op.fc.in_features) * op.fc.out_features;
    }
    image_bytes_ = std::max<std::size_t>(biggest, input_size()) * sizeof(float);
    image_macs_ = macs;
  }

  template <class Observer>
  tensor2<float> execute(const float* x, std::size_t batch, precision prec, Observer&& observe,
                         bool may_split) const {
    if (batch == 0) throw config_error("runtime: batch must be >= 1");
    tensor2<float> result = tensor2<float>::from_shape({batch, output_size()});
    const std::size_t threads = may_split && batch * image_macs_ >= parallel_min_
                                    ? bitgrad::detail::available_threads()
                                    : 1;
    const detail::image_blocks blocks = detail::plan_image_blocks(batch, block_images(), threads);
    detail::for_image_blocks(blocks, threads, [&](std::size_t b, std::size_t e) {
      execute_block(x + b * input_size(), e - b, prec, observe, result.data() + b * output_size());
    });
    return result;
  }

  /// Every operation on `batch` images (one block), the outputs' rows into result.
  template <class Observer>
  void execute_block(const float* x, std::size_t batch, precision prec, Observer& observe,
                     float* result) const {
    const std::size_t n_ops = m_.ops.size();
    thread_local std::vector<detail::reusable_buffer<float>> slots;
    thread_local std::vector<const float*> value;
    thread_local std::vector<float> scratch;
    thread_local std::vector<std::uint32_t> arg;
    if (slots.size() < slots_) slots.resize(slots_);
    value.assign(n_ops + 1, nullptr);
    value[0] = x;
    for (std::size_t i = 0; i < n_ops; ++i) {
      const format::operation& op = m_.ops[i];
      const format::shape& in = op.input == 0 ? m_.input : m_.ops[op.input - 1].output;
      const float* a = value[op.input];
      const std::size_t in_n = batch * static_cast<std::size_t>(in.elements());
      float* y = slots[slot_of_[i + 1]].get(batch * static_cast<std::size_t>(op.output.elements()));
      switch (op.kind) {
      case format::op_kind::conv2d: {
        observe(i, a, in_n);
        if (prec == precision::int8) {
          conv_int8(i, in, batch, a, y);
        } else {
          const layer_weights& lw = decoded()[i];
          conv2d_fprop(geometry(op, in, batch), a, lw.w.data(),
                       lw.bias.empty() ? nullptr : lw.bias.data(), y, scratch);
        }
        break;
      }
      case format::op_kind::linear: {
        observe(i, a, in_n);
        const layer_weights& lw = decoded()[i];
        const std::size_t nin = op.fc.in_features, nout = op.fc.out_features;
        if (prec == precision::int8) {
          float inv_sx = 0;
          const std::vector<float> scale = int8_scales(i, inv_sx);
          thread_local std::vector<std::int8_t> xq;
          xq.resize(in_n);
          quantize_int8(in_n, a, inv_sx, xq.data());
          requantize stage{scale.data(), lw.bias.empty() ? nullptr : lw.bias.data(), y, nout, 1,
                           false};
          int8_gemm_nt(batch, nout, nin, xq.data(), nin, lw.w8.data(), nin, stage);
        } else if (!lw.bias.empty()) {
          gemm(transpose::no, transpose::yes, batch, nout, nin, 1.0f, a, nin, lw.w.data(), nin,
               0.0f, y, nout, epilogue::bias_cols<float>{lw.bias.data()});
        } else {
          gemm(transpose::no, transpose::yes, batch, nout, nin, 1.0f, a, nin, lw.w.data(), nin,
               0.0f, y, nout);
        }
        break;
      }
      case format::op_kind::max_pool2d:
      case format::op_kind::avg_pool2d: {
        const format::pool_attrs& p = op.pool;
        const pool2d_geometry g{batch,      in.dims[0], in.dims[1], in.dims[2], p.kernel_h,
                                p.kernel_w, p.stride_h, p.stride_w, p.pad_h,    p.pad_w};
        if (op.kind == format::op_kind::max_pool2d) {
          arg.resize(g.output_count());
          max_pool2d_fprop(g, a, y, arg.data());
        } else {
          avg_pool2d_fprop(g, a, y);
        }
        break;
      }
      case format::op_kind::global_avg_pool:
        global_avg_pool_fprop(batch, std::size_t(in.dims[0]), std::size_t(in.dims[1]) * in.dims[2],
                              a, y);
        break;
      case format::op_kind::relu:
        relu_fprop(in_n, a, y);
        break;
      case format::op_kind::relu6:
        relu6_fprop(in_n, a, y);
        break;
      case format::op_kind::flatten:
        std::copy(a, a + in_n, y);
        break;
      case format::op_kind::act_quant: {
        // y = s nearbyint(clamp(x / s, lower, L)) per channel group, the grid of the frozen
        // activation quantizer (the same kernel as its eval forward)
        const format::act_quant_attrs& q = op.act;
        const std::size_t channels = in.dims[0], inner = in.elements() / channels;
        for (std::size_t g = 0; g < q.bits.size(); ++g) {
          const auto grid =
              make_act_grid<float>(q.bits[g], q.ranges[g], q.is_signed, format::act_min_scale);
          const std::size_t c0 = g * q.group_size,
                            c1 = std::min<std::size_t>(channels, c0 + q.group_size);
          for (std::size_t s = 0; s < batch; ++s) {
            const std::size_t off = (s * channels + c0) * inner;
            act_quant_fprop((c1 - c0) * inner, a + off, y + off, grid, grid, 0.0f);
          }
        }
        break;
      }
      case format::op_kind::add: {
        const float* b = value[op.input_b];
        for (std::size_t k = 0; k < in_n; ++k) y[k] = a[k] + b[k];
        break;
      }
      }
      value[i + 1] = y;
    }
    std::copy(value[n_ops], value[n_ops] + batch * output_size(), result);
  }

  format::model_file m_;
  packed_engine engine_;
  std::shared_ptr<lazy_weights> lazy_; ///< shared by copies: made once, then read-only
  std::vector<std::size_t> last_use_;
  std::vector<std::size_t> step_of_; ///< per operation: its packed engine step, or no_step
  std::vector<std::size_t> slot_of_; ///< per value: its buffer slot (assign_slots)
  std::size_t slots_ = 0;            ///< buffer slots a block uses
  std::size_t image_bytes_ = 0;      ///< the largest float activation of one image, bytes
  std::size_t image_macs_ = 0;       ///< multiply-adds of one image (conv2d, linear)
  std::size_t block_images_ = 0;     ///< set_block_images (0: automatic)
  std::size_t parallel_min_ = engine_parallel_threshold();
  std::size_t payload_ = 0;
};

} // namespace bitgrad::deploy
