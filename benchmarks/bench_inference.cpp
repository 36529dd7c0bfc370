// Inference throughput (images/s): the deploy runtime's float and int8 paths against the
// training framework's eval-mode forward, for LeNet-5 and the VGG-style net (frac_bits, frozen
// at 4 bits per channel group), batch 1 and 256, 1 and 2 threads.
//
// Threads: "threads" is the OpenMP team size (omp_set_num_threads) the kernels may use; the
// runtime's batch-parallel conv kernels split a batch across it. Batch 1 cannot split.
//   cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DBITGRAD_BUILD_BENCHMARKS=ON
//         -DCMAKE_CXX_FLAGS=-march=native;  cmake --build build/bench --target bench_inference
//   build/bench/benchmarks/bench_inference
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/export.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace {

using namespace bitgrad;

void set_threads(int t) {
#if defined(BITGRAD_WITH_OPENMP)
  omp_set_num_threads(t);
#else
  (void)t;
#endif
}

template <class Net>
Net frozen(Net net) {
  net.visit_quantizers(
      [](std::string_view, auto& q) { q.freeze_to(std::vector<int>(q.groups(), 4)); });
  net.train(false);
  return net;
}

auto make_lenet() {
  nn::model_options<float, quant::frac_bits> o{.seed = 1};
  return frozen(nn::lenet5<float, quant::frac_bits>(o));
}
auto make_vgg() {
  nn::model_options<float, quant::frac_bits> o{.seed = 1};
  return frozen(nn::vgg_small<float, quant::frac_bits>(o));
}

tensor4<float> random_input(std::size_t batch) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  tensor4<float> x = tensor4<float>::from_shape({batch, 1, 28, 28});
  for (auto& v : x) v = d(rng);
  return x;
}

/// mode 0: training framework eval forward; 1: runtime float; 2: runtime int8.
template <class Make>
void run(benchmark::State& state, Make make) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const int mode = static_cast<int>(state.range(2));
  set_threads(threads);
  auto net = make();
  const tensor4<float> x = random_input(batch);
  format::model_file m = train::to_model_file(net, format::shape::image(1, 28, 28));
  for (auto& op : m.ops) op.input_range = 4.0f; // fixed calibration: only the speed is measured
  const deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  for (auto _ : state) {
    if (mode == 0) {
      benchmark::DoNotOptimize(net.forward(x).data());
    } else {
      auto y = rt.run(x, mode == 1 ? deploy::precision::float32 : deploy::precision::int8);
      benchmark::DoNotOptimize(y.data());
    }
  }
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.SetLabel(mode == 0 ? "train-eval" : mode == 1 ? "runtime-float" : "runtime-int8");
  set_threads(1);
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads", "mode"});
  for (int batch : {1, 256})
    for (int threads : {1, 2})
      for (int mode : {0, 1, 2}) b->Args({batch, threads, mode});
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

void lenet5(benchmark::State& s) {
  run(s, make_lenet);
}
void vgg_small(benchmark::State& s) {
  run(s, make_vgg);
}

BENCHMARK(lenet5)->Apply(args);
BENCHMARK(vgg_small)->Apply(args);

} // namespace

BENCHMARK_MAIN();
