// mse_step: the step s of a uniform grid that minimises one group's quantization error, found by
// a small 1-D search (an initial step for fixed_bits, options::init = step_init::mse).
//
// For a group w_0..w_{n-1} and the grid codes -Qn..Qp (make_grid(k, s, full)):
//
//   E(s)  = sum_i (w_i - s code_i(s))^2,  code_i(s) = nearbyint(clamp(w_i r, -Qn, Qp)), r = 1 / s
//           (the codes of the forward kernel, the same x = w * r)
//   s_j   = j m / N,  j = 1..N,  m = max_i |w_i| / Qp    (N = candidates)
//   s*    = the s_j with the smallest E (the smallest j on ties)
//
// The largest candidate m clips nothing on either side; the others trade clipping at -Qn s and
// Qp s against the rounding error inside, so on the full grid (Qn = Qp + 1) the search finds a
// step that uses the extra level -Qn when it pays, where LSQ's 2 mean|w| / sqrt(Qp) does not look
// at the grid. The relative resolution is 1 / N of m. k = 1 (the sign grid) is not searched: its
// error sum (|w_i| - s)^2 is smallest at s = mean |w_i|, which is what this returns.
// An all-zero group returns 0 (the caller applies its scale floor).
#pragma once

#include <bitgrad/kernels/ref/quantize.hpp>

#include <cstddef>

namespace bitgrad::quant {

/// E(s) above: the squared error of quantizing w[0..n) on grid g (s = g.scale), in double, with
/// the reference kernel's point on the grid (the codes the forward kernels compute).
template <class T>
double grid_squared_error(std::size_t n, const T* w, const quant_grid<T>& g) {
  const T r = inverse_scale(g);
  double e = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d =
        static_cast<double>(w[i]) - static_cast<double>(ref::detail::on_grid(w[i], g, r).q);
    e += d * d;
  }
  return e;
}

/// s* above: the candidate step with the smallest squared error at bitwidth k on the symmetric or
/// full grid (k = 1: mean |w|). candidates = N >= 1.
template <class T>
T mse_step(std::size_t n, const T* w, int k, bool full, int candidates = 128) {
  const auto [max_abs, sum_abs] = ref::quant_abs_stats(n, w);
  if (max_abs == T(0) || n == 0) return T(0);
  if (k <= 1) return sum_abs / static_cast<T>(n);
  const T m = max_abs / static_cast<T>(level_limit(k));
  T best = m;
  double best_error = -1;
  for (int j = 1; j <= candidates; ++j) {
    const T s = static_cast<T>(j) * m / static_cast<T>(candidates);
    const double e = grid_squared_error(n, w, make_grid(k, s, full));
    if (best_error < 0 || e < best_error) {
      best_error = e;
      best = s;
    }
  }
  return best;
}

} // namespace bitgrad::quant
