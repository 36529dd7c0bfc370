// Weight initialisation: Kaiming-uniform as PyTorch's nn.Linear / nn.Conv2d default.
//
//   weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))   (kaiming_uniform_ with a = sqrt(5))
//   bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
// fan_in = in_features (linear) or in_channels/groups * kernel_h * kernel_w (conv2d).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>

namespace bitgrad::nn {

/// Fills [first, first + n) with U(-bound, bound) drawn from `rng`.
template <class T>
void fill_uniform(T* first, std::size_t n, T bound, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> dist(-static_cast<double>(bound),
                                              static_cast<double>(bound));
  for (std::size_t i = 0; i < n; ++i) first[i] = static_cast<T>(dist(rng));
}

/// PyTorch's default bound for both weights and biases: 1 / sqrt(fan_in).
template <class T>
T kaiming_uniform_bound(std::size_t fan_in) {
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(fan_in == 0 ? 1 : fan_in)));
}

} // namespace bitgrad::nn
