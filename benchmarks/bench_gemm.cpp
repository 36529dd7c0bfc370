// SGEMM throughput, bitgrad::gemm beside OpenBLAS's cblas_sgemm in the same binary: square
// sizes and the shapes the LeNet-5 and a small VGG-style network call during training, on 1
// and 2 threads. Ends with a table of ours / OpenBLAS per row.
//
// Rows are named gemm/<library>/<shape>/threads:<t>; the counter GFLOP/s is 2 m n k per call
// over wall-clock time.
//
// Conv layers are lowered with im2col over the whole batch: col is (Cin*kh*kw) x (B*Ho*Wo) and
//   fprop  Y  (Cout x B*HW)      = W (Cout x Cin*kk) * col          gemm(N, N, Cout, B*HW, Cin*kk)
//   dgrad  dcol (Cin*kk x B*HW)  = W^T * dY                         gemm(T, N, Cin*kk, B*HW, Cout)
//   wgrad  dW (Cout x Cin*kk)   += dY * col^T                       gemm(N, T, Cout, Cin*kk, B*HW)
// ("per image" rows: one image's fprop, B = 1). Linear layers, x (B x in), W (out x in):
//   fprop  y  = x * W^T          gemm(N, T, B, out, in)
//   dgrad  dx = dy * W           gemm(N, N, B, in, out)
//   wgrad  dW += dy^T * x        gemm(T, N, out, in, B)
#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/gemm.hpp>

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
  for (std::size_t n : {64, 128, 256, 512, 1024}) s.push_back({std::to_string(n), N, N, n, n, n, 0});
  // LeNet-5 on 28x28: conv1 1->6 5x5 -> 24x24, pool, conv2 6->16 5x5 -> 8x8, pool,
  // fc1 256->120, fc2 120->84, fc3 84->10.
  s.push_back({"lenet.conv1.fprop.image", N, N, 6, 24 * 24, 25, 0});
  s.push_back({"lenet.conv2.fprop.image", N, N, 16, 8 * 8, 150, 0});
  for (std::size_t b : {64, 256}) {
    const std::string tag = ".b" + std::to_string(b);
    s.push_back({"lenet.conv1.fprop" + tag, N, N, 6, 576 * b, 25, 0});
    s.push_back({"lenet.conv1.wgrad" + tag, N, T, 6, 25, 576 * b, 1});
    s.push_back({"lenet.conv2.fprop" + tag, N, N, 16, 64 * b, 150, 0});
    s.push_back({"lenet.conv2.dgrad" + tag, T, N, 150, 64 * b, 16, 0});
    s.push_back({"lenet.conv2.wgrad" + tag, N, T, 16, 150, 64 * b, 1});
    s.push_back({"lenet.fc1.fprop" + tag, N, T, b, 120, 256, 0});
    s.push_back({"lenet.fc1.dgrad" + tag, N, N, b, 256, 120, 0});
    s.push_back({"lenet.fc1.wgrad" + tag, T, N, 120, 256, b, 1});
    s.push_back({"lenet.fc2.fprop" + tag, N, T, b, 84, 120, 0});
    s.push_back({"lenet.fc3.fprop" + tag, N, T, b, 10, 84, 0});
  }
  // VGG-style on 28x28, 3x3 pad 1: conv1 1->32, conv2 32->32 at 28x28, pool, conv3 32->64,
  // conv4 64->64 at 14x14.
  for (std::size_t b : {64, 256}) {
    const std::string tag = ".b" + std::to_string(b);
    const std::size_t p28 = 28 * 28 * b, p14 = 14 * 14 * b;
    s.push_back({"vgg.conv1.fprop" + tag, N, N, 32, p28, 9, 0});
    s.push_back({"vgg.conv1.wgrad" + tag, N, T, 32, 9, p28, 1});
    s.push_back({"vgg.conv2.fprop" + tag, N, N, 32, p28, 288, 0});
    s.push_back({"vgg.conv2.dgrad" + tag, T, N, 288, p28, 32, 0});
    s.push_back({"vgg.conv2.wgrad" + tag, N, T, 32, 288, p28, 1});
    s.push_back({"vgg.conv3.fprop" + tag, N, N, 64, p14, 288, 0});
    s.push_back({"vgg.conv3.dgrad" + tag, T, N, 288, p14, 64, 0});
    s.push_back({"vgg.conv3.wgrad" + tag, N, T, 64, 288, p14, 1});
    s.push_back({"vgg.conv4.fprop" + tag, N, N, 64, p14, 576, 0});
    s.push_back({"vgg.conv4.dgrad" + tag, T, N, 576, p14, 64, 0});
    s.push_back({"vgg.conv4.wgrad" + tag, N, T, 64, 576, p14, 1});
  }
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
      cblas_sgemm(CblasRowMajor, op(s.ta), op(s.tb), int(s.m), int(s.n), int(s.k), 1.0f,
                  x.a.data(), int(x.lda), x.b.data(), int(x.ldb), s.beta, x.c.data(), int(x.ldc));
#endif
    }
  };
  call(); // warm the caches, the pack buffers and the thread pool
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    call();
    benchmark::ClobberMemory();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const double flops = 2.0 * double(s.m) * double(s.n) * double(s.k);
  state.counters["GFLOP/s"] = flops * double(state.iterations()) / seconds * 1e-9;
  state.counters["m"] = double(s.m);
  state.counters["n"] = double(s.n);
  state.counters["k"] = double(s.k);
}

std::string row_name(library lib, const gemm_shape& s, int threads) {
  return std::string("gemm/") + (lib == library::bitgrad ? "bitgrad/" : "openblas/") + s.name +
         "/threads:" + std::to_string(threads);
}

/// Prints like the console reporter and keeps each row's GFLOP/s for the ratio table.
class ratio_reporter : public benchmark::ConsoleReporter {
public:
  std::map<std::string, double> gflops;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const auto it = r.counters.find("GFLOP/s");
      if (r.error_occurred || it == r.counters.end()) continue;
      // With --benchmark_repetitions keep the median; otherwise the single run.
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      gflops[r.run_name.function_name] = it->second.value;
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

  std::printf("\n| shape | threads | m x n x k | bitgrad GFLOP/s | OpenBLAS GFLOP/s | ratio |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const auto& [ours, theirs] : pairs) {
    const auto a = reporter.gflops.find(ours);
    if (a == reporter.gflops.end()) continue;
    const auto b = reporter.gflops.find(theirs);
    const std::string rest = ours.substr(std::string("gemm/bitgrad/").size());
    const std::string shape = rest.substr(0, rest.rfind("/threads:"));
    const std::string threads = rest.substr(rest.rfind(':') + 1);
    std::string dims;
    for (const gemm_shape& s : all) {
      if (s.name == shape) {
        dims = std::to_string(s.m) + " x " + std::to_string(s.n) + " x " + std::to_string(s.k);
      }
    }
    if (b == reporter.gflops.end()) {
      std::printf("| %s | %s | %s | %.1f | - | - |\n", shape.c_str(), threads.c_str(), dims.c_str(),
                  a->second);
    } else {
      std::printf("| %s | %s | %s | %.1f | %.1f | %.2f |\n", shape.c_str(), threads.c_str(),
                  dims.c_str(), a->second, b->second, a->second / b->second);
    }
  }
  benchmark::Shutdown();
  return 0;
}
