// Batch-level parallelism for the convolution and pooling kernels.
//
// Choice: the kernels split the batch into one contiguous chunk of images per OpenMP thread and
// run everything for an image (im2col, gemm, col2im) on that thread. A gemm called from inside
// this region sees omp_in_parallel() and (with the default max-active-levels of 1) runs on the
// calling thread, so there is never a nested team. When the caller is itself inside a parallel
// region, or OpenMP is off (BITGRAD_WITH_OPENMP undefined), everything runs on one thread.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdlib>
#include <string>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace bitgrad::detail {

/// Below this many elements an elementwise pass runs on the calling thread: a thread costs
/// more than the pass (a pass over 2^16 floats takes a few microseconds).
inline constexpr std::size_t elementwise_parallel_min = std::size_t(1) << 16;

/// Threads a batch-parallel kernel will use for `items` independent images (>= 1).
inline std::size_t batch_threads(std::size_t items) {
#if defined(BITGRAD_WITH_OPENMP)
  if (omp_in_parallel() || items < 2) return 1;
  return std::max<std::size_t>(1, std::min<std::size_t>(items, std::size_t(omp_get_max_threads())));
#else
  (void)items;
  return 1;
#endif
}

/// Whether OpenMP's waiting threads sleep (OMP_WAIT_POLICY=passive, read once): waking one then
/// takes tens of microseconds instead of a few, so the thresholds for waking them are higher.
inline bool omp_threads_sleep() {
  static const bool passive = [] {
    std::string policy = std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "";
    for (char& ch : policy) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return policy == "passive";
  }();
  return passive;
}

/// Threads a kernel may start from here: OpenMP's maximum, or 1 inside a parallel region or
/// without OpenMP.
inline std::size_t available_threads() {
#if defined(BITGRAD_WITH_OPENMP)
  if (omp_in_parallel()) return 1;
  return std::max<std::size_t>(1, std::size_t(omp_get_max_threads()));
#else
  return 1;
#endif
}

/// Calls f(thread, begin, end) for contiguous chunks [begin, end) of [0, items), chunk t on
/// thread t, with at most `threads` threads (from batch_threads). Deterministic split.
template <class F>
void parallel_chunks(std::size_t threads, std::size_t items, F&& f) {
  if (threads <= 1) {
    f(std::size_t(0), std::size_t(0), items);
    return;
  }
#if defined(BITGRAD_WITH_OPENMP)
#pragma omp parallel num_threads(static_cast <int>(threads))
  {
    const std::size_t team = std::size_t(omp_get_num_threads());
    const std::size_t t = std::size_t(omp_get_thread_num());
    const std::size_t begin = items * t / team, end = items * (t + 1) / team;
    if (begin < end) f(t, begin, end);
  }
#else
  f(std::size_t(0), std::size_t(0), items);
#endif
}

/// A team of threads inside one parallel_phases region: this thread's number and the team's
/// size, the parallel_chunks split of any item count, and a barrier between phases.
struct thread_team {
  std::size_t thread, size;

  /// [begin, end) of [0, items) for this thread: chunk t of parallel_chunks' split.
  std::size_t begin(std::size_t items) const { return items * thread / size; }
  std::size_t end(std::size_t items) const { return items * (thread + 1) / size; }

  /// Waits until every thread of the team got here (nothing with one thread).
  void barrier() const {
#if defined(BITGRAD_WITH_OPENMP)
    if (size > 1) {
#pragma omp barrier
    }
#endif
  }
};

/// Calls f(team) on at most `threads` threads (from batch_threads), once per thread: passes that
/// must follow one another (say, partial sums over images, then the sum of the partials per
/// element) run as phases separated by team.barrier() in one fork / join instead of one per pass.
/// Every thread must reach every barrier (no barrier under a condition that differs between
/// threads), and f must not throw.
template <class F>
void parallel_phases(std::size_t threads, F&& f) {
  if (threads <= 1) {
    f(thread_team{0, 1});
    return;
  }
#if defined(BITGRAD_WITH_OPENMP)
#pragma omp parallel num_threads(static_cast <int>(threads))
  f(thread_team{std::size_t(omp_get_thread_num()), std::size_t(omp_get_num_threads())});
#else
  f(thread_team{0, 1});
#endif
}

/// Values (batch * channels * plane) from which a per-channel pass (batch norm) wakes the OpenMP
/// threads: a pass over 2^16 floats takes a few microseconds, about what waking a spinning thread
/// costs; sleeping threads (OMP_WAIT_POLICY=passive) take tens of microseconds, hence 8x more.
inline std::size_t batch_norm_parallel_min() {
  return omp_threads_sleep() ? 8 * elementwise_parallel_min : elementwise_parallel_min;
}

/// f(begin, end) over contiguous runs of channels [0, channels), one per thread when the pass
/// has at least batch_norm_parallel_min() values, else f(0, channels) on the calling thread.
template <class F>
inline void batch_norm_channel_runs(std::size_t batch, std::size_t channels, std::size_t plane,
                                    F&& f) {
  const std::size_t threads =
      batch * channels * plane >= batch_norm_parallel_min() ? batch_threads(channels) : 1;
  parallel_chunks(threads, channels,
                  [&](std::size_t, std::size_t begin, std::size_t end) { f(begin, end); });
}

} // namespace bitgrad::detail
