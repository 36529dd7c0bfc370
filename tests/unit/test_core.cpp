// The shims: tensors through bitgrad's aliases, SIMD batches of the compiled architecture,
// the version, and shape checks.
#include <bitgrad/bitgrad.hpp>

#include <doctest/doctest.h>

#include <string>

namespace test_core {

TEST_CASE("tensor aliases are row-major xtensor containers") {
  bitgrad::tensor4<float> x = xt::zeros<float>({2, 3, 4, 5});
  x(1, 2, 3, 4) = 7.f;
  CHECK(x.size() == 120);
  CHECK(x.data()[119] == 7.f); // last element in C order
  CHECK(bitgrad::shape_string(x.shape()) == "(2, 3, 4, 5)");
}

TEST_CASE_TEMPLATE("simd batch width matches the compiled architecture", T, float, double) {
  constexpr std::size_t bytes = bitgrad::simd_arch::alignment();
  CHECK(bitgrad::simd_batch<T>::size * sizeof(T) == bytes);
  std::string name = bitgrad::simd_arch_name();
#if defined(__AVX512F__)
  CHECK(bytes == 64);
  CHECK(name.rfind("avx512", 0) == 0);
#elif defined(__AVX__)
  CHECK(bytes == 32);
#elif defined(__SSE2__)
  CHECK(bytes == 16);
#endif
  alignas(64) T in[64];
  alignas(64) T out[64];
  for (std::size_t i = 0; i < 64; ++i) in[i] = T(i);
  auto v = bitgrad::simd_batch<T>::load_aligned(in);
  (v * T(2)).store_aligned(out);
  for (std::size_t i = 0; i < bitgrad::simd_batch<T>::size; ++i) CHECK(out[i] == T(2 * i));
}

TEST_CASE("version string matches the version macros") {
  CHECK(std::string(BITGRAD_VERSION_STRING) == std::to_string(BITGRAD_VERSION_MAJOR) + "." +
                                                   std::to_string(BITGRAD_VERSION_MINOR) + "." +
                                                   std::to_string(BITGRAD_VERSION_PATCH));
}

TEST_CASE("check_shape names the caller, the expected and the actual shape") {
  bitgrad::tensor2<float> x = xt::zeros<float>({4, 7});
  CHECK_NOTHROW(
      bitgrad::check_shape("linear", "input", x.shape(), std::array<std::size_t, 2>{0, 7}));
  try {
    bitgrad::check_shape("fc1", "input", x.shape(), std::array<std::size_t, 2>{0, 8});
    FAIL("no exception");
  } catch (const bitgrad::shape_error& e) {
    std::string msg = e.what();
    CHECK(msg.find("fc1") != std::string::npos);
    CHECK(msg.find("(0, 8)") != std::string::npos);
    CHECK(msg.find("(4, 7)") != std::string::npos);
  }
}

} // namespace test_core
