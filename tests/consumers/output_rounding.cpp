// Built by g++ with FMA enabled (-march=x86-64-v3) at -O1 and at -O2, then run: the packed
// engine's output stage (acc * scale + bias) must give the same bits through a row's lanes as
// through the scalar calls (which the reference twins and the scalar tails use), and both must
// be the product rounded to float, then the sum (detail::mul_add). Before, the scalar call used
// std::fma where the target had FMA while the lanes relied on GCC fusing a * b + c: at -O1 it
// does not, and test_packed_kernels failed in a -march=native build. Exit 77 (skipped) on a CPU
// without AVX2 and FMA.
#include <bitgrad/kernels/packed/output_stage.hpp>

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

/// a * b + c with the product stored to memory first: rounded twice whatever the compiler fuses.
float rounded_twice(float a, float b, float c) {
  volatile float product = a * b;
  return product + c;
}

} // namespace

int main() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::puts("skipped: this CPU has no AVX2 + FMA");
    return 77;
  }
  using namespace bitgrad;
  std::mt19937 rng(7);
  const std::size_t count = 61, j0 = 3; // lane batches and a scalar tail
  std::vector<std::int32_t> acc(count);
  std::vector<float> scale(output::padded_length(count + j0)), bias(scale.size());
  std::size_t fused_would_differ = 0, wrong = 0;
  for (int trial = 0; trial < 200; ++trial) {
    for (auto& v : acc) v = std::int32_t(rng() % 400001) - 200000;
    for (auto& v : scale) v = std::uniform_real_distribution<float>(1e-5f, 1e-2f)(rng);
    for (auto& v : bias) v = std::uniform_real_distribution<float>(-5.0f, 5.0f)(rng);
    std::vector<float> scalar(count + j0), lanes(count + j0), padded(count + j0);
    const auto pipe = [&](std::vector<float>& y) {
      return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::store<float>{y.data(), 0, 1});
    };
    for (std::size_t c = 0; c < count; ++c) pipe(scalar)(0, j0 + c, acc[c]);
    pipe(lanes).row(0, j0, acc.data(), count);
    output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                 output::store<float>{padded.data(), 0, 1})
        .row(0, j0, acc.data(), count);
    for (std::size_t c = 0; c < count; ++c) {
      const std::size_t j = j0 + c;
      const float want = rounded_twice(static_cast<float>(acc[c]), scale[j], bias[j]);
      fused_would_differ += std::fma(static_cast<float>(acc[c]), scale[j], bias[j]) != want;
      wrong += scalar[j] != want || lanes[j] != want || padded[j] != want;
    }
  }
  // The check means something only if fusing would have changed some results.
  std::printf("%zu of %zu outputs differ from the formula (fusing would change %zu)\n", wrong,
              200 * count, fused_would_differ);
  return wrong == 0 && fused_would_differ > 0 ? 0 : 1;
}
