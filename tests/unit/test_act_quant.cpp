// Activation quantization (issue #22): the SIMD kernels against their reference twins on odd
// lengths, hand-computed grids (unsigned with zero exact, signed), every parameter's gradient
// by finite differences in double (the bitwidth against the real forward, the range and the
// input against the straight-through surrogate, and the layer through nn::gradcheck), freezing,
// parameter visiting, and save / load.
#include "quant_gradcheck.hpp"
#include "random_tensor.hpp"

#include <bitgrad/kernels/act_quantize.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/gradcheck.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/size.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace test_act_quant {

using namespace bitgrad;
using bitgrad::testing::check_gradients;
using bitgrad::testing::fd_options;
using bitgrad::testing::find_param;
using bitgrad::testing::parameters_of;
using bitgrad::testing::random_tensor;

namespace {

template <class T>
std::vector<T> normal(std::size_t n, unsigned seed, double sigma = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, sigma);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(gen));
  return v;
}

template <class T>
bool within_ulps(T a, T b, int ulps) {
  for (int k = 0; k < ulps && a < b; ++k) a = std::nextafter(a, b);
  for (int k = 0; k < ulps && a > b; ++k) a = std::nextafter(a, b);
  return a == b;
}

using aq = quant::act_quantizer<double>;

aq::options aopt(bool is_signed, std::size_t group_size, double b_init,
                 std::optional<double> range = {}, double b_min = 1, double b_max = 8,
                 quant::act_relaxation relax = quant::act_relaxation::frac) {
  aq::options o;
  o.relaxation = relax;
  o.group_size = group_size;
  o.is_signed = is_signed;
  o.b_min = is_signed ? std::max(b_min, 2.0) : b_min;
  o.b_max = b_max;
  o.b_init = b_init;
  o.range_init = range;
  return o;
}

/// The straight-through surrogate of one grid at the base point (x0, s0): inside,
/// x + s (code0 - v0); outside, s code0. Its derivatives are the documented STE ones.
struct surrogate_point {
  double code, v0;
  bool inside;
  surrogate_point(double x, double s, double limit, double lower) {
    v0 = x * (1 / s);
    inside = v0 >= lower && v0 <= limit;
    code = std::nearbyint(std::min(std::max(v0, lower), limit));
  }
  double operator()(double x, double s) const { return inside ? x + s * (code - v0) : s * code; }
};

} // namespace

TEST_CASE_TEMPLATE("activation kernels: SIMD equals the reference on odd lengths", T, float,
                   double) {
  for (std::size_t n : {1, 3, 7, 17, 33, 101}) {
    for (bool is_signed : {false, true}) {
      for (int k : {1, 2, 4, 8, 15}) {
        if (is_signed && k == 1) continue;
        for (T f : {T(0), T(0.3), T(0.75)}) {
          CAPTURE(n);
          CAPTURE(is_signed);
          CAPTURE(k);
          CAPTURE(f);
          const T range = T(2);
          const auto lo = make_act_grid(k, range, is_signed, T(1e-20));
          const auto hi = make_act_grid(k + 1, range, is_signed, T(1e-20));
          auto x = normal<T>(n, static_cast<unsigned>(n * 31 + k), 1.2);
          // Exact zeros (as after a ReLU) and inputs on the grid's ends: the mask's edges.
          for (std::size_t i = 0; i < n; i += 4) x[i] = T(0);
          for (std::size_t i = 1; i < n; i += 6) x[i] = is_signed ? -range : range;
          const auto dy = normal<T>(n, static_cast<unsigned>(n * 17 + k + 5));
          std::vector<T> y(n), y_ref(n), dx(n, T(9)), dx_ref(n, T(9));
          act_quant_fprop(n, x.data(), y.data(), lo, hi, f);
          ref::act_quant_fprop(n, x.data(), y_ref.data(), lo, hi, f);
          const auto s = act_quant_bprop(n, x.data(), dy.data(), dx.data(), lo, hi, f);
          const auto s_ref = ref::act_quant_bprop(n, x.data(), dy.data(), dx_ref.data(), lo, hi, f);
          for (std::size_t i = 0; i < n; ++i) {
            INFO("element ", i);
            CHECK(within_ulps(y[i], y_ref[i], f == T(0) ? 0 : 1));
            CHECK(dx[i] == dx_ref[i]);
          }
          const T tol = std::numeric_limits<T>::epsilon() * T(64) * static_cast<T>(n);
          CHECK(std::abs(s.d_frac - s_ref.d_frac) <= tol * (T(1) + std::abs(s_ref.d_frac)));
          CHECK(std::abs(s.d_range - s_ref.d_range) <= tol * (T(1) + std::abs(s_ref.d_range)));
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("activation grids: unsigned keeps zero exact, signed is symmetric", T, float,
                   double) {
  // Unsigned 2 bits, range 3: s = 1, levels {0, 1, 2, 3}; negatives go to 0.
  const auto u2 = make_act_grid(2, T(3), false, T(1e-20));
  CHECK(u2.scale == T(1));
  CHECK(u2.lower == T(0));
  const std::vector<T> x{T(-1), T(-0.2), T(0), T(0.4), T(1.6), T(2.5), T(5)};
  std::vector<T> y(x.size());
  act_quant_fprop(x.size(), x.data(), y.data(), u2, u2, T(0));
  const std::vector<T> want{T(0), T(0), T(0), T(0), T(2), T(2), T(3)}; // 2.5: half to even
  CHECK(y == want);
  // Signed 3 bits, range 1.5: L = 3, s = 0.5, levels {-1.5, ..., 1.5}.
  const auto s3 = make_act_grid(3, T(1.5), true, T(1e-20));
  CHECK(s3.limit == T(3));
  CHECK(s3.lower == T(-3));
  const std::vector<T> xs{T(-5), T(-0.7), T(0.2), T(0.8), T(2)};
  std::vector<T> ys(xs.size());
  act_quant_fprop(xs.size(), xs.data(), ys.data(), s3, s3, T(0));
  const std::vector<T> want_s{T(-1.5), T(-0.5), T(0), T(1), T(1.5)};
  CHECK(ys == want_s);
  // Fractional mix at b = 1.25 unsigned, range 3: Q_1 on {0, 3}, Q_2 on {0, 1, 2, 3}.
  const auto u1 = make_act_grid(1, T(3), false, T(1e-20));
  const std::vector<T> xm{T(1.2)};
  std::vector<T> ym(1), dx(1);
  act_quant_fprop(1, xm.data(), ym.data(), u1, u2, T(0.25));
  CHECK(ym[0] == doctest::Approx(0.75 * 0 + 0.25 * 1)); // Q_1(1.2) = 0, Q_2(1.2) = 1
  const std::vector<T> g{T(2)};
  const auto s = act_quant_bprop(1, xm.data(), g.data(), dx.data(), u1, u2, T(0.25));
  CHECK(dx[0] == T(2));                            // inside both grids
  CHECK(s.d_frac == doctest::Approx(2 * (1 - 0))); // dy (Q_2 - Q_1)
  // dQ_1/ds = 0 - 0.4, / L_1 = 1; dQ_2/ds = 1 - 1.2, / L_2 = 3
  CHECK(s.d_range == doctest::Approx(2 * (0.75 * -0.4 + 0.25 * -0.2 / 3)));
  // Above the range: dx = 0, dQ/da = 1 (PACT).
  const std::vector<T> big{T(7)};
  const auto sb = act_quant_bprop(1, big.data(), g.data(), dx.data(), u2, u2, T(0));
  CHECK(dx[0] == T(0));
  CHECK(sb.d_range == doctest::Approx(2));
}

TEST_CASE("act_quantizer: bitwidth gradient equals finite differences of the real forward") {
  // Channels 5, inner 3, batch 2; groups of 1, 2 and per tensor; b inside (k, k+1).
  constexpr std::size_t batch = 2, channels = 5, inner = 3, n = batch * channels * inner;
  const auto x = normal<double>(n, 3);
  const auto gy = normal<double>(n, 4);
  for (bool is_signed : {false, true})
    for (std::size_t gs : {std::size_t(1), std::size_t(2), quant::per_tensor})
      for (double b : {2.3, 3.6, 5.5}) {
        CAPTURE(is_signed);
        CAPTURE(gs);
        CAPTURE(b);
        aq q(aopt(is_signed, gs, b, 1.3));
        q.bind(channels);
        std::vector<double> y(n), dx(n);
        q.zero_grad();
        q.forward(x.data(), y.data(), batch, inner, true);
        q.backward(x.data(), gy.data(), dx.data(), batch, inner);
        auto loss = [&] {
          std::vector<double> yy(n);
          q.forward(x.data(), yy.data(), batch, inner, true);
          double s = 0;
          for (std::size_t i = 0; i < n; ++i) s += yy[i] * gy[i];
          return s;
        };
        auto bits = find_param(parameters_of(q), "bits");
        double total = 0;
        for (std::size_t g = 0; g < bits.size; ++g) total += std::abs(bits.grad[g]);
        CHECK(total > 1e-3); // not trivially zero
        CHECK(check_gradients(std::vector{bits}, loss, fd_options{1e-6, 1e-6, 1e-8}) == q.groups());
      }
}

TEST_CASE("act_quantizer: range and input gradients equal finite differences of the surrogate") {
  constexpr std::size_t batch = 3, channels = 4, inner = 5, n = batch * channels * inner;
  for (bool is_signed : {false, true})
    for (std::size_t gs : {std::size_t(1), std::size_t(3), quant::per_tensor})
      for (double b : {2.0, 2.4, 4.7}) {
        CAPTURE(is_signed);
        CAPTURE(gs);
        CAPTURE(b);
        auto x = normal<double>(n, 11);
        const auto gy = normal<double>(n, 12);
        aq q(aopt(is_signed, gs, b, 1.1)); // a range below max|x|: some inputs clip
        q.bind(channels);
        std::vector<double> y(n), dx(n);
        q.zero_grad();
        q.forward(x.data(), y.data(), batch, inner, true);
        q.backward(x.data(), gy.data(), dx.data(), batch, inner);
        // The surrogate model, written from the documented formulas: per element, the two
        // grids' STE surrogates mixed with (1 - f, f), s_k = a_g / L_k.
        auto range = find_param(parameters_of(q), "range");
        const double k_lo = std::floor(b), f = b - k_lo;
        auto limit = [&](double k) { return is_signed ? std::exp2(k - 1) - 1 : std::exp2(k) - 1; };
        const double l_lo = limit(k_lo), l_hi = limit(k_lo + 1);
        const std::vector<double> a0(range.value, range.value + range.size);
        std::vector<surrogate_point> p_lo, p_hi;
        std::vector<std::size_t> group_of(n);
        for (std::size_t i = 0; i < n; ++i) {
          const std::size_t c = (i / inner) % channels;
          const std::size_t g = gs == quant::per_tensor ? 0 : c / gs;
          group_of[i] = g;
          p_lo.emplace_back(x[i], a0[g] / l_lo, l_lo, is_signed ? -l_lo : 0.0);
          p_hi.emplace_back(x[i], a0[g] / l_hi, l_hi, is_signed ? -l_hi : 0.0);
        }
        auto model = [&] {
          double s = 0;
          for (std::size_t i = 0; i < n; ++i) {
            const double a = range.value[group_of[i]];
            s += gy[i] * ((1 - f) * p_lo[i](x[i], a / l_lo) + f * p_hi[i](x[i], a / l_hi));
          }
          return s;
        };
        // The surrogate's value is the forward's.
        double real = 0;
        for (std::size_t i = 0; i < n; ++i) real += gy[i] * y[i];
        CHECK(model() == doctest::Approx(real).epsilon(1e-12));
        std::vector<param_ref<double>> params{range};
        params.push_back({"x", x.data(), dx.data(), n, param_kind::weight});
        CHECK(check_gradients(params, model, fd_options{1e-6, 1e-6, 1e-8}) == n + q.groups());
      }
}

TEST_CASE("activation_quant layer: nn::gradcheck of the bitwidths in a network, and the input "
          "at a fine grid") {
  using fq = quant::frac_bits<double>;
  aq::options qa = aopt(false, 2, 3.4, 1.6, 1, 8);
  // The activation quantizer first: a bitwidth upstream of it would see its straight-through
  // gradient, not an exact one.
  auto net = nn::sequential(
      nn::activation_quant<double, 2>({.channels = 6, .name = "aq1"}, qa),
      nn::linear<double, quant::frac_bits>(
          {.in_features = 6, .out_features = 4, .seed = 1, .name = "fc1"},
          fq::options{.b_init = 4.5}),
      nn::relu<double, 2>(),
      nn::linear<double>({.in_features = 4, .out_features = 3, .seed = 2, .name = "fc2"}));
  std::vector<std::string> names;
  net.visit_parameters(
      [&](param_ref<double>& p) { names.push_back(p.name + ":" + to_string(p.kind)); });
  CHECK(names == std::vector<std::string>{"aq1.bits:bitwidth", "aq1.range:scale",
                                          "fc1.weight:weight", "fc1.bias:bias", "fc1.bits:bitwidth",
                                          "fc2.weight:weight", "fc2.bias:bias"});
  // The weight-size accounting sees the weight quantizer only.
  std::size_t weight_quantizers = 0;
  net.visit_quantizers([&](std::string_view, auto&) { ++weight_quantizers; });
  CHECK(weight_quantizers == 2);
  std::vector<std::string> act;
  nn::visit_activation_quantizers(net, [&](std::string_view name, aq& q) {
    act.emplace_back(name);
    CHECK(q.groups() == 3);
  });
  CHECK(act == std::vector<std::string>{"aq1"});

  nn::gradcheck_options opt;
  opt.kinds = {param_kind::bitwidth};
  opt.check_input = false;
  auto r = nn::gradcheck(net, random_tensor<double, 2>({5, 6}, 3), opt);
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.max_error < 1e-6);
  CHECK(r.tensors.size() == 2); // aq1.bits, fc1.bits
  CHECK(r.tensors[0].name == "aq1.bits");
  CHECK(r.tensors[0].checked == 3);

  // At 15.5 bits the straight-through input gradient is the true slope to ~1% (the range
  // 1.6 covers every input: nothing clips above; negatives have slope 0 as through a ReLU).
  nn::activation_quant<double, 4> fine({.channels = 3, .name = "aq"},
                                       aopt(false, 1, 15.5, 1.6, 1, 16));
  nn::gradcheck_options in;
  in.kinds = {param_kind::bias}; // no parameter: the input only
  in.epsilon = 1e-3;
  r = nn::gradcheck(fine, random_tensor<double, 4>({2, 3, 3, 2}, 5), in);
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.max_error < 2e-2);
  CHECK(r.checked == 36);
}

TEST_CASE("act_quantizer: calibration, projection, freezing and checks") {
  aq q(aopt(false, 1, 3.5));
  q.bind(2);
  CHECK_FALSE(q.calibrated());
  const std::vector<double> x{
      -4,  0.5, 2,    1,  // sample 0: channel 0 = {-4, 0.5}, channel 1 = {2, 1}
      1.5, -1,  0.25, 3}; // sample 1
  std::vector<double> y(8), dx(8);
  q.forward(x.data(), y.data(), 2, 2, false);
  CHECK(q.calibrated());
  CHECK(q.group_ranges() == std::vector<double>{1.5, 3}); // max x per channel (unsigned)
  std::vector<double> y_train(8);
  q.forward(x.data(), y_train.data(), 2, 2, true);
  CHECK(y_train == y); // the same arithmetic in both modes; calibrated once
  CHECK(q.group_ranges() == std::vector<double>{1.5, 3});
  auto ps = parameters_of(q);
  find_param(ps, "bits").value[0] = -3; // not projected: the forward uses b_min
  std::vector<double> y_low(8), y_min(8);
  q.forward(x.data(), y_low.data(), 2, 2, true);
  find_param(ps, "bits").value[0] = 1;
  q.forward(x.data(), y_min.data(), 2, 2, true);
  CHECK(y_low == y_min);
  find_param(ps, "bits").value[0] = 40;
  find_param(ps, "range").value[1] = -2;
  q.project();
  CHECK(q.group_bits() == std::vector<double>{8, 3.5});
  CHECK(q.group_ranges()[1] > 0);
  find_param(ps, "bits").value[0] = 2.5;
  find_param(ps, "range").value[1] = 3;
  q.freeze(quant::rounding::nearest); // half up
  CHECK(q.frozen_bits() == std::vector<int>{3, 4});
  CHECK(q.group_scales() == std::vector<double>{1.5 / 7, 3.0 / 15});
  q.zero_grad();
  q.forward(x.data(), y.data(), 2, 2, true);
  const std::vector<double> gy(8, 1.0);
  q.backward(x.data(), gy.data(), dx.data(), 2, 2);
  CHECK(find_param(ps, "bits").grad[0] == 0); // frozen bitwidths do not train
  CHECK(find_param(ps, "range").grad[1] != 0);
  // Frozen: exactly the integer grid (channel 1 at 4 bits, s = 0.2: 2 -> 2, 1 -> 1, 0.25 -> 0.2).
  CHECK(y[2] == doctest::Approx(2.0));
  CHECK(y[6] == doctest::Approx(0.2));
  CHECK_THROWS_AS(q.freeze(quant::rounding::budget_aware), config_error);
  CHECK_THROWS_AS(q.freeze_to({3}), config_error);
  CHECK_THROWS_AS(q.freeze_to({3, 17}), config_error);
  aq s(aopt(true, 1, 3.5, 1.0));
  s.bind(2);
  CHECK_THROWS_AS(s.freeze_to({1, 2}), config_error); // signed: 1 bit leaves only zero
  aq::options bad = aopt(true, 1, 3.5);
  bad.b_min = 1;
  CHECK_THROWS_AS(aq{bad}, config_error);
  CHECK_THROWS_AS(aq(aopt(false, 1, 3.5, -1.0)), config_error);
  nn::activation_quant<double, 4> layer({.channels = 3, .name = "aq7"}, aopt(false, 1, 3.5));
  auto wrong = random_tensor<double, 4>({1, 2, 2, 2}, 1);
  try {
    layer.forward(wrong);
    FAIL("no shape error");
  } catch (const shape_error& e) {
    CHECK(std::string(e.what()).find("aq7") != std::string::npos);
  }
  using layer4 = nn::activation_quant<double, 4>;
  try {
    layer4({.channels = 0, .name = "z"});
    FAIL("accepted 0 channels");
  } catch (const config_error& e) {
    CHECK(std::string(e.what()) ==
          "z: act_frac_bits: expected an activation with channels >= 1, got 0");
  }
}

TEST_CASE("act_quantizer: save / load round trip and rejected states") {
  aq q(aopt(true, 2, 4.5, 2.0, 2, 8));
  q.bind(5); // 3 groups
  q.freeze_to({2, 6, 8});
  io::byte_writer w;
  q.save(w);
  CHECK(w.size() == 1 + 1 + 4 + 1 + 1 + 1 + 4 + 3 * 4);
  aq r(aopt(true, 2, 4.5, {}, 2, 8));
  r.bind(5);
  io::byte_reader in(w.bytes(), "state");
  r.load(in, "aq1");
  CHECK(in.at_end());
  CHECK(r.frozen_bits() == std::vector<int>{2, 6, 8});
  CHECK(r.calibrated());
  // Not frozen, not calibrated: round trip too.
  aq t(aopt(false, 1, 3.5));
  t.bind(2);
  io::byte_writer wt;
  t.save(wt);
  aq u(aopt(false, 1, 3.5, 1.0));
  u.bind(2);
  io::byte_reader iu(wt.bytes(), "state");
  u.load(iu);
  CHECK_FALSE(u.frozen());
  CHECK_FALSE(u.calibrated());
  // Rejections name the problem.
  auto fails = [](aq& into, std::string bytes, const std::string& word) {
    io::byte_reader rd(bytes, "state");
    try {
      into.load(rd, "aq1");
      FAIL("accepted a bad state");
    } catch (const format_error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(word) != std::string::npos);
    }
  };
  std::string bytes = w.bytes();
  bytes[0] = 2;
  fails(r, bytes, "unknown state version 2");
  aq unsigned_q(aopt(false, 2, 4.5, {}, 2, 8));
  unsigned_q.bind(5);
  fails(unsigned_q, w.bytes(), "signed grid");
  aq other(aopt(true, 1, 4.5, {}, 2, 8));
  other.bind(5);
  fails(other, w.bytes(), "has 3 groups, the network's has 5");
  fails(r, w.bytes().substr(0, 10), "truncated");
  CHECK(r.frozen_bits() == std::vector<int>{2, 6, 8}); // unchanged by the failed loads
  // The layer saves and loads its quantizer, naming itself.
  nn::activation_quant<double, 4> l1({.channels = 5, .name = "aqA"}, aopt(true, 2, 4.5, 2.0, 2, 8));
  l1.activation_quantizer().freeze_to({3, 3, 4});
  io::byte_writer wl;
  l1.save(wl);
  nn::activation_quant<double, 4> l2({.channels = 5, .name = "aqB"}, aopt(true, 2, 4.5, 2.0, 2, 8));
  io::byte_reader rl(wl.bytes(), "state");
  l2.load(rl);
  CHECK(l2.activation_quantizer().frozen_bits() == std::vector<int>{3, 3, 4});
}

TEST_CASE_TEMPLATE("an unsigned activation quantizer at 16 bits is a ReLU clipped at its range", T,
                   float, double) {
  typename quant::act_quantizer<T>::options o;
  o.b_max = 16;
  o.b_init = 16;
  o.range_init = 2.0;
  quant::act_quantizer<T> q(o);
  q.bind(3);
  const auto x = normal<T>(3 * 37, 21, 1.5);
  std::vector<T> y(x.size());
  q.forward(x.data(), y.data(), 1, 37, true);
  const double step = 2.0 / 65535;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double relu = std::min(std::max(static_cast<double>(x[i]), 0.0), 2.0);
    CHECK(std::abs(static_cast<double>(y[i]) - relu) <= 0.5 * step * (1 + 1e-3));
  }
}

TEST_CASE_TEMPLATE("activation step kernels: SIMD equals the reference, bit for bit", T, float,
                   double) {
  for (std::size_t n : {1, 3, 7, 17, 33, 101}) {
    for (bool is_signed : {false, true}) {
      for (double b : {1.0, 2.3, 4.0, 7.6}) {
        CAPTURE(n);
        CAPTURE(is_signed);
        CAPTURE(b);
        const T a = T(1.5);
        const T levels =
            static_cast<T>(is_signed ? std::exp2(std::max(b, 2.0) - 1) - 1 : std::exp2(b) - 1);
        const T d = a / levels, lower = is_signed ? -a : T(0);
        auto x = normal<T>(n, static_cast<unsigned>(n * 7 + 3), 1.2);
        for (std::size_t i = 0; i < n; i += 4) x[i] = T(0);
        for (std::size_t i = 1; i < n; i += 6) x[i] = is_signed ? -a : a;
        const auto dy = normal<T>(n, static_cast<unsigned>(n + 1));
        std::vector<T> y(n), y_ref(n), dx(n, T(9)), dx_ref(n, T(9));
        act_step_fprop(n, x.data(), y.data(), d, lower, a);
        ref::act_step_fprop(n, x.data(), y_ref.data(), d, lower, a);
        const auto s = act_step_bprop(n, x.data(), dy.data(), dx.data(), d, lower, a);
        const auto r = ref::act_step_bprop(n, x.data(), dy.data(), dx_ref.data(), d, lower, a);
        CHECK(y == y_ref);
        CHECK(dx == dx_ref);
        const T tol = std::numeric_limits<T>::epsilon() * T(64) * static_cast<T>(n);
        CHECK(std::abs(s.d_step - r.d_step) <= tol * (T(1) + std::abs(r.d_step)));
        CHECK(std::abs(s.d_above - r.d_above) <= tol * (T(1) + std::abs(r.d_above)));
        CHECK(std::abs(s.d_below - r.d_below) <= tol * (T(1) + std::abs(r.d_below)));
      }
    }
  }
}

TEST_CASE("act_quantizer, step relaxation: bits, range and input gradients equal finite "
          "differences of the surrogate") {
  constexpr std::size_t batch = 2, channels = 5, inner = 4, n = batch * channels * inner;
  for (bool is_signed : {false, true})
    for (std::size_t gs : {std::size_t(1), std::size_t(2), quant::per_tensor})
      for (double b : {2.3, 3.0, 5.7}) {
        CAPTURE(is_signed);
        CAPTURE(gs);
        CAPTURE(b);
        auto x = normal<double>(n, 31);
        const auto gy = normal<double>(n, 32);
        aq q(aopt(is_signed, gs, b, 1.2, 1, 8, quant::act_relaxation::step));
        q.bind(channels);
        std::vector<double> y(n), dx(n);
        q.zero_grad();
        q.forward(x.data(), y.data(), batch, inner, true);
        q.backward(x.data(), gy.data(), dx.data(), batch, inner);
        auto params = parameters_of(q);
        auto bits = find_param(params, "bits"), range = find_param(params, "range");
        // Surrogate: clamp_ste(x, a) + d(a, b) (code0 - v0), d = a / L(b), with the codes and
        // v0 = clamp(x0) / d0 of the base point held; clamp_ste is x inside, the end outside.
        auto levels = [&](double bb) {
          return is_signed ? std::exp2(bb - 1) - 1 : std::exp2(bb) - 1;
        };
        std::vector<std::size_t> group_of(n);
        std::vector<double> held(n);
        for (std::size_t i = 0; i < n; ++i) {
          const std::size_t c = (i / inner) % channels;
          const std::size_t g = gs == quant::per_tensor ? 0 : c / gs;
          group_of[i] = g;
          const double a = range.value[g], d = a / levels(bits.value[g]);
          const double v = std::min(std::max(x[i], is_signed ? -a : 0.0), a) / d;
          held[i] = std::nearbyint(v) - v;
        }
        const std::vector<double> x0 = x;
        std::vector<double> a0(range.value, range.value + range.size);
        auto model = [&] {
          double s = 0;
          for (std::size_t i = 0; i < n; ++i) {
            const std::size_t g = group_of[i];
            const double a = range.value[g], d = a / levels(bits.value[g]);
            const double lo = is_signed ? -a : 0.0;
            // the clip decision of the base point
            const double clip =
                x0[i] > a0[g] ? a : (x0[i] < (is_signed ? -a0[g] : 0.0) ? lo : x[i]);
            s += gy[i] * (clip + d * held[i]);
          }
          return s;
        };
        double real = 0;
        for (std::size_t i = 0; i < n; ++i) real += gy[i] * y[i];
        CHECK(model() == doctest::Approx(real).epsilon(1e-12));
        std::vector<param_ref<double>> checked{bits, range};
        checked.push_back({"x", x.data(), dx.data(), n, param_kind::weight});
        CHECK(check_gradients(checked, model, fd_options{1e-6, 1e-6, 1e-8}) == n + 2 * q.groups());
      }
}

TEST_CASE("act_quantizer: at an integer bitwidth and once frozen, both relaxations are the same "
          "grid") {
  constexpr std::size_t batch = 2, channels = 3, inner = 7, n = batch * channels * inner;
  const auto x = normal<double>(n, 41, 1.5);
  for (bool is_signed : {false, true}) {
    aq frac(aopt(is_signed, 1, 4, 1.3));
    aq step(aopt(is_signed, 1, 4, 1.3, 1, 8, quant::act_relaxation::step));
    frac.bind(channels);
    step.bind(channels);
    std::vector<double> yf(n), ys(n);
    frac.forward(x.data(), yf.data(), batch, inner, true);
    step.forward(x.data(), ys.data(), batch, inner, true);
    for (std::size_t i = 0; i < n; ++i) CHECK(ys[i] == doctest::Approx(yf[i]).epsilon(1e-12));
    step.freeze_to({3, 4, 5});
    frac.freeze_to({3, 4, 5});
    frac.forward(x.data(), yf.data(), batch, inner, true);
    step.forward(x.data(), ys.data(), batch, inner, true);
    CHECK(ys == yf);
  }
  // The relaxation is part of the state.
  aq step(aopt(false, 1, 4, 1.3, 1, 8, quant::act_relaxation::step));
  step.bind(channels);
  io::byte_writer w;
  step.save(w);
  aq frac(aopt(false, 1, 4, 1.3));
  frac.bind(channels);
  io::byte_reader r(w.bytes(), "state");
  CHECK_THROWS_AS(frac.load(r, "aq"), format_error);
  nn::activation_quant<double, 4> l({.channels = 3, .name = "aq"},
                                    aopt(true, 1, 4, 1.3, 2, 8, quant::act_relaxation::step));
  CHECK(l.describe() == "activation_quant 3 signed act_step_bits g=1");
}

} // namespace test_act_quant
