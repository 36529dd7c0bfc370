// Fused fake-quantization throughput: forward + backward of each policy over 64K..16M float
// weights (per-channel groups of 4608 weights, like a 3x3x512 conv filter), against a plain
// memcpy of the same bytes in the same run.
//
// Bytes counted per weight and step (float): forward reads w, writes wq (8 B); backward reads
// w, grad_wq, grad_w and writes grad_w (16 B); max_abs adds one read of w (4 B). The memcpy
// baseline copies 8 B per weight (4 read + 4 written), i.e. "bytes touched" on both sides.
//
// After the usual output a markdown table gives each policy's GiB/s (2^30 B/s, the console's
// "G/s") and its ratio to memcpy at the same size in the same run (with
// --benchmark_repetitions, the best repetition of each row).
#include <bitgrad/core/simd.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/step_bits.hpp>

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr std::size_t per_channel = 4608;

std::vector<float> random_weights(std::size_t n) {
  std::mt19937 gen(1);
  std::normal_distribution<float> d(0.f, 0.05f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

void bm_memcpy(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::vector<float> a = random_weights(n), b(n);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), n * sizeof(float));
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(2 * n * sizeof(float)));
}

template <class Q>
void bm_quant(benchmark::State& state, typename Q::options opt, double extra_bytes_per_weight) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const std::size_t channels = n / per_channel;
  std::vector<float> w = random_weights(n), wq(n), gy = random_weights(n), gw(n, 0.f);
  Q q(opt);
  q.bind(channels, per_channel, w.data());
  for (auto _ : state) {
    q.forward(w.data(), wq.data(), true);
    q.backward(w.data(), gy.data(), gw.data());
    benchmark::DoNotOptimize(gw.data());
    benchmark::ClobberMemory();
  }
  const double bytes = (24.0 + extra_bytes_per_weight) * static_cast<double>(n);
  state.SetBytesProcessed(static_cast<int64_t>(static_cast<double>(state.iterations()) * bytes));
  state.SetLabel(bitgrad::simd_arch_name());
}

void bm_frac_max_abs(benchmark::State& s) {
  bitgrad::quant::frac_bits<float>::options o;
  bm_quant<bitgrad::quant::frac_bits<float>>(s, o, 4.0);
}
void bm_frac_learned(benchmark::State& s) {
  bitgrad::quant::frac_bits<float>::options o;
  o.scale = bitgrad::quant::scale_mode::learned;
  bm_quant<bitgrad::quant::frac_bits<float>>(s, o, 0.0);
}
void bm_step(benchmark::State& s) {
  bm_quant<bitgrad::quant::step_bits<float>>(s, {}, 0.0);
}
void bm_fixed(benchmark::State& s) {
  bm_quant<bitgrad::quant::fixed_bits<float>>(s, {}, 0.0);
}

// 64K .. 16M weights, multiples of per_channel.
void sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {14 * 4608, 57 * 4608, 228 * 4608, 911 * 4608, 3641 * 4608}) b->Arg(n);
}

/// Prints like the console reporter and keeps each row's best bytes per second, keyed by
/// (function, weights), for the ratio table.
class ratio_reporter : public benchmark::ConsoleReporter {
public:
  std::map<std::pair<std::string, long long>, double> best;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const auto it = r.counters.find("bytes_per_second");
      if (r.error_occurred || r.run_type != Run::RT_Iteration || it == r.counters.end()) continue;
      const long long n = std::strtoll(r.run_name.args.c_str(), nullptr, 10);
      double& b = best[{r.run_name.function_name, n}];
      if (it->second.value > b) b = it->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

} // namespace

BENCHMARK(bm_memcpy)->Apply(sizes);
BENCHMARK(bm_frac_max_abs)->Apply(sizes);
BENCHMARK(bm_frac_learned)->Apply(sizes);
BENCHMARK(bm_step)->Apply(sizes);
BENCHMARK(bm_fixed)->Apply(sizes);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  // The ratio table (markdown): rows are the sizes at which memcpy ran.
  const std::pair<const char*, const char*> policies[] = {{"bm_frac_max_abs", "frac_bits max_abs"},
                                                          {"bm_frac_learned", "frac_bits learned"},
                                                          {"bm_step", "step_bits"},
                                                          {"bm_fixed", "fixed_bits"}};
  std::printf("\n| weights | memcpy GiB/s |");
  for (const auto& p : policies) std::printf(" %s |", p.second);
  std::printf("\n|---:|---:|---:|---:|---:|---:|\n");
  const double gib = 1024.0 * 1024.0 * 1024.0;
  for (const auto& [key, copy] : reporter.best) {
    if (key.first != "bm_memcpy") continue;
    std::printf("| %lld | %.1f |", key.second, copy / gib);
    for (const auto& p : policies) {
      const auto it = reporter.best.find({p.first, key.second});
      if (it == reporter.best.end())
        std::printf(" - |");
      else
        std::printf(" %.1f (%.2fx) |", it->second / gib, it->second / copy);
    }
    std::printf("\n");
  }
  benchmark::Shutdown();
  return 0;
}
