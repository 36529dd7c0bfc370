// Fused fake-quantization kernels on simd_batch<T>: one pass over a group for the forward
// (writes wq) and one for the backward (grad_w, and the sums for grad_b and grad_s together).
// The formulas, words and data layout are at the top of kernels/ref/quantize.hpp; each kernel
// here has a scalar twin of the same name and signature in bitgrad::ref.
//
// Exactness against bitgrad::ref:
//   * single-grid and step kernels (quant_fprop / quant_bprop / step_quant_*, hence every
//     frozen quantizer and the export codes) are bit-exact on their element-wise outputs: the
//     same IEEE operations in the same order (w / s, clamp, round half to even, s * code, a
//     masked add), for float and double, ragged tails included (a tail is padded into one
//     register through a stack buffer and runs the same code).
//   * the fractional mix (frac_quant_fprop, and grad_w of frac_quant_bprop) has one
//     multiply-add, q_lo + f (q_hi - q_lo), which GCC may fuse into an FMA in one kernel and
//     not in the other (-ffp-contract=fast is the GNU default): equal within 1 ulp, and
//     bit-exact at f = 0.
//   * the per-group sums (abs_stats::sum_abs and the *_sums) are reductions: the SIMD kernels
//     keep one partial sum per lane and add the lanes at the end, so they differ from the
//     sequential reference by rounding only (relative ~ n * epsilon). max_abs is exact.
//   Checked by tests/unit/test_quant_kernels.cpp at -O2 (SSE2) and -march=native (AVX-512).
// No allocation: a tail uses one register-sized stack buffer.
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/ref/quantize.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace bitgrad {

namespace detail {

template <class T>
using qbatch = simd_batch<T>;

/// Loads m <= lanes values (zero padded).
template <class T>
qbatch<T> load_part(const T* p, std::size_t m) {
  constexpr std::size_t lanes = qbatch<T>::size;
  if (m == lanes) return qbatch<T>::load_unaligned(p);
  T buf[lanes] = {};
  std::copy(p, p + m, buf);
  return qbatch<T>::load_unaligned(buf);
}

/// Stores the first m <= lanes values of v.
template <class T>
void store_part(T* p, const qbatch<T>& v, std::size_t m) {
  constexpr std::size_t lanes = qbatch<T>::size;
  if (m == lanes) {
    v.store_unaligned(p);
    return;
  }
  T buf[lanes];
  v.store_unaligned(buf);
  std::copy(buf, buf + m, p);
}

/// Sum of the lanes, lane 0 first (through memory: xsimd 8's AVX-512 hadd trips a GCC 12
/// -Wuninitialized false positive, and this costs nothing once per group).
template <class T>
T sum_lanes(const qbatch<T>& v) {
  T buf[qbatch<T>::size];
  v.store_unaligned(buf);
  T s = 0;
  for (T x : buf) s += x;
  return s;
}

/// Largest lane.
template <class T>
T max_lanes(const qbatch<T>& v) {
  T buf[qbatch<T>::size];
  v.store_unaligned(buf);
  return *std::max_element(buf, buf + qbatch<T>::size);
}

/// Calls step(i, m) over [0, n) in register-sized chunks; the last chunk may be short.
template <class T, class Step>
void for_each_chunk(std::size_t n, Step&& step) {
  constexpr std::size_t lanes = qbatch<T>::size;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) step(i, lanes);
  if (i < n) step(i, n - i);
}

// GCC 12 warns (-Wmaybe-uninitialized, a false positive from _mm512_undefined_ps) inside
// xsimd's AVX-512 min / max / nearbyint, so the kernels use select-based equivalents; the
// results are the same IEEE values as std::min / std::max / std::nearbyint on non-NaN inputs.

/// min(max(x, lo), hi) as std::min(std::max(x, lo), hi) computes it.
template <class T>
qbatch<T> clamp(const qbatch<T>& x, const qbatch<T>& lo, const qbatch<T>& hi) {
  const qbatch<T> y = xsimd::select(x < lo, lo, x);
  return xsimd::select(hi < y, hi, y);
}

/// Round half to even, the sign of zero kept: (|x| + 2^p) - 2^p rounds |x| to an integer in the
/// default rounding mode (p = mantissa bits); |x| >= 2^p is already an integer.
template <class T>
qbatch<T> round_even(const qbatch<T>& x) {
  const qbatch<T> big(T(1) / std::numeric_limits<T>::epsilon());
  const qbatch<T> a = xsimd::abs(x);
  const qbatch<T> r = (a + big) - big;
  return xsimd::select(a < big, r | xsimd::bitofsign(x), x);
}

/// One register of weights on one grid (see ref::detail::on_grid, same operations).
template <class T>
struct grid_batch {
  qbatch<T> q;
  typename qbatch<T>::batch_bool_type inside;
  qbatch<T> dq_ds;
};

template <class T>
grid_batch<T> on_grid(const qbatch<T>& w, const quant_grid<T>& g) {
  const qbatch<T> s(g.scale);
  const qbatch<T> lim(g.limit);
  const qbatch<T> x = w / s;
  grid_batch<T> r;
  r.inside = xsimd::abs(x) <= qbatch<T>(inside_limit(g));
  qbatch<T> code;
  if (g.sign) {
    code = xsimd::select(w >= qbatch<T>(T(0)), qbatch<T>(T(1)), qbatch<T>(T(-1)));
    r.dq_ds = code;
  } else {
    code = round_even(clamp(x, qbatch<T>(-lim), lim));
    r.dq_ds = xsimd::select(r.inside, code - x, code);
  }
  r.q = s * code;
  return r;
}

} // namespace detail

template <class T>
abs_stats<T> quant_abs_stats(std::size_t n, const T* w) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::quant_abs_stats(n, w);
  } else {
    using B = detail::qbatch<T>;
    B mx(T(0)), sm(T(0));
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B a = xsimd::abs(detail::load_part(w + i, m));
      mx = xsimd::select(mx < a, a, mx);
      sm = sm + a;
    });
    return {detail::max_lanes(mx), detail::sum_lanes(sm)};
  }
}

template <class T>
void quant_fprop(std::size_t n, const T* w, T* wq, const quant_grid<T>& g) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::quant_fprop(n, w, wq, g);
  } else {
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      detail::store_part(wq + i, detail::on_grid(detail::load_part(w + i, m), g).q, m);
    });
  }
}

/// Codes for export: not a hot path, the reference is used (bit-exact with quant_fprop).
template <class T>
void quant_codes(std::size_t n, const T* w, std::int32_t* codes, const quant_grid<T>& g) {
  ref::quant_codes(n, w, codes, g);
}

template <class T>
T quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w, const quant_grid<T>& g) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::quant_bprop(n, w, grad_wq, grad_w, g);
  } else {
    using B = detail::qbatch<T>;
    B ds(T(0));
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const auto p = detail::on_grid(detail::load_part(w + i, m), g);
      const B gy = detail::load_part(grad_wq + i, m);
      const B gw = detail::load_part(grad_w + i, m);
      detail::store_part(grad_w + i, xsimd::select(p.inside, gw + gy, gw), m);
      ds = ds + gy * p.dq_ds;
    });
    return detail::sum_lanes(ds);
  }
}

template <class T>
void frac_quant_fprop(std::size_t n, const T* w, T* wq, const quant_grid<T>& lo,
                      const quant_grid<T>& hi, T f) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::frac_quant_fprop(n, w, wq, lo, hi, f);
  } else {
    using B = detail::qbatch<T>;
    const B fb(f);
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B x = detail::load_part(w + i, m);
      const B q_lo = detail::on_grid(x, lo).q;
      const B q_hi = detail::on_grid(x, hi).q;
      detail::store_part(wq + i, q_lo + fb * (q_hi - q_lo), m);
    });
  }
}

template <class T>
frac_quant_sums<T> frac_quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w,
                                    const quant_grid<T>& lo, const quant_grid<T>& hi, T f) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::frac_quant_bprop(n, w, grad_wq, grad_w, lo, hi, f);
  } else {
    using B = detail::qbatch<T>;
    const B fb(f), one_minus_f(T(1) - f), zero(T(0));
    B d_frac(T(0)), d_lo(T(0)), d_hi(T(0));
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B x = detail::load_part(w + i, m);
      const auto a = detail::on_grid(x, lo);
      const auto b = detail::on_grid(x, hi);
      const B g = detail::load_part(grad_wq + i, m);
      const B mask = xsimd::select(a.inside, one_minus_f, zero) + xsimd::select(b.inside, fb, zero);
      detail::store_part(grad_w + i, detail::load_part(grad_w + i, m) + g * mask, m);
      d_frac = d_frac + g * (b.q - a.q);
      d_lo = d_lo + g * a.dq_ds;
      d_hi = d_hi + g * b.dq_ds;
    });
    return {detail::sum_lanes(d_frac), detail::sum_lanes(d_lo), detail::sum_lanes(d_hi)};
  }
}

template <class T>
void step_quant_fprop(std::size_t n, const T* w, T* wq, T step, T qmax) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::step_quant_fprop(n, w, wq, step, qmax);
  } else {
    using B = detail::qbatch<T>;
    const B d(step), qm(qmax);
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B x = detail::clamp(detail::load_part(w + i, m), B(-qm), qm) / d;
      detail::store_part(wq + i, d * detail::round_even(x), m);
    });
  }
}

template <class T>
step_quant_sums<T> step_quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w, T step,
                                    T qmax) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::step_quant_bprop(n, w, grad_wq, grad_w, step, qmax);
  } else {
    using B = detail::qbatch<T>;
    const B d(step), qm(qmax), zero(T(0));
    B d_step(T(0)), d_qmax(T(0));
    detail::for_each_chunk<T>(n, [&](std::size_t i, std::size_t m) {
      const B wv = detail::load_part(w + i, m);
      const B x = detail::clamp(wv, B(-qm), qm) / d;
      const auto inside = xsimd::abs(wv) <= qm;
      const B g = detail::load_part(grad_wq + i, m);
      const B gw = detail::load_part(grad_w + i, m);
      detail::store_part(grad_w + i, xsimd::select(inside, gw + g, gw), m);
      d_step = d_step + g * (detail::round_even(x) - x);
      d_qmax = d_qmax + xsimd::select(inside, zero, xsimd::select(wv >= zero, g, -g));
    });
    return {detail::sum_lanes(d_step), detail::sum_lanes(d_qmax)};
  }
}

} // namespace bitgrad
