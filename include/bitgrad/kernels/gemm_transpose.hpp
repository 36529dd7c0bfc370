// Square register-block transposes for GEMM packing: dst[p * ldd + r] = src[r * ld + p] for
// r, p < N, i.e. N rows loaded as registers of N values come out as N columns.
//
//   src rows r0..r(L-1)           dst rows p0..p(L-1)
//   [ a0 a1 a2 .. ]               [ a0 b0 c0 .. ]
//   [ b0 b1 b2 .. ]     ---->     [ a1 b1 c1 .. ]
//   [ c0 c1 c2 .. ]               [ a2 b2 c2 .. ]
//
// One overload per instruction set, chosen by the register width N * sizeof(T) among those
// compiled in: AVX-512F (16 x 16 float, 8 x 8 double), AVX (8 x 8, 4 x 4), SSE2 (4 x 4, 2 x 2),
// and a scalar loop for any other size or target. Each is a fixed shuffle network: unpack
// neighbouring rows, then move 64-bit pairs and 128-bit lanes into place.
#pragma once

#include <bitgrad/core/simd.hpp>

#include <cstddef>
#include <type_traits>

namespace bitgrad::detail {

/// Any size on any target: element by element.
template <class T, std::size_t N>
void gemm_transpose_square(const T* src, std::size_t ld, T* dst, std::size_t ldd,
                           const xsimd::generic&) {
  for (std::size_t r = 0; r < N; ++r) {
    for (std::size_t p = 0; p < N; ++p) dst[p * ldd + r] = src[r * ld + p];
  }
}

#if XSIMD_WITH_SSE2
template <class T, std::size_t N>
void gemm_transpose_square(const T* src, std::size_t ld, T* dst, std::size_t ldd,
                           const xsimd::sse2&) {
  if constexpr (sizeof(T) == 4) {
    __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + ld);
    __m128 r2 = _mm_loadu_ps(src + 2 * ld), r3 = _mm_loadu_ps(src + 3 * ld);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(dst, r0);
    _mm_storeu_ps(dst + ldd, r1);
    _mm_storeu_ps(dst + 2 * ldd, r2);
    _mm_storeu_ps(dst + 3 * ldd, r3);
  } else {
    const __m128d r0 = _mm_loadu_pd(src), r1 = _mm_loadu_pd(src + ld);
    _mm_storeu_pd(dst, _mm_unpacklo_pd(r0, r1));
    _mm_storeu_pd(dst + ldd, _mm_unpackhi_pd(r0, r1));
  }
}
#endif

#if XSIMD_WITH_AVX
template <class T, std::size_t N>
void gemm_transpose_square(const T* src, std::size_t ld, T* dst, std::size_t ldd,
                           const xsimd::avx&) {
  if constexpr (sizeof(T) == 4) {
    __m256 r[8], t[8];
    for (std::size_t i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld);
    for (std::size_t i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    // r[4g + j], 128-bit lane L: column 4L + j of rows 4g .. 4g + 3.
    for (std::size_t g = 0; g < 8; g += 4) {
      r[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
      r[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
      r[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
      r[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (std::size_t j = 0; j < 4; ++j) {
      _mm256_storeu_ps(dst + j * ldd, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
      _mm256_storeu_ps(dst + (4 + j) * ldd, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
    }
  } else {
    __m256d r[4];
    for (std::size_t i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(src + i * ld);
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
  }
}
#endif

#if XSIMD_WITH_AVX512F
/// out[L] = 128-bit lane L of every one of a, b, c, d, in that order (a 4 x 4 transpose of
/// 128-bit lanes); stored at dst + row[L] * ldd.
template <class T, class V, class Shuffle, class Store>
inline void gemm_transpose_lanes_4x4(V a, V b, V c, V d, Shuffle shuffle, Store store) {
  const V s0 = shuffle(a, b, std::integral_constant<int, 0x88>{});
  const V s1 = shuffle(a, b, std::integral_constant<int, 0xdd>{});
  const V s2 = shuffle(c, d, std::integral_constant<int, 0x88>{});
  const V s3 = shuffle(c, d, std::integral_constant<int, 0xdd>{});
  store(0, shuffle(s0, s2, std::integral_constant<int, 0x88>{}));
  store(1, shuffle(s1, s3, std::integral_constant<int, 0x88>{}));
  store(2, shuffle(s0, s2, std::integral_constant<int, 0xdd>{}));
  store(3, shuffle(s1, s3, std::integral_constant<int, 0xdd>{}));
}

template <class T, std::size_t N>
void gemm_transpose_square(const T* src, std::size_t ld, T* dst, std::size_t ldd,
                           const xsimd::avx512f&) {
  if constexpr (sizeof(T) == 4) {
    __m512 r[16], t[16];
    for (std::size_t i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld);
    for (std::size_t i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // r[4g + j], 128-bit lane L: column 4L + j of rows 4g .. 4g + 3.
    for (std::size_t g = 0; g < 16; g += 4) {
      const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
      const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
      r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
      r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
      r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
      r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // Output row 4L + j gathers lane L of r[j], r[4 + j], r[8 + j], r[12 + j].
    for (std::size_t j = 0; j < 4; ++j) {
      gemm_transpose_lanes_4x4<T>(
          r[j], r[4 + j], r[8 + j], r[12 + j],
          [](__m512 x, __m512 y, auto imm) {
            return _mm512_shuffle_f32x4(x, y, decltype(imm)::value);
          },
          [&](std::size_t lane, __m512 v) { _mm512_storeu_ps(dst + (4 * lane + j) * ldd, v); });
    }
  } else {
    __m512d r[8], t[8];
    for (std::size_t i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + i * ld);
    // t[2g + j], 128-bit lane L: column 2L + j of rows 2g, 2g + 1.
    for (std::size_t i = 0; i < 8; i += 2) {
      t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
    }
    // Output row 2L + j gathers lane L of t[j], t[2 + j], t[4 + j], t[6 + j].
    for (std::size_t j = 0; j < 2; ++j) {
      gemm_transpose_lanes_4x4<T>(
          t[j], t[2 + j], t[4 + j], t[6 + j],
          [](__m512d x, __m512d y, auto imm) {
            return _mm512_shuffle_f64x2(x, y, decltype(imm)::value);
          },
          [&](std::size_t lane, __m512d v) { _mm512_storeu_pd(dst + (2 * lane + j) * ldd, v); });
    }
  }
}
#endif

/// The instruction set whose registers hold N values of T, if it is compiled in (else generic).
template <class T, std::size_t N>
using gemm_square_arch =
    std::conditional_t<N * sizeof(T) == 64 && XSIMD_WITH_AVX512F, xsimd::avx512f,
                       std::conditional_t<N * sizeof(T) == 32 && XSIMD_WITH_AVX, xsimd::avx,
                                          std::conditional_t<N * sizeof(T) == 16 && XSIMD_WITH_SSE2,
                                                             xsimd::sse2, xsimd::generic>>>;

/// Transposes one N x N block with the widest shuffles available for it.
template <class T, std::size_t N>
inline void gemm_transpose_square(const T* src, std::size_t ld, T* dst, std::size_t ldd) {
  gemm_transpose_square<T, N>(src, ld, dst, ldd, gemm_square_arch<T, N>{});
}

} // namespace bitgrad::detail
