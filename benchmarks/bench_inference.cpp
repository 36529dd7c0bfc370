// Inference throughput (images/s): the deploy runtime's packed integer engine, float and int8
// paths against the training framework's eval-mode forward, for LeNet-5, the VGG-style net and
// ResNet-20 (1 x 28 x 28 input, width 16; frac_bits, frozen at 4 bits per channel group), batch
// 1 and 256, 1 and 2 threads.
//
// Besides the Google Benchmark rows, two modes for `make bench-deploy`
// (benchmarks/peers/run_deploy.py), which runs every engine in a process of its own so that
// each process's peak resident memory is that engine's:
//   bench_inference --deploy-export DIR      writes DIR/lenet5.bgm, DIR/vgg_small.bgm and
//                                            DIR/resnet20.bgm (the nets below, calibrated on
//                                            random inputs)
//   bench_inference --deploy-run FILE ENGINE BATCH THREADS MIN_TIME
//                                            loads FILE (nothing else), runs ENGINE (int or
//                                            float) for MIN_TIME seconds and prints one JSON
//                                            line: {"ips", "p50_us", "p99_us", "peak_rss_kb"}
//                                            (p50 / p99 over the timed calls)
//   bench_inference --deploy-callgrind FILE ENGINE BATCH CALLS
//                                            the same run, 3 warm-up calls, then CALLS calls
//                                            counted by callgrind (client requests); the
//                                            instructions per image are the dump's total /
//                                            (BATCH * CALLS). benchmarks/README.md's counts:
//     valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg-inf.out
//         build/bench-build/benchmarks/bench_inference --deploy-callgrind lenet5.bgm int 256 4
//     callgrind_annotate /tmp/cg-inf.out | grep 'PROGRAM TOTALS'
//
// Threads: "threads" is the OpenMP team size (omp_set_num_threads) the kernels may use; the
// runtime's batch-parallel conv kernels split a batch across it. Batch 1 cannot split.
//   cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DBITGRAD_BUILD_BENCHMARKS=ON
//         -DCMAKE_CXX_FLAGS=-march=native;  cmake --build build/bench --target bench_inference
//   build/bench/benchmarks/bench_inference
#include "compare_args.hpp"

#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/export.hpp>

#include <benchmark/benchmark.h>

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_ZERO_STATS
#define CALLGRIND_START_INSTRUMENTATION
#define CALLGRIND_STOP_INSTRUMENTATION
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <sys/resource.h>
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

auto make_resnet20() {
  nn::model_options<float, quant::frac_bits> o{.seed = 1, .in_channels = 1, .in_size = 28};
  return frozen(nn::resnet20<float, quant::frac_bits>(o));
}

tensor4<float> random_input(std::size_t batch) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  tensor4<float> x = tensor4<float>::from_shape({batch, 1, 28, 28});
  for (auto& v : x) v = d(rng);
  return x;
}

/// mode 0: training framework eval forward; 1: runtime float; 2: runtime int8; 3: runtime
/// packed integer engine.
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
      auto y = rt.run(x, mode == 1   ? deploy::precision::float32
                         : mode == 2 ? deploy::precision::int8
                                     : deploy::precision::packed);
      benchmark::DoNotOptimize(y.data());
    }
  }
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.SetLabel(mode == 0   ? "train-eval"
                 : mode == 1 ? "runtime-float"
                 : mode == 2 ? "runtime-int8"
                             : std::string("runtime-packed-") + int_isa_name(best_int_isa()));
  set_threads(1);
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads", "mode"});
  for (int batch : {1, 256})
    for (int threads : {1, 2})
      for (int mode : {0, 1, 2, 3}) b->Args({batch, threads, mode});
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

void lenet5(benchmark::State& s) {
  run(s, make_lenet);
}
void vgg_small(benchmark::State& s) {
  run(s, make_vgg);
}
void resnet20(benchmark::State& s) {
  run(s, make_resnet20);
}

BENCHMARK(lenet5)->Apply(args);
BENCHMARK(vgg_small)->Apply(args);
BENCHMARK(resnet20)->Apply(args);

/// --deploy-export DIR
int deploy_export(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  auto save = [&](auto net, const char* name) {
    format::model_file m = train::to_model_file(net, format::shape::image(1, 28, 28));
    const tensor4<float> x = random_input(64);
    const deploy::runtime rt(m);
    const std::vector<float> r = rt.input_ranges(x.data(), 64);
    for (std::size_t i = 0; i < m.ops.size(); ++i)
      if (r[i] > 0) m.ops[i].input_range = r[i];
    format::write_model_file(dir / (std::string(name) + ".bgm"), m);
  };
  save(make_lenet(), "lenet5");
  save(make_vgg(), "vgg_small");
  save(make_resnet20(), "resnet20");
  return 0;
}

/// TEXT, the --deploy-run MIN_TIME argument, as seconds > 0.
double parse_seconds(const char* text) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v > 0) || !std::isfinite(v))
    throw bench::usage_error(std::string("MIN_TIME expects seconds > 0, got '") + text + "'");
  return v;
}

/// ENGINE of --deploy-run: "int" (the packed integer path) or "float".
deploy::precision engine_precision(const std::string& engine) {
  if (engine == "int") return deploy::precision::packed;
  if (engine == "float") return deploy::precision::float32;
  throw bench::usage_error("ENGINE expects int or float, got '" + engine + "'");
}

/// BATCH normal random inputs of rt's input size (seed 1).
std::vector<float> deploy_inputs(const deploy::runtime& rt, std::size_t batch) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(batch * rt.input_size());
  for (auto& v : x) v = d(rng);
  return x;
}

/// --deploy-callgrind FILE ENGINE BATCH CALLS (1 thread)
int deploy_callgrind(const char* file, const std::string& engine, std::size_t batch, int calls) {
  set_threads(1);
  deploy::runtime rt = deploy::runtime::load(file);
  // BITGRAD_FLAT_MIN_WIDTH=W: whole-quad stride-1 convs on the flat plane from W output pixels
  // a row (packed_engine::set_flat_min_width; the padded kind keeps its default), to compare.
  if (const char* w = std::getenv("BITGRAD_FLAT_MIN_WIDTH"))
    rt.set_engine_flat_min_width(bench::whole_number("BITGRAD_FLAT_MIN_WIDTH", w, 0),
                                 deploy::flat_padded_min_width);
  const deploy::precision p = engine_precision(engine);
  const std::vector<float> x = deploy_inputs(rt, batch);
  for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(rt.run(x.data(), batch, p).data());
  CALLGRIND_ZERO_STATS;
  CALLGRIND_START_INSTRUMENTATION;
  for (int i = 0; i < calls; ++i) benchmark::DoNotOptimize(rt.run(x.data(), batch, p).data());
  CALLGRIND_STOP_INSTRUMENTATION;
  // The number of convs on the flat plane, so the effect of BITGRAD_FLAT_MIN_WIDTH shows.
  std::size_t flat = 0;
  for (std::size_t k = 0; k < rt.engine().plan().steps.size(); ++k)
    flat += rt.engine().plan().steps[k].conv && rt.engine().flat(k);
  std::printf("%s %s batch %zu calls %d isa %s flat convs %zu\n", file, engine.c_str(), batch,
              calls, engine == "int" ? int_isa_name(best_int_isa()) : "float", flat);
  return 0;
}

/// --deploy-run FILE ENGINE BATCH THREADS MIN_TIME
int deploy_run(const char* file, const std::string& engine, std::size_t batch, int threads,
               double min_time) {
  set_threads(threads);
  const deploy::runtime rt = deploy::runtime::load(file);
  const deploy::precision p = engine_precision(engine);
  const std::vector<float> x = deploy_inputs(rt, batch);
  for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(rt.run(x.data(), batch, p).data());
  std::vector<double> us;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  double total = 0;
  while (total < min_time || us.size() < 5) {
    const auto t0 = clock::now();
    auto y = rt.run(x.data(), batch, p);
    benchmark::DoNotOptimize(y.data());
    const auto t1 = clock::now();
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    total = std::chrono::duration<double>(t1 - start).count();
  }
  std::vector<double> sorted = us;
  std::sort(sorted.begin(), sorted.end());
  auto pct = [&](double q) {
    return sorted[std::min(sorted.size() - 1, std::size_t(q * double(sorted.size())))];
  };
  double sum = 0;
  for (double v : us) sum += v;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("{\"engine\": \"%s\", \"isa\": \"%s\", \"batch\": %zu, \"threads\": %d, "
              "\"calls\": %zu, \"ips\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
              "\"peak_rss_kb\": %ld, \"resident_weight_bytes\": %zu}\n",
              engine.c_str(), engine == "int" ? int_isa_name(best_int_isa()) : "float", batch,
              threads, us.size(), double(batch) * double(us.size()) / (sum * 1e-6), pct(0.5),
              pct(0.99), ru.ru_maxrss, rt.resident_weight_bytes());
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 3 && std::strcmp(argv[1], "--deploy-export") == 0) return deploy_export(argv[2]);
    // The numbers are read before the model file: a bad one stops the program at once.
    constexpr std::size_t most = 1 << 20;
    if (argc == 7 && std::strcmp(argv[1], "--deploy-run") == 0) {
      const std::size_t batch = bench::whole_number("BATCH", argv[4], 1, most);
      const int threads = int(bench::whole_number("THREADS", argv[5], 1, 1024));
      return deploy_run(argv[2], argv[3], batch, threads, parse_seconds(argv[6]));
    }
    if (argc == 6 && std::strcmp(argv[1], "--deploy-callgrind") == 0) {
      const std::size_t batch = bench::whole_number("BATCH", argv[4], 1, most);
      return deploy_callgrind(argv[2], argv[3], batch,
                              int(bench::whole_number("CALLS", argv[5], 1, most)));
    }
  } catch (const bench::usage_error& e) { // a bad argument or variable
    std::fprintf(stderr, "bench_inference: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_inference: %s\n", e.what());
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
