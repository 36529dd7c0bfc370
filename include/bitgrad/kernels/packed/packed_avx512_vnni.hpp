// The AVX-512 VNNI path of the packed kernels: one 512-bit register is one full-tile quad (16
// channels x 4 inputs, dot order), and vpdpbusd (u8 activations x s8 codes, 4 products summed
// into each int32 lane) is exact for every k: |x w| <= 255 * 127 per product, int32 sums.
//
// Decode of a quad (planes of packed_weights.hpp), e.g. k = 2 (16 bytes):
//   vbroadcasti32x4   the 16 bytes into the four 128-bit sub-lanes
//   vpsrlvq           shift sub-lane s right by 2 s        -> sub-lane s holds elements 16 s..
//   vpandd 0x03       the field u of every element, in dot order
//   vpsubb 2          the code (k = 1: 2u - 1)
// k = 1 broadcasts 8 bytes to eight 64-bit sub-lanes shifted by 0..7, k = 4 32 bytes to two
// halves shifted by 0 and 4; two-plane widths OR the second plane in above the first.
//
// Micro-kernel: MR rows x one tile, MR zmm accumulators; per quad one panel load and, per row,
// a 4-byte broadcast of x(i, 4q..4q+3) from memory and one vpdpbusd.
// Also: two tiles per broadcast (avx512_rows_pair), and one tile with two quads per 8-byte
// broadcast (avx512_rows_halves, the flat plane's 16-channel convs).
#pragma once

#include <bitgrad/core/simd.hpp> // immintrin.h, with GCC 12's intrinsic warnings silenced
#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if BITGRAD_PACKED_X86

namespace bitgrad::detail {

template <>
struct packed_isa_traits<isa::avx512_vnni> {
  using panel = std::int8_t;
  /// Activations enter the dot product as stored (u8): no shift to correct.
  static constexpr std::int32_t activation_shift = 0;
};

/// Field of plane width F, in dot order, from the plane's bytes.
template <int F>
BITGRAD_TARGET_AVX512_VNNI inline __m512i avx512_plane(const std::uint8_t* src) {
  if constexpr (F == 1) {
    std::int64_t bytes;
    std::memcpy(&bytes, src, 8);
    const __m512i v = _mm512_set1_epi64(bytes);
    return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)),
                            _mm512_set1_epi8(0x01));
  } else if constexpr (F == 2) {
    const __m512i v =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0)),
                            _mm512_set1_epi8(0x03));
  } else {
    const __m512i v =
        _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
    return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0)),
                            _mm512_set1_epi8(0x0F));
  }
}

/// The 64 codes of one full-tile quad at K bits, in dot order.
template <int K>
BITGRAD_TARGET_AVX512_VNNI inline __m512i avx512_decode_quad(const std::uint8_t* src) {
  constexpr packed_layout l = packed_layout_of(K);
  if constexpr (l.raw_bytes) {
    return _mm512_loadu_si512(src);
  } else {
    __m512i u = avx512_plane<l.plane[0].width>(src);
    if constexpr (l.planes == 2) {
      const __m512i hi = avx512_plane<l.plane[1].width>(src + 8 * l.plane[0].width);
      // Fields are < 2^width, so a 16-bit shift does not carry into the next byte.
      u = _mm512_or_si512(u, _mm512_slli_epi16(hi, l.plane[1].shift));
    }
    if constexpr (K == 1) return _mm512_sub_epi8(_mm512_add_epi8(u, u), _mm512_set1_epi8(1));
    return _mm512_sub_epi8(u, _mm512_set1_epi8(static_cast<char>(1 << (K - 1))));
  }
}

template <int K>
BITGRAD_TARGET_AVX512_VNNI void avx512_decode_quads(const std::uint8_t* src, std::size_t nq,
                                                    std::int8_t* panel, std::int32_t* sums) {
  constexpr std::size_t qb = packed_layout_of(K).quad_bytes;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i s = _mm512_setzero_si512();
  for (std::size_t q = 0; q < nq; ++q) {
    const __m512i w = avx512_decode_quad<K>(src + q * qb);
    _mm512_storeu_si512(panel + q * packed_quad_codes, w);
    if (sums) s = _mm512_dpbusd_epi32(s, ones, w);
  }
  if (sums) {
    alignas(64) std::int32_t lanes[packed_tile];
    _mm512_store_si512(lanes, s);
    for (std::size_t c = 0; c < packed_tile; ++c) sums[c] += lanes[c];
  }
}

/// Decodes nq full-tile quads of bit class k from src into panel (dot order, int8); adds each
/// channel's codes to sums when sums is not null.
inline void packed_decode_quads(isa::avx512_vnni, int k, const std::uint8_t* src, std::size_t nq,
                                std::int8_t* panel, std::int32_t* sums) {
  switch (k) {
  case 1:
    avx512_decode_quads<1>(src, nq, panel, sums);
    break;
  case 2:
    avx512_decode_quads<2>(src, nq, panel, sums);
    break;
  case 3:
    avx512_decode_quads<3>(src, nq, panel, sums);
    break;
  case 4:
    avx512_decode_quads<4>(src, nq, panel, sums);
    break;
  case 5:
    avx512_decode_quads<5>(src, nq, panel, sums);
    break;
  case 6:
    avx512_decode_quads<6>(src, nq, panel, sums);
    break;
  case 7:
    avx512_decode_quads<7>(src, nq, panel, sums);
    break;
  default:
    avx512_decode_quads<8>(src, nq, panel, sums);
    break;
  }
}

/// One quad for MR rows: acc(r) += x(r, quad) . w. Partial: the quad holds n < 4 inputs.
template <std::size_t MR, bool Partial>
BITGRAD_TARGET_AVX512_VNNI __attribute__((always_inline)) inline void
avx512_quad(__m512i (&acc)[MR], const std::uint8_t* x, std::size_t lda, const std::int8_t* wq,
            std::size_t n) {
  const __m512i w = _mm512_loadu_si512(wq);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r)
    acc[r] = _mm512_dpbusd_epi32(acc[r],
                                 _mm512_set1_epi32(Partial ? packed_load_quad(x + r * lda, n)
                                                           : packed_load_quad(x + r * lda)),
                                 w);
}

/// MR rows x one tile over nq quads. Fewer than 4 rows keep 4 / MR accumulator sets, one per
/// quad in turn, so that 4 vpdpbusd chains are in flight (its latency is several cycles).
template <std::size_t MR>
BITGRAD_TARGET_AVX512_VNNI void avx512_rows(const std::uint8_t* x, std::size_t lda, std::size_t nq,
                                            std::size_t tail, const std::int8_t* panel,
                                            std::int32_t* c, bool accumulate) {
  constexpr std::size_t sets = MR >= 4 ? 1 : 4 / MR;
  __m512i acc[sets][MR];
#pragma GCC unroll 4
  for (std::size_t u = 0; u < sets; ++u)
#pragma GCC unroll 16
    for (std::size_t r = 0; r < MR; ++r)
      acc[u][r] =
          accumulate && u == 0 ? _mm512_loadu_si512(c + r * packed_tile) : _mm512_setzero_si512();
  const std::size_t full = tail ? nq - 1 : nq;
  std::size_t q = 0;
  for (; q + sets <= full; q += sets)
#pragma GCC unroll 4
    for (std::size_t u = 0; u < sets; ++u)
      avx512_quad<MR, false>(acc[u], x + (q + u) * packed_quad, lda,
                             panel + (q + u) * packed_quad_codes, packed_quad);
  for (; q < full; ++q)
    avx512_quad<MR, false>(acc[0], x + q * packed_quad, lda, panel + q * packed_quad_codes,
                           packed_quad);
  if (tail)
    avx512_quad<MR, true>(acc[0], x + full * packed_quad, lda, panel + full * packed_quad_codes,
                          tail);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    __m512i sum = acc[0][r];
#pragma GCC unroll 4
    for (std::size_t u = 1; u < sets; ++u) sum = _mm512_add_epi32(sum, acc[u][r]);
    _mm512_storeu_si512(c + r * packed_tile, sum);
  }
}

/// c(i, 0..15) (+)= sum over quads q < nq of x(i, 4q..4q+3) . panel(q, c, 0..3) for rows
/// i < rows (x row i at x + i * lda); the last quad holds only `tail` inputs when tail > 0.
inline void packed_rows(isa::avx512_vnni, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                        std::size_t nq, std::size_t tail, int /*bits*/, const std::int8_t* panel,
                        std::int32_t* c, bool accumulate) {
  std::size_t i = 0;
  for (; i + 8 <= rows; i += 8)
    avx512_rows<8>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
  if (i + 4 <= rows) {
    avx512_rows<4>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
    i += 4;
  }
  if (i + 2 <= rows) {
    avx512_rows<2>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
    i += 2;
  }
  if (i < rows) avx512_rows<1>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
}

/// avx512_rows over segments: segment s is nq[s] whole quads of the rows at x + off[s] (row i
/// at + i * lda), the panel's quads in segment order. The accumulators stay in registers across
/// the segments (flat_conv.hpp: one segment per kernel row).
template <std::size_t MR>
BITGRAD_TARGET_AVX512_VNNI void avx512_rows_segments(const std::uint8_t* x, std::size_t lda,
                                                     const std::size_t* off, const std::size_t* nq,
                                                     std::size_t segments, const std::int8_t* panel,
                                                     std::int32_t* c, bool accumulate) {
  constexpr std::size_t sets = MR >= 4 ? 1 : 4 / MR;
  __m512i acc[sets][MR];
#pragma GCC unroll 4
  for (std::size_t u = 0; u < sets; ++u)
#pragma GCC unroll 16
    for (std::size_t r = 0; r < MR; ++r)
      acc[u][r] =
          accumulate && u == 0 ? _mm512_loadu_si512(c + r * packed_tile) : _mm512_setzero_si512();
  for (std::size_t s = 0; s < segments; ++s) {
    const std::uint8_t* xs = x + off[s];
    if constexpr (sets == 1) { // one pointer walk (GCC shuffled the accumulators otherwise)
      const std::int8_t* const end = panel + nq[s] * packed_quad_codes;
      for (; panel != end; panel += packed_quad_codes, xs += packed_quad)
        avx512_quad<MR, false>(acc[0], xs, lda, panel, packed_quad);
      continue;
    }
    std::size_t q = 0;
    for (; q + sets <= nq[s]; q += sets)
#pragma GCC unroll 4
      for (std::size_t u = 0; u < sets; ++u)
        avx512_quad<MR, false>(acc[u], xs + (q + u) * packed_quad, lda,
                               panel + (q + u) * packed_quad_codes, packed_quad);
    for (; q < nq[s]; ++q)
      avx512_quad<MR, false>(acc[0], xs + q * packed_quad, lda, panel + q * packed_quad_codes,
                             packed_quad);
    panel += nq[s] * packed_quad_codes;
  }
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    __m512i sum = acc[0][r];
#pragma GCC unroll 4
    for (std::size_t u = 1; u < sets; ++u) sum = _mm512_add_epi32(sum, acc[u][r]);
    _mm512_storeu_si512(c + r * packed_tile, sum);
  }
}

/// c(i, 0..15) (+)= sum over segments s and quads q < nq[s] of x(i, off[s] + 4q..) .
/// panel(quad) for rows i < rows, the panel's quads counted across the segments in order:
/// packed_rows on each segment in turn, with the accumulators kept in registers.
inline void packed_rows_segments(isa::avx512_vnni, std::size_t rows, const std::uint8_t* x,
                                 std::size_t lda, const std::size_t* off, const std::size_t* nq,
                                 std::size_t segments, const std::int8_t* panel, std::int32_t* c,
                                 bool accumulate) {
  std::size_t i = 0;
  for (; i + 8 <= rows; i += 8)
    avx512_rows_segments<8>(x + i * lda, lda, off, nq, segments, panel, c + i * packed_tile,
                            accumulate);
  if (i + 4 <= rows) {
    avx512_rows_segments<4>(x + i * lda, lda, off, nq, segments, panel, c + i * packed_tile,
                            accumulate);
    i += 4;
  }
  if (i + 2 <= rows) {
    avx512_rows_segments<2>(x + i * lda, lda, off, nq, segments, panel, c + i * packed_tile,
                            accumulate);
    i += 2;
  }
  if (i < rows)
    avx512_rows_segments<1>(x + i * lda, lda, off, nq, segments, panel, c + i * packed_tile,
                            accumulate);
}

/// One quad of both tiles of a pair for MR rows: acc0(r) += x(r, quad) . w0, acc1(r) += x(r,
/// quad) . w1, w1 panel_stride codes after w0; one broadcast per row feeds both. Partial: the
/// quad holds n < 4 inputs.
template <std::size_t MR, bool Partial>
BITGRAD_TARGET_AVX512_VNNI __attribute__((always_inline)) inline void
avx512_quad_pair(__m512i (&acc0)[MR], __m512i (&acc1)[MR], const std::uint8_t* x, std::size_t lda,
                 const std::int8_t* wq, std::size_t panel_stride, std::size_t n) {
  const __m512i w0 = _mm512_loadu_si512(wq);
  const __m512i w1 = _mm512_loadu_si512(wq + panel_stride);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    const __m512i b = _mm512_set1_epi32(Partial ? packed_load_quad(x + r * lda, n)
                                                : packed_load_quad(x + r * lda));
    acc0[r] = _mm512_dpbusd_epi32(acc0[r], b, w0);
    acc1[r] = _mm512_dpbusd_epi32(acc1[r], b, w1);
  }
}

/// Tile pairs: MR rows x two tiles (32 channels), 2 MR zmm accumulators; per quad two panel
/// loads and, per row, one 4-byte broadcast feeding both tiles' vpdpbusd. One tile per call
/// (avx512_rows) needs a load per vpdpbusd (MR broadcasts + 1 panel load per MR of them) and
/// ran at 75-80 % of the register-only peak on the nets' shapes (K = 144..576, rows in L1);
/// two tiles need 0.56 loads per vpdpbusd at MR = 8 and ran at 97-100 % (benchmarks/README,
/// issue 19, h19-wide). Fewer than 4 rows keep 4 / MR accumulator sets per tile, as avx512_rows.
///
/// c0(i, 0..15), c1(i, 0..15) (+)= the sums of tile 0 (panel) and tile 1 (panel + panel_stride)
/// over segments s of nq[s] whole quads of the rows at x + off[s] (row i at + i * lda), then,
/// when tail > 0, one quad of `tail` inputs after the last segment's quads; the panel's quads
/// in that order.
template <std::size_t MR>
BITGRAD_TARGET_AVX512_VNNI void
avx512_rows_pair(const std::uint8_t* x, std::size_t lda, const std::size_t* off,
                 const std::size_t* nq, std::size_t segments, std::size_t tail,
                 const std::int8_t* panel, std::size_t panel_stride, std::int32_t* c0,
                 std::int32_t* c1, bool accumulate) {
  constexpr std::size_t sets = MR >= 4 ? 1 : 4 / MR;
  __m512i acc0[sets][MR], acc1[sets][MR];
#pragma GCC unroll 4
  for (std::size_t u = 0; u < sets; ++u)
#pragma GCC unroll 16
    for (std::size_t r = 0; r < MR; ++r) {
      const bool load = accumulate && u == 0;
      acc0[u][r] = load ? _mm512_loadu_si512(c0 + r * packed_tile) : _mm512_setzero_si512();
      acc1[u][r] = load ? _mm512_loadu_si512(c1 + r * packed_tile) : _mm512_setzero_si512();
    }
  const std::uint8_t* xs = x;
  for (std::size_t s = 0; s < segments; ++s) {
    xs = x + off[s];
    if constexpr (sets == 1) { // one pointer walk (GCC copied the accumulators otherwise)
      const std::int8_t* const end = panel + nq[s] * packed_quad_codes;
      for (; panel != end; panel += packed_quad_codes, xs += packed_quad)
        avx512_quad_pair<MR, false>(acc0[0], acc1[0], xs, lda, panel, panel_stride, packed_quad);
      continue;
    }
    std::size_t q = 0;
    for (; q + sets <= nq[s]; q += sets)
#pragma GCC unroll 4
      for (std::size_t u = 0; u < sets; ++u)
        avx512_quad_pair<MR, false>(acc0[u], acc1[u], xs + (q + u) * packed_quad, lda,
                                    panel + (q + u) * packed_quad_codes, panel_stride, packed_quad);
    for (; q < nq[s]; ++q)
      avx512_quad_pair<MR, false>(acc0[0], acc1[0], xs + q * packed_quad, lda,
                                  panel + q * packed_quad_codes, panel_stride, packed_quad);
    panel += nq[s] * packed_quad_codes;
    xs += nq[s] * packed_quad;
  }
  if (tail) avx512_quad_pair<MR, true>(acc0[0], acc1[0], xs, lda, panel, panel_stride, tail);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    __m512i sum0 = acc0[0][r], sum1 = acc1[0][r];
#pragma GCC unroll 4
    for (std::size_t u = 1; u < sets; ++u) {
      sum0 = _mm512_add_epi32(sum0, acc0[u][r]);
      sum1 = _mm512_add_epi32(sum1, acc1[u][r]);
    }
    _mm512_storeu_si512(c0 + r * packed_tile, sum0);
    _mm512_storeu_si512(c1 + r * packed_tile, sum1);
  }
}

/// Two tiles at once (avx512_rows_pair) for rows i < rows: c0 / c1 row i at + i * packed_tile.
inline void packed_rows_pair(isa::avx512_vnni, std::size_t rows, const std::uint8_t* x,
                             std::size_t lda, const std::size_t* off, const std::size_t* nq,
                             std::size_t segments, std::size_t tail, const std::int8_t* panel,
                             std::size_t panel_stride, std::int32_t* c0, std::int32_t* c1,
                             bool accumulate) {
  std::size_t i = 0;
  auto call = [&](auto mr) {
    constexpr std::size_t MR = decltype(mr)::value;
    avx512_rows_pair<MR>(x + i * lda, lda, off, nq, segments, tail, panel, panel_stride,
                         c0 + i * packed_tile, c1 + i * packed_tile, accumulate);
    i += MR;
  };
  while (i + 8 <= rows) call(std::integral_constant<std::size_t, 8>{});
  if (i + 4 <= rows) call(std::integral_constant<std::size_t, 4>{});
  if (i + 2 <= rows) call(std::integral_constant<std::size_t, 2>{});
  if (i < rows) call(std::integral_constant<std::size_t, 1>{});
}

/// Quad pairs in the register's halves (one tile, 16 channels: ResNet-20's stage 1, LeNet-5's
/// conv2, whose convs have no second tile to pair with). The one-tile kernel pays one load per
/// vpdpbusd (a panel load per quad + a broadcast per row); here one 8-byte broadcast of two
/// quads of a row feeds two vpdpbusd, each on 8 channels x 2 quads:
///
///   broadcast b = x(r, 4q..4q+7) in every qword: dword 2j = quad q, dword 2j + 1 = quad q + 1
///   halves panel, per quad pair:  lo dword 2j = w(j, quad q), dword 2j + 1 = w(j, quad q + 1)
///                                 hi the same for channels 8 + j                   (j < 8)
///   acc_lo(r) += b . lo,  acc_hi(r) += b . hi
///   c(r, j) = acc_lo(r)[2j] + acc_lo(r)[2j + 1],  c(r, 8 + j) = the same of acc_hi(r)
///
/// (MR + 2) / (2 MR) loads per vpdpbusd, as the tile pair's: 0.625 at MR = 8 against 1.125.
/// The pairs are formed inside each segment (a kernel row of the flat plane; its quads are
/// consecutive bytes of the row); a segment's odd last quad is paired with zero codes and met
/// by a 4-byte broadcast (both dwords of a qword hold it).

/// Vectors of the halves panel for segments of nq[s] quads: two per quad pair, a segment's
/// odd last quad a pair of its own.
inline std::size_t avx512_halves_vectors(const std::size_t* nq, std::size_t segments) {
  std::size_t v = 0;
  for (std::size_t s = 0; s < segments; ++s) v += 2 * ((nq[s] + 1) / 2);
  return v;
}

/// The halves panel (above) of `panel` (dot order, segment after segment) into halves
/// (avx512_halves_vectors(nq, segments) x 64 codes).
BITGRAD_TARGET_AVX512_VNNI inline void avx512_halves_panel(const std::int8_t* panel,
                                                           const std::size_t* nq,
                                                           std::size_t segments,
                                                           std::int8_t* halves) {
  // dword 2j <- a[j], 2j + 1 <- b[j] (lo: j < 8; hi: j + 8), b's lanes counted from 16.
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (std::size_t s = 0; s < segments; ++s) {
    for (std::size_t q = 0; q < nq[s]; q += 2) {
      const __m512i a = _mm512_loadu_si512(panel);
      const __m512i b =
          q + 1 < nq[s] ? _mm512_loadu_si512(panel + packed_quad_codes) : _mm512_setzero_si512();
      _mm512_storeu_si512(halves, _mm512_permutex2var_epi32(a, lo, b));
      _mm512_storeu_si512(halves + packed_quad_codes, _mm512_permutex2var_epi32(a, hi, b));
      panel += (q + 1 < nq[s] ? 2 : 1) * packed_quad_codes;
      halves += 2 * packed_quad_codes;
    }
  }
}

/// MR rows x one tile from the halves panel, 2 MR accumulators: c(i, 0..15) (+)= the sums of
/// avx512_rows_segments.
template <std::size_t MR>
BITGRAD_TARGET_AVX512_VNNI void avx512_rows_halves(const std::uint8_t* x, std::size_t lda,
                                                   const std::size_t* off, const std::size_t* nq,
                                                   std::size_t segments, const std::int8_t* halves,
                                                   std::int32_t* c, bool accumulate) {
  static_assert(MR >= 4, "4 rows give 8 vpdpbusd chains");
  __m512i lo[MR], hi[MR];
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) lo[r] = hi[r] = _mm512_setzero_si512();
  // The quad pairs of every segment, then the segments' odd last quads (kept out of the
  // first loop: with them inside, GCC copied the accumulators between registers every pair
  // and spilled two).
  const std::int8_t* h = halves;
  for (std::size_t s = 0; s < segments; ++s) {
    const std::uint8_t* xs = x + off[s];
    const std::int8_t* const end = h + nq[s] / 2 * 2 * packed_quad_codes;
    for (; h != end; h += 2 * packed_quad_codes, xs += 2 * packed_quad) { // a pointer walk
      const __m512i wl = _mm512_loadu_si512(h);
      const __m512i wh = _mm512_loadu_si512(h + packed_quad_codes);
#pragma GCC unroll 16
      for (std::size_t r = 0; r < MR; ++r) {
        std::int64_t two;
        std::memcpy(&two, xs + r * lda, 8);
        const __m512i b = _mm512_set1_epi64(two);
        lo[r] = _mm512_dpbusd_epi32(lo[r], b, wl);
        hi[r] = _mm512_dpbusd_epi32(hi[r], b, wh);
      }
    }
    h += nq[s] % 2 * 2 * packed_quad_codes;
  }
  h = halves;
  for (std::size_t s = 0; s < segments; ++s) {
    h += nq[s] / 2 * 2 * packed_quad_codes;
    if (nq[s] % 2 == 0) continue;
    // The odd last quad against (w, 0) pairs: both dwords of the broadcast hold it.
    const std::uint8_t* xs = x + off[s] + (nq[s] - 1) * packed_quad;
    const __m512i wl = _mm512_loadu_si512(h);
    const __m512i wh = _mm512_loadu_si512(h + packed_quad_codes);
#pragma GCC unroll 16
    for (std::size_t r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(packed_load_quad(xs + r * lda));
      lo[r] = _mm512_dpbusd_epi32(lo[r], b, wl);
      hi[r] = _mm512_dpbusd_epi32(hi[r], b, wh);
    }
    h += 2 * packed_quad_codes;
  }
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    __m512i sum = _mm512_add_epi32(_mm512_permutex2var_epi32(lo[r], even, hi[r]),
                                   _mm512_permutex2var_epi32(lo[r], odd, hi[r]));
    if (accumulate) sum = _mm512_add_epi32(sum, _mm512_loadu_si512(c + r * packed_tile));
    _mm512_storeu_si512(c + r * packed_tile, sum);
  }
}

/// packed_rows_segments' sums from the halves panel of its panel (avx512_halves_panel; both
/// given: the last rows % 8 run avx512_rows_segments on the plain panel).
inline void packed_rows_halves(isa::avx512_vnni, std::size_t rows, const std::uint8_t* x,
                               std::size_t lda, const std::size_t* off, const std::size_t* nq,
                               std::size_t segments, const std::int8_t* panel,
                               const std::int8_t* halves, std::int32_t* c, bool accumulate) {
  std::size_t i = 0;
  for (; i + 8 <= rows; i += 8)
    avx512_rows_halves<8>(x + i * lda, lda, off, nq, segments, halves, c + i * packed_tile,
                          accumulate);
  if (i < rows) // (at 4 rows GCC folded the panel loads into each vpdpbusd: 1.5 loads each)
    packed_rows_segments(isa::avx512_vnni{}, rows - i, x + i * lda, lda, off, nq, segments, panel,
                         c + i * packed_tile, accumulate);
}

/// The halves panel for packed_rows_halves: `halves` resized and filled.
inline void packed_halves_panel(isa::avx512_vnni, const std::int8_t* panel, const std::size_t* nq,
                                std::size_t segments, std::vector<std::int8_t>& halves) {
  halves.resize(avx512_halves_vectors(nq, segments) * packed_quad_codes);
  avx512_halves_panel(panel, nq, segments, halves.data());
}

} // namespace bitgrad::detail

#endif // BITGRAD_PACKED_X86
