// Winograd F(2x2, 3x3) convolution for stride 1 (detail of kernels/conv2d.hpp): fprop, and dgrad
// as the same kernel on dy with the flipped, transposed weights (conv2d_transposed_geometry).
// 3x3 kernels, stride 1, dilation 1, one group, any padding.
//
// Each output tile of 2 x 2 pixels reads a 4 x 4 input tile d (tiles overlap by 2; outside the
// image d is 0). With the matrices of F(2, 3)
//
//         | 1   0    0  |           | 1  0 -1  0 |           | 1  1  1  0 |
//     G = | 1/2 1/2 1/2 |     B^T = | 0  1  1  0 |     A^T = | 0  1 -1 -1 |
//         | 1/2 -1/2 1/2|           | 0 -1  1  0 |
//         | 0   0    1  |           | 0  1  0 -1 |
//
//   U = G g G^T  (4 x 4 per output channel o, input channel c: the weight transform)
//   V = B^T d B  (4 x 4 per input channel and tile: the input transform)
//   M_xi = sum_c U_xi[o][c] V_xi[c][tile]   for each of the 16 entries xi = 4 i + j
//   Y = A^T M A  (2 x 2 per output channel and tile: the output transform; cropped at odd edges)
//
// so the 36 multiplies per output tile and (o, c) of the direct convolution become 16, and the 16
// sums over c are 16 GEMMs (kernels/gemm.hpp): M_xi (Cout x N) = U_xi (Cout x Cin) * V_xi (Cin x N)
// with the N tiles of a round (several images, or a block of tile rows of one) as columns.
// Layouts (row-major):
//   U [xi][o][c]        (16 x Cout x Cin, formed once per call)
//   V [xi][c][t]        (16 x Cin x N, t = image * block tiles + th * pitch + tw)
//   M [xi][o][t]        (16 x Cout x N)
// with pitch = tiles_w + 1: the last tile of each tile row is junk (multiplied, never written
// out). The zero-padded image P is split by row and column parity into four planes
// Q_ab[rr][k] = P[2 rr + a][2 k + b] of row pitch `pitch`, so that entry (a, b) of the 4 x 4
// input tile t is Q_{a%2, b%2}[t + (a/2) pitch + b/2]: every entry is a shifted contiguous run,
// and the transforms run on whole registers of consecutive tiles. Input: the row transform (d B)
//   h0 = d0 - d2,  h1 = d1 + d2,  h2 = d2 - d1,  h3 = d1 - d3      (d0..d3 one row of the tile)
// then the same combination of the four rows of h (B^T), written straight into V's 16 rows.
// Output: M's 16 rows combined as A^T M A
//   s_j = m0j + m1j + m2j,  t_j = m1j - m2j - m3j,
//   y00 = s0 + s1 + s2,  y01 = s1 - s2 - s3,  y10 = t0 + t1 + t2,  y11 = t1 - t2 - t3,
// plus the bias and the ReLU, and the four results interleaved into the output rows, a last odd
// row or column dropped.
//
// Rounding: the 1/2 entries of G and the +-1 sums of B and A (up to 9 terms per entry of V and
// of Y) enlarge the float error by a small constant factor over the direct sum, not with the
// size of the layer.
//
// Threads: whole images per thread (kernels/parallel.hpp), each thread's images in rounds of
// conv2d_winograd_layout (several images, or blocks of tile rows of one); every column of the GEMMs
// sees the same operations whatever the round, so results are identical across thread counts. The
// reference twin is ref::conv2d_fprop / ref::conv2d_dgrad (kernels/ref/conv2d.hpp).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/parallel.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

namespace bitgrad::detail {

/// Whether the Winograd kernel computes g's fprop: 3x3, stride 1, dilation 1, one group.
inline bool conv2d_winograd_fits(const conv2d_geometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1;
}

/// Whether conv2d_choose_algo may pick the Winograd kernel: only where it was measured faster,
/// AVX-512 (bench_conv2d --compare, benchmarks/README.md "Winograd F(2x2, 3x3)") and AVX2 (the
/// Zen 3 host, benchmarks/README.md "ResNet-20 on the Zen 3 AVX2 host ... (h23-r20z)"); not SSE
/// or NEON (never measured).
inline constexpr bool conv2d_winograd_preferred =
    std::is_base_of_v<xsimd::avx512f, simd_arch> || std::is_base_of_v<xsimd::avx2, simd_arch>;

/// The smallest output side on which conv2d_choose_algo picks Winograd. AVX-512: 8 (7x7 ran
/// 1.00-1.01x the others). AVX2, fastest other / winograd, batch 128, CPU time: 1.05-1.30x on
/// 14x14 (ResNet-20 stage 2, VGG conv3-4), 1.12-1.13x on VGG conv2 (28x28), 1.04-1.16x implicit
/// GEMM on 16x16; 0.78-0.87x on 7x7 and 0.92-0.94x on 8x8 (stage 3): 14.
inline constexpr std::size_t conv2d_winograd_min_side =
    std::is_base_of_v<xsimd::avx512f, simd_arch> ? 8 : 14;

/// The vector type of the transforms: simd_batch<T>, or T itself without SIMD.
template <class T>
using winograd_vector = std::conditional_t<BITGRAD_HAS_SIMD, simd_batch<T>, T>;

/// Lanes of winograd_vector<T>.
template <class T>
inline constexpr std::size_t winograd_lanes = simd_lanes<T>;

template <class V, class T>
V winograd_load(const T* p) {
  if constexpr (std::is_same_v<V, T>)
    return *p;
  else
    return V::load_unaligned(p);
}

template <class V, class T>
void winograd_store(T* p, const V& v) {
  if constexpr (std::is_same_v<V, T>)
    *p = v;
  else
    v.store_unaligned(p);
}

template <class V>
V winograd_relu(const V& v) {
  if constexpr (std::is_arithmetic_v<V>)
    return epilogue::detail::relu_scalar(v);
  else
    return epilogue::detail::relu_lanes(v);
}

/// Sizes of the transforms' buffers for geometry g (the fprop geometry the kernel runs).
/// Tiles are numbered t = th * pitch + tw with pitch = tiles_w + 1: the column tw = tiles_w of
/// each tile row is junk (computed, multiplied, never written out), so every 4 x 4 input tile is
/// a fixed shift of the four parity planes (see conv2d_winograd_input) and the transforms run on
/// whole registers of consecutive tiles. Junk: 1 / pitch of the GEMM columns (7 % at 28 x 28,
/// 12 % at 14 x 14, 20 % at 8 x 8).
///
/// One round of the kernel transforms a block of tile rows [th0, th0 + block_rows) of `images`
/// images into V, runs the 16 GEMMs and transforms M back: either whole images (block_rows =
/// tiles_h, several small images) or one image in blocks of tile rows (a large one), so that V and
/// M of a round, 16 (Cin + Cout) columns x sizeof(T) bytes, stay within l2_bytes.
struct conv2d_winograd_layout {
  std::size_t tiles_h, tiles_w, pitch, block_rows, images, in_channels, out_channels, lanes;

  /// Bytes of V and M per round: 1 MiB, the L2 of a Zen 4 core. Measured (bench_conv2d, CPU
  /// time, batch 128): 256 KiB and 128 KiB ran 1.1-1.5x slower (GEMMs of 48-128 columns), 2 MiB
  /// no faster.
  static constexpr std::size_t l2_bytes = 1024 * 1024;
  /// Fewest GEMM columns per round (a narrower GEMM does not pay for its packing).
  static constexpr std::size_t min_columns = 96;

  template <class T>
  static conv2d_winograd_layout of(const conv2d_geometry& g) {
    conv2d_winograd_layout l{};
    l.tiles_h = (g.out_h() + 1) / 2;
    l.tiles_w = (g.out_w() + 1) / 2;
    l.pitch = l.tiles_w + 1;
    l.in_channels = g.in_channels;
    l.out_channels = g.out_channels;
    l.lanes = winograd_lanes<T>;
    const std::size_t columns =
        std::max(min_columns, l2_bytes / (16 * (g.in_channels + g.out_channels) * sizeof(T)));
    l.block_rows = std::clamp<std::size_t>(columns / l.pitch, 1, l.tiles_h);
    l.images = l.block_rows < l.tiles_h
                   ? 1
                   : std::clamp<std::size_t>(columns / (l.tiles_h * l.pitch), 1, g.batch);
    return l;
  }
  /// Tiles of one image, the junk column included.
  std::size_t image_tiles() const { return tiles_h * pitch; }
  /// Tiles of one image's block.
  std::size_t block_tiles() const { return block_rows * pitch; }
  /// Row length of V and M: a round's tiles, then room for the last register's overrun.
  std::size_t ld() const { return images * block_tiles() + lanes; }
  /// One parity plane: block_rows + 1 rows of pitch, then a guard for the last register's reads.
  std::size_t plane() const { return (block_rows + 1) * pitch + lanes; }
  std::size_t planes_size() const { return 4 * plane(); }
  std::size_t v_size() const { return 16 * in_channels * ld(); }
  std::size_t m_size() const { return 16 * out_channels * ld(); }
  /// y00, y01, y10, y11 of one block of one output channel.
  std::size_t y_size() const { return 4 * (block_tiles() + lanes); }
  std::size_t scratch() const { return planes_size() + v_size() + m_size() + y_size(); }
  std::size_t u_size() const { return 16 * out_channels * in_channels; }
};

/// U[xi][o][c] = (G g G^T)[xi] for every (o, c), g = the 3x3 filter weight(o, c, i, j).
template <class T, class Weight>
void conv2d_winograd_weights(std::size_t out_channels, std::size_t in_channels,
                             const Weight& weight, T* u) {
  const std::size_t plane = out_channels * in_channels;
  for (std::size_t o = 0; o < out_channels; ++o)
    for (std::size_t c = 0; c < in_channels; ++c) {
      T gg[4][3]; // G g
      for (std::size_t j = 0; j < 3; ++j) {
        const T g0 = weight(o, c, 0, j), g1 = weight(o, c, 1, j), g2 = weight(o, c, 2, j);
        gg[0][j] = g0;
        gg[1][j] = T(0.5) * (g0 + g1 + g2);
        gg[2][j] = T(0.5) * (g0 - g1 + g2);
        gg[3][j] = g2;
      }
      for (std::size_t i = 0; i < 4; ++i) {
        const T g0 = gg[i][0], g1 = gg[i][1], g2 = gg[i][2];
        T* const ui = u + (4 * i) * plane + o * in_channels + c;
        ui[0 * plane] = g0;
        ui[1 * plane] = T(0.5) * (g0 + g1 + g2);
        ui[2 * plane] = T(0.5) * (g0 - g1 + g2);
        ui[3 * plane] = g2;
      }
    }
}

/// V's columns [col0, col0 + (th1 - th0) pitch) from tile rows [th0, th1) of one image x (Cin
/// planes of g): the input transform.
/// The zero-padded plane P (P[r][s] = x[r - pad_h][s - pad_w], 0 outside) is split by parity into
/// Q_ab[rr][k] = P[2 rr + a][2 k + b] (a, b in {0, 1}, row pitch `pitch`), so entry (a, b) of
/// tile t = th * pitch + tw is Q_{a%2, b%2}[t + (a/2) pitch + b/2]: 16 shifted runs.
/// Writes up to lanes - 1 columns past the image's tiles (the next image's, or ld's room).
template <class T>
void conv2d_winograd_input(const conv2d_geometry& g, const conv2d_winograd_layout& l, const T* x,
                           std::size_t th0, std::size_t th1, std::size_t col0, T* v, T* planes) {
  using V = winograd_vector<T>;
  const std::size_t tiles = (th1 - th0) * l.pitch;
  const std::size_t pitch = l.pitch, plane = l.plane(), ld = l.ld();
  const std::size_t xi_stride = l.in_channels * ld;
  // The image rows the block reads: [r0, r1).
  const std::size_t r0 = std::min(g.in_h, 2 * th0 > g.pad_h ? 2 * th0 - g.pad_h : 0);
  const std::size_t r1 = std::min(g.in_h, 2 * th1 + 2 > g.pad_h ? 2 * th1 + 2 - g.pad_h : 0);
  for (std::size_t c = 0; c < l.in_channels; ++c) {
    const T* const xc = x + c * g.in_plane();
    if (c + 1 < l.in_channels) { // the next channel's rows, while this one is transformed
      constexpr std::size_t line = 64 / sizeof(T);
      const T* const next = xc + g.in_plane();
      for (std::size_t i = r0 * g.in_w; i < r1 * g.in_w; i += line) __builtin_prefetch(next + i);
    }
    for (std::size_t rr = th0; rr <= th1; ++rr) // image rows in order (the prefetcher's)
      for (std::size_t a = 0; a < 2; ++a) {
        T* const q0 = planes + (2 * a) * plane + (rr - th0) * pitch; // Q_a0
        T* const q1 = q0 + plane;                                    // Q_a1
        const std::ptrdiff_t ih = std::ptrdiff_t(2 * rr + a) - std::ptrdiff_t(g.pad_h);
        if (ih < 0 || ih >= std::ptrdiff_t(g.in_h)) {
          std::fill_n(q0, pitch, T(0));
          std::fill_n(q1, pitch, T(0));
          continue;
        }
        // Image column s is padded column p = s + pad_w: Q_{p % 2}[p / 2]. The padded columns
        // before pad_w and from pad_w + in_w on are never written here: zeroed once per call
        // (conv2d_winograd_run).
        const T* const xr = xc + std::size_t(ih) * g.in_w;
        for (std::size_t b = 0; b < 2; ++b) {
          const std::size_t s0 = (b + 2 - g.pad_w % 2) % 2; // first s with (s + pad_w) % 2 == b
          T* const q = (b ? q1 : q0) + (s0 + g.pad_w) / 2;
          const std::size_t count = g.in_w > s0 ? (g.in_w - s0 + 1) / 2 : 0;
          for (std::size_t i = 0; i < count; ++i) q[i] = xr[s0 + 2 * i];
        }
      }
    T* const vc = v + c * ld + col0;
    for (std::size_t t = 0; t < tiles; t += l.lanes) {
      V h[4][4];
      for (std::size_t a = 0; a < 4; ++a) {
        const T* const qa = planes + (a % 2) * 2 * plane + t + (a / 2) * pitch;
        const V d0 = winograd_load<V>(qa), d1 = winograd_load<V>(qa + plane);
        const V d2 = winograd_load<V>(qa + 1), d3 = winograd_load<V>(qa + plane + 1);
        h[a][0] = d0 - d2; // (d B)[a][.]
        h[a][1] = d1 + d2;
        h[a][2] = d2 - d1;
        h[a][3] = d1 - d3;
      }
      for (std::size_t j = 0; j < 4; ++j) { // V = B^T (d B)
        winograd_store(vc + (0 + j) * xi_stride + t, V(h[0][j] - h[2][j]));
        winograd_store(vc + (4 + j) * xi_stride + t, V(h[1][j] + h[2][j]));
        winograd_store(vc + (8 + j) * xi_stride + t, V(h[2][j] - h[1][j]));
        winograd_store(vc + (12 + j) * xi_stride + t, V(h[1][j] - h[3][j]));
      }
    }
  }
}

/// Tile rows [th0, th1) of one image's output y (Cout planes of g) from M's columns [col0, col0 +
/// (th1 - th0) pitch): the output transform, plus bias (nullable) and the ReLU when relu.
template <class T>
void conv2d_winograd_output(const conv2d_geometry& g, const conv2d_winograd_layout& l, const T* m,
                            std::size_t th0, std::size_t th1, std::size_t col0, const T* bias,
                            bool relu, T* y, T* ybuf) {
  using V = winograd_vector<T>;
  const std::size_t tiles = (th1 - th0) * l.pitch;
  const std::size_t ld = l.ld(), xi_stride = l.out_channels * ld, yp = l.block_tiles() + l.lanes;
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w();
  for (std::size_t o = 0; o < l.out_channels; ++o) {
    const V bv(bias ? bias[o] : T(0));
    const T* const mo = m + o * ld + col0;
    for (std::size_t t = 0; t < tiles; t += l.lanes) {
      auto at = [&](std::size_t xi) { return winograd_load<V>(mo + xi * xi_stride + t); };
      V s[4], d[4]; // rows of A^T M
      for (std::size_t j = 0; j < 4; ++j) {
        const V m1 = at(4 + j), m2 = at(8 + j);
        s[j] = at(j) + m1 + m2;
        d[j] = m1 - m2 - at(12 + j);
      }
      V y00 = s[0] + s[1] + s[2] + bv, y01 = s[1] - s[2] - s[3] + bv;
      V y10 = d[0] + d[1] + d[2] + bv, y11 = d[1] - d[2] - d[3] + bv;
      if (relu) {
        y00 = winograd_relu(y00);
        y01 = winograd_relu(y01);
        y10 = winograd_relu(y10);
        y11 = winograd_relu(y11);
      }
      winograd_store(ybuf + t, y00);
      winograd_store(ybuf + yp + t, y01);
      winograd_store(ybuf + 2 * yp + t, y10);
      winograd_store(ybuf + 3 * yp + t, y11);
    }
    // Interleave into output rows 2 th and 2 th + 1, dropping a last odd row or column.
    T* const yo = y + o * oh_n * ow_n;
    for (std::size_t th = th0; th < th1; ++th)
      for (std::size_t dr = 0; dr < 2 && 2 * th + dr < oh_n; ++dr) {
        T* const yr = yo + (2 * th + dr) * ow_n;
        const T* const left = ybuf + 2 * dr * yp + (th - th0) * l.pitch;
        const T* const right = left + yp;
        // A plain loop, vectorised by the compiler (bench preset: vunpcklps, vpermt2ps); xsimd
        // 8.1's zip_lo / zip_hi interleave within 128-bit lanes on AVX and AVX-512.
        for (std::size_t tw = 0; tw < ow_n / 2; ++tw) {
          yr[2 * tw] = left[tw];
          yr[2 * tw + 1] = right[tw];
        }
        if (ow_n % 2) yr[ow_n - 1] = left[l.tiles_w - 1];
      }
  }
}

/// y = conv(x) + bias (ReLU'd when relu) for every image of g (conv2d_winograd_fits), with the
/// transformed weights u (conv2d_winograd_weights). `buf` holds threads * l.scratch() elements.
template <class T>
void conv2d_winograd_run(const conv2d_geometry& g, const conv2d_winograd_layout& l, const T* x,
                         const T* u, const T* bias, T* y, bool relu, T* buf) {
  const std::size_t threads = batch_threads(g.batch), per = l.scratch();
  const std::size_t cin = l.in_channels, cout = l.out_channels, ld = l.ld();
  parallel_chunks(threads, g.batch, [&](std::size_t th, std::size_t b, std::size_t e) {
    T* const planes = buf + th * per;
    std::fill_n(planes, l.planes_size(), T(0)); // pad columns and guards stay 0
    T* const v = planes + l.planes_size();
    T* const m = v + l.v_size();
    T* const ybuf = m + l.m_size();
    for (std::size_t n0 = b; n0 < e; n0 += l.images)
      for (std::size_t th0 = 0; th0 < l.tiles_h; th0 += l.block_rows) {
        const std::size_t count = std::min(l.images, e - n0);
        const std::size_t th1 = std::min(th0 + l.block_rows, l.tiles_h);
        const std::size_t tiles = (th1 - th0) * l.pitch;
        for (std::size_t n = 0; n < count; ++n)
          conv2d_winograd_input(g, l, x + (n0 + n) * cin * g.in_plane(), th0, th1, n * tiles, v,
                                planes);
        // A round multiplies its count * tiles columns only; a column's result does not depend on
        // the others, so neither on the round's size.
        for (std::size_t xi = 0; xi < 16; ++xi)
          gemm(transpose::no, transpose::no, cout, count * tiles, cin, T(1), u + xi * cout * cin,
               cin, v + xi * cin * ld, ld, T(0), m + xi * cout * ld, ld);
        for (std::size_t n = 0; n < count; ++n)
          conv2d_winograd_output(g, l, m, th0, th1, n * tiles, bias, relu,
                                 y + (n0 + n) * cout * g.out_plane(), ybuf);
      }
  });
}

/// Scratch elements conv2d_winograd_fprop / _dgrad need for fprop geometry t.
template <class T>
std::size_t conv2d_winograd_scratch(const conv2d_geometry& t) {
  const conv2d_winograd_layout l = conv2d_winograd_layout::of<T>(t);
  return l.u_size() + batch_threads(t.batch) * l.scratch();
}

/// Winograd fprop of every image (needs conv2d_winograd_fits(g)).
template <class T>
void conv2d_winograd_fprop(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                           bool relu, std::vector<T>& scratch) {
  const conv2d_winograd_layout l = conv2d_winograd_layout::of<T>(g);
  if (scratch.size() < conv2d_winograd_scratch<T>(g)) scratch.resize(conv2d_winograd_scratch<T>(g));
  const std::size_t cin = g.in_channels;
  conv2d_winograd_weights(
      g.out_channels, cin,
      [&](std::size_t o, std::size_t c, std::size_t i, std::size_t j) {
        return w[((o * cin + c) * 3 + i) * 3 + j];
      },
      scratch.data());
  conv2d_winograd_run(g, l, x, scratch.data(), bias, y, relu, scratch.data() + l.u_size());
}

/// Winograd dgrad: the fprop of dy in the transposed geometry t (conv2d_transposed_geometry(g),
/// which needs pad <= 2) with the weights w'[c][o][i][j] = w[o][c][2 - i][2 - j].
template <class T>
void conv2d_winograd_dgrad(const conv2d_geometry& g, const conv2d_geometry& t, const T* dy,
                           const T* w, T* dx, std::vector<T>& scratch) {
  const conv2d_winograd_layout l = conv2d_winograd_layout::of<T>(t);
  if (scratch.size() < conv2d_winograd_scratch<T>(t)) scratch.resize(conv2d_winograd_scratch<T>(t));
  const std::size_t cin = g.in_channels;
  conv2d_winograd_weights(
      t.out_channels, t.in_channels,
      [&](std::size_t c, std::size_t o, std::size_t i, std::size_t j) {
        return w[((o * cin + c) * 3 + (2 - i)) * 3 + (2 - j)];
      },
      scratch.data());
  conv2d_winograd_run(t, l, dy, scratch.data(), static_cast<const T*>(nullptr), dx, false,
                      scratch.data() + l.u_size());
}

} // namespace bitgrad::detail
