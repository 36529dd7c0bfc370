// Convolution speed: fprop / dgrad / wgrad of every convolution of LeNet-5, the VGG-style net and
// ResNet-20 (nn/models.hpp; ResNet-20 on 28x28x1 Fashion-MNIST and on 32x32x3 images), plus a
// depthwise 3x3, through each algorithm of kernels/conv2d.hpp: `auto` (what conv2d_fprop etc.
// run), `im2col` (im2col + gemm + col2im, the algorithm before implicit GEMM), `implicit`
// (implicit GEMM), `direct` (stride 1 only) and `ref` (the loop twin, batch 64 only).
//
// Two ways to run it:
//   Google Benchmark (what `make bench` runs): counters GFLOP/s (2 flops per multiply-add) and
//   images/s.
//     cmake --preset bench && cmake --build --preset bench --target bench_conv2d
//     build/bench/benchmarks/bench_conv2d --benchmark_filter='resnet28.*batch:128'
//   Side by side (`--compare`): for each layer and pass, im2col, implicit and direct run
//   alternately in one process (the order flips every round), and it prints a Markdown table of
//   the median ms, the median of the per-round ratios im2col / implicit (> 1: implicit GEMM is
//   faster), the ratio of the fastest rounds (the least disturbed on a shared machine), the median
//   of the per-round ratios implicit / direct (> 1: the direct kernel is faster; stride 1), for
//   3x3 stride-1 fprop and dgrad the Winograd kernel and the median of the per-round ratios
//   fastest other / winograd (> 1: Winograd is faster), and the algorithm `auto` picks.
//     OMP_NUM_THREADS=1 build/bench/benchmarks/bench_conv2d --compare [--batch 128]
//         [--rounds 7] [--filter resnet28] [--cpu]
//   --cpu times with the process's CPU clock instead of the wall clock (1 thread on a loaded
//   machine).
//   With --callgrind each variant runs once, counted alone (valgrind's client requests), and
//   each count is dumped under the name layer/pass/variant; benchmarks/callgrind_summary.py
//   prints the table of instruction counts (Ir) and their ratios. Valgrind does not know
//   AVX-512: use a build for AVX2 or below (e.g. -O3 -march=x86-64-v3).
//     valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no
//         --callgrind-out-file=/tmp/cg/out.%p
//         build/cg/benchmarks/bench_conv2d --compare --callgrind --batch 16     (one line)
//     python3 benchmarks/callgrind_summary.py /tmp/cg
#include "compare_args.hpp"

#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <benchmark/benchmark.h>

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_START_INSTRUMENTATION
#define CALLGRIND_STOP_INSTRUMENTATION
#define CALLGRIND_TOGGLE_COLLECT
#define CALLGRIND_DUMP_STATS_AT(name) (void)(name)
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <vector>

namespace {

using bitgrad::conv2d_algo;
using bitgrad::conv2d_geometry;

struct layer {
  const char* name;
  std::size_t in_c, out_c, hw, k, stride, pad, groups;
};

// Every distinct convolution of the three model builders at their training input sizes.
const layer layers[] = {
    {"lenet.conv1", 1, 6, 28, 5, 1, 0, 1},
    {"lenet.conv2", 6, 16, 12, 5, 1, 0, 1},
    {"vgg.conv1", 1, 32, 28, 3, 1, 1, 1},
    {"vgg.conv2", 32, 32, 28, 3, 1, 1, 1},
    {"vgg.conv3", 32, 64, 14, 3, 1, 1, 1},
    {"vgg.conv4", 64, 64, 14, 3, 1, 1, 1},
    // ResNet-20 on 28x28x1: stem, stage 1 (x6), stage 2 entry + its shortcut, stage 2 (x5), ...
    {"resnet28.conv1", 1, 16, 28, 3, 1, 1, 1},
    {"resnet28.layer1", 16, 16, 28, 3, 1, 1, 1},
    {"resnet28.layer2.0.conv1", 16, 32, 28, 3, 2, 1, 1},
    {"resnet28.layer2.0.shortcut", 16, 32, 28, 1, 2, 0, 1},
    {"resnet28.layer2", 32, 32, 14, 3, 1, 1, 1},
    {"resnet28.layer3.0.conv1", 32, 64, 14, 3, 2, 1, 1},
    {"resnet28.layer3.0.shortcut", 32, 64, 14, 1, 2, 0, 1},
    {"resnet28.layer3", 64, 64, 7, 3, 1, 1, 1},
    // ResNet-20 on 32x32x3 (CIFAR-shaped).
    {"resnet32.conv1", 3, 16, 32, 3, 1, 1, 1},
    {"resnet32.layer1", 16, 16, 32, 3, 1, 1, 1},
    {"resnet32.layer2.0.conv1", 16, 32, 32, 3, 2, 1, 1},
    {"resnet32.layer2.0.shortcut", 16, 32, 32, 1, 2, 0, 1},
    {"resnet32.layer2", 32, 32, 16, 3, 1, 1, 1},
    {"resnet32.layer3.0.conv1", 32, 64, 16, 3, 2, 1, 1},
    {"resnet32.layer3.0.shortcut", 32, 64, 16, 1, 2, 0, 1},
    {"resnet32.layer3", 64, 64, 8, 3, 1, 1, 1},
    {"depthwise.32.3x3.14", 32, 32, 14, 3, 1, 1, 32},
};

enum class pass { fprop, dgrad, wgrad };
const char* const pass_names[] = {"fprop", "dgrad", "wgrad"};
enum class impl { automatic, im2col, direct, implicit, reference, winograd };
const char* const impl_names[] = {"auto", "im2col", "direct", "implicit", "ref", "winograd"};

conv2d_geometry geometry(const layer& l, std::size_t batch) {
  conv2d_geometry g;
  g.batch = batch;
  g.in_channels = l.in_c;
  g.out_channels = l.out_c;
  g.in_h = g.in_w = l.hw;
  g.kernel_h = g.kernel_w = l.k;
  g.stride_h = g.stride_w = l.stride;
  g.pad_h = g.pad_w = l.pad;
  g.groups = l.groups;
  return g;
}

conv2d_algo algo_of(impl im) {
  return im == impl::im2col     ? conv2d_algo::im2col
         : im == impl::direct   ? conv2d_algo::direct
         : im == impl::implicit ? conv2d_algo::implicit
         : im == impl::winograd ? conv2d_algo::winograd
                                : conv2d_algo::automatic;
}

/// The operands of one layer, filled with uniform(-1, 1) values.
struct operands {
  conv2d_geometry g;
  std::vector<float> x, w, b, y, dw, db, scratch;
  explicit operands(const conv2d_geometry& geo) : g(geo) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1, 1);
    auto fill = [&](std::size_t n) {
      std::vector<float> v(n);
      for (auto& e : v) e = d(rng);
      return v;
    };
    x = fill(g.input_count());
    w = fill(g.weight_count());
    b = fill(g.out_channels);
    y = fill(g.output_count());
    dw = fill(g.weight_count());
    db = fill(g.out_channels);
  }
  void run(pass ps, impl im) {
    if (im == impl::reference) {
      if (ps == pass::fprop)
        bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y.data(), scratch);
      if (ps == pass::dgrad) bitgrad::ref::conv2d_dgrad(g, y.data(), w.data(), x.data(), scratch);
      if (ps == pass::wgrad)
        bitgrad::ref::conv2d_wgrad(g, x.data(), y.data(), dw.data(), db.data(), scratch);
      return;
    }
    const conv2d_algo algo = algo_of(im);
    if (ps == pass::fprop)
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), y.data(), scratch);
    if (ps == pass::dgrad)
      bitgrad::conv2d_dgrad_using(algo, g, y.data(), w.data(), x.data(), scratch);
    if (ps == pass::wgrad)
      bitgrad::conv2d_wgrad_using(algo, g, x.data(), y.data(), dw.data(), db.data(), scratch);
  }
};

void run_benchmark(benchmark::State& state, const layer& l, std::size_t batch, pass ps, impl im) {
  operands op(geometry(l, batch));
  for (auto _ : state) {
    op.run(ps, im);
    benchmark::DoNotOptimize(op.y.data());
    benchmark::DoNotOptimize(op.x.data());
    benchmark::DoNotOptimize(op.dw.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * op.g.macs() * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["images/s"] =
      benchmark::Counter(double(batch) * double(state.iterations()), benchmark::Counter::kIsRate);
}

bool strided(const layer& l) {
  return l.stride != 1;
}

/// Whether conv2d_algo::winograd computes l (its fprop and dgrad; it has no wgrad).
bool winograd_fits(const layer& l) {
  return bitgrad::detail::conv2d_winograd_fits(geometry(l, 1));
}

void register_all() {
  for (const auto& l : layers)
    for (std::size_t batch : {64, 128})
      for (int p = 0; p < 3; ++p)
        for (int i = 0; i < 6; ++i) {
          const auto im = impl(i);
          if (im == impl::reference && batch != 64) continue; // the reference is slow
          if (im == impl::direct && strided(l)) continue;
          if (im == impl::winograd && (!winograd_fits(l) || p == 2)) continue;
          const std::string name = std::string(l.name) + "/" + pass_names[p] + "/" + impl_names[i] +
                                   "/batch:" + std::to_string(batch);
          benchmark::RegisterBenchmark(
              name.c_str(),
              [=, &l](benchmark::State& s) { run_benchmark(s, l, batch, pass(p), im); })
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Milliseconds of wall time, or with cpu of the process's CPU time (on a shared machine a
/// 1-thread run's share of a core drops out).
double now_ms(bool cpu) {
  if (cpu) {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
  }
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// --compare: im2col, implicit and direct side by side (see the top of this file).
int compare(std::size_t batch, std::size_t rounds, const std::string& filter, bool callgrind,
            bool cpu) {
  if (callgrind) rounds = 1;
  // What runs, as the options set it (tests/scripts/bench_options.py reads this line).
  std::printf("bench_conv2d --compare: batch %zu, %zu rounds, layers matching \"%s\", %s\n\n",
              batch, rounds, filter.c_str(),
              callgrind ? "callgrind counts"
              : cpu     ? "process CPU clock"
                        : "wall clock");
  std::printf("| layer | pass | m x n x k per image | im2col ms | implicit ms | direct ms | "
              "winograd ms | im2col / implicit | best / best | implicit / direct | "
              "others / winograd | auto |\n"
              "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
  for (const auto& l : layers) {
    if (std::string(l.name).find(filter) == std::string::npos) continue;
    operands op(geometry(l, batch));
    const auto& g = op.g;
    for (int p = 0; p < 3; ++p) {
      std::vector<impl> variants{impl::im2col, impl::implicit};
      if (!strided(l)) variants.push_back(impl::direct);
      const bool winograd = winograd_fits(l) && p < 2;
      if (winograd) variants.push_back(impl::winograd);
      std::vector<std::vector<double>> ms(variants.size());
      std::vector<double> ratios, direct_ratios, winograd_ratios;
      for (impl im : variants) op.run(pass(p), im); // warm-up: buffers, caches, threads
      for (std::size_t r = 0; r < rounds; ++r) {
        std::vector<double> round_ms(variants.size());
        for (std::size_t s = 0; s < variants.size(); ++s) {
          const std::size_t v = r % 2 ? variants.size() - 1 - s : s;
          const double t0 = now_ms(cpu);
          if (callgrind) {
            CALLGRIND_START_INSTRUMENTATION;
            CALLGRIND_TOGGLE_COLLECT;
          }
          op.run(pass(p), variants[v]);
          if (callgrind) {
            CALLGRIND_TOGGLE_COLLECT;
            CALLGRIND_STOP_INSTRUMENTATION;
            const std::string name =
                std::string(l.name) + "/" + pass_names[p] + "/" + impl_names[int(variants[v])];
            CALLGRIND_DUMP_STATS_AT(name.c_str());
          }
          round_ms[v] = now_ms(cpu) - t0;
          ms[v].push_back(round_ms[v]);
        }
        ratios.push_back(round_ms[0] / round_ms[1]);
        if (variants.size() > 2) direct_ratios.push_back(round_ms[1] / round_ms[2]);
        if (winograd)
          winograd_ratios.push_back(*std::min_element(round_ms.begin(), round_ms.end() - 1) /
                                    round_ms.back());
      }
      const bitgrad::conv2d_algo chosen = bitgrad::conv2d_choose_algo(g, bitgrad::conv2d_pass(p));
      const std::size_t m = g.out_channels_per_group(), k = g.filter_size(), n = g.out_plane();
      const std::string shape =
          p == 0   ? std::to_string(m) + " x " + std::to_string(n) + " x " + std::to_string(k)
          : p == 1 ? std::to_string(k) + " x " + std::to_string(n) + " x " + std::to_string(m)
                   : std::to_string(m) + " x " + std::to_string(k) + " x " + std::to_string(n);
      char direct[32] = "-", direct_ratio[32] = "-";
      if (variants.size() > 2) {
        std::snprintf(direct, sizeof direct, "%.3f", median(ms[2]));
        std::snprintf(direct_ratio, sizeof direct_ratio, "%.2f", median(direct_ratios));
      }
      char wino[32] = "-", wino_ratio[32] = "-";
      if (winograd) {
        std::snprintf(wino, sizeof wino, "%.3f", median(ms.back()));
        std::snprintf(wino_ratio, sizeof wino_ratio, "%.2f", median(winograd_ratios));
      }
      const double best_ratio = *std::min_element(ms[0].begin(), ms[0].end()) /
                                *std::min_element(ms[1].begin(), ms[1].end());
      std::printf("| %s | %s | %s | %.3f | %.3f | %s | %s | %.2f | %.2f | %s | %s | %s |\n", l.name,
                  pass_names[p], shape.c_str(), median(ms[0]), median(ms[1]), direct, wino,
                  median(ratios), best_ratio, direct_ratio, wino_ratio,
                  chosen == conv2d_algo::im2col     ? "im2col"
                  : chosen == conv2d_algo::direct   ? "direct"
                  : chosen == conv2d_algo::implicit ? "implicit"
                  : chosen == conv2d_algo::winograd ? "winograd"
                                                    : "?");
      std::fflush(stdout);
    }
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--compare") {
    using namespace bitgrad::bench;
    std::size_t batch = 128, rounds = 7;
    std::string filter;
    bool callgrind = false, cpu = false;
    try {
      for (compare_args args(argc, argv, 2); args.next();) {
        const std::string a = args.option();
        if (a == "--batch")
          batch = whole_number(a, args.value(), 1);
        else if (a == "--rounds")
          rounds = whole_number(a, args.value(), 1);
        else if (a == "--filter")
          filter = args.value();
        else if (a == "--callgrind")
          callgrind = true;
        else if (a == "--cpu")
          cpu = true;
        else
          throw usage_error("unknown option " + a);
      }
      if (std::none_of(std::begin(layers), std::end(layers), [&](const layer& l) {
            return std::string(l.name).find(filter) != std::string::npos;
          }))
        throw usage_error("--filter " + filter + " matches no layer");
    } catch (const usage_error& e) {
      std::fprintf(stderr,
                   "bench_conv2d --compare: %s (options: --batch N, --rounds N, --filter TEXT, "
                   "--callgrind, --cpu)\n",
                   e.what());
      return 2;
    }
    return compare(batch, rounds, filter, callgrind, cpu);
  }
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
