// Inference on a model file, with no training code: reads format/, runs kernels/.
//
//   auto rt = deploy::runtime::load("model.bgm");
//   std::vector<float> x = rt.normalise(pixels, batch);         // 8-bit images -> network input
//   tensor2<float> logits = rt.run(x.data(), batch);            // float path
//   tensor2<float> logits8 = rt.run(x.data(), batch, deploy::precision::int8);
//   double acc = rt.accuracy(test_set);                         // normalise + run + top-1
//   deploy::evaluation e = rt.evaluate(test_set, deploy::precision::int8);  // + predictions
//
// Float path: each weight tensor is decoded once, at construction, to float (code * scale, the
// folded channel scale multiplied in) and run with the same SIMD kernels as training
// (conv2d_fprop, gemm with a bias epilogue, the pool and elementwise kernels), so a network
// without batch norm gives exactly the trained network's eval-mode outputs.
//
// Integer path: weight codes are widened to int8 (tensors wider than 8 bits or float32 are
// requantized to int8 per output channel, scale max|w| / 127); at each conv2d / linear the
// float input is quantized to int8 with the per-tensor scale s_x = range / 127 calibrated at
// export (the operation's input_range), the int8 x int8 -> int32 GEMM of deploy/int8_gemm.hpp
// runs (a conv through im2row), and the requantizing output stage turns the int32 sums into
// acc * s_x * s_w[o] * channel_scale[o] + bias[o]. Pooling, activations and residual adds run
// in float between the integer layers.
//
// Thread safety: run() is const and keeps all its state on the stack or in thread_local
// scratch, so any number of threads may run one loaded model at once.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/deploy/int8_gemm.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/pool2d.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::deploy {

enum class precision { float32, int8 };

inline const char* to_string(precision p) {
  return p == precision::int8 ? "int8" : "float32";
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
  explicit runtime(format::model_file m) : m_(std::move(m)) {
    const std::size_t n = m_.ops.size();
    w_.resize(n);
    last_use_.assign(n + 1, 0);
    for (std::size_t i = 0; i < n; ++i) {
      const format::operation& op = m_.ops[i];
      last_use_[op.input] = i;
      if (op.input_b != format::no_index) last_use_[op.input_b] = i;
      if (op.kind == format::op_kind::conv2d || op.kind == format::op_kind::linear) prepare(i);
    }
    last_use_[n] = n; // the output lives to the end
  }

  static runtime load(const std::filesystem::path& path) {
    return runtime(format::read_model_file(path));
  }

  const format::model_file& model() const { return m_; }
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
  tensor2<float> run(const float* x, std::size_t batch, precision p = precision::float32) const {
    return execute(x, batch, p, [](std::size_t, const float*, std::size_t) {});
  }

  /// The same on an (N, C, H, W) tensor; its shape must match the file's input shape.
  tensor2<float> run(const tensor4<float>& x, precision p = precision::float32) const {
    const auto& s = x.shape();
    if (m_.input.rank != 3 || s[1] != m_.input.dims[0] || s[2] != m_.input.dims[1] ||
        s[3] != m_.input.dims[2])
      throw shape_error("runtime: input of shape " + shape_string(s) +
                        " does not match the model's input " + m_.input.str());
    return run(x.data(), s[0], p);
  }

  /// max |input| of every operation over this batch, on the float path (0 for operations
  /// without weights): the calibration of the int8 path.
  std::vector<float> input_ranges(const float* x, std::size_t batch) const {
    std::vector<float> r(m_.ops.size(), 0.0f);
    execute(x, batch, precision::float32, [&](std::size_t op, const float* in, std::size_t n) {
      float mx = 0;
      for (std::size_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(in[i]));
      r[op] = mx;
    });
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

  void prepare(std::size_t i) {
    const format::operation& op = m_.ops[i];
    const format::tensor_data& t = m_.tensors[op.weight];
    layer_weights& lw = w_[i];
    const std::size_t out = t.channels(), per = t.per_channel();
    std::vector<float> cs(out, 1.0f);
    if (op.channel_scale != format::no_index) cs = m_.tensors[op.channel_scale].values;
    if (op.bias != format::no_index) lw.bias = m_.tensors[op.bias].values;
    lw.w.resize(t.element_count());
    t.dequantize(lw.w.data());
    lw.w8.resize(t.element_count());
    lw.w8_scale.resize(out);
    const bool narrow = t.kind == format::tensor_kind::quantized &&
                        *std::max_element(t.bits.begin(), t.bits.end()) <= 8;
    if (narrow) {
      const std::vector<std::int32_t> codes = t.codes();
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
    std::vector<float> s(w_[i].w8_scale);
    for (float& v : s) v *= sx;
    return s;
  }

  void conv_int8(std::size_t i, const format::shape& in, std::size_t batch, const float* x,
                 float* y) const {
    const format::operation& op = m_.ops[i];
    const conv2d_geometry g = geometry(op, in, batch);
    float inv_sx = 0;
    const std::vector<float> scale = int8_scales(i, inv_sx);
    const layer_weights& lw = w_[i];
    const float* bias = lw.bias.empty() ? nullptr : lw.bias.data();
    std::vector<std::int8_t> xq(g.input_count());
    quantize_int8(xq.size(), x, inv_sx, xq.data());
    const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
    const std::size_t k = g.filter_size(), p = g.out_plane();
    const std::size_t threads = bitgrad::detail::batch_threads(batch);
    std::vector<std::int8_t> cols(threads * p * k);
    bitgrad::detail::parallel_chunks(
        threads, batch, [&](std::size_t t, std::size_t b, std::size_t e) {
          std::int8_t* col = cols.data() + t * p * k;
          for (std::size_t n = b; n < e; ++n)
            for (std::size_t gi = 0; gi < g.groups; ++gi) {
              im2row(g, xq.data() + (n * g.in_channels + gi * cin) * g.in_plane(), col);
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

  template <class Observer>
  tensor2<float> execute(const float* x, std::size_t batch, precision prec,
                         Observer&& observe) const {
    if (batch == 0) throw config_error("runtime: batch must be >= 1");
    const std::size_t n_ops = m_.ops.size();
    std::vector<std::vector<float>> store(n_ops + 1);
    std::vector<const float*> value(n_ops + 1, nullptr);
    std::vector<format::shape> shapes(n_ops + 1);
    value[0] = x;
    shapes[0] = m_.input;
    for (std::size_t i = 0; i < n_ops; ++i) {
      const format::operation& op = m_.ops[i];
      const format::shape& in = shapes[op.input];
      const float* a = value[op.input];
      const std::size_t in_n = batch * static_cast<std::size_t>(in.elements());
      std::vector<float>& out = store[i + 1];
      out.resize(batch * static_cast<std::size_t>(op.output.elements()));
      float* y = out.data();
      switch (op.kind) {
      case format::op_kind::conv2d: {
        observe(i, a, in_n);
        if (prec == precision::int8) {
          conv_int8(i, in, batch, a, y);
        } else {
          const layer_weights& lw = w_[i];
          std::vector<float> scratch;
          conv2d_fprop(geometry(op, in, batch), a, lw.w.data(),
                       lw.bias.empty() ? nullptr : lw.bias.data(), y, scratch);
        }
        break;
      }
      case format::op_kind::linear: {
        observe(i, a, in_n);
        const layer_weights& lw = w_[i];
        const std::size_t nin = op.fc.in_features, nout = op.fc.out_features;
        if (prec == precision::int8) {
          float inv_sx = 0;
          const std::vector<float> scale = int8_scales(i, inv_sx);
          std::vector<std::int8_t> xq(in_n);
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
          std::vector<std::uint32_t> arg(g.output_count());
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
      case format::op_kind::add: {
        const float* b = value[op.input_b];
        for (std::size_t k = 0; k < in_n; ++k) y[k] = a[k] + b[k];
        break;
      }
      }
      value[i + 1] = y;
      shapes[i + 1] = op.output;
      // Free what no later operation reads.
      for (std::uint32_t v : {op.input, op.input_b})
        if (v != format::no_index && v != 0 && last_use_[v] == i) {
          std::vector<float>().swap(store[v]);
          value[v] = nullptr;
        }
    }
    tensor2<float> result = tensor2<float>::from_shape({batch, output_size()});
    std::copy(value[n_ops], value[n_ops] + result.size(), result.data());
    return result;
  }

  format::model_file m_;
  std::vector<layer_weights> w_;
  std::vector<std::size_t> last_use_;
};

} // namespace bitgrad::deploy
