// Convolution throughput: fprop / dgrad / wgrad of LeNet-5 and a small VGG-style net, the
// optimised kernels (automatic choice, forced im2col+gemm, forced direct where it applies)
// against the reference twin, in one binary. Counters: GFLOP/s (2 flops per multiply-add) and
// images/s.
//   cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DBITGRAD_BUILD_BENCHMARKS=ON
//         -DCMAKE_CXX_FLAGS=-march=native;  cmake --build build/bench --target bench_conv2d
//   build/bench/benchmarks/bench_conv2d --benchmark_filter=...
#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

namespace {

using bitgrad::conv2d_algo;
using bitgrad::conv2d_geometry;

struct layer {
  const char* name;
  std::size_t in_c, out_c, hw, k, pad, groups;
};

// LeNet-5 conv1/conv2, VGG-style 32-32-pool-64-64 (3x3 pad 1) on 28x28, and a depthwise 3x3.
const layer layers[] = {
    {"lenet_conv1_1to6_5x5_28", 1, 6, 28, 5, 0, 1},
    {"lenet_conv2_6to16_5x5_12", 6, 16, 12, 5, 0, 1},
    {"vgg_conv1_1to32_3x3_28", 1, 32, 28, 3, 1, 1},
    {"vgg_conv2_32to32_3x3_28", 32, 32, 28, 3, 1, 1},
    {"vgg_conv3_32to64_3x3_14", 32, 64, 14, 3, 1, 1},
    {"vgg_conv4_64to64_3x3_14", 64, 64, 14, 3, 1, 1},
    {"depthwise_32_3x3_14", 32, 32, 14, 3, 1, 32},
};

enum class pass { fprop, dgrad, wgrad };
enum class impl { automatic, im2col, direct, reference };

conv2d_geometry geometry(const layer& l, std::size_t batch) {
  conv2d_geometry g;
  g.batch = batch;
  g.in_channels = l.in_c;
  g.out_channels = l.out_c;
  g.in_h = g.in_w = l.hw;
  g.kernel_h = g.kernel_w = l.k;
  g.pad_h = g.pad_w = l.pad;
  g.groups = l.groups;
  return g;
}

void run(benchmark::State& state, const layer& l, std::size_t batch, pass ps, impl im) {
  const auto g = geometry(l, batch);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = d(rng);
    return v;
  };
  auto x = fill(g.input_count()), w = fill(g.weight_count()), b = fill(g.out_channels),
       y = fill(g.output_count()), dw = fill(g.weight_count()), db = fill(g.out_channels);
  std::vector<float> scratch;
  const conv2d_algo algo = im == impl::im2col   ? conv2d_algo::im2col
                           : im == impl::direct ? conv2d_algo::direct
                                                : conv2d_algo::automatic;
  for (auto _ : state) {
    if (im == impl::reference) {
      if (ps == pass::fprop)
        bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y.data(), scratch);
      if (ps == pass::dgrad) bitgrad::ref::conv2d_dgrad(g, y.data(), w.data(), x.data(), scratch);
      if (ps == pass::wgrad)
        bitgrad::ref::conv2d_wgrad(g, x.data(), y.data(), dw.data(), db.data(), scratch);
    } else {
      if (ps == pass::fprop)
        bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), y.data(), scratch);
      if (ps == pass::dgrad)
        bitgrad::conv2d_dgrad_using(algo, g, y.data(), w.data(), x.data(), scratch);
      if (ps == pass::wgrad)
        bitgrad::conv2d_wgrad_using(algo, g, x.data(), y.data(), dw.data(), db.data(), scratch);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(x.data());
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * g.macs() * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.counters["images/s"] =
      benchmark::Counter(double(batch) * double(state.iterations()), benchmark::Counter::kIsRate);
}

int register_all() {
  const char* pass_names[] = {"fprop", "dgrad", "wgrad"};
  const char* impl_names[] = {"auto", "im2col", "direct", "ref"};
  for (const auto& l : layers)
    for (std::size_t batch : {64, 256})
      for (int p = 0; p < 3; ++p)
        for (int i = 0; i < 4; ++i) {
          const auto im = impl(i);
          // the reference is slow: batch 64 only
          if (im == impl::reference && batch != 64) continue;
          const std::string name = std::string(l.name) + "/" + pass_names[p] + "/" + impl_names[i] +
                                   "/batch:" + std::to_string(batch);
          benchmark::RegisterBenchmark(
              name.c_str(), [=, &l](benchmark::State& s) { run(s, l, batch, pass(p), im); })
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
  return 0;
}

const int registered = register_all();

} // namespace

BENCHMARK_MAIN();
