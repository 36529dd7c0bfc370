// Fused additive-noise kernels on simd_batch<T> (the training forward and backward of
// quant/noise_bits.hpp): the noise is generated in registers from the counter-based hash, so
// one pass over a group writes wq = w + delta * u (fprop), or adds grad_wq to grad_w and sums
// grad_wq * u (bprop). The formulas, words and layout are at the top of kernels/ref/noise.hpp;
// each kernel here has a scalar twin of the same name and signature in bitgrad::ref.
//
// The hash runs on unsigned integer lanes of T's width (uint32 lanes for float, uint64 lanes
// for double, where the 32-bit arithmetic is masked back to 32 bits), so a register of hashes
// lines up with a register of T.
//
// Exactness against bitgrad::ref:
//   * the noise itself (noise_sample) is bit-exact, for float and double, both kinds, ragged
//     tails included: integer hashing, a bit cast and exact floating-point operations in the
//     same order.
//   * fprop has one multiply-add, w + delta * u, which GCC may fuse into an FMA in one kernel
//     and not in the other (-ffp-contract=fast is the GNU default): equal within 1 ulp of the
//     result. grad_w of bprop is bit-exact (one add).
//   * the sum of bprop is a reduction: one partial sum per lane, lanes added at the end
//     (lane 0 first), so it differs from the sequential reference by rounding only
//     (relative ~ n * epsilon of sum |grad_wq * u|).
//   Checked by tests/unit/test_noise_bits.cpp at -O2 (SSE2) and -march=native (AVX-512).
// No allocation: a tail uses register-sized stack buffers.
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/kernels/ref/noise.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace bitgrad {

namespace detail {

/// Unsigned integer lanes as wide as T, one register.
template <class T>
using noise_ubatch =
    xsimd::batch<std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>, simd_arch>;

/// Keeps the low 32 bits (a no-op on 32-bit lanes).
template <class T>
noise_ubatch<T> low32(const noise_ubatch<T>& x) {
  if constexpr (sizeof(T) == 4)
    return x;
  else
    return x & noise_ubatch<T>(0xffffffffull);
}

/// noise_mix32 on every lane.
template <class T>
noise_ubatch<T> mix32(noise_ubatch<T> x) {
  using U = noise_ubatch<T>;
  x = x ^ (x >> 16);
  x = low32<T>(x * U(0x7feb352du));
  x = x ^ (x >> 15);
  x = low32<T>(x * U(0x846ca68bu));
  x = x ^ (x >> 16);
  return x;
}

/// noise_unit on every lane.
template <class T>
qbatch<T> unit(const noise_ubatch<T>& h) {
  using U = noise_ubatch<T>;
  if constexpr (sizeof(T) == 4) {
    const auto f = xsimd::bitwise_cast<qbatch<T>>(U(0x3f800000u) | (h >> 9));
    return (f - qbatch<T>(1.5f)) + qbatch<T>(0x1p-24f);
  } else {
    const auto d = xsimd::bitwise_cast<qbatch<T>>(U(0x3ff0000000000000ull) | (h << 20));
    return (d - qbatch<T>(1.5)) + qbatch<T>(0x1p-33);
  }
}

/// The noise of elements index .. index + lanes - 1 (ref::noise_value on every lane).
template <class T>
qbatch<T> noise_batch(noise_key key, std::size_t index, noise_kind kind) {
  using U = noise_ubatch<T>;
  using V = typename U::value_type;
  constexpr std::size_t lanes = U::size;
  static_assert(lanes == qbatch<T>::size, "noise lanes must match the value lanes");
  V iota[lanes];
  for (std::size_t k = 0; k < lanes; ++k) iota[k] = static_cast<V>(k);
  const U j =
      low32<T>(U(static_cast<V>(static_cast<std::uint32_t>(index))) + U::load_unaligned(iota));
  const U inner = mix32<T>(j ^ U(static_cast<V>(key.lo)));
  if (kind == noise_kind::uniform) return unit<T>(mix32<T>(inner ^ U(static_cast<V>(key.hi))));
  qbatch<T> sum = unit<T>(mix32<T>(inner ^ U(static_cast<V>(key.hi))));
  for (std::uint32_t r = 1; r < 4; ++r)
    sum = sum + unit<T>(mix32<T>(inner ^ U(static_cast<V>(static_cast<std::uint32_t>(
                                             key.hi + r * noise_round_step)))));
  return sum * qbatch<T>(gaussian_noise_scale<T>);
}

} // namespace detail

template <class T>
void noise_sample(std::size_t n, noise_key key, std::size_t first, noise_kind kind, T* u) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::noise_sample(n, key, first, kind, u);
  } else {
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      detail::store_part(u + i, detail::noise_batch<T>(key, first + i, kind), m);
    });
  }
}

template <class T>
void noise_fprop(std::size_t n, const T* w, T* wq, T delta, noise_key key, std::size_t first,
                 noise_kind kind) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::noise_fprop(n, w, wq, delta, key, first, kind);
  } else {
    using B = detail::qbatch<T>;
    const B d(delta);
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B u = detail::noise_batch<T>(key, first + i, kind);
      detail::store_part(wq + i, detail::load_part(w + i, m) + d * u, m);
    });
  }
}

template <class T>
T noise_bprop(std::size_t n, const T* grad_wq, T* grad_w, noise_key key, std::size_t first,
              noise_kind kind) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::noise_bprop(n, grad_wq, grad_w, key, first, kind);
  } else {
    using B = detail::qbatch<T>;
    B sum(T(0));
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B g = detail::load_part(grad_wq + i, m); // zero padded: the tail adds nothing
      detail::store_part(grad_w + i, detail::load_part(grad_w + i, m) + g, m);
      sum = sum + g * detail::noise_batch<T>(key, first + i, kind);
    });
    return detail::sum_lanes(sum);
  }
}

} // namespace bitgrad
