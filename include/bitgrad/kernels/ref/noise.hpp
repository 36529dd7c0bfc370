// Reference additive-noise kernels (bitgrad::ref): the plain scalar oracles for
// kernels/noise.hpp, same signatures, same operations in the same order.
//
// The noise is counter-based: u is a pure function of (key, element index, kind), so a forward
// and its backward see the same u without storing it, and the result depends neither on the
// thread count nor on how a tensor is cut into calls.
//
//   w  : [ w_0 w_1 ... w_{n-1} ]       one group, element i has global index first + i
//   u  : [ u(first) ... ]              u(j) = noise(key, j), never stored
//   wq : [ w_0 + delta u(first) ... ]  same layout
//
// Words
//   key     two 32-bit words derived from (seed, step) by splitmix64 (make_noise_key).
//   hash    h_r(j) = mix32(mix32(j ^ key.lo) ^ (key.hi + r * 0x9e3779b9)), 32 bits, where
//           mix32 is the "lowbias32" integer hash (x ^= x >> 16; x *= 0x7feb352d;
//           x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16) and r is the round (0 .. 3).
//           j is the element's index modulo 2^32.
//   unit    a uniform value in (-1/2, 1/2) from a hash, built from its top mantissa bits:
//             float  : (bits(0x3f800000 | h >> 9) - 1.5) + 2^-24    (23 bits; (m + 1/2) 2^-23 -
//             1/2) double : (bits(0x3ff00000_00000000 | h << 20) - 1.5) + 2^-33   ((h + 1/2) 2^-32
//             - 1/2)
//           every value is exact and the set of values is symmetric about 0 (mean exactly 0).
//   kind    uniform : u = unit(h_0)                     variance 1/12
//           gaussian: u = (((unit(h_0) + unit(h_1)) + unit(h_2)) + unit(h_3)) * sqrt(3)/2
//                     the Irwin-Hall sum of four uniforms scaled to standard deviation 1/2:
//                     approximately N(0, 1/4) (kurtosis 2.7 instead of 3, |u| <= sqrt(3));
//                     no transcendental function, so the SIMD kernel computes the same bits.
//
// Per element: fprop wq = w + delta * u;  bprop grad_w += grad_wq (dQ/dw = 1) and returns
// sum_i grad_wq_i * u_i (= dL/d delta).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace bitgrad {

/// The distribution of the training noise (see the top of this file).
enum class noise_kind {
  uniform, ///< u uniform in (-1/2, 1/2)
  gaussian ///< u ~ N(0, 1/4) approximately (sum of four uniforms)
};

/// The stream of one (seed, step): two 32-bit words.
struct noise_key {
  std::uint32_t lo;
  std::uint32_t hi;
};

/// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// The key of step `step` of the stream `seed`.
inline noise_key make_noise_key(std::uint64_t seed, std::uint64_t step) {
  const std::uint64_t k = splitmix64(splitmix64(seed) ^ step);
  return {static_cast<std::uint32_t>(k), static_cast<std::uint32_t>(k >> 32)};
}

/// lowbias32 (C. Wellons, hash-prospector): a bijective 32-bit mixer.
inline std::uint32_t noise_mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

/// Round-r increment of key.hi.
inline constexpr std::uint32_t noise_round_step = 0x9e3779b9u;

/// sqrt(3) / 2: scales the sum of four unit uniforms (variance 1/3) to standard deviation 1/2.
template <class T>
inline constexpr T gaussian_noise_scale = T(0.86602540378443864676);

/// A unit uniform in (-1/2, 1/2) from a 32-bit hash (see the top of this file).
template <class T>
T noise_unit(std::uint32_t h) {
  if constexpr (sizeof(T) == 4) {
    const float f = std::bit_cast<float>(0x3f800000u | (h >> 9));
    return (f - 1.5f) + 0x1p-24f;
  } else {
    const double d =
        std::bit_cast<double>(0x3ff0000000000000ull | (static_cast<std::uint64_t>(h) << 20));
    return (d - 1.5) + 0x1p-33;
  }
}

namespace ref {

/// u of element `index` (modulo 2^32) for `key`.
template <class T>
T noise_value(noise_key key, std::size_t index, noise_kind kind) {
  const std::uint32_t inner = noise_mix32(static_cast<std::uint32_t>(index) ^ key.lo);
  if (kind == noise_kind::uniform) return noise_unit<T>(noise_mix32(inner ^ key.hi));
  T sum = noise_unit<T>(noise_mix32(inner ^ key.hi));
  for (std::uint32_t r = 1; r < 4; ++r)
    sum = sum + noise_unit<T>(noise_mix32(inner ^ (key.hi + r * noise_round_step)));
  return sum * gaussian_noise_scale<T>;
}

/// u[i] = noise of element first + i.
template <class T>
void noise_sample(std::size_t n, noise_key key, std::size_t first, noise_kind kind, T* u) {
  for (std::size_t i = 0; i < n; ++i) u[i] = noise_value<T>(key, first + i, kind);
}

/// wq = w + delta * u.
template <class T>
void noise_fprop(std::size_t n, const T* w, T* wq, T delta, noise_key key, std::size_t first,
                 noise_kind kind) {
  for (std::size_t i = 0; i < n; ++i) wq[i] = w[i] + delta * noise_value<T>(key, first + i, kind);
}

/// grad_w += grad_wq (dQ/dw = 1); returns sum grad_wq * u (dL/d delta).
template <class T>
T noise_bprop(std::size_t n, const T* grad_wq, T* grad_w, noise_key key, std::size_t first,
              noise_kind kind) {
  T sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    grad_w[i] = grad_w[i] + grad_wq[i];
    sum += grad_wq[i] * noise_value<T>(key, first + i, kind);
  }
  return sum;
}

} // namespace ref
} // namespace bitgrad
