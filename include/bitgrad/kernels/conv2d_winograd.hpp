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
// with the N tiles of a slice of images as columns. Layouts (row-major):
//   U [xi][o][c]        (16 x Cout x Cin, formed once per call)
//   V [xi][c][t]        (16 x Cin x N, t = image * tiles + th * tiles_w + tw)
//   M [xi][o][t]        (16 x Cout x N)
// The input transform reads a row of the zero-padded image split into even and odd columns,
// so the tiles of a tile row are consecutive lanes: with E[k] = row[2k], O[k] = row[2k+1], tile tw
// of the row has d0..d3 = E[tw], O[tw], E[tw+1], O[tw+1], and the row transform (d B)
//   h0 = d0 - d2,  h1 = d1 + d2,  h2 = d2 - d1,  h3 = d1 - d3
// runs on whole registers of tiles; then the same combination of the tile's four rows of h (B^T),
// written straight into V's rows. The output transform combines M's 16 rows the same way
// (s_j = m0j + m1j + m2j, t_j = m1j - m2j - m3j; y00 = s0 + s1 + s2, y01 = s1 - s2 - s3,
// y10 = t0 + t1 + t2, y11 = t1 - t2 - t3), adds the bias and the ReLU, and interleaves the four
// results into the output rows.
//
// Rounding: the 1/2 entries of G and the +-1 sums of B and A (up to 9 terms per entry of V and
// of Y) enlarge the float error by a small constant factor over the direct sum, not with the
// size of the layer.
//
// Threads: whole images per thread (kernels/parallel.hpp), each thread's images in slices of
// conv2d_winograd_layout::images; every column of the GEMMs sees the same operations whatever
// the slice, so results are identical across thread counts. The reference twin is
// ref::conv2d_fprop / ref::conv2d_dgrad (kernels/ref/conv2d.hpp).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/parallel.hpp>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

namespace bitgrad::detail {

/// Whether the Winograd kernel computes g's fprop: 3x3, stride 1, dilation 1, one group.
inline bool conv2d_winograd_fits(const conv2d_geometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1;
}

/// Calls f(k, V{}) for k in steps of simd_batch<T>'s lanes (V = the batch) while a whole batch
/// fits in [0, n), then f(k, T{}) for each remaining k (V = T).
template <class T, class F>
void winograd_lanes(std::size_t n, F&& f) {
  std::size_t k = 0;
  if constexpr (BITGRAD_HAS_SIMD) {
    using B = simd_batch<T>;
    for (; k + B::size <= n; k += B::size) f(k, B(T(0)));
  }
  for (; k < n; ++k) f(k, T(0));
}

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

/// Sizes of the transforms' buffers for geometry g (the fprop geometry the kernel runs).
struct conv2d_winograd_layout {
  std::size_t tiles_h, tiles_w, tiles, images, in_channels, out_channels;

  /// Columns aimed at per GEMM: a 32 x 32 image (256 tiles) alone, 16 images of 8 x 8.
  static constexpr std::size_t target_columns = 256;

  static conv2d_winograd_layout of(const conv2d_geometry& g) {
    conv2d_winograd_layout l{};
    l.tiles_h = (g.out_h() + 1) / 2;
    l.tiles_w = (g.out_w() + 1) / 2;
    l.tiles = l.tiles_h * l.tiles_w;
    l.images = std::clamp<std::size_t>((target_columns + l.tiles - 1) / l.tiles, 1, g.batch);
    l.in_channels = g.in_channels;
    l.out_channels = g.out_channels;
    return l;
  }
  std::size_t columns() const { return images * tiles; }
  /// One padded input row split into even and odd columns (tiles_w + 1 each).
  std::size_t row_size() const { return 2 * (tiles_w + 1); }
  /// The row transforms h0..h3 of the 2 tiles_h + 2 padded rows of one channel.
  std::size_t h_size() const { return (2 * tiles_h + 2) * 4 * tiles_w; }
  std::size_t v_size() const { return 16 * in_channels * columns(); }
  std::size_t m_size() const { return 16 * out_channels * columns(); }
  /// y00, y01, y10, y11 of one tile row.
  std::size_t y_size() const { return 4 * tiles_w; }
  std::size_t scratch() const { return row_size() + h_size() + v_size() + m_size() + y_size(); }
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

/// V's columns [col0, col0 + tiles) for one image x (Cin planes of g): the input transform.
template <class T>
void conv2d_winograd_input(const conv2d_geometry& g, const conv2d_winograd_layout& l, const T* x,
                           std::size_t col0, T* v, T* row, T* h) {
  const std::size_t tw_n = l.tiles_w, rows = 2 * l.tiles_h + 2, ld = l.columns();
  T* const even = row;
  T* const odd = row + tw_n + 1;
  for (std::size_t c = 0; c < l.in_channels; ++c) {
    const T* const xc = x + c * g.in_plane();
    // h[r][j][tw]: the row transform of padded row r (image row r - pad_h).
    for (std::size_t r = 0; r < rows; ++r) {
      T* const hr = h + r * 4 * tw_n;
      const std::ptrdiff_t ih = std::ptrdiff_t(r) - std::ptrdiff_t(g.pad_h);
      if (ih < 0 || ih >= std::ptrdiff_t(g.in_h)) {
        std::fill_n(hr, 4 * tw_n, T(0));
        continue;
      }
      const T* const xr = xc + std::size_t(ih) * g.in_w;
      for (std::size_t k = 0; k <= tw_n; ++k) {
        const std::ptrdiff_t iw = std::ptrdiff_t(2 * k) - std::ptrdiff_t(g.pad_w);
        even[k] = iw >= 0 && iw < std::ptrdiff_t(g.in_w) ? xr[iw] : T(0);
        odd[k] = iw + 1 >= 0 && iw + 1 < std::ptrdiff_t(g.in_w) ? xr[iw + 1] : T(0);
      }
      winograd_lanes<T>(tw_n, [&](std::size_t k, auto tag) {
        using V = decltype(tag);
        const V d0 = winograd_load<V>(even + k), d1 = winograd_load<V>(odd + k);
        const V d2 = winograd_load<V>(even + k + 1), d3 = winograd_load<V>(odd + k + 1);
        winograd_store(hr + k, V(d0 - d2));
        winograd_store(hr + tw_n + k, V(d1 + d2));
        winograd_store(hr + 2 * tw_n + k, V(d2 - d1));
        winograd_store(hr + 3 * tw_n + k, V(d1 - d3));
      });
    }
    // V[4 i + j][c][tile]: the column transform of the tile's rows 2 th .. 2 th + 3 of h.
    for (std::size_t th = 0; th < l.tiles_h; ++th) {
      const T* const h0 = h + 2 * th * 4 * tw_n;
      T* const vc = v + c * ld + col0 + th * tw_n;
      const std::size_t xi_stride = l.in_channels * ld;
      for (std::size_t j = 0; j < 4; ++j) {
        const T* const a = h0 + j * tw_n;
        winograd_lanes<T>(tw_n, [&](std::size_t k, auto tag) {
          using V = decltype(tag);
          const V r0 = winograd_load<V>(a + k), r1 = winograd_load<V>(a + 4 * tw_n + k);
          const V r2 = winograd_load<V>(a + 8 * tw_n + k), r3 = winograd_load<V>(a + 12 * tw_n + k);
          winograd_store(vc + (0 + j) * xi_stride + k, V(r0 - r2));
          winograd_store(vc + (4 + j) * xi_stride + k, V(r1 + r2));
          winograd_store(vc + (8 + j) * xi_stride + k, V(r2 - r1));
          winograd_store(vc + (12 + j) * xi_stride + k, V(r1 - r3));
        });
      }
    }
  }
}

template <class V>
V winograd_relu(const V& v) {
  if constexpr (std::is_arithmetic_v<V>)
    return epilogue::detail::relu_scalar(v);
  else
    return epilogue::detail::relu_lanes(v);
}

/// One image's output y (Cout planes of g) from M's columns [col0, col0 + tiles): the output
/// transform, plus bias (nullable) and the ReLU when relu.
template <class T>
void conv2d_winograd_output(const conv2d_geometry& g, const conv2d_winograd_layout& l, const T* m,
                            std::size_t col0, const T* bias, bool relu, T* y, T* ybuf) {
  const std::size_t tw_n = l.tiles_w, ld = l.columns(), xi_stride = l.out_channels * ld;
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w();
  for (std::size_t o = 0; o < l.out_channels; ++o) {
    const T b = bias ? bias[o] : T(0);
    T* const yo = y + o * oh_n * ow_n;
    for (std::size_t th = 0; th < l.tiles_h; ++th) {
      const T* const mo = m + o * ld + col0 + th * tw_n;
      winograd_lanes<T>(tw_n, [&](std::size_t k, auto tag) {
        using V = decltype(tag);
        auto at = [&](std::size_t xi) { return winograd_load<V>(mo + xi * xi_stride + k); };
        V s[4], t[4];
        for (std::size_t j = 0; j < 4; ++j) {
          const V m1 = at(4 + j), m2 = at(8 + j);
          s[j] = at(j) + m1 + m2;
          t[j] = m1 - m2 - at(12 + j);
        }
        const V bv(b);
        V y00 = s[0] + s[1] + s[2] + bv, y01 = s[1] - s[2] - s[3] + bv;
        V y10 = t[0] + t[1] + t[2] + bv, y11 = t[1] - t[2] - t[3] + bv;
        if (relu) {
          y00 = winograd_relu(y00);
          y01 = winograd_relu(y01);
          y10 = winograd_relu(y10);
          y11 = winograd_relu(y11);
        }
        winograd_store(ybuf + k, y00);
        winograd_store(ybuf + tw_n + k, y01);
        winograd_store(ybuf + 2 * tw_n + k, y10);
        winograd_store(ybuf + 3 * tw_n + k, y11);
      });
      // Interleave into output rows 2 th and 2 th + 1, dropping a last odd row or column.
      for (std::size_t dr = 0; dr < 2 && 2 * th + dr < oh_n; ++dr) {
        T* const yr = yo + (2 * th + dr) * ow_n;
        const T* const left = ybuf + 2 * dr * tw_n;
        const T* const right = left + tw_n;
        for (std::size_t tw = 0; tw < ow_n / 2; ++tw) {
          yr[2 * tw] = left[tw];
          yr[2 * tw + 1] = right[tw];
        }
        if (ow_n % 2) yr[ow_n - 1] = left[tw_n - 1];
      }
    }
  }
}

/// y = conv(x) + bias (ReLU'd when relu) for every image of g (conv2d_winograd_fits), with the
/// transformed weights u (conv2d_winograd_weights). `buf` holds threads * l.scratch() elements.
template <class T>
void conv2d_winograd_run(const conv2d_geometry& g, const conv2d_winograd_layout& l, const T* x,
                         const T* u, const T* bias, T* y, bool relu, T* buf) {
  const std::size_t threads = batch_threads(g.batch), per = l.scratch();
  const std::size_t cin = l.in_channels, cout = l.out_channels, ld = l.columns();
  parallel_chunks(threads, g.batch, [&](std::size_t th, std::size_t b, std::size_t e) {
    T* const row = buf + th * per;
    T* const h = row + l.row_size();
    T* const v = h + l.h_size();
    T* const m = v + l.v_size();
    T* const ybuf = m + l.m_size();
    for (std::size_t n0 = b; n0 < e; n0 += l.images) {
      const std::size_t count = std::min(l.images, e - n0);
      for (std::size_t n = 0; n < count; ++n)
        conv2d_winograd_input(g, l, x + (n0 + n) * cin * g.in_plane(), n * l.tiles, v, row, h);
      // A short last slice multiplies its count * tiles columns only; a column's result does not
      // depend on the others.
      for (std::size_t xi = 0; xi < 16; ++xi)
        gemm(transpose::no, transpose::no, cout, count * l.tiles, cin, T(1), u + xi * cout * cin,
             cin, v + xi * cin * ld, ld, T(0), m + xi * cout * ld, ld);
      for (std::size_t n = 0; n < count; ++n)
        conv2d_winograd_output(g, l, m, n * l.tiles, bias, relu,
                               y + (n0 + n) * cout * g.out_plane(), ybuf);
    }
  });
}

/// Scratch elements conv2d_winograd_fprop / _dgrad need for fprop geometry t.
inline std::size_t conv2d_winograd_scratch(const conv2d_geometry& t) {
  const conv2d_winograd_layout l = conv2d_winograd_layout::of(t);
  return l.u_size() + batch_threads(t.batch) * l.scratch();
}

/// Winograd fprop of every image (needs conv2d_winograd_fits(g)).
template <class T>
void conv2d_winograd_fprop(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                           bool relu, std::vector<T>& scratch) {
  const conv2d_winograd_layout l = conv2d_winograd_layout::of(g);
  if (scratch.size() < conv2d_winograd_scratch(g)) scratch.resize(conv2d_winograd_scratch(g));
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
  const conv2d_winograd_layout l = conv2d_winograd_layout::of(t);
  if (scratch.size() < conv2d_winograd_scratch(t)) scratch.resize(conv2d_winograd_scratch(t));
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
