// Implicit-GEMM convolution: the GEMMs of the im2col algorithm (kernels/conv2d.hpp) without the
// column matrix. The GEMM's micro-panels are packed straight from the image, inside the loop nest
// of gemm.hpp, so the K x P matrix `col` (kernels/im2col.hpp) is never written or read back.
//
// Per image (or run of images) and group g; M = Cout/G, K = Cin/G * kh * kw, P = OH * OW:
//   fprop : y_g (M x P) = W_g (M x K) * col(x_g) (K x P)
//           B micro-panels (kc taps x NR pixels) packed from x: tap t = (c, i, j), pixel q = (oh,
//           ow),
//             col[t][q] = x[c][oh*stride_h - pad_h + i*dilation_h][ow*stride_w - pad_w +
//             j*dilation_w]
//           (0 in the padding); A = W_g packed once per call and shared by every image and thread.
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
//   B micro-panel for fprop, from the image:      B micro-panel for wgrad (k = pixels):
//     tap t   : [col[t][q0] .. col[t][q0+NR-1]]     pixel q : [col[t0][q] .. col[t0+NR-1][q]]
//     tap t+1 : [...]                               pixel q+1: [...]
//   a row of a fprop panel is a stretch of col row t: runs of x rows (one per output row oh) with
//   zeros where the window leaves the image, so it is written in place, with no copy of col.
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

/// Where row t = (c, i, j) of an image's column matrix reads the image: input channel c, and
/// ih = oh * stride_h + ih0, iw = ow * stride_w + iw0 for the output pixel (oh, ow); output rows
/// [oh_lo, oh_hi) and columns [ow_lo, ow_hi) read inside the image, the others read zeros.
struct conv2d_col_row {
  std::size_t plane_offset; // c * in_h * in_w
  std::ptrdiff_t ih0, iw0;
  std::size_t oh_lo, oh_hi, ow_lo, ow_hi;
};

/// The rows of the column matrix of one group of g, computed once per call (K entries).
inline std::vector<conv2d_col_row> conv2d_col_rows(const conv2d_geometry& g) {
  const std::size_t taps = g.kernel_h * g.kernel_w;
  std::vector<conv2d_col_row> rows(g.filter_size());
  for (std::size_t t = 0; t < rows.size(); ++t) {
    const std::size_t c = t / taps, i = t % taps / g.kernel_w, j = t % g.kernel_w;
    conv2d_col_row& r = rows[t];
    r.plane_offset = c * g.in_plane();
    r.ih0 = std::ptrdiff_t(i * g.dilation_h) - std::ptrdiff_t(g.pad_h);
    r.iw0 = std::ptrdiff_t(j * g.dilation_w) - std::ptrdiff_t(g.pad_w);
    const valid_range oh = conv_valid_range(g.out_h(), g.stride_h, r.ih0, g.in_h);
    const valid_range ow = conv_valid_range(g.out_w(), g.stride_w, r.iw0, g.in_w);
    r.oh_lo = oh.lo;
    r.oh_hi = oh.hi;
    r.ow_lo = ow.lo;
    r.ow_hi = ow.hi;
  }
  return rows;
}

/// out[q - q_begin] = col[t][q] for the pixels q in [q_begin, q_end) of the image x (the group's
/// input channels): one run of x per output row, zeros where the window is outside the image.
template <class T>
void conv2d_col_stretch(const conv2d_geometry& g, const conv2d_col_row& r, const T* x,
                        std::size_t q_begin, std::size_t q_end, T* out) {
  const std::size_t ow_n = g.out_w();
  const T* const plane = x + r.plane_offset;
  std::size_t oh = q_begin / ow_n, ow = q_begin - oh * ow_n;
  for (std::size_t q = q_begin; q < q_end; ++oh, ow = 0) {
    const std::size_t len = std::min(ow_n - ow, q_end - q), end = ow + len;
    if (oh < r.oh_lo || oh >= r.oh_hi) {
      std::fill_n(out, len, T(0));
    } else {
      const T* const src =
          plane + std::size_t(std::ptrdiff_t(oh * g.stride_h) + r.ih0) * g.in_w; // row ih
      const std::size_t a = std::clamp(r.ow_lo, ow, end), b = std::clamp(r.ow_hi, a, end);
      std::fill(out, out + (a - ow), T(0));
      if (g.stride_w == 1) {
        std::copy_n(src + std::size_t(std::ptrdiff_t(a) + r.iw0), b - a, out + (a - ow));
      } else {
        for (std::size_t k = a; k < b; ++k)
          out[k - ow] = src[std::size_t(std::ptrdiff_t(k * g.stride_w) + r.iw0)];
      }
      std::fill(out + (b - ow), out + len, T(0));
    }
    out += len;
    q += len;
  }
}

/// Packs the kc x nc block of col(x) at taps [pc, pc + kc) and pixels [jc, jc + nc) into
/// micro-panels of NR pixels (gemm_pack_b's layout for B = col): fprop's and dgrad's B.
template <std::size_t NR, class T>
void conv2d_pack_col(const conv2d_geometry& g, const conv2d_col_row* rows, const T* x,
                     std::size_t pc, std::size_t kc, std::size_t jc, std::size_t nc, T* dst) {
  for (std::size_t p = 0; p < kc; ++p) {
    const conv2d_col_row& row = rows[pc + p];
    T* out = dst + p * NR;
    for (std::size_t r = 0; r < nc; r += NR, out += NR * kc) {
      const std::size_t len = std::min(NR, nc - r);
      conv2d_col_stretch(g, row, x, jc + r, jc + r + len, out);
      std::fill(out + len, out + NR, T(0));
    }
  }
}

/// Pixels per staging block of conv2d_pack_col_transposed: NR rows of this many pixels (12 KiB
/// of floats on AVX-512) stay in L1 between being filled and being transposed.
inline constexpr std::size_t conv2d_stage_pixels = 64;

/// Packs the kc x nc block of col(x)^T at pixels [pc, pc + kc) of a run of images and taps
/// [jc, jc + nc) into micro-panels of NR taps (gemm_pack_b's layout for B = col^T): wgrad's B.
/// Pixel q of the run is pixel q % P of image q / P, which starts at x + (q / P) * image_stride.
/// `stage` holds NR * conv2d_stage_pixels elements.
template <std::size_t NR, class T>
void conv2d_pack_col_transposed(const conv2d_geometry& g, const conv2d_col_row* rows, const T* x,
                                std::size_t image_stride, std::size_t pc, std::size_t kc,
                                std::size_t jc, std::size_t nc, T* stage, T* dst) {
  constexpr std::size_t chunk = conv2d_stage_pixels;
  const std::size_t plane = g.out_plane();
  for (std::size_t t0 = 0; t0 < nc; t0 += NR, dst += NR * kc) {
    const std::size_t taps = std::min(NR, nc - t0);
    for (std::size_t q = pc; q < pc + kc;) {
      const std::size_t n = q / plane, local = q - n * plane;
      const std::size_t len = std::min({chunk, plane - local, pc + kc - q});
      const T* const xn = x + n * image_stride;
      for (std::size_t r = 0; r < taps; ++r)
        conv2d_col_stretch(g, rows[jc + t0 + r], xn, local, local + len, stage + r * chunk);
      gemm_pack_transposed<NR>(stage, chunk, taps, len, dst + (q - pc) * NR);
      q += len;
    }
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
  T* const b_packed = gemm_thread_buffer<T, align>(1).reserve(kc_block * nc_block);
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
