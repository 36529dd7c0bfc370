// Packed low-bit integer GEMM throughput (kernels/packed/packed_gemm.hpp): every path this CPU
// runs x every bitwidth 1..8 x the GEMM shapes of LeNet-5 and the VGG-style net, beside
// bitgrad's float GEMM on the same shapes, and the machine's int8 peak.
//
// Shapes, m x n x K (m activation rows, n output channels, K inputs per channel):
//   conv layers, one image (im2row: m = output pixels, K = Cin * kh * kw; a batch of B images is
//   B such calls, so the per-image rate is the batch rate):
//     lenet.conv1 576 x 6 x 25, lenet.conv2 64 x 16 x 150,
//     vgg.conv1 784 x 32 x 9, vgg.conv2 784 x 32 x 288, vgg.conv3 196 x 64 x 288,
//     vgg.conv4 196 x 64 x 576
//   linear layers at batch 1 (packed_gemv) and 256 (packed_gemm, m = 256):
//     lenet.fc1 256 -> 120, lenet.fc2 120 -> 84, lenet.fc3 84 -> 10, vgg.fc1 3136 -> 256,
//     vgg.fc2 256 -> 10
// Every output goes through the requantizing stage to u8 (scale, bias, ReLU, round, clamp).
// The first convs (C = 1: lenet.conv1 28x28, 5x5; vgg.conv1 28x28, 3x3 pad 1) also run as the
// packed engine runs them, the direct convolution (kernels/packed/direct_conv.hpp: no im2row,
// lanes over pixels; its codes decoded from the packed weights in every call, as the engine
// does): rows int_gemm/direct/<k>bit/<shape>, the same 2 m n K operations per call ("/ path
// peak" is then over the machine's int8 peak).
//
// Rows: int_gemm/<path>/<k>bit/<shape>, int_gemm/float/<shape> (bitgrad::gemm, 1 thread, as
// the packed kernels run on the calling thread), int_gemm/peak/<path>. The counter GOP/s is
// 2 m n K operations per call over wall time. The peak rows run independent chains of the
// path's multiply instruction on registers only (vpdpbusd for the VNNI paths, as bench_gemm
// measures the FMA peak; see "register-only peaks" below); int_gemm/peak/avx2_int16 adds the
// AVX2 int16 kernel's vpaddw to each vpmaddubsw. int_gemm/kernel/avx2_{one,pair}/... time the
// AVX2 micro-kernels alone (run_avx2_kernel). The final table uses the rate per second
// of the calling thread's CPU time (the machine this was written on is shared, where wall time
// mostly measures the other processes) and gives each row as a share of its own path's peak, of the
// machine's best peak and of the float GEMM on the same shape.
//
// Timings on a shared machine are noisy; compare rows of one run, and re-measure on an idle
// machine before quoting numbers.
#include "bench_timing.hpp"

#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/packed/direct_conv.hpp>
#include <bitgrad/kernels/packed/packed_gemm.hpp>

#include <benchmark/benchmark.h>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace bitgrad;

struct int_shape {
  std::string name;
  std::size_t m, n, k;
  std::size_t side = 0, kernel = 0, pad = 0; ///< a first conv (C = 1, side x side, stride 1)
};

std::vector<int_shape> shapes() {
  std::vector<int_shape> s = {
      {"lenet.conv1.image", 576, 6, 25, 28, 5, 0}, {"lenet.conv2.image", 64, 16, 150},
      {"vgg.conv1.image", 784, 32, 9, 28, 3, 1},   {"vgg.conv2.image", 784, 32, 288},
      {"vgg.conv3.image", 196, 64, 288},           {"vgg.conv4.image", 196, 64, 576},
  };
  for (std::size_t b : {1, 256}) {
    const std::string tag = ".b" + std::to_string(b);
    s.push_back({"lenet.fc1" + tag, b, 120, 256});
    s.push_back({"lenet.fc2" + tag, b, 84, 120});
    s.push_back({"lenet.fc3" + tag, b, 10, 84});
    s.push_back({"vgg.fc1" + tag, b, 256, 3136});
    s.push_back({"vgg.fc2" + tag, b, 10, 256});
  }
  return s;
}

/// Codes of one bitwidth (random in range), activations in 0..255, per-channel scales.
struct int_operands {
  std::vector<std::uint8_t> a, y;
  std::vector<float> scale, bias;
  packed_weights w;
  int_operands(const int_shape& s, int bits) : a(s.m * s.k), y(s.m * s.n), scale(s.n), bias(s.n) {
    std::mt19937 rng(7);
    for (auto& v : a) v = static_cast<std::uint8_t>(rng());
    std::vector<std::int32_t> codes(s.n * s.k);
    const std::int32_t limit = packed_code_limit(bits);
    for (auto& c : codes)
      c = bits == 1 ? ((rng() & 1u) ? 1 : -1)
                    : std::int32_t(rng() % std::uint32_t(2 * limit + 1)) - limit;
    const std::vector<std::uint8_t> group_bits(s.n, static_cast<std::uint8_t>(bits));
    const std::vector<float> group_scale(s.n, 0.01f);
    w = packed_weights(s.n, s.k, 1, group_bits.data(), group_scale.data(), codes.data());
    for (std::size_t j = 0; j < s.n; ++j) {
      scale[j] = 1e-3f * float(1 + j % 5);
      bias[j] = 0.1f * float(int(j % 7) - 3);
    }
  }
};

/// Times call() (after one warm-up call) and reports GOP/s and ops_per_call for the shape's
/// 2 m n K operations per call.
template <class Call>
void time_calls(benchmark::State& state, const int_shape& s, const Call& call) {
  const double seconds = bitgrad::bench::seconds_in_calls(state, call);
  state.counters["GOP/s"] =
      2.0 * double(s.m * s.n * s.k) * double(state.iterations()) / seconds * 1e-9;
  state.counters["ops_per_call"] = 2.0 * double(s.m * s.n * s.k);
}

void run_int(benchmark::State& state, const int_shape& s, int_isa path, int bits) {
  int_operands x(s, bits);
  const auto out = output::make_pipeline(output::scale_bias{x.scale.data(), x.bias.data()},
                                         output::clamp{0.0f}, output::quantize_u8{20.0f},
                                         output::store<std::uint8_t>{x.y.data(), s.n});
  auto call = [&] {
    if (s.m == 1)
      packed_gemv(path, x.a.data(), 0, x.w, out);
    else
      packed_gemm(path, s.m, x.a.data(), s.k, 0, x.w, out);
  };
  time_calls(state, s, call);
  state.counters["resident_bytes"] = double(x.w.resident_bytes());
}

/// A first conv (C = 1) as the direct convolution, into the same output stage.
void run_direct(benchmark::State& state, const int_shape& s, int bits) {
  int_operands x(s, bits);
  x.scale.resize(output::padded_length(s.n)), x.bias.resize(output::padded_length(s.n));
  conv2d_geometry g;
  g.in_h = g.in_w = s.side, g.kernel_h = g.kernel_w = s.kernel, g.pad_h = g.pad_w = s.pad;
  const auto out = output::make_padded_pipeline(output::scale_bias{x.scale.data(), x.bias.data()},
                                                output::clamp{0.0f}, output::quantize_u8{20.0f},
                                                output::store<std::uint8_t>{x.y.data(), s.n});
  std::vector<std::int8_t> codes(s.n * s.k);
  auto call = [&] {
    packed_codes(x.w, codes.data());
    direct_conv(g, x.a.data(), 0, codes.data(), s.n, 0, g.out_plane(), out);
  };
  time_calls(state, s, call);
}

void run_float(benchmark::State& state, const int_shape& s) {
#if defined(BITGRAD_WITH_OPENMP)
  omp_set_num_threads(1);
#endif
  std::vector<float> a(s.m * s.k), w(s.n * s.k), y(s.m * s.n);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = float(i % 17) * 0.01f;
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(int(i % 13) - 6) * 0.01f;
  auto call = [&] {
    gemm(transpose::no, transpose::yes, s.m, s.n, s.k, 1.0f, a.data(), s.k, w.data(), s.k, 0.0f,
         y.data(), s.n);
  };
  time_calls(state, s, call);
}

// ---- register-only peaks ------------------------------------------------------------------
// Independent accumulator chains of the path's multiply instruction on registers only: vpdpbusd
// for the VNNI paths (as bench_gemm measures the FMA peak), vpmaddubsw for AVX2 and pmaddwd for
// SSE2, each chain feeding its own result back (so nothing can be hoisted or shared). For AVX2
// and SSE2 this is the multiplier's throughput; their kernels also need a widening vpmaddwd and
// an add per multiply, so they cannot reach it.
constexpr std::size_t peak_steps = 1 << 16;

/// Chains per loop: enough to cover the latency, few enough to stay in registers.
constexpr std::size_t peak_chains(int_isa p) {
  return p == int_isa::avx512_vnni ? 12 : 10;
}

/// Operations (2 per multiply-add) of one peak loop.
double peak_ops(int_isa p) {
  const double macs_per_instruction = p == int_isa::avx512_vnni                      ? 64
                                      : p == int_isa::avx_vnni || p == int_isa::avx2 ? 32
                                                                                     : 8;
  return 2.0 * macs_per_instruction * double(peak_chains(p)) * peak_steps;
}

#if BITGRAD_PACKED_X86
BITGRAD_TARGET_AVX512_VNNI void peak_loop_avx512_vnni() {
  constexpr std::size_t chains = peak_chains(int_isa::avx512_vnni);
  __m512i acc[chains];
  const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
#pragma GCC unroll 16
  for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm512_set1_epi32(int(i));
  for (std::size_t p = 0; p < peak_steps; ++p)
#pragma GCC unroll 16
    for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], x, y);
  // One value out of all chains (taking the address of acc itself would keep it in memory).
  __m512i sum = acc[0];
#pragma GCC unroll 16
  for (std::size_t i = 1; i < chains; ++i) sum = _mm512_add_epi32(sum, acc[i]);
  benchmark::DoNotOptimize(sum);
}
#if BITGRAD_PACKED_HAS_AVX_VNNI
BITGRAD_TARGET_AVX_VNNI void peak_loop_avx_vnni() {
  constexpr std::size_t chains = peak_chains(int_isa::avx_vnni);
  __m256i acc[chains];
  const __m256i x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2);
#pragma GCC unroll 16
  for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm256_set1_epi32(int(i));
  for (std::size_t p = 0; p < peak_steps; ++p)
#pragma GCC unroll 16
    for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], x, y);
  // One value out of all chains (taking the address of acc itself would keep it in memory).
  __m256i sum = acc[0];
#pragma GCC unroll 16
  for (std::size_t i = 1; i < chains; ++i) sum = _mm256_add_epi32(sum, acc[i]);
  benchmark::DoNotOptimize(sum);
}
#endif
BITGRAD_TARGET_AVX2 void peak_loop_avx2() {
  constexpr std::size_t chains = peak_chains(int_isa::avx2);
  __m256i acc[chains];
  const __m256i y = _mm256_set1_epi8(1);
#pragma GCC unroll 16
  for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm256_set1_epi8(char(i));
  for (std::size_t p = 0; p < peak_steps; ++p)
#pragma GCC unroll 16
    for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm256_maddubs_epi16(acc[i], y);
  // One value out of all chains (taking the address of acc itself would keep it in memory).
  __m256i sum = acc[0];
#pragma GCC unroll 16
  for (std::size_t i = 1; i < chains; ++i) sum = _mm256_add_epi16(sum, acc[i]);
  benchmark::DoNotOptimize(sum);
}
/// The AVX2 int16 kernel's instruction pair on registers only: per chain s += vpmaddubsw(x, y)
/// (vpaddw into int16 sums, as avx2_quad_int16 per row and register half). One asm statement
/// holds a step of all 10 chains (with the chains in an array and one statement each, GCC kept
/// them on the stack, a store and a load per step). Its rate over peak_loop_avx2's is the share
/// of the multiplier the adds leave (int_gemm/peak/avx2_int16).
BITGRAD_TARGET_AVX2 void peak_loop_avx2_int16() {
  static_assert(peak_chains(int_isa::avx2) == 10);
  const __m256i x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2);
  __m256i s0 = _mm256_set1_epi16(0), s1 = _mm256_set1_epi16(1), s2 = _mm256_set1_epi16(2),
          s3 = _mm256_set1_epi16(3), s4 = _mm256_set1_epi16(4), s5 = _mm256_set1_epi16(5),
          s6 = _mm256_set1_epi16(6), s7 = _mm256_set1_epi16(7), s8 = _mm256_set1_epi16(8),
          s9 = _mm256_set1_epi16(9), product;
  for (std::size_t p = 0; p < peak_steps; ++p)
    asm("vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s0], %[s0]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s1], %[s1]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s2], %[s2]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s3], %[s3]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s4], %[s4]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s5], %[s5]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s6], %[s6]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s7], %[s7]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s8], %[s8]\n\t"
        "vpmaddubsw %[y], %[x], %[p]\n\tvpaddw %[p], %[s9], %[s9]"
        : [s0] "+x"(s0), [s1] "+x"(s1), [s2] "+x"(s2), [s3] "+x"(s3), [s4] "+x"(s4), [s5] "+x"(s5),
          [s6] "+x"(s6), [s7] "+x"(s7), [s8] "+x"(s8), [s9] "+x"(s9), [p] "=&x"(product)
        : [x] "x"(x), [y] "x"(y));
  __m256i sum = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(s0, s1), s2), s3);
  sum = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(sum, s4), s5), s6);
  sum = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(sum, s7), s8), s9);
  benchmark::DoNotOptimize(sum);
}
BITGRAD_TARGET_SSE2 void peak_loop_sse2() {
  constexpr std::size_t chains = peak_chains(int_isa::sse2);
  __m128i acc[chains];
  const __m128i y = _mm_set1_epi16(1);
#pragma GCC unroll 16
  for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm_set1_epi16(short(i));
  for (std::size_t p = 0; p < peak_steps; ++p)
#pragma GCC unroll 16
    for (std::size_t i = 0; i < chains; ++i) acc[i] = _mm_madd_epi16(acc[i], y);
  // One value out of all chains (taking the address of acc itself would keep it in memory).
  __m128i sum = acc[0];
#pragma GCC unroll 16
  for (std::size_t i = 1; i < chains; ++i) sum = _mm_add_epi32(sum, acc[i]);
  benchmark::DoNotOptimize(sum);
}
#endif

void run_peak(benchmark::State& state, int_isa p) {
  // The loop of each path, or nullptr where this binary has none.
  void (*loop)() = nullptr;
  switch (p) {
#if BITGRAD_PACKED_X86
  case int_isa::avx512_vnni:
    loop = peak_loop_avx512_vnni;
    break;
#if BITGRAD_PACKED_HAS_AVX_VNNI
  case int_isa::avx_vnni:
    loop = peak_loop_avx_vnni;
    break;
#endif
  case int_isa::avx2:
    loop = peak_loop_avx2;
    break;
  case int_isa::sse2:
    loop = peak_loop_sse2;
    break;
#endif
  default:
    break;
  }
  if (loop == nullptr) {
    state.SkipWithError("no peak loop for this path");
    return;
  }
  const double seconds = bitgrad::bench::seconds_in_calls(state, loop, /*warm_up=*/false);
  state.counters["GOP/s"] = peak_ops(p) * double(state.iterations()) / seconds * 1e-9;
  state.counters["ops_per_call"] = peak_ops(p);
}

#if BITGRAD_PACKED_X86
/// int_gemm/peak/avx2_int16: peak_loop_avx2_int16, 32 multiply-adds per vpmaddubsw.
void run_peak_avx2_int16(benchmark::State& state) {
  const double seconds =
      bitgrad::bench::seconds_in_calls(state, peak_loop_avx2_int16, /*warm_up=*/false);
  state.counters["GOP/s"] = peak_ops(int_isa::avx2) * double(state.iterations()) / seconds * 1e-9;
  state.counters["ops_per_call"] = peak_ops(int_isa::avx2);
}
#endif

#if BITGRAD_PACKED_X86
/// int_gemm/kernel/avx2_{one,pair}/<k>bit/<nq>q: the AVX2 micro-kernels alone on a decoded
/// panel pair in L1, 64 rows (one row block) x 2 tiles x nq quads, codes uniform on class k's
/// grid, x random: the one-tile kernel on each tile (packed_rows, what the GEMM drivers run)
/// against the tile-pair kernel (packed_rows_pair, not wired into the
/// drivers: see its comment in packed_avx2.hpp).
void run_avx2_kernel(benchmark::State& state, bool pair, int bits, std::size_t nq) {
  constexpr std::size_t rows = 64;
  const std::size_t lda = nq * packed_quad, panel_stride = nq * packed_quad_codes + 64;
  std::mt19937 rng(7);
  std::vector<std::uint8_t> x(rows * lda);
  for (std::uint8_t& v : x) v = std::uint8_t(rng());
  const int lo = bits == 1 ? -1 : -(1 << (bits - 1)), hi = bits == 1 ? 1 : -lo - 1;
  std::vector<std::int8_t> panel(2 * panel_stride);
  for (std::int8_t& v : panel) {
    const int c = lo + int(rng() % std::uint32_t(hi - lo + 1));
    v = std::int8_t(bits == 1 && c == 0 ? 1 : c);
  }
  std::vector<std::int32_t> c(2 * rows * packed_tile);
  std::int32_t* const c1 = c.data() + rows * packed_tile;
  const std::size_t off = 0;
  auto call = [&] {
    if (pair) {
      detail::packed_rows_pair(isa::avx2{}, rows, x.data(), lda, &off, &nq, 1, 0, bits,
                               panel.data(), panel_stride, c.data(), c1, false);
    } else {
      detail::packed_rows(isa::avx2{}, rows, x.data(), lda, nq, 0, bits, panel.data(), c.data(),
                          false);
      detail::packed_rows(isa::avx2{}, rows, x.data(), lda, nq, 0, bits,
                          panel.data() + panel_stride, c1, false);
    }
  };
  const double seconds = bitgrad::bench::seconds_in_calls(state, call);
  const double ops = 2.0 * double(rows * 2 * packed_tile * nq * packed_quad);
  state.counters["GOP/s"] = ops * double(state.iterations()) / seconds * 1e-9;
  state.counters["ops_per_call"] = ops;
}
#endif

/// Prints like the console reporter and keeps each row's best rate per CPU second (over
/// repetitions) for the final table.
class rate_reporter : public benchmark::ConsoleReporter {
public:
  std::map<std::string, double> best;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const auto ops = r.counters.find("ops_per_call");
      if (r.error_occurred || r.run_type != Run::RT_Iteration || ops == r.counters.end()) continue;
      // GetAdjustedCPUTime: CPU time per iteration in the row's unit (microseconds here).
      const double cpu_seconds = r.GetAdjustedCPUTime() * 1e-6;
      if (cpu_seconds <= 0) continue;
      double& b = best[r.run_name.function_name];
      b = std::max(b, ops->second.value / cpu_seconds * 1e-9);
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
  benchmark::AddCustomContext("best_int_path", int_isa_name(best_int_isa()));

  std::vector<int_isa> paths;
  for (int_isa p : all_int_isas)
    if (p != int_isa::reference && int_isa_supported(p)) paths.push_back(p);
  std::vector<int_isa> peaks;
  for (int_isa p : paths)
    if (p != int_isa::neon && p != int_isa::neon_dot) peaks.push_back(p);
  for (int_isa p : peaks)
    benchmark::RegisterBenchmark((std::string("int_gemm/peak/") + int_isa_name(p)).c_str(),
                                 run_peak, p)
        ->Unit(benchmark::kMicrosecond);
#if BITGRAD_PACKED_X86
  const std::vector<int> kernel_bits = {1, 2, 4, 6};
  const std::vector<std::size_t> kernel_quads = {36, 72, 144};
  if (int_isa_supported(int_isa::avx2)) {
    benchmark::RegisterBenchmark("int_gemm/peak/avx2_int16", run_peak_avx2_int16)
        ->Unit(benchmark::kMicrosecond);
    for (int bits : kernel_bits)
      for (std::size_t nq : kernel_quads)
        for (bool pair : {false, true})
          benchmark::RegisterBenchmark((std::string("int_gemm/kernel/avx2_") +
                                        (pair ? "pair/" : "one/") + std::to_string(bits) + "bit/" +
                                        std::to_string(nq) + "q")
                                           .c_str(),
                                       run_avx2_kernel, pair, bits, nq)
              ->Unit(benchmark::kMicrosecond)
              ->MinTime(0.1);
  }
#endif

  const std::vector<int_shape> all = shapes();
  for (const int_shape& s : all) {
    benchmark::RegisterBenchmark(("int_gemm/float/" + s.name).c_str(), run_float, s)
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(0.1);
    for (int_isa p : paths)
      for (int bits = 1; bits <= packed_max_bits; ++bits)
        benchmark::RegisterBenchmark((std::string("int_gemm/") + int_isa_name(p) + "/" +
                                      std::to_string(bits) + "bit/" + s.name)
                                         .c_str(),
                                     run_int, s, p, bits)
            ->Unit(benchmark::kMicrosecond)
            ->MinTime(0.1);
    if (s.side)
      for (int bits = 1; bits <= packed_max_bits; ++bits)
        benchmark::RegisterBenchmark(
            ("int_gemm/direct/" + std::to_string(bits) + "bit/" + s.name).c_str(), run_direct, s,
            bits)
            ->Unit(benchmark::kMicrosecond)
            ->MinTime(0.1);
  }

  rate_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  auto rate = [&](const std::string& row) {
    const auto it = reporter.best.find(row);
    return it == reporter.best.end() ? 0.0 : it->second;
  };
  double machine_peak = 0;
  std::string machine_peak_path = "none";
  for (int_isa p : peaks) {
    const double r = rate(std::string("int_gemm/peak/") + int_isa_name(p));
    std::printf("\nmeasured peak, %s, 1 thread: %.1f GOP/s per CPU second", int_isa_name(p), r);
    if (r > machine_peak) machine_peak = r, machine_peak_path = int_isa_name(p);
  }
  if (const double r = rate("int_gemm/peak/avx2_int16"); r > 0)
    std::printf("\nmeasured vpmaddubsw + vpaddw (the AVX2 int16 kernel's pair), 1 thread: %.1f "
                "GOP/s per CPU second",
                r);
  std::printf("\nmachine int8 peak: %.1f GOP/s per CPU second (%s)\n", machine_peak,
              machine_peak_path.c_str());
#if BITGRAD_PACKED_X86
  for (int bits : kernel_bits)
    for (std::size_t nq : kernel_quads) {
      const std::string tail = std::to_string(bits) + "bit/" + std::to_string(nq) + "q";
      const double one = rate("int_gemm/kernel/avx2_one/" + tail),
                   pair = rate("int_gemm/kernel/avx2_pair/" + tail);
      if (one > 0 && pair > 0)
        std::printf("AVX2 kernel alone, %d bit, 64 rows x 32 channels x %zu quads: one-tile %.1f, "
                    "pair %.1f GOP/s per CPU second, pair / one-tile time %.3f\n",
                    bits, nq, one, pair, one / pair);
    }
#endif
  std::printf("\n| shape | m x n x K | path | bits | GOP/s (CPU) | / path peak | / machine peak | "
              "/ float GEMM |\n|---|---|---|---:|---:|---:|---:|---:|\n");
  for (const int_shape& s : all) {
    const double f = rate("int_gemm/float/" + s.name);
    const std::string dims =
        std::to_string(s.m) + " x " + std::to_string(s.n) + " x " + std::to_string(s.k);
    for (int_isa p : paths) {
      const double pp = rate(std::string("int_gemm/peak/") + int_isa_name(p));
      for (int bits = 1; bits <= packed_max_bits; ++bits) {
        const double r = rate(std::string("int_gemm/") + int_isa_name(p) + "/" +
                              std::to_string(bits) + "bit/" + s.name);
        if (r == 0) continue;
        std::printf("| %s | %s | %s | %d | %.1f | %.2f | %.2f | %.2f |\n", s.name.c_str(),
                    dims.c_str(), int_isa_name(p), bits, r, pp > 0 ? r / pp : 0.0,
                    machine_peak > 0 ? r / machine_peak : 0.0, f > 0 ? r / f : 0.0);
      }
    }
    for (int bits = 1; s.side && bits <= packed_max_bits; ++bits) {
      const double r = rate("int_gemm/direct/" + std::to_string(bits) + "bit/" + s.name);
      if (r == 0) continue;
      const double mp = machine_peak > 0 ? r / machine_peak : 0.0;
      std::printf("| %s | %s | direct | %d | %.1f | %.2f | %.2f | %.2f |\n", s.name.c_str(),
                  dims.c_str(), bits, r, mp, mp, f > 0 ? r / f : 0.0);
    }
  }
  benchmark::Shutdown();
  return 0;
}
