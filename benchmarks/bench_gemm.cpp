// SGEMM throughput, bitgrad::gemm beside OpenBLAS's cblas_sgemm in the same binary: square
// sizes and the shapes the LeNet-5 and a small VGG-style network call during training, on 1
// and 2 threads. Ends with a table of ours / OpenBLAS per row.
//
// Rows are named gemm/<library>/<shape>/threads:<t>; the counter GFLOP/s is 2 m n k per call
// over wall-clock time.
//
// Conv layers are lowered with im2col: col is (Cin*kh*kw) x P with P = Ho*Wo output pixels
// ("image" rows: one image, as kernels/conv2d.hpp calls gemm, one image per thread) or
// P = B*Ho*Wo (".b64", ".b256": the whole batch in one call), and
//   fprop  Y  (Cout x P)         = W (Cout x Cin*kk) * col          gemm(N, N, Cout, P, Cin*kk)
//   dgrad  dcol (Cin*kk x P)     = W^T * dY                         gemm(T, N, Cin*kk, P, Cout)
//   wgrad  dW (Cout x Cin*kk)   += dY * col^T                       gemm(N, T, Cout, Cin*kk, P)
// (first layers have no dgrad). Linear layers, x (B x in), W (out x in):
//   fprop  y  = x * W^T          gemm(N, T, B, out, in)
//   dgrad  dx = dy * W           gemm(N, N, B, in, out)
//   wgrad  dW += dy^T * x        gemm(T, N, out, in, B)
#include "bench_timing.hpp"

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/gemm_microkernel.hpp>

#include <benchmark/benchmark.h>

#if defined(BITGRAD_BENCH_WITH_CBLAS)
#include <cblas.h>
#endif
#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

using bitgrad::transpose;

struct gemm_shape {
  std::string name;
  transpose ta, tb;
  std::size_t m, n, k;
  float beta; // 1 for wgrad (gradients accumulate), else 0
};

std::vector<gemm_shape> shapes() {
  constexpr transpose N = transpose::no, T = transpose::yes;
  std::vector<gemm_shape> s;
  for (std::size_t n : {64, 128, 256, 512, 1024})
    s.push_back({std::to_string(n), N, N, n, n, n, 0});

  // A conv layer's three GEMMs for Cout filters of K = Cin*kh*kw taps over P output pixels.
  auto conv = [&](const std::string& name, std::size_t cout, std::size_t taps, std::size_t pixels,
                  bool dgrad) {
    s.push_back({name + ".fprop", N, N, cout, pixels, taps, 0});
    if (dgrad) s.push_back({name + ".dgrad", T, N, taps, pixels, cout, 0});
    s.push_back({name + ".wgrad", N, T, cout, taps, pixels, 1});
  };
  // A linear layer's three GEMMs for a batch of b.
  auto linear = [&](const std::string& name, std::size_t in, std::size_t out, std::size_t b,
                    bool backward) {
    s.push_back({name + ".fprop", N, T, b, out, in, 0});
    if (!backward) return;
    s.push_back({name + ".dgrad", N, N, b, in, out, 0});
    s.push_back({name + ".wgrad", T, N, out, in, b, 1});
  };

  // LeNet-5 on 28x28: conv1 1->6 5x5 -> 24x24, pool, conv2 6->16 5x5 -> 8x8, pool, fc1 256->120,
  // fc2 120->84, fc3 84->10. First per image (what the conv layer calls, one image per thread),
  // then im2col over the whole batch and the linear layers at batch 64 and 256.
  conv("lenet.conv1.image", 6, 25, 24 * 24, false);
  conv("lenet.conv2.image", 16, 150, 8 * 8, true);
  for (std::size_t b : {64, 256}) {
    const std::string tag = ".b" + std::to_string(b);
    conv("lenet.conv1" + tag, 6, 25, 24 * 24 * b, false);
    conv("lenet.conv2" + tag, 16, 150, 8 * 8 * b, true);
    linear("lenet.fc1" + tag, 256, 120, b, true);
    linear("lenet.fc2" + tag, 120, 84, b, false);
    linear("lenet.fc3" + tag, 84, 10, b, false);
  }
  // VGG-style on 28x28, 3x3 pad 1: conv1 1->32, conv2 32->32 at 28x28, pool, conv3 32->64,
  // conv4 64->64 at 14x14. Per image, then im2col over batches of 64 and 256.
  auto vgg = [&](const std::string& tag, std::size_t images) {
    conv("vgg.conv1" + tag, 32, 9, 28 * 28 * images, false);
    conv("vgg.conv2" + tag, 32, 288, 28 * 28 * images, true);
    conv("vgg.conv3" + tag, 64, 288, 14 * 14 * images, true);
    conv("vgg.conv4" + tag, 64, 576, 14 * 14 * images, true);
  };
  vgg(".image", 1);
  vgg(".b64", 64);
  vgg(".b256", 256);
  return s;
}

/// The operands of one shape, filled with small values that neither overflow nor denormalise.
struct operands {
  std::vector<float> a, b, c;
  std::size_t lda, ldb, ldc;
  explicit operands(const gemm_shape& s)
      : a(s.m * s.k), b(s.k * s.n), c(s.m * s.n), lda(s.ta == transpose::no ? s.k : s.m),
        ldb(s.tb == transpose::no ? s.n : s.k), ldc(s.n) {
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 17) - 8) * 0.01f;
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 13) - 6) * 0.01f;
    for (std::size_t i = 0; i < c.size(); ++i) c[i] = float(int(i % 7) - 3) * 0.01f;
  }
};

enum class library { bitgrad, openblas };

/// Lets the other library's idle worker threads stop spinning before a measurement.
void settle(library lib) {
  static library previous = lib;
  if (previous != lib) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  previous = lib;
}

void run(benchmark::State& state, const gemm_shape& s, library lib, int threads) {
  operands x(s);
  settle(lib);
#if defined(BITGRAD_WITH_OPENMP)
  if (lib == library::bitgrad) omp_set_num_threads(threads);
#endif
#if defined(BITGRAD_BENCH_WITH_CBLAS)
  if (lib == library::openblas) openblas_set_num_threads(threads);
#endif
  auto call = [&] {
    if (lib == library::bitgrad) {
      bitgrad::gemm(s.ta, s.tb, s.m, s.n, s.k, 1.0f, x.a.data(), x.lda, x.b.data(), x.ldb, s.beta,
                    x.c.data(), x.ldc);
    } else {
#if defined(BITGRAD_BENCH_WITH_CBLAS)
      auto op = [](transpose t) { return t == transpose::no ? CblasNoTrans : CblasTrans; };
      cblas_sgemm(CblasRowMajor, op(s.ta), op(s.tb), int(s.m), int(s.n), int(s.k), 1.0f, x.a.data(),
                  int(x.lda), x.b.data(), int(x.ldb), s.beta, x.c.data(), int(x.ldc));
#endif
    }
  };
  const double seconds = bitgrad::bench::seconds_in_calls(state, call);
  const double flops = 2.0 * double(s.m) * double(s.n) * double(s.k);
  state.counters["GFLOP/s"] = flops * double(state.iterations()) / seconds * 1e-9;
  state.counters["m"] = double(s.m);
  state.counters["n"] = double(s.n);
  state.counters["k"] = double(s.k);
}

/// The FMA peak this machine sustains: `threads` threads each run 12 independent chains of
/// register-only FMAs on simd_batch<float> (no memory traffic), counted as 2 flops per lane.
void fma_peak(benchmark::State& state, int threads) {
  using batch = bitgrad::simd_batch<float>;
  constexpr std::size_t chains = 12, steps = 1 << 16;
  auto call = [&] {
#if defined(BITGRAD_WITH_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    {
      batch acc[chains];
      const batch x(0.999f), y(1e-7f);
      bitgrad::detail::static_for<chains>([&](auto i) { acc[i] = batch(float(i)); });
      for (std::size_t p = 0; p < steps; ++p) {
        bitgrad::detail::static_for<chains>([&](auto i) { acc[i] = xsimd::fma(acc[i], x, y); });
      }
      bitgrad::detail::static_for<chains>([&](auto i) { benchmark::DoNotOptimize(acc[i]); });
    }
  };
  const double seconds = bitgrad::bench::seconds_in_calls(state, call, /*warm_up=*/false);
  const double flops = 2.0 * double(batch::size) * chains * steps * threads;
  state.counters["GFLOP/s"] = flops * double(state.iterations()) / seconds * 1e-9;
}

std::string row_name(library lib, const gemm_shape& s, int threads) {
  return std::string("gemm/") + (lib == library::bitgrad ? "bitgrad/" : "openblas/") + s.name +
         "/threads:" + std::to_string(threads);
}

/// Prints like the console reporter and keeps each row's best GFLOP/s (over repetitions, with
/// --benchmark_repetitions) and its CPU / wall time for the ratio table.
class ratio_reporter : public benchmark::ConsoleReporter {
public:
  struct row {
    double gflops = 0, cpu_share = 0;
  };
  std::map<std::string, row> rows;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const auto it = r.counters.find("GFLOP/s");
      if (r.error_occurred || r.run_type != Run::RT_Iteration || it == r.counters.end()) continue;
      row& best = rows[r.run_name.function_name];
      if (it->second.value > best.gflops) {
        best.gflops = it->second.value;
        best.cpu_share = r.GetAdjustedCPUTime() / r.GetAdjustedRealTime();
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

} // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("simd_arch", bitgrad::simd_arch_name());
#if defined(BITGRAD_BENCH_WITH_CBLAS)
  benchmark::AddCustomContext("openblas", openblas_get_config());
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
#else
  benchmark::AddCustomContext("openblas", "not found: bitgrad rows only");
#endif
#if defined(BITGRAD_WITH_OPENMP)
  const int thread_counts[] = {1, 2};
#else
  const int thread_counts[] = {1}; // without OpenMP bitgrad::gemm runs on one thread
#endif

  for (int t : thread_counts) {
    benchmark::RegisterBenchmark(("gemm/peak/fma/threads:" + std::to_string(t)).c_str(), fma_peak,
                                 t)
        ->Unit(benchmark::kMicrosecond);
  }
  const std::vector<gemm_shape> all = shapes();
  std::vector<std::pair<std::string, std::string>> pairs; // (ours, OpenBLAS) row names
  for (const gemm_shape& s : all) {
    for (int t : thread_counts) {
      std::vector<library> libs = {library::bitgrad};
#if defined(BITGRAD_BENCH_WITH_CBLAS)
      libs.push_back(library::openblas);
#endif
      for (library lib : libs) {
        benchmark::RegisterBenchmark(row_name(lib, s, t).c_str(), run, s, lib, t)
            ->Unit(benchmark::kMicrosecond);
      }
      pairs.emplace_back(row_name(library::bitgrad, s, t), row_name(library::openblas, s, t));
    }
  }

  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  // Ours as a share of the measured FMA peak at the same thread count.
  auto peak = [&](const std::string& threads) {
    const auto p = reporter.rows.find("gemm/peak/fma/threads:" + threads);
    return p == reporter.rows.end() ? 0.0 : p->second.gflops;
  };
  for (int t : thread_counts) {
    std::printf("\nmeasured FMA peak, %d thread(s): %.1f GFLOP/s", t, peak(std::to_string(t)));
  }
  // The ratio table (markdown). cpu/wall is the calling thread's CPU time over wall time for
  // the best repetition: well under 1 on a 1-thread row means the machine was busy.
  std::printf("\n\n| shape | threads | m x n x k | bitgrad GFLOP/s | OpenBLAS GFLOP/s | "
              "ours / OpenBLAS | ours / peak | cpu/wall ours, OpenBLAS |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|---|\n");
  for (const auto& [ours, theirs] : pairs) {
    const auto a = reporter.rows.find(ours);
    if (a == reporter.rows.end()) continue;
    const auto b = reporter.rows.find(theirs);
    const std::string rest = ours.substr(std::string("gemm/bitgrad/").size());
    const std::string shape = rest.substr(0, rest.rfind("/threads:"));
    const std::string threads = rest.substr(rest.rfind(':') + 1);
    std::string dims;
    for (const gemm_shape& s : all) {
      if (s.name == shape) {
        dims = std::to_string(s.m) + " x " + std::to_string(s.n) + " x " + std::to_string(s.k);
      }
    }
    const double of_peak = peak(threads) > 0 ? a->second.gflops / peak(threads) : 0.0;
    if (b == reporter.rows.end()) {
      std::printf("| %s | %s | %s | %.1f | - | - | %.2f | %.2f |\n", shape.c_str(), threads.c_str(),
                  dims.c_str(), a->second.gflops, of_peak, a->second.cpu_share);
    } else {
      std::printf("| %s | %s | %s | %.1f | %.1f | %.2f | %.2f | %.2f, %.2f |\n", shape.c_str(),
                  threads.c_str(), dims.c_str(), a->second.gflops, b->second.gflops,
                  a->second.gflops / b->second.gflops, of_peak, a->second.cpu_share,
                  b->second.cpu_share);
    }
  }
  benchmark::Shutdown();
  return 0;
}
