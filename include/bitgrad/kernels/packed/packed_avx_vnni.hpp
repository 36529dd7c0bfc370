// The AVX-VNNI path of the packed kernels (VEX-encoded vpdpbusd on 256-bit registers: Alder
// Lake and later client cores, Zen 5): the AVX2 path's panel and decode (packed_avx2.hpp) with
// its two-instruction, split-for-k = 8 multiply replaced by one vpdpbusd, exact for every k
// (u8 x s8 products summed in int32 lanes).
//
// Micro-kernel: MR = 6 rows x one tile (two ymm per row), 12 accumulators.
#pragma once

#include <bitgrad/core/simd.hpp> // immintrin.h, with GCC 12's intrinsic warnings silenced
#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/packed_avx2.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>

#include <cstddef>
#include <cstdint>

#if BITGRAD_PACKED_X86 && BITGRAD_PACKED_HAS_AVX_VNNI

namespace bitgrad::detail {

template <>
struct packed_isa_traits<isa::avx_vnni> {
  using panel = std::int8_t;
  static constexpr std::int32_t activation_shift = 0;
};

/// The AVX2 decode: the panel layout is the same.
inline void packed_decode_quads(isa::avx_vnni, int k, const std::uint8_t* src, std::size_t nq,
                                std::int8_t* panel, std::int32_t* sums) {
  packed_decode_quads(isa::avx2{}, k, src, nq, panel, sums);
}

/// One quad for MR rows: acc(r) += x(r, quad) . w. Partial: the quad holds n < 4 inputs.
template <std::size_t MR, bool Partial>
BITGRAD_TARGET_AVX_VNNI __attribute__((always_inline)) inline void
avx_vnni_quad(__m256i (&acc)[MR][2], const std::uint8_t* x, std::size_t lda, const std::int8_t* wq,
              std::size_t n) {
  const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq));
  const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 32));
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    const __m256i xb = _mm256_set1_epi32(Partial ? packed_load_quad(x + r * lda, n)
                                                 : packed_load_quad(x + r * lda));
    acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], xb, w0);
    acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], xb, w1);
  }
}

/// MR rows x one tile over nq quads. Fewer than 2 rows keep 2 accumulator sets, one per quad in
/// turn, so that 4 vpdpbusd chains are in flight.
template <std::size_t MR>
BITGRAD_TARGET_AVX_VNNI void avx_vnni_rows(const std::uint8_t* x, std::size_t lda, std::size_t nq,
                                           std::size_t tail, const std::int8_t* panel,
                                           std::int32_t* c, bool accumulate) {
  constexpr std::size_t sets = MR >= 2 ? 1 : 2;
  __m256i acc[sets][MR][2];
#pragma GCC unroll 2
  for (std::size_t u = 0; u < sets; ++u)
#pragma GCC unroll 16
    for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (std::size_t h = 0; h < 2; ++h)
        acc[u][r][h] =
            accumulate && u == 0
                ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + r * packed_tile + 8 * h))
                : _mm256_setzero_si256();
  const std::size_t full = tail ? nq - 1 : nq;
  std::size_t q = 0;
  for (; q + sets <= full; q += sets)
#pragma GCC unroll 2
    for (std::size_t u = 0; u < sets; ++u)
      avx_vnni_quad<MR, false>(acc[u], x + (q + u) * packed_quad, lda,
                               panel + (q + u) * packed_quad_codes, packed_quad);
  for (; q < full; ++q)
    avx_vnni_quad<MR, false>(acc[0], x + q * packed_quad, lda, panel + q * packed_quad_codes,
                             packed_quad);
  if (tail)
    avx_vnni_quad<MR, true>(acc[0], x + full * packed_quad, lda, panel + full * packed_quad_codes,
                            tail);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (std::size_t h = 0; h < 2; ++h) {
      __m256i sum = acc[0][r][h];
      if constexpr (sets == 2) sum = _mm256_add_epi32(sum, acc[1][r][h]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * packed_tile + 8 * h), sum);
    }
}

/// c(i, 0..15) (+)= sum over quads q < nq of x(i, 4q..4q+3) . panel(q, c, 0..3) for rows
/// i < rows; the last quad holds only `tail` inputs when tail > 0.
inline void packed_rows(isa::avx_vnni, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                        std::size_t nq, std::size_t tail, int /*bits*/, const std::int8_t* panel,
                        std::int32_t* c, bool accumulate) {
  std::size_t i = 0;
  for (; i + 6 <= rows; i += 6)
    avx_vnni_rows<6>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
  if (i + 4 <= rows) {
    avx_vnni_rows<4>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
    i += 4;
  }
  if (i + 2 <= rows) {
    avx_vnni_rows<2>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
    i += 2;
  }
  if (i < rows)
    avx_vnni_rows<1>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
}

} // namespace bitgrad::detail

#endif // BITGRAD_PACKED_X86 && BITGRAD_PACKED_HAS_AVX_VNNI
