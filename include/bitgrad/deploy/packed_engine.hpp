// The packed integer engine: a model file's conv2d / linear weights kept in the packed low-bit
// formats (kernels/packed/packed_weights.hpp) and run with packed_gemm, u8 activations between
// layers, float only at the logits. What it computes is deploy/integer_plan.hpp; how:
//
//   float input (N, C, H, W) --quantize_u8--> u8 NHWC
//   conv2d:  im2row on u8 NHWC, rows = output pixels of the batch (n, oh, ow), a row's K
//            inputs in order (kh, kw, c), so each (kh, kw) is one memcpy of C bytes; padding
//            is the zero point z (it adds 0). The weights' depth is reordered to (kh, kw, c) at
//            load to match.
//   conv2d with few input channels (direct_conv_fits: C <= 4, K = C kh kw <= 512; a network's
//            first conv): no im2row, kernels/packed/direct_conv.hpp computes the same exact
//            int32 sums straight from u8 NHWC, lanes over output pixels, into the same output
//            stage (ref::direct_conv on the reference path). Its codes are decoded from the
//            packed weights once per call (C kh kw x channels bytes of scratch; LeNet: 150).
//   conv2d at stride 1 (packed_conv_flat_fits: dilation 1, kw C % 4 == 0) with output rows of
//            >= flat_conv_min_width pixels: no im2row, kernels/packed/flat_conv.hpp copies the
//            input rows once into a z-padded band and the micro-kernels read the patches there
//            in place (one matrix per kernel row, the padding columns' outputs dropped).
//   conv2d at stride 1 whose kernel rows are not whole quads (kw C % 4 != 0, not direct, every
//            channel >= 2 bits) with output rows of >= flat_padded_min_width pixels: its
//            weights are packed with kernel rows padded by zero codes to whole quads
//            (ref/packed_conv.hpp, padded_rows(k)) and it runs on the flat plane too, the
//            micro-kernels on its output pixels only (flat_layout::output_pixels: no dropped
//            columns; LeNet-5's conv2: kw C = 30 -> 32); im2row, when the knob sends it there,
//            lays its rows out padded the same way (z in the padding).
//   linear:  rows = images; after a flatten of an NHWC image the weight columns are reordered
//            at load from the file's (c, h, w) to (h, w, c). Batch 1 is packed_gemv.
//   output stage (output_stage.hpp): scale_bias -> clamp (ReLU) -> quantize_u8 -> fused_store,
//            which writes u8 NHWC, or with a max-pool the max into the pooled pixel (pooled
//            buffer set to 0 first: u8's least value), or float logits at the last step.
//
// Blocks (image_blocks.hpp): the batch runs in blocks of whole images, every step on one block
// before the next block, in per-thread buffers reused across calls; threads take whole blocks.
// The linear tail (linear_tail(): the last steps when they are linears on the features, e.g.
// VGG-style's fc1 and fc2 after the flatten) runs after a thread's run of blocks on all the
// run's images at once (the whole batch on 1 thread), from a batch-wide u8 features buffer the
// blocks write, so its weights are decoded per 64 rows, not per block of a few images.
// Threads (kernels/parallel.hpp, OpenMP): a batch of one block (batch 1) splits each layer
// instead: a conv its rows by whole images when the block has at least as many images as
// threads, else by bands of output rows aligned to the pool windows (so no two threads write
// one pooled pixel); a linear splits the batch. Work below engine_parallel_threshold()
// multiply-adds (a whole batch, or one layer of a single block) runs on the calling thread.
//
// The path: run(x, batch, isa) takes any int_isa this binary and CPU run (int_isa_supported);
// tests force each one. Scratch is thread_local: run() is const and safe from many threads.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/deploy/image_blocks.hpp>
#include <bitgrad/deploy/integer_plan.hpp>
#include <bitgrad/format/model.hpp>
#include <bitgrad/kernels/packed/direct_conv.hpp>
#include <bitgrad/kernels/packed/flat_conv.hpp>
#include <bitgrad/kernels/packed/packed_gemm.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/ref/direct_conv.hpp>
#include <bitgrad/kernels/ref/packed_conv.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace bitgrad::deploy {

/// Multiply-adds below which a layer runs on one thread (x8 when OpenMP's waiting threads
/// sleep, OMP_WAIT_POLICY=passive: waking them then costs tens of microseconds). 2^22: at 2^20,
/// ResNet-20's 3x3 convs (~1.8 M multiply-adds at batch 1) split into row bands with a barrier
/// each and ran slower on 2 threads than on 1 (idle 2-vCPU Zen 5, batch 1, 2 threads, 5
/// alternating runs of run_deploy.py: ResNet-20 5,207-5,802 images/s at 2^20 against
/// 6,168-6,477 at 2^22, 1 thread ~6,450; VGG-style level, 0.94-1.10; LeNet-5 level, 0.99-1.11).
inline constexpr std::size_t engine_parallel_min = std::size_t(1) << 22;

inline std::size_t engine_parallel_threshold() {
  return bitgrad::detail::omp_threads_sleep() ? 8 * engine_parallel_min : engine_parallel_min;
}

/// The narrowest output row that runs on the flat plane (packed_engine::flat). A 3x3 / pad 1
/// conv computes 1 dropped pixel per output row there (the padding column shared by
/// neighbouring band rows, flat_band_width): 3.4 % more multiply-adds at 28 pixels, 6.7 % at
/// 14, 12.5 % at 7. Measured (benchmarks/README, issue 19, h19-z5, AVX-512 VNNI, batch 256):
/// from 14 pixels it saves CPU time against im2row (ResNet-20's stage 2), at 7 it loses
/// (stage 3; with 2 dropped pixels a row, before h19-z5, it lost at 14 too).
inline constexpr std::size_t flat_conv_min_width = 14;

/// The narrowest output row from which a stride-1 conv whose kernel rows are not whole quads
/// gets padded kernel rows and runs on the flat plane, on its output pixels only
/// (packed_engine::padded_rows, flat_layout::output_pixels). Measured (benchmarks/README, issue
/// 19, h19-lenet3, AVX-512 VNNI, the one shape): LeNet-5's conv2 (12 x 12 -> 8 x 8, 5 x 5, 6
/// channels, 7 % padded depth) saves ~5 % of LeNet-5's CPU time against im2row (one tile of 16
/// channels: the 150-byte rows' copy is shared by few multiply-adds). On every band pixel
/// (flat_layout::band_pixels: 92 rows per 64 pixels) it lost.
inline constexpr std::size_t flat_padded_min_width = 8;

namespace detail {

/// The last output stage: stores v at row r = row0 + i (image r / plane, pixel r % plane of an
/// out_w-wide conv output, or image r of a linear), channel j; NHWC (or (batch, channels)), or
/// NCHW for a float conv output; with a pool, the max into the pooled pixel.
template <class T>
struct fused_store {
  static constexpr bool lanes = true;
  static constexpr bool partial = true; ///< apply_partial: the tail of a padded row
  T* y;
  std::size_t row0 = 0;
  std::size_t plane = 1, out_w = 1, channels = 1;
  bool nchw = false;
  bool pool = false;
  std::size_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 1, pw = 1; ///< pool window, stride, output

  /// Optional: row_at[i] = offset(row0 + i, 0) for the call's rows (no division per value).
  const std::ptrdiff_t* row_at = nullptr;

  void operator()(T v, std::size_t i, std::size_t j) const {
    const std::ptrdiff_t at = place(i, j);
    if (at >= 0) write(y[at], v);
  }
  /// Lanes are channels j0.. of one row: the row's place is found once.
  template <class B>
  BITGRAD_ALWAYS_INLINE void apply(const B& v, std::size_t i, std::size_t j0) const {
    store_lanes<B, B::size>(v, i, j0, B::size);
  }
  /// Lanes are rows i0 .. i0 + n - 1 of channel j (output_stage.hpp: "Columns"): one place
  /// per row, the max into a pooled pixel as the scalar call.
  static constexpr bool columns = true;
  template <class B>
  BITGRAD_ALWAYS_INLINE void apply_column(const B& v, std::size_t i0, std::size_t j,
                                          std::size_t n) const {
    const auto unpacked = lanes_of(v);
    const auto& lane = unpacked.value;
    if (!row_at) {
      for (std::size_t l = 0; l < n; ++l) {
        const std::ptrdiff_t at = offset(row0 + i0 + l, j);
        if (at >= 0) write(y[at], static_cast<T>(lane[l]));
      }
      return;
    }
    // The channel's offset once; the rows' places from row_at.
    const std::ptrdiff_t* at = row_at + i0;
    T* yj = column_base(j);
    if (pool) {
      for (std::size_t l = 0; l < n; ++l)
        if (at[l] >= 0) yj[at[l]] = std::max(yj[at[l]], static_cast<T>(lane[l]));
    } else {
      for (std::size_t l = 0; l < n; ++l)
        if (at[l] >= 0) yj[at[l]] = static_cast<T>(lane[l]);
    }
  }
  /// Pooled columns (output_stage.hpp, pipeline::column_pairs): u8 NHWC under a 2 x 2 pool of
  /// stride 2, rows i .. i + width - 1 a whole output row whose index oh is even and whose
  /// windows (a = oh / 2 < ph) exist: each pooled pixel of the row pair is then written by
  /// the one call that holds its four pixels.
  static constexpr bool pooled_columns = true;
  bool pool_pairs(std::size_t i, std::size_t width) const {
    if constexpr (!std::is_same_v<T, std::uint8_t>) {
      return false;
    } else {
      if (!pool || nchw || !row_at || kh != 2 || kw != 2 || sh != 2 || sw != 2 || width != out_w)
        return false;
      const std::size_t px = (row0 + i) % plane, oh = px / out_w;
      return px % out_w == 0 && oh % 2 == 0 && oh / 2 < ph;
    }
  }
  /// Pooled blocks (output_stage.hpp, pipeline::column_pairs_block): where pool_pairs holds
  /// for an even width that the pooled row fills (pw = width / 2, u8 NHWC, the layer's
  /// channels), the row pair's pooled pixels are width / 2 consecutive runs of `channels`
  /// bytes from pooled_at(i), written by this call alone.
  static constexpr bool pooled_blocks = true;
  bool pool_block(std::size_t i, std::size_t width, std::size_t n) const {
    return pool_pairs(i, width) && width % 2 == 0 && pw == width / 2 && n == channels;
  }
  T* pooled_at(std::size_t i) const { return y + row_at[i]; }
  /// Lanes l < n are pixels i0 + l of a row pair's top row (i0 at an even pixel), each the max
  /// over its column of the window; pooled pixel of lanes 2t, 2t + 1 = their max, stored (no
  /// other call writes it). A lone last lane (odd n) is the row's last pixel: in no window
  /// when the width is odd (row_at -1), else maxed into the pooled pixel as the scalar call.
  template <class B>
  BITGRAD_ALWAYS_INLINE void apply_pool_pairs(const B& v, std::size_t i0, std::size_t j,
                                              std::size_t n) const {
    const auto unpacked = lanes_of(v);
    const auto& lane = unpacked.value;
    const std::ptrdiff_t* at = row_at + i0;
    T* yj = y + j; // column_base(j) under NHWC, the only layout pool_pairs takes
    std::size_t l = 0;
    for (; l + 1 < n; l += 2)
      if (at[l] >= 0) yj[at[l]] = static_cast<T>(std::max(lane[l], lane[l + 1]));
    if (l < n && at[l] >= 0) write(yj[at[l]], static_cast<T>(lane[l]));
  }
  /// Lanes t < n are the pooled pixels of pixels i0 + 2t, i0 + 2t + 1 of a row pair's top row
  /// (i0 at an even pixel): each lane is already its window's max (output_stage.hpp,
  /// pipeline::pooled_sums), stored where the pair's first pixel goes (no other call writes it).
  template <class B>
  BITGRAD_ALWAYS_INLINE void apply_pooled(const B& v, std::size_t i0, std::size_t j,
                                          std::size_t n) const {
    const auto unpacked = lanes_of(v);
    const auto& lane = unpacked.value;
    const std::ptrdiff_t* at = row_at + i0;
    T* yj = y + j; // NHWC, as apply_pool_pairs
    for (std::size_t t = 0; t < n; ++t)
      if (at[2 * t] >= 0) yj[at[2 * t]] = static_cast<T>(lane[t]);
  }
  /// apply(v, i, j0) for the rows of one lane batch of channels j0.. (output_stage.hpp,
  /// pipeline::prepare_last): u8 NHWC with row_at, whole batches of int32 lanes, as local
  /// values (the output, row_at, pool), which GCC keeps in registers across the u8 stores
  /// (fused_store's own members it loaded again for every row: the flags, the pointers, and the
  /// branches on them); anything else calls apply.
  template <class B>
  struct prepared_rows {
    const fused_store* self;
    std::size_t j0;
    T* y_j0; ///< channel j0 of row_at's places
    const std::ptrdiff_t* row_at;
    bool nhwc_u8, pool;
    BITGRAD_ALWAYS_INLINE void apply(const B& v, std::size_t i) const {
      if constexpr (std::is_same_v<T, std::uint8_t> &&
                    std::is_same_v<typename B::value_type, std::int32_t>) {
        if (nhwc_u8) {
          const std::ptrdiff_t at = row_at[i];
          if (at < 0) return;
          store_u8_block(v, y_j0 + at, pool);
          return;
        }
      }
      self->apply(v, i, j0);
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_rows<B> prepared_store(std::size_t j0) const {
    return {this, j0, y + j0, row_at, !nchw && row_at != nullptr, pool};
  }
  /// The first n lanes only (the tail of a padded row, output_stage.hpp).
  template <class B>
  BITGRAD_ALWAYS_INLINE void apply_partial(const B& v, std::size_t i, std::size_t j0,
                                           std::size_t n) const {
    store_lanes<B, 0>(v, i, j0, n);
  }

  /// Where row r, channel j goes; -1 when no pool window holds the pixel.
  std::ptrdiff_t offset(std::size_t r, std::size_t j) const {
    const std::size_t n = r / plane, px = r % plane;
    if (!pool) return std::ptrdiff_t(nchw ? (n * channels + j) * plane + px : r * channels + j);
    const std::size_t oh = px / out_w, ow = px % out_w;
    // Non-overlapping windows (kernel <= stride): at most one holds (oh, ow).
    const std::size_t a = oh / sh, b = ow / sw;
    if (a >= ph || b >= pw || oh - a * sh >= kh || ow - b * sw >= kw) return -1;
    return std::ptrdiff_t(nchw ? ((n * channels + j) * ph + a) * pw + b
                               : ((n * ph + a) * pw + b) * channels + j);
  }

  /// out[i] = offset(r0 + i, 0) for i < m, row by row: one division per output row, and per
  /// pixel the row's place plus its column's (column ow: window b = ow / sw, pixel bi = ow % sw
  /// in it; -1 outside every window), the columns' places found once per call.
  void row_offsets(std::size_t r0, std::size_t m, std::ptrdiff_t* out) const {
    if (!pool && !nchw) {
      for (std::size_t i = 0; i < m; ++i) out[i] = std::ptrdiff_t((r0 + i) * channels);
      return;
    }
    // column[ow]: the pixel's place relative to its row's (-1: in no window).
    thread_local std::vector<std::ptrdiff_t> column;
    column.resize(out_w);
    const std::size_t step = nchw ? 1 : channels; // between pooled pixels of a row
    for (std::size_t ow = 0; ow < out_w; ++ow) {
      const std::size_t b = ow / sw;
      column[ow] = !pool                    ? std::ptrdiff_t(ow)
                   : b < pw && ow % sw < kw ? std::ptrdiff_t(b * step)
                                            : -1;
    }
    const std::size_t oh_n = plane / out_w;
    std::size_t n = r0 / plane, oh = r0 % plane / out_w, ow = r0 % plane % out_w;
    for (std::size_t i = 0; i < m;) {
      const std::size_t count = std::min(m - i, out_w - ow); // the call's pixels of row oh
      std::ptrdiff_t* o = out + i;
      const std::ptrdiff_t* col = column.data() + ow;
      const std::size_t a = oh / sh;
      if (!pool) {
        const std::ptrdiff_t base = std::ptrdiff_t(n * channels * plane + oh * out_w);
        for (std::size_t t = 0; t < count; ++t) o[t] = base + col[t];
      } else if (a >= ph || oh % sh >= kh) {
        std::fill(o, o + count, std::ptrdiff_t(-1));
      } else {
        const std::ptrdiff_t base =
            std::ptrdiff_t(nchw ? (n * channels * ph + a) * pw : (n * ph + a) * pw * channels);
        for (std::size_t t = 0; t < count; ++t) o[t] = col[t] < 0 ? -1 : base + col[t];
      }
      i += count, ow = 0;
      if (++oh == oh_n) oh = 0, ++n;
    }
  }

private:
  /// The lanes of v in an aligned array (one store): what every lane overload above unpacks.
  template <class B>
  struct lane_array {
    alignas(64) typename B::value_type value[B::size];
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE static lane_array<B> lanes_of(const B& v) {
    lane_array<B> a;
    v.store_aligned(a.value);
    return a;
  }
  /// Channel j's first value; the rows' places (row_at) are relative to it.
  BITGRAD_ALWAYS_INLINE T* column_base(std::size_t j) const { return y + j * channel_stride(); }

  /// Lanes [0, n) to channels j0.. of row i; N = n when it is known at compile time (a whole
  /// batch: the loops then vectorise, e.g. to one narrowing store), else 0.
  template <class B, std::size_t N>
  BITGRAD_ALWAYS_INLINE void store_lanes(const B& v, std::size_t i, std::size_t j0,
                                         std::size_t n) const {
    const std::ptrdiff_t at = place(i, j0);
    if (at < 0) return;
    T* dst = y + at;
    // u8 NHWC, a whole batch of 4, 8 or 16 lanes (SSE2, AVX2, AVX-512): narrowed in registers
    // and stored at once (output::detail::store_u8_narrowed); through the lane array below GCC
    // narrowed lane by lane at 4 and 8 lanes (vpextrd, shifts and ors), and at 16 stored the
    // register to the array and loaded it back for its vpmovdb.
    if constexpr (N != 0 && N <= 16 && std::is_same_v<T, std::uint8_t> &&
                  std::is_same_v<typename B::value_type, std::int32_t>) {
      if (!nchw) {
        store_u8_block(v, dst, pool);
        return;
      }
    }
    const auto unpacked = lanes_of(v);
    const auto& lane = unpacked.value;
    const std::size_t count = N ? N : n;
    if (!nchw) { // consecutive channels
      if constexpr (N != 0) {
        // Narrowed into a local array, maxed with the pooled pixel, then one store: each loop
        // vectorises (vpmovdb, vpmaxub, one 16-byte store at AVX-512).
        T out[N];
        for (std::size_t l = 0; l < N; ++l) out[l] = static_cast<T>(lane[l]);
        if (pool) {
          T old[N];
          std::memcpy(old, dst, sizeof(out));
          for (std::size_t l = 0; l < N; ++l) out[l] = std::max(out[l], old[l]);
        }
        std::memcpy(dst, out, sizeof(out));
      } else if (pool) {
        for (std::size_t l = 0; l < count; ++l) dst[l] = std::max(dst[l], static_cast<T>(lane[l]));
      } else {
        for (std::size_t l = 0; l < count; ++l) dst[l] = static_cast<T>(lane[l]);
      }
      return;
    }
    const std::size_t step = channel_stride();
    for (std::size_t l = 0; l < count; ++l) write(dst[l * step], static_cast<T>(lane[l]));
  }
  /// dst[l] = lane l of v (int32 holding 0..255), maxed with dst[l] under a pool: narrowed in
  /// registers (output::detail::store_u8_narrowed), maxed (vpmaxub), one store.
  template <class B>
  BITGRAD_ALWAYS_INLINE static void store_u8_block(const B& v, std::uint8_t* dst, bool pool) {
    constexpr std::size_t N = B::size;
    if (pool) {
      std::uint8_t out[N], old[N];
      output::detail::store_u8_narrowed(v, out);
      std::memcpy(old, dst, sizeof(out));
      for (std::size_t l = 0; l < N; ++l) out[l] = std::max(out[l], old[l]);
      std::memcpy(dst, out, sizeof(out));
    } else {
      output::detail::store_u8_narrowed(v, dst);
    }
  }
  BITGRAD_ALWAYS_INLINE std::ptrdiff_t place(std::size_t i, std::size_t j) const {
    if (!row_at) return offset(row0 + i, j);
    const std::ptrdiff_t at = row_at[i];
    return at < 0 ? at : at + std::ptrdiff_t(j * channel_stride());
  }
  /// The max of a pool window without a branch on the data (which mispredicts on images).
  BITGRAD_ALWAYS_INLINE void write(T& dst, T v) const { dst = pool ? std::max(dst, v) : v; }
  BITGRAD_ALWAYS_INLINE std::size_t channel_stride() const {
    return !nchw ? 1 : pool ? ph * pw : plane;
  }
};

} // namespace detail

/// A model's conv2d / linear weights packed, and the integer plan that runs them.
class packed_engine {
public:
  packed_engine() = default;

  /// Packs every conv2d / linear of m when the graph is supported and the packed formats take
  /// its weights; else supported() is false and why() names the operation and the reason.
  explicit packed_engine(const format::model_file& m) {
    plan_ = integer_plan::of(m, [](std::size_t, std::size_t) { return 1.0f; });
    if (!plan_.supported()) return;
    weights_.resize(plan_.steps.size());
    direct_.resize(plan_.steps.size());
    padded_.resize(plan_.steps.size());
    for (std::size_t k = 0; k < plan_.steps.size(); ++k) {
      const integer_step& s = plan_.steps[k];
      if (!s.gemm()) continue; // a global pool: no weights
      const format::operation& op = m.ops[s.op];
      const format::tensor_data& t = m.tensors[op.weight];
      if (t.channels() != s.channels || t.per_channel() != s.depth)
        throw config_error("packed_engine: operation " + std::to_string(s.op) + " (" + op.name +
                           "): weight of " + std::to_string(t.channels()) + " x " +
                           std::to_string(t.per_channel()) + ", expected " +
                           std::to_string(s.channels) + " x " + std::to_string(s.depth));
      const integer_weights w = integer_weights::of(t);
      const std::vector<std::size_t> perm = depth_order(s);
      std::vector<std::int32_t> codes(w.codes.size());
      for (std::size_t j = 0; j < w.channels; ++j)
        for (std::size_t p = 0; p < w.depth; ++p)
          codes[j * w.depth + p] = w.codes[j * w.depth + perm[p]];
      direct_[k] = s.conv && direct_conv_fits(geometry_of(s));
      padded_[k] = s.conv && !direct_[k] && pads_kernel_rows(s, w);
      std::size_t depth = w.depth;
      if (padded_[k]) {
        codes = pad_kernel_rows(geometry_of(s), w.channels, codes.data());
        depth = packed_padded_depth(geometry_of(s));
      }
      try {
        weights_[k] = packed_weights(w.channels, depth, w.group_size, w.bits.data(),
                                     w.scales.data(), codes.data());
      } catch (const std::invalid_argument& e) {
        // e.g. a depth beyond packed_max_depth: the float path still runs the model.
        plan_.unsupported = "operation " + std::to_string(s.op) + " (" + op.name + "): " + e.what();
        plan_.steps.clear();
        weights_.clear();
        direct_.clear();
        padded_.clear();
        payload_ = 0;
        return;
      }
      payload_ += t.kind == format::tensor_kind::quantized
                      ? std::size_t((t.code_bits() + 7) / 8) + 5 * t.bits.size()
                      : t.element_count() * sizeof(float);
    }
    set_ranges(m);
  }

  /// Recomputes the scales from m's input ranges (after a calibration).
  void set_ranges(const format::model_file& m) {
    if (!plan_.supported()) return;
    plan_ = integer_plan::of(m, [&](std::size_t op, std::size_t j) {
      for (std::size_t k = 0; k < plan_.steps.size(); ++k)
        if (plan_.steps[k].op == op && plan_.steps[k].gemm()) return weights_[k].channel_scale(j);
      return 1.0f;
    });
  }

  /// Multiply-adds from which a layer splits across threads (default
  /// engine_parallel_threshold(); 0 splits every layer, as the tests do to cover the splits).
  void set_parallel_min(std::size_t work) { parallel_min_ = work; }
  /// Images per block (image_blocks.hpp); 0 (default): image_block_bytes over the largest
  /// activation of one image. Tests force small blocks.
  void set_block_images(std::size_t n) { block_images_ = n; }
  /// The most images one block holds.
  std::size_t block_images() const {
    if (block_images_) return block_images_;
    std::size_t biggest = 0;
    for (const integer_step& s : plan_.steps) {
      biggest = std::max(biggest, std::size_t(s.in_shape.elements()) * (s.in_u8 ? 1 : 4));
      biggest = std::max(biggest, std::size_t(s.out_shape.elements()) * (s.out_u8 ? 1 : 4));
    }
    return detail::image_block_cap(biggest);
  }

  bool supported() const { return plan_.supported(); }
  const std::string& why() const { return plan_.unsupported; }
  bool calibrated() const { return plan_.calibrated; }
  const integer_plan& plan() const { return plan_; }
  /// The packed weights of step k.
  const packed_weights& weights(std::size_t k) const { return weights_[k]; }
  /// True when step k runs as a direct convolution (direct_conv_fits), not im2row + packed_gemm.
  bool direct(std::size_t k) const { return k < direct_.size() && direct_[k]; }
  /// True when step k's weights have kernel rows padded to whole quads (ref/packed_conv.hpp):
  /// a stride-1 conv, not direct, kw C % 4 != 0, every channel >= 2 bits (zero codes), output
  /// rows of >= flat_padded_min_width pixels; decided at load.
  bool padded_rows(std::size_t k) const { return k < padded_.size() && padded_[k]; }
  /// Output widths from which a stride-1 conv runs on the flat plane (flat_conv.hpp) instead
  /// of im2row + packed_gemm: whole_quads for kw C % 4 == 0 (default flat_conv_min_width),
  /// padded for the padded_rows steps (default flat_padded_min_width); a conv with kw C % 4
  /// != 0 whose rows were not padded at load never does. One value sets both (0: every conv
  /// that fits, SIZE_MAX: none, as the tests do to cover both).
  void set_flat_min_width(std::size_t whole_quads, std::size_t padded) {
    flat_min_width_ = whole_quads;
    flat_padded_min_width_ = padded;
  }
  void set_flat_min_width(std::size_t w) { set_flat_min_width(w, w); }
  /// True when step k runs on the flat plane: packed_conv_flat_fits (or padded_rows) and an
  /// output row of at least that kind's minimum width (whole quads: the Wp - OW padding
  /// columns per row computed and dropped cost (Wp - OW) / Wp more work, 7 % at 28 pixels, 22 %
  /// at 7; padded rows run on the output pixels only).
  bool flat(std::size_t k) const {
    const integer_step& s = plan_.steps[k];
    if (!s.conv || direct(k)) return false;
    if (padded_rows(k)) return s.conv_out.dims[2] >= flat_padded_min_width_;
    return s.conv_out.dims[2] >= flat_min_width_ && packed_conv_flat_fits(geometry_of(s));
  }

  /// The direct convolution shape of a conv step.
  static conv2d_geometry geometry_of(const integer_step& s) {
    conv2d_geometry g;
    g.in_channels = s.in_shape.dims[0], g.in_h = s.in_shape.dims[1], g.in_w = s.in_shape.dims[2];
    g.kernel_h = s.c.kernel_h, g.kernel_w = s.c.kernel_w;
    g.stride_h = s.c.stride_h, g.stride_w = s.c.stride_w;
    g.pad_h = s.c.pad_h, g.pad_w = s.c.pad_w;
    g.dilation_h = s.c.dilation_h, g.dilation_w = s.c.dilation_w;
    return g;
  }

  /// Bytes the packed weights keep (codes, bitwidths, scales), and what the file stores for
  /// the same weights (codes at their bitwidths + 5 bytes per group; 4 per float32 weight).
  std::size_t resident_bytes() const {
    std::size_t n = 0;
    for (const auto& w : weights_) n += w.resident_bytes();
    return n;
  }
  std::size_t payload_bytes() const { return payload_; }

  /// For step k, the engine's depth index q -> the file's depth index p.
  static std::vector<std::size_t> depth_order(const integer_step& s) {
    std::vector<std::size_t> perm(s.depth);
    if (s.conv) { // engine (a, b, c) <- file (c, a, b)
      const std::size_t cin = s.c.in_channels, kh = s.c.kernel_h, kw = s.c.kernel_w;
      for (std::size_t a = 0; a < kh; ++a)
        for (std::size_t b = 0; b < kw; ++b)
          for (std::size_t c = 0; c < cin; ++c)
            perm[(a * kw + b) * cin + c] = (c * kh + a) * kw + b;
    } else if (s.in_shape.rank == 3) { // engine (h, w, c) <- file (c, h, w)
      const std::size_t C = s.in_shape.dims[0], H = s.in_shape.dims[1], W = s.in_shape.dims[2];
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t w = 0; w < W; ++w)
          for (std::size_t c = 0; c < C; ++c) perm[(h * W + w) * C + c] = (c * H + h) * W + w;
    } else {
      for (std::size_t p = 0; p < s.depth; ++p) perm[p] = p;
    }
    return perm;
  }

  /// For step k, the engine's depth index q (depth_order) -> its index in weights(k): q, or
  /// with padded kernel rows (padded_rows) a q / (kw C) kernel_row + q % (kw C), the codes
  /// of kernel row a at a kernel_row (ref/packed_conv.hpp).
  std::vector<std::size_t> packed_index(std::size_t k) const {
    const integer_step& s = plan_.steps[k];
    std::vector<std::size_t> at(s.depth);
    const std::size_t row = padded_rows(k) ? s.c.kernel_w * s.c.in_channels : s.depth;
    const std::size_t pitch = padded_rows(k) ? packed_kernel_row(geometry_of(s)) : s.depth;
    for (std::size_t q = 0; q < s.depth; ++q) at[q] = q / row * pitch + q % row;
    return at;
  }

  /// Logits (batch, outputs) of `batch` float inputs in the file's layout, on path isa.
  tensor2<float> run(const float* x, std::size_t batch, int_isa isa) const {
    if (!supported()) throw config_error("packed_engine: " + why());
    if (!calibrated())
      throw config_error("packed_engine: the model has no calibrated input ranges; export it "
                         "with calibration data or call runtime::calibrate");
    if (batch == 0) throw config_error("packed_engine: batch must be >= 1");
    if (!int_isa_supported(isa))
      throw config_error(std::string("packed_engine: path ") + int_isa_name(isa) +
                         " is not available on this binary / CPU");
    // The batch in blocks of whole images (image_blocks.hpp), threads taking whole blocks
    // when the batch has the work for them; a single block splits each layer instead.
    std::size_t outputs = 0, macs = 0;
    for (const integer_step& s : plan_.steps) {
      if (s.network_output) outputs = std::size_t(s.out_shape.elements());
      if (s.gemm())
        macs += s.channels * s.depth *
                (s.conv ? std::size_t(s.conv_out.dims[1]) * s.conv_out.dims[2] : 1);
    }
    const std::size_t inputs = std::size_t(plan_.steps.front().in_shape.elements());
    tensor2<float> logits = tensor2<float>::from_shape({batch, outputs});
    const std::size_t threads =
        batch * macs >= parallel_min_ ? bitgrad::detail::available_threads() : 1;
    const detail::image_blocks blocks = detail::plan_image_blocks(batch, block_images(), threads);
    const std::size_t steps = plan_.steps.size(), tail = linear_tail();
    if (blocks.count <= 1 || tail == steps) {
      detail::for_image_blocks(blocks, threads, [&](std::size_t b, std::size_t e) {
        run_steps(0, steps, x + b * inputs, nullptr, e - b, isa, logits.data() + b * outputs);
      });
      return logits;
    }
    // Each thread's run of blocks: the steps before the linear tail block by block, the
    // features into one batch-wide buffer; then the tail on the run's images at once (no
    // second parallel region: on 2 threads its barrier and the serial last linear cost more
    // CPU time than the tail saved, benchmarks/README h19-vgg).
    const std::size_t features = plan_.steps[tail].in_shape.elements();
    thread_local detail::reusable_buffer<std::uint8_t> feature_buffer;
    std::uint8_t* f = feature_buffer.get(batch * features);
    detail::for_image_block_runs(blocks, threads, [&](std::size_t b0, std::size_t b1) {
      for (std::size_t b = b0; b < b1; ++b) {
        const std::size_t i = blocks.begin(b);
        run_steps(0, tail, x + i * inputs, f + i * features, blocks.end(b) - i, isa, nullptr);
      }
      const std::size_t i0 = blocks.begin(b0), i1 = blocks.end(b1 - 1);
      run_steps(tail, steps, nullptr, f + i0 * features, i1 - i0, isa,
                logits.data() + i0 * outputs);
    });
    return logits;
  }

  /// The first step of the linear tail: the last steps, from a step k > 0 on, when each is a
  /// linear (no residual add) that reads the u8 output of a step before k (the features, e.g.
  /// a conv's flattened output) or of a step of the tail. run() runs the steps before it in
  /// image blocks and the tail on each thread's run of blocks at once (the whole batch on one
  /// thread), so a linear's weights are decoded once per 64 rows (packed_gemm's row block), not
  /// once per image block (VGG-style's fc1, 3136 x 256: 26 decodes per call at batch 256 in
  /// blocks of 10 images). steps.size(): no tail.
  std::size_t linear_tail() const {
    const std::vector<integer_step>& steps = plan_.steps;
    std::size_t k = steps.size();
    while (k > 0 && steps[k - 1].gemm() && !steps[k - 1].conv &&
           steps[k - 1].residual == format::no_index)
      --k;
    if (k == 0 || k == steps.size()) return steps.size();
    const std::uint32_t features = steps[k].in_value;
    if (!steps[k].in_u8 || steps[k - 1].network_output) return steps.size();
    for (std::size_t i = k; i < steps.size(); ++i) {
      const std::uint32_t v = steps[i].in_value;
      bool made_in_tail = false;
      for (std::size_t j = k; j < i; ++j) made_in_tail = made_in_tail || steps[j].out_value == v;
      if (!steps[i].in_u8 || (v != features && !made_in_tail)) return steps.size();
    }
    bool made_before = false; // by a step before the tail, as u8
    for (std::size_t j = 0; j < k; ++j)
      made_before = made_before ||
                    (steps[j].out_value == features && steps[j].out_u8 && !steps[j].network_output);
    return made_before ? k : steps.size();
  }

private:
  /// Whether conv step s (not direct) with weights w gets padded kernel rows (padded_rows).
  static bool pads_kernel_rows(const integer_step& s, const integer_weights& w) {
    const conv2d_geometry g = geometry_of(s);
    return packed_conv_flat_padded_fits(g) && !packed_conv_flat_fits(g) &&
           s.conv_out.dims[2] >= flat_padded_min_width &&
           std::all_of(w.bits.begin(), w.bits.end(), [](std::uint8_t b) { return b >= 2; });
  }

  /// The other operand of a step's fused residual add: u8 or float NHWC (or none).
  struct residual_in {
    const std::uint8_t* u8 = nullptr;
    const float* f = nullptr;
  };

  /// Steps [k0, k1) on `batch` images (one block, or the whole batch for the linear tail),
  /// the network output's rows at `logits`. k0 == 0: the input is the float images x, else
  /// the u8 `features` (step k0's input value, batch x its elements). k1 < steps: step k1's
  /// input value is written to `features` instead of a buffer of this thread. Kept
  /// values (integer_plan.hpp: "values": u8 NHWC on their grid, or float NHWC) live in this
  /// thread's buffers, one per value id, reused across blocks and calls (no allocation, no
  /// page faults once they have grown).
  void run_steps(std::size_t k0, std::size_t k1, const float* x, std::uint8_t* features,
                 std::size_t batch, int_isa isa, float* logits) const {
    // Buffer slots by liveness: a value's slot is free again after the last step that reads
    // it, so a chain of steps cycles through a few buffers that stay in cache. Slots hold
    // floats; u8 values use their bytes. The features (k0 > 0 or k1 < steps) are the
    // caller's (`outside`).
    const std::size_t n_values = plan_.values.size();
    thread_local std::vector<detail::reusable_buffer<float>> slots;
    thread_local std::vector<std::size_t> slot_of, last_read, free;
    thread_local std::vector<std::uint8_t*> outside;
    slot_of.assign(n_values, 0);
    last_read.assign(n_values, 0);
    outside.assign(n_values, nullptr);
    free.clear();
    for (std::size_t k = k0; k < k1; ++k) {
      last_read[plan_.steps[k].in_value] = k;
      if (plan_.steps[k].residual != format::no_index) last_read[plan_.steps[k].residual] = k;
    }
    if (k0 > 0) outside[plan_.steps[k0].in_value] = features;
    if (k1 < plan_.steps.size()) outside[plan_.steps[k1].in_value] = features;
    std::size_t used = 1; // slot 0: the input
    auto bytes = [&](std::size_t v) {
      return outside[v] ? outside[v]
                        : reinterpret_cast<std::uint8_t*>(slots[slot_of[v]].data.get());
    };
    auto floats = [&](std::size_t v) { return slots[slot_of[v]].data.get(); };
    auto grow = [&](std::size_t v, std::size_t n_bytes) {
      if (slots.size() <= slot_of[v]) slots.resize(slot_of[v] + 1);
      slots[slot_of[v]].get((n_bytes + sizeof(float) - 1) / sizeof(float));
    };
    if (k0 == 0) {
      const integer_step& first = plan_.steps.front();
      slot_of[plan_.input_value] = 0;
      grow(plan_.input_value, batch * std::size_t(first.in_shape.elements()));
      quantize_input(first, x, batch, bytes(plan_.input_value));
    }
    for (std::size_t k = k0; k < k1; ++k) {
      const integer_step& s = plan_.steps[k];
      const std::size_t out_n = batch * std::size_t(s.out_shape.elements());
      if (!s.network_output && !outside[s.out_value]) { // its slot, before the inputs' free
        if (free.empty()) {
          slot_of[s.out_value] = used++;
        } else {
          slot_of[s.out_value] = free.back();
          free.pop_back();
        }
        grow(s.out_value, out_n * (s.out_u8 ? 1 : sizeof(float)));
      }
      residual_in res;
      if (s.residual != format::no_index && s.residual_u8) res.u8 = bytes(s.residual);
      if (s.residual != format::no_index && !s.residual_u8) res.f = floats(s.residual);
      const std::uint8_t* a = s.in_u8 ? bytes(s.in_value) : nullptr;
      const float* af = s.in_u8 ? nullptr : floats(s.in_value);
      if (s.network_output) {
        std::fill(logits, logits + out_n, -std::numeric_limits<float>::infinity());
        run_any(k, isa, a, af, batch, logits, res);
      } else if (s.out_u8) {
        // Every byte is written, except under a pool, whose max starts from 0 (u8's least).
        std::uint8_t* y = bytes(s.out_value);
        if (s.pool) std::memset(y, 0, out_n);
        run_any(k, isa, a, af, batch, y, res);
      } else {
        float* y = floats(s.out_value);
        std::fill(y, y + out_n, -std::numeric_limits<float>::infinity());
        run_any(k, isa, a, af, batch, y, res);
      }
      for (std::uint32_t v : {s.in_value, s.residual})
        if (v != format::no_index && !outside[v] && last_read[v] == k &&
            std::find(free.begin(), free.end(), slot_of[v]) == free.end())
          free.push_back(slot_of[v]);
    }
  }

  /// The float network input (NCHW) as u8 NHWC with the first step's scale, into a.
  static void quantize_input(const integer_step& s, const float* x, std::size_t batch,
                             std::uint8_t* a) {
    const output::quantize_u8 q = s.in_quantizer();
    const std::size_t per = s.in_shape.elements();
    if (s.in_shape.rank != 3) {
      quantize_plane(q, x, batch * per, a, 1);
      return;
    }
    const std::size_t C = s.in_shape.dims[0],
                      P = std::size_t(s.in_shape.dims[1]) * s.in_shape.dims[2];
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t c = 0; c < C; ++c)
        quantize_plane(q, x + (n * C + c) * P, P, a + n * P * C + c, C);
  }

  /// dst[p * stride] = q(src[p]) for p < count; simd lanes (the same bits as the scalar stage,
  /// output_stage.hpp), the scalar stage for the tail. The lanes' parameters prepared once;
  /// with stride 1 (one input channel: LeNet) the codes (0..255) narrowed in registers and
  /// stored at once (store_u8_narrowed), not a byte at a time through a lane array (7 % of
  /// LeNet-5's int samples at batch 256 on the AVX2 host).
  static void quantize_plane(const output::quantize_u8& q, const float* src, std::size_t count,
                             std::uint8_t* dst, std::size_t stride) {
    std::size_t p = 0;
#if BITGRAD_HAS_SIMD
    using F = simd_batch<float>;
    const auto lanes = q.prepared<F>(0);
    if (stride == 1)
      for (; p + F::size <= count; p += F::size)
        output::detail::store_u8_narrowed(lanes.apply(F::load_unaligned(src + p), 0), dst + p);
    alignas(64) std::int32_t lane[F::size];
    for (; p + F::size <= count; p += F::size) {
      lanes.apply(F::load_unaligned(src + p), 0).store_aligned(lane);
      for (std::size_t l = 0; l < F::size; ++l)
        dst[(p + l) * stride] = static_cast<std::uint8_t>(lane[l]);
    }
#endif
    for (; p < count; ++p) dst[p * stride] = q(src[p], 0, 0);
  }

  /// Step k: a conv2d / linear on the u8 input a, or a global pool on a (u8) or af (float).
  template <class T>
  void run_any(std::size_t k, int_isa isa, const std::uint8_t* a, const float* af,
               std::size_t batch, T* y, const residual_in& res) const {
    const integer_step& s = plan_.steps[k];
    if (s.gemm())
      run_step(k, isa, a, batch, y, res);
    else
      global_pool(s, a, af, batch, y);
  }

  /// Mean over each channel's H W pixels of NHWC (integer_plan.hpp: "global pool"), onto the
  /// step's output grid (u8) or as float.
  template <class T>
  static void global_pool(const integer_step& s, const std::uint8_t* a, const float* af,
                          std::size_t batch, T* y) {
    const std::size_t C = s.channels, P = s.in_shape.elements() / C;
    const output::quantize_u8 q = s.out_quantizer();
    const std::int32_t zero_sum = std::int32_t(P) * s.in_zero;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t c = 0; c < C; ++c) {
        float v;
        if (s.in_u8) {
          std::int32_t sum = 0;
          const std::uint8_t* p = a + n * P * C + c;
          for (std::size_t i = 0; i < P; ++i) sum += p[i * C];
          v = static_cast<float>(sum - zero_sum) * s.pool_scale;
        } else {
          float sum = 0;
          const float* p = af + n * P * C + c;
          for (std::size_t i = 0; i < P; ++i) sum += p[i * C];
          v = sum * s.pool_scale;
        }
        if constexpr (std::is_same_v<T, std::uint8_t>)
          y[n * C + c] = q(v, n, c);
        else
          y[n * C + c] = v;
      }
  }

  template <class T>
  detail::fused_store<T> store_of(const integer_step& s, T* y) const {
    detail::fused_store<T> st{y};
    st.channels = s.channels;
    if (s.conv) {
      st.plane = std::size_t(s.conv_out.dims[1]) * s.conv_out.dims[2];
      st.out_w = s.conv_out.dims[2];
      st.nchw = s.network_output; // float logits NCHW; kept values NHWC
      if (s.pool) {
        st.pool = true;
        st.kh = s.p.kernel_h, st.kw = s.p.kernel_w, st.sh = s.p.stride_h, st.sw = s.p.stride_w;
        st.ph = s.out_shape.rank == 3 ? s.out_shape.dims[1] : 1;
        st.pw = s.out_shape.rank == 3 ? s.out_shape.dims[2] : 1;
        if (s.out_shape.rank != 3) { // pool then flatten: pooled dims from the sizes
          st.ph = (s.conv_out.dims[1] - s.p.kernel_h) / s.p.stride_h + 1;
          st.pw = (s.conv_out.dims[2] - s.p.kernel_w) / s.p.stride_w + 1;
        }
      }
    }
    return st;
  }

  /// The step's output stage for rows [0, m), numbered from row0, handed to f as the functor
  /// the kernels call: scale_bias -> [residual add] -> [ReLU] -> [quantize_u8] -> fused_store.
  template <class T, class F>
  void with_output(std::size_t k, std::size_t m, std::size_t row0, T* y, const residual_in& res,
                   const F& f) const {
    const integer_step& s = plan_.steps[k];
    detail::fused_store<T> st = store_of(s, y);
    st.row0 = row0;
    thread_local std::vector<std::ptrdiff_t> row_at;
    row_at.resize(m);
    st.row_offsets(row0, m, row_at.data());
    st.row_at = row_at.data();
    const output::scale_bias sb{s.scale.data(), s.bias.data()};
    // scale and bias are padded to padded_length(channels) (integer_plan)
    auto run = [&](auto... stages) { f(output::make_padded_pipeline(stages...)); };
    auto finish = [&](auto... stages) { // ReLU, then the store
      if constexpr (std::is_same_v<T, std::uint8_t>) {
        const output::quantize_u8 q = s.out_quantizer();
        if (s.relu && output::relu_quantize_u8::fits(q))
          run(stages..., output::relu_quantize_u8{q}, st); // the same bits, fewer operations
        else if (s.relu)
          run(stages..., output::clamp{}, q, st);
        else
          run(stages..., q, st);
      } else {
        if (s.relu)
          run(stages..., output::clamp{}, st);
        else
          run(stages..., st);
      }
    };
    // The residual operand has the layer's pre-pool shape: row r, channel j at r * channels + j.
    const std::size_t at = row0 * s.channels;
    if (res.u8)
      finish(sb, s.residual_u8_stage(res.u8 + at, s.channels));
    else if (res.f)
      finish(sb, output::add_f32{res.f + at, s.channels});
    else
      finish(sb);
  }

  /// packed_gemm on rows [0, m) of A with the step's output stage, rows numbered from row0.
  template <class T>
  void gemm(std::size_t k, int_isa isa, std::size_t m, const std::uint8_t* a, std::size_t row0,
            T* y, const residual_in& res) const {
    const integer_step& s = plan_.steps[k];
    with_output(k, m, row0, y, res, [&](const auto& out) {
      packed_gemm(isa, m, a, weights_[k].depth(), s.in_zero, weights_[k], out);
    });
  }

  /// Rows [r0, r1) of a direct step's output pixels (direct_conv.hpp), in blocks of whole
  /// output rows (r0 is a row's first pixel when the range comes from run_step; any r0 works).
  template <class T>
  void direct_rows(std::size_t k, int_isa isa, const std::uint8_t* x, std::size_t r0,
                   std::size_t r1, T* y, const residual_in& res) const {
    const integer_step& s = plan_.steps[k];
    const conv2d_geometry g = geometry_of(s);
    const std::size_t block = std::max<std::size_t>(1, 2048 / g.out_w()) * g.out_w();
    // The codes, decoded from the packed weights once per call (no second copy is kept).
    thread_local std::vector<std::int8_t> codes_buffer;
    codes_buffer.resize(s.channels * s.depth);
    packed_codes(weights_[k], codes_buffer.data());
    const std::int8_t* codes = codes_buffer.data();
    for (std::size_t b0 = r0; b0 < r1; b0 += block) {
      const std::size_t b1 = std::min(r1, b0 + block);
      with_output(k, b1 - b0, b0, y, res, [&](const auto& out) {
        direct_conv(isa, g, x, s.in_zero, codes, s.channels, b0, b1, out); // reference: the twin
      });
    }
  }

  template <class T>
  void run_step(std::size_t k, int_isa isa, const std::uint8_t* a, std::size_t batch, T* y,
                const residual_in& res) const {
    const integer_step& s = plan_.steps[k];
    const std::size_t threads_max = bitgrad::detail::available_threads();
    if (!s.conv) {
      const std::size_t work = batch * s.channels * s.depth;
      const std::size_t threads = work < parallel_min_ ? 1 : std::min(threads_max, batch);
      bitgrad::detail::parallel_chunks(threads, batch,
                                       [&](std::size_t, std::size_t b, std::size_t e) {
                                         gemm(k, isa, e - b, a + b * s.depth, b, y, res);
                                       });
      return;
    }
    const std::size_t oh_n = s.conv_out.dims[1], ow_n = s.conv_out.dims[2];
    const std::size_t plane = oh_n * ow_n;
    const std::size_t work = batch * plane * s.channels * s.depth;
    std::size_t threads = work < parallel_min_ ? 1 : threads_max;
    // Units of work: whole images, or (batch < threads) bands of `band` output rows.
    std::size_t band = oh_n, units = batch;
    if (threads > 1 && batch < threads) {
      band = s.pool ? s.p.stride_h : 1;
      units = batch * ((oh_n + band - 1) / band);
    }
    threads = std::min(threads, units);
    const std::size_t bands_per_image = (oh_n + band - 1) / band;
    bitgrad::detail::parallel_chunks(
        threads, units, [&](std::size_t, std::size_t b, std::size_t e) {
          // Units [b, e) as row ranges: whole images as one range (the direct path's codes
          // and output offsets then set up once for them), else consecutive units of one
          // image as one range.
          if (band == oh_n) {
            conv_rows(k, isa, a, b * plane, e * plane, y, res);
            return;
          }
          for (std::size_t u = b; u < e;) {
            const std::size_t n = u / bands_per_image, first_band = u % bands_per_image;
            const std::size_t last = std::min(e, (n + 1) * bands_per_image);
            const std::size_t r0 = n * plane + first_band * band * ow_n;
            const std::size_t r1 =
                n * plane + std::min(oh_n, (last - n * bands_per_image) * band) * ow_n;
            conv_rows(k, isa, a, r0, r1, y, res);
            u = last;
          }
        });
  }

  /// memcpy, without the library call (the 48 to 192 bytes of a 3x3 kernel row at 16 to 64
  /// channels, ResNet-20, paid a call each) or a loop per byte for the few bytes of a small
  /// kernel row (LeNet: 5): 32-byte blocks and a last block that overlaps the one before, or
  /// two overlapping loads and stores of the widest size <= n (the branches are on n, the same
  /// for every row of a layer).
  BITGRAD_ALWAYS_INLINE static void copy_bytes(std::uint8_t* dst, const std::uint8_t* src,
                                               std::size_t n) {
    if (n > 32) {
      for (std::size_t p = 0; p + 32 < n; p += 32) std::memcpy(dst + p, src + p, 32);
      std::memcpy(dst + n - 32, src + n - 32, 32);
    } else if (n > 16) {
      copy_pair<bytes16>(dst, src, n);
    } else if (n >= 8) {
      copy_pair<std::uint64_t>(dst, src, n);
    } else if (n >= 4) {
      copy_pair<std::uint32_t>(dst, src, n);
    } else if (n >= 2) {
      copy_pair<std::uint16_t>(dst, src, n);
    } else if (n == 1) {
      *dst = *src;
    }
  }
  struct bytes16 {
    std::uint8_t b[16];
  };
  /// Bytes [0, n) as [0, sizeof(W)) and [n - sizeof(W), n), sizeof(W) <= n <= 2 sizeof(W).
  template <class W>
  BITGRAD_ALWAYS_INLINE static void copy_pair(std::uint8_t* dst, const std::uint8_t* src,
                                              std::size_t n) {
    W head, tail;
    std::memcpy(&head, src, sizeof(W));
    std::memcpy(&tail, src + n - sizeof(W), sizeof(W));
    std::memcpy(dst, &head, sizeof(W));
    std::memcpy(dst + n - sizeof(W), &tail, sizeof(W));
  }

  /// Rows [r0, r1) of a flat step's output pixels (flat_conv.hpp), one image's part per call
  /// (the output stage's row offsets are set up per call).
  template <class T>
  void flat_rows(std::size_t k, int_isa isa, const std::uint8_t* x, std::size_t r0, std::size_t r1,
                 T* y, const residual_in& res) const {
    const integer_step& s = plan_.steps[k];
    const conv2d_geometry g = geometry_of(s);
    const std::size_t plane = g.out_plane();
    for (std::size_t b0 = r0; b0 < r1;) {
      const std::size_t b1 = std::min(r1, (b0 / plane + 1) * plane);
      with_output(k, b1 - b0, b0, y, res, [&](const auto& out) {
        packed_conv_flat(isa, g, x, s.in_zero, weights_[k], b0, b1, out,
                         padded_rows(k) ? flat_layout::output_pixels : flat_layout::band_pixels);
      });
      b0 = b1;
    }
  }

  /// Rows [r0, r1) of the conv's output pixels: im2row blocks into packed_gemm, or the direct
  /// or flat path.
  template <class T>
  void conv_rows(std::size_t k, int_isa isa, const std::uint8_t* x, std::size_t r0, std::size_t r1,
                 T* y, const residual_in& res) const {
    if (direct(k)) {
      direct_rows(k, isa, x, r0, r1, y, res);
      return;
    }
    if (flat(k)) {
      flat_rows(k, isa, x, r0, r1, y, res);
      return;
    }
    const integer_step& s = plan_.steps[k];
    constexpr std::size_t block = 512;
    const std::size_t C = s.in_shape.dims[0], H = s.in_shape.dims[1], W = s.in_shape.dims[2];
    const std::size_t ow_n = s.conv_out.dims[2];
    const std::size_t plane = std::size_t(s.conv_out.dims[1]) * ow_n;
    // K = kh pitch: kernel row a at a pitch, its last pitch - kw C bytes z when the weights'
    // kernel rows are padded (padded_rows(k)), else pitch = kw C.
    const std::size_t K = weights_[k].depth(), kh = s.c.kernel_h, kw = s.c.kernel_w;
    const std::size_t pitch = K / kh, pad = pitch - kw * C;
    // A patch spans span_h image rows; consecutive kernel rows are row_step bytes apart.
    const std::size_t span_h = (kh - 1) * s.c.dilation_h + 1, row_step = s.c.dilation_h * W * C;
    thread_local std::vector<std::uint8_t> cols;
    cols.resize(std::min(block, r1 - r0) * K);
    if (pad > 0) // the padding, once per call (the copies below write the kw C bytes only)
      for (std::size_t r = 0; r < std::min(block, r1 - r0); ++r)
        for (std::size_t a = 0; a < kh; ++a)
          std::memset(cols.data() + r * K + a * pitch + kw * C, s.in_zero, pad);
    // Image n, output pixel (oh, ow) of row r0, then counted up row by row (no division).
    std::size_t n = r0 / plane, oh = r0 % plane / ow_n, ow = r0 % plane % ow_n;
    for (std::size_t b0 = r0; b0 < r1; b0 += block) {
      const std::size_t rows = std::min(block, r1 - b0);
      for (std::size_t r = 0; r < rows; ++r, ++ow) {
        if (ow == ow_n) {
          ow = 0;
          if (++oh == plane / ow_n) oh = 0, ++n;
        }
        std::uint8_t* row = cols.data() + r * K;
        const std::uint8_t* img = x + n * H * W * C;
        const std::ptrdiff_t ih0 = std::ptrdiff_t(oh * s.c.stride_h) - std::ptrdiff_t(s.c.pad_h);
        const std::ptrdiff_t iw0 = std::ptrdiff_t(ow * s.c.stride_w) - std::ptrdiff_t(s.c.pad_w);
        if (ih0 >= 0 && iw0 >= 0 && std::size_t(ih0) + span_h <= H && std::size_t(iw0) + kw <= W &&
            s.c.dilation_w == 1) {
          // The whole patch is inside (most rows): kh runs of kw * C consecutive NHWC bytes,
          // dilation_h image rows apart.
          const std::uint8_t* src = img + (std::size_t(ih0) * W + std::size_t(iw0)) * C;
          for (std::size_t a = 0; a < kh; ++a, row += pitch, src += row_step)
            copy_bytes(row, src, kw * C);
          continue;
        }
        for (std::size_t a = 0; a < kh; ++a) {
          const std::ptrdiff_t ih =
              std::ptrdiff_t(oh * s.c.stride_h + a * s.c.dilation_h) - std::ptrdiff_t(s.c.pad_h);
          const bool row_inside = ih >= 0 && std::size_t(ih) < H;
          if (row_inside && s.c.dilation_w == 1 && iw0 >= 0 && std::size_t(iw0) + kw <= W) {
            // The whole kernel row is inside: kw * C consecutive bytes of NHWC.
            copy_bytes(row, img + (std::size_t(ih) * W + std::size_t(iw0)) * C, kw * C);
            row += pitch;
            continue;
          }
          for (std::size_t b = 0; b < kw; ++b) {
            const std::ptrdiff_t iw = iw0 + std::ptrdiff_t(b * s.c.dilation_w);
            if (row_inside && iw >= 0 && std::size_t(iw) < W)
              copy_bytes(row + b * C, img + (std::size_t(ih) * W + std::size_t(iw)) * C, C);
            else
              std::memset(row + b * C, s.in_zero, C);
          }
          row += pitch;
        }
      }
      gemm(k, isa, rows, cols.data(), b0, y, res);
    }
  }

  integer_plan plan_;
  std::vector<packed_weights> weights_;
  std::vector<char> direct_; ///< per step: runs as a direct convolution (direct_conv_fits)
  std::vector<char> padded_; ///< per step: kernel rows padded to whole quads (padded_rows)
  std::size_t flat_min_width_ = flat_conv_min_width;
  std::size_t flat_padded_min_width_ = flat_padded_min_width;
  std::size_t payload_ = 0;
  std::size_t parallel_min_ = engine_parallel_threshold();
  std::size_t block_images_ = 0; ///< set_block_images (0: automatic)
};

namespace ref {

/// The plain reference twin of packed_engine::run: the same plan (integer_plan), computed with
/// loops over the file's codes in the file's NCHW layout, the residual add in the output stage
/// and the max-pool after it, the global pool as a loop over each channel's plane. Used as the
/// oracle of the engine on every path.
inline tensor2<float> run_integer(const format::model_file& m, const float* x, std::size_t batch) {
  std::vector<integer_weights> w;
  std::vector<std::size_t> op_of;
  for (std::size_t i = 0; i < m.ops.size(); ++i)
    if (m.ops[i].kind == format::op_kind::conv2d || m.ops[i].kind == format::op_kind::linear) {
      w.push_back(integer_weights::of(m.tensors[m.ops[i].weight]));
      op_of.push_back(i);
    }
  auto weights_of = [&](std::size_t op) -> const integer_weights& {
    return w[std::size_t(std::find(op_of.begin(), op_of.end(), op) - op_of.begin())];
  };
  const integer_plan plan = integer_plan::of(
      m, [&](std::size_t op, std::size_t j) { return weights_of(op).channel_scale(j); });
  if (!plan.supported()) throw config_error("ref::run_integer: " + plan.unsupported);
  if (!plan.calibrated) throw config_error("ref::run_integer: the model is not calibrated");
  // Kept values in NCHW (or features): u8 codes as int32, or float.
  std::vector<std::vector<std::int32_t>> qv(plan.values.size());
  std::vector<std::vector<float>> fv(plan.values.size());
  const integer_step& first = plan.steps.front();
  std::vector<std::int32_t>& q0 = qv[plan.input_value];
  q0.resize(batch * first.in_shape.elements());
  const output::quantize_u8 qin = first.in_quantizer();
  for (std::size_t i = 0; i < q0.size(); ++i) q0[i] = qin(x[i], 0, 0);
  tensor2<float> logits;
  for (const integer_step& s : plan.steps) {
    const std::vector<std::int32_t>& q = qv[s.in_value];
    const std::int32_t z = s.in_zero;
    const output::quantize_u8 qo = s.out_quantizer();
    std::vector<float> out;
    if (!s.gemm()) {
      // Global pool: mean over each (image, channel) plane.
      const std::size_t C = s.channels, P = s.in_shape.elements() / C;
      out.resize(batch * C);
      for (std::size_t nc = 0; nc < batch * C; ++nc) {
        float v;
        if (s.in_u8) {
          std::int32_t sum = 0;
          for (std::size_t p = 0; p < P; ++p) sum += q[nc * P + p];
          v = static_cast<float>(sum - std::int32_t(P) * z) * s.pool_scale;
        } else {
          float sum = 0;
          for (std::size_t p = 0; p < P; ++p) sum += fv[s.in_value][nc * P + p];
          v = sum * s.pool_scale;
        }
        out[nc] = s.out_u8 ? static_cast<float>(qo(v, 0, 0)) : v;
      }
    } else {
      const integer_weights& wk = weights_of(s.op);
      const std::size_t per_in = s.in_shape.elements();
      const output::scale_bias sb{s.scale.data(), s.bias.data()};
      const output::clamp relu{};
      // Before the pool: per image, channel j, pixel px (a linear: one pixel).
      const std::size_t oh_n = s.conv ? s.conv_out.dims[1] : 1,
                        ow_n = s.conv ? s.conv_out.dims[2] : 1;
      std::vector<float> v(batch * s.channels * oh_n * ow_n);
      for (std::size_t n = 0; n < batch; ++n)
        for (std::size_t j = 0; j < s.channels; ++j)
          for (std::size_t oh = 0; oh < oh_n; ++oh)
            for (std::size_t ow = 0; ow < ow_n; ++ow) {
              std::int32_t acc = 0;
              if (s.conv) {
                const std::size_t C = s.in_shape.dims[0], H = s.in_shape.dims[1],
                                  W = s.in_shape.dims[2];
                for (std::size_t c = 0; c < C; ++c)
                  for (std::size_t a = 0; a < s.c.kernel_h; ++a)
                    for (std::size_t b = 0; b < s.c.kernel_w; ++b) {
                      const long ih =
                          long(oh * s.c.stride_h + a * s.c.dilation_h) - long(s.c.pad_h);
                      const long iw =
                          long(ow * s.c.stride_w + b * s.c.dilation_w) - long(s.c.pad_w);
                      if (ih < 0 || iw < 0 || ih >= long(H) || iw >= long(W)) continue;
                      acc += (q[((n * C + c) * H + std::size_t(ih)) * W + std::size_t(iw)] - z) *
                             wk.codes[j * wk.depth + (c * s.c.kernel_h + a) * s.c.kernel_w + b];
                    }
              } else {
                for (std::size_t p = 0; p < s.depth; ++p)
                  acc += (q[n * per_in + p] - z) * wk.codes[j * wk.depth + p];
              }
              const std::size_t at = ((n * s.channels + j) * oh_n + oh) * ow_n + ow;
              float val = sb(acc, n, j);
              if (s.residual != format::no_index) {
                if (s.residual_u8) {
                  const std::uint8_t r = static_cast<std::uint8_t>(qv[s.residual][at]);
                  val = s.residual_u8_stage(&r, 0)(val, 0, 0);
                } else {
                  val = output::add_f32{fv[s.residual].data() + at, 0}(val, 0, 0);
                }
              }
              if (s.relu) val = relu(val, n, j);
              if (s.out_u8) val = static_cast<float>(qo(val, n, j));
              v[at] = val;
            }
      if (s.pool) {
        const std::size_t ph = (oh_n - s.p.kernel_h) / s.p.stride_h + 1;
        const std::size_t pw = (ow_n - s.p.kernel_w) / s.p.stride_w + 1;
        out.assign(batch * s.channels * ph * pw, 0.0f);
        for (std::size_t nj = 0; nj < batch * s.channels; ++nj)
          for (std::size_t a = 0; a < ph; ++a)
            for (std::size_t b = 0; b < pw; ++b) {
              float mx = -std::numeric_limits<float>::infinity();
              for (std::size_t i = 0; i < s.p.kernel_h; ++i)
                for (std::size_t jj = 0; jj < s.p.kernel_w; ++jj)
                  mx = std::max(
                      mx, v[(nj * oh_n + a * s.p.stride_h + i) * ow_n + b * s.p.stride_w + jj]);
              out[(nj * ph + a) * pw + b] = mx;
            }
      } else {
        out = std::move(v);
      }
    }
    if (s.network_output) {
      const std::size_t per = out.size() / batch;
      logits = tensor2<float>::from_shape({batch, per});
      std::copy(out.begin(), out.end(), logits.data());
    } else if (s.out_u8) {
      std::vector<std::int32_t>& qy = qv[s.out_value];
      qy.resize(out.size());
      for (std::size_t i = 0; i < out.size(); ++i) qy[i] = static_cast<std::int32_t>(out[i]);
    } else {
      fv[s.out_value] = std::move(out);
    }
  }
  return logits;
}

} // namespace ref

} // namespace bitgrad::deploy
