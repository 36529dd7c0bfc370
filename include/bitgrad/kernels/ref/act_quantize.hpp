// Reference activation fake-quantization kernels (bitgrad::ref): the plain scalar oracles for
// kernels/act_quantize.hpp, same signatures, same operations in the same order.
//
// Words (see quant/act_quantizer.hpp): an *activation grid* is the set of levels one group of
// activations uses at an integer bitwidth k, from a learned range a > 0:
//   unsigned (after ReLU)  levels s * {0, 1, ..., L},   L = 2^k - 1,      s = a / L  (zero exact)
//   signed                 levels s * {-L, ..., L},     L = 2^(k-1) - 1,  s = a / L  (k >= 2)
// A kernel sees n contiguous activations of one group (one sample's channels of the group):
//
//   x  : [ x_0 x_1 ... x_{n-1} ]    y = Q(x), dx, dy: same layout
//
// Per element, with r = 1 / s rounded once per call and v = x * r:
//   code   = nearbyint(clamp(v, lower, L))        lower = 0 (unsigned) or -L (signed)
//   inside = lower <= v <= L                      (the straight-through estimator's mask)
//   dQ/ds  = inside ? code - v : code             (LSQ, Esser et al. 2020; PACT's dQ/da = 1
//                                                  above the range falls out of it: code = L)
// The fractional-bit relaxation mixes the grids of k_lo = floor(b) and k_hi = k_lo + 1 with
// f = b - k_lo, both from the same range a (s_lo = a / L_lo, s_hi = a / L_hi):
//   y      = (1 - f) s_lo code_lo + f s_hi code_hi          computed as m_lo code_lo + m_hi code_hi
//   dy/dx  = (1 - f) inside_lo + f inside_hi               (written to dx, not accumulated)
//   dy/df  = Q_hi - Q_lo                                   (= dy/db)
//   dy/da  = (1 - f) dQ_lo/ds_lo / L_lo + f dQ_hi/ds_hi / L_hi   (s_k = a / L_k)
// A single integer grid is the same kernel with lo = hi and f = 0.
//
// The step relaxation (act_step_*: step_bits' rule on [lower, upper], Uhlich et al. 2020, with a
// real step d = a / L(b) for a real bitwidth b):
//   v = clamp(x, lower, upper) / d,   y = d nearbyint(v)        lower = 0 or -a, upper = a
//   dy/dx = [lower <= x <= upper]      dy/dd = nearbyint(v) - v (every element, as step_bits)
//   dy/d upper = [x > upper],          dy/d lower = [x < lower]
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace bitgrad {

/// The levels of one activation group at one integer bitwidth.
template <class T>
struct act_grid {
  T scale; ///< s > 0, the step between levels
  T limit; ///< L, the largest code
  T lower; ///< the smallest code: 0 (unsigned) or -L (signed)
};

/// L at integer bitwidth k: 2^k - 1 unsigned, 2^(k-1) - 1 signed.
inline double act_level_limit(int k, bool is_signed) {
  return is_signed ? std::ldexp(1.0, k - 1) - 1.0 : std::ldexp(1.0, k) - 1.0;
}

/// The grid at bitwidth k whose largest level is `range` (s = range / L, at least min_scale).
template <class T>
act_grid<T> make_act_grid(int k, T range, bool is_signed, T min_scale) {
  const T limit = static_cast<T>(act_level_limit(k, is_signed));
  return {std::max(range / limit, min_scale), limit, is_signed ? -limit : T(0)};
}

/// Per-call sums returned by act_quant_bprop.
template <class T>
struct act_quant_sums {
  T d_frac;  ///< sum dy * (Q_hi - Q_lo)                                          = dL/db
  T d_range; ///< sum dy * ((1-f) dQ_lo/ds_lo / L_lo + f dQ_hi/ds_hi / L_hi)      = dL/da
};

/// Per-call sums returned by act_step_bprop.
template <class T>
struct act_step_sums {
  T d_step;  ///< sum dy * (nearbyint(v) - v)
  T d_above; ///< sum dy * [x > upper]
  T d_below; ///< sum dy * [x < lower]
};

namespace ref {

namespace detail {

template <class T>
struct act_point {
  T code;
  bool inside;
  T dq_ds;
};

template <class T>
act_point<T> on_act_grid(T x, const act_grid<T>& g, T r) {
  const T v = x * r;
  act_point<T> p;
  p.inside = v >= g.lower && v <= g.limit;
  p.code = std::nearbyint(std::min(std::max(v, g.lower), g.limit));
  p.dq_ds = p.inside ? p.code - v : p.code;
  return p;
}

} // namespace detail

/// y = (1 - f) Q_lo(x) + f Q_hi(x), as ((1-f) s_lo) code_lo + (f s_hi) code_hi.
template <class T>
void act_quant_fprop(std::size_t n, const T* x, T* y, const act_grid<T>& lo, const act_grid<T>& hi,
                     T f) {
  const T r_lo = T(1) / lo.scale, r_hi = T(1) / hi.scale;
  const T m_lo = (T(1) - f) * lo.scale, m_hi = f * hi.scale;
  for (std::size_t i = 0; i < n; ++i) {
    const T c_lo = detail::on_act_grid(x[i], lo, r_lo).code;
    const T c_hi = detail::on_act_grid(x[i], hi, r_hi).code;
    y[i] = m_lo * c_lo + m_hi * c_hi;
  }
}

/// dx = dy ((1-f) inside_lo + f inside_hi); returns the sums for the bitwidth and the range.
template <class T>
act_quant_sums<T> act_quant_bprop(std::size_t n, const T* x, const T* dy, T* dx,
                                  const act_grid<T>& lo, const act_grid<T>& hi, T f) {
  const T r_lo = T(1) / lo.scale, r_hi = T(1) / hi.scale;
  const T one_minus_f = T(1) - f;
  const T a_lo = one_minus_f / lo.limit, a_hi = f / hi.limit; // d s_k / d a times the mix
  act_quant_sums<T> s{T(0), T(0)};
  for (std::size_t i = 0; i < n; ++i) {
    const auto p = detail::on_act_grid(x[i], lo, r_lo);
    const auto q = detail::on_act_grid(x[i], hi, r_hi);
    const T g = dy[i];
    const T mask = (p.inside ? one_minus_f : T(0)) + (q.inside ? f : T(0));
    dx[i] = g * mask;
    s.d_frac += g * (hi.scale * q.code - lo.scale * p.code);
    s.d_range += g * (a_lo * p.dq_ds + a_hi * q.dq_ds);
  }
  return s;
}

/// y = d nearbyint(clamp(x, lower, upper) / d).
template <class T>
void act_step_fprop(std::size_t n, const T* x, T* y, T step, T lower, T upper) {
  for (std::size_t i = 0; i < n; ++i)
    y[i] = step * std::nearbyint(std::min(std::max(x[i], lower), upper) / step);
}

/// dx = dy [lower <= x <= upper]; returns the sums for the step and the two ends.
template <class T>
act_step_sums<T> act_step_bprop(std::size_t n, const T* x, const T* dy, T* dx, T step, T lower,
                                T upper) {
  act_step_sums<T> s{T(0), T(0), T(0)};
  for (std::size_t i = 0; i < n; ++i) {
    const T v = std::min(std::max(x[i], lower), upper) / step;
    const T g = dy[i];
    const bool above = x[i] > upper, below = x[i] < lower;
    dx[i] = above || below ? T(0) : g;
    s.d_step += g * (std::nearbyint(v) - v);
    s.d_above += above ? g : T(0);
    s.d_below += below ? g : T(0);
  }
  return s;
}

/// The largest activation of a group: max(x) (unsigned) or max |x| (signed), at least 0.
template <class T>
T act_range_stat(std::size_t n, const T* x, bool is_signed) {
  T m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, is_signed ? std::abs(x[i]) : x[i]);
  return m;
}

} // namespace ref
} // namespace bitgrad
