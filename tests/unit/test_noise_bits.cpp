// noise_bits and its kernels: finite-difference gradients with the noise held fixed, the
// evaluation / frozen forward against frac_bits at integer bitwidths, reproducibility of the
// counter-based noise, its statistics, SIMD against the scalar reference, the size gradient and
// freezing.
#include "quant_gradcheck.hpp"

#include <bitgrad/kernels/noise.hpp>
#include <bitgrad/kernels/ref/noise.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/noise_bits.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string_view>
#include <vector>

namespace test_noise_bits {

using namespace bitgrad;
using namespace bitgrad::quant;
using bitgrad::testing::check_gradients;
using bitgrad::testing::fd_options;
using bitgrad::testing::find_param;
using bitgrad::testing::parameters_of;

namespace {

constexpr std::size_t channels = 7, per_channel = 5, n_weights = channels * per_channel;
const std::size_t group_sizes[] = {1, 3, per_tensor};

template <class T>
std::vector<T> normal(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(gen));
  return v;
}

template <class T = double>
typename noise_bits<T>::options
nopt(std::size_t gs, double b_min = 2, double b_max = 8, std::optional<double> b_init = {},
     noise_kind kind = noise_kind::uniform, std::uint64_t seed = 0) {
  typename noise_bits<T>::options o;
  o.group_size = gs;
  o.b_min = b_min;
  o.b_max = b_max;
  o.b_init = b_init;
  o.noise = kind;
  o.seed = seed;
  return o;
}

template <class T = double>
typename frac_bits<T>::options fopt(std::size_t gs, double b_init) {
  typename frac_bits<T>::options o;
  o.group_size = gs;
  o.b_init = b_init;
  return o;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// Spreads the logits so groups sit at different bitwidths.
template <class Q>
void spread_logits(Q& q) {
  auto p = find_param(parameters_of(q), "logit");
  for (std::size_t g = 0; g < p.size; ++g) p.value[g] = -1.5 + 0.7 * static_cast<double>(g);
}

} // namespace

TEST_CASE("noise_bits: dL/dlogit matches finite differences with the noise held fixed") {
  for (noise_kind kind : {noise_kind::uniform, noise_kind::gaussian}) {
    for (std::size_t gs : group_sizes) {
      CAPTURE(gs);
      noise_bits<double> q(nopt(gs, 2, 8, {}, kind, 7));
      auto w = normal<double>(n_weights, 1);
      const auto gy = normal<double>(n_weights, 2);
      q.bind(channels, per_channel, w.data());
      spread_logits(q);
      const std::uint64_t step = 41;
      std::vector<double> wq(n_weights), grad_w(n_weights, 0.0);
      q.set_noise_step(step);
      q.zero_grad();
      q.forward(w.data(), wq.data(), true);
      CHECK(q.noise_step() == step + 1);
      q.backward(w.data(), gy.data(), grad_w.data());
      // dQ/dw = 1: the weight gradient is grad_wq itself, bit for bit.
      for (std::size_t i = 0; i < n_weights; ++i) CHECK(grad_w[i] == gy[i]);

      auto loss = [&] {
        q.set_noise_step(step);
        std::vector<double> out(n_weights);
        q.forward(w.data(), out.data(), true);
        return dot(out, gy);
      };
      auto params = parameters_of(q);
      // The output is linear in Delta and Delta smooth in the logit: central differences agree
      // to rounding.
      CHECK(check_gradients(params, loss, fd_options{1e-5, 1e-7, 1e-10}) == q.groups());

      // dQ/dw = 1 by finite differences too, at weights that are not their group's max |w|
      // (the range is a constant of the surrogate, as documented).
      const auto& lay = q.layout();
      for (std::size_t g = 0; g < q.groups(); ++g) {
        std::size_t arg = lay.offset(g);
        for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i)
          if (std::abs(w[i]) > std::abs(w[arg])) arg = i;
        for (std::size_t i = lay.offset(g); i < lay.offset(g) + lay.count(g); ++i) {
          if (i == arg) continue;
          const double w0 = w[i], h = 1e-6;
          w[i] = w0 + h;
          const double lp = loss();
          w[i] = w0 - h;
          const double lm = loss();
          w[i] = w0;
          CHECK((lp - lm) / (2 * h) == doctest::Approx(gy[i]).epsilon(1e-7));
        }
      }
    }
  }
}

TEST_CASE("noise_bits: the logit gradient has the documented closed form") {
  // One group, b_min = 2, b_max = 8, logit 0.3: dL/dl = sum(gy u) dDelta/db db/dl.
  noise_bits<double> q(nopt(per_tensor, 2, 8, {}, noise_kind::uniform, 3));
  const auto w = normal<double>(n_weights, 5);
  const auto gy = normal<double>(n_weights, 6);
  q.bind(channels, per_channel, w.data());
  find_param(parameters_of(q), "logit").value[0] = 0.3;
  std::vector<double> wq(n_weights), grad_w(n_weights, 0.0);
  q.set_noise_step(9);
  q.forward(w.data(), wq.data(), true);
  q.backward(w.data(), gy.data(), grad_w.data());

  double max_abs = 0;
  for (double x : w) max_abs = std::max(max_abs, std::abs(x));
  const double s = 1 / (1 + std::exp(-0.3)), b = 2 + 6 * s, p = std::exp2(b);
  const double range = 2 * max_abs, delta = range / (p - 1);
  double sum_gu = 0;
  for (std::size_t i = 0; i < n_weights; ++i) {
    const double ui = (wq[i] - w[i]) / delta; // the noise the forward used
    CHECK(std::abs(ui) < 0.5);
    sum_gu += gy[i] * ui;
  }
  const double expected =
      sum_gu * (-range * std::log(2.0) * p / ((p - 1) * (p - 1))) * 6 * s * (1 - s);
  CHECK(find_param(parameters_of(q), "logit").grad[0] == doctest::Approx(expected).epsilon(1e-9));
  CHECK(q.group_bits()[0] == doctest::Approx(b).epsilon(1e-15));
}

TEST_CASE("noise_bits: evaluation and frozen forwards equal frac_bits at integer bitwidths") {
  for (std::size_t gs : group_sizes) {
    CAPTURE(gs);
    const auto w = normal<double>(n_weights, 11);
    // Evaluation forward at b = 4.3 rounds to 4 bits: frac_bits at b = 4 exactly.
    noise_bits<double> nq(nopt(gs, 2, 8, 4.3));
    frac_bits<double> fq(fopt(gs, 4.0));
    nq.bind(channels, per_channel, w.data());
    fq.bind(channels, per_channel, w.data());
    std::vector<double> a(n_weights), b(n_weights);
    nq.forward(w.data(), a.data(), false);
    fq.forward(w.data(), b.data(), false);
    for (std::size_t i = 0; i < n_weights; ++i) CHECK(a[i] == b[i]);
    CHECK(nq.noise_step() == 0); // evaluation draws no noise

    // Frozen at mixed bitwidths (the sign grid included): identical forward, scales and codes.
    std::vector<int> k(nq.groups());
    for (std::size_t g = 0; g < k.size(); ++g) k[g] = 1 + static_cast<int>(g % 6);
    nq.freeze_to(k);
    fq.freeze_to(k);
    nq.forward(w.data(), a.data(), true);
    fq.forward(w.data(), b.data(), true);
    for (std::size_t i = 0; i < n_weights; ++i) CHECK(a[i] == b[i]);
    CHECK(nq.group_scales(w.data()) == fq.group_scales(w.data()));
    std::vector<std::int32_t> ca(n_weights), cb(n_weights);
    nq.codes(w.data(), ca.data());
    fq.codes(w.data(), cb.data());
    CHECK(ca == cb);
    const auto sc = nq.group_scales(w.data());
    for (std::size_t g = 0; g < nq.groups(); ++g)
      for (std::size_t i = nq.layout().offset(g); i < nq.layout().offset(g) + nq.layout().count(g);
           ++i)
        CHECK(static_cast<double>(ca[i]) * sc[g] == a[i]);
    CHECK(nq.frozen_bits() == k);
    // Frozen backward is the straight-through estimator, the same as frac_bits'.
    const auto gy = normal<double>(n_weights, 12);
    std::vector<double> ga(n_weights, 0.0), gb(n_weights, 0.0);
    nq.backward(w.data(), gy.data(), ga.data());
    fq.backward(w.data(), gy.data(), gb.data());
    CHECK(ga == gb);
    CHECK(nq.size_bits() == fq.size_bits());
  }
}

TEST_CASE("noise_bits: the noise is reproducible and advances once per training forward") {
  const auto w = normal<float>(n_weights, 21);
  auto run = [&](std::uint64_t seed, std::uint64_t step) {
    noise_bits<float> q(nopt<float>(1, 2, 8, {}, noise_kind::uniform, seed));
    q.bind(channels, per_channel, w.data());
    q.set_noise_step(step);
    std::vector<float> out(n_weights);
    q.forward(w.data(), out.data(), true);
    return out;
  };
  CHECK(run(5, 3) == run(5, 3));
  CHECK(run(5, 3) != run(5, 4));
  CHECK(run(5, 3) != run(6, 3));

  noise_bits<float> q(nopt<float>(1, 2, 8, {}, noise_kind::uniform, 5));
  q.bind(channels, per_channel, w.data());
  std::vector<float> first(n_weights), second(n_weights);
  q.forward(w.data(), first.data(), true);
  q.forward(w.data(), second.data(), true);
  CHECK(q.noise_step() == 2);
  CHECK(first == run(5, 0));
  CHECK(second == run(5, 1));
  q.hold_noise(true);
  q.forward(w.data(), second.data(), true);
  q.forward(w.data(), first.data(), true);
  CHECK(q.noise_step() == 2);
  CHECK(first == second);
  CHECK(first == run(5, 2));
  q.bind(channels, per_channel, w.data()); // a fresh binding restarts the stream
  CHECK(q.noise_step() == 0);

  // Same seed, different shapes: different streams.
  noise_bits<float> a(nopt<float>(1, 2, 8, {}, noise_kind::uniform, 5));
  noise_bits<float> b(nopt<float>(1, 2, 8, {}, noise_kind::uniform, 5));
  a.bind(channels, per_channel, w.data());
  b.bind(per_channel, channels, w.data());
  std::vector<float> oa(n_weights), ob(n_weights);
  a.forward(w.data(), oa.data(), true);
  b.forward(w.data(), ob.data(), true);
  std::size_t same = 0;
  for (std::size_t i = 0; i < n_weights; ++i) same += (oa[i] - w[i]) == (ob[i] - w[i]);
  CHECK(same < 3);
}

TEST_CASE(
    "noise_bits: the noise has mean 0 and variance Delta^2/12 (uniform), Delta^2/4 (gaussian)") {
  // One group of 2^18 weights at a fixed b = 4 (b_min = b_max): Delta = 2 max|w| / 15.
  const std::size_t n = std::size_t(1) << 18;
  std::vector<float> w(n, 0.0f);
  w[0] = 1.5f; // max |w|
  for (noise_kind kind : {noise_kind::uniform, noise_kind::gaussian}) {
    noise_bits<float> q(nopt<float>(per_tensor, 4, 4, 4.0, kind, 99));
    q.bind(1, n, w.data());
    std::vector<float> wq(n);
    q.forward(w.data(), wq.data(), true);
    const double delta = 2 * 1.5 / 15.0;
    double m1 = 0, m2 = 0, m4 = 0, lag = 0, lo = 0, hi = 0;
    for (std::size_t i = 1; i < n; ++i) {
      const double u = (static_cast<double>(wq[i]) - w[i]) / delta;
      m1 += u;
      m2 += u * u;
      m4 += u * u * u * u;
      lo = std::min(lo, u);
      hi = std::max(hi, u);
      if (i > 1) lag += u * (static_cast<double>(wq[i - 1]) - w[i - 1]) / delta;
    }
    const double cnt = static_cast<double>(n - 1);
    m1 /= cnt;
    m2 /= cnt;
    m4 /= cnt;
    lag /= cnt - 1;
    const double var = kind == noise_kind::uniform ? 1.0 / 12 : 0.25;
    CAPTURE(m1);
    CAPTURE(m2);
    CAPTURE(lag);
    CHECK(std::abs(m1) < 4 * std::sqrt(var / cnt));  // mean 0 within 4 standard errors
    CHECK(m2 == doctest::Approx(var).epsilon(0.01)); // variance within 1%
    CHECK(std::abs(lag) < 4 * var / std::sqrt(cnt)); // neighbours uncorrelated
    if (kind == noise_kind::uniform) {
      CHECK(m4 / (m2 * m2) == doctest::Approx(1.8).epsilon(0.01)); // uniform kurtosis 9/5
      CHECK(lo > -0.5);
      CHECK(hi < 0.5);
      CHECK(lo < -0.4999);
      CHECK(hi > 0.4999);
    } else {
      CHECK(m4 / (m2 * m2) == doctest::Approx(2.7).epsilon(0.02)); // Irwin-Hall(4): 3 - 6/20
      CHECK(hi <= std::sqrt(3.0));
      CHECK(hi > 1.2);
      CHECK(lo < -1.2);
    }
  }
}

TEST_CASE_TEMPLATE("noise kernels: SIMD equals the scalar reference", T, float, double) {
  const std::size_t sizes[] = {1, 3, 7, 8, 15, 16, 17, 33, 100};
  for (noise_kind kind : {noise_kind::uniform, noise_kind::gaussian}) {
    for (std::size_t n : sizes) {
      CAPTURE(n);
      const std::size_t first = 13 * n + 5;
      const noise_key key = make_noise_key(n, 1234);
      std::vector<T> u(n), ur(n);
      noise_sample(n, key, first, kind, u.data());
      ref::noise_sample(n, key, first, kind, ur.data());
      CHECK(u == ur); // bit-exact

      const auto w = normal<T>(n, 31);
      const auto gy = normal<T>(n, 32);
      const T delta = T(0.0371);
      std::vector<T> wq(n), wqr(n);
      noise_fprop(n, w.data(), wq.data(), delta, key, first, kind);
      ref::noise_fprop(n, w.data(), wqr.data(), delta, key, first, kind);
      for (std::size_t i = 0; i < n; ++i) {
        const T tol = std::numeric_limits<T>::epsilon() * std::abs(wqr[i]); // 1 ulp (FMA)
        CHECK(std::abs(wq[i] - wqr[i]) <= tol);
      }

      std::vector<T> gw = normal<T>(n, 33), gwr = gw;
      const T s = noise_bprop(n, gy.data(), gw.data(), key, first, kind);
      const T sr = ref::noise_bprop(n, gy.data(), gwr.data(), key, first, kind);
      CHECK(gw == gwr); // bit-exact
      T mag = 0;
      for (std::size_t i = 0; i < n; ++i) mag += std::abs(gy[i] * ur[i]);
      CHECK(std::abs(s - sr) <= 4 * static_cast<T>(n) * std::numeric_limits<T>::epsilon() * mag);
    }
  }
  // A noise_key from (seed, step) is a pure function of both.
  CHECK(make_noise_key(1, 2).lo == make_noise_key(1, 2).lo);
  CHECK(make_noise_key(1, 2).lo != make_noise_key(1, 3).lo);
  CHECK(make_noise_key(1, 2).hi != make_noise_key(2, 2).hi);
}

TEST_CASE("noise_bits: size_bits and its gradient in the logits") {
  for (std::size_t gs : group_sizes) {
    CAPTURE(gs);
    noise_bits<double> q(nopt(gs, 2, 8));
    const auto w = normal<double>(n_weights, 41);
    q.bind(channels, per_channel, w.data());
    spread_logits(q);
    const auto bits = q.group_bits();
    double expected = 0;
    for (std::size_t g = 0; g < q.groups(); ++g) {
      CHECK(bits[g] > 2.0);
      CHECK(bits[g] < 8.0);
      expected += static_cast<double>(q.group_weight_count(g)) * bits[g] + 40.0;
    }
    CHECK(q.size_bits() == doctest::Approx(expected).epsilon(1e-14));
    const double lambda = 0.37;
    q.zero_grad();
    q.add_size_gradient(lambda);
    CHECK(check_gradients(
              parameters_of(q), [&] { return lambda * q.size_bits(); },
              fd_options{1e-6, 1e-7, 1e-9}) == q.groups());
  }
}

TEST_CASE("noise_bits: bind, project and freeze") {
  noise_bits<double> q(nopt(1, 2, 8));
  const auto w = normal<double>(n_weights, 51);
  q.bind(channels, per_channel, w.data());
  for (double b : q.group_bits()) CHECK(b == doctest::Approx(7.5).epsilon(1e-12)); // b_max - 1/2
  auto p = find_param(parameters_of(q), "logit");
  CHECK(p.kind == param_kind::bitwidth);
  p.value[0] = 50;
  p.value[1] = -50;
  q.project();
  CHECK(p.value[0] == noise_bits<double>::logit_limit);
  CHECK(p.value[1] == -noise_bits<double>::logit_limit);

  // nearest / up against the real bitwidths.
  for (std::size_t g = 0; g < channels; ++g) p.value[g] = -2.0 + 0.6 * static_cast<double>(g);
  const auto b = q.group_bits();
  {
    noise_bits<double> n2 = q, u2 = q;
    n2.freeze(rounding::nearest);
    u2.freeze(rounding::up);
    for (std::size_t g = 0; g < channels; ++g) {
      CHECK(n2.frozen_bits()[g] == static_cast<int>(std::floor(b[g] + 0.5)));
      CHECK(u2.frozen_bits()[g] == static_cast<int>(std::ceil(b[g])));
    }
    CHECK(n2.frozen());
    CHECK(n2.group_bits()[0] == static_cast<double>(n2.frozen_bits()[0]));
  }
  // budget_aware keeps the tensor within its real size.
  const double before = q.size_bits();
  noise_bits<double> bq = q;
  bq.freeze(rounding::budget_aware);
  CHECK(bq.size_bits() <= before);
  int ups = 0;
  for (std::size_t g = 0; g < channels; ++g) {
    const int k = bq.frozen_bits()[g];
    CHECK((k == static_cast<int>(std::floor(b[g])) || k == static_cast<int>(std::ceil(b[g]))));
    ups += k == static_cast<int>(std::ceil(b[g]));
  }
  CHECK(ups > 0);

  // freeze_to_budget over two quantizers.
  noise_bits<double> a = q, c = q;
  const double target = a.size_bits() + c.size_bits() - 20 * per_channel;
  auto visit = [&](auto&& f) {
    f(std::string_view("a"), a);
    f(std::string_view("c"), c);
  };
  const auto r = freeze_to_budget(visit, target);
  CHECK(r.within_target);
  CHECK(a.frozen());
  CHECK(c.frozen());
  CHECK(a.size_bits() + c.size_bits() <= target);

  // After freezing no bitwidth gradient flows, the size is constant in the logits.
  bq.zero_grad();
  bq.add_size_gradient(1.0);
  std::vector<double> wq(n_weights), gw(n_weights, 0.0);
  const auto gy = normal<double>(n_weights, 52);
  bq.forward(w.data(), wq.data(), true);
  bq.backward(w.data(), gy.data(), gw.data());
  for (std::size_t g = 0; g < channels; ++g)
    CHECK(find_param(parameters_of(bq), "logit").grad[g] == 0.0);

  // Options are checked.
  CHECK_THROWS_AS(noise_bits<double>(nopt(1, 4, 3)), config_error);
  CHECK_THROWS_AS(noise_bits<double>(nopt(1, 2, 8, 9.0)), config_error);
  noise_bits<double> unbound;
  std::vector<double> out(1);
  CHECK_THROWS_AS(unbound.forward(w.data(), out.data(), true), config_error);
  CHECK_THROWS_AS(q.frozen_bits(), config_error);
}

TEST_CASE("noise_bits: a NaN logit is a config_error naming the group, in freeze and forward") {
  // Issue #17: a NaN bitwidth was cast to int (undefined behaviour) instead of being named.
  const auto w = normal<double>(n_weights, 31);
  std::vector<double> wq(n_weights);
  for (const rounding r : {rounding::nearest, rounding::up, rounding::budget_aware}) {
    noise_bits<double> q(nopt(1));
    q.bind(channels, per_channel, w.data());
    find_param(parameters_of(q), "logit").value[2] = std::nan("");
    CHECK_THROWS_WITH_AS(q.freeze(r),
                         doctest::Contains("noise_bits: group 2 of 7 has a non-finite bitwidth"),
                         config_error);
    CHECK_FALSE(q.frozen());
    CHECK_THROWS_WITH_AS(q.forward(w.data(), wq.data(), false),
                         doctest::Contains("noise_bits: group 2 of 7 has a non-finite bitwidth"),
                         config_error);
  }
}

} // namespace test_noise_bits
