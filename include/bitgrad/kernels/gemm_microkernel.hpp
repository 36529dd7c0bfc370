// GEMM micro-kernel: one MR x NR tile of C held in registers while a packed A micro-panel and a
// packed B micro-panel stream past it, then written to C through the epilogue.
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

#if defined(__GNUC__) || defined(__clang__)
#define BITGRAD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define BITGRAD_ALWAYS_INLINE inline
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
BITGRAD_ALWAYS_INLINE void gemm_micro_kernel(
    std::size_t kc, const T* __restrict a, std::size_t lda, const T* __restrict b, std::size_t ldb,
    typename gemm_tile<T, Arch>::template accumulators<MU, NV>& acc) {
  using tile = gemm_tile<T, Arch>;
  using batch = typename tile::batch;
  static_for<MU>([&](auto i) {
    static_for<NV>([&](auto v) { acc[i][v] = batch(T(0)); });
  });
  for (std::size_t p = 0; p < kc; ++p) {
    batch bv[NV];
    static_for<NV>([&](auto v) { bv[v] = batch::load_unaligned(b + v * tile::lanes); });
    static_for<MU>([&](auto i) {
      const batch av(a[i]);
      static_for<NV>([&](auto v) { acc[i][v] = xsimd::fma(av, bv[v], acc[i][v]); });
    });
    a += lda;
    b += ldb;
  }
}

/// Where finished tiles go: C = ep(alpha * acc + beta * C), with C's row `row0` and column `col0`
/// the global indices handed to the epilogue. beta == 0 never reads C.
template <class T, class Epilogue>
struct gemm_output {
  T* c;
  std::size_t ldc;
  T alpha;
  T beta;
  const Epilogue& ep;
};

/// Writes a tile of MU rows and NV registers per row, of which the first `cols` columns are
/// valid, to C(row.., col..).
template <class T, class Arch, std::size_t MU, std::size_t NV, class Epilogue>
BITGRAD_ALWAYS_INLINE void gemm_store_tile(
    const typename gemm_tile<T, Arch>::template accumulators<MU, NV>& acc,
    const gemm_output<T, Epilogue>& out, std::size_t row, std::size_t col, std::size_t cols) {
  using tile = gemm_tile<T, Arch>;
  using batch = typename tile::batch;
  constexpr std::size_t width = NV * tile::lanes;
  const batch alpha(out.alpha);
  T* const c = out.c + row * out.ldc + col;
  if (cols == width) {
    // Whole registers: straight from the accumulators. Mode 0: acc; 1: alpha acc;
    // 2: alpha acc + beta C.
    auto store_all = [&](auto mode) {
      static_for<MU>([&](auto i) {
        static_for<NV>([&](auto v) {
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
  // Ragged right edge of C: through memory, whole registers while they fit in the row, then
  // element by element.
  alignas(Arch::alignment()) T buf[MU * width];
  static_for<MU>([&](auto i) {
    static_for<NV>([&](auto v) { acc[i][v].store_aligned(buf + i * width + v * tile::lanes); });
  });
  for (std::size_t i = 0; i < MU; ++i) {
    T* const dst = c + i * out.ldc;
    const T* const src = buf + i * width;
    std::size_t j = 0;
    for (; j + tile::lanes <= cols; j += tile::lanes) {
      batch value = batch::load_aligned(src + j) * alpha;
      if (out.beta != T(0)) value = xsimd::fma(batch(out.beta), batch::load_unaligned(dst + j), value);
      out.ep.apply(value, row + i, col + j).store_unaligned(dst + j);
    }
    for (; j < cols; ++j) {
      T value = out.alpha * src[j];
      if (out.beta != T(0)) value += out.beta * dst[j];
      dst[j] = out.ep(value, row + i, col + j);
    }
  }
}

/// Multiplies `rows` rows of A by `cols` columns of B (operands as in gemm_micro_kernel) and
/// writes the result to C(row.., col..), with the smallest tile that covers it: at the bottom
/// and right edges of C fewer rows and registers do the work. B must hold whole registers
/// (ceil(cols / lanes) of them) on every row.
template <class T, class Arch = simd_arch, class Epilogue>
BITGRAD_ALWAYS_INLINE void gemm_tile_update(std::size_t kc, const T* a, std::size_t lda,
                                            const T* b, std::size_t ldb,
                                            const gemm_output<T, Epilogue>& out, std::size_t row,
                                            std::size_t col, std::size_t rows, std::size_t cols) {
  using tile = gemm_tile<T, Arch>;
  const std::size_t regs = (cols + tile::lanes - 1) / tile::lanes;
  auto run = [&](auto mu, auto nv) {
    constexpr std::size_t mu_ = decltype(mu)::value, nv_ = decltype(nv)::value;
    typename tile::template accumulators<mu_, nv_> acc;
    gemm_micro_kernel<T, Arch, mu_, nv_>(kc, a, lda, b, ldb, acc);
    gemm_store_tile<T, Arch, mu_, nv_>(acc, out, row, col, cols);
  };
  if (rows == tile::mr && regs == tile::nv) {
    run(std::integral_constant<std::size_t, tile::mr>{}, std::integral_constant<std::size_t, tile::nv>{});
    return;
  }
  static_for<tile::mr>([&](auto i) {
    static_for<tile::nv>([&](auto v) {
      if (rows == i + 1 && regs == v + 1 && !(rows == tile::mr && regs == tile::nv)) {
        run(std::integral_constant<std::size_t, i + 1>{}, std::integral_constant<std::size_t, v + 1>{});
      }
    });
  });
}

} // namespace bitgrad::detail
