// Implicit-GEMM convolution: the GEMMs of the im2col algorithm (kernels/conv2d.hpp) without the
// column matrix. The GEMM's micro-panels are packed straight from the image, inside the loop nest
// of gemm.hpp, so the K x P matrix `col` (kernels/im2col.hpp) is never written or read back.
//
// Per image (or run of images) and group g; M = Cout/G, K = Cin/G * kh * kw, P = OH * OW;
// tap t = (c, i, j), pixel q = (oh, ow):
//   col[t][q] = x[c][oh*stride_h - pad_h + i*dilation_h][ow*stride_w - pad_w + j*dilation_w]
//               (0 in the padding)
//   fprop : y_g (M x P) = W_g (M x K) * col(x_g) (K x P)
//           B micro-panels (kc taps x NR pixels) packed from x; A = W_g packed once per call and
//           shared by every image and thread.
//   dgrad : stride 1: the adjoint of a convolution is a convolution of dy, so no col2im:
//             dx_g (Cin/G x H*W) = W'_g (Cin/G x Cout/G*kh*kw) * col'(dy_g)
//           W'[c][o][i'][j'] = w[o][c][kh-1-i'][kw-1-j'] (flipped, in and out swapped), col' the
//           im2col of dy with padding dilation*(k-1) - pad, stride 1, same dilation
//           (conv2d_transposed_geometry). It multiplies the zeros of that padding too, so it pays
//           where the padding keeps the size (3x3 pad 1), not for a valid conv (see conv2d.hpp).
//   wgrad : dW_g (M x K) = sum over a slice of images of dy_g (M x P) * col(x_g)^T (P x K): the
//           GEMM's k runs over the pixels of every image of the slice; A packed from dy, B packed
//           from x through a small staging block of col rows (in L1) and register transposes.
//
//   B micro-panel for fprop:                       B micro-panel for wgrad (k = pixels):
//     tap t   : [col[t][q0] .. col[t][q0+NR-1]]      pixel q  : [col[t0][q] .. col[t0+NR-1][q]]
//     tap t+1 : [...]                                pixel q+1: [...]
//   A stretch of col row t is one run of x per output row, with zeros where the window leaves the
//   image. The packers read a zero-padded copy of the image split by stride phase
//   (conv2d_phase_image), where each run is contiguous and needs no bounds check.
//
// The loop nest, blocking, micro-kernel and edge tiles are gemm.hpp's, with the same k blocks
// (gemm_even_block(k, KC)), so every element of C sees the same operations in the same order as
// gemm on the materialised matrix: fprop is bitwise equal to the im2col algorithm. Nothing depends
// on operand addresses or on the thread count (see conv2d.hpp for how threads share the work).
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/im2col.hpp>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace bitgrad::detail {

/// The image of one group as the packers read it: zero-padded and split by stride phase, so that
/// every row of the column matrix reads one contiguous run per output row:
///   xs[c][a][b][u][v] = x[c][u * stride_h + a - pad_h][v * stride_w + b - pad_w]  (0 outside x)
///   col[(c, i, j)][(oh, ow)] = xs[c][a][b][oh + di][ow + dj]
///     with i * dilation_h = di * stride_h + a, j * dilation_w = dj * stride_w + b,
/// that is col[t][q] = xs[tap_offset[t] + oh * cols + ow]. With stride 1 it is the padded image.
/// One copy of the input per image (its size), against K = Cin/G * kh * kw reads of each pixel by
/// the packers: what makes them whole-register copies instead of im2col's bounds checks.
struct conv2d_phase_image {
  std::size_t rows, cols; ///< of one phase plane: ceil(padded height / stride_h) x ...
  std::size_t channel;    ///< elements per input channel: stride_h * stride_w * rows * cols
  std::size_t channels;   ///< input channels of a group

  std::vector<bool> used_a, used_b; ///< phases some tap reads (a 1x1 stride-2 reads one of 4)

  explicit conv2d_phase_image(const conv2d_geometry& g)
      : rows((g.in_h + 2 * g.pad_h + g.stride_h - 1) / g.stride_h),
        cols((g.in_w + 2 * g.pad_w + g.stride_w - 1) / g.stride_w),
        channel(g.stride_h * g.stride_w * rows * cols), channels(g.in_channels_per_group()),
        used_a(g.stride_h), used_b(g.stride_w) {
    for (std::size_t i = 0; i < g.kernel_h; ++i) used_a[i * g.dilation_h % g.stride_h] = true;
    for (std::size_t j = 0; j < g.kernel_w; ++j) used_b[j * g.dilation_w % g.stride_w] = true;
  }

  /// Elements of one image's copy, plus the register the packers may read past its end.
  template <class T>
  std::size_t size() const {
    return channels * channel + simd_lanes<T>;
  }

  /// xs[tap_offset[t] + oh * cols + ow] = col[t][(oh, ow)] for the K taps of g.
  std::vector<std::size_t> tap_offsets(const conv2d_geometry& g) const {
    const std::size_t taps = g.kernel_h * g.kernel_w;
    std::vector<std::size_t> offsets(channels * taps);
    for (std::size_t t = 0; t < offsets.size(); ++t) {
      const std::size_t c = t / taps, i = t % taps / g.kernel_w, j = t % g.kernel_w;
      const std::size_t ri = i * g.dilation_h, rj = j * g.dilation_w;
      const std::size_t a = ri % g.stride_h, b = rj % g.stride_w;
      offsets[t] = c * channel + (a * g.stride_w + b) * rows * cols + ri / g.stride_h * cols +
                   rj / g.stride_w;
    }
    return offsets;
  }

  /// Writes the copy of the group's input channels x (in_h x in_w planes) to xs (size<T>()):
  /// the phases some tap reads; the others are left as they are.
  template <class T>
  void fill(const conv2d_geometry& g, const T* x, T* xs) const {
    for (std::size_t c = 0; c < channels; ++c)
      for (std::size_t a = 0; a < g.stride_h; ++a)
        for (std::size_t b = 0; b < g.stride_w; ++b) {
          if (!used_a[a] || !used_b[b]) continue;
          T* const phase = xs + c * channel + (a * g.stride_w + b) * rows * cols;
          // Columns v whose w = v * stride_w + b - pad_w lies in [0, in_w).
          const valid_range vs = conv_valid_range(
              cols, g.stride_w, std::ptrdiff_t(b) - std::ptrdiff_t(g.pad_w), g.in_w);
          for (std::size_t u = 0; u < rows; ++u) {
            T* const out = phase + u * cols;
            const std::ptrdiff_t h = std::ptrdiff_t(u * g.stride_h + a) - std::ptrdiff_t(g.pad_h);
            if (h < 0 || h >= std::ptrdiff_t(g.in_h) || vs.lo >= vs.hi) {
              std::fill_n(out, cols, T(0));
              continue;
            }
            const T* const src = x + (c * g.in_h + std::size_t(h)) * g.in_w;
            std::fill(out, out + vs.lo, T(0));
            const std::size_t w0 = vs.lo * g.stride_w + b - g.pad_w;
            if (g.stride_w == 1)
              std::copy_n(src + w0, vs.hi - vs.lo, out + vs.lo);
            else
              for (std::size_t v = vs.lo, w = w0; v < vs.hi; ++v, w += g.stride_w) out[v] = src[w];
            std::fill(out + vs.hi, out + cols, T(0));
          }
        }
    std::fill_n(xs + channels * channel, simd_lanes<T>, T(0));
  }
};

/// A run of pixels along one output row: at xs offset `src` (oh * cols + ow, to add to a tap's
/// offset), position `dst` in the packed range, `len` pixels.
struct conv2d_run {
  std::size_t src, dst, len;
};

/// Cuts pixels [q0, q1) (q = oh * out_w + ow) into runs along output rows; returns their number
/// (at most q1 - q0).
inline std::size_t conv2d_pixel_runs(std::size_t out_w, std::size_t cols, std::size_t q0,
                                     std::size_t q1, conv2d_run* runs) {
  std::size_t count = 0, oh = q0 / out_w, ow = q0 - oh * out_w;
  for (std::size_t q = q0; q < q1; ++oh, ow = 0) {
    const std::size_t len = std::min(out_w - ow, q1 - q);
    runs[count++] = {oh * cols + ow, q - q0, len};
    q += len;
  }
  return count;
}

/// dst[0, len) = src[0, len) in whole registers: writes up to one register past dst + len and
/// reads up to one past src + len. Callers copy runs in increasing order of dst, so a run's
/// overshoot is overwritten by the next one, and keep a register of room after the last.
template <class T>
BITGRAD_ALWAYS_INLINE void conv2d_copy_run(const T* src, T* dst, std::size_t len) {
  using batch = simd_batch<T>;
  for (std::size_t k = 0; k < len; k += batch::size)
    batch::load_unaligned(src + k).store_unaligned(dst + k);
}

/// How to assemble Regs registers of packed pixels [0, len) from one row of col (the runs of
/// conv2d_pixel_runs), the same for every tap of a panel: register j, lane l holds packed pixel
/// u = j * L + l, which lies in the run r with dst <= u < dst + len_r and comes from
///   xs[tap_offset + src_r + (u - dst_r)] = load(xs + tap_offset + (src_r - dst_r + j * L))[l].
/// So each register is one unaligned load per run it meets, merged by lane masks (lanes from
/// `first` on take the later run), and stored whole at its aligned place: no store straddles
/// a run boundary or overlaps another, where copying run by run wrote each run with
/// unaligned, overlapping stores that a 28-pixel row splits across cache lines. Lanes u >= len are
/// zero. Loads stay inside xs: src_r - dst_r >= 0 (a run after the first starts a new output
/// row, ow = 0, and the runs before it, at most out_w <= cols pixels per row, sit above it),
/// and a load reads at most a register past a run's last pixel (the image's padding register).
template <class T, std::size_t Regs>
struct conv2d_gather_plan {
  using batch = simd_batch<T>;
  using mask = typename batch::batch_bool_type;
  static constexpr std::size_t lanes = batch::size;
  /// Runs one register may meet: a run covers at least one pixel.
  static constexpr std::size_t most = lanes;

  std::size_t pieces[Regs] = {};  ///< loads per register (>= 1)
  std::size_t offset[Regs][most]; ///< src_r - dst_r + j * L of each load
  mask take[Regs][most];          ///< lanes the load supplies (those of its run and on)
  mask keep[Regs];                ///< lanes u < len
  bool tail = false;              ///< some lane is u >= len

  conv2d_gather_plan(const conv2d_run* runs, std::size_t count, std::size_t len) {
    alignas(64) T index_values[lanes];
    for (std::size_t l = 0; l < lanes; ++l) index_values[l] = T(l);
    const batch index = batch::load_unaligned(index_values);
    tail = len < Regs * lanes;
    for (std::size_t j = 0; j < Regs; ++j) {
      const std::size_t u0 = j * lanes;
      keep[j] = index < batch(T(len > u0 ? len - u0 : 0));
      for (std::size_t r = 0; r < count; ++r) {
        const conv2d_run& run = runs[r];
        if (run.dst + run.len <= u0 || run.dst >= u0 + lanes) continue;
        const std::size_t first = run.dst > u0 ? run.dst - u0 : 0;
        offset[j][pieces[j]] = run.src - run.dst + u0;
        take[j][pieces[j]] = index >= batch(T(first));
        ++pieces[j];
      }
      if (pieces[j] == 0) { // past len: a zero register (loads the first run's start)
        offset[j][0] = runs[0].src;
        take[j][0] = index >= batch(T(0));
        pieces[j] = 1;
      }
    }
  }

  /// out[u] = src[...] of pixel u for u < len, 0 for len <= u < Regs * L.
  BITGRAD_ALWAYS_INLINE void apply(const T* src, T* out) const {
    for (std::size_t j = 0; j < Regs; ++j) {
      batch v = batch::load_unaligned(src + offset[j][0]);
      for (std::size_t k = 1; k < pieces[j]; ++k)
        v = xsimd::select(take[j][k], batch::load_unaligned(src + offset[j][k]), v);
      if (tail) v = xsimd::select(keep[j], v, batch(T(0)));
      v.store_unaligned(out + j * lanes);
    }
  }
};

/// Packs the kc x nc block of col at taps [pc, pc + kc) and pixels [jc, jc + nc) of one image
/// (xs: its conv2d_phase_image, `cols` wide; pixel (oh, ow) at oh * cols + ow) into micro-panels
/// of NR pixels (gemm_pack_b's layout for B = col): fprop's and dgrad's B. Each panel row is
/// assembled in registers by a conv2d_gather_plan made once per panel for all its taps.
template <std::size_t NR, class T>
void conv2d_pack_col(const std::size_t* tap_offsets, std::size_t out_w, std::size_t cols,
                     const T* xs, std::size_t pc, std::size_t kc, std::size_t jc, std::size_t nc,
                     T* dst) {
  constexpr std::size_t lanes = simd_batch<T>::size;
  static_assert(NR % lanes == 0, "conv2d_pack_col: NR must be whole registers");
  conv2d_run runs[NR];
  for (std::size_t r0 = 0; r0 < nc; r0 += NR, dst += NR * kc) {
    const std::size_t len = std::min(NR, nc - r0);
    const std::size_t count = conv2d_pixel_runs(out_w, cols, jc + r0, jc + r0 + len, runs);
    const conv2d_gather_plan<T, NR / lanes> plan(runs, count, len);
    for (std::size_t p = 0; p < kc; ++p) plan.apply(xs + tap_offsets[pc + p], dst + p * NR);
  }
}

/// Pixels per staging block of conv2d_pack_col_transposed: NR rows of this many pixels (12 KiB
/// of floats on AVX-512) stay in L1 between being filled and being transposed.
inline constexpr std::size_t conv2d_stage_pixels = 64;

/// Elements of conv2d_pack_col_transposed's staging block.
template <class T>
std::size_t conv2d_stage_size() {
  return gemm_tile<T>::nr * conv2d_stage_pixels + simd_lanes<T>;
}

/// Packs the kc x nc block of col^T at pixels [pc, pc + kc) of a run of images and taps
/// [jc, jc + nc) into micro-panels of NR taps (gemm_pack_b's layout for B = col^T): wgrad's B.
/// Pixel q of the run is pixel q % plane of image q / plane, whose conv2d_phase_image starts at
/// xs + (q / plane) * xs_image. `stage` holds conv2d_stage_size<T>() elements.
template <std::size_t NR, class T>
void conv2d_pack_col_transposed(const std::size_t* tap_offsets, std::size_t out_w, std::size_t cols,
                                std::size_t plane, const T* xs, std::size_t xs_image,
                                std::size_t pc, std::size_t kc, std::size_t jc, std::size_t nc,
                                T* stage, T* dst) {
  constexpr std::size_t chunk = conv2d_stage_pixels;
  conv2d_run runs[chunk];
  for (std::size_t q = pc; q < pc + kc;) {
    const std::size_t n = q / plane, local = q - n * plane;
    const std::size_t len = std::min({chunk, plane - local, pc + kc - q});
    const std::size_t count = conv2d_pixel_runs(out_w, cols, local, local + len, runs);
    const T* const xn = xs + n * xs_image;
    for (std::size_t t0 = 0; t0 < nc; t0 += NR) {
      const std::size_t taps = std::min(NR, nc - t0);
      // Stage rows of col for these taps (rows in order: overshoots land on the next row), then
      // transpose them into the micro-panel. (Assembling whole registers with a
      // conv2d_gather_plan, as conv2d_pack_col does, ran 1.28x the instructions here under AVX2:
      // a 64-pixel row is 8 registers of masks against 1-2 runs.)
      for (std::size_t r = 0; r < taps; ++r) {
        const T* const src = xn + tap_offsets[jc + t0 + r];
        for (std::size_t k = 0; k < count; ++k)
          conv2d_copy_run(src + runs[k].src, stage + r * chunk + runs[k].dst, runs[k].len);
      }
      gemm_pack_transposed<NR>(stage, chunk, taps, len, dst + t0 * kc + (q - pc) * NR);
    }
    q += len;
  }
}

/// Packs the m x kc block of A = [a_0 a_1 ...] at columns [pc, pc + kc) into micro-panels of MR
/// rows (gemm_pack_a's layout): wgrad's A, the m rows of dy_g of each image of a run side by side.
/// Column q is column q % plane of image q / plane, whose rows start at
/// a + (q / plane) * image_stride, `plane` apart.
template <std::size_t MR, class T>
void conv2d_pack_rows_run(const T* a, std::size_t image_stride, std::size_t plane, std::size_t m,
                          std::size_t pc, std::size_t kc, T* dst) {
  for (std::size_t q = pc; q < pc + kc;) {
    const std::size_t n = q / plane, local = q - n * plane;
    const std::size_t len = std::min(plane - local, pc + kc - q);
    const T* const an = a + n * image_stride + local;
    for (std::size_t i0 = 0; i0 < m; i0 += MR)
      gemm_pack_transposed<MR>(an + i0 * plane, plane, std::min(MR, m - i0), len,
                               dst + i0 * kc + (q - pc) * MR);
    q += len;
  }
}

/// Elements of one A packed for every k block (conv2d_implicit_gemm's `pack_a` returning
/// a + pc * m_pad): m rows rounded up to whole micro-panels, times k.
template <class T>
std::size_t conv2d_packed_a_size(std::size_t m, std::size_t k) {
  using tile = gemm_tile<T>;
  return (m + tile::mr - 1) / tile::mr * tile::mr * k;
}

/// Packs W (m x k, row-major, leading dimension ldw) for every k block of conv2d_implicit_gemm:
/// block pc at dst + pc * m_pad.
template <class T>
void conv2d_pack_weights(const T* w, std::size_t ldw, std::size_t m, std::size_t k, T* dst) {
  using tile = gemm_tile<T>;
  const std::size_t m_pad = (m + tile::mr - 1) / tile::mr * tile::mr;
  const std::size_t kc_block = gemm_even_block(k, gemm_blocking<T>::kc, 1);
  for (std::size_t pc = 0; pc < k; pc += kc_block)
    gemm_pack_a<tile::mr>(transpose::no, w + pc, ldw, m, std::min(kc_block, k - pc),
                          dst + pc * m_pad);
}

/// As conv2d_pack_weights for W'_g of the stride-1 dgrad (top of this file): row c, column
/// (o, i', j') is w[o][c][kh-1-i'][kw-1-j'] of the group's weights w (Cout/G x Cin/G x kh x kw).
template <class T>
void conv2d_pack_weights_flipped(const conv2d_geometry& g, const T* w, T* dst) {
  using tile = gemm_tile<T>;
  const std::size_t m = g.in_channels_per_group(), cout = g.out_channels_per_group();
  const std::size_t taps = g.kernel_h * g.kernel_w, k = cout * taps;
  const std::size_t m_pad = (m + tile::mr - 1) / tile::mr * tile::mr;
  const std::size_t kc_block = gemm_even_block(k, gemm_blocking<T>::kc, 1);
  for (std::size_t pc = 0; pc < k; pc += kc_block) {
    const std::size_t kc = std::min(kc_block, k - pc);
    for (std::size_t i0 = 0; i0 < m_pad; i0 += tile::mr) {
      T* const panel = dst + pc * m_pad + i0 * kc;
      for (std::size_t p = 0; p < kc; ++p) {
        const std::size_t o = (pc + p) / taps, tap = taps - 1 - (pc + p) % taps;
        for (std::size_t r = 0; r < tile::mr; ++r) {
          const std::size_t c = i0 + r;
          panel[p * tile::mr + r] = c < m ? w[(o * m + c) * taps + tap] : T(0);
        }
      }
    }
  }
}

/// The geometry of the convolution that computes the stride-1 dgrad of g (top of this file):
/// dy (Cout channels, OH x OW) in, dx (Cin channels, H x W) out. Needs stride 1 and
/// pad <= dilation * (kernel - 1) in both directions (conv2d_dgrad_is_convolution).
inline conv2d_geometry conv2d_transposed_geometry(const conv2d_geometry& g) {
  conv2d_geometry t = g;
  t.in_channels = g.out_channels;
  t.out_channels = g.in_channels;
  t.in_h = g.out_h();
  t.in_w = g.out_w();
  t.pad_h = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
  t.pad_w = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
  return t;
}

/// Whether g's dgrad can run as the convolution of conv2d_transposed_geometry.
inline bool conv2d_dgrad_is_convolution(const conv2d_geometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.pad_h <= g.dilation_h * (g.kernel_h - 1) &&
         g.pad_w <= g.dilation_w * (g.kernel_w - 1);
}

/// C columns [col_begin, col_end) = ep(A * B + beta C), A m x k and B k x n supplied packed, block
/// by block, in gemm.hpp's loop nest: pack_a(pc, kc) returns the packed k block [pc, pc + kc) of
/// all m rows (micro-panel i at + i * kc); pack_b(pc, kc, jc, nc, dst) packs B's block at rows
/// [pc, pc + kc), columns [jc, jc + nc) into dst. Runs on the calling thread.
template <class T, class PackA, class PackB, class Epilogue>
void conv2d_implicit_gemm(std::size_t m, std::size_t col_begin, std::size_t col_end, std::size_t k,
                          PackA&& pack_a, PackB&& pack_b, T beta, T* c, std::size_t ldc,
                          const Epilogue& ep) {
  using tile = gemm_tile<T>;
  using blocking = gemm_blocking<T>;
  constexpr std::size_t align = std::max<std::size_t>(64, simd_arch::alignment());
  const std::size_t kc_block = gemm_even_block(k, blocking::kc, 1);
  const std::size_t mc_block = gemm_even_block(m, blocking::mc(kc_block), tile::mr);
  const std::size_t nc_block =
      gemm_even_block(col_end - col_begin, blocking::nc(kc_block), tile::nr);
  // A register of room past the block (pack_b writes whole registers).
  T* const b_packed = gemm_thread_buffer<T, align>(1).reserve(kc_block * nc_block + simd_lanes<T>);
  for (std::size_t pc = 0; pc < k; pc += kc_block) {
    const std::size_t kc = std::min(kc_block, k - pc);
    const T* const a_packed = pack_a(pc, kc);
    // Earlier k blocks leave partial sums in C; the last one adds its part and applies ep.
    const T beta_block = pc == 0 ? beta : T(1);
    const bool last = pc + kc == k;
    for (std::size_t jc = col_begin; jc < col_end; jc += nc_block) {
      const std::size_t nc = std::min(nc_block, col_end - jc);
      pack_b(pc, kc, jc, nc, b_packed);
      for (std::size_t ic = 0; ic < m; ic += mc_block) {
        const gemm_block<T> block{std::min(mc_block, m - ic),
                                  nc,
                                  kc,
                                  a_packed + ic * kc,
                                  kc,
                                  tile::mr,
                                  nullptr,
                                  0,
                                  0,
                                  b_packed,
                                  ic,
                                  jc};
        if (last) {
          gemm_macro_kernel(block, gemm_output<T, Epilogue>{c, ldc, T(1), beta_block, ep});
        } else {
          gemm_macro_kernel(block,
                            gemm_output<T, epilogue::identity>{c, ldc, T(1), beta_block, {}});
        }
      }
    }
  }
}

} // namespace bitgrad::detail
