// The AVX2 path of the packed kernels: a full-tile quad is two 256-bit registers (channels 0-7
// and 8-15, 4 inputs each, dot order), multiplied with vpmaddubsw (u8 x s8, adjacent pairs
// summed into saturating int16) then vpmaddwd by ones (pairs of int16 into int32 lanes).
//
// Exactness: a vpmaddubsw pair is x0 w0 + x1 w1 with x in 0..255. For k <= 7, |w| <= 64 (the
// full grid's -64 at k = 7) and |pair| <= 2 * 255 * 64 = 32640 < 32767: exact. For k = 8,
// |w| <= 128 would reach 65280, so the activations are split, x = (x & 0x7f) + (x & 0x80):
// pairs of the low part reach 2 * 127 * 128 = 32512, of the high part 2 * 128 * 127 = 32512 or,
// for two codes -128, -32768 = INT16_MIN itself: all exact; the two products
// are widened to int32 separately and added there. Only bit class 8 pays the second multiply.
//
// Decode of a quad into the two registers (planes of packed_weights.hpp):
//   f = 4 (32 bytes): low nibbles -> channels 0-7, high nibbles -> channels 8-15
//   f = 2 (16 bytes): vbroadcasti128, vpsrlvq by (0,0,2,2) -> 0-7, by (4,4,6,6) -> 8-15
//   f = 1 (8 bytes):  vpbroadcastq, vpsrlvq by (0,1,2,3) -> 0-7, by (4,5,6,7) -> 8-15
// then mask, OR a second plane in, subtract 2^(k-1) (k = 1: 2u - 1). AVX-VNNI
// (packed_avx_vnni.hpp) reuses this decode.
//
// Micro-kernel: MR = 4 rows x one tile, 8 ymm accumulators (the int16 sums of bit classes 1..6:
// MR = 6, 12 registers). Bit classes 1..6 sum several quads'
// vpmaddubsw pairs in int16 before widening them (avx2_int16_quads: one multiply per quad and
// row-half instead of two); class 7 widens every quad, class 8 splits the activations.
#pragma once

#include <bitgrad/core/simd.hpp> // immintrin.h, with GCC 12's intrinsic warnings silenced
#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if BITGRAD_PACKED_X86

namespace bitgrad::detail {

template <>
struct packed_isa_traits<isa::avx2> {
  using panel = std::int8_t;
  static constexpr std::int32_t activation_shift = 0;
};

/// Fields of plane width F in dot order: lo = elements 0..31, hi = elements 32..63.
template <int F>
BITGRAD_TARGET_AVX2 inline void avx2_plane(const std::uint8_t* src, __m256i& lo, __m256i& hi) {
  if constexpr (F == 1) {
    long long bytes;
    std::memcpy(&bytes, src, 8);
    const __m256i v = _mm256_set1_epi64x(bytes), m = _mm256_set1_epi8(0x01);
    lo = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(3, 2, 1, 0)), m);
    hi = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(7, 6, 5, 4)), m);
  } else if constexpr (F == 2) {
    const __m256i v =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    const __m256i m = _mm256_set1_epi8(0x03);
    lo = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(2, 2, 0, 0)), m);
    hi = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(6, 6, 4, 4)), m);
  } else {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i m = _mm256_set1_epi8(0x0F);
    lo = _mm256_and_si256(v, m);
    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
  }
}

/// The 64 codes of one full-tile quad at K bits: lo = channels 0-7, hi = channels 8-15.
template <int K>
BITGRAD_TARGET_AVX2 inline void avx2_decode_quad(const std::uint8_t* src, __m256i& lo,
                                                 __m256i& hi) {
  constexpr packed_layout l = packed_layout_of(K);
  if constexpr (l.raw_bytes) {
    lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
  } else {
    avx2_plane<l.plane[0].width>(src, lo, hi);
    if constexpr (l.planes == 2) {
      __m256i lo2, hi2;
      avx2_plane<l.plane[1].width>(src + 8 * l.plane[0].width, lo2, hi2);
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(lo2, l.plane[1].shift));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(hi2, l.plane[1].shift));
    }
    if constexpr (K == 1) {
      const __m256i one = _mm256_set1_epi8(1);
      lo = _mm256_sub_epi8(_mm256_add_epi8(lo, lo), one);
      hi = _mm256_sub_epi8(_mm256_add_epi8(hi, hi), one);
    } else {
      const __m256i bias = _mm256_set1_epi8(static_cast<char>(1 << (K - 1)));
      lo = _mm256_sub_epi8(lo, bias);
      hi = _mm256_sub_epi8(hi, bias);
    }
  }
}

/// Per-channel sums of a decoded register (8 channels x 4 codes) added to s (int32 lanes).
BITGRAD_TARGET_AVX2 inline __m256i avx2_code_sums(__m256i s, __m256i w) {
  const __m256i p = _mm256_maddubs_epi16(_mm256_set1_epi8(1), w); // |pair| <= 254
  return _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

template <int K>
BITGRAD_TARGET_AVX2 void avx2_decode_quads(const std::uint8_t* src, std::size_t nq,
                                           std::int8_t* panel, std::int32_t* sums) {
  constexpr std::size_t qb = packed_layout_of(K).quad_bytes;
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  for (std::size_t q = 0; q < nq; ++q) {
    __m256i lo, hi;
    avx2_decode_quad<K>(src + q * qb, lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + q * packed_quad_codes), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + q * packed_quad_codes + 32), hi);
    if (sums) {
      s0 = avx2_code_sums(s0, lo);
      s1 = avx2_code_sums(s1, hi);
    }
  }
  if (sums) {
    alignas(32) std::int32_t lanes[packed_tile];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 8), s1);
    for (std::size_t c = 0; c < packed_tile; ++c) sums[c] += lanes[c];
  }
}

/// Decodes nq full-tile quads of bit class k from src into panel (dot order, int8); adds each
/// channel's codes to sums when sums is not null. Also used by the AVX-VNNI path.
inline void packed_decode_quads(isa::avx2, int k, const std::uint8_t* src, std::size_t nq,
                                std::int8_t* panel, std::int32_t* sums) {
  switch (k) {
  case 1:
    avx2_decode_quads<1>(src, nq, panel, sums);
    break;
  case 2:
    avx2_decode_quads<2>(src, nq, panel, sums);
    break;
  case 3:
    avx2_decode_quads<3>(src, nq, panel, sums);
    break;
  case 4:
    avx2_decode_quads<4>(src, nq, panel, sums);
    break;
  case 5:
    avx2_decode_quads<5>(src, nq, panel, sums);
    break;
  case 6:
    avx2_decode_quads<6>(src, nq, panel, sums);
    break;
  case 7:
    avx2_decode_quads<7>(src, nq, panel, sums);
    break;
  default:
    avx2_decode_quads<8>(src, nq, panel, sums);
    break;
  }
}

/// acc += x . w per int32 lane (4 products), exact when every |w| <= 63 (SplitX false) or for
/// any int8 w (SplitX true: x split into its low 7 bits and its top bit).
template <bool SplitX>
BITGRAD_TARGET_AVX2 inline __m256i avx2_dot(__m256i acc, __m256i x, __m256i w) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (SplitX) {
    const __m256i xl = _mm256_and_si256(x, _mm256_set1_epi8(0x7F));
    const __m256i xh = _mm256_and_si256(x, _mm256_set1_epi8(static_cast<char>(0x80)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xl, w), ones));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xh, w), ones));
  } else {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones));
  }
}

/// One quad for MR rows: acc(r) += x(r, quad) . w. Partial: the quad holds n < 4 inputs.
template <std::size_t MR, bool SplitX, bool Partial>
BITGRAD_TARGET_AVX2 __attribute__((always_inline)) inline void
avx2_quad(__m256i (&acc)[MR][2], const std::uint8_t* x, std::size_t lda, const std::int8_t* wq,
          std::size_t n) {
  const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq));
  const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 32));
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    const __m256i xb = _mm256_set1_epi32(Partial ? packed_load_quad(x + r * lda, n)
                                                 : packed_load_quad(x + r * lda));
    acc[r][0] = avx2_dot<SplitX>(acc[r][0], xb, w0);
    acc[r][1] = avx2_dot<SplitX>(acc[r][1], xb, w1);
  }
}

template <std::size_t MR, bool SplitX>
BITGRAD_TARGET_AVX2 void avx2_rows(const std::uint8_t* x, std::size_t lda, std::size_t nq,
                                   std::size_t tail, const std::int8_t* panel, std::int32_t* c,
                                   bool accumulate) {
  __m256i acc[MR][2];
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (std::size_t h = 0; h < 2; ++h)
      acc[r][h] =
          accumulate
              ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + r * packed_tile + 8 * h))
              : _mm256_setzero_si256();
  const std::size_t full = tail ? nq - 1 : nq;
  for (std::size_t q = 0; q < full; ++q)
    avx2_quad<MR, SplitX, false>(acc, x + q * packed_quad, lda, panel + q * packed_quad_codes,
                                 packed_quad);
  if (tail)
    avx2_quad<MR, SplitX, true>(acc, x + full * packed_quad, lda, panel + full * packed_quad_codes,
                                tail);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (std::size_t h = 0; h < 2; ++h)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * packed_tile + 8 * h), acc[r][h]);
}

/// Quads of bit class k whose vpmaddubsw pairs may be summed in int16 lanes before one
/// vpmaddwd widens them: a pair x0 w0 + x1 w1 has |pair| <= 2 * 255 * m with m = max |w| =
/// 2^(k-1) (k = 1: the codes are +-1, m = 1), so the sum of g pairs is exact while
///
///   g * 510 * m <= 32767:   k = 1..7  ->  g = 64, 32, 16, 8, 4, 2, 1.
///
/// (k = 8 splits the activations instead, avx2_dot<true>.)
constexpr std::size_t avx2_int16_quads(int k) {
  const std::size_t m = k <= 1 ? 1 : std::size_t(1) << (k - 1);
  return 32767 / (2 * 255 * m);
}

/// One whole quad for MR rows into int16 sums: s(r) += vpmaddubsw(x(r, quad), w)
/// (avx2_rows_int16). Each row's broadcast, two multiplies and two adds are one asm statement
/// with two scratch registers: written with intrinsics, GCC hoisted the MR broadcasts and 2 MR
/// products above the adds, ran out of the 16 ymm registers and copied the sums between
/// registers every quad (one kept on the stack), slower than the int32 kernel.
template <std::size_t MR>
BITGRAD_TARGET_AVX2 __attribute__((always_inline)) inline void
avx2_quad_int16(__m256i (&s)[MR][2], const std::uint8_t* x, std::size_t lda,
                const std::int8_t* wq) {
  const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq));
  const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 32));
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) {
    __m256i xb, product;
    // AT&T order: vpmaddubsw w, xb, product = vpmaddubsw(xb (u8), w (s8)).
    asm("vpbroadcastd %[x], %[xb]\n\t"
        "vpmaddubsw %[w0], %[xb], %[p]\n\t"
        "vpaddw %[p], %[s0], %[s0]\n\t"
        "vpmaddubsw %[w1], %[xb], %[p]\n\t"
        "vpaddw %[p], %[s1], %[s1]"
        : [s0] "+x"(s[r][0]), [s1] "+x"(s[r][1]), [xb] "=&x"(xb), [p] "=&x"(product)
        : [w0] "x"(w0), [w1] "x"(w1),
          [x] "m"(*reinterpret_cast<const std::uint8_t(*)[packed_quad]>(x + r * lda)));
  }
}

/// c(r, :) (+)= vpmaddwd(s(r), ones): MR rows of int16 sums widened into int32 (row stride
/// packed_tile), added to c when add.
template <std::size_t MR>
BITGRAD_TARGET_AVX2 __attribute__((always_inline)) inline void
avx2_widen_int16(const __m256i (&s)[MR][2], std::int32_t* c, bool add) {
  const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (std::size_t h = 0; h < 2; ++h) {
      auto* dst = reinterpret_cast<__m256i*>(c + r * packed_tile + 8 * h);
      const __m256i v = _mm256_madd_epi16(s[r][h], ones);
      _mm256_storeu_si256(dst, add ? _mm256_add_epi32(_mm256_loadu_si256(dst), v) : v);
    }
}

/// One int16 group for MR rows: c(r, :) (+)= sum over quads q < nq of x(r, 4q..4q+3) . panel(q),
/// all quads whole; per quad and row one vpmaddubsw and one vpaddw into int16 sums s, then one
/// vpmaddwd by ones widening s and the add into c (int32 rows, stride packed_tile), instead of
/// a vpmaddubsw, a vpmaddwd and a vpaddd per quad. 1 <= nq <= avx2_int16_quads(k) of the
/// tile's class k. (One group per call and no tail quad, so the sums have one use after the
/// loop: else GCC copied them between registers every quad and kept one on the stack.)
template <std::size_t MR>
BITGRAD_TARGET_AVX2 void avx2_rows_int16(const std::uint8_t* x, std::size_t lda, std::size_t nq,
                                         const std::int8_t* panel, std::int32_t* c,
                                         bool accumulate) {
  __m256i s[MR][2];
#pragma GCC unroll 16
  for (std::size_t r = 0; r < MR; ++r) s[r][0] = s[r][1] = _mm256_setzero_si256();
  for (std::size_t q = 0; q < nq; ++q)
    avx2_quad_int16<MR>(s, x + q * packed_quad, lda, panel + q * packed_quad_codes);
  avx2_widen_int16<MR>(s, c, accumulate);
}

template <bool SplitX>
void avx2_rows_all(std::size_t rows, const std::uint8_t* x, std::size_t lda, std::size_t nq,
                   std::size_t tail, const std::int8_t* panel, std::int32_t* c, bool accumulate) {
  std::size_t i = 0;
  for (; i + 4 <= rows; i += 4)
    avx2_rows<4, SplitX>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
  if (i + 2 <= rows) {
    avx2_rows<2, SplitX>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
    i += 2;
  }
  if (i < rows)
    avx2_rows<1, SplitX>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
}

/// avx2_rows_int16 on groups of `group` whole quads, on rows of 6, then 4, 2, 1; a tail quad
/// (tail < 4 inputs) through avx2_rows, accumulating. MR = 6 takes all 16 ymm (12 int16 sums,
/// 2 panel registers, the broadcast, the product) and issues 35 instructions per 12 vpmaddubsw
/// against MR = 4's 25 per 8: on the Zen 3 host (AVX2, 2026-12-07, issue 19, h19-pair2) the
/// kernel alone (64 rows x 2 tiles, 36 / 72 / 144 quads, best of 15 CPU times, 2 runs) took
/// 0.87-0.94 of MR = 4's time at k = 4, 0.87-0.90 at k = 6, 0.94-0.98 at k = 1 and 2; VGG-style
/// and ResNet-20 at batch 256 0.949 / 0.948 of main's instructions, CPU per call medians 0.891
/// / 0.847 over 7 rounds (benchmarks/README.md).
inline void avx2_rows_int16_all(std::size_t rows, const std::uint8_t* x, std::size_t lda,
                                std::size_t nq, std::size_t tail, std::size_t group,
                                const std::int8_t* panel, std::int32_t* c, bool accumulate) {
  const std::size_t full = tail ? nq - 1 : nq;
  for (std::size_t q0 = 0; q0 < full; q0 += group) {
    const std::size_t n = std::min(group, full - q0);
    const std::uint8_t* xq = x + q0 * packed_quad;
    const std::int8_t* wq = panel + q0 * packed_quad_codes;
    const bool add = accumulate || q0 > 0;
    std::size_t i = 0;
    for (; i + 6 <= rows; i += 6)
      avx2_rows_int16<6>(xq + i * lda, lda, n, wq, c + i * packed_tile, add);
    if (i + 4 <= rows) {
      avx2_rows_int16<4>(xq + i * lda, lda, n, wq, c + i * packed_tile, add);
      i += 4;
    }
    if (i + 2 <= rows) {
      avx2_rows_int16<2>(xq + i * lda, lda, n, wq, c + i * packed_tile, add);
      i += 2;
    }
    if (i < rows) avx2_rows_int16<1>(xq + i * lda, lda, n, wq, c + i * packed_tile, add);
  }
  if (tail)
    avx2_rows_all<false>(rows, x + full * packed_quad, lda, 1, tail,
                         panel + full * packed_quad_codes, c, accumulate || full > 0);
}

/// c(i, 0..15) (+)= sum over quads q < nq of x(i, 4q..4q+3) . panel(q, c, 0..3) for rows
/// i < rows; the last quad holds only `tail` inputs when tail > 0. `bits` is the tile's class.
inline void packed_rows(isa::avx2, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                        std::size_t nq, std::size_t tail, int bits, const std::int8_t* panel,
                        std::int32_t* c, bool accumulate) {
  const std::size_t group = bits == 8 ? 0 : avx2_int16_quads(bits);
  if (bits == 8)
    avx2_rows_all<true>(rows, x, lda, nq, tail, panel, c, accumulate);
  else if (group >= 2 && nq > 0)
    avx2_rows_int16_all(rows, x, lda, nq, tail, group, panel, c, accumulate);
  else
    avx2_rows_all<false>(rows, x, lda, nq, tail, panel, c, accumulate);
}

/// Tile pairs, one whole quad for MR <= 2 rows of both tiles into int16 sums: s(r, 0..1) +=
/// vpmaddubsw(x(r, quad), tile 0's two registers at w0), s(r, 2..3) the same with tile 1's at
/// w1; one broadcast feeds four multiplies (32 channels). The four panel registers are loaded
/// once per quad: 8 sums + 4 panel + broadcast + product = 14 ymm. (MR = 3, 12 sums with the
/// panel as vpmaddubsw's memory operand, measured: see avx2_rows_pair_group.) One asm statement per
/// row, as avx2_quad_int16 (which see).
template <std::size_t MR>
BITGRAD_TARGET_AVX2 __attribute__((always_inline)) inline void
avx2_quad_pair_int16(__m256i (&s)[MR][4], const std::uint8_t* x, std::size_t lda,
                     const std::int8_t* w0, const std::int8_t* w1) {
  static_assert(MR <= 2, "16 ymm registers: 4 MR sums + 4 panel + 2 scratch");
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + 32));
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1));
  const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + 32));
#pragma GCC unroll 2
  for (std::size_t r = 0; r < MR; ++r) {
    __m256i xb, product;
    // AT&T order: vpmaddubsw w, xb, product = vpmaddubsw(xb (u8), w (s8)).
    asm("vpbroadcastd %[x], %[xb]\n\t"
        "vpmaddubsw %[a], %[xb], %[p]\n\t"
        "vpaddw %[p], %[s0], %[s0]\n\t"
        "vpmaddubsw %[b], %[xb], %[p]\n\t"
        "vpaddw %[p], %[s1], %[s1]\n\t"
        "vpmaddubsw %[c], %[xb], %[p]\n\t"
        "vpaddw %[p], %[s2], %[s2]\n\t"
        "vpmaddubsw %[d], %[xb], %[p]\n\t"
        "vpaddw %[p], %[s3], %[s3]"
        : [s0] "+x"(s[r][0]), [s1] "+x"(s[r][1]), [s2] "+x"(s[r][2]), [s3] "+x"(s[r][3]),
          [xb] "=&x"(xb), [p] "=&x"(product)
        : [a] "x"(a), [b] "x"(b), [c] "x"(c), [d] "x"(d),
          [x] "m"(*reinterpret_cast<const std::uint8_t(*)[packed_quad]>(x + r * lda)));
  }
}

/// One int16 group for MR rows of a tile pair (avx2_rows_int16 on two tiles): c0(r, :) (+)=
/// sum over quads q < nq of x(r, 4q..4q+3) . panel(q), c1(r, :) the same with the panel at
/// panel + panel_stride; 1 <= nq <= avx2_int16_quads(k), all quads whole.
template <std::size_t MR>
BITGRAD_TARGET_AVX2 void avx2_rows_pair_int16(const std::uint8_t* x, std::size_t lda,
                                              std::size_t nq, const std::int8_t* panel,
                                              std::size_t panel_stride, std::int32_t* c0,
                                              std::int32_t* c1, bool accumulate) {
  __m256i s[MR][4];
#pragma GCC unroll 4
  for (std::size_t r = 0; r < MR; ++r)
    s[r][0] = s[r][1] = s[r][2] = s[r][3] = _mm256_setzero_si256();
  const std::int8_t* const end = panel + nq * packed_quad_codes;
  for (; panel != end; panel += packed_quad_codes, x += packed_quad)
    avx2_quad_pair_int16<MR>(s, x, lda, panel, panel + panel_stride);
  const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 4
  for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (std::size_t h = 0; h < 4; ++h) {
      auto* dst = reinterpret_cast<__m256i*>((h < 2 ? c0 : c1) + r * packed_tile + 8 * (h % 2));
      const __m256i v = _mm256_madd_epi16(s[r][h], ones);
      _mm256_storeu_si256(dst, accumulate ? _mm256_add_epi32(_mm256_loadu_si256(dst), v) : v);
    }
}

/// One int16 group of a tile pair on rows i < rows, 2 at a time, then 1. (MR = 3, 12 sums
/// with the panel as vpmaddubsw's memory operand, 15 loads per 12 multiplies, measured in the
/// loop of packed_rows_pair's comment: pair / one-tile time 1.04-1.08 at k = 1, 2, 4 (MR =
/// 2: 1.00-1.07), 1.06-1.11 at k = 6 (MR = 2: 1.11-1.27); slower than the one-tile kernel either
/// way, not kept.)
inline void avx2_rows_pair_group(std::size_t rows, const std::uint8_t* x, std::size_t lda,
                                 std::size_t nq, const std::int8_t* panel, std::size_t panel_stride,
                                 std::int32_t* c0, std::int32_t* c1, bool accumulate) {
  std::size_t i = 0;
  for (; i + 2 <= rows; i += 2)
    avx2_rows_pair_int16<2>(x + i * lda, lda, nq, panel, panel_stride, c0 + i * packed_tile,
                            c1 + i * packed_tile, accumulate);
  if (i < rows)
    avx2_rows_pair_int16<1>(x + i * lda, lda, nq, panel, panel_stride, c0 + i * packed_tile,
                            c1 + i * packed_tile, accumulate);
}

/// Tile pairs on AVX2, not wired into the GEMM drivers (packed_gemm_run, packed_conv_flat_run
/// look for packed_rows_pair without the bit class, AVX-512 VNNI's signature): on the Zen 3
/// host (2026-12-07, issue 19, h19-pair2, benchmarks/README.md) it ran no faster than the
/// one-tile kernel on both tiles. Kernel alone, 64 rows x 2 tiles, 36 / 72 / 144 quads, best
/// of 15 CPU times: pair / one-tile time 1.00-1.07 (k = 1, 2, 4), 1.11-1.27 (k = 6) at MR = 2,
/// 1.04-1.11 at MR = 3; wired in, VGG-style and ResNet-20 at batch 256 took the same CPU per
/// call within the noise (medians 1.015 / 0.982 over 7 rounds) for 1.2-3.5 % fewer
/// instructions (callgrind). Without VNNI each multiply needs its own vpaddw, so a pair issues
/// the instructions of the one-tile kernel but for loads moved from broadcasts to the panel,
/// and the loads were not the limit. To wire it: pass the class to packed_rows_pair there.
///
/// Two tiles at once for rows i < rows (packed_rows_pair of packed_avx512_vnni.hpp: segments s
/// of nq[s] whole quads of the rows at x + off[s], row i at + i * lda, then a quad of `tail`
/// inputs after the last segment's quads when tail > 0; tile 0's panel at panel, tile 1's at
/// panel + panel_stride, their sums in c0 / c1, row i at + i * packed_tile). Bit classes
/// 1..6: int16 groups of avx2_int16_quads(bits) quads (a group ends at a segment's end) on
/// avx2_rows_pair_int16; classes 7 and 8 (one quad per group, or split activations) and the
/// tail quad run each tile on the one-tile kernels.
inline void packed_rows_pair(isa::avx2, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                             const std::size_t* off, const std::size_t* nq, std::size_t segments,
                             std::size_t tail, int bits, const std::int8_t* panel,
                             std::size_t panel_stride, std::int32_t* c0, std::int32_t* c1,
                             bool accumulate) {
  const std::size_t group = bits == 8 ? 0 : avx2_int16_quads(bits);
  const std::uint8_t* xs = x;
  const std::int8_t* p = panel;
  if (group < 2) {
    for (std::size_t s = 0; s < segments; ++s, accumulate = true) {
      xs = x + off[s];
      packed_rows(isa::avx2{}, rows, xs, lda, nq[s], 0, bits, p, c0, accumulate);
      packed_rows(isa::avx2{}, rows, xs, lda, nq[s], 0, bits, p + panel_stride, c1, accumulate);
      xs += nq[s] * packed_quad, p += nq[s] * packed_quad_codes;
    }
  } else {
    for (std::size_t s = 0; s < segments; ++s) {
      xs = x + off[s];
      for (std::size_t q0 = 0; q0 < nq[s]; q0 += group, accumulate = true)
        avx2_rows_pair_group(rows, xs + q0 * packed_quad, lda, std::min(group, nq[s] - q0),
                             p + q0 * packed_quad_codes, panel_stride, c0, c1, accumulate);
      xs += nq[s] * packed_quad, p += nq[s] * packed_quad_codes;
    }
  }
  if (tail || !accumulate) { // the tail quad (or, with no quads at all, the zero sums)
    packed_rows(isa::avx2{}, rows, xs, lda, tail ? 1 : 0, tail, bits, p, c0, accumulate);
    packed_rows(isa::avx2{}, rows, xs, lda, tail ? 1 : 0, tail, bits, p + panel_stride, c1,
                accumulate);
  }
}

} // namespace bitgrad::detail

#endif // BITGRAD_PACKED_X86
