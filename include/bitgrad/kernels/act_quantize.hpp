// Fused activation fake-quantization kernels on simd_batch<T>: one pass over a group for the
// forward (writes y) and one for the backward (writes dx, and sums dL/db and dL/da together).
// The formulas, words and data layout are at the top of kernels/ref/act_quantize.hpp; each
// kernel here has a scalar twin of the same name and signature in bitgrad::ref.
//
// Exactness against bitgrad::ref (tests/unit/test_act_quant.cpp, odd lengths):
//   * the codes are the same IEEE operations in the same order (x * (1 / s) with 1 / s rounded
//     once per call, clamp in the select form, round half to even), so dx = dy * mask is
//     bit-exact, and y is bit-exact at f = 0;
//   * y = m_lo code_lo + m_hi code_hi has one multiply-add the compiler may fuse in one kernel
//     and not in the other: within 1 ulp (both terms have the sign of x);
//   * the sums are reductions, one partial sum per lane: equal up to rounding.
//   * the step kernels (act_step_*) are bit-exact on y and dx (clamp, one divide, round half to
//     even, one multiply: as step_quant_*).
// No allocation: a ragged tail is padded into one register through a stack buffer (zero
// padding contributes 0 to every sum: dy is 0 there).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/kernels/ref/act_quantize.hpp>

#include <cstddef>

namespace bitgrad {

namespace detail {

/// The grids the SIMD kernels take (L <= small_limit: every bitwidth up to 16 in float).
template <class T>
bool simd_act_grid(const act_grid<T>& g) {
  return g.limit <= small_limit<T>;
}

/// One activation grid's constants, broadcast once per call.
template <class T>
struct act_regs {
  qbatch<T> scale, inverse, limit, lower;
  explicit act_regs(const act_grid<T>& g)
      : scale(g.scale), inverse(T(1) / g.scale), limit(g.limit), lower(g.lower) {}
};

template <class T>
struct act_batch {
  qbatch<T> code;
  typename qbatch<T>::batch_bool_type inside;
  qbatch<T> dq_ds;
};

/// One register on one grid (ref::detail::on_act_grid, same operations).
template <class T>
act_batch<T> on_act_grid(const qbatch<T>& x, const act_regs<T>& g) {
  const qbatch<T> v = x * g.inverse;
  act_batch<T> r;
  r.inside = (v >= g.lower) && (v <= g.limit);
  r.code = round_small(clamp(v, g.lower, g.limit));
  r.dq_ds = xsimd::select(r.inside, r.code - v, r.code);
  return r;
}

} // namespace detail

template <class T>
void act_quant_fprop(std::size_t n, const T* x, T* y, const act_grid<T>& lo, const act_grid<T>& hi,
                     T f) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::act_quant_fprop(n, x, y, lo, hi, f);
  } else if (!detail::simd_act_grid(lo) || !detail::simd_act_grid(hi)) {
    ref::act_quant_fprop(n, x, y, lo, hi, f);
  } else {
    using B = detail::qbatch<T>;
    const detail::act_regs<T> a(lo), b(hi);
    const B m_lo((T(1) - f) * lo.scale), m_hi(f * hi.scale);
    detail::for_each_chunk<T>(n, [x, y, a, b, m_lo, m_hi](std::size_t i, std::size_t m) {
      const B v = detail::load_part(x + i, m);
      const B c_lo = detail::on_act_grid(v, a).code;
      const B c_hi = detail::on_act_grid(v, b).code;
      detail::store_part(y + i, m_lo * c_lo + m_hi * c_hi, m);
    });
  }
}

template <class T>
act_quant_sums<T> act_quant_bprop(std::size_t n, const T* x, const T* dy, T* dx,
                                  const act_grid<T>& lo, const act_grid<T>& hi, T f) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::act_quant_bprop(n, x, dy, dx, lo, hi, f);
  } else if (!detail::simd_act_grid(lo) || !detail::simd_act_grid(hi)) {
    return ref::act_quant_bprop(n, x, dy, dx, lo, hi, f);
  } else {
    using B = detail::qbatch<T>;
    const detail::act_regs<T> ra(lo), rb(hi);
    const B fb(f), one_minus_f(T(1) - f);
    const B a_lo((T(1) - f) / lo.limit), a_hi(f / hi.limit);
    struct acc {
      B d_frac, d_range;
    };
    const acc r = detail::fold_chunks<T>(
        n, acc{B(T(0)), B(T(0))},
        [x, dy, dx, ra, rb, fb, one_minus_f, a_lo, a_hi](acc s, std::size_t i, std::size_t m) {
          const B zero(T(0));
          const B v = detail::load_part(x + i, m);
          const auto p = detail::on_act_grid(v, ra);
          const auto q = detail::on_act_grid(v, rb);
          const B g = detail::load_part(dy + i, m);
          const B mask =
              xsimd::select(p.inside, one_minus_f, zero) + xsimd::select(q.inside, fb, zero);
          detail::store_part(dx + i, g * mask, m);
          return acc{s.d_frac + g * (rb.scale * q.code - ra.scale * p.code),
                     s.d_range + g * (a_lo * p.dq_ds + a_hi * q.dq_ds)};
        });
    return {detail::sum_lanes(r.d_frac), detail::sum_lanes(r.d_range)};
  }
}

template <class T>
void act_step_fprop(std::size_t n, const T* x, T* y, T step, T lower, T upper) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::act_step_fprop(n, x, y, step, lower, upper);
  } else {
    using B = detail::qbatch<T>;
    const B d(step), lo(lower), hi(upper);
    detail::for_each_chunk<T>(n, [x, y, d, lo, hi](std::size_t i, std::size_t m) {
      const B v = detail::clamp(detail::load_part(x + i, m), lo, hi) / d;
      detail::store_part(y + i, d * detail::round_even(v), m);
    });
  }
}

template <class T>
act_step_sums<T> act_step_bprop(std::size_t n, const T* x, const T* dy, T* dx, T step, T lower,
                                T upper) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::act_step_bprop(n, x, dy, dx, step, lower, upper);
  } else {
    using B = detail::qbatch<T>;
    const B d(step), lo(lower), hi(upper);
    struct acc {
      B d_step, d_above, d_below;
    };
    const acc r = detail::fold_chunks<T>(
        n, acc{B(T(0)), B(T(0)), B(T(0))},
        [x, dy, dx, d, lo, hi](acc s, std::size_t i, std::size_t m) {
          const B zero(T(0));
          const B xv = detail::load_part(x + i, m);
          const B v = detail::clamp(xv, lo, hi) / d;
          const auto above = xv > hi;
          const auto below = xv < lo;
          const B g = detail::load_part(dy + i, m);
          detail::store_part(dx + i, xsimd::select(above || below, zero, g), m);
          return acc{s.d_step + g * (detail::round_even(v) - v),
                     s.d_above + xsimd::select(above, g, zero),
                     s.d_below + xsimd::select(below, g, zero)};
        });
    return {detail::sum_lanes(r.d_step), detail::sum_lanes(r.d_above),
            detail::sum_lanes(r.d_below)};
  }
}

/// max(x) (unsigned) or max |x| (signed) over n activations, at least 0 (range calibration:
/// once per layer, not a hot path, so the reference).
template <class T>
T act_range_stat(std::size_t n, const T* x, bool is_signed) {
  return ref::act_range_stat(n, x, is_signed);
}

} // namespace bitgrad
