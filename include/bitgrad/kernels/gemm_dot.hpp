// Inner-product GEMM for C = A B^T with A (m x k) and B (n x k) both stored row by row: every
// C(i, j) is the dot product of two contiguous rows of length k. Nothing is packed; the
// registers run along k.
//
// It serves the shapes where the outer-product kernel (gemm_microkernel.hpp) would spend more
// time packing and on idle lanes than multiplying: few output columns (n below a register
// tile), long k. These are the weight gradients of the first conv layers (dW = dY col^T with
// n = Cin*kh*kw = 9 or 25 and k = the output pixels) and classifier layers with few outputs.
//
// One block, MD rows of A by ND rows of B (4 x 4 on AVX-512):
//
//   k -> | p .. p + lanes - 1 |                 acc[i][j] += a_i[p..] * b_j[p..]   (MD x ND FMAs)
//   a_0  [ register        ]    b_0 [ register ]
//   ...                         ...              after the k loop: sums[i][j] = lane sum of
//   a_3  [ register        ]    b_3 [ register ]  acc[i][j], plus the k tail
//
// k is cut into chunks that keep B's rows in L2 while A's rows pass; each chunk's dot products
// add into an m x n buffer of sums, which is written to C through the epilogue at the end.
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/gemm_microkernel.hpp>
#include <bitgrad/kernels/gemm_pack.hpp>
#include <bitgrad/kernels/gemm_transpose.hpp>

#include <algorithm>
#include <cstddef>

namespace bitgrad::detail {

/// Register blocking of the inner-product kernel for element type T on instruction set Arch.
template <class T, class Arch = simd_arch>
struct gemm_dot_tile {
  using batch = xsimd::batch<T, Arch>;
  static constexpr std::size_t lanes = batch::size;
  /// Rows of A and of B per block: 4 x 4 = 16 accumulators + 4 A + 1 B of 32 registers
  /// (AVX-512); 2 x 4 = 8 + 2 + 1 of 16.
  static constexpr std::size_t md = gemm_tile<T, Arch>::registers == 32 ? 4 : 2;
  static constexpr std::size_t nd = 4;
  /// Widest B (n) the inner products are used for (see gemm_prefers_dot).
  static constexpr std::size_t max_n = 32;
  /// Length of a k chunk: max_n rows of B over one chunk take half of L2, so B stays there
  /// while the rows of A pass.
  static constexpr std::size_t chunk = 512 * 1024 / (max_n * sizeof(T)) / lanes * lanes;
};

/// sums[i * lds + j] += sum over p < k of a[i * lda + p] * b[j * ldb + p], for i < MU, j < NU.
template <class T, class Arch, std::size_t MU, std::size_t NU>
void gemm_dot_block(std::size_t k, const T* __restrict a, std::size_t lda, const T* __restrict b,
                    std::size_t ldb, T* __restrict sums, std::size_t lds) {
  using batch = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = batch::size;
  // The accumulators, padded with zeros to whole groups of `lanes` for haddp.
  constexpr std::size_t count = MU * NU, groups = (count + lanes - 1) / lanes;
  batch acc[groups * lanes];
  static_for<groups * lanes>([&](auto r) BITGRAD_INLINE_LAMBDA { acc[r] = batch(T(0)); });
  const std::size_t whole = k / lanes * lanes;
  for (std::size_t p = 0; p < whole; p += lanes) {
    batch av[MU];
    static_for<MU>([&](auto i)
                       BITGRAD_INLINE_LAMBDA { av[i] = batch::load_unaligned(a + i * lda + p); });
    static_for<NU>([&](auto j) BITGRAD_INLINE_LAMBDA {
      const batch bv = batch::load_unaligned(b + j * ldb + p);
      static_for<MU>([&](auto i) BITGRAD_INLINE_LAMBDA {
        acc[i * NU + j] = xsimd::fma(av[i], bv, acc[i * NU + j]);
      });
    });
  }
  alignas(Arch::alignment()) T total[groups * lanes];
  // Lane sums, `lanes` accumulators at a time: store them as the rows of a square, transpose it
  // (gemm_transpose.hpp) and add its rows. (xsimd 8.1's haddp permutes lanes on AVX-512.)
  static_for<groups>([&](auto g) BITGRAD_INLINE_LAMBDA {
    alignas(Arch::alignment()) T square[lanes * lanes], columns[lanes * lanes];
    static_for<lanes>([&](auto r) BITGRAD_INLINE_LAMBDA {
      acc[g * lanes + r].store_aligned(square + r * lanes);
    });
    gemm_transpose_square<T, lanes>(square, lanes, columns, lanes);
    batch sum = batch::load_aligned(columns);
    for (std::size_t r = 1; r < lanes; ++r) sum += batch::load_aligned(columns + r * lanes);
    sum.store_aligned(total + g * lanes);
  });
  for (std::size_t i = 0; i < MU; ++i) {
    for (std::size_t j = 0; j < NU; ++j) {
      T s = total[i * NU + j];
      for (std::size_t p = whole; p < k; ++p) s += a[i * lda + p] * b[j * ldb + p];
      sums[i * lds + j] += s;
    }
  }
}

/// gemm_dot_block for a block of `rows` <= MD rows of A and `cols` <= ND rows of B.
template <class T, class Arch>
BITGRAD_NOINLINE void gemm_dot_any_block(std::size_t k, const T* a, std::size_t lda, const T* b,
                                         std::size_t ldb, T* sums, std::size_t lds,
                                         std::size_t rows, std::size_t cols) {
  using tile = gemm_dot_tile<T, Arch>;
  static_for<tile::md>([&](auto i) BITGRAD_INLINE_LAMBDA {
    static_for<tile::nd>([&](auto j) BITGRAD_INLINE_LAMBDA {
      constexpr std::size_t mu = decltype(i)::value + 1, nu = decltype(j)::value + 1;
      if (rows == mu && cols == nu) gemm_dot_block<T, Arch, mu, nu>(k, a, lda, b, ldb, sums, lds);
    });
  });
}

/// Rows [row_begin, row_end) and columns [col_begin, col_end) of C = ep(alpha A B^T + beta C),
/// A stored m x k (lda), B stored n x k (ldb), by inner products (pointers and indices are those
/// of the whole problem).
template <class T, class Epilogue>
void gemm_dot_rectangle(std::size_t row_begin, std::size_t row_end, std::size_t col_begin,
                        std::size_t col_end, std::size_t k, T alpha, const T* a, std::size_t lda,
                        const T* b, std::size_t ldb, T beta, T* c, std::size_t ldc,
                        const Epilogue& ep) {
  using tile = gemm_dot_tile<T>;
  constexpr std::size_t align = std::max<std::size_t>(64, simd_arch::alignment());
  const std::size_t m = row_end - row_begin, n = col_end - col_begin;
  T* const sums = gemm_thread_buffer<T, align>(2).reserve(m * n);
  std::fill_n(sums, m * n, T(0));
  // k chunks of a fixed length, split evenly into whole registers. The order of the sums depends
  // on k alone: not on how C was cut between threads, nor on where A and B sit in memory (an
  // element-wise head up to a register boundary, tried for aligned loads, made every bit of C
  // depend on the heap's layout, so two runs of one training could differ).
  const std::size_t chunks = (k + tile::chunk - 1) / tile::chunk;
  const std::size_t chunk =
      chunks == 0 ? 0 : ((k + chunks - 1) / chunks + tile::lanes - 1) / tile::lanes * tile::lanes;
  for (std::size_t pc = 0; pc < k; pc += chunk) {
    const std::size_t kc = std::min(chunk, k - pc);
    for (std::size_t i = 0; i < m; i += tile::md) {
      const std::size_t rows = std::min(tile::md, m - i);
      const T* const a_rows = a + (row_begin + i) * lda + pc;
      for (std::size_t j = 0; j < n; j += tile::nd) {
        const std::size_t cols = std::min(tile::nd, n - j);
        const T* const b_rows = b + (col_begin + j) * ldb + pc;
        if (rows == tile::md && cols == tile::nd) {
          gemm_dot_block<T, simd_arch, tile::md, tile::nd>(kc, a_rows, lda, b_rows, ldb,
                                                           sums + i * n + j, n);
        } else {
          gemm_dot_any_block<T, simd_arch>(kc, a_rows, lda, b_rows, ldb, sums + i * n + j, n, rows,
                                           cols);
        }
      }
    }
  }
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      const std::size_t row = row_begin + i, col = col_begin + j;
      T& cij = c[row * ldc + col];
      T value = alpha * sums[i * n + j];
      if (beta != T(0)) value += beta * cij;
      cij = ep(value, row, col);
    }
  }
}

} // namespace bitgrad::detail
