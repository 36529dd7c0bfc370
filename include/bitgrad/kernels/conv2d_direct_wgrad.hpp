// Register-blocked direct wgrad for stride 1 (detail of kernels/conv2d.hpp): the weight gradient
// as dot products over the same flat zero-padded planes as the direct fprop
// (kernels/conv2d_direct.hpp), with no packed GEMM panels.
//
// Terminology (one slice of `images` images, one group; Cin, Cout per group):
//   xs   : the slice's input planes zero-padded, images x Cin planes of Hp x Wp, then `guard`
//          zeros (Hp = in_h + 2 pad_h, Wp = in_w + 2 pad_w).
//   dys  : dy laid on the padded output grid, images x Cout rows of span_pad: dys[n][o][q] at
//          q = oh Wp + ow is dy[n][o][oh][ow] for ow < OW, and 0 in the junk columns
//          (OW <= ow < Wp) and past span = (OH - 1) Wp + OW (up to span_pad, a whole register).
//   With off(i, j) = i dil_h Wp + j dil_w, tap (i, j) of channel c reads xs[n][c][q + off(i, j)]
//   for output pixel q (as in fprop), so
//     dW[o][c][i][j] = sum_n sum_{q < span_pad} dys[n][o][q] * xs[n][c][q + off(i, j)],
//   the zeros of dys dropping the junk columns and the padding of the span.
//   tile : MR output channels x NT taps of one input channel, MR x NT accumulator registers
//          (AVX-512: 3 x 9 = 27 + 3 dy registers + 1 x register of 32; SSE / AVX: 3 x 3 = 9 + 3
//          + 1 of 16, a 3x3 kernel in 3 chunks). Per register of pixels q: MR loads of dys, then
//          per tap one unaligned load of xs at q + off and MR FMAs: MR + NT loads for MR NT FMAs
//          (AVX2: 6 loads per 9 FMAs, where 1 x 9 took 10). The lanes are summed once per tile,
//          after all the slice's images.
//
//            q ->                       taps t0 .. t0+NT-1
//   dys[o0]    [dv 0]   x  xs_c[q + off(t)]  ->  acc[0][0 .. NT-1]
//   ..
//   dys[o0+MR-1] [dv MR-1]                   ->  acc[MR-1][..]
//
// Taps come in chunks of NT; a last, shorter chunk reads tap 0's offset for its missing taps and
// drops those sums (5x5 with NT = 9: 3 chunks, 27 dot products for 25; NT = 3: 9 chunks, 27).
// The reference twin is ref::conv2d_wgrad (kernels/ref/conv2d.hpp).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/conv2d_direct.hpp>
#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/gemm_microkernel.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <type_traits>
#include <vector>

namespace bitgrad::detail {

/// Register blocking of the direct wgrad kernel for element type T on simd_arch.
template <class T>
struct conv2d_wgrad_tile {
  using batch = simd_batch<T>;
  static constexpr std::size_t lanes = batch::size;
  static constexpr bool wide = std::is_base_of_v<xsimd::avx512f, simd_arch>;
  /// Output channels per tile.
  static constexpr std::size_t mr = 3;
  /// Taps per tile: AVX-512 a 3x3 kernel in one chunk; 16 registers hold 3 x 3 (a 3x3 kernel in
  /// three chunks).
  static constexpr std::size_t nt = wide ? 9 : 3;
  /// Elements of a tile's sums (mu x nt, rounded up to whole registers).
  static constexpr std::size_t sums_size(std::size_t mu) {
    return (mu * nt + lanes - 1) / lanes * lanes;
  }
};

/// Geometry of the flat buffers of one wgrad slice and group.
struct conv2d_wgrad_layout {
  std::size_t wp, plane, span, span_pad, taps, taps_pad, in_channels, out_channels, images, guard;

  template <class T>
  static conv2d_wgrad_layout of(const conv2d_geometry& g, std::size_t images) {
    using tile = conv2d_wgrad_tile<T>;
    conv2d_wgrad_layout l{};
    l.wp = g.in_w + 2 * g.pad_w;
    l.plane = (g.in_h + 2 * g.pad_h) * l.wp;
    l.span = (g.out_h() - 1) * l.wp + g.out_w();
    l.span_pad = (l.span + tile::lanes - 1) / tile::lanes * tile::lanes;
    l.taps = g.kernel_h * g.kernel_w;
    l.taps_pad = (l.taps + tile::nt - 1) / tile::nt * tile::nt;
    l.in_channels = g.in_channels_per_group();
    l.out_channels = g.out_channels_per_group();
    l.images = images;
    // The last image's last channel is read up to span_pad - 1 + off(last tap)
    // = plane - 1 + (span_pad - span).
    l.guard = l.span_pad - l.span;
    return l;
  }
  std::size_t x_image() const { return in_channels * plane; }
  std::size_t dy_image() const { return out_channels * span_pad; }
  std::size_t xs_size() const { return images * x_image() + guard; }
  std::size_t scratch() const { return xs_size() + images * dy_image(); }
};

/// The flat offsets of g's taps in (i, j) order (conv2d_flat_tap_offsets), then tap 0's offset
/// up to taps_pad.
inline std::vector<std::size_t> conv2d_wgrad_offsets(const conv2d_geometry& g,
                                                     const conv2d_wgrad_layout& l) {
  std::vector<std::size_t> off = conv2d_flat_tap_offsets(g, l.wp);
  off.resize(l.taps_pad, 0);
  return off;
}

/// b, kept in a register: without this GCC 12 folds the load of the shifted x into each of the
/// MR FMAs that use it (MR loads, each split across two cache lines, per tap: load bound at
/// 0.4-0.6x implicit GEMM), where one load and MR register FMAs are FMA bound. The same for dy
/// on AVX2, whose 3 x 3 tile GCC otherwise compiled to 3 x loads and 9 FMAs with dy from memory
/// (12 loads per 9 FMAs); the AVX-512 tile's code is the same with or without it.
template <class B>
BITGRAD_ALWAYS_INLINE B conv2d_wgrad_in_register(B b) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  using arch = typename B::arch_type;
  if constexpr (std::is_base_of_v<xsimd::sse2, arch> || std::is_base_of_v<xsimd::avx, arch> ||
                std::is_base_of_v<xsimd::avx512f, arch>) {
    auto r = b.data;
    asm("" : "+v"(r));
    return B(r);
  }
#endif
  return b;
}

/// Which row's sum xsimd::haddp(row) puts in each lane: lane i holds row[i] except where xsimd
/// permutes them (8.1's AVX-512 float haddp returns rows 0 1 4 5 2 3 6 7 8 9 12 13 ...), found
/// once by summing rows of constants.
template <class B>
const std::array<std::size_t, B::size>& haddp_rows() {
  using T = typename B::value_type;
  static const std::array<std::size_t, B::size> rows = [] {
    B row[B::size];
    for (std::size_t i = 0; i < B::size; ++i) row[i] = B(T(i));
    alignas(B::arch_type::alignment()) T lane[B::size];
    xsimd::haddp(row).store_aligned(lane);
    std::array<std::size_t, B::size> r{};
    for (std::size_t j = 0; j < B::size; ++j) r[j] = std::size_t(lane[j] / T(B::size) + T(0.5));
    return r;
  }();
  return rows;
}

/// sums[r * NT + t] (sums holds sums_size(MU)) = sum over n < images, q < span_pad of dys_n[r *
/// span_pad + q] * xs_n[off[t] + q], with dys_n = dyo + n * dy_image and xs_n = xc + n * x_image:
/// one tile.
template <class T, std::size_t MU>
void conv2d_wgrad_tile_kernel(const conv2d_wgrad_layout& l, std::size_t images,
                              const std::size_t* off, const T* __restrict xc,
                              const T* __restrict dyo, T* __restrict sums) {
  using tile = conv2d_wgrad_tile<T>;
  using batch = typename tile::batch;
  constexpr std::size_t nt = tile::nt, lanes = tile::lanes;
  batch acc[MU][nt];
  static_for<MU>([&](auto r) BITGRAD_INLINE_LAMBDA {
    static_for<nt>([&](auto t) BITGRAD_INLINE_LAMBDA { acc[r][t] = batch(T(0)); });
  });
  for (std::size_t n = 0; n < images; ++n) {
    const T* const x = xc + n * l.x_image();
    const T* const d = dyo + n * l.dy_image();
    for (std::size_t q = 0; q < l.span_pad; q += lanes) {
      batch dv[MU];
      static_for<MU>([&](auto r) BITGRAD_INLINE_LAMBDA {
        dv[r] = conv2d_wgrad_in_register(batch::load_unaligned(d + r * l.span_pad + q));
      });
      static_for<nt>([&](auto t) BITGRAD_INLINE_LAMBDA {
        const batch xv = conv2d_wgrad_in_register(batch::load_unaligned(x + off[t] + q));
        static_for<MU>([&](auto r)
                           BITGRAD_INLINE_LAMBDA { acc[r][t] = xsimd::fma(dv[r], xv, acc[r][t]); });
      });
    }
  }
  // The lanes of the MU x NT accumulators, L of them at a time: haddp(row)[i] = sum of row[i]'s
  // lanes (a transposing tree of shuffles and adds, not L scalar adds per accumulator, which cost
  // as much as the dot products themselves on a 7x7 plane).
  constexpr std::size_t rows = tile::sums_size(MU);
  batch flat[rows];
  static_for<MU>([&](auto r) BITGRAD_INLINE_LAMBDA {
    static_for<nt>([&](auto t) BITGRAD_INLINE_LAMBDA { flat[r * nt + t] = acc[r][t]; });
  });
  for (std::size_t i = MU * nt; i < rows; ++i) flat[i] = batch(T(0));
  const std::array<std::size_t, lanes>& row_of = haddp_rows<batch>();
  for (std::size_t i = 0; i < rows; i += lanes) {
    alignas(batch::arch_type::alignment()) T lane[lanes];
    xsimd::haddp(flat + i).store_aligned(lane);
    for (std::size_t j = 0; j < lanes; ++j) sums[i + row_of[j]] = lane[j];
  }
}

/// conv2d_wgrad_tile_kernel<T, mu> for a runtime mu in [1, MU] (the last, ragged block of
/// output channels).
template <class T, std::size_t MU>
void conv2d_wgrad_tile_rows(std::size_t mu, const conv2d_wgrad_layout& l, std::size_t images,
                            const std::size_t* off, const T* xc, const T* dyo, T* sums) {
  if constexpr (MU > 1)
    if (mu < MU) return conv2d_wgrad_tile_rows<T, MU - 1>(mu, l, images, off, xc, dyo, sums);
  conv2d_wgrad_tile_kernel<T, MU>(l, images, off, xc, dyo, sums);
}

/// Lays `count` images of one group of x and dy out as xs and dys (see the top of this header).
/// x_n, dy_n: the group's first channel of image n (x + n * x_stride, dy + n * dy_stride).
template <class T>
void conv2d_wgrad_fill(const conv2d_geometry& g, const conv2d_wgrad_layout& l, std::size_t count,
                       const T* x, std::size_t x_stride, const T* dy, std::size_t dy_stride, T* xs,
                       T* dys) {
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w();
  for (std::size_t n = 0; n < count; ++n) {
    conv2d_pad_copy(g, l.in_channels, x + n * x_stride, xs + n * l.x_image());
    T* const dn = dys + n * l.dy_image();
    std::fill_n(dn, l.dy_image(), T(0));
    for (std::size_t o = 0; o < l.out_channels; ++o)
      for (std::size_t oh = 0; oh < oh_n; ++oh)
        std::copy_n(dy + n * dy_stride + (o * oh_n + oh) * ow_n, ow_n,
                    dn + o * l.span_pad + oh * l.wp);
  }
  std::fill_n(xs + count * l.x_image(), l.guard, T(0));
}

/// partial = the dW of images [n0, n0 + count) of every group (written, not added), stride 1.
/// l = conv2d_wgrad_layout::of<T>(g, >= count), off = conv2d_wgrad_offsets(g, l); buf holds
/// l.scratch() elements.
template <class T>
void conv2d_direct_wgrad_slice(const conv2d_geometry& g, const conv2d_wgrad_layout& l,
                               const std::size_t* off, const T* x, const T* dy, std::size_t n0,
                               std::size_t count, T* partial, T* buf) {
  using tile = conv2d_wgrad_tile<T>;
  constexpr std::size_t mr = tile::mr, nt = tile::nt;
  T* const xs = buf;
  T* const dys = buf + l.xs_size();
  const std::size_t k = g.filter_size();
  for (std::size_t gi = 0; gi < g.groups; ++gi) {
    conv2d_wgrad_fill(g, l, count, x + (n0 * g.in_channels + gi * l.in_channels) * g.in_plane(),
                      g.in_channels * g.in_plane(),
                      dy + (n0 * g.out_channels + gi * l.out_channels) * g.out_plane(),
                      g.out_channels * g.out_plane(), xs, dys);
    T* const dwg = partial + gi * l.out_channels * k;
    for (std::size_t o0 = 0; o0 < l.out_channels; o0 += mr) {
      const std::size_t mu = std::min(mr, l.out_channels - o0);
      for (std::size_t c = 0; c < l.in_channels; ++c)
        for (std::size_t t0 = 0; t0 < l.taps; t0 += nt) {
          T sums[tile::sums_size(mr)];
          const T* const xc = xs + c * l.plane;
          const T* const dyo = dys + o0 * l.span_pad;
          conv2d_wgrad_tile_rows<T, mr>(mu, l, count, off + t0, xc, dyo, sums);
          const std::size_t tn = std::min(nt, l.taps - t0);
          for (std::size_t r = 0; r < mu; ++r)
            std::copy_n(sums + r * nt, tn, dwg + (o0 + r) * k + c * l.taps + t0);
        }
    }
  }
}

} // namespace bitgrad::detail
