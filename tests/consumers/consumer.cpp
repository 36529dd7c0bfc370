// A small outside program: builds a tensor, runs a SIMD-compiled kernel, checks the result, and
// says whether the build carried bitgrad's OpenMP flags (the consumer tests compare that with
// how bitgrad was configured). main() calls run_consumer() unless BITGRAD_CONSUMER_NO_MAIN is
// defined (plain_include/main.cpp has its own).
#include <bitgrad/bitgrad.hpp>

#include <cmath>
#include <cstdio>

namespace {

int run_consumer() {
  bitgrad::tensor2<float> a = {{1.f, 2.f}, {3.f, 4.f}};
  bitgrad::tensor2<float> b = {{5.f, 6.f}, {7.f, 8.f}};
  bitgrad::tensor2<float> c = xt::zeros<float>({2, 2});
  bitgrad::gemm(bitgrad::transpose::no, bitgrad::transpose::no, 2, 2, 2, 1.f, a.data(), 2, b.data(),
                2, 0.f, c.data(), 2);
  // [[1 2][3 4]] * [[5 6][7 8]] = [[19 22][43 50]]
  const bool ok = c(0, 0) == 19.f && c(0, 1) == 22.f && c(1, 0) == 43.f && c(1, 1) == 50.f;
#if defined(BITGRAD_WITH_OPENMP)
  // Links only when the OpenMP runtime is linked too.
  const int threads = omp_get_max_threads();
  std::printf("bitgrad %s on %s: gemm %s, OpenMP on (%d threads)\n", BITGRAD_VERSION_STRING,
              bitgrad::simd_arch_name(), ok ? "ok" : "WRONG", threads);
#else
  std::printf("bitgrad %s on %s: gemm %s, OpenMP off\n", BITGRAD_VERSION_STRING,
              bitgrad::simd_arch_name(), ok ? "ok" : "WRONG");
#endif
  return ok ? 0 : 1;
}

} // namespace

#if !defined(BITGRAD_CONSUMER_NO_MAIN)
int main() {
  return run_consumer();
}
#endif
