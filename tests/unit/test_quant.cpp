// Quantizer policies: gradients by finite differences (every parameter, every policy, group
// sizes 1, 3 and per tensor over 7 channels x 5), integer-bitwidth equivalences, error vs
// bitwidth, export codes, options checks.
//
// The gradients are straight-through estimates, so they are checked against finite
// differences of the *surrogate* each policy documents: rounding residuals, clip masks and
// max_abs statistics held at their values from the forward pass (an independent scalar model
// written here). Bitwidth gradients of frac_bits are exact for the relaxation and are also
// checked against the real forward.
#include "quant_gradcheck.hpp"

#include <bitgrad/kernels/ref/quantize.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>
#include <bitgrad/quant/noise_bits.hpp>
#include <bitgrad/quant/step_bits.hpp>

#include <doctest/doctest.h>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace test_quant {

using namespace bitgrad;
using namespace bitgrad::quant;
using bitgrad::testing::check_gradients;
using bitgrad::testing::fd_options;
using bitgrad::testing::find_param;
using bitgrad::testing::parameters_of;

namespace {

constexpr std::size_t channels = 7, per_channel = 5, n_weights = channels * per_channel;
const std::size_t group_sizes[] = {1, 3, per_tensor};

std::vector<double> normal(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<double> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

/// One element on one grid at the base point, frozen: evaluates the straight-through
/// surrogate at a perturbed (w, s). Interior: w + s (code - x0); clipped: s code;
/// sign grid: s code + [|x0| <= 1] (w - w0).
/// full: the full grid, codes -Qn..Qp with Qn = 2^(k-1) = Qp + 1.
struct frozen_point {
  double code, x0, w0;
  bool inside, sign;
  frozen_point(double w, double s, int k, bool full = false) : w0(w), sign(k == 1) {
    const double lim = level_limit(k), low = level_lower(k, full);
    const double slack = 1 + 8 * std::numeric_limits<double>::epsilon();
    x0 = w / s;
    inside = -low * slack <= x0 && x0 <= lim * slack;
    code = sign ? (w >= 0 ? 1.0 : -1.0) : std::nearbyint(std::min(std::max(x0, -low), lim));
  }
  double operator()(double w, double s) const {
    if (sign) return s * code + (inside ? w - w0 : 0.0);
    return inside ? w + s * (code - x0) : s * code;
  }
};

// Options builders (GCC 12 -Wmissing-field-initializers rejects partial designated
// initializers under -Wextra).
template <class T = double>
typename frac_bits<T>::options fopt(std::size_t gs, double b_min = 2, double b_max = 8,
                                    std::optional<double> b_init = {},
                                    scale_mode mode = scale_mode::max_abs) {
  typename frac_bits<T>::options o;
  o.group_size = gs;
  o.b_min = b_min;
  o.b_max = b_max;
  o.b_init = b_init;
  o.scale = mode;
  return o;
}
template <class T = double>
typename step_bits<T>::options sopt(std::size_t gs, double b_min = 2, double b_max = 8,
                                    std::optional<double> b_init = {}) {
  typename step_bits<T>::options o;
  o.group_size = gs;
  o.b_min = b_min;
  o.b_max = b_max;
  o.b_init = b_init;
  return o;
}
template <class T = double>
typename fixed_bits<T>::options xopt(std::size_t gs, int bits, bool lsq = true,
                                     uniform_grid grid = uniform_grid::symmetric) {
  typename fixed_bits<T>::options o;
  o.group_size = gs;
  o.bits = bits;
  o.lsq_grad_scale = lsq;
  o.grid = grid;
  return o;
}

struct run_result {
  std::vector<double> wq, grad_w;
};

/// forward + backward with loss sum gy * wq; parameter gradients accumulate in q.
template <class Q>
run_result forward_backward(Q& q, const std::vector<double>& w, const std::vector<double>& gy) {
  run_result r{std::vector<double>(w.size()), std::vector<double>(w.size(), 0.0)};
  q.zero_grad();
  q.forward(w.data(), r.wq.data(), true);
  q.backward(w.data(), gy.data(), r.grad_w.data());
  return r;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double mse(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s / static_cast<double>(a.size());
}

/// Checks every gradient of q (and grad_w) against the surrogate `model(w) -> wq`.
template <class Q, class Model>
void check_against_surrogate(Q& q, std::vector<double>& w, const std::vector<double>& gy,
                             const run_result& r, Model&& model) {
  const auto base = model(w);
  for (std::size_t i = 0; i < w.size(); ++i)
    CHECK(base[i] == doctest::Approx(r.wq[i]).epsilon(1e-12));
  auto params = parameters_of(q);
  std::vector<double> grad_w = r.grad_w;
  params.push_back({"w", w.data(), grad_w.data(), w.size(), param_kind::weight});
  const std::size_t checked = check_gradients(
      params, [&] { return dot(model(w), gy); }, fd_options{1e-6, 1e-6, 1e-7});
  CHECK(checked >= w.size() + q.groups());
}

} // namespace

TEST_CASE("frac_bits gradients match finite differences of its surrogate") {
  for (std::size_t gs : group_sizes)
    for (scale_mode mode : {scale_mode::max_abs, scale_mode::learned})
      for (double b0 : {3.3, 1.4, 6.8}) {
        INFO("group_size ", gs, ", learned ", mode == scale_mode::learned, ", b ", b0);
        auto w = normal(n_weights, 1);
        const auto gy = normal(n_weights, 2);
        frac_bits<double> q(fopt(gs, 1, 8, b0, mode));
        q.bind(channels, per_channel, w.data());
        if (mode == scale_mode::learned) { // move the ranges off max|w| so some weights clip
          auto a = find_param(parameters_of(q), "qmax");
          for (std::size_t g = 0; g < a.size; ++g) a.value[g] *= 0.8;
        }
        const auto r = forward_backward(q, w, gy);
        // The surrogate, frozen at this base point.
        const auto& lay = q.layout();
        const auto params = parameters_of(q);
        const double* bits = find_param(params, "bits").value;
        const double* range =
            mode == scale_mode::learned ? find_param(params, "qmax").value : nullptr;
        std::vector<int> klo(lay.groups());
        std::vector<double> smax(lay.groups()), smean(lay.groups());
        std::vector<frozen_point> lo, hi;
        auto scale = [&](std::size_t g, int k) {
          if (range) return range[g] / level_limit(k);
          return k == 1 ? smean[g] : smax[g] / level_limit(k);
        };
        for (std::size_t g = 0; g < lay.groups(); ++g) {
          klo[g] = static_cast<int>(std::floor(bits[g]));
          for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i) {
            smax[g] = std::max(smax[g], std::abs(w[i]));
            smean[g] += std::abs(w[i]) / static_cast<double>(lay.count(g));
          }
          for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i) {
            lo.emplace_back(w[i], scale(g, klo[g]), klo[g]);
            hi.emplace_back(w[i], scale(g, klo[g] + 1), klo[g] + 1);
          }
        }
        auto model = [&](const std::vector<double>& wv) {
          std::vector<double> out(wv.size());
          for (std::size_t g = 0; g < lay.groups(); ++g) {
            const double f = bits[g] - klo[g];
            for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i)
              out[i] =
                  (1 - f) * lo[i](wv[i], scale(g, klo[g])) + f * hi[i](wv[i], scale(g, klo[g] + 1));
          }
          return out;
        };
        check_against_surrogate(q, w, gy, r, model);

        // dL/db is exact for the relaxation: the real forward agrees.
        std::vector<double> wq(n_weights);
        auto bits_only = std::vector{find_param(parameters_of(q), "bits")};
        check_gradients(bits_only, [&] {
          q.forward(w.data(), wq.data(), true);
          return dot(wq, gy);
        });
      }
}

TEST_CASE("frac_bits at an integer b: the integer quantizer, with a live right derivative") {
  auto w = normal(n_weights, 3);
  const auto gy = normal(n_weights, 4);
  for (int k : {1, 2, 4, 8}) {
    INFO("k = ", k);
    frac_bits<double> q(fopt(3, 1, 8, double(k)));
    q.bind(channels, per_channel, w.data());
    const auto r = forward_backward(q, w, gy);
    const auto& lay = q.layout();
    for (std::size_t g = 0; g < lay.groups(); ++g) {
      const auto st = ref::quant_abs_stats(lay.count(g), w.data() + lay.offset(g));
      const double s = k == 1 ? st.sum_abs / double(lay.count(g)) : st.max_abs / level_limit(k);
      std::vector<double> expect(lay.count(g));
      ref::quant_fprop(lay.count(g), w.data() + lay.offset(g), expect.data(), make_grid(k, s));
      // Exactly the integer quantizer for k >= 2; at k = 1 the scale mean|w| is a sum, which
      // the SIMD statistics add in another order than the reference (rounding only).
      for (std::size_t i = 0; i < lay.count(g); ++i) {
        if (k >= 2)
          CHECK(r.wq[lay.offset(g) + i] == expect[i]);
        else
          CHECK(r.wq[lay.offset(g) + i] == doctest::Approx(expect[i]).epsilon(1e-15));
      }
    }
    // Right derivative: one-sided difference towards k + 1 equals the analytic gradient.
    std::vector<double> wq(n_weights);
    auto bits_only = std::vector{find_param(parameters_of(q), "bits")};
    double total = 0;
    for (std::size_t g = 0; g < bits_only[0].size; ++g) total += std::abs(bits_only[0].grad[g]);
    CHECK(total > 0); // not dead at an integer
    fd_options o;
    o.one_sided = true;
    o.atol = 1e-7;
    check_gradients(
        bits_only,
        [&] {
          q.forward(w.data(), wq.data(), true);
          return dot(wq, gy);
        },
        o);
  }
}

TEST_CASE("step_bits gradients match finite differences of its surrogate") {
  for (std::size_t gs : group_sizes) {
    INFO("group_size ", gs);
    auto w = normal(n_weights, 5);
    const auto gy = normal(n_weights, 6);
    step_bits<double> q(sopt(gs, 2, 8, 3.6));
    q.bind(channels, per_channel, w.data());
    auto ps = parameters_of(q);
    // Some weights clip: q_max = d (2^(b-1) - 1) at 0.7 times its initial value.
    const double b_clip = std::log2(0.7 * (std::exp2(2.6) - 1) + 1) + 1;
    auto bp = find_param(ps, "bits");
    for (std::size_t g = 0; g < bp.size; ++g) bp.value[g] = b_clip;
    const auto r = forward_backward(q, w, gy);
    const auto& lay = q.layout();
    const double* d = find_param(ps, "step").value;
    // q_max as the quantizer computes it (in its own element type) at the base point.
    std::vector<double> qmax(lay.groups());
    for (std::size_t g = 0; g < lay.groups(); ++g)
      qmax[g] = d[g] * (std::exp2(bp.value[g] - 1) - 1);
    std::vector<double> r0(n_weights), sign0(n_weights);
    std::vector<bool> in0(n_weights);
    for (std::size_t g = 0; g < lay.groups(); ++g)
      for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i) {
        const double x = std::min(std::max(w[i], -qmax[g]), qmax[g]) / d[g];
        r0[i] = std::nearbyint(x) - x;
        in0[i] = std::abs(w[i]) <= qmax[g];
        sign0[i] = w[i] >= 0 ? 1 : -1;
      }
    // The surrogate in the parameters (b, d): q_max = d (2^(b-1) - 1) moves with both.
    auto model = [&](const std::vector<double>& wv) {
      std::vector<double> out(wv.size());
      for (std::size_t g = 0; g < lay.groups(); ++g) {
        const double qm = d[g] * (std::exp2(bp.value[g] - 1) - 1);
        for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i)
          out[i] = (in0[i] ? wv[i] : sign0[i] * qm) + d[g] * r0[i];
      }
      return out;
    };
    check_against_surrogate(q, w, gy, r, model);
    // b is a parameter (kind bitwidth) and group_bits() reports it.
    CHECK(bp.kind == param_kind::bitwidth);
    for (double b : q.group_bits())
      CHECK(b == doctest::Approx(std::log2(0.7 * (std::exp2(2.6) - 1) + 1) + 1));
  }
}

TEST_CASE("fixed_bits (LSQ) gradients match finite differences of its surrogate") {
  for (uniform_grid grid : {uniform_grid::symmetric, uniform_grid::full})
    for (std::size_t gs : group_sizes)
      for (int k : (grid == uniform_grid::full ? std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}
                                               : std::vector<int>{1, 2, 4})) {
        const bool full = grid == uniform_grid::full;
        INFO("grid ", std::string(to_string(grid)), ", group_size ", gs, ", k ", k);
        auto w = normal(n_weights, 7);
        const auto gy = normal(n_weights, 8);
        fixed_bits<double> q(xopt(gs, k, false, grid));
        q.bind(channels, per_channel, w.data());
        const auto r = forward_backward(q, w, gy);
        const auto& lay = q.layout();
        const double* s = find_param(parameters_of(q), "scale").value;
        std::vector<frozen_point> pts;
        for (std::size_t g = 0; g < lay.groups(); ++g)
          for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i)
            pts.emplace_back(w[i], s[g], k, full);
        auto model = [&](const std::vector<double>& wv) {
          std::vector<double> out(wv.size());
          for (std::size_t g = 0; g < lay.groups(); ++g)
            for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i)
              out[i] = pts[i](wv[i], s[g]);
          return out;
        };
        check_against_surrogate(q, w, gy, r, model);

        // LSQ's gradient scale multiplies grad_s by exactly 1 / sqrt(n_g Qp).
        fixed_bits<double> scaled(xopt(gs, k, true, grid));
        scaled.bind(channels, per_channel, w.data());
        forward_backward(scaled, w, gy);
        const auto a = find_param(parameters_of(q), "scale");
        const auto b = find_param(parameters_of(scaled), "scale");
        for (std::size_t g = 0; g < a.size; ++g)
          CHECK(b.grad[g] ==
                doctest::Approx(a.grad[g] / std::sqrt(double(lay.count(g)) * level_limit(k))));
      }
}

TEST_CASE("LSQ initialisation s = 2 mean|w| / sqrt(Qp)") {
  const auto w = normal(n_weights, 9);
  fixed_bits<double> q(xopt(per_tensor, 4));
  q.bind(channels, per_channel, w.data());
  double mean = 0;
  for (double x : w) mean += std::abs(x) / n_weights;
  CHECK(q.group_scales(w.data())[0] == doctest::Approx(2 * mean / std::sqrt(7.0)));
}

TEST_CASE_TEMPLATE("mse initial step: 2 bits, w = {-2, -1, 0, 1, 1}, worked by hand", T, float,
                   double) {
  // Candidates s_j = j max|w| / (128 Qp) = j / 64 (max|w| = 2, Qp = 1).
  // Full grid {-2, -1, 0, 1}: s = 1 (j = 64) puts every weight on a level, E = 0, and no other
  // step does (w = 1 needs s = 1 / code with code = 1).
  // Symmetric grid {-1, 0, 1}: for s in (1, 2) the codes are -1, -1, 0, 1, 1, so
  // E(s) = (2 - s)^2 + 3 (1 - s)^2, smallest at s = 10 / 8 = 1.25 (j = 80), E = 0.75.
  const std::vector<T> w{-2, -1, 0, 1, 1};
  CHECK(mse_step(w.size(), w.data(), 2, true) == T(1));
  CHECK(grid_squared_error(w.size(), w.data(), make_grid(2, T(1), true)) == 0.0);
  CHECK(mse_step(w.size(), w.data(), 2, false) == T(1.25));
  CHECK(grid_squared_error(w.size(), w.data(), make_grid(2, T(1.25), false)) == 0.75);
  // fixed_bits with init = mse binds each group to it; LSQ's step here is 2 mean|w| = 2.
  for (uniform_grid grid : {uniform_grid::symmetric, uniform_grid::full}) {
    auto o = xopt<T>(1, 2, true, grid);
    o.init = step_init::mse;
    fixed_bits<T> q(o);
    q.bind(1, w.size(), w.data());
    CHECK(q.group_scales(w.data())[0] == (grid == uniform_grid::full ? T(1) : T(1.25)));
    fixed_bits<T> lsq(xopt<T>(1, 2, true, grid));
    lsq.bind(1, w.size(), w.data());
    CHECK(lsq.group_scales(w.data())[0] == T(2));
  }
}

TEST_CASE("mse initial step: no candidate step has a smaller error (odd groups, both grids)") {
  const auto w = normal(n_weights, 12);
  for (uniform_grid grid : {uniform_grid::symmetric, uniform_grid::full})
    for (std::size_t gs : group_sizes)
      for (int k : {1, 2, 3, 4, 8}) {
        INFO("grid ", to_string(grid), ", group ", gs, ", k = ", k);
        auto o = xopt(gs, k, true, grid);
        o.init = step_init::mse;
        fixed_bits<double> q(o);
        q.bind(channels, per_channel, w.data());
        const auto s = q.group_scales(w.data());
        const auto& lay = q.layout();
        for (std::size_t g = 0; g < lay.groups(); ++g) {
          const double* wg = w.data() + lay.offset(g);
          const std::size_t n = lay.count(g);
          double max_abs = 0, sum_abs = 0;
          for (std::size_t i = 0; i < n; ++i) {
            max_abs = std::max(max_abs, std::abs(wg[i]));
            sum_abs += std::abs(wg[i]);
          }
          if (k == 1) {
            CHECK(s[g] == doctest::Approx(sum_abs / double(n)));
            continue;
          }
          const bool full = grid == uniform_grid::full;
          const double best = grid_squared_error(n, wg, make_grid(k, s[g], full));
          const double m = max_abs / level_limit(k);
          bool is_candidate = false;
          for (int j = 1; j <= 128; ++j) {
            const double sj = j * m / 128;
            is_candidate = is_candidate || sj == s[g];
            CHECK(best <= grid_squared_error(n, wg, make_grid(k, sj, full)));
          }
          CHECK(is_candidate);
        }
      }
}

TEST_CASE("quantization error falls with the bitwidth; between integers it is bounded") {
  const auto w = normal(4096, 10);
  auto err = [&](double b) {
    frac_bits<double> q(fopt(per_tensor, 1, 16, b));
    q.bind(1, w.size(), w.data());
    std::vector<double> wq(w.size());
    q.forward(w.data(), wq.data(), false);
    return mse(w, wq);
  };
  double prev = err(2);
  for (int k = 3; k <= 12; ++k) {
    const double e = err(k);
    INFO("k = ", k);
    CHECK(e < prev);
    for (double f : {0.25, 0.5, 0.75}) // convex in f: below the chord of the integer errors
      CHECK(err(k - 1 + f) <= (1 - f) * prev + f * e + 1e-15);
    prev = e;
  }
}

TEST_CASE_TEMPLATE("frozen quantizers: codes in range and code * scale == forward exactly", T,
                   float, double) {
  std::vector<T> w(n_weights);
  const auto wd = normal(n_weights, 11);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<T>(wd[i]);
  auto check = [&](auto& q) {
    std::vector<T> wq(n_weights);
    q.forward(w.data(), wq.data(), false);
    std::vector<std::int32_t> codes(n_weights);
    q.codes(w.data(), codes.data());
    const auto s = q.group_scales(w.data());
    const auto k = q.frozen_bits();
    const auto& lay = q.layout();
    for (std::size_t g = 0; g < lay.groups(); ++g)
      for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i) {
        CHECK(static_cast<T>(codes[i]) * s[g] == wq[i]);
        const auto lim = static_cast<std::int32_t>(level_limit(k[g]));
        CHECK(std::abs(codes[i]) <= lim);
        if (k[g] == 1) CHECK(std::abs(codes[i]) == 1);
      }
  };
  for (std::size_t gs : group_sizes) {
    INFO("group_size ", gs);
    for (scale_mode mode : {scale_mode::max_abs, scale_mode::learned}) {
      frac_bits<T> q(fopt<T>(gs, 1, 8, 3.4, mode));
      q.bind(channels, per_channel, w.data());
      CHECK_THROWS_AS(q.codes(w.data(), nullptr), config_error);
      std::vector<int> bits(q.groups());
      for (std::size_t g = 0; g < bits.size(); ++g) bits[g] = 1 + static_cast<int>(g % 6);
      q.freeze_to(bits);
      CHECK(q.frozen());
      check(q);
    }
    step_bits<T> st(sopt<T>(gs, 2, 8, 4.2));
    st.bind(channels, per_channel, w.data());
    st.freeze(rounding::up);
    for (int k : st.frozen_bits()) CHECK(k == 5);
    check(st);
    fixed_bits<T> fx(xopt<T>(gs, 3));
    fx.bind(channels, per_channel, w.data());
    check(fx);
    // The full grid: codes in -2^(k-1)..2^(k-1)-1, code * scale == forward exactly.
    for (int k = 2; k <= 8; ++k) {
      INFO("full grid, k = ", k);
      fixed_bits<T> full(xopt<T>(gs, k, true, uniform_grid::full));
      full.bind(channels, per_channel, w.data());
      std::vector<T> wq(n_weights);
      full.forward(w.data(), wq.data(), false);
      std::vector<std::int32_t> codes(n_weights);
      full.codes(w.data(), codes.data());
      const auto s = full.group_scales(w.data());
      const auto& lay = full.layout();
      for (std::size_t g = 0; g < lay.groups(); ++g)
        for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i) {
          CHECK(static_cast<T>(codes[i]) * s[g] == wq[i]);
          CHECK(codes[i] >= -(1 << (k - 1)));
          CHECK(codes[i] <= (1 << (k - 1)) - 1);
        }
    }
  }
}

TEST_CASE("freeze rounding modes and what a frozen frac_bits trains") {
  const auto w = normal(n_weights, 12);
  frac_bits<double> q(fopt(1, 2, 8, 4.5));
  q.bind(channels, per_channel, w.data());
  auto bits = find_param(parameters_of(q), "bits");
  const double b[] = {2.2, 2.5, 3.49, 3.51, 7.9, 8.0, 4.0};
  for (std::size_t g = 0; g < 7; ++g) bits.value[g] = b[g];
  frac_bits<double> up = q, nearest = q;
  up.freeze(rounding::up);
  nearest.freeze(rounding::nearest);
  const std::vector<int> want_up = {3, 3, 4, 4, 8, 8, 4}, want_nearest = {2, 3, 3, 4, 8, 8, 4};
  for (std::size_t g = 0; g < 7; ++g) {
    CHECK(up.frozen_bits()[g] == want_up[g]);
    CHECK(nearest.frozen_bits()[g] == want_nearest[g]);
  }
  // After freeze: no bitwidth gradient, from the loss or the size, and project() restores k.
  const auto gy = normal(n_weights, 13);
  forward_backward(nearest, w, gy);
  nearest.add_size_gradient(1.0);
  auto nb = find_param(parameters_of(nearest), "bits");
  for (std::size_t g = 0; g < 7; ++g) {
    CHECK(nb.grad[g] == 0.0);
    nb.value[g] += 0.3;
  }
  nearest.project();
  for (std::size_t g = 0; g < 7; ++g) CHECK(nb.value[g] == want_nearest[g]);
  CHECK(nearest.group_bits()[0] == 2.0);
}

TEST_CASE("project keeps bitwidths and scales inside their bounds") {
  const auto w = normal(n_weights, 14);
  frac_bits<double> q(fopt(3, 2, 6, {}, scale_mode::learned));
  q.bind(channels, per_channel, w.data());
  CHECK(q.group_bits()[0] == 5.5); // default b_init = b_max - 0.5
  auto ps = parameters_of(q);
  find_param(ps, "bits").value[0] = 9;
  find_param(ps, "bits").value[1] = 0.5;
  find_param(ps, "qmax").value[2] = -1;
  q.project();
  CHECK(q.group_bits()[0] == 6);
  CHECK(q.group_bits()[1] == 2);
  CHECK(find_param(ps, "qmax").value[2] > 0);

  step_bits<double> s(sopt(per_tensor, 3, 5));
  s.bind(channels, per_channel, w.data());
  auto sp = parameters_of(s);
  find_param(sp, "bits").value[0] = 1000;
  find_param(sp, "step").value[0] = -1;
  s.project();
  CHECK(s.group_bits()[0] == doctest::Approx(5));
  CHECK(find_param(sp, "step").value[0] > 0);
  find_param(sp, "bits").value[0] = 0;
  s.project();
  CHECK(s.group_bits()[0] == doctest::Approx(3));
}

TEST_CASE("bad options throw config_error") {
  const std::vector<double> w(n_weights, 0.5);
  auto bind_frac = [&](frac_bits<double>::options o) {
    frac_bits<double> q(o);
    q.bind(channels, per_channel, w.data());
  };
  CHECK_THROWS_AS(bind_frac(fopt(0)), config_error);
  CHECK_THROWS_AS(bind_frac(fopt(8)), config_error);
  CHECK_NOTHROW(bind_frac(fopt(7)));
  CHECK_NOTHROW(bind_frac(fopt(per_tensor)));
  CHECK_THROWS_AS(bind_frac(fopt(1, 6, 4)), config_error);
  CHECK_THROWS_AS(bind_frac(fopt(1, 0)), config_error);
  CHECK_THROWS_AS(bind_frac(fopt(1, 2, 17)), config_error);
  CHECK_THROWS_AS(bind_frac(fopt(1, 2, 8, 9.0)), config_error);
  CHECK_THROWS_WITH_AS(bind_frac(fopt(1, 6, 4)),
                       "frac_bits: expected b_min <= b_max, got b_min = 6 > b_max = 4",
                       config_error);
  CHECK_THROWS_AS(step_bits<double>(sopt(1, 1)), config_error);
  CHECK_THROWS_AS(fixed_bits<double>(xopt(1, 0)), config_error);
  CHECK_THROWS_AS(fixed_bits<double>(xopt(1, 17)), config_error);
  frac_bits<double> q;
  CHECK_THROWS_AS(q.freeze(rounding::nearest), config_error); // not bound
  q.bind(channels, per_channel, w.data());
  CHECK_THROWS_AS(q.freeze_to({4, 4}), config_error);                 // 7 groups
  CHECK_THROWS_AS(q.freeze_to(std::vector<int>(7, 0)), config_error); // bitwidth 0
  CHECK_THROWS_AS(q.frozen_bits(), config_error);
  CHECK_THROWS_AS(q.bind(0, 5, w.data()), config_error);
}

TEST_CASE("an all-zero group quantizes to zero without NaN") {
  const std::vector<double> w(n_weights, 0.0);
  std::vector<double> wq(n_weights, 1.0), gw(n_weights, 0.0);
  const std::vector<double> gy(n_weights, 1.0);
  frac_bits<double> q(fopt(1, 1, 8, 1.5));
  q.bind(channels, per_channel, w.data());
  q.forward(w.data(), wq.data(), true);
  q.backward(w.data(), gy.data(), gw.data());
  for (double v : wq) CHECK(std::abs(v) < 1e-15);
  for (double v : q.group_bits()) CHECK(std::isfinite(v));
  step_bits<double> s;
  s.bind(channels, per_channel, w.data());
  s.forward(w.data(), wq.data(), true);
  for (double v : wq) CHECK(v == 0.0);
}

TEST_CASE("a non-finite bitwidth is a config_error naming the group, in every freeze and forward") {
  // Issue #17: NaN bitwidths (a diverged run) froze without an error, casting NaN to int
  // (undefined behaviour, seen by UBSan in frac_bits' freeze).
  const auto w = normal(n_weights, 21);
  std::vector<double> wq(n_weights);
  for (const double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    CAPTURE(bad);
    for (const rounding r : {rounding::nearest, rounding::up, rounding::budget_aware}) {
      frac_bits<double> q(fopt(1));
      q.bind(channels, per_channel, w.data());
      find_param(parameters_of(q), "bits").value[3] = bad;
      CHECK_THROWS_WITH_AS(q.freeze(r),
                           doctest::Contains("frac_bits: group 3 of 7 has a non-finite bitwidth"),
                           config_error);
      CHECK_FALSE(q.frozen());
      CHECK_THROWS_WITH_AS(q.forward(w.data(), wq.data(), true),
                           doctest::Contains("group 3 of 7 has a non-finite bitwidth"),
                           config_error);

      step_bits<double> s(sopt(1));
      s.bind(channels, per_channel, w.data());
      find_param(parameters_of(s), "bits").value[5] = bad;
      CHECK_THROWS_WITH_AS(s.freeze(r),
                           doctest::Contains("step_bits: group 5 of 7 has a non-finite bitwidth"),
                           config_error);
      CHECK_FALSE(s.frozen());
    }
  }
}

// ---- the shared core (quant/group_quantizer.hpp), issue #18 ---------------------------------

TEST_CASE_TEMPLATE("every policy's state saves and loads through the core, and is checked", Q,
                   frac_bits<double>, noise_bits<double>, step_bits<double>, fixed_bits<double>) {
  static_assert(quantizer<Q>);
  const auto w = normal(n_weights, 31);
  Q q;
  q.bind(channels, per_channel, w.data());
  // Every learned bitwidth is a parameter of kind bitwidth (fixed_bits has none).
  std::size_t bit_params = 0;
  q.visit_parameters([&](param_ref<double>& p) { bit_params += p.kind == param_kind::bitwidth; });
  CHECK(bit_params == (std::is_same_v<Q, fixed_bits<double>> ? 0u : 1u));

  const std::vector<int> bits{2, 3, 4, 5, 6, 7, 8};
  q.freeze_to(bits);
  io::byte_writer out;
  q.save(out);
  // u8 frozen, u32 groups, 7 x i32: the core's record (the whole record in checkpoint versions
  // 1 and 2); noise_bits adds its u64 noise step.
  REQUIRE(out.size() == 1 + 4 + 7 * 4 + (std::is_same_v<Q, noise_bits<double>> ? 8 : 0));
  CHECK(out.bytes()[0] == 1);

  Q fresh;
  fresh.bind(channels, per_channel, w.data());
  io::byte_reader in(out.bytes(), "state.bin");
  fresh.load(in);
  CHECK(in.at_end());
  CHECK(fresh.frozen());
  CHECK(fresh.frozen_bits() == bits);
  std::vector<double> a(n_weights), b(n_weights);
  q.forward(w.data(), a.data(), false);
  fresh.forward(w.data(), b.data(), false);
  CHECK(a == b);

  // A record for another layout is a format_error naming the quantizer and the counts.
  Q other;
  other.bind(channels - 1, per_channel, w.data());
  io::byte_reader again(out.bytes(), "state.bin");
  CHECK_THROWS_WITH_AS(
      other.load(again, "fc1"),
      doctest::Contains("quantizer 'fc1' has 7 frozen groups, the network's has 6"), format_error);
  // A bitwidth outside [1, 16].
  io::byte_writer bad;
  bad.put<std::uint8_t>(1);
  bad.put<std::uint32_t>(7);
  for (int k = 0; k < 7; ++k) bad.put<std::int32_t>(k == 3 ? 17 : 4);
  io::byte_reader bad_in(bad.bytes(), "state.bin");
  CHECK_THROWS_WITH_AS(fresh.load(bad_in), doctest::Contains("frozen bitwidth 17 outside [1, 16]"),
                       format_error);
}

TEST_CASE("no_quant meets the whole contract: no integer groups, the empty state") {
  static_assert(quantizer<no_quant<double>>);
  const auto w = normal(n_weights, 32);
  no_quant<double> q;
  q.bind(channels, per_channel, w.data());
  CHECK(q.frozen_bits().empty());
  CHECK(q.group_scales(w.data()).empty());
  CHECK_NOTHROW(q.freeze_to({}));
  CHECK_THROWS_AS(q.freeze_to({4}), config_error);
  std::vector<std::int32_t> codes(n_weights);
  CHECK_THROWS_AS(q.codes(w.data(), codes.data()), config_error);
  io::byte_writer out;
  q.save(out);
  CHECK(out.bytes() == std::string("\0\0\0\0\0", 5));
  io::byte_reader in(out.bytes(), "state.bin");
  q.load(in);
  CHECK(in.at_end());
}

TEST_CASE("step_bits: the lowest bitwidth is 2, in freeze_to and in the budget") {
  const auto w = normal(n_weights, 33);
  step_bits<double> q(sopt(1));
  q.bind(channels, per_channel, w.data());
  CHECK(step_bits<double>::lowest_bits == 2);
  CHECK_THROWS_WITH_AS(q.freeze_to(std::vector<int>(7, 1)),
                       "step_bits: expected bitwidths >= 2, got 1", config_error);
  CHECK_FALSE(q.frozen());
  CHECK(frac_bits<double>::lowest_bits == 1);
}

TEST_CASE("step_bits: the first freeze keeps the learned range, a later freeze_to keeps d") {
  const auto w = normal(n_weights, 34);
  step_bits<double> q(sopt(1, 2, 8, 6.5));
  q.bind(channels, per_channel, w.data());
  auto ps = parameters_of(q);
  const double* d = find_param(ps, "step").value;
  std::vector<double> range(channels);
  for (std::size_t g = 0; g < channels; ++g) range[g] = d[g] * (std::exp2(6.5 - 1) - 1);
  q.freeze_to(std::vector<int>(channels, 3));
  for (std::size_t g = 0; g < channels; ++g)
    CHECK(d[g] * 3 == doctest::Approx(range[g]).epsilon(1e-12)); // L_3 = 3
  const std::vector<double> d3(d, d + channels);
  q.freeze_to(std::vector<int>(channels, 2)); // frozen: d held, the range shrinks
  CHECK(std::vector<double>(d, d + channels) == d3);
  q.freeze_to(std::vector<int>(channels, 3));
  CHECK(std::vector<double>(d, d + channels) == d3);
  // A fresh quantizer whose b is already the integer k (a checkpoint's) keeps d exactly.
  step_bits<double> r(sopt(1, 2, 8, 4.0));
  r.bind(channels, per_channel, w.data());
  const double* dr = find_param(parameters_of(r), "step").value;
  const std::vector<double> before(dr, dr + channels);
  r.freeze_to(std::vector<int>(channels, 4));
  CHECK(std::vector<double>(dr, dr + channels) == before);
}

#if defined(BITGRAD_WITH_OPENMP)
namespace {
/// forward, backward (twice: the gradients accumulate) and the parameter gradients of q on a
/// tensor of `ch` x `per` weights with `threads` threads, as one flat vector per output.
template <class Q>
std::vector<std::vector<float>> run_on_threads(Q q, std::size_t ch, std::size_t per, int threads,
                                               bool freeze) {
  omp_set_num_threads(threads);
  std::mt19937 rng(21);
  std::normal_distribution<float> d(0.f, 0.05f);
  std::vector<float> w(ch * per), gy(ch * per), wq(ch * per), gw(ch * per, 0.f);
  for (auto& v : w) v = d(rng);
  for (auto& v : gy) v = d(rng);
  q.bind(ch, per, w.data());
  if (freeze) q.freeze(rounding::nearest);
  std::vector<std::vector<float>> out;
  for (int step = 0; step < 2; ++step) {
    q.forward(w.data(), wq.data(), true);
    q.backward(w.data(), gy.data(), gw.data());
    out.push_back(wq);
  }
  out.push_back(gw);
  q.visit_parameters([&](param_ref<float>& p) { out.emplace_back(p.grad, p.grad + p.size); });
  return out;
}
} // namespace

TEST_CASE("per-group passes on the threads give the serial bits (frac_bits, fixed_bits)") {
  // A tensor past group_parallel_min (in spinning and sleeping mode), 37 channels of a ragged
  // count, groups of 1 and 3 channels, bitwidths between two integers (both grids).
  const std::size_t ch = 37, per = (std::size_t(1) << 19) / ch + 5;
  REQUIRE(ch * per >= quant::detail::group_parallel_min());
  const int saved = omp_get_max_threads();
  for (std::size_t gs : {std::size_t(1), std::size_t(3)}) {
    for (bool freeze : {false, true})
      for (scale_mode sm : {scale_mode::max_abs, scale_mode::learned}) {
        const frac_bits<float> q({.group_size = gs, .b_init = 3.4, .scale = sm});
        const auto serial = run_on_threads(q, ch, per, 1, freeze);
        for (int threads : {2, 3}) {
          CAPTURE(gs);
          CAPTURE(freeze);
          CAPTURE(threads);
          CHECK(run_on_threads(q, ch, per, threads, freeze) == serial);
        }
      }
    const fixed_bits<float> f({.group_size = gs, .bits = 4});
    CHECK(run_on_threads(f, ch, per, 2, false) == run_on_threads(f, ch, per, 1, false));
  }
  omp_set_num_threads(saved);
}
#endif
} // namespace test_quant
