// Optimizer steps: Adam and SGD (momentum) element updates (kernels/optim_update.hpp) over one
// tensor of n floats, serial against split between the OpenMP threads, to place the thresholds
// adam_parallel_min / sgd_parallel_min (below them a step runs on the calling thread).
//
//   cmake --preset bench && cmake --build --preset bench --target bench_optim
//   OMP_NUM_THREADS=2 build/bench/benchmarks/bench_optim        (Google Benchmark)
//   OMP_NUM_THREADS=2 build/bench/benchmarks/bench_optim --compare [--rounds 15]
// --compare runs the scalar reference loop (the optimizers' code before the update kernels), the
// kernel on one thread and the kernel split between the threads, in turn in one process, for
// n = 2^10 .. 2^21; it prints the median microseconds of each, the median ratios scalar / serial
// and serial / threaded (> 1: threads pay), and the ratio of the fastest rounds serial / threaded
// (what a machine shared with other work still shows).
// Set OMP_WAIT_POLICY=passive to see the crossover with sleeping threads.
//
// Results and the conditions they were measured in: benchmarks/README.md, "Optimizer steps".
#include "compare_args.hpp"

#include <bitgrad/kernels/optim_update.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/ref/optim_update.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using bitgrad::adam_update_params;
using bitgrad::optim_tensor;
using bitgrad::sgd_update_params;

using adam_tensor = optim_tensor<float, adam_update_params<float>>;
using sgd_tensor = optim_tensor<float, sgd_update_params<float>>;

struct buffers {
  std::vector<float> w, g, m, v;
  explicit buffers(std::size_t n) : w(n), g(n), m(n, 0.0f), v(n, 0.0f) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1, 1);
    for (auto& e : w) e = d(rng);
    for (auto& e : g) e = d(rng) * 1e-3f;
  }
};

adam_update_params<float> adam_params() {
  adam_update_params<float> k{0.9f, 0.999f, 0.1f, 0.001f, 1e-8f, 1e-3f, 0.5f};
  return k;
}

/// One Adam (adam = true) or SGD-momentum step over the tensor; min_parallel as update_tensors.
void step(buffers& b, bool adam, std::size_t min_parallel) {
  const std::size_t n = b.w.size();
  if (adam) {
    const std::vector<adam_tensor> t{
        {b.w.data(), b.g.data(), b.m.data(), b.v.data(), n, adam_params()}};
    bitgrad::update_tensors(
        t,
        [](const adam_tensor& x, std::size_t i, std::size_t e) {
          bitgrad::adam_update(e - i, x.w + i, x.g + i, x.state0 + i, x.state1 + i, x.params);
        },
        min_parallel);
  } else {
    const std::vector<sgd_tensor> t{
        {b.w.data(), b.g.data(), b.m.data(), nullptr, n, {0.01f, 1e-4f, 0.9f, false}}};
    bitgrad::update_tensors(
        t,
        [](const sgd_tensor& x, std::size_t i, std::size_t e) {
          bitgrad::sgd_update(e - i, x.w + i, x.g + i, x.state0 + i, x.params);
        },
        min_parallel);
  }
}

constexpr std::size_t never = std::numeric_limits<std::size_t>::max();

/// The same step through the reference twins (scalar loops: the optimizers' code before the
/// update kernels), on the calling thread.
void step_reference(buffers& b, bool adam) {
  const std::size_t n = b.w.size();
  if (adam)
    bitgrad::ref::adam_update(n, b.w.data(), b.g.data(), b.m.data(), b.v.data(), adam_params());
  else
    bitgrad::ref::sgd_update(n, b.w.data(), b.g.data(), b.m.data(),
                             sgd_update_params<float>{0.01f, 1e-4f, 0.9f, false});
}

void run_benchmark(benchmark::State& state, bool adam, bool threaded) {
  buffers b(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) {
    step(b, adam, threaded ? 0 : never);
    benchmark::DoNotOptimize(b.w.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int compare(std::size_t rounds) {
  // What runs (tests/scripts/bench_options.py reads this line).
  std::printf("bench_optim --compare: %zu rounds, %zu threads\n\n", rounds,
              bitgrad::detail::available_threads());
  std::printf("| step | n | scalar us | serial us | threaded us | scalar / serial | serial / "
              "threaded | best serial / best threaded |\n|---|--:|--:|--:|--:|--:|--:|--:|\n");
  for (bool adam : {true, false})
    for (std::size_t n = std::size_t(1) << 10; n <= std::size_t(1) << 21; n *= 2) {
      buffers b(n);
      // Enough repetitions per timing to be well above the clock's resolution.
      const std::size_t reps = std::max<std::size_t>(1, (std::size_t(1) << 22) / n);
      std::vector<double> scalar, serial, threaded, simd_ratio, ratio;
      step_reference(b, adam);
      step(b, adam, never);
      step(b, adam, 0);
      for (std::size_t r = 0; r < rounds; ++r) {
        double us[3]; // scalar, serial, threaded; the order turns every round
        for (int s = 0; s < 3; ++s) {
          const int variant = int((s + r) % 3);
          const auto t0 = std::chrono::steady_clock::now();
          for (std::size_t k = 0; k < reps; ++k) {
            if (variant == 0)
              step_reference(b, adam);
            else
              step(b, adam, variant == 2 ? 0 : never);
          }
          const auto t1 = std::chrono::steady_clock::now();
          us[variant] = std::chrono::duration<double, std::micro>(t1 - t0).count() / double(reps);
        }
        scalar.push_back(us[0]);
        serial.push_back(us[1]);
        threaded.push_back(us[2]);
        simd_ratio.push_back(us[0] / us[1]);
        ratio.push_back(us[1] / us[2]);
      }
      std::printf("| %s | %zu | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
                  adam ? "adam" : "sgd momentum", n, median(scalar), median(serial),
                  median(threaded), median(simd_ratio), median(ratio),
                  *std::min_element(serial.begin(), serial.end()) /
                      *std::min_element(threaded.begin(), threaded.end()));
      std::fflush(stdout);
    }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--compare") {
    using namespace bitgrad::bench;
    std::size_t rounds = 15;
    try {
      for (compare_args args(argc, argv, 2); args.next();) {
        if (args.option() != "--rounds") throw usage_error("unknown option " + args.option());
        rounds = whole_number("--rounds", args.value(), 1);
      }
    } catch (const usage_error& e) {
      std::fprintf(stderr, "bench_optim --compare: %s (options: --rounds N)\n", e.what());
      return 2;
    }
    return compare(rounds);
  }
  for (bool adam : {true, false})
    for (bool threaded : {false, true}) {
      const std::string name =
          std::string(adam ? "adam" : "sgd_momentum") + (threaded ? "/threaded" : "/serial");
      benchmark::RegisterBenchmark(name.c_str(),
                                   [=](benchmark::State& s) { run_benchmark(s, adam, threaded); })
          ->RangeMultiplier(4)
          ->Range(1 << 10, 1 << 20);
    }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
