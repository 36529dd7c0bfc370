// Optimizer update kernels: the per-element arithmetic of optim::adam / adamw and optim::sgd over
// parameter tensors, in SIMD registers and on the OpenMP threads.
//
//   adam  : g' = g + decay * w  (Adam)          or  w = keep * w, g' = g  (AdamW)
//           m = beta1 * m + (1 - beta1) * g'
//           v = beta2 * v + (1 - beta2) * g'^2  (or the tensor's mean square, shared)
//           w = w - step_size * m / (sqrt(v) / sqrt_bc2 + eps)
//   sgd   : d = g + decay * w
//           momentum 0: w = w - lr * d
//           otherwise : buf = momentum * buf + d
//                       w = w - lr * (nesterov ? d + momentum * buf : buf)
// (the constants: kernels/ref/optim_update.hpp; the reference twins there run the same formulas
// as scalar loops).
//
// Every element goes through the same register instructions, the last partial register through a
// zero-padded copy, so an element's result depends neither on where it sits nor on how the
// tensors are cut between threads: a step on any number of threads is bitwise the serial step.
// (The multiply-adds are fused where the target has FMA, so results may differ from the reference
// twins in the last bit.)
//
// Threads: update_tensors cuts all tensors of a step into blocks of optim_block elements and gives
// each thread a contiguous run of blocks, when the step has enough elements to pay for waking
// them (adam_parallel_min, sgd_parallel_min).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/ref/optim_update.hpp>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace bitgrad {

namespace detail {

/// Elements per block of the thread split (a multiple of every register width).
inline constexpr std::size_t optim_block = 4096;

/// Below these many elements in a step, the optimizer runs on the calling thread. Crossovers
/// measured with benchmarks/bench_optim.cpp --compare (one tensor, 1 against 2 threads, quiet
/// machine; see benchmarks/README.md, "Optimizer steps"): Adam broke even at 2^16 floats and won
/// 1.3x at 2^17 with libgomp's spinning threads, and broke even at 2^19 with sleeping ones
/// (OMP_WAIT_POLICY=passive); SGD with momentum, lighter per element, won 1.2x at 2^17 spinning
/// and 1.5x at 2^21 sleeping (0.8-0.9x below).
inline std::size_t adam_parallel_min() {
  return std::size_t(1) << (omp_threads_sleep() ? 19 : 17);
}
inline std::size_t sgd_parallel_min() {
  return std::size_t(1) << (omp_threads_sleep() ? 21 : 17);
}

/// Calls step(i, count) for i = 0, L, 2L, ... over [0, n) with count = min(L, n - i) <= L
/// elements: the caller loads whole registers from i when count == L, a zero-padded copy
/// otherwise.
template <class T, class Step>
inline void for_each_register(std::size_t n, Step&& step) {
  constexpr std::size_t lanes = simd_batch<T>::size;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) step(i, lanes);
  if (i < n) step(i, n - i);
}

/// A register of p[i, i + count): loaded in place when count is a whole register, else from a
/// zero-padded copy in tmp.
template <class B, class T>
inline B load_part(const T* p, std::size_t count, T* tmp) {
  if (count == B::size) return B::load_unaligned(p);
  std::fill_n(tmp, B::size, T(0));
  std::copy_n(p, count, tmp);
  return B::load_aligned(tmp);
}

/// Stores the first `count` lanes of b to p.
template <class B, class T>
inline void store_part(const B& b, T* p, std::size_t count, T* tmp) {
  if (count == B::size) {
    b.store_unaligned(p);
    return;
  }
  b.store_aligned(tmp);
  std::copy_n(tmp, count, p);
}

} // namespace detail

/// Adam / AdamW on n elements (top of this file); m and v are the moments.
template <class T>
void adam_update(std::size_t n, T* w, const T* g, T* m, T* v, const adam_update_params<T>& k) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::adam_update(n, w, g, m, v, k);
  } else {
    using B = simd_batch<T>;
    const B beta1(k.beta1), beta2(k.beta2), c1(k.one_minus_beta1), c2(k.one_minus_beta2);
    const B eps(k.eps), step_size(k.step_size), sqrt_bc2(k.sqrt_bc2), decay(k.decay), keep(k.keep),
        mean_square(k.mean_square);
    alignas(simd_arch::alignment()) T tmp[B::size];
    detail::for_each_register<T>(n, [&](std::size_t i, std::size_t count) {
      B wv = detail::load_part<B>(w + i, count, tmp);
      B gv = detail::load_part<B>(g + i, count, tmp);
      B mv = detail::load_part<B>(m + i, count, tmp);
      B vv = detail::load_part<B>(v + i, count, tmp);
      if (k.decoupled)
        wv = wv * keep;
      else
        gv = xsimd::fma(decay, wv, gv);
      mv = xsimd::fma(beta1, mv, c1 * gv);
      vv = xsimd::fma(beta2, vv, c2 * (k.shared_second_moment ? mean_square : gv * gv));
      wv = wv - step_size * mv / (xsimd::sqrt(vv) / sqrt_bc2 + eps);
      detail::store_part(wv, w + i, count, tmp);
      detail::store_part(mv, m + i, count, tmp);
      detail::store_part(vv, v + i, count, tmp);
    });
  }
}

/// SGD on n elements (top of this file); buf is the momentum buffer (unused when momentum is 0).
template <class T>
void sgd_update(std::size_t n, T* w, const T* g, T* buf, const sgd_update_params<T>& k) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::sgd_update(n, w, g, buf, k);
  } else {
    using B = simd_batch<T>;
    const B lr(k.lr), decay(k.decay), momentum(k.momentum);
    alignas(simd_arch::alignment()) T tmp[B::size];
    const bool plain = k.momentum == T(0);
    detail::for_each_register<T>(n, [&](std::size_t i, std::size_t count) {
      B wv = detail::load_part<B>(w + i, count, tmp);
      const B d = xsimd::fma(decay, wv, detail::load_part<B>(g + i, count, tmp));
      if (plain) {
        wv = wv - lr * d;
      } else {
        const B bv = xsimd::fma(momentum, detail::load_part<B>(buf + i, count, tmp), d);
        wv = wv - lr * (k.nesterov ? xsimd::fma(momentum, bv, d) : bv);
        detail::store_part(bv, buf + i, count, tmp);
      }
      detail::store_part(wv, w + i, count, tmp);
    });
  }
}

/// One tensor of an optimizer step: its elements, gradient, state buffers and constants.
template <class T, class Params>
struct optim_tensor {
  T* w;
  const T* g;
  T* state0; ///< Adam: m; SGD: the momentum buffer (null without momentum)
  T* state1; ///< Adam: v
  std::size_t size;
  Params params;
};

/// Runs update(tensor, begin, end) over every tensor of a step: serially below `min_parallel`
/// elements in all (detail::adam_parallel_min(), sgd_parallel_min()), otherwise in blocks of
/// detail::optim_block elements split evenly between the threads (each thread a contiguous run of
/// blocks, in tensor order).
template <class Tensor, class Update>
void update_tensors(const std::vector<Tensor>& tensors, Update&& update, std::size_t min_parallel) {
  constexpr std::size_t block = detail::optim_block;
  std::size_t total = 0, blocks = 0;
  for (const Tensor& t : tensors) {
    total += t.size;
    blocks += (t.size + block - 1) / block;
  }
  const std::size_t threads = total >= min_parallel ? detail::batch_threads(blocks) : 1;
  if (threads <= 1) {
    for (const Tensor& t : tensors) update(t, std::size_t(0), t.size);
    return;
  }
  detail::parallel_chunks(threads, blocks, [&](std::size_t, std::size_t b, std::size_t e) {
    // Find the tensor holding block b, then walk blocks [b, e).
    std::size_t first = 0, j = 0;
    while (first + (tensors[j].size + block - 1) / block <= b)
      first += (tensors[j++].size + block - 1) / block;
    for (std::size_t blk = b; blk < e; ++j) {
      const std::size_t count = (tensors[j].size + block - 1) / block;
      const std::size_t from = blk - first, to = std::min(count, from + (e - blk));
      update(tensors[j], from * block, std::min(tensors[j].size, to * block));
      blk += to - from;
      first += count;
    }
  });
}

} // namespace bitgrad
