// Reference GEMM: the plain triple loop, the oracle for the optimised bitgrad::gemm.
#pragma once

#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/transpose.hpp>

#include <cstddef>

namespace bitgrad::ref {

/// C(m x n) = epilogue(alpha * op(A) * op(B) + beta * C), row-major with leading dimensions.
/// op(A) is m x k: A is m x k (lda >= k) or, transposed, k x m (lda >= m). Same for B (k x n).
/// beta == 0 never reads C (NaN there stays out); alpha == 0 never reads A or B. Accumulates in
/// T, in order of p.
template <class T, class Epilogue = epilogue::identity>
void gemm(transpose trans_a, transpose trans_b, std::size_t m, std::size_t n, std::size_t k,
          T alpha, const T* a, std::size_t lda, const T* b, std::size_t ldb, T beta, T* c,
          std::size_t ldc, const Epilogue& ep = {}) {
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      T sum = 0;
      for (std::size_t p = 0; alpha != T(0) && p < k; ++p) {
        const T av = trans_a == transpose::no ? a[i * lda + p] : a[p * lda + i];
        const T bv = trans_b == transpose::no ? b[p * ldb + j] : b[j * ldb + p];
        sum += av * bv;
      }
      T value = alpha * sum;
      if (beta != T(0)) value += beta * c[i * ldc + j];
      c[i * ldc + j] = ep(value, i, j);
    }
  }
}

} // namespace bitgrad::ref
