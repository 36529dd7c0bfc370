// Optimised GEMM: C = epilogue(alpha * op(A) * op(B) + beta * C), row-major, any transposition
// and leading dimensions. Same contract as the reference twin bitgrad::ref::gemm.
//
// Structure (the Goto / BLIS scheme): pack -> register-blocked micro-kernel -> epilogue.
//
//   for ic in m step MC                  A block MC x KC: packed once per (ic, pc), lives in L3
//     for pc in k step KC
//       pack op(A)[ic.., pc..] -> A~     micro-panels of MR rows        (gemm_pack.hpp)
//       for jc in n step NC              B block KC x NC: packed per (ic, pc, jc), lives in L2
//         pack op(B)[pc.., jc..] -> B~   micro-panels of NR columns
//         for ir in MC step MR           one A micro-panel (MR x KC) stays in L1 ...
//           for jr in NC step NR         ... while the B micro-panels stream past it from L2
//             acc = A~[ir] * B~[jr]      MR x NR accumulators in registers (gemm_microkernel.hpp)
//             C = alpha acc + beta C     through the epilogue after the last pc block only
//
//   op(B) block, KC x NC, packed:            op(A) block, MC x KC, packed:
//       |<-NR->|<-NR->|                          ---------------------- KC
//       +------+------+--                      ^ +--------------------+
//    KC |  jr  | jr+1 |      micro-panel jr:  MR | ir: col 0 (MR values), col 1, ...
//       |      |      |      row 0 (NR values),  v +--------------------+
//       +------+------+--    row 1, ...            | ir + 1             |
//
//   C block (MC x NC): tile (ir, jr) = MR rows x NR columns, one micro-kernel call.
//
// Blocking for this project's reference machine (AMD EPYC Zen 4: L1d 32 KiB and L2 1 MiB per
// core, L3 32 MiB shared; AVX-512 with MR x NR = 8 x 48 floats / 8 x 24 doubles):
//   KC: one A micro-panel, MR * KC * sizeof(T), takes ~12 KiB of L1   -> KC = 384 float, 192 double
//   NC: one packed B block, KC * NC * sizeof(T), takes ~half of L2    -> NC = 336 at full KC
//   MC: one packed A block, MC * KC * sizeof(T), takes ~1.5 MiB of L3  -> MC = 1024 at full KC
// Blocks are split evenly (k = 400 runs as two blocks of 200, not 384 + 16), and when k is short
// NC and MC grow so the L2 / L3 budgets stay filled (conv layers: k = 9 .. 600).
//
// Operands already in the micro-kernel's layout are not copied (small conv and linear shapes,
// where packing would cost as much as it saves): B read in place when its rows are contiguous
// (op(B) = B) and it is read at most twice (m <= 2 MR) or is small; A read in place when its
// columns are contiguous (op(A) = A^T) and it is small. Transposing packs use register-square
// transposes (gemm_transpose.hpp). C = A B^T with few columns and a long k (the weight gradient
// of a first conv layer) skips the scheme altogether: inner products, gemm_dot.hpp.
//
// Threads (OpenMP, when BITGRAD_WITH_OPENMP is defined): C is cut into a grid of independent
// rectangles, one per thread, each running the loops above with its own thread-local pack
// buffers; every element of C sees the same operations whatever the thread count, so results
// are bitwise reproducible. Problems under gemm_parallel_min_flops per thread, and calls from
// inside a parallel region, run on the calling thread.
#pragma once

#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm_dot.hpp>
#include <bitgrad/kernels/gemm_microkernel.hpp>
#include <bitgrad/kernels/gemm_pack.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/ref/gemm.hpp>
#include <bitgrad/kernels/transpose.hpp>

#include <algorithm>
#include <cstddef>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace bitgrad {

namespace detail {

/// Cache blocking of the GEMM loops for element type T on instruction set Arch (see the top of
/// this header). Budgets are in bytes; block sizes derive from them and the tile.
template <class T, class Arch = simd_arch>
struct gemm_blocking {
  using tile = gemm_tile<T, Arch>;
  /// One packed A micro-panel (MR x KC) stays in L1 while B micro-panels stream past it.
  static constexpr std::size_t l1_bytes = 12 * 1024;
  /// One packed B block (KC x NC) stays in L2 while the A micro-panels of the block sweep it.
  static constexpr std::size_t l2_bytes = 512 * 1024;
  /// One packed A block (MC x KC) per thread stays in L3 while B blocks sweep it.
  static constexpr std::size_t l3_bytes = 1536 * 1024;
  /// Depth of a k block.
  static constexpr std::size_t kc = l1_bytes / (tile::mr * sizeof(T)) / 16 * 16;
  /// Width of a B block for a k block of depth `depth` (a multiple of NR).
  static constexpr std::size_t nc(std::size_t depth) {
    return std::max(tile::nr, l2_bytes / (depth * sizeof(T)) / tile::nr * tile::nr);
  }
  /// Operands up to this size are read in place rather than packed (see gemm_rectangle).
  static constexpr std::size_t direct_bytes = 64 * 1024;
  /// Height of an A block for a k block of depth `depth` (a multiple of MR).
  static constexpr std::size_t mc(std::size_t depth) {
    return std::max(tile::mr, l3_bytes / (depth * sizeof(T)) / tile::mr * tile::mr);
  }
};

/// Below this many flops (2 m n k) per thread, an extra thread costs more than it saves. Waking
/// an OpenMP thread that sleeps (OMP_WAIT_POLICY=passive) takes tens of microseconds, the time
/// of about 2^22 flops here; a spinning one (libgomp's default) a few: 2^20. Measured with
/// bench_gemm on 2 threads: passive, 128^3 ran at 54 GFLOP/s on 2 threads against 108 on 1;
/// spinning, 64 x 196 x 288 ran at 100 on 1 thread and OpenBLAS at 158 on 2.
inline std::size_t gemm_parallel_min_flops() {
  return std::size_t(1) << (omp_threads_sleep() ? 22 : 20);
}

/// The block size that splits `extent` into the fewest blocks of at most `limit` (rounded up to
/// a multiple of `unit`, so blocks may exceed `limit` by less than `unit`) of near-equal size.
constexpr std::size_t gemm_even_block(std::size_t extent, std::size_t limit, std::size_t unit) {
  const std::size_t blocks = (extent + limit - 1) / limit;
  const std::size_t size = (extent + blocks - 1) / blocks;
  return (size + unit - 1) / unit * unit;
}

/// C = ep(beta * C) (C = ep(0) when beta == 0): the product term is zero (k == 0 or alpha == 0).
template <class T, class Epilogue>
void gemm_scale(std::size_t m, std::size_t n, T beta, T* c, std::size_t ldc, const Epilogue& ep) {
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      T& cij = c[i * ldc + j];
      cij = ep(beta == T(0) ? T(0) : beta * cij, i, j);
    }
  }
}

/// Whether C = A B^T (both stored with k contiguous) runs faster as inner products
/// (gemm_dot.hpp) than packed through the outer-product micro-kernel: for few columns (which
/// would leave lanes of the NR-wide tile idle, and cost a transposing pack of B) and a long k
/// (which amortises the horizontal sums). Measured with bench_gemm: conv1 wgrad of LeNet
/// (6 x 25 x 576) and of the VGG net (32 x 9 x 784) gain 1.4-2x, while k = 84 (a classifier
/// layer) or n = 150 stay faster packed.
template <class T>
bool gemm_prefers_dot(std::size_t n, std::size_t k) {
  return n <= gemm_dot_tile<T>::max_n && k >= 256;
}

/// Where the micro-kernel finds the operands of one (ic, pc, jc) block, packed or in place.
template <class T>
struct gemm_block {
  std::size_t mc, nc, kc;
  /// Rows i.. of the block's A start at a + i * a_row; column p is a_ld further per p.
  const T* a;
  std::size_t a_row, a_ld;
  /// Columns j < b_direct_end are read in place: b + j, b_ld further per p ...
  const T* b;
  std::size_t b_ld, b_direct_end;
  /// ... the others from packed micro-panels: b_packed + j * kc, NR further per p.
  const T* b_packed;
  /// C's row and column at the block's top-left corner.
  std::size_t row, col;
};

/// Every tile of one block: the A micro-panel stays in L1 while B micro-panels stream from L2.
/// A function of its own (not a lambda in gemm_rectangle) so that the partial-sum version
/// (epilogue::identity) is compiled once, whatever the caller's epilogue.
template <class T, class Epilogue>
void gemm_macro_kernel(const gemm_block<T> x, const gemm_output<T, Epilogue> out) {
  using tile = gemm_tile<T>;
  for (std::size_t ir = 0; ir < x.mc; ir += tile::mr) {
    const std::size_t rows = std::min(tile::mr, x.mc - ir);
    const T* const a_panel = x.a + ir * x.a_row;
    for (std::size_t jr = 0; jr < x.nc; jr += tile::nr) {
      const bool in_place = jr < x.b_direct_end;
      gemm_tile_update<T>(x.kc, a_panel, x.a_ld, in_place ? x.b + jr : x.b_packed + jr * x.kc,
                          in_place ? x.b_ld : tile::nr, out, x.row + ir, x.col + jr, rows,
                          std::min(tile::nr, x.nc - jr));
    }
  }
}

/// Runs the blocked loops over rows [row_begin, row_end) and columns [col_begin, col_end) of C,
/// or the inner products of gemm_dot.hpp when `inner_products` (decided once for the whole C).
/// Pointers and indices are those of the whole problem.
template <class T, class Epilogue>
void gemm_rectangle(transpose trans_a, transpose trans_b, std::size_t row_begin,
                    std::size_t row_end, std::size_t col_begin, std::size_t col_end, std::size_t k,
                    T alpha, const T* a, std::size_t lda, const T* b, std::size_t ldb, T beta, T* c,
                    std::size_t ldc, const Epilogue& ep, bool inner_products) {
  using tile = gemm_tile<T>;
  using blocking = gemm_blocking<T>;
  constexpr std::size_t align = std::max<std::size_t>(64, simd_arch::alignment());
  const std::size_t m = row_end - row_begin;
  const std::size_t n = col_end - col_begin;
  if (inner_products) {
    gemm_dot_rectangle(row_begin, row_end, col_begin, col_end, k, alpha, a, lda, b, ldb, beta, c,
                       ldc, ep);
    return;
  }
  const std::size_t kc_block = gemm_even_block(k, blocking::kc, 1);
  const std::size_t mc_block = gemm_even_block(m, blocking::mc(kc_block), tile::mr);
  const std::size_t nc_block = gemm_even_block(n, blocking::nc(kc_block), tile::nr);
  T* const a_packed = gemm_thread_buffer<T, align>(0).reserve(mc_block * kc_block);
  T* const b_packed = gemm_thread_buffer<T, align>(1).reserve(kc_block * nc_block);

  // Operands read in place instead of packed (only where their layout already suits the
  // micro-kernel): B when its rows are contiguous and it is read at most twice (at most two row
  // panels) or is small; A when its columns are contiguous (A^T stored) and it is small. Only a
  // ragged last column panel of B is packed, so no load runs past the end of a row.
  const bool direct_b = trans_b == transpose::no &&
                        (m <= 2 * tile::mr || k * n * sizeof(T) <= blocking::direct_bytes);
  const bool direct_a = trans_a == transpose::yes && m * k * sizeof(T) <= blocking::direct_bytes;

  for (std::size_t ic = row_begin; ic < row_end; ic += mc_block) {
    const std::size_t mc = std::min(mc_block, row_end - ic);
    for (std::size_t pc = 0; pc < k; pc += kc_block) {
      const std::size_t kc = std::min(kc_block, k - pc);
      const T* const a_block = trans_a == transpose::no ? a + ic * lda + pc : a + pc * lda + ic;
      if (!direct_a) gemm_pack_a<tile::mr>(trans_a, a_block, lda, mc, kc, a_packed);
      // Earlier k blocks leave partial sums in C; the last one adds its part and applies ep.
      const T beta_block = pc == 0 ? beta : T(1);
      const bool last = pc + kc == k;
      for (std::size_t jc = col_begin; jc < col_end; jc += nc_block) {
        const std::size_t nc = std::min(nc_block, col_end - jc);
        const T* const b_block = trans_b == transpose::no ? b + pc * ldb + jc : b + jc * ldb + pc;
        // Column panel jr of the block: packed, or B itself.
        std::size_t direct_end = 0; // panels starting before this column are read in place
        if (!direct_b) {
          gemm_pack_b<tile::nr>(trans_b, b_block, ldb, kc, nc, b_packed);
        } else {
          direct_end = nc % tile::lanes == 0 ? nc : nc / tile::nr * tile::nr;
          if (direct_end < nc) {
            gemm_pack_b<tile::nr>(trans_b, b_block + direct_end, ldb, kc, nc - direct_end,
                                  b_packed + direct_end * kc);
          }
        }
        const gemm_block<T> block{mc,
                                  nc,
                                  kc,
                                  direct_a ? a_block : a_packed,
                                  direct_a ? std::size_t(1) : kc,
                                  direct_a ? lda : tile::mr,
                                  b_block,
                                  ldb,
                                  direct_end,
                                  b_packed,
                                  ic,
                                  jc};
        if (last) {
          gemm_macro_kernel(block, gemm_output<T, Epilogue>{c, ldc, alpha, beta_block, ep});
        } else {
          gemm_macro_kernel(block,
                            gemm_output<T, epilogue::identity>{c, ldc, alpha, beta_block, {}});
        }
      }
    }
  }
}

/// How many threads a GEMM of this size should use (1 without OpenMP or inside a parallel region).
inline int gemm_thread_count(std::size_t m, std::size_t n, std::size_t k) {
#if defined(BITGRAD_WITH_OPENMP)
  if (omp_in_parallel()) return 1;
  const std::size_t by_work = 2 * m * n * k / gemm_parallel_min_flops();
  return static_cast<int>(std::clamp<std::size_t>(by_work, 1, std::size_t(omp_get_max_threads())));
#else
  (void)m, (void)n, (void)k;
  return 1;
#endif
}

/// Rows of the thread grid (its columns are threads / rows) that give the smallest rectangle per
/// thread, counted in whole tiles; ties go to the smaller rectangle perimeter (less packing).
inline std::size_t gemm_grid_rows(std::size_t threads, std::size_t m_tiles, std::size_t n_tiles) {
  std::size_t best = 1, best_area = 0, best_edge = 0;
  for (std::size_t rows = 1; rows <= threads; ++rows) {
    if (threads % rows != 0) continue;
    const std::size_t mt = (m_tiles + rows - 1) / rows;
    const std::size_t nt = (n_tiles + threads / rows - 1) / (threads / rows);
    if (best_area == 0 || mt * nt < best_area || (mt * nt == best_area && mt + nt < best_edge)) {
      best = rows;
      best_area = mt * nt;
      best_edge = mt + nt;
    }
  }
  return best;
}

/// Cuts C into a grid of rectangles, one per thread, and runs gemm_rectangle on each (on the
/// calling thread alone when gemm_thread_count says one is enough).
template <class T, class Epilogue>
void gemm_threads(transpose trans_a, transpose trans_b, std::size_t m, std::size_t n, std::size_t k,
                  T alpha, const T* a, std::size_t lda, const T* b, std::size_t ldb, T beta, T* c,
                  std::size_t ldc, const Epilogue& ep) {
  const bool dot =
      trans_a == transpose::no && trans_b == transpose::yes && gemm_prefers_dot<T>(n, k);
#if defined(BITGRAD_WITH_OPENMP)
  const int threads = gemm_thread_count(m, n, k);
  if (threads > 1) {
    using tile = gemm_tile<T>;
#pragma omp parallel num_threads(threads)
    {
      const std::size_t team = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t id = static_cast<std::size_t>(omp_get_thread_num());
      const std::size_t m_tiles = (m + tile::mr - 1) / tile::mr;
      const std::size_t n_tiles = (n + tile::nr - 1) / tile::nr;
      const std::size_t grid_rows = gemm_grid_rows(team, m_tiles, n_tiles);
      const std::size_t grid_cols = team / grid_rows;
      const std::size_t gr = id / grid_cols, gc = id % grid_cols;
      const std::size_t row_begin = std::min(m, gr * m_tiles / grid_rows * tile::mr);
      const std::size_t row_end = std::min(m, (gr + 1) * m_tiles / grid_rows * tile::mr);
      const std::size_t col_begin = std::min(n, gc * n_tiles / grid_cols * tile::nr);
      const std::size_t col_end = std::min(n, (gc + 1) * n_tiles / grid_cols * tile::nr);
      if (row_begin < row_end && col_begin < col_end) {
        gemm_rectangle(trans_a, trans_b, row_begin, row_end, col_begin, col_end, k, alpha, a, lda,
                       b, ldb, beta, c, ldc, ep, dot);
      }
    }
    return;
  }
#endif
  gemm_rectangle(trans_a, trans_b, 0, m, 0, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep, dot);
}

} // namespace detail

/// C(m x n) = ep(alpha * op(A) * op(B) + beta * C), row-major with leading dimensions.
/// op(A) is m x k: A is m x k (lda >= k) or, transposed, k x m (lda >= m). Same for B (k x n).
/// beta == 0 never reads C (NaN there stays out); ep is applied once to every element of C.
/// k == 0 or alpha == 0 leave C = ep(beta * C) without reading A or B.
template <class T, class Epilogue = epilogue::identity>
void gemm(transpose trans_a, transpose trans_b, std::size_t m, std::size_t n, std::size_t k,
          T alpha, const T* a, std::size_t lda, const T* b, std::size_t ldb, T beta, T* c,
          std::size_t ldc, const Epilogue& ep = {}) {
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == T(0)) {
    detail::gemm_scale(m, n, beta, c, ldc, ep);
    return;
  }
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
  } else {
    detail::gemm_threads(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
  }
}

} // namespace bitgrad
