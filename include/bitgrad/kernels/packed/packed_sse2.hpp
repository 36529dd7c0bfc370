// The SSE2 path of the packed kernels (every x86-64): SSE2 has no u8 x s8 multiply, so the
// decode widens the codes into an int16 panel once per tile, and the micro-kernel multiplies
// with pmaddwd (int16 pairs summed into int32 lanes, exact: |x w| <= 255 * 127).
//
//   panel (int16), one quad = 8 registers:   [c0p0 c0p1 c0p2 c0p3 c1p0 c1p1 c1p2 c1p3] ...
//   x quad, widened once per row and quad:   [x0 x1 x2 x3 x0 x1 x2 x3]
//   pmaddwd -> [c0: x0w0+x1w1, c0: x2w2+x3w3, c1: ..., c1: ...]; the two halves of each
//   channel are added after the k loop (sse2_channel_sums).
//
// Decode of a quad into four registers of 16 codes (planes of packed_weights.hpp):
//   f = 4: bytes 0-15 and 16-31, low nibbles -> elements 0-31, high nibbles -> 32-63
//   f = 2: one 16-byte load shifted right by 0, 2, 4, 6 (psrlw; the mask drops what crosses)
//   f = 1: one 8-byte load; psrlq by 2i and 2i+1 joined by punpcklqdq -> elements 16i..16i+15
// Micro-kernel: one row x one tile, 8 accumulators (the 16 xmm registers allow no second row).
#pragma once

#include <bitgrad/core/simd.hpp> // immintrin.h, with GCC 12's intrinsic warnings silenced
#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>

#include <cstddef>
#include <cstdint>

#if BITGRAD_PACKED_X86

namespace bitgrad::detail {

template <>
struct packed_isa_traits<isa::sse2> {
  using panel = std::int16_t;
  static constexpr std::int32_t activation_shift = 0;
};

/// Fields of plane width F for elements 16 i .. 16 i + 15.
template <int F>
BITGRAD_TARGET_SSE2 inline __m128i sse2_plane(const std::uint8_t* src, int i) {
  const __m128i m = _mm_set1_epi8(static_cast<char>((1 << F) - 1));
  if constexpr (F == 1) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
    const __m128i a = _mm_srl_epi64(v, _mm_cvtsi32_si128(2 * i));
    const __m128i b = _mm_srl_epi64(v, _mm_cvtsi32_si128(2 * i + 1));
    return _mm_and_si128(_mm_unpacklo_epi64(a, b), m);
  } else if constexpr (F == 2) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    return _mm_and_si128(_mm_srl_epi16(v, _mm_cvtsi32_si128(2 * i)), m);
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * (i & 1)));
    return _mm_and_si128(_mm_srl_epi16(v, _mm_cvtsi32_si128(4 * (i >> 1))), m);
  }
}

/// Codes 16 i .. 16 i + 15 of one full-tile quad at K bits (int8).
template <int K>
BITGRAD_TARGET_SSE2 inline __m128i sse2_decode(const std::uint8_t* src, int i) {
  constexpr packed_layout l = packed_layout_of(K);
  if constexpr (l.raw_bytes) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * i));
  } else {
    __m128i u = sse2_plane<l.plane[0].width>(src, i);
    if constexpr (l.planes == 2)
      u = _mm_or_si128(u,
                       _mm_slli_epi16(sse2_plane<l.plane[1].width>(src + 8 * l.plane[0].width, i),
                                      l.plane[1].shift));
    if constexpr (K == 1) return _mm_sub_epi8(_mm_add_epi8(u, u), _mm_set1_epi8(1));
    return _mm_sub_epi8(u, _mm_set1_epi8(static_cast<char>(1 << (K - 1))));
  }
}

/// Channel sums of 8 registers of pair partials: acc[v] = [c 2v: two halves, c 2v+1: two].
BITGRAD_TARGET_SSE2 inline void sse2_channel_sums(const __m128i (&acc)[8], std::int32_t* out,
                                                  bool accumulate) {
#pragma GCC unroll 4
  for (int u = 0; u < 4; ++u) {
    const __m128i a = _mm_shuffle_epi32(acc[2 * u], _MM_SHUFFLE(3, 1, 2, 0));
    const __m128i b = _mm_shuffle_epi32(acc[2 * u + 1], _MM_SHUFFLE(3, 1, 2, 0));
    __m128i s = _mm_add_epi32(_mm_unpacklo_epi64(a, b), _mm_unpackhi_epi64(a, b));
    if (accumulate)
      s = _mm_add_epi32(s, _mm_loadu_si128(reinterpret_cast<const __m128i*>(out + 4 * u)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * u), s);
  }
}

template <int K>
BITGRAD_TARGET_SSE2 void sse2_decode_quads(const std::uint8_t* src, std::size_t nq,
                                           std::int16_t* panel, std::int32_t* sums) {
  constexpr std::size_t qb = packed_layout_of(K).quad_bytes;
  const __m128i ones = _mm_set1_epi16(1);
  __m128i s[8];
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) s[v] = _mm_setzero_si128();
  for (std::size_t q = 0; q < nq; ++q) {
    std::int16_t* out = panel + q * packed_quad_codes;
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const __m128i w = sse2_decode<K>(src + q * qb, i);
      // Sign extension: each byte into the high half of a 16-bit lane, then shifted down.
      const __m128i lo = _mm_srai_epi16(_mm_unpacklo_epi8(w, w), 8);
      const __m128i hi = _mm_srai_epi16(_mm_unpackhi_epi8(w, w), 8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i), lo);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i + 8), hi);
      if (sums) {
        s[2 * i] = _mm_add_epi32(s[2 * i], _mm_madd_epi16(lo, ones));
        s[2 * i + 1] = _mm_add_epi32(s[2 * i + 1], _mm_madd_epi16(hi, ones));
      }
    }
  }
  if (sums) {
    alignas(16) std::int32_t lanes[packed_tile];
    sse2_channel_sums(s, lanes, false);
    for (std::size_t c = 0; c < packed_tile; ++c) sums[c] += lanes[c];
  }
}

/// Decodes nq full-tile quads of bit class k from src into panel (dot order, int16); adds each
/// channel's codes to sums when sums is not null.
inline void packed_decode_quads(isa::sse2, int k, const std::uint8_t* src, std::size_t nq,
                                std::int16_t* panel, std::int32_t* sums) {
  switch (k) {
  case 1:
    sse2_decode_quads<1>(src, nq, panel, sums);
    break;
  case 2:
    sse2_decode_quads<2>(src, nq, panel, sums);
    break;
  case 3:
    sse2_decode_quads<3>(src, nq, panel, sums);
    break;
  case 4:
    sse2_decode_quads<4>(src, nq, panel, sums);
    break;
  case 5:
    sse2_decode_quads<5>(src, nq, panel, sums);
    break;
  case 6:
    sse2_decode_quads<6>(src, nq, panel, sums);
    break;
  case 7:
    sse2_decode_quads<7>(src, nq, panel, sums);
    break;
  default:
    sse2_decode_quads<8>(src, nq, panel, sums);
    break;
  }
}

/// One quad of one row: acc[v] += pmaddwd(x quad widened, panel register v).
BITGRAD_TARGET_SSE2 __attribute__((always_inline)) inline void
sse2_quad(__m128i (&acc)[8], std::int32_t x4, const std::int16_t* wq) {
  const __m128i x8 = _mm_unpacklo_epi8(_mm_cvtsi32_si128(x4), _mm_setzero_si128());
  const __m128i x = _mm_unpacklo_epi64(x8, x8);
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v)
    acc[v] = _mm_add_epi32(
        acc[v], _mm_madd_epi16(x, _mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + 8 * v))));
}

BITGRAD_TARGET_SSE2 inline void sse2_row(const std::uint8_t* x, std::size_t nq, std::size_t tail,
                                         const std::int16_t* panel, std::int32_t* c,
                                         bool accumulate) {
  __m128i acc[8];
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) acc[v] = _mm_setzero_si128();
  const std::size_t full = tail ? nq - 1 : nq;
  for (std::size_t q = 0; q < full; ++q)
    sse2_quad(acc, packed_load_quad(x + q * packed_quad), panel + q * packed_quad_codes);
  if (tail)
    sse2_quad(acc, packed_load_quad(x + full * packed_quad, tail),
              panel + full * packed_quad_codes);
  sse2_channel_sums(acc, c, accumulate);
}

/// c(i, 0..15) (+)= sum over quads q < nq of x(i, 4q..4q+3) . panel(q, c, 0..3) for rows
/// i < rows; the last quad holds only `tail` inputs when tail > 0.
inline void packed_rows(isa::sse2, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                        std::size_t nq, std::size_t tail, int /*bits*/, const std::int16_t* panel,
                        std::int32_t* c, bool accumulate) {
  for (std::size_t i = 0; i < rows; ++i)
    sse2_row(x + i * lda, nq, tail, panel, c + i * packed_tile, accumulate);
}

} // namespace bitgrad::detail

#endif // BITGRAD_PACKED_X86
