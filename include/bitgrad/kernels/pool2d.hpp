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
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

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

/// pool_beats without short-circuit: both comparisons always run, so that no branch is needed.
template <class T>
bool pool_beats_branch_free(T x, T best) {
  return bool(int(!(x <= best)) & int(best == best));
}

/// `take ? x : otherwise` as a bit mask select: mask = 0 - take (all ones or all zeros), result
/// = (x & mask) | (otherwise & ~mask). Compilers turn a float `?:` in a scalar loop into a branch
/// on the comparison, which mispredicts on about half the windows of real data (the scalar tail
/// of LeNet's 12- and 4-wide pooled rows was 20 % of a training step); integer masks stay
/// branch-free and still vectorise.
template <class T>
T select_bits(bool take, T x, T otherwise) {
  using bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == sizeof(bits));
  const bits mask = bits(0) - bits(take);
  return std::bit_cast<T>(
      bits((std::bit_cast<bits>(x) & mask) | (std::bit_cast<bits>(otherwise) & ~mask)));
}

/// The window of LeNet-5's and VGG's pools, which max_pool2d_fprop_2x2 serves.
inline bool is_pool_2x2_stride_2(const pool2d_geometry& g) {
  return g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
         g.pad_w == 0;
}

/// The 2x2, stride 2, unpadded max pool (LeNet-5, VGG): branch-free selects over each pair of
/// input rows, which the compiler vectorises where a row has enough windows for a register; the
/// rest (the tails of LeNet's 12- and 4-window rows) runs as branch-free scalar code. Same result
/// and tie rule as the generic loop (pool_beats in row-major window order: a, b on the top row,
/// then c, d).
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
                const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                T best = select_bits(pool_beats_branch_free(b, a), b, a);
                best = select_bits(pool_beats_branch_free(c, best), c, best);
                yo[ow] = select_bits(pool_beats_branch_free(d, best), d, best);
              }
              continue;
            }
            std::uint32_t* ao = argmax + (p * oh_n + oh) * ow_n;
            const std::uint32_t down = std::uint32_t(in_w);
            // The index updates are arithmetic on the comparison bits, so that short rows (the
            // scalar tail: LeNet's 12 and 4 outputs) run without branches too.
            for (std::size_t ow = 0; ow < ow_n; ++ow) {
              const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
              const bool pb = pool_beats_branch_free(b, a);
              T best = select_bits(pb, b, a);
              std::uint32_t at = pb;
              const bool pc = pool_beats_branch_free(c, best);
              best = select_bits(pc, c, best);
              at += std::uint32_t(pc) * (down - at);
              const bool pd = pool_beats_branch_free(d, best);
              yo[ow] = select_bits(pd, d, best);
              ao[ow] = top + std::uint32_t(2 * ow) + at + std::uint32_t(pd) * (down + 1 - at);
            }
          }
      });
}

/// Column winners per block of max_pool2d_fprop_2x2_two_pass: 4 KB of float values and 4 KB of
/// indices, in L1 between the two passes. Rows of more columns take the one-pass loop.
inline constexpr std::size_t max_pool_2x2_block_columns = 1024;

/// max_pool2d_fprop_2x2 with argmax, in two passes over blocks of whole row pairs, both with
/// long unit-stride (or stride-2) loops the compiler vectorises; LeNet's rows are 12 and 4
/// windows, shorter than an AVX-512 register, so a loop along one row stays scalar.
///   pass 1 (down the columns): for every column j of a row pair, v[j] = the bottom input if it
///     beats the top one, else the top one (ties: the top comes first in the window);
///     vi[j] = its index in the plane.
///   pass 2 (along the block, flat): window k has column winners l = v[2k], r = v[2k + 1]
///     (whole row pairs, even row length 2 * out_w, so window k's columns are always 2k, 2k + 1
///     and its output is the block's k-th). r wins if it beats l, or if neither beats the other
///     (a tie) and r comes first in row-major order (vi[2k + 1] < vi[2k]: r on the top row, l on
///     the bottom). That is the first maximum of a, b, c, d in row-major order, the rule of the
///     one-pass loop (pool_beats is a strict order with NaN above every number), so the values
///     and the argmax are the same bits.
template <class T>
void max_pool2d_fprop_2x2_two_pass(const pool2d_geometry& g, const T* x, T* y,
                                   std::uint32_t* argmax) {
  const std::size_t planes = g.batch * g.channels, oh_n = g.out_h(), ow_n = g.out_w();
  const std::size_t in_w = g.in_w, in = g.in_plane();
  const std::size_t row = 2 * ow_n; // the columns some window covers (in_w minus an odd last one)
  constexpr std::size_t block = max_pool_2x2_block_columns;
  const std::size_t rows_per_block = block / row; // >= 1: the caller checks row <= block
  parallel_chunks(
      batch_threads(planes), planes, [&](std::size_t, std::size_t first, std::size_t last) {
        std::array<T, block> v;
        std::array<std::uint32_t, block> vi;
        // Row pairs are numbered over all planes, (p, oh) -> p * out_h + oh: a block may span
        // planes, and its outputs are contiguous in y.
        const std::size_t pair_end = last * oh_n;
        for (std::size_t pair0 = first * oh_n; pair0 < pair_end; pair0 += rows_per_block) {
          const std::size_t pairs = std::min(rows_per_block, pair_end - pair0);
          for (std::size_t i = 0; i < pairs; ++i) {
            const std::size_t p = (pair0 + i) / oh_n, oh = (pair0 + i) % oh_n;
            const T* r0 = x + p * in + 2 * oh * in_w;
            const T* r1 = r0 + in_w;
            const std::uint32_t top = std::uint32_t(2 * oh * in_w), down = std::uint32_t(in_w);
            T* vr = v.data() + i * row;
            std::uint32_t* ir = vi.data() + i * row;
            for (std::size_t j = 0; j < row; ++j) {
              const bool bottom = pool_beats_branch_free(r1[j], r0[j]);
              vr[j] = select_bits(bottom, r1[j], r0[j]);
              ir[j] = top + std::uint32_t(j) + std::uint32_t(bottom) * down;
            }
          }
          T* yo = y + pair0 * ow_n;
          std::uint32_t* ao = argmax + pair0 * ow_n;
          for (std::size_t k = 0; k < pairs * ow_n; ++k) {
            const T l = v[2 * k], r = v[2 * k + 1];
            const std::uint32_t il = vi[2 * k], ir = vi[2 * k + 1];
            const bool right = bool(int(pool_beats_branch_free(r, l)) |
                                    (int(!pool_beats_branch_free(l, r)) & int(ir < il)));
            yo[k] = select_bits(right, r, l);
            ao[k] = il + std::uint32_t(right) * (ir - il);
          }
        }
      });
}
} // namespace detail

/// y = window max; argmax (nullable) = index of the max within x's plane.
template <class T>
void max_pool2d_fprop(const pool2d_geometry& g, const T* x, T* y, std::uint32_t* argmax) {
  g.validate();
  if (detail::is_pool_2x2_stride_2(g)) {
    if (argmax != nullptr && 2 * g.out_w() <= detail::max_pool_2x2_block_columns)
      detail::max_pool2d_fprop_2x2_two_pass(g, x, y, argmax);
    else
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

/// dx = 0, then dy scattered onto the argmax positions; dx overwritten. Plane by plane: the
/// clear and the scatter of one plane (LeNet's pool1: 24 x 24 floats, 2.3 KB) stay in L1, where
/// clearing a whole batch first (3.5 MB for pool1 at batch 256, beyond L2) sent the scatter back
/// to memory.
template <class T>
void max_pool2d_bprop(const pool2d_geometry& g, const T* dy, const std::uint32_t* argmax, T* dx) {
  g.validate();
  const std::size_t planes = g.batch * g.channels, ohw = g.out_plane(), in = g.in_plane();
  detail::parallel_chunks(detail::batch_threads(planes), planes,
                          [&](std::size_t, std::size_t b, std::size_t e) {
                            for (std::size_t p = b; p < e; ++p) {
                              T* dxp = dx + p * in;
                              std::fill(dxp, dxp + in, T(0));
                              for (std::size_t k = 0; k < ohw; ++k)
                                dxp[argmax[p * ohw + k]] += dy[p * ohw + k];
                            }
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
