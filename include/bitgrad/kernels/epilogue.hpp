// GEMM epilogues: what happens to each element of C = alpha * op(A) * op(B) + beta * C after the
// product is formed, fused into the GEMM's final write so layers need no extra pass.
//
// An epilogue is a small struct with
//   template <class T> T operator()(T value, std::size_t row, std::size_t col) const;
// `value` is alpha * sum_k A(row,k) B(k,col) + beta * C(row,col) (beta = 0: C is not read).
// Optimised GEMMs may also call a vectorised overload on a run of columns of one row;
// each epilogue here provides both and they must agree exactly.
#pragma once

#include <bitgrad/core/simd.hpp>

#include <algorithm>
#include <cstddef>

namespace bitgrad::epilogue {

namespace detail {
/// max(0, x) that keeps NaN (as PyTorch's relu does): a NaN produced upstream reaches the loss
/// instead of turning into 0. The scalar and the lane-wise forms agree exactly (select, not the
/// max instruction, whose NaN answer depends on the operand order).
template <class T>
T relu_scalar(T x) {
  return x <= T(0) ? T(0) : x;
}
template <class B>
B relu_lanes(const B& x) {
  return xsimd::select(x <= B(0), B(0), x);
}
} // namespace detail

/// C = value.
struct identity {
  template <class T>
  T operator()(T value, std::size_t, std::size_t) const {
    return value;
  }
  template <class B>
  B apply(B value, std::size_t, std::size_t) const {
    return value;
  }
};

/// C = max(0, value) (NaN kept): a layer without bias whose ReLU is fused.
struct relu {
  template <class T>
  T operator()(T value, std::size_t, std::size_t) const {
    return detail::relu_scalar(value);
  }
  template <class B>
  B apply(B value, std::size_t, std::size_t) const {
    return detail::relu_lanes(value);
  }
};

/// C = value + bias[row] (convolution: rows are output channels).
template <class T>
struct bias_rows {
  const T* bias;
  T operator()(T value, std::size_t row, std::size_t) const { return value + bias[row]; }
  template <class B>
  B apply(B value, std::size_t row, std::size_t) const {
    return value + B(bias[row]);
  }
};

/// C = value + bias[col] (linear layer with batch-major rows).
template <class T>
struct bias_cols {
  const T* bias;
  T operator()(T value, std::size_t, std::size_t col) const { return value + bias[col]; }
  template <class B>
  B apply(B value, std::size_t, std::size_t col) const {
    return value + B::load_unaligned(bias + col);
  }
};

/// C = max(0, value + bias[row]) (NaN kept).
template <class T>
struct bias_rows_relu {
  const T* bias;
  T operator()(T value, std::size_t row, std::size_t) const {
    return detail::relu_scalar(value + bias[row]);
  }
  template <class B>
  B apply(B value, std::size_t row, std::size_t) const {
    return detail::relu_lanes(value + B(bias[row]));
  }
};

/// C = max(0, value + bias[col]) (NaN kept).
template <class T>
struct bias_cols_relu {
  const T* bias;
  T operator()(T value, std::size_t, std::size_t col) const {
    return detail::relu_scalar(value + bias[col]);
  }
  template <class B>
  B apply(B value, std::size_t, std::size_t col) const {
    return detail::relu_lanes(value + B::load_unaligned(bias + col));
  }
};

} // namespace bitgrad::epilogue
