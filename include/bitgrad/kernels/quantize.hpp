// Fused fake-quantization kernels on simd_batch<T>: one pass over a group for the forward
// (writes wq) and one for the backward (grad_w, and the sums for grad_b and grad_s together).
// The formulas, words and data layout are at the top of kernels/ref/quantize.hpp; each kernel
// here has a scalar twin of the same name and signature in bitgrad::ref.
//
// Exactness against bitgrad::ref:
//   * single-grid and step kernels (quant_fprop / quant_bprop / step_quant_*, hence every
//     frozen quantizer and the export codes) are bit-exact on their element-wise outputs: the
//     same IEEE operations in the same order (w * (1 / s) with 1 / s rounded once per call,
//     clamp, round half to even (the rounding instruction where the instruction set has one,
//     as std::nearbyint), s * code, a masked add; the step kernels divide by d), for
//     float and double, ragged tails included (a tail is padded into one register through a
//     stack buffer and runs the same code).
//   * the fractional mix (frac_quant_fprop: m_lo code_lo + m_hi code_hi with the per-group
//     m_lo = (1-f) s_lo, m_hi = f s_hi; grad_w of frac_quant_bprop: grad_w + g * mask) has one
//     multiply-add, which GCC may fuse into an FMA in one kernel and not in the other
//     (-ffp-contract=fast is the GNU default): equal within 1 ulp (the two terms of the mix never
//     have opposite signs, so fusing moves the result by at most 1 ulp), and bit-exact at f = 0.
//   * the per-group sums (abs_stats::sum_abs and the *_sums) are reductions: the SIMD kernels
//     keep one partial sum per lane and add the lanes at the end, so they differ from the
//     sequential reference by rounding only (relative ~ n * epsilon). max_abs is exact.
//   Checked by tests/unit/test_quant_kernels.cpp at -O2 (SSE2) and -march=native (AVX-512).
// No allocation: a tail uses one register-sized stack buffer.
// Per call, not per weight: 1 / s, the broadcast constants and the sign-grid test; the sums
// accumulate in registers (fold_chunks), one partial sum per lane. frac_quant_bprop skips the
// two scale sums when the caller does not want them (frac_bits' max_abs scales).
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/ref/quantize.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

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

/// Calls step(i, m) over [0, n) in register-sized chunks; the last chunk may be short. The step
/// is copied into the loop, so the values it captures stay in registers (see fold_chunks).
template <class T, class Step>
void for_each_chunk(std::size_t n, Step step) {
  constexpr std::size_t lanes = qbatch<T>::size;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) step(i, lanes);
  if (i < n) step(i, n - i);
}

/// for_each_chunk with an accumulator: acc = step(acc, i, m) over the chunks, returns acc.
/// The accumulator and the step (capture by value) are locals of this loop, so the partial
/// sums stay in registers: accumulators reached through a reference capture are reloaded and
/// stored every chunk, since a SIMD store may alias anything.
template <class T, class Acc, class Step>
Acc fold_chunks(std::size_t n, Acc acc, Step step) {
  constexpr std::size_t lanes = qbatch<T>::size;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) acc = step(acc, i, lanes);
  if (i < n) acc = step(acc, i, n - i);
  return acc;
}

/// The kinds of grid, each with its own per-register code: the sign grid, the symmetric grid
/// (|x| <= L, one abs and one compare) and the full grid (-Qn <= x <= Qp, two compares).
enum class grid_kind { sign, symmetric, full };

template <grid_kind K>
using grid_kind_tag = std::integral_constant<grid_kind, K>;

/// Runs body(grid_kind_tag<kind>{}) for the grid's kind, so that the per-register code has no
/// branch on it.
template <class T, class Body>
void with_grid_kind(const quant_grid<T>& g, Body&& body) {
  if (g.sign)
    body(grid_kind_tag<grid_kind::sign>{});
  else if (g.full())
    body(grid_kind_tag<grid_kind::full>{});
  else
    body(grid_kind_tag<grid_kind::symmetric>{});
}

/// with_grid_kind for the fractional mix, whose grids are never full (mix_grids checks it): two
/// kinds, so that the two nested dispatches make four bodies, not nine.
template <class T, class Body>
void with_mix_grid_kind(const quant_grid<T>& g, Body&& body) {
  if (g.sign)
    body(grid_kind_tag<grid_kind::sign>{});
  else
    body(grid_kind_tag<grid_kind::symmetric>{});
}

/// min(max(x, lo), hi) as std::min(std::max(x, lo), hi) computes it (the select form: the
/// step kernels clamp w, whose bounds +-q_max may be zero).
template <class T>
qbatch<T> clamp(const qbatch<T>& x, const qbatch<T>& lo, const qbatch<T>& hi) {
  const qbatch<T> y = xsimd::select(x < lo, lo, x);
  return xsimd::select(hi < y, hi, y);
}

/// The same clamp for bounds -Qn < 0 < Qp, one min and one max: no input equals a bound with the
/// other sign of zero, and x goes second because x86 min / max return the second operand when
/// either is NaN (NEON's return the NaN), so a NaN weight stays NaN as in std::min / std::max.
template <class T>
qbatch<T> clamp_symmetric(const qbatch<T>& x, const qbatch<T>& neg_limit, const qbatch<T>& limit) {
  return xsimd::min(limit, xsimd::max(neg_limit, x));
}

/// The instruction sets with a rounding instruction (SSE4.1 roundps, AVX vroundps, AVX-512
/// vrndscaleps): one operation, half to even in the default rounding mode, the sign of zero
/// kept and NaN kept, as std::nearbyint. (xsimd's avx512f does not derive from sse4_1.)
template <class Arch>
inline constexpr bool has_round_instruction =
    std::is_base_of_v<xsimd::sse4_1, Arch> || std::is_base_of_v<xsimd::avx, Arch> ||
    std::is_base_of_v<xsimd::avx512f, Arch>;

/// Round half to even, the sign of zero kept: (|x| + 2^p) - 2^p rounds |x| to an integer in the
/// default rounding mode (p = mantissa bits); |x| >= 2^p is already an integer. The rounding
/// instruction where there is one.
template <class T>
qbatch<T> round_even(const qbatch<T>& x) {
  if constexpr (has_round_instruction<simd_arch>) {
    return xsimd::nearbyint(x);
  } else {
    const qbatch<T> big(T(1) / std::numeric_limits<T>::epsilon());
    const qbatch<T> a = xsimd::abs(x);
    const qbatch<T> r = (a + big) - big;
    return xsimd::select(a < big, r | xsimd::bitofsign(x), x);
  }
}

/// Largest clip limit L for which round_small is exact: 2^(p-1) (p = mantissa bits).
template <class T>
inline constexpr T small_limit = T(0.5) / std::numeric_limits<T>::epsilon();

/// round_even for |x| <= small_limit (a clamped x). Without a rounding instruction (SSE2),
/// 3 operations instead of 6: x + 1.5 * 2^p lies in [2^p, 2^(p+1)], where the spacing is 1, so
/// the add rounds x half to even (1.5 * 2^p is even) and the subtraction is exact; or-ing the
/// sign of x back gives nearbyint's -0 for x in [-0.5, -0]. NaN stays NaN.
template <class T>
qbatch<T> round_small(const qbatch<T>& x) {
  if constexpr (has_round_instruction<simd_arch>) {
    return xsimd::nearbyint(x);
  } else {
    const qbatch<T> magic(T(1.5) / std::numeric_limits<T>::epsilon());
    return ((x + magic) - magic) | xsimd::bitofsign(x);
  }
}

/// The grids the SIMD kernels take: L <= small_limit (k <= 23 bits in float, 52 in double;
/// bitgrad's bitwidths are 1..16). Others go to the reference kernels.
template <class T>
bool simd_grid(const quant_grid<T>& g) {
  return g.lower <= small_limit<T>;
}

/// The grid pairs the SIMD fractional kernels take: both simd_grid and neither full (no
/// quantizer mixes full grids; the reference kernels handle them).
template <class T>
bool simd_mix_grids(const quant_grid<T>& lo, const quant_grid<T>& hi) {
  return simd_grid(lo) && simd_grid(hi) && !lo.full() && !hi.full();
}

/// One grid's constants, broadcast once per kernel call.
template <class T>
struct grid_regs {
  qbatch<T> scale;      ///< s
  qbatch<T> inverse;    ///< 1 / s (inverse_scale)
  qbatch<T> limit;      ///< Qp
  qbatch<T> neg_limit;  ///< -Qn
  qbatch<T> inside;     ///< inside_limit
  qbatch<T> neg_inside; ///< -inside_lower
  explicit grid_regs(const quant_grid<T>& g)
      : scale(g.scale), inverse(inverse_scale(g)), limit(g.limit), neg_limit(-g.lower),
        inside(inside_limit(g)), neg_inside(-inside_lower(g)) {}
};

/// One register of weights on one grid (see ref::detail::on_grid, same operations).
template <class T>
struct grid_batch {
  qbatch<T> code;
  qbatch<T> q;
  typename qbatch<T>::batch_bool_type inside;
  qbatch<T> dq_ds;
};

/// Kind: the grid's kind, fixed per call by with_grid_kind. On a symmetric grid
/// |x| <= inside equals the full grid's two compares (inside_lower = inside_limit), one
/// operation fewer.
template <grid_kind Kind, class T>
grid_batch<T> on_grid(const qbatch<T>& w, const grid_regs<T>& g) {
  const qbatch<T> x = w * g.inverse;
  grid_batch<T> r;
  if constexpr (Kind == grid_kind::full)
    r.inside = (g.neg_inside <= x) && (x <= g.inside);
  else
    r.inside = xsimd::abs(x) <= g.inside;
  qbatch<T> code;
  if constexpr (Kind == grid_kind::sign) {
    code = xsimd::select(w >= qbatch<T>(T(0)), qbatch<T>(T(1)), qbatch<T>(T(-1)));
    r.dq_ds = code;
  } else {
    code = round_small(clamp_symmetric(x, g.neg_limit, g.limit));
    r.dq_ds = xsimd::select(r.inside, code - x, code);
  }
  r.code = code;
  r.q = g.scale * code;
  return r;
}

} // namespace detail

template <class T>
abs_stats<T> quant_abs_stats(std::size_t n, const T* w) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::quant_abs_stats(n, w);
  } else {
    // Two registers per step into two pairs of accumulators (the adds' latency, not the loads,
    // bounds one pair), then the pairs are combined: sum = (sum_0 + sum_1) lane by lane.
    // max(x, m) keeps m when x is NaN, as std::max(m, x) in the reference.
    using B = detail::qbatch<T>;
    constexpr std::size_t lanes = B::size;
    B mx0(T(0)), sm0(T(0)), mx1(T(0)), sm1(T(0));
    std::size_t i = 0;
    for (; i + 2 * lanes <= n; i += 2 * lanes) {
      const B x0 = xsimd::abs(B::load_unaligned(w + i));
      const B x1 = xsimd::abs(B::load_unaligned(w + i + lanes));
      mx0 = xsimd::max(x0, mx0);
      mx1 = xsimd::max(x1, mx1);
      sm0 = sm0 + x0;
      sm1 = sm1 + x1;
    }
    for (; i < n; i += lanes) {
      const B x = xsimd::abs(detail::load_part(w + i, std::min(lanes, n - i)));
      mx0 = xsimd::max(x, mx0);
      sm0 = sm0 + x;
    }
    return {detail::max_lanes(xsimd::max(mx1, mx0)), detail::sum_lanes(sm0 + sm1)};
  }
}

template <class T>
void quant_fprop(std::size_t n, const T* w, T* wq, const quant_grid<T>& g) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::quant_fprop(n, w, wq, g);
  } else if (!detail::simd_grid(g)) {
    ref::quant_fprop(n, w, wq, g);
  } else {
    const detail::grid_regs<T> c(g);
    detail::with_grid_kind(g, [&](auto kind) {
      detail::for_each_chunk<T>(n, [w, wq, c](std::size_t i, std::size_t m) {
        const auto p = detail::on_grid<decltype(kind)::value>(detail::load_part(w + i, m), c);
        detail::store_part(wq + i, p.q, m);
      });
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
  } else if (!detail::simd_grid(g)) {
    return ref::quant_bprop(n, w, grad_wq, grad_w, g);
  } else {
    using B = detail::qbatch<T>;
    const detail::grid_regs<T> c(g);
    B ds(T(0));
    detail::with_grid_kind(g, [&](auto kind) {
      ds = detail::fold_chunks<T>(
          n, ds, [w, grad_wq, grad_w, c](B acc, std::size_t i, std::size_t m) {
            const auto p = detail::on_grid<decltype(kind)::value>(detail::load_part(w + i, m), c);
            const B gy = detail::load_part(grad_wq + i, m);
            const B gw = detail::load_part(grad_w + i, m);
            detail::store_part(grad_w + i, xsimd::select(p.inside, gw + gy, gw), m);
            return acc + gy * p.dq_ds;
          });
    });
    return detail::sum_lanes(ds);
  }
}

template <class T>
void frac_quant_fprop(std::size_t n, const T* w, T* wq, const quant_grid<T>& lo,
                      const quant_grid<T>& hi, T f) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::frac_quant_fprop(n, w, wq, lo, hi, f);
  } else if (!detail::simd_mix_grids(lo, hi)) {
    ref::frac_quant_fprop(n, w, wq, lo, hi, f);
  } else {
    using B = detail::qbatch<T>;
    const auto mix = ref::detail::mix_weights(lo, hi, f);
    const B m_lo(mix.lo), m_hi(mix.hi);
    const detail::grid_regs<T> a(lo), b(hi);
    detail::with_mix_grid_kind(lo, [&](auto lo_kind) {
      detail::with_mix_grid_kind(hi, [&](auto hi_kind) {
        detail::for_each_chunk<T>(n, [w, wq, a, b, m_lo, m_hi](std::size_t i, std::size_t m) {
          const B x = detail::load_part(w + i, m);
          const B c_lo = detail::on_grid<decltype(lo_kind)::value>(x, a).code;
          const B c_hi = detail::on_grid<decltype(hi_kind)::value>(x, b).code;
          detail::store_part(wq + i, m_lo * c_lo + m_hi * c_hi, m);
        });
      });
    });
  }
}

template <class T>
frac_quant_sums<T> frac_quant_bprop(std::size_t n, const T* w, const T* grad_wq, T* grad_w,
                                    const quant_grid<T>& lo, const quant_grid<T>& hi, T f,
                                    bool scale_sums = true) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    return ref::frac_quant_bprop(n, w, grad_wq, grad_w, lo, hi, f, scale_sums);
  } else if (!detail::simd_mix_grids(lo, hi)) {
    return ref::frac_quant_bprop(n, w, grad_wq, grad_w, lo, hi, f, scale_sums);
  } else {
    using B = detail::qbatch<T>;
    const B fb(f), one_minus_f(T(1) - f);
    const detail::grid_regs<T> rlo(lo), rhi(hi);
    // The accumulator's type says what is summed: acc (all three sums) or one B (d_frac only,
    // scale_sums false). A struct whose scale sums were carried along unchanged made GCC 12
    // store them to the stack on every register.
    struct acc {
      B d_frac, d_lo, d_hi;
    };
    acc r{B(T(0)), B(T(0)), B(T(0))};
    detail::with_mix_grid_kind(lo, [&](auto lo_kind) {
      detail::with_mix_grid_kind(hi, [&](auto hi_kind) {
        const auto step = [w, grad_wq, grad_w, rlo, rhi, fb, one_minus_f](auto s, std::size_t i,
                                                                          std::size_t m) {
          const B zero(T(0));
          const B x = detail::load_part(w + i, m);
          const auto a = detail::on_grid<decltype(lo_kind)::value>(x, rlo);
          const auto b = detail::on_grid<decltype(hi_kind)::value>(x, rhi);
          const B g = detail::load_part(grad_wq + i, m);
          const B mask =
              xsimd::select(a.inside, one_minus_f, zero) + xsimd::select(b.inside, fb, zero);
          detail::store_part(grad_w + i, detail::load_part(grad_w + i, m) + g * mask, m);
          if constexpr (std::is_same_v<decltype(s), B>)
            return s + g * (b.q - a.q);
          else
            return acc{s.d_frac + g * (b.q - a.q), s.d_lo + g * a.dq_ds, s.d_hi + g * b.dq_ds};
        };
        if (scale_sums)
          r = detail::fold_chunks<T>(n, r, step);
        else
          r.d_frac = detail::fold_chunks<T>(n, r.d_frac, step);
      });
    });
    return {detail::sum_lanes(r.d_frac), detail::sum_lanes(r.d_lo), detail::sum_lanes(r.d_hi)};
  }
}

template <class T>
void step_quant_fprop(std::size_t n, const T* w, T* wq, T step, T qmax) {
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::step_quant_fprop(n, w, wq, step, qmax);
  } else {
    using B = detail::qbatch<T>;
    const B d(step), qm(qmax);
    detail::for_each_chunk<T>(n, [w, wq, d, qm](std::size_t i, std::size_t m) {
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
    const B d(step), qm(qmax);
    struct acc {
      B d_step, d_qmax;
    };
    const acc r = detail::fold_chunks<T>(
        n, acc{B(T(0)), B(T(0))}, [w, grad_wq, grad_w, d, qm](acc s, std::size_t i, std::size_t m) {
          const B zero(T(0));
          const B wv = detail::load_part(w + i, m);
          const B x = detail::clamp(wv, B(-qm), qm) / d;
          const auto inside = xsimd::abs(wv) <= qm;
          const B g = detail::load_part(grad_wq + i, m);
          const B gw = detail::load_part(grad_w + i, m);
          detail::store_part(grad_w + i, xsimd::select(inside, gw + g, gw), m);
          return acc{s.d_step + g * (detail::round_even(x) - x),
                     s.d_qmax + xsimd::select(inside, zero, xsimd::select(wv >= zero, g, -g))};
        });
    return {detail::sum_lanes(r.d_step), detail::sum_lanes(r.d_qmax)};
  }
}

} // namespace bitgrad
