// A tensor of uniform random values in [lo, hi) for the unit tests: one mt19937_64 seeded with
// seed, one double drawn per element in row-major order, then cast to T, so a seed always gives
// the same values.
#pragma once

#include <bitgrad/core/tensor.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <random>

namespace bitgrad::testing {

template <class T, std::size_t N>
tensor<T, N> random_tensor(const std::array<std::size_t, N>& shape, std::uint64_t seed,
                           double lo = -1.0, double hi = 1.0) {
  tensor<T, N> t = tensor<T, N>::from_shape(shape);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  for (auto& v : t) v = static_cast<T>(d(rng));
  return t;
}

} // namespace bitgrad::testing
