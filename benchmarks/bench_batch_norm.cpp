// nn::batch_norm<float, 4> in training at ResNet-20's three stage shapes, batch 128 (16 x 28 x 28,
// 32 x 14 x 14, 64 x 7 x 7: the 28 x 28 Fashion-MNIST input of bench_train's resnet20 rows),
// plain and fused with a following ReLU (forward_relu, as nn::sequential calls it): the forward
// alone, and forward + backward.
//   build/bench/benchmarks/bench_batch_norm --benchmark_filter=batch_norm
#include <bitgrad/nn/batch_norm.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <random>
#include <string>

namespace {

using namespace bitgrad;

void run(benchmark::State& state, std::size_t channels, std::size_t side, bool relu,
         bool backward) {
  const std::size_t batch = 128;
  nn::batch_norm<float, 4> bn({.features = channels});
  tensor4<float> x = tensor4<float>::from_shape({batch, channels, side, side});
  tensor4<float> dy = tensor4<float>::from_shape({batch, channels, side, side});
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-2, 2);
  for (auto& v : x) v = d(rng);
  for (auto& v : dy) v = d(rng);
  auto step = [&] {
    const auto& y = relu ? bn.forward_relu(x) : bn.forward(x);
    benchmark::DoNotOptimize(y.data());
    if (backward) benchmark::DoNotOptimize(bn.backward(dy).data());
  };
  step(); // allocate the buffers
  for (auto _ : state) step();
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
}

void register_all() {
  const std::size_t shapes[][2] = {{16, 28}, {32, 14}, {64, 7}};
  for (auto [c, s] : shapes)
    for (bool relu : {false, true})
      for (bool backward : {false, true}) {
        const std::string name = std::string("batch_norm/") +
                                 (backward ? "forward_backward/" : "forward/") +
                                 (relu ? "relu/" : "plain/") + std::to_string(c) + "x" +
                                 std::to_string(s) + "x" + std::to_string(s);
        benchmark::RegisterBenchmark(name.c_str(), [c = c, s = s, relu,
                                                    backward](benchmark::State& st) {
          run(st, c, s, relu, backward);
        })->Unit(benchmark::kMicrosecond);
      }
}

} // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
