// Tensor aliases and shape checks. Tensors are batch-major: NCHW for images, (N, features)
// for vectors, row-major (C order) storage.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/xt.hpp>

#include <array>
#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>

namespace bitgrad {

/// Dense row-major tensor of rank N (an xtensor container).
template <class T, std::size_t N>
using tensor = xt::xtensor<T, N>;

template <class T>
using tensor1 = tensor<T, 1>;
template <class T>
using tensor2 = tensor<T, 2>;
template <class T>
using tensor4 = tensor<T, 4>;

/// "(2, 3, 28, 28)" for printing shapes in messages.
template <class Shape>
std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << '(';
  bool first = true;
  for (auto extent : shape) {
    if (!first) out << ", ";
    out << extent;
    first = false;
  }
  out << ')';
  return out.str();
}

/// Throws shape_error "<who>: expected <what> <expected>, got <actual>" unless they match.
/// A zero in `expected` matches any extent (used for the batch dimension).
template <class Shape, std::size_t N>
void check_shape(std::string_view who, std::string_view what, const Shape& actual,
                 const std::array<std::size_t, N>& expected) {
  bool ok = actual.size() == N;
  for (std::size_t i = 0; ok && i < N; ++i)
    ok = expected[i] == 0 || static_cast<std::size_t>(actual[i]) == expected[i];
  if (!ok) {
    std::string want = shape_string(expected);
    throw shape_error(std::string(who) + ": expected " + std::string(what) + " of shape " + want +
                      " (0 = any), got " + shape_string(actual));
  }
}

} // namespace bitgrad
