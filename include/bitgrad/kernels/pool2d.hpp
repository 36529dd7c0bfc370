// Pooling kernels: max, average and global average pooling, forward and backward.
//
// Layout: x NCHW (batch, channels, in_h, in_w), y NCHW (batch, channels, out_h, out_w); the
// window geometry and output size are in kernels/pool2d_geometry.hpp. A "plane" is one (n, c).
//   max pool:  y = max of the window's real inputs (padding never wins; ties: the first in
//              row-major window order). NaN counts as larger than any number (the window's
//              first NaN wins), so NaN propagates as in PyTorch instead of being dropped.
//              argmax[out] = ih*in_w + iw, an index into x's plane.
//              bprop: dx = 0, then dx[plane][argmax[out]] += dy[out].
//   avg pool:  y = (sum of the window's real inputs) / (kernel_h*kernel_w): padding counts as
//              zeros, the divisor is always the full window (count_include_pad = true).
//              bprop: every input of a window receives dy / (kernel_h*kernel_w).
//   global average pool: y[n][c] = (1/plane) sum_k x[n][c][k]; bprop dx = dy / plane.
// Planes are split across OpenMP threads (kernels/parallel.hpp). Reference twins:
// kernels/ref/pool2d.hpp.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/kernels/im2col.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/pool2d_geometry.hpp>
#include <bitgrad/kernels/vec.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace bitgrad {

namespace detail {
/// Calls f(plane, out_index, rows, cols) for every output, with the window's valid input
/// row range [rows.lo, rows.hi) and column range [cols.lo, cols.hi) in input coordinates.
template <class F>
void pool2d_for_each_window(const pool2d_geometry& g, F&& f) {
  const std::size_t planes = g.batch * g.channels, oh_n = g.out_h(), ow_n = g.out_w();
  parallel_chunks(batch_threads(planes), planes, [&](std::size_t, std::size_t b, std::size_t e) {
    for (std::size_t p = b; p < e; ++p)
      for (std::size_t oh = 0; oh < oh_n; ++oh) {
        const std::ptrdiff_t h0 = std::ptrdiff_t(oh * g.stride_h) - std::ptrdiff_t(g.pad_h);
        const valid_range rows{std::size_t(std::max<std::ptrdiff_t>(h0, 0)),
                               std::size_t(std::min<std::ptrdiff_t>(h0 + std::ptrdiff_t(g.kernel_h),
                                                                    std::ptrdiff_t(g.in_h)))};
        for (std::size_t ow = 0; ow < ow_n; ++ow) {
          const std::ptrdiff_t w0 = std::ptrdiff_t(ow * g.stride_w) - std::ptrdiff_t(g.pad_w);
          const valid_range cols{std::size_t(std::max<std::ptrdiff_t>(w0, 0)),
                                 std::size_t(std::min<std::ptrdiff_t>(
                                     w0 + std::ptrdiff_t(g.kernel_w), std::ptrdiff_t(g.in_w)))};
          f(p, (p * oh_n + oh) * ow_n + ow, rows, cols);
        }
      }
  });
}
} // namespace detail

namespace detail {
/// x replaces `best` as the window's maximum: x > best, or x is NaN and best is not (written
/// with comparisons only, so the 2x2 loop stays branch-free).
template <class T>
bool pool_beats(T x, T best) {
  return !(x <= best) && best == best;
}

/// The 2x2, stride 2, unpadded max pool (LeNet-5, VGG): branch-free selects over each pair of
/// input rows, which the compiler vectorises. Same result and tie rule as the generic loop
/// (pool_beats in row-major window order: a, b on the top row, then c, d).
template <class T>
void max_pool2d_fprop_2x2(const pool2d_geometry& g, const T* x, T* y, std::uint32_t* argmax) {
  const std::size_t planes = g.batch * g.channels, oh_n = g.out_h(), ow_n = g.out_w();
  const std::size_t in_w = g.in_w;
  parallel_chunks(
      batch_threads(planes), planes, [&](std::size_t, std::size_t first, std::size_t last) {
        for (std::size_t p = first; p < last; ++p)
          for (std::size_t oh = 0; oh < oh_n; ++oh) {
            const T* r0 = x + p * g.in_plane() + 2 * oh * in_w;
            const T* r1 = r0 + in_w;
            T* yo = y + (p * oh_n + oh) * ow_n;
            const std::uint32_t top = std::uint32_t(2 * oh * in_w);
            if (argmax == nullptr) {
              for (std::size_t ow = 0; ow < ow_n; ++ow) {
                T best = r0[2 * ow];
                best = pool_beats(r0[2 * ow + 1], best) ? r0[2 * ow + 1] : best;
                best = pool_beats(r1[2 * ow], best) ? r1[2 * ow] : best;
                yo[ow] = pool_beats(r1[2 * ow + 1], best) ? r1[2 * ow + 1] : best;
              }
              continue;
            }
            std::uint32_t* ao = argmax + (p * oh_n + oh) * ow_n;
            const std::uint32_t down = std::uint32_t(in_w);
            // The index updates are arithmetic on the comparison bits, so that short rows (the
            // scalar tail: LeNet's 12 and 4 outputs) run without branches too.
            for (std::size_t ow = 0; ow < ow_n; ++ow) {
              const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
              const std::uint32_t pb = pool_beats(b, a);
              T best = pb ? b : a;
              std::uint32_t at = pb;
              const std::uint32_t pc = pool_beats(c, best);
              best = pc ? c : best;
              at += pc * (down - at);
              const std::uint32_t pd = pool_beats(d, best);
              yo[ow] = pd ? d : best;
              ao[ow] = top + std::uint32_t(2 * ow) + at + pd * (down + 1 - at);
            }
          }
      });
}
} // namespace detail

/// y = window max; argmax (nullable) = index of the max within x's plane.
template <class T>
void max_pool2d_fprop(const pool2d_geometry& g, const T* x, T* y, std::uint32_t* argmax) {
  g.validate();
  if (g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
      g.pad_w == 0) {
    detail::max_pool2d_fprop_2x2(g, x, y, argmax);
    return;
  }
  detail::pool2d_for_each_window(
      g, [&](std::size_t p, std::size_t out, detail::valid_range rows, detail::valid_range cols) {
        const T* xp = x + p * g.in_plane();
        std::size_t at = rows.lo * g.in_w + cols.lo;
        T best = xp[at];
        for (std::size_t h = rows.lo; h < rows.hi; ++h)
          for (std::size_t w = cols.lo; w < cols.hi; ++w)
            if (detail::pool_beats(xp[h * g.in_w + w], best)) {
              best = xp[h * g.in_w + w];
              at = h * g.in_w + w;
            }
        y[out] = best;
        if (argmax) argmax[out] = std::uint32_t(at);
      });
}

/// dx = 0, then dy scattered onto the argmax positions; dx overwritten.
template <class T>
void max_pool2d_bprop(const pool2d_geometry& g, const T* dy, const std::uint32_t* argmax, T* dx) {
  g.validate();
  const std::size_t planes = g.batch * g.channels, ohw = g.out_plane(), in = g.in_plane();
  detail::parallel_chunks(detail::batch_threads(planes), planes,
                          [&](std::size_t, std::size_t b, std::size_t e) {
                            std::fill(dx + b * in, dx + e * in, T(0));
                            for (std::size_t p = b; p < e; ++p)
                              for (std::size_t k = 0; k < ohw; ++k)
                                dx[p * in + argmax[p * ohw + k]] += dy[p * ohw + k];
                          });
}

/// y = window sum / (kernel_h*kernel_w), padding counted as zeros.
template <class T>
void avg_pool2d_fprop(const pool2d_geometry& g, const T* x, T* y) {
  g.validate();
  const T inv = T(1) / T(g.kernel_h * g.kernel_w);
  detail::pool2d_for_each_window(
      g, [&](std::size_t p, std::size_t out, detail::valid_range rows, detail::valid_range cols) {
        const T* xp = x + p * g.in_plane();
        T s = 0;
        for (std::size_t h = rows.lo; h < rows.hi; ++h)
          for (std::size_t w = cols.lo; w < cols.hi; ++w) s += xp[h * g.in_w + w];
        y[out] = s * inv;
      });
}

/// dx = sum over the windows covering each input of dy / (kernel_h*kernel_w); dx overwritten.
template <class T>
void avg_pool2d_bprop(const pool2d_geometry& g, const T* dy, T* dx) {
  g.validate();
  const T inv = T(1) / T(g.kernel_h * g.kernel_w);
  const std::size_t planes = g.batch * g.channels, in = g.in_plane();
  // Each thread owns whole planes, so it may clear and scatter its planes on its own.
  detail::parallel_chunks(detail::batch_threads(planes), planes,
                          [&](std::size_t, std::size_t b, std::size_t e) {
                            std::fill(dx + b * in, dx + e * in, T(0));
                          });
  detail::pool2d_for_each_window(
      g, [&](std::size_t p, std::size_t out, detail::valid_range rows, detail::valid_range cols) {
        T* dxp = dx + p * in;
        const T d = dy[out] * inv;
        for (std::size_t h = rows.lo; h < rows.hi; ++h)
          for (std::size_t w = cols.lo; w < cols.hi; ++w) dxp[h * g.in_w + w] += d;
      });
}

/// y[n][c] = mean of x[n][c] over its `plane` elements.
template <class T>
void global_avg_pool_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                           T* y) {
  if (plane == 0) throw config_error("global_avg_pool: plane must be >= 1, got 0");
  for (std::size_t p = 0; p < batch * channels; ++p)
    y[p] = detail::sum(plane, x + p * plane) / T(plane);
}

/// dx[n][c][k] = dy[n][c] / plane; dx overwritten.
template <class T>
void global_avg_pool_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           T* dx) {
  if (plane == 0) throw config_error("global_avg_pool: plane must be >= 1, got 0");
  for (std::size_t p = 0; p < batch * channels; ++p)
    std::fill_n(dx + p * plane, plane, dy[p] / T(plane));
}

} // namespace bitgrad
