// Reference fake-quantization kernels (bitgrad::ref): the plain scalar oracles for
// kernels/quantize.hpp, same signatures, same operations in the same order.
//
// Words (see quant/quantizer.hpp): a *grid* is the set of levels one group uses at an integer
// bitwidth k: scale * {-L, ..., L} with L = 2^(k-1) - 1 (symmetric, zero exact), or
// scale * {-(L+1), ..., L} (the full grid: every k-bit two's complement code, as LSQ's
// Qn = 2^(k-1), Qp = 2^(k-1) - 1), or, for k = 1, the sign grid scale * {-1, +1}. A kernel sees
// one group: n contiguous weights.
//
//   w  : [ w_0 w_1 ... w_{n-1} ]      one group, channel-major (channel c, element j)
//   wq : [ Q(w_0) ...          ]      same layout
//
// Per element, with x = w * r, r = 1 / s rounded once per group (a multiply per weight, not a
// divide; x may differ from the quotient w / s by an ulp, so a weight whose w / s is a .5 tie,
// or within an ulp of one, can land on the neighbouring code; every kernel, SIMD and reference,
// integer and fractional, forward, backward and export, uses this same x, so they agree):
//   uniform grid (k >= 2): code = nearbyint(clamp(x, -Qn, Qp))  (round half to even)
//                          inside = -Qn <= x <= Qp (+ 8 ulps)   (STE passes the gradient)
//                          dQ/ds  = inside ? code - x : code    (LSQ; Esser et al. 2020)
//                          Qp = L; Qn = L (symmetric) or L + 1 (full grid)
//   sign grid    (k == 1): code = w >= 0 ? +1 : -1, inside = |x| <= 1, dQ/ds = code (exact)
//   Q = s * code;  dQ/dw = inside (straight-through estimator, zero where clipped).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace bitgrad {

/// The levels of one group at one integer bitwidth.
template <class T>
struct quant_grid {
  T scale;         ///< s > 0, the step between levels
  T limit;         ///< Qp = L = 2^(k-1) - 1 (k >= 2), the largest code; 1 for the sign grid
  bool sign;       ///< k == 1: codes are the sign of w, {-1, +1}
  T lower = limit; ///< Qn: the smallest code is -Qn; L (symmetric) or L + 1 (full grid)

  /// True for the full two's complement grid {-(L+1), ..., L} (lower > limit).
  bool full() const { return !sign && lower != limit; }
};

/// L = 2^(k-1) - 1 levels on each side of zero for k >= 2; 1 for k = 1 (the sign grid).
inline double level_limit(int k) {
  return k <= 1 ? 1.0 : std::ldexp(1.0, k - 1) - 1.0;
}

/// Qn, the magnitude of the smallest code: L, or 2^(k-1) on the full grid (k >= 2).
inline double level_lower(int k, bool full) {
  return full && k >= 2 ? std::ldexp(1.0, k - 1) : level_limit(k);
}

/// The grid at bitwidth k with step `scale`: symmetric, or full (every k-bit two's complement
/// code, k >= 2; k = 1 stays the sign grid).
template <class T>
quant_grid<T> make_grid(int k, T scale, bool full = false) {
  return {scale, static_cast<T>(level_limit(k)), k <= 1, static_cast<T>(level_lower(k, full))};
}

/// max |w| and sum |w| over a group (the max_abs scale statistics).
template <class T>
struct abs_stats {
  T max_abs;
  T sum_abs;
};

/// Per-group sums returned by frac_quant_bprop (sums of grad_wq times a partial derivative).
template <class T>
struct frac_quant_sums {
  T d_frac;     ///< sum g * (Q_hi - Q_lo)            = dL/df = dL/db
  T d_scale_lo; ///< sum g * dQ_lo/ds_lo (0 unless asked for)
  T d_scale_hi; ///< sum g * dQ_hi/ds_hi (0 unless asked for)
};

/// Per-group sums returned by step_quant_bprop.
template <class T>
struct step_quant_sums {
  T d_step; ///< sum g * dQ/dd
  T d_qmax; ///< sum g * dQ/dq_max
};

/// The STE mask's bound: the clip limit L widened by a few ulps, so the group's largest |w|,
/// whose x = w * (1 / s) = L up to three roundings (s = max|w| / L, 1 / s, the product: within
/// 1.5 ulps), keeps its gradient.
template <class T>
T inside_limit(const quant_grid<T>& g) {
  return g.limit * (T(1) + T(8) * std::numeric_limits<T>::epsilon());
}

/// The same bound on the negative side: Qn widened by the same factor (= inside_limit on a
/// symmetric grid, so -inside_lower <= x <= inside_limit is |x| <= inside_limit there).
template <class T>
T inside_lower(const quant_grid<T>& g) {
  return g.lower * (T(1) + T(8) * std::numeric_limits<T>::epsilon());
}

/// r = 1 / s, computed once per group by every kernel, which then maps each weight to
/// x = w * r. Finite for any s >= scale_floor (quant/groups.hpp).
template <class T>
T inverse_scale(const quant_grid<T>& g) {
  return T(1) / g.scale;
}

namespace ref {

namespace detail {

/// One element on one grid: the code, the quantized value, the STE mask and dQ/ds.
template <class T>
struct grid_point {
  T code;
  T q;
  bool inside;
  T dq_ds;
};

/// The fractional mix's two coefficients, (1 - f) s_lo and f s_hi, computed once per group:
/// wq = (1 - f) Q_lo + f Q_hi = ((1 - f) s_lo) code_lo + (f s_hi) code_hi, one multiply and one
/// multiply-add per weight. At f = 0 the second term is a zero with the sign of w (hi a uniform
/// grid), so wq = s_lo * code_lo bit for bit, -0 included.
template <class T>
struct mix_weight {
  T lo; ///< (1 - f) s_lo
  T hi; ///< f s_hi
};

template <class T>
mix_weight<T> mix_weights(const quant_grid<T>& lo, const quant_grid<T>& hi, T f) {
  return {(T(1) - f) * lo.scale, f * hi.scale};
}

/// r = inverse_scale(g), passed in so that it is computed once per group.
template <class T>
grid_point<T> on_grid(T w, const quant_grid<T>& g, T r) {
  const T x = w * r;
  grid_point<T> p;
  p.inside = -inside_lower(g) <= x && x <= inside_limit(g);
  if (g.sign) {
    p.code = w >= T(0) ? T(1) : T(-1);
    p.dq_ds = p.code;
  } else {
    p.code = std::nearbyint(std::min(std::max(x, -g.lower), g.limit));
    p.dq_ds = p.inside ? p.code - x : p.code;
  }
  p.q = g.scale * p.code;
  return p;
}

} // namespace detail

template <class T>
abs_stats<T> quant_abs_stats(std::size_t n, const T* w) {
  abs_stats<T> r{T(0), T(0)};
  for (std::size_t i = 0; i < n; ++i) {
    const T a = std::abs(w[i]);
    r.max_abs = std::max(r.max_abs, a);
    r.sum_abs += a;
  }
  return r;
}

/// wq = s * code(w) on one grid.
template <class T>
void quant_fprop(std::size_t n, const T* w, T* wq, const quant_grid<T>& g) {
  const T r = inverse_scale(g);
  for (std::size_t i = 0; i < n; ++i) wq[i] = detail::on_grid(w[i], g, r).q;
}

/// codes(w) on one grid, as integers (export). code * s equals quant_fprop's output exactly.
template <class T>
void quant_codes(std::size_t n, const T* w, std::int32_t* codes, const quant_grid<T>& g) {
  const T r = inverse_scale(g);
  for (std::size_t i = 0; i < n; ++i)
    codes[i] = static_cast<std::int32_t>(detail::on_grid(w[i], g, r).code);
}

/// grad_w += g * inside; returns sum g * dQ/ds.
template <class T>
T quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w, const quant_grid<T>& g) {
  const T r = inverse_scale(g);
  T d_scale = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto p = detail::on_grid(w[i], g, r);
    grad_w[i] = p.inside ? grad_w[i] + grad_wq[i] : grad_w[i];
    d_scale += grad_wq[i] * p.dq_ds;
  }
  return d_scale;
}

/// The fractional-bit relaxation: wq = (1-f) Q_lo + f Q_hi, as
/// ((1-f) s_lo) code_lo + (f s_hi) code_hi (detail::mix_weights).
template <class T>
void frac_quant_fprop(std::size_t n, const T* w, T* wq, const quant_grid<T>& lo,
                      const quant_grid<T>& hi, T f) {
  const T r_lo = inverse_scale(lo), r_hi = inverse_scale(hi);
  const auto mix = detail::mix_weights(lo, hi, f);
  for (std::size_t i = 0; i < n; ++i) {
    const T c_lo = detail::on_grid(w[i], lo, r_lo).code;
    const T c_hi = detail::on_grid(w[i], hi, r_hi).code;
    wq[i] = mix.lo * c_lo + mix.hi * c_hi;
  }
}

/// grad_w += g * ((1-f) inside_lo + f inside_hi); returns the sums (see frac_quant_sums), the
/// two scale sums only if scale_sums (else zero: with scales that get no gradient, as
/// frac_bits' max_abs, they are not computed).
template <class T>
frac_quant_sums<T> frac_quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w,
                                    const quant_grid<T>& lo, const quant_grid<T>& hi, T f,
                                    bool scale_sums = true) {
  frac_quant_sums<T> r{T(0), T(0), T(0)};
  const T one_minus_f = T(1) - f;
  const T r_lo = inverse_scale(lo), r_hi = inverse_scale(hi);
  for (std::size_t i = 0; i < n; ++i) {
    const auto a = detail::on_grid(w[i], lo, r_lo);
    const auto b = detail::on_grid(w[i], hi, r_hi);
    const T g = grad_wq[i];
    const T mask = (a.inside ? one_minus_f : T(0)) + (b.inside ? f : T(0));
    grad_w[i] = grad_w[i] + g * mask;
    r.d_frac += g * (b.q - a.q);
    if (scale_sums) {
      r.d_scale_lo += g * a.dq_ds;
      r.d_scale_hi += g * b.dq_ds;
    }
  }
  return r;
}

/// Uhlich et al. 2020: wq = d * nearbyint(clamp(w, -q_max, q_max) / d).
template <class T>
void step_quant_fprop(std::size_t n, const T* w, T* wq, T step, T qmax) {
  for (std::size_t i = 0; i < n; ++i) {
    const T x = std::min(std::max(w[i], -qmax), qmax) / step;
    wq[i] = step * std::nearbyint(x);
  }
}

/// With x = clamp(w, -q_max, q_max) / d and rounding treated as identity (STE):
///   dQ/dw = [|w| <= q_max],  dQ/dd = nearbyint(x) - x,  dQ/dq_max = [|w| > q_max] sign(w).
template <class T>
step_quant_sums<T> step_quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w, T step,
                                    T qmax) {
  step_quant_sums<T> r{T(0), T(0)};
  for (std::size_t i = 0; i < n; ++i) {
    const T x = std::min(std::max(w[i], -qmax), qmax) / step;
    const bool inside = std::abs(w[i]) <= qmax;
    const T g = grad_wq[i];
    grad_w[i] = inside ? grad_w[i] + g : grad_w[i];
    r.d_step += g * (std::nearbyint(x) - x);
    r.d_qmax += inside ? T(0) : (w[i] >= T(0) ? g : -g);
  }
  return r;
}

} // namespace ref
} // namespace bitgrad
