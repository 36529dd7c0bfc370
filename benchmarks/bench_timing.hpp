// The timing loop the GEMM benchmarks share: each iteration times one call with a steady clock
// (not Google Benchmark's own timer, which would include the loop's bookkeeping), so that a
// rate = work * iterations / seconds counts the calls alone.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>

namespace bitgrad::bench {

/// Runs call() once to warm caches, pack buffers and the thread pool (if warm_up), then once per
/// benchmark iteration; returns the seconds spent inside the timed calls.
template <class Call>
double seconds_in_calls(benchmark::State& state, const Call& call, bool warm_up = true) {
  if (warm_up) call();
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    call();
    benchmark::ClobberMemory();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return seconds;
}

} // namespace bitgrad::bench
