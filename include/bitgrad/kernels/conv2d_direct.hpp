// Register-blocked direct convolution for stride 1 (detail of kernels/conv2d.hpp): no im2col
// matrix and no packed B panels, only one zero-padded copy of each input plane.
//
// Terminology (one image, one group; Cin, Cout per group):
//   xp   : the input group zero-padded, Cin planes of Hp x Wp (Hp = in_h + 2 pad_h,
//          Wp = in_w + 2 pad_w), then `guard` zeros so the last tile may read past the end.
//   flat : plane index q = row * Wp + col. Output pixel (oh, ow) is flat q = oh * Wp + ow, and tap
//          (i, j) of channel c reads xp_c[q + off(i, j)], off(i, j) = i dil_h Wp + j dil_w, so
//            yw[o][q] = sum_{c, i, j} w[o][c][i][j] * xp_c[q + off(i, j)],   q < span,
//          span = (OH - 1) Wp + OW. Columns ow >= OW of yw are junk (they wrap into the next
//          row) and are dropped when yw is written out: (Wp - OW) / Wp of the work, 7 % at W 28.
//   tile : MU output channels x NV registers of consecutive q, held in MU x NV accumulators
//          (MU <= 4, NV <= 6 with AVX-512, <= 3 on SSE / AVX; NV chosen per layer).
//          Per (c, tap): NV unaligned loads of xp_c at q0 + off, MU broadcast weights, MU x NV
//          FMAs.
//
//        q0          q0 + NV*L
//   o0   [acc 0,0 .. acc 0,NV-1]     <- w[o0][c][tap]   * xp_c[q0 + off(tap) ..]
//   ..
//   o0+MU-1 [ .. ]                   <- w[o0+MU-1][c][tap] * (the same NV registers)
//
// Weights are packed once per call in blocks of MR output channels (`packed` below):
//   packed[block][c * taps + t][r] = w[block * MR + r][c][t]   (rows past Cout are 0).
// dgrad of a stride-1 conv is this kernel on dy with the weights flipped and Cin / Cout swapped
// (conv2d_transposed_geometry): conv2d_direct_pack_weights_flipped packs them that way.
// The reference twin is ref::conv2d_fprop (kernels/ref/conv2d.hpp).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm_microkernel.hpp>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

namespace bitgrad::detail {

/// Copies `channels` planes of x into the zero-padded buffer xp (channels x Hp x Wp).
template <class T>
void conv2d_pad_copy(const conv2d_geometry& g, std::size_t channels, const T* x, T* xp) {
  const std::size_t hp = g.in_h + 2 * g.pad_h, wp = g.in_w + 2 * g.pad_w;
  std::fill_n(xp, channels * hp * wp, T(0));
  for (std::size_t c = 0; c < channels; ++c)
    for (std::size_t h = 0; h < g.in_h; ++h)
      std::copy_n(x + (c * g.in_h + h) * g.in_w, g.in_w,
                  xp + (c * hp + h + g.pad_h) * wp + g.pad_w);
}

/// Register blocking of the direct kernel for element type T on simd_arch.
template <class T>
struct conv2d_direct_tile {
  using batch = simd_batch<T>;
  static constexpr std::size_t lanes = batch::size;
  /// Output channels per tile.
  static constexpr std::size_t mr = 4;
  /// Most registers of pixels per tile: AVX-512 4 x 6 = 24 accumulators + 6 inputs + 1 weight
  /// of 32; SSE / AVX 4 x 3 = 12 + 3 + 1 of 16.
  static constexpr std::size_t nv = std::is_base_of_v<xsimd::avx512f, simd_arch> ? 6 : 3;
  /// Tiles of nv, nv - 1, ... nv - (widths - 1) registers are compiled; each layer takes the one
  /// that rounds its span up the least (conv2d_direct_layout::of).
  static constexpr std::size_t widths = nv > 3 ? 3 : nv - 1;
};

/// Whether conv2d_choose_algo may pick the direct kernel for large layers: only where it was
/// measured faster than implicit GEMM, AVX-512 (bench_conv2d --compare, benchmarks/README.md
/// "Direct convolution, register-blocked"). Built for AVX2 it ran 0.92-1.41x implicit GEMM's
/// instructions (callgrind; not timed).
inline constexpr bool conv2d_direct_preferred = std::is_base_of_v<xsimd::avx512f, simd_arch>;

/// Whether conv2d_choose_algo picks the direct kernels on AVX2 (4 x 3 fprop / dgrad tiles, 3 x 3
/// wgrad tiles) where measured faster there: on planes of >= 14 x 14, fprop and dgrad of layers
/// of at most 16 channels in and out, wgrad of at most 32 (conv2d_choose_algo). Not SSE or NEON
/// (never measured).
inline constexpr bool conv2d_direct_preferred_narrow =
    std::is_base_of_v<xsimd::avx2, simd_arch> && !std::is_base_of_v<xsimd::avx512f, simd_arch>;

/// Geometry of the flat buffers of one image and group.
struct conv2d_direct_layout {
  std::size_t wp, plane, span, nv, span_pad, taps, in_channels, out_channels, guard;

  template <class T>
  static conv2d_direct_layout of(const conv2d_geometry& g) {
    using tile = conv2d_direct_tile<T>;
    conv2d_direct_layout l{};
    l.wp = g.in_w + 2 * g.pad_w;
    l.plane = (g.in_h + 2 * g.pad_h) * l.wp;
    l.span = (g.out_h() - 1) * l.wp + g.out_w();
    // Registers per tile: the width whose tiles cover span with the fewest padded pixels (the
    // widest on a tie). 7x7 (span 61): 4 x 16 = 64 rather than 96 with AVX-512 float.
    l.nv = tile::nv;
    l.span_pad =
        (l.span + tile::nv * tile::lanes - 1) / (tile::nv * tile::lanes) * tile::nv * tile::lanes;
    for (std::size_t nv = tile::nv - 1; nv + tile::widths > tile::nv; --nv) {
      const std::size_t nq = nv * tile::lanes, pad = (l.span + nq - 1) / nq * nq;
      if (pad < l.span_pad) {
        l.nv = nv;
        l.span_pad = pad;
      }
    }
    l.taps = g.kernel_h * g.kernel_w;
    l.in_channels = g.in_channels_per_group();
    l.out_channels = g.out_channels_per_group();
    // The last tile reads up to span_pad - 1 + off(last tap) = plane - 1 + (span_pad - span).
    l.guard = l.span_pad - l.span;
    return l;
  }
  /// Elements of xp (with the guard) and yw for one image and group.
  std::size_t xp_size() const { return in_channels * plane + guard; }
  std::size_t yw_size() const { return out_channels * span_pad; }
  std::size_t scratch() const { return xp_size() + yw_size(); }
};

/// Elements of the packed weights of one group of `out_channels` x `filter` weights.
template <class T>
std::size_t conv2d_direct_packed_size(std::size_t out_channels, std::size_t filter) {
  constexpr std::size_t mr = conv2d_direct_tile<T>::mr;
  return (out_channels + mr - 1) / mr * mr * filter;
}

/// packed[block][k][r] = weight(block * MR + r, k) for k < filter (0 past out_channels).
template <class T, class Weight>
void conv2d_direct_pack(std::size_t out_channels, std::size_t filter, const Weight& weight,
                        T* packed) {
  constexpr std::size_t mr = conv2d_direct_tile<T>::mr;
  for (std::size_t o0 = 0; o0 < out_channels; o0 += mr)
    for (std::size_t k = 0; k < filter; ++k)
      for (std::size_t r = 0; r < mr; ++r)
        *packed++ = o0 + r < out_channels ? weight(o0 + r, k) : T(0);
}

/// Packs one group's weights w (Cout/G x Cin/G x kh x kw) for fprop.
template <class T>
void conv2d_direct_pack_weights(const conv2d_geometry& g, const T* w, T* packed) {
  const std::size_t k = g.filter_size();
  conv2d_direct_pack(
      g.out_channels_per_group(), k, [&](std::size_t o, std::size_t p) { return w[o * k + p]; },
      packed);
}

/// Packs one group's weights for dgrad as a convolution of dy: output channel c (an input
/// channel of g), input channel o, tap (i, j) takes w[o][c][kh-1-i][kw-1-j].
template <class T>
void conv2d_direct_pack_weights_flipped(const conv2d_geometry& g, const T* w, T* packed) {
  const std::size_t cin = g.in_channels_per_group(), taps = g.kernel_h * g.kernel_w;
  conv2d_direct_pack(
      cin, g.out_channels_per_group() * taps,
      [&](std::size_t c, std::size_t p) {
        const std::size_t o = p / taps, t = p % taps;
        return w[(o * cin + c) * taps + (taps - 1 - t)];
      },
      packed);
}

/// yq[r * ld + v * L + l] = sum over c, t of packed[(c * taps + t) * MR + r] * xq[c * plane +
/// off[t] + v * L + l], for r < MU, v < NV: one tile (see the top of this header).
template <class T, std::size_t MU, std::size_t NV>
void conv2d_direct_tile_kernel(const conv2d_direct_layout& l, const std::size_t* off,
                               const T* __restrict packed, const T* __restrict xq,
                               T* __restrict yq) {
  using tile = conv2d_direct_tile<T>;
  using batch = typename tile::batch;
  constexpr std::size_t nv = NV, lanes = tile::lanes;
  batch acc[MU][nv];
  static_for<MU>([&](auto r) BITGRAD_INLINE_LAMBDA {
    static_for<nv>([&](auto v) BITGRAD_INLINE_LAMBDA { acc[r][v] = batch(T(0)); });
  });
  for (std::size_t c = 0; c < l.in_channels; ++c) {
    const T* const xc = xq + c * l.plane;
    for (std::size_t t = 0; t < l.taps; ++t) {
      const T* const xt = xc + off[t];
      batch xv[nv];
      static_for<nv>([&](auto v)
                         BITGRAD_INLINE_LAMBDA { xv[v] = batch::load_unaligned(xt + v * lanes); });
      static_for<MU>([&](auto r) BITGRAD_INLINE_LAMBDA {
        const batch wv(packed[r]);
        static_for<nv>([&](auto v)
                           BITGRAD_INLINE_LAMBDA { acc[r][v] = xsimd::fma(wv, xv[v], acc[r][v]); });
      });
      packed += tile::mr;
    }
  }
  static_for<MU>([&](auto r) BITGRAD_INLINE_LAMBDA {
    static_for<nv>([&](auto v) BITGRAD_INLINE_LAMBDA {
      acc[r][v].store_unaligned(yq + r * l.span_pad + v * lanes);
    });
  });
}

/// y_g = conv(x_g) + bias (ReLU'd if relu) for one image and group of g (stride 1), weights packed
/// by conv2d_direct_pack_weights(_flipped). buf holds conv2d_direct_layout::scratch() elements.
template <class T>
void conv2d_direct_fprop_image(const conv2d_geometry& g, const conv2d_direct_layout& l,
                               const std::size_t* off, const T* x, const T* packed, const T* bias,
                               T* y, bool relu, T* buf) {
  using tile = conv2d_direct_tile<T>;
  T* const xp = buf;
  T* const yw = buf + l.xp_size();
  // Zero-padded copy of the input planes, then the guard's zeros.
  conv2d_pad_copy(g, l.in_channels, x, xp);
  std::fill_n(xp + l.in_channels * l.plane, l.guard, T(0));
  const std::size_t filter = l.in_channels * l.taps;
  static_for<tile::widths>([&](auto width) {
    constexpr std::size_t nv = tile::nv - width;
    if (nv != l.nv) return;
    for (std::size_t q0 = 0; q0 < l.span; q0 += nv * tile::lanes)
      for (std::size_t o0 = 0; o0 < l.out_channels; o0 += tile::mr) {
        const T* const pb = packed + o0 * filter;
        T* const yq = yw + o0 * l.span_pad + q0;
        switch (std::min(tile::mr, l.out_channels - o0)) {
        case 1:
          conv2d_direct_tile_kernel<T, 1, nv>(l, off, pb, xp + q0, yq);
          break;
        case 2:
          conv2d_direct_tile_kernel<T, 2, nv>(l, off, pb, xp + q0, yq);
          break;
        case 3:
          conv2d_direct_tile_kernel<T, 3, nv>(l, off, pb, xp + q0, yq);
          break;
        default:
          conv2d_direct_tile_kernel<T, tile::mr, nv>(l, off, pb, xp + q0, yq);
        }
      }
  });
  // Keep the OW valid columns of each row, adding the bias (and the ReLU), in whole registers.
  // Where it stays inside this call's y (and reads inside yw), a row's last register runs past its
  // OW columns into the rows after it (several rows when OW < L) with junk from yw's junk columns:
  // rows are written in order, so every element's last write is its own row's. The rows near the
  // end of y end on a register stored at OW - L (overlapping the one before) when OW >= L, else
  // element by element: nothing past y is touched (another image's output, maybe another
  // thread's). Before this, OW = 28 wrote 12 of each row's 28 elements one at a time.
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w(), rows = l.out_channels * oh_n;
  constexpr std::size_t lanes = tile::lanes;
  const std::size_t row_regs = (ow_n + lanes - 1) / lanes * lanes;
  using batch = typename tile::batch;
  const auto write_rows = [&](auto op, auto op_scalar) BITGRAD_INLINE_LAMBDA {
    for (std::size_t o = 0; o < l.out_channels; ++o) {
      const T b = bias ? bias[o] : T(0);
      const batch bv(b);
      for (std::size_t oh = 0; oh < oh_n; ++oh) {
        const std::size_t from = o * l.span_pad + oh * l.wp, r = o * oh_n + oh;
        const T* const src = yw + from;
        T* const dst = y + r * ow_n;
        std::size_t ow = 0;
        if (r * ow_n + row_regs <= rows * ow_n && from + row_regs <= l.yw_size()) {
          for (; ow < ow_n; ow += lanes)
            op(batch::load_unaligned(src + ow) + bv).store_unaligned(dst + ow);
          continue;
        }
        for (; ow + lanes <= ow_n; ow += lanes)
          op(batch::load_unaligned(src + ow) + bv).store_unaligned(dst + ow);
        if (ow == ow_n) continue;
        if (ow_n >= lanes) {
          ow = ow_n - lanes;
          op(batch::load_unaligned(src + ow) + bv).store_unaligned(dst + ow);
          continue;
        }
        for (; ow < ow_n; ++ow) dst[ow] = op_scalar(src[ow] + b);
      }
    }
  };
  if (relu)
    write_rows([](batch v) BITGRAD_INLINE_LAMBDA { return epilogue::detail::relu_lanes(v); },
               [](T v) { return epilogue::detail::relu_scalar(v); });
  else
    write_rows([](batch v) BITGRAD_INLINE_LAMBDA { return v; }, [](T v) { return v; });
}

/// The flat offsets off(i, j) = i dil_h wp + j dil_w of g's taps, in (i, j) order, on planes of
/// row pitch wp (the direct fprop's and wgrad's padded planes).
inline std::vector<std::size_t> conv2d_flat_tap_offsets(const conv2d_geometry& g, std::size_t wp) {
  std::vector<std::size_t> off;
  for (std::size_t i = 0; i < g.kernel_h; ++i)
    for (std::size_t j = 0; j < g.kernel_w; ++j)
      off.push_back(i * g.dilation_h * wp + j * g.dilation_w);
  return off;
}

/// conv2d_flat_tap_offsets on the direct fprop's planes.
inline std::vector<std::size_t> conv2d_direct_offsets(const conv2d_geometry& g,
                                                      const conv2d_direct_layout& l) {
  return conv2d_flat_tap_offsets(g, l.wp);
}

} // namespace bitgrad::detail
