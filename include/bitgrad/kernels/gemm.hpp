// Optimised GEMM (placeholder: forwards to the reference until the SIMD kernel lands).
#pragma once

#include <bitgrad/kernels/ref/gemm.hpp>

namespace bitgrad {

template <class T, class Epilogue = epilogue::identity>
void gemm(transpose trans_a, transpose trans_b, std::size_t m, std::size_t n, std::size_t k,
          T alpha, const T* a, std::size_t lda, const T* b, std::size_t ldb, T beta, T* c,
          std::size_t ldc, const Epilogue& ep = {}) {
  ref::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
}

} // namespace bitgrad
