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
  /// The accumulators of a tile `used` registers wide (narrower tiles serve the right edge of C).
  template <std::size_t used = nv>
  using accumulators = batch[mr][used];
};

/// acc = sum over p < kc of A micro-panel column p (outer product) B micro-panel row p, for the
/// first NV registers of each B row. `a` holds kc * MR values, `b` kc * NR values aligned to the
/// register size.
template <class T, class Arch, std::size_t NV>
BITGRAD_ALWAYS_INLINE void gemm_micro_kernel(std::size_t kc, const T* __restrict a,
                                             const T* __restrict b,
                                             typename gemm_tile<T, Arch>::template accumulators<NV>& acc) {
  using tile = gemm_tile<T, Arch>;
  using batch = typename tile::batch;
  static_for<tile::mr>([&](auto i) {
    static_for<NV>([&](auto v) { acc[i][v] = batch(T(0)); });
  });
  for (std::size_t p = 0; p < kc; ++p) {
    batch bv[NV];
    static_for<NV>([&](auto v) { bv[v] = batch::load_aligned(b + v * tile::lanes); });
    static_for<tile::mr>([&](auto i) {
      const batch av(a[i]);
      static_for<NV>([&](auto v) { acc[i][v] = xsimd::fma(av, bv[v], acc[i][v]); });
    });
    a += tile::mr;
    b += tile::nr;
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

/// Writes the `rows` x `cols` top-left part of a tile NV registers wide whose top-left element
/// is C(row, col).
template <class T, class Arch, std::size_t NV, class Epilogue>
BITGRAD_ALWAYS_INLINE void gemm_store_tile(const typename gemm_tile<T, Arch>::template accumulators<NV>& acc,
                                           const gemm_output<T, Epilogue>& out, std::size_t row,
                                           std::size_t col, std::size_t rows, std::size_t cols) {
  using tile = gemm_tile<T, Arch>;
  using batch = typename tile::batch;
  constexpr std::size_t width = NV * tile::lanes;
  const batch alpha(out.alpha);
  T* const c = out.c + row * out.ldc + col;
  if (rows == tile::mr && cols == width) {
    // Full tile: straight from the registers.
    if (out.beta == T(0)) {
      static_for<tile::mr>([&](auto i) {
        static_for<NV>([&](auto v) {
          const std::size_t j = v * tile::lanes;
          out.ep.apply(acc[i][v] * alpha, row + i, col + j).store_unaligned(c + i * out.ldc + j);
        });
      });
    } else {
      const batch beta(out.beta);
      static_for<tile::mr>([&](auto i) {
        static_for<NV>([&](auto v) {
          T* const dst = c + i * out.ldc + v * tile::lanes;
          const batch value = xsimd::fma(beta, batch::load_unaligned(dst), acc[i][v] * alpha);
          out.ep.apply(value, row + i, col + v * tile::lanes).store_unaligned(dst);
        });
      });
    }
    return;
  }
  // Ragged tile at the bottom or right edge of C: through memory, whole registers while they fit
  // in the row, then element by element.
  alignas(Arch::alignment()) T buf[tile::mr * width];
  static_for<tile::mr>([&](auto i) {
    static_for<NV>([&](auto v) { acc[i][v].store_aligned(buf + i * width + v * tile::lanes); });
  });
  for (std::size_t i = 0; i < rows; ++i) {
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

} // namespace bitgrad::detail

namespace bitgrad::detail {

/// Multiplies an A micro-panel by a B micro-panel and writes the `rows` x `cols` tile to C at
/// (row, col), with the narrowest tile that covers `cols` (at the right edge of C fewer
/// registers per row do the work).
template <class T, class Arch = simd_arch, class Epilogue>
BITGRAD_ALWAYS_INLINE void gemm_tile_update(std::size_t kc, const T* a, const T* b,
                                            const gemm_output<T, Epilogue>& out, std::size_t row,
                                            std::size_t col, std::size_t rows, std::size_t cols) {
  using tile = gemm_tile<T, Arch>;
  const std::size_t used = (cols + tile::lanes - 1) / tile::lanes;
  static_for<tile::nv>([&](auto v) {
    constexpr std::size_t nv = tile::nv - v; // widest first: the common case
    if (used == nv) {
      typename tile::template accumulators<nv> acc;
      gemm_micro_kernel<T, Arch, nv>(kc, a, b, acc);
      gemm_store_tile<T, Arch, nv>(acc, out, row, col, rows, cols);
    }
  });
}

} // namespace bitgrad::detail
