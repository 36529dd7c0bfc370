// Fake-quantization kernels: the SIMD kernels against their scalar twins in bitgrad::ref
// (element-wise outputs bit-exact, ragged tails included), rounding half to even, codes in
// range, the sign grid, x = w * (1 / s) in every kernel, NaN weights stay NaN.
#include <bitgrad/kernels/quantize.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <vector>

namespace test_quant_kernels {

namespace {

template <class T>
std::vector<T> normal(std::size_t n, unsigned seed, T sigma = 1) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, static_cast<double>(sigma));
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(gen));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i]) || std::signbit(a[i]) != std::signbit(b[i])) return false;
  return true;
}

/// Equal within `ulps` units in the last place (the fractional mix has a multiply-add the
/// compiler may fuse differently in the two kernels; see kernels/quantize.hpp).
template <class T>
bool within_ulps(const std::vector<T>& a, const std::vector<T>& b, int ulps) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    T x = a[i];
    for (int k = 0; k < ulps && x < b[i]; ++k) x = std::nextafter(x, b[i]);
    for (int k = 0; k < ulps && x > b[i]; ++k) x = std::nextafter(x, b[i]);
    if (x != b[i]) return false;
  }
  return true;
}

/// Element-wise equality with a list of expected values. (Not `v == std::vector<T>{...}`:
/// GCC 12.2 at -O2 -march=native (AVX-512) miscompiles std::vector<double>{1, 1, 1, 0} into
/// four ones; reported to the lead.)
template <class T>
void check_values(const std::vector<T>& got, std::initializer_list<double> want) {
  REQUIRE(got.size() == want.size());
  std::size_t i = 0;
  for (double v : want) {
    INFO("element ", i);
    CHECK(got[i++] == static_cast<T>(v));
  }
}

template <class T>
void check_sum(T simd, T ref, std::size_t n) {
  const double tol = 4.0 * static_cast<double>(n + 1) * std::numeric_limits<T>::epsilon();
  CHECK(std::abs(static_cast<double>(simd) - static_cast<double>(ref)) <=
        tol * (1.0 + std::abs(static_cast<double>(ref))));
}

const std::size_t sizes[] = {0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 127, 1000, 4099};

/// Forward, backward (with its scale sum) and codes of one grid: SIMD against the reference.
/// Returns the codes; checks that code * scale is the forward output.
template <class T>
std::vector<std::int32_t>
check_grid_against_reference(const std::vector<T>& w, const std::vector<T>& gy,
                             const bitgrad::quant_grid<T>& g, unsigned grad_seed) {
  using namespace bitgrad;
  const std::size_t n = w.size();
  std::vector<T> a(n), b(n);
  quant_fprop(n, w.data(), a.data(), g);
  ref::quant_fprop(n, w.data(), b.data(), g);
  CHECK(same_bits(a, b));

  std::vector<T> ga = normal<T>(n, grad_seed), gb = ga;
  const T sa = quant_bprop(n, w.data(), gy.data(), ga.data(), g);
  const T sb = ref::quant_bprop(n, w.data(), gy.data(), gb.data(), g);
  CHECK(same_bits(ga, gb));
  check_sum(sa, sb, n);

  std::vector<std::int32_t> codes(n);
  quant_codes(n, w.data(), codes.data(), g);
  for (std::size_t i = 0; i < n; ++i) CHECK(static_cast<T>(codes[i]) * g.scale == a[i]);
  return codes;
}

} // namespace

TEST_CASE_TEMPLATE("uniform and sign grids: SIMD equals the reference", T, float, double) {
  using namespace bitgrad;
  for (std::size_t n : sizes) {
    const auto w = normal<T>(n, 11 + static_cast<unsigned>(n));
    const auto gy = normal<T>(n, 17 + static_cast<unsigned>(n));
    // k = 23: the widest grid of the SIMD path in float (L = 2^22 - 1); k = 24 (float) goes to
    // the reference.
    for (int k : {1, 2, 3, 4, 8, 16, 23, 24}) {
      INFO("n = ", n, ", k = ", k);
      const auto g = make_grid<T>(k, T(0.37) / static_cast<T>(level_limit(k)) * T(4));
      const auto codes = check_grid_against_reference(w, gy, g, 5);
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(std::abs(codes[i]) <= static_cast<std::int32_t>(g.limit));
        if (k == 1) CHECK(std::abs(codes[i]) == 1);
      }
    }
  }
}

TEST_CASE_TEMPLATE("full grid (codes -2^(k-1)..2^(k-1)-1): SIMD equals the reference", T, float,
                   double) {
  using namespace bitgrad;
  for (std::size_t n : sizes) {
    const auto w = normal<T>(n, 21 + static_cast<unsigned>(n));
    const auto gy = normal<T>(n, 27 + static_cast<unsigned>(n));
    // Every k in 2..8, the widest bitwidth (16) and the SIMD path's widest grid in float
    // (k = 23: Qn = 2^22 = small_limit) against the reference's (k = 24 in float); k = 1 stays
    // the sign grid.
    for (int k : {1, 2, 3, 4, 5, 6, 7, 8, 16, 23, 24}) {
      INFO("n = ", n, ", k = ", k);
      // A step that clips the tails on both sides at small k and hits the lowest code.
      const auto g = make_grid<T>(k, T(0.8) / static_cast<T>(level_limit(k)), true);
      CHECK(g.full() == (k >= 2));
      CHECK(g.lower == static_cast<T>(k >= 2 ? std::ldexp(1.0, k - 1) : 1.0));
      const auto codes = check_grid_against_reference(w, gy, g, 6);
      bool lowest = false;
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(codes[i] >= -static_cast<std::int32_t>(g.lower));
        CHECK(codes[i] <= static_cast<std::int32_t>(g.limit));
        lowest = lowest || codes[i] == -static_cast<std::int32_t>(g.lower);
        if (k == 1) CHECK(std::abs(codes[i]) == 1);
      }
      if (k >= 2 && k <= 4 && n >= 64) CHECK(lowest); // the extra level is used
    }
  }
}

TEST_CASE_TEMPLATE("full 2-bit grid by hand: codes, STE bounds -Qn..Qp, dQ/ds", T, float, double) {
  using namespace bitgrad;
  // s = 1 (r = 1 exact), Qn = 2, Qp = 1: codes {-2, -1, 0, 1}.
  const auto g = make_grid<T>(2, T(1), true);
  const std::vector<T> w = {T(-3), T(-2), T(-1.5), T(-0.5), T(0.5), T(1), T(1.5), T(-2.5)};
  const std::size_t n = w.size();
  for (int simd = 0; simd < 2; ++simd) {
    INFO("simd = ", simd);
    std::vector<T> wq(n), grad_w(n, T(0));
    const std::vector<T> ones(n, T(1));
    T ds;
    if (simd) {
      quant_fprop(n, w.data(), wq.data(), g);
      ds = quant_bprop(n, w.data(), ones.data(), grad_w.data(), g);
    } else {
      ref::quant_fprop(n, w.data(), wq.data(), g);
      ds = ref::quant_bprop(n, w.data(), ones.data(), grad_w.data(), g);
    }
    // -1.5 rounds half to even to -2; -0.5 to -0; 1.5 clips to Qp = 1, -3 and -2.5 to -Qn.
    check_values(wq, {-2, -2, -2, -0.0, 0, 1, 1, -2});
    check_values(grad_w, {0, 1, 1, 1, 1, 1, 0, 0});
    // dQ/ds: clipped -2 (x = -3), 0, -0.5, 0.5, -0.5, 0, clipped 1, clipped -2 (x = -2.5).
    CHECK(ds == T(-2 + 0 - 0.5 + 0.5 - 0.5 + 0 + 1 - 2));
  }
  // The symmetric 2-bit grid of the same step: ternary, -1.5 and below clip to -1.
  const auto sym = make_grid<T>(2, T(1));
  CHECK(!sym.full());
  std::vector<T> wq(n);
  quant_fprop(n, w.data(), wq.data(), sym);
  check_values(wq, {-1, -1, -1, -0.0, 0, 1, 1, -1});
}

TEST_CASE_TEMPLATE("fractional mix and step kernels: SIMD equals the reference", T, float, double) {
  using namespace bitgrad;
  for (std::size_t n : sizes) {
    INFO("n = ", n);
    const auto w = normal<T>(n, 3 + static_cast<unsigned>(n));
    const auto gy = normal<T>(n, 9 + static_cast<unsigned>(n));
    for (int k : {1, 2, 5}) {
      const auto lo = make_grid<T>(k, T(2.5) / static_cast<T>(level_limit(k)));
      const auto hi = make_grid<T>(k + 1, T(2.5) / static_cast<T>(level_limit(k + 1)));
      for (T f : {T(0), T(0.3), T(0.75)}) {
        std::vector<T> a(n), b(n);
        frac_quant_fprop(n, w.data(), a.data(), lo, hi, f);
        ref::frac_quant_fprop(n, w.data(), b.data(), lo, hi, f);
        CHECK(within_ulps(a, b, 1));
        if (f == T(0)) CHECK(same_bits(a, b)); // no rounding in the mix at f = 0
        std::vector<T> ga = normal<T>(n, 1), gb = ga;
        const auto sa = frac_quant_bprop(n, w.data(), gy.data(), ga.data(), lo, hi, f);
        const auto sb = ref::frac_quant_bprop(n, w.data(), gy.data(), gb.data(), lo, hi, f);
        CHECK(within_ulps(ga, gb, 1));
        check_sum(sa.d_frac, sb.d_frac, n);
        check_sum(sa.d_scale_lo, sb.d_scale_lo, n);
        check_sum(sa.d_scale_hi, sb.d_scale_hi, n);
        // Without the scale sums: the same grad_w and d_frac, the scale sums zero.
        std::vector<T> gc = normal<T>(n, 1), gd = gc;
        const auto sc = frac_quant_bprop(n, w.data(), gy.data(), gc.data(), lo, hi, f, false);
        const auto sd = ref::frac_quant_bprop(n, w.data(), gy.data(), gd.data(), lo, hi, f, false);
        CHECK(same_bits(gc, ga));
        CHECK(same_bits(gd, gb));
        CHECK(same_bits(std::vector<T>{sc.d_frac}, std::vector<T>{sa.d_frac}));
        // The reference is plain C++: in GNU mode (-ffp-contract=fast) with FMA, GCC may contract
        // its d_frac += g (q_hi - q_lo) into an FMA in one of the loop's two versions (with and
        // without the scale sums) and not in the other, so its two sums agree to rounding only.
        // The SIMD kernel's operations are explicit: bit for bit above.
        check_sum(sd.d_frac, sb.d_frac, n);
        check_values(std::vector<T>{sc.d_scale_lo, sc.d_scale_hi, sd.d_scale_lo, sd.d_scale_hi},
                     {0, 0, 0, 0});
      }
    }
    std::vector<T> a(n), b(n);
    step_quant_fprop(n, w.data(), a.data(), T(0.21), T(1.3));
    ref::step_quant_fprop(n, w.data(), b.data(), T(0.21), T(1.3));
    CHECK(same_bits(a, b));
    std::vector<T> ga = normal<T>(n, 2), gb = ga;
    const auto sa = step_quant_bprop(n, w.data(), gy.data(), ga.data(), T(0.21), T(1.3));
    const auto sb = ref::step_quant_bprop(n, w.data(), gy.data(), gb.data(), T(0.21), T(1.3));
    CHECK(same_bits(ga, gb));
    check_sum(sa.d_step, sb.d_step, n);
    check_sum(sa.d_qmax, sb.d_qmax, n);

    const auto st = quant_abs_stats(n, w.data());
    const auto sr = ref::quant_abs_stats(n, w.data());
    CHECK(st.max_abs == sr.max_abs);
    check_sum(st.sum_abs, sr.sum_abs, n);
  }
}

TEST_CASE_TEMPLATE("rounding is half to even and clamps to the symmetric range", T, float, double) {
  using namespace bitgrad;
  // scale 0.5: w / s lands exactly on .5 ties.
  const std::vector<T> w = {T(0.25), T(0.75), T(1.25), T(-0.25), T(-0.75), T(5),
                            T(-5),   T(0),    T(1.75), T(-1.25), T(0.5),   T(100)};
  const std::vector<T> expect = {0, 2, 2, 0, -2, 3, -3, 0, 3, -2, 1, 3}; // codes, k = 3: L = 3
  const auto g = make_grid<T>(3, T(0.5));
  std::vector<T> a(w.size()), b(w.size());
  quant_fprop(w.size(), w.data(), a.data(), g);
  ref::quant_fprop(w.size(), w.data(), b.data(), g);
  for (std::size_t i = 0; i < w.size(); ++i) {
    INFO("w = ", w[i]);
    CHECK(a[i] == expect[i] * T(0.5));
    CHECK(b[i] == expect[i] * T(0.5));
  }
  // Sign grid: sign(0) = +1, dQ/ds = sign, STE inside |w| <= s.
  const auto sg = make_grid<T>(1, T(0.5));
  const std::vector<T> ws = {T(0), T(-0.1), T(0.4), T(-2)};
  std::vector<T> q(4), gw(4, T(0));
  const std::vector<T> gy(4, T(1));
  quant_fprop(4, ws.data(), q.data(), sg);
  check_values(q, {0.5, -0.5, 0.5, -0.5});
  const T ds = quant_bprop(4, ws.data(), gy.data(), gw.data(), sg);
  CHECK(ds == T(0)); // +1 - 1 + 1 - 1
  check_values(gw, {1, 1, 1, 0});
}

TEST_CASE_TEMPLATE("x = w * (1 / s) in every kernel, also where w / s is a tie", T, float, double) {
  using namespace bitgrad;
  // float: 0.0015f / 0.001f is exactly 1.5 (code 2) but 0.0015f * (1 / 0.001f) = 1.4999999
  // (code 1); double: 0.001 * 4.5 / 0.001 = 4.5 (code 4), times 1 / 0.001 4.500000000000001
  // (code 5). The kernels follow the reciprocal: the SIMD and reference kernels, the integer and
  // the fractional ones (at f = 0) and the export codes all agree.
  const bool is_float = sizeof(T) == sizeof(float);
  const T s = T(0.001);
  const T w0 = is_float ? s * T(1.5) : s * T(4.5);
  const std::int32_t code = is_float ? 1 : 5;
  REQUIRE(std::nearbyint(w0 / s) != static_cast<T>(code)); // division would round the other way
  REQUIRE(std::nearbyint(w0 * (T(1) / s)) == static_cast<T>(code));
  const auto g = make_grid<T>(4, s); // L = 7
  const auto hi = make_grid<T>(5, s);
  const std::size_t n = 37; // the tie in the vector body and in the ragged tail
  std::vector<T> w(n, T(0.0003));
  w[0] = w0;
  w[n - 1] = -w0;
  std::vector<T> a(n), b(n), c(n), d(n);
  quant_fprop(n, w.data(), a.data(), g);
  ref::quant_fprop(n, w.data(), b.data(), g);
  frac_quant_fprop(n, w.data(), c.data(), g, hi, T(0));
  ref::frac_quant_fprop(n, w.data(), d.data(), g, hi, T(0));
  std::vector<std::int32_t> codes(n);
  quant_codes(n, w.data(), codes.data(), g);
  CHECK(codes[0] == code);
  CHECK(codes[n - 1] == -code);
  for (const auto* v : {&a, &b, &c, &d}) {
    CHECK((*v)[0] == static_cast<T>(code) * s);
    CHECK((*v)[n - 1] == -static_cast<T>(code) * s);
  }
  CHECK(same_bits(a, b));
  CHECK(same_bits(a, c));
  CHECK(same_bits(a, d));
}

TEST_CASE_TEMPLATE("a NaN weight stays NaN on every kernel", T, float, double) {
  using namespace bitgrad;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::size_t n = 19;
  std::vector<T> w(n, T(0.4));
  w[3] = nan;
  w[n - 1] = nan; // ragged tail
  const auto lo = make_grid<T>(3, T(0.25)), hi = make_grid<T>(4, T(0.125));
  std::vector<T> a(n), b(n), c(n), d(n);
  quant_fprop(n, w.data(), a.data(), lo);
  ref::quant_fprop(n, w.data(), b.data(), lo);
  frac_quant_fprop(n, w.data(), c.data(), lo, hi, T(0.5));
  ref::frac_quant_fprop(n, w.data(), d.data(), lo, hi, T(0.5));
  for (const auto* v : {&a, &b, &c, &d}) {
    CHECK(std::isnan((*v)[3]));
    CHECK(std::isnan((*v)[n - 1]));
  }
  // The others as usual: 0.4 / 0.25 = 1.6 -> code 2 on lo (0.5); 0.4 / 0.125 = 3.2 -> 3 on hi
  // (0.375); the mix at f = 1/2 is 0.4375.
  CHECK(a[0] == T(0.5));
  CHECK(b[0] == T(0.5));
  CHECK(c[0] == T(0.4375));
  CHECK(d[0] == T(0.4375));
}

TEST_CASE_TEMPLATE("step quantizer values and straight-through gradients", T, float, double) {
  using namespace bitgrad;
  // d = 0.5, q_max = 1.2: w = 0.7 -> x = 1.4 -> code 1; w = 2 clipped to 1.2 -> x = 2.4 -> 2.
  const std::vector<T> w = {T(0.7), T(2), T(-3), T(0.1)};
  const std::vector<T> gy = {T(1), T(2), T(3), T(4)};
  std::vector<T> q(4), gw(4, T(0));
  step_quant_fprop(4, w.data(), q.data(), T(0.5), T(1.2));
  check_values(q, {0.5, 1, -1, 0});
  const auto s = step_quant_bprop(4, w.data(), gy.data(), gw.data(), T(0.5), T(1.2));
  check_values(gw, {1, 0, 0, 4});
  CHECK(s.d_qmax == doctest::Approx(2.0 - 3.0));
  // d_step = sum g (round(x) - x): 1(1 - 1.4) + 2(2 - 2.4) + 3(-2 + 2.4) + 4(0 - 0.2)
  CHECK(static_cast<double>(s.d_step) == doctest::Approx(-0.4 - 0.8 + 1.2 - 0.8).epsilon(1e-5));
}

} // namespace test_quant_kernels
