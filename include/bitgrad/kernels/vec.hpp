// Small SIMD building blocks on contiguous runs (detail of the conv, pool and elementwise
// kernels): y += a*x, dot(x, y), sum(x). Full simd_batch<T> steps, then a scalar tail.
#pragma once

#include <bitgrad/core/simd.hpp>

#include <cstddef>

namespace bitgrad::detail {

/// Sum of the lanes of b, through memory: xsimd::hadd on AVX-512 double trips a false GCC 12
/// -Wmaybe-uninitialized in _mm512_extractf64x4_pd.
template <class B>
inline typename B::value_type lane_sum(const B& b) {
  alignas(B::arch_type::alignment()) typename B::value_type lanes[B::size];
  b.store_aligned(lanes);
  typename B::value_type s = 0;
  for (std::size_t i = 0; i < B::size; ++i) s += lanes[i];
  return s;
}

/// y[0, n) += a * x[0, n).
template <class T>
inline void axpy(std::size_t n, T a, const T* x, T* y) {
  std::size_t i = 0;
  if constexpr (BITGRAD_HAS_SIMD) {
    using B = simd_batch<T>;
    constexpr std::size_t L = B::size;
    const B av(a);
    for (; i + 2 * L <= n; i += 2 * L) {
      xsimd::fma(av, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
      xsimd::fma(av, B::load_unaligned(x + i + L), B::load_unaligned(y + i + L))
          .store_unaligned(y + i + L);
    }
    for (; i + L <= n; i += L)
      xsimd::fma(av, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

/// sum_i x[i] * y[i].
template <class T>
inline T dot(std::size_t n, const T* x, const T* y) {
  std::size_t i = 0;
  T tail = 0;
  if constexpr (BITGRAD_HAS_SIMD) {
    using B = simd_batch<T>;
    constexpr std::size_t L = B::size;
    B acc0(T(0)), acc1(T(0));
    for (; i + 2 * L <= n; i += 2 * L) {
      acc0 = xsimd::fma(B::load_unaligned(x + i), B::load_unaligned(y + i), acc0);
      acc1 = xsimd::fma(B::load_unaligned(x + i + L), B::load_unaligned(y + i + L), acc1);
    }
    for (; i + L <= n; i += L)
      acc0 = xsimd::fma(B::load_unaligned(x + i), B::load_unaligned(y + i), acc0);
    tail = lane_sum(acc0 + acc1);
  }
  for (; i < n; ++i) tail += x[i] * y[i];
  return tail;
}

/// sum_i x[i].
template <class T>
inline T sum(std::size_t n, const T* x) {
  std::size_t i = 0;
  T tail = 0;
  if constexpr (BITGRAD_HAS_SIMD) {
    using B = simd_batch<T>;
    constexpr std::size_t L = B::size;
    B acc0(T(0)), acc1(T(0));
    for (; i + 2 * L <= n; i += 2 * L) {
      acc0 += B::load_unaligned(x + i);
      acc1 += B::load_unaligned(x + i + L);
    }
    for (; i + L <= n; i += L) acc0 += B::load_unaligned(x + i);
    tail = lane_sum(acc0 + acc1);
  }
  for (; i < n; ++i) tail += x[i];
  return tail;
}

} // namespace bitgrad::detail
