// GEMM micro-kernel: one MR x NR tile of C held in registers while an A micro-panel and a B
// micro-panel (packed, or read in place where the layout allows) stream past it, then written to
// C through the epilogue.
//
// Words (used the same way in gemm_pack.hpp and gemm.hpp):
//   tile           MR rows x NR columns of C, kept in MR x NV accumulator registers.
//   lanes          elements of T in one register (simd_batch<T>::size); NR = NV * lanes.
//   micro-panel    packed operand slice feeding one tile: A as kc steps of MR values (one column
//                  of op(A) each), B as kc steps of NR values (one row of op(B) each).
//
// One step p of the kc loop (MR = 8, NV = 3 on AVX-512):
//
//            B micro-panel row p:   [ b0 | b1 | b2 ]          NV vector loads
//   A micro-panel column p:
//     a0 (broadcast) -------------> acc[0][0..2] += a0 * b    NV FMAs
//     a1                            acc[1][0..2] += a1 * b
//     ...                           ...
//     a7                            acc[7][0..2] += a7 * b
//
// Register budget: MR * NV accumulators + NV B registers + 1 broadcast (+1 temporary where the
// target has no FMA) must fit the register file, or the compiler spills inside the hot loop.
#pragma once

#include <bitgrad/core/simd.hpp>

#include <cstddef>
#include <type_traits>
#include <utility>

// Everything between the k loop and the store of a tile must be inlined, or the accumulators
// leave the registers: functions and lambdas (after the parameter list) on that path say so.
#if defined(__GNUC__) || defined(__clang__)
#define BITGRAD_ALWAYS_INLINE inline __attribute__((always_inline))
#define BITGRAD_INLINE_LAMBDA __attribute__((always_inline))
#define BITGRAD_NOINLINE __attribute__((noinline))
#else
#define BITGRAD_ALWAYS_INLINE inline
#define BITGRAD_INLINE_LAMBDA
#define BITGRAD_NOINLINE
#endif

namespace bitgrad::detail {

template <class F, std::size_t... I>
BITGRAD_ALWAYS_INLINE void static_for_impl(F& f, std::index_sequence<I...>) {
  (f(std::integral_constant<std::size_t, I>{}), ...);
}

/// Calls f(integral_constant<0>) ... f(integral_constant<N-1>): a loop unrolled by the language,
/// so register arrays indexed by it stay in registers at any optimisation level.
template <std::size_t N, class F>
BITGRAD_ALWAYS_INLINE void static_for(F&& f) {
  static_for_impl(f, std::make_index_sequence<N>{});
}

/// Register blocking of the micro-kernel for element type T on instruction set Arch.
template <class T, class Arch = simd_arch>
struct gemm_tile {
  /// One register of T.
  using batch = xsimd::batch<T, Arch>;
  /// Elements of T per register.
  static constexpr std::size_t lanes = batch::size;
  /// Vector registers of the target: 32 with AVX-512, 16 on SSE / AVX.
  static constexpr std::size_t registers = std::is_base_of_v<xsimd::avx512f, Arch> ? 32 : 16;
  /// Registers per tile row: AVX-512 8 x 3 = 24 accumulators + 3 B + 1 A of 32;
  /// SSE / AVX 6 x 2 = 12 accumulators + 2 B + 1 A (+1 temporary without FMA) of 16.
  static constexpr std::size_t nv = registers == 32 ? 3 : 2;
  /// Rows of the tile. 8 divides the channel counts of the small conv layers (8, 16, 32, 64).
  static constexpr std::size_t mr = registers == 32 ? 8 : 6;
  /// Columns of the tile.
  static constexpr std::size_t nr = nv * lanes;
  /// The accumulators of a tile of `rows` rows and `regs` registers per row (smaller tiles serve
  /// the bottom and right edges of C).
  template <std::size_t rows = mr, std::size_t regs = nv>
  using accumulators = batch[rows][regs];
};

/// acc = sum over p < kc of (A column p) x (B row p), for MU rows of A and the first NV registers
/// of each B row. Column p of A is the MU values from `a + p * lda` (a packed micro-panel:
/// lda = MR; or op(A) = A^T itself), row p of B starts at `b + p * ldb` (a packed micro-panel:
/// ldb = NR; or B itself).
template <class T, class Arch, std::size_t MU, std::size_t NV>
BITGRAD_ALWAYS_INLINE void
gemm_micro_kernel(std::size_t kc, const T* __restrict a, std::size_t lda, const T* __restrict b,
                  std::size_t ldb,
                  typename gemm_tile<T, Arch>::template accumulators<MU, NV>& acc) {
  using tile = gemm_tile<T, Arch>;
  using batch = typename tile::batch;
  static_for<MU>([&](auto i) BITGRAD_INLINE_LAMBDA {
    static_for<NV>([&](auto v) BITGRAD_INLINE_LAMBDA { acc[i][v] = batch(T(0)); });
  });
  for (std::size_t p = 0; p < kc; ++p) {
    batch bv[NV];
    static_for<NV>(
        [&](auto v) BITGRAD_INLINE_LAMBDA { bv[v] = batch::load_unaligned(b + v * tile::lanes); });
    static_for<MU>([&](auto i) BITGRAD_INLINE_LAMBDA {
      const batch av(a[i]);
      static_for<NV>([&](auto v)
                         BITGRAD_INLINE_LAMBDA { acc[i][v] = xsimd::fma(av, bv[v], acc[i][v]); });
    });
    a += lda;
    b += ldb;
  }
}

/// Where finished tiles go: C(i, j) = ep(alpha * acc + beta * C(i, j), i, j) at c + i * ldc + j,
/// with i, j the indices in the whole C (what the epilogue sees). beta == 0 never reads C.
template <class T, class Epilogue>
struct gemm_output {
  T* c;
  std::size_t ldc;
  T alpha;
  T beta;
  const Epilogue& ep;
};

/// Writes the `rows` x `cols` values at buf (rows `width` apart, aligned) to C(row.., col..):
/// whole registers while they fit in a row, then element by element. One copy per epilogue
/// serves every tile shape.
template <class T, class Arch, class Epilogue>
void gemm_store_ragged(const T* buf, std::size_t width, std::size_t rows,
                       const gemm_output<T, Epilogue>& out, std::size_t row, std::size_t col,
                       std::size_t cols) {
  using batch = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = batch::size;
  const std::size_t whole = cols / lanes * lanes;
  // Mode 0: value; 1: alpha value; 2: alpha value + beta C (as in gemm_store_tile).
  auto store = [&](auto mode) BITGRAD_INLINE_LAMBDA {
    constexpr int m = decltype(mode)::value;
    for (std::size_t i = 0; i < rows; ++i) {
      T* const dst = out.c + (row + i) * out.ldc + col;
      const T* const src = buf + i * width;
      for (std::size_t j = 0; j < whole; j += lanes) {
        batch value = batch::load_aligned(src + j);
        if constexpr (m >= 1) value *= batch(out.alpha);
        if constexpr (m == 2)
          value = xsimd::fma(batch(out.beta), batch::load_unaligned(dst + j), value);
        out.ep.apply(value, row + i, col + j).store_unaligned(dst + j);
      }
      for (std::size_t j = whole; j < cols; ++j) {
        T value = src[j];
        if constexpr (m >= 1) value *= out.alpha;
        if constexpr (m == 2) value += out.beta * dst[j];
        dst[j] = out.ep(value, row + i, col + j);
      }
    }
  };
  if (out.beta != T(0)) {
    store(std::integral_constant<int, 2>{});
  } else if (out.alpha != T(1)) {
    store(std::integral_constant<int, 1>{});
  } else {
    store(std::integral_constant<int, 0>{});
  }
}

/// Writes a tile of MU rows and NV registers per row, of which the first `cols` columns are
/// valid, to C(row.., col..).
template <class T, class Arch, std::size_t MU, std::size_t NV, class Epilogue>
BITGRAD_ALWAYS_INLINE void
gemm_store_tile(const typename gemm_tile<T, Arch>::template accumulators<MU, NV>& acc,
                const gemm_output<T, Epilogue>& out, std::size_t row, std::size_t col,
                std::size_t cols) {
  using tile = gemm_tile<T, Arch>;
  using batch = typename tile::batch;
  constexpr std::size_t width = NV * tile::lanes;
  const batch alpha(out.alpha);
  T* const c = out.c + row * out.ldc + col;
  if (cols == width) {
    // Whole registers: straight from the accumulators. Mode 0: acc; 1: alpha acc;
    // 2: alpha acc + beta C.
    auto store_all = [&](auto mode) BITGRAD_INLINE_LAMBDA {
      static_for<MU>([&](auto i) BITGRAD_INLINE_LAMBDA {
        static_for<NV>([&](auto v) BITGRAD_INLINE_LAMBDA {
          T* const dst = c + i * out.ldc + v * tile::lanes;
          batch value = acc[i][v];
          if constexpr (decltype(mode)::value >= 1) value *= alpha;
          if constexpr (decltype(mode)::value == 2) {
            value = xsimd::fma(batch(out.beta), batch::load_unaligned(dst), value);
          }
          out.ep.apply(value, row + i, col + v * tile::lanes).store_unaligned(dst);
        });
      });
    };
    if (out.beta != T(0)) {
      store_all(std::integral_constant<int, 2>{});
    } else if (out.alpha != T(1)) {
      store_all(std::integral_constant<int, 1>{});
    } else {
      store_all(std::integral_constant<int, 0>{});
    }
    return;
  }
  // Ragged right edge of C: through memory.
  alignas(Arch::alignment()) T buf[MU * width];
  static_for<MU>([&](auto i) BITGRAD_INLINE_LAMBDA {
    static_for<NV>([&](auto v) BITGRAD_INLINE_LAMBDA {
      acc[i][v].store_aligned(buf + i * width + v * tile::lanes);
    });
  });
  gemm_store_ragged<T, Arch>(buf, width, MU, out, row, col, cols);
}

/// A tile at the bottom or right edge of C: `rows` < MR rows or `regs` < NV registers per row.
/// The accumulators go to buf (MR x NR, aligned) for gemm_store_ragged; being independent of
/// the epilogue, this is compiled once per element type, whichever epilogues the callers use.
template <class T, class Arch>
BITGRAD_NOINLINE void gemm_edge_tile(std::size_t kc, const T* a, std::size_t lda, const T* b,
                                     std::size_t ldb, std::size_t rows, std::size_t regs, T* buf) {
  using tile = gemm_tile<T, Arch>;
  static_for<tile::mr>([&](auto i) BITGRAD_INLINE_LAMBDA {
    static_for<tile::nv>([&](auto v) BITGRAD_INLINE_LAMBDA {
      constexpr std::size_t mu = decltype(i)::value + 1, nv = decltype(v)::value + 1;
      if constexpr (mu < tile::mr || nv < tile::nv) {
        if (rows == mu && regs == nv) {
          typename tile::template accumulators<mu, nv> acc;
          gemm_micro_kernel<T, Arch, mu, nv>(kc, a, lda, b, ldb, acc);
          static_for<mu>([&](auto r) BITGRAD_INLINE_LAMBDA {
            static_for<nv>([&](auto w) BITGRAD_INLINE_LAMBDA {
              acc[r][w].store_aligned(buf + r * tile::nr + w * tile::lanes);
            });
          });
        }
      }
    });
  });
}

/// Multiplies `rows` rows of A by `cols` columns of B (operands as in gemm_micro_kernel) and
/// writes the result to C(row.., col..) with the smallest tile that covers it. Full tiles stay
/// in registers through the epilogue; the smaller ones at the bottom and right edges of C pass
/// through memory, so that each epilogue inlines one kernel copy (compile time) and the edge
/// kernels are shared. B must hold whole registers (ceil(cols / lanes) of them) on every row.
template <class T, class Arch = simd_arch, class Epilogue>
BITGRAD_ALWAYS_INLINE void gemm_tile_update(std::size_t kc, const T* a, std::size_t lda, const T* b,
                                            std::size_t ldb, const gemm_output<T, Epilogue>& out,
                                            std::size_t row, std::size_t col, std::size_t rows,
                                            std::size_t cols) {
  using tile = gemm_tile<T, Arch>;
  const std::size_t regs = (cols + tile::lanes - 1) / tile::lanes;
  if (rows == tile::mr && regs == tile::nv) {
    typename tile::template accumulators<> acc;
    gemm_micro_kernel<T, Arch, tile::mr, tile::nv>(kc, a, lda, b, ldb, acc);
    gemm_store_tile<T, Arch, tile::mr, tile::nv>(acc, out, row, col, cols);
    return;
  }
  alignas(Arch::alignment()) T buf[tile::mr * tile::nr];
  gemm_edge_tile<T, Arch>(kc, a, lda, b, ldb, rows, regs, buf);
  gemm_store_ragged<T, Arch>(buf, tile::nr, rows, out, row, col, cols);
}

} // namespace bitgrad::detail
