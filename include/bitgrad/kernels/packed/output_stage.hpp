// Output stages of the packed integer kernels: what happens to each exact int32 sum
// acc(i, j) = sum_p (x(i, p) - z) w(j, p) after the kernel has formed it (as gemmlowp's output
// stages, CUTLASS's epilogues).
//
// A stage is a small struct with `operator()(value, i, j)` returning the next value; the last
// stage of a pipeline stores and returns nothing. output::pipeline chains them into the functor
// the kernels call, `out(i, j, acc)` (i: activation row, j: output channel, original order):
//
//   acc (int32) -> scale_bias -> clamp -> quantize_u8 -> store<std::uint8_t>
//                  acc * s[j] + b[j]     (ReLU: lo = 0)  round(v / s_y), clamped to 0..255
//
// For a layer y = s_x s_w[j] cs[j] acc + bias[j]: scale[j] = s_x * s_w[j] * cs[j] (input scale,
// weight scale of j's group, folded channel scale). A next integer layer that reads y as u8
// with scale s_y takes quantize_u8{1 / s_y}; a float consumer stops at store<float>.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

namespace bitgrad::output {

/// value = acc * scale[j] + bias[j] (bias nullable).
struct scale_bias {
  const float* scale;
  const float* bias = nullptr;
  float operator()(std::int32_t acc, std::size_t, std::size_t j) const {
    return static_cast<float>(acc) * scale[j] + (bias ? bias[j] : 0.0f);
  }
};

/// value = min(max(value, lo), hi); NaN becomes lo. ReLU is clamp{0}, ReLU6 clamp{0, 6}.
struct clamp {
  float lo = 0.0f;
  float hi = std::numeric_limits<float>::infinity();
  float operator()(float v, std::size_t, std::size_t) const {
    if (!(v > lo)) return lo; // also NaN
    return v < hi ? v : hi;
  }
};

/// u8 = clamp(round_half_even(value * inv_scale) + zero_point, 0, 255); NaN gives zero_point.
struct quantize_u8 {
  float inv_scale;
  std::int32_t zero_point = 0;
  std::uint8_t operator()(float v, std::size_t, std::size_t) const {
    float q = std::nearbyint(v * inv_scale);
    if (q != q) q = 0.0f;
    q += static_cast<float>(zero_point);
    q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
    return static_cast<std::uint8_t>(q);
  }
};

/// Stores the value at y[i * row_stride + j * col_stride] (the last stage).
template <class T>
struct store {
  T* y;
  std::size_t row_stride, col_stride = 1;
  void operator()(T v, std::size_t i, std::size_t j) const {
    y[i * row_stride + j * col_stride] = v;
  }
};

/// Stores the raw int32 sum (tests, or a caller that requantizes itself).
using store_int32 = store<std::int32_t>;

/// Stages applied in order; the functor the kernels call as out(i, j, acc).
template <class... Stages>
struct pipeline {
  std::tuple<Stages...> stages;
  void operator()(std::size_t i, std::size_t j, std::int32_t acc) const { run<0>(acc, i, j); }

private:
  template <std::size_t I, class V>
  void run(V v, std::size_t i, std::size_t j) const {
    if constexpr (I + 1 == sizeof...(Stages))
      std::get<I>(stages)(v, i, j);
    else
      run<I + 1>(std::get<I>(stages)(v, i, j), i, j);
  }
};

template <class... Stages>
pipeline<Stages...> make_pipeline(Stages... s) {
  return pipeline<Stages...>{std::tuple<Stages...>(std::move(s)...)};
}

} // namespace bitgrad::output
