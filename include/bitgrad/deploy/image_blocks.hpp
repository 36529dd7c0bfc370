// A batch cut into blocks of whole images, for the deploy runtime's float / int8 paths
// (runtime.hpp) and the packed integer engine (packed_engine.hpp).
//
// Why: running every layer on the whole batch makes each activation batch x (per image) large
// (LeNet-5's first conv at batch 256: 4.8 MB of float), so each op output was a fresh
// allocation that page-faulted on first touch, and no activation stayed in cache between ops.
// Running all layers on one block of images at a time, with per-thread buffers reused across
// blocks and calls, keeps a block's activations in L2 and allocates nothing after the first call.
//
//   cap    = max(1, block_bytes / (largest activation of one image, bytes))
//   count  = ceil(batch / cap), rounded up to a multiple of the threads (<= batch) so that the
//            threads get the same number of blocks
//   size   = ceil(batch / count)   images per block; the last block may be smaller
//
// Threads take whole blocks (contiguous runs of blocks, as parallel_chunks); the kernels called
// inside the region see omp_in_parallel() and run on their thread. An exception thrown inside a
// block is caught there (the first one is kept; OpenMP does not let one cross the region) and
// rethrown on the calling thread after the region.
#pragma once

#include <bitgrad/kernels/parallel.hpp>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>

namespace bitgrad::deploy {

/// Bytes the largest activation of one block may take (an L2's share).
inline constexpr std::size_t image_block_bytes = std::size_t(256) << 10;

namespace detail {

/// How a batch is cut: `count` blocks of `size` images (the last one: the rest).
struct image_blocks {
  std::size_t batch = 0, size = 1, count = 0;
  std::size_t begin(std::size_t b) const { return std::min(batch, b * size); }
  std::size_t end(std::size_t b) const { return std::min(batch, (b + 1) * size); }
};

/// Images per block whose largest activation, `image_bytes` per image, fits image_block_bytes.
inline std::size_t image_block_cap(std::size_t image_bytes) {
  return std::max<std::size_t>(1, image_block_bytes / std::max<std::size_t>(1, image_bytes));
}

/// Blocks of at most `cap` images (cap >= 1), their count a multiple of `threads` (<= batch).
inline image_blocks plan_image_blocks(std::size_t batch, std::size_t cap, std::size_t threads) {
  image_blocks b;
  b.batch = batch;
  if (batch == 0) return b;
  cap = std::max<std::size_t>(1, cap);
  threads = std::max<std::size_t>(1, std::min(threads, batch));
  std::size_t count = (batch + cap - 1) / cap;
  count = std::min(batch, (count + threads - 1) / threads * threads);
  b.size = (batch + count - 1) / count;
  b.count = (batch + b.size - 1) / b.size;
  return b;
}

/// Calls f(b0, b1) for runs of consecutive blocks [b0, b1): all of them on the calling thread
/// when there is one block or one thread, else one contiguous run per OpenMP thread of
/// `threads` (as parallel_chunks). The first exception thrown by f is rethrown here after
/// every thread has stopped.
template <class F>
void for_image_block_runs(const image_blocks& blocks, std::size_t threads, F&& f) {
  threads = std::min(threads, blocks.count);
  if (threads <= 1) {
    if (blocks.count > 0) f(std::size_t(0), blocks.count);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  bitgrad::detail::parallel_chunks(threads, blocks.count,
                                   [&](std::size_t, std::size_t b0, std::size_t b1) {
                                     try {
                                       f(b0, b1);
                                     } catch (...) {
                                       const std::lock_guard<std::mutex> lock(error_mutex);
                                       if (!error) error = std::current_exception();
                                     }
                                   });
  if (error) std::rethrow_exception(error);
}

/// Calls f(begin, end) for the image range of every block: on the calling thread when there is
/// one block or one thread, else blocks split across `threads` OpenMP threads in contiguous
/// runs (for_image_block_runs). The first exception thrown by f is rethrown here after every
/// thread has stopped (the other blocks of the thread that threw are skipped).
template <class F>
void for_image_blocks(const image_blocks& blocks, std::size_t threads, F&& f) {
  for_image_block_runs(blocks, threads, [&](std::size_t b0, std::size_t b1) {
    for (std::size_t b = b0; b < b1; ++b) f(blocks.begin(b), blocks.end(b));
  });
}

/// A buffer that grows without initialising (std::vector::resize would zero the new part) and
/// keeps its memory: thread_local instances hold a thread's activations across calls.
template <class T>
struct reusable_buffer {
  std::unique_ptr<T[]> data;
  std::size_t capacity = 0;
  /// At least n elements, contents unspecified.
  T* get(std::size_t n) {
    if (n > capacity) {
      data.reset(new T[n]);
      capacity = n;
    }
    return data.get();
  }
};

} // namespace detail

} // namespace bitgrad::deploy
