// Elementwise kernels: ReLU/ReLU6 boundaries and ragged tails, bias gradient, channel mean and
// variance against a naive double computation, softmax cross-entropy against a hand case and
// finite differences; bias gradient and batch norm against their reference twins on odd shapes.
#include <bitgrad/kernels/batch_norm.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <doctest/doctest.h>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace test_elementwise {

namespace {
template <class T>
std::vector<T> ramp(std::size_t n, T lo, T step) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = lo + T(i) * step;
  return v;
}

/// Calls f(batch, channels, plane) for every shape of the batch-norm kernels' odd-shape tests:
/// batches 1-3, the given channel counts, planes of 1, 2, 7, 17 and 33 values (every SIMD tail).
template <class F>
void for_each_odd_shape(std::initializer_list<std::size_t> channel_counts, F&& f) {
  for (std::size_t batch : {1, 2, 3})
    for (std::size_t channels : channel_counts)
      for (std::size_t plane : {1, 2, 7, 17, 33}) {
        CAPTURE(batch);
        CAPTURE(channels);
        CAPTURE(plane);
        f(batch, channels, plane);
      }
}
} // namespace

TEST_CASE_TEMPLATE("relu and relu6 forward and backward at the boundaries", T, float, double) {
  std::vector<T> x{-1, 0, T(0.5), 6, T(6.5), 3}, y(6), dy{1, 2, 3, 4, 5, 6}, dx(6);
  bitgrad::relu_fprop(6, x.data(), y.data());
  CHECK(y == std::vector<T>{0, 0, 0.5, 6, 6.5, 3});
  bitgrad::relu_bprop(6, x.data(), dy.data(), dx.data());
  CHECK(dx == std::vector<T>{0, 0, 3, 4, 5, 6});
  bitgrad::relu6_fprop(6, x.data(), y.data());
  CHECK(y == std::vector<T>{0, 0, 0.5, 6, 6, 3});
  bitgrad::relu6_bprop(6, x.data(), dy.data(), dx.data());
  CHECK(dx == std::vector<T>{0, 0, 3, 0, 0, 6}); // 0 and 6 themselves pass nothing
}

TEST_CASE_TEMPLATE("relu and relu6 keep NaN, in the SIMD body and the tail, as the reference", T,
                   float, double) {
  // Issue #17: relu(NaN) was 0, so NaN data gave finite logits and a finite loss while the
  // weights' gradients were NaN. PyTorch's relu keeps NaN; so does bitgrad's.
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (std::size_t n = 1; n <= 70; ++n) {
    auto x = ramp<T>(n, T(-3.3), T(0.17));
    for (std::size_t i = 0; i < n; i += 5) x[i] = nan;
    x[n - 1] = nan; // the scalar tail
    if (n > 3) {
      x[1] = inf;
      x[2] = -inf;
    }
    for (int op = 0; op < 2; ++op) {
      std::vector<T> a(n), b(n);
      if (op == 0) {
        bitgrad::relu_fprop(n, x.data(), a.data());
        bitgrad::ref::relu_fprop(n, x.data(), b.data());
      } else {
        bitgrad::relu6_fprop(n, x.data(), a.data());
        bitgrad::ref::relu6_fprop(n, x.data(), b.data());
      }
      for (std::size_t i = 0; i < n; ++i) {
        CAPTURE(n);
        CAPTURE(op);
        CAPTURE(i);
        CHECK(std::isnan(a[i]) == std::isnan(x[i]));
        CHECK(std::isnan(b[i]) == std::isnan(x[i]));
        if (!std::isnan(x[i])) CHECK(a[i] == b[i]);
      }
      if (n > 3) {
        CHECK(a[1] == (op == 0 ? inf : T(6)));
        CHECK(a[2] == T(0));
      }
    }
  }
}

TEST_CASE_TEMPLATE("activations match the reference for every length 0..70 (ragged tails)", T,
                   float, double) {
  for (std::size_t n = 0; n <= 70; ++n) {
    auto x = ramp<T>(n, T(-3.3), T(0.17)); // crosses 0 and 6
    auto dy = ramp<T>(n, T(1), T(1));
    std::vector<T> a(n), b(n);
    bitgrad::relu_fprop(n, x.data(), a.data());
    bitgrad::ref::relu_fprop(n, x.data(), b.data());
    CHECK(a == b);
    bitgrad::relu_bprop(n, x.data(), dy.data(), a.data());
    bitgrad::ref::relu_bprop(n, x.data(), dy.data(), b.data());
    CHECK(a == b);
    std::vector<T> x6 = x;
    for (auto& v : x6) v *= T(3);
    bitgrad::relu6_fprop(n, x6.data(), a.data());
    bitgrad::ref::relu6_fprop(n, x6.data(), b.data());
    CHECK(a == b);
    bitgrad::relu6_bprop(n, x6.data(), dy.data(), a.data());
    bitgrad::ref::relu6_bprop(n, x6.data(), dy.data(), b.data());
    CHECK(a == b);
  }
  std::vector<T> inplace{-1, 2, -3, 4};
  bitgrad::relu_fprop(4, inplace.data(), inplace.data());
  CHECK(inplace == std::vector<T>{0, 2, 0, 4});
}

TEST_CASE_TEMPLATE("large activations split across threads match the reference exactly", T, float,
                   double) {
  // Above elementwise_parallel_min elements the pass is cut into per-thread chunks of whole
  // registers (the last takes the ragged tail); lengths around the threshold and odd tails.
  const std::size_t min = bitgrad::detail::elementwise_parallel_min;
  for (std::size_t n : {min - 1, min, min + 1, 3 * min + 13}) {
    auto x = ramp<T>(n, T(-7), T(14) / T(n)); // crosses 0 and 6
    auto dy = ramp<T>(n, T(1), T(0.5));
    std::vector<T> a(n), b(n);
    bitgrad::relu_fprop(n, x.data(), a.data());
    bitgrad::ref::relu_fprop(n, x.data(), b.data());
    CHECK(a == b);
    bitgrad::relu_bprop(n, x.data(), dy.data(), a.data());
    bitgrad::ref::relu_bprop(n, x.data(), dy.data(), b.data());
    CHECK(a == b);
    bitgrad::relu6_fprop(n, x.data(), a.data());
    bitgrad::ref::relu6_fprop(n, x.data(), b.data());
    CHECK(a == b);
    bitgrad::relu6_bprop(n, x.data(), dy.data(), a.data());
    bitgrad::ref::relu6_bprop(n, x.data(), dy.data(), b.data());
    CHECK(a == b);
    std::vector<T> inplace = x;
    bitgrad::relu_fprop(n, inplace.data(), inplace.data());
    bitgrad::ref::relu_fprop(n, x.data(), b.data());
    CHECK(inplace == b);
  }
}

TEST_CASE_TEMPLATE("bias_grad_rows accumulates column sums", T, float, double) {
  const std::size_t rows = 3, cols = 19;
  auto dy = ramp<T>(rows * cols, T(0), T(1));
  std::vector<T> db(cols, T(1));
  bitgrad::bias_grad_rows(rows, cols, dy.data(), db.data());
  for (std::size_t c = 0; c < cols; ++c)
    CHECK(db[c] == T(1 + 3 * c + 3 * cols)); // c + (c+19) + (c+38)
}

TEST_CASE_TEMPLATE("bias_grad_rows matches the reference on odd shapes (ragged tails)", T, float,
                   double) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> d(-2, 2);
  for (std::size_t rows : {1, 2, 5})
    for (std::size_t cols = 1; cols <= 37; ++cols) {
      std::vector<T> dy(rows * cols), a(cols), b(cols);
      for (auto& v : dy) v = T(d(rng));
      for (std::size_t c = 0; c < cols; ++c) a[c] = b[c] = T(d(rng)); // it accumulates
      bitgrad::bias_grad_rows(rows, cols, dy.data(), a.data());
      bitgrad::ref::bias_grad_rows(rows, cols, dy.data(), b.data());
      CAPTURE(rows);
      CAPTURE(cols);
      CHECK(a == b); // the same additions in the same order
    }
}

#if defined(BITGRAD_WITH_OPENMP)
TEST_CASE_TEMPLATE("bias_grad_rows on the threads: the serial bits and the reference", T, float,
                   double) {
  // Past elementwise_parallel_min, ragged column counts (the column runs end mid-register).
  std::mt19937 rng(6);
  std::uniform_real_distribution<double> d(-2, 2);
  const int saved = omp_get_max_threads();
  for (std::size_t cols : {std::size_t(257), std::size_t(1003)}) {
    const std::size_t rows = bitgrad::detail::elementwise_parallel_min / cols + 3;
    std::vector<T> dy(rows * cols), start(cols), ref(cols);
    for (auto& v : dy) v = T(d(rng));
    for (auto& v : start) v = T(d(rng));
    ref = start;
    bitgrad::ref::bias_grad_rows(rows, cols, dy.data(), ref.data());
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      std::vector<T> a = start;
      bitgrad::bias_grad_rows(rows, cols, dy.data(), a.data());
      CAPTURE(cols);
      CAPTURE(threads);
      CHECK(a == ref);
    }
  }
  omp_set_num_threads(saved);
}
#endif

namespace {
/// |a - b| <= tol (|b| + 1), element by element (a tolerance only for a compiler that contracts
/// a * b + c into one fused multiply-add in one of the two, as -march=native may).
template <class T>
void check_close(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(what);
    CAPTURE(i);
    CHECK(std::abs(double(a[i]) - double(b[i])) <= tol * (std::abs(double(b[i])) + 1));
  }
}

/// Random batch-norm operands: x and dy of `total` values, per channel mean, var > 0, gamma,
/// beta; drawn in this order from rng.
template <class T>
struct batch_norm_inputs {
  std::vector<T> x, dy, mean, var, gamma, beta;

  batch_norm_inputs(std::size_t total, std::size_t channels, std::mt19937& rng)
      : x(total), dy(total), mean(channels), var(channels), gamma(channels), beta(channels) {
    std::uniform_real_distribution<double> d(-2, 2), pos(0.1, 3);
    for (auto& v : x) v = T(d(rng));
    for (auto& v : dy) v = T(d(rng));
    for (std::size_t c = 0; c < channels; ++c) {
      mean[c] = T(d(rng));
      var[c] = T(pos(rng));
      gamma[c] = T(d(rng));
      beta[c] = T(d(rng));
    }
  }
};
} // namespace

TEST_CASE_TEMPLATE("batch norm kernels match the reference on odd shapes", T, float, double) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> d(-2, 2);
  for_each_odd_shape({1, 3, 5}, [&](std::size_t batch, std::size_t channels, std::size_t plane) {
    const std::size_t total = batch * channels * plane;
    auto [x, dy, mean, var, gamma, beta] = batch_norm_inputs<T>(total, channels, rng);
    const T eps = T(1e-5);
    std::vector<T> is_a(channels), is_b(channels), h_a(total), h_b(total), y_a(total), y_b(total);
    bitgrad::batch_norm_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps,
                              gamma.data(), beta.data(), is_a.data(), h_a.data(), y_a.data());
    bitgrad::ref::batch_norm_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps,
                                   gamma.data(), beta.data(), is_b.data(), h_b.data(), y_b.data());
    check_close(is_a, is_b, "inv_std");
    check_close(h_a, h_b, "xhat");
    check_close(y_a, y_b, "y");
    for (bool batch_stats : {true, false}) {
      CAPTURE(batch_stats);
      std::vector<T> dx_a(total), dx_b(total), dg_a(channels, T(0.5)), dg_b(dg_a),
          db_a(channels, T(-0.25)), db_b(db_a);
      bitgrad::batch_norm_bprop(batch, channels, plane, dy.data(), h_b.data(), gamma.data(),
                                is_b.data(), batch_stats, dx_a.data(), dg_a.data(), db_a.data());
      bitgrad::ref::batch_norm_bprop(batch, channels, plane, dy.data(), h_b.data(), gamma.data(),
                                     is_b.data(), batch_stats, dx_b.data(), dg_b.data(),
                                     db_b.data());
      check_close(dx_a, dx_b, "dx");
      check_close(dg_a, dg_b, "dgamma");
      check_close(db_a, db_b, "dbeta");
      // The two halves alone, with another count and sums (synchronised batch norm).
      std::vector<T> s_a(channels), sh_a(channels), s_b(channels), sh_b(channels);
      bitgrad::batch_norm_grad_sums(batch, channels, plane, dy.data(), h_b.data(), s_a.data(),
                                    sh_a.data());
      bitgrad::ref::batch_norm_grad_sums(batch, channels, plane, dy.data(), h_b.data(), s_b.data(),
                                         sh_b.data());
      check_close(s_a, s_b, "sum_dy");
      check_close(sh_a, sh_b, "sum_dy_xhat");
      for (std::size_t c = 0; c < channels; ++c) {
        s_b[c] = T(d(rng));
        sh_b[c] = T(d(rng));
      }
      const T count = T(3 * batch * plane + 1);
      bitgrad::batch_norm_dgrad(batch, channels, plane, dy.data(), h_b.data(), gamma.data(),
                                is_b.data(), count, s_b.data(), sh_b.data(), batch_stats,
                                dx_a.data());
      bitgrad::ref::batch_norm_dgrad(batch, channels, plane, dy.data(), h_b.data(), gamma.data(),
                                     is_b.data(), count, s_b.data(), sh_b.data(), batch_stats,
                                     dx_b.data());
      check_close(dx_a, dx_b, "dx from given sums");
    }
    std::vector<T> rm_a(channels, T(0.3)), rm_b(rm_a), rv_a(channels, T(1.5)), rv_b(rv_a);
    const T unbias = T(1.25);
    bitgrad::batch_norm_running_update(channels, T(0.1), unbias, mean.data(), var.data(),
                                       rm_a.data(), rv_a.data());
    bitgrad::ref::batch_norm_running_update(channels, T(0.1), unbias, mean.data(), var.data(),
                                            rm_b.data(), rv_b.data());
    check_close(rm_a, rm_b, "running_mean");
    check_close(rv_a, rv_b, "running_var");
  });
}

TEST_CASE_TEMPLATE("channel_mean_var matches a naive double computation, even with a big offset", T,
                   float, double) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> d(-1, 1);
  const std::size_t batch = 3, channels = 4, plane = 29;
  std::vector<T> x(batch * channels * plane);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = T(1000 + d(rng)); // large mean, small spread
  std::vector<T> mean(channels), var(channels);
  bitgrad::channel_mean_var(batch, channels, plane, x.data(), mean.data(), var.data());
  for (std::size_t c = 0; c < channels; ++c) {
    double m = 0, v = 0;
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) m += double(x[(n * channels + c) * plane + k]);
    m /= double(batch * plane);
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t k = 0; k < plane; ++k) {
        const double e = double(x[(n * channels + c) * plane + k]) - m;
        v += e * e;
      }
    v /= double(batch * plane);
    CHECK(double(mean[c]) == doctest::Approx(m).epsilon(1e-6));
    CHECK(double(var[c]) == doctest::Approx(v).epsilon(std::is_same_v<T, float> ? 2e-3 : 1e-9));
    CHECK(v > 0.2); // uniform(-1, 1) has variance 1/3: cancellation would show here
  }
}

TEST_CASE_TEMPLATE("softmax cross-entropy: hand case, smoothing, bad labels", T, float, double) {
  // logits (0, ln 2, ln 5) -> p = (1, 2, 5) / 8; label 2 -> loss = -ln(5/8)
  std::vector<T> z{0, T(std::log(2.0)), T(std::log(5.0)), 1000, 1000, 1000};
  std::vector<std::int32_t> labels{2, 0};
  std::vector<T> p(6), dz(6);
  const T loss = bitgrad::softmax_cross_entropy_fprop<T>(2, 3, z.data(), labels.data(), p.data());
  // second row: huge equal logits, p = 1/3 each (stable: no overflow), loss ln 3
  CHECK(loss == doctest::Approx((-std::log(5.0 / 8) + std::log(3.0)) / 2));
  CHECK(p[0] == doctest::Approx(1.0 / 8));
  CHECK(p[2] == doctest::Approx(5.0 / 8));
  CHECK(p[4] == doctest::Approx(1.0 / 3));
  bitgrad::softmax_cross_entropy_bprop<T>(2, 3, p.data(), labels.data(), dz.data());
  CHECK(dz[2] == doctest::Approx((5.0 / 8 - 1) / 2));
  CHECK(dz[0] == doctest::Approx((1.0 / 8) / 2));
  CHECK(dz[3] == doctest::Approx((1.0 / 3 - 1) / 2));

  // smoothing 0.3 on 3 classes: target (0.1, 0.1, 0.8) for label 2
  const T ls =
      bitgrad::softmax_cross_entropy_fprop<T>(1, 3, z.data(), labels.data(), p.data(), T(0.3));
  CHECK(ls == doctest::Approx(
                  -(0.1 * std::log(1.0 / 8) + 0.1 * std::log(2.0 / 8) + 0.8 * std::log(5.0 / 8))));
  const T lr =
      bitgrad::ref::softmax_cross_entropy_fprop<T>(1, 3, z.data(), labels.data(), p.data(), T(0.3));
  CHECK(ls == doctest::Approx(lr));

  std::vector<std::int32_t> bad{3};
  CHECK_THROWS_WITH_AS(
      bitgrad::softmax_cross_entropy_fprop<T>(1, 3, z.data(), bad.data(), p.data()),
      "softmax_cross_entropy: label 3 of sample 0 is out of range [0, 3)", bitgrad::config_error);
  bad[0] = -1;
  CHECK_THROWS_AS(bitgrad::softmax_cross_entropy_bprop<T>(1, 3, p.data(), bad.data(), dz.data()),
                  bitgrad::config_error);
}

TEST_CASE("softmax cross-entropy gradient matches finite differences (double)") {
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> d(-3, 3);
  const std::size_t batch = 3, classes = 7;
  std::vector<double> z(batch * classes), p(z.size()), dz(z.size()), scratch(z.size());
  for (auto& v : z) v = d(rng);
  std::vector<std::int32_t> labels{4, 0, 6};
  for (double smoothing : {0.0, 0.1}) {
    bitgrad::softmax_cross_entropy_fprop(batch, classes, z.data(), labels.data(), p.data(),
                                         smoothing);
    bitgrad::softmax_cross_entropy_bprop(batch, classes, p.data(), labels.data(), dz.data(),
                                         smoothing);
    const double h = 1e-6;
    for (std::size_t i = 0; i < z.size(); ++i) {
      auto zp = z, zm = z;
      zp[i] += h;
      zm[i] -= h;
      const double lp = bitgrad::softmax_cross_entropy_fprop(
          batch, classes, zp.data(), labels.data(), scratch.data(), smoothing);
      const double lm = bitgrad::softmax_cross_entropy_fprop(
          batch, classes, zm.data(), labels.data(), scratch.data(), smoothing);
      CHECK(dz[i] == doctest::Approx((lp - lm) / (2 * h)).epsilon(1e-6));
    }
  }
}

TEST_CASE_TEMPLATE("batch norm + relu kernels: the reference on odd shapes, and the same bits as "
                   "batch norm then relu",
                   T, float, double) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> d(-2, 2);
  for_each_odd_shape({1, 3, 5, 9}, [&](std::size_t batch, std::size_t channels, std::size_t plane) {
    const std::size_t total = batch * channels * plane;
    auto [x, dy, mean, var, gamma, beta] = batch_norm_inputs<T>(total, channels, rng);
    x[0] = mean[0]; // y = beta exactly at one point; with beta[0] = 0 the kink itself
    beta[0] = T(0);
    const T eps = T(1e-5);
    std::vector<T> is_a(channels), is_b(channels), h_a(total), h_b(total), y_a(total), y_b(total),
        y_plain(total), h_plain(total), is_plain(channels);
    bitgrad::batch_norm_relu_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps,
                                   gamma.data(), beta.data(), is_a.data(), h_a.data(), y_a.data());
    bitgrad::ref::batch_norm_relu_fprop(batch, channels, plane, x.data(), mean.data(), var.data(),
                                        eps, gamma.data(), beta.data(), is_b.data(), h_b.data(),
                                        y_b.data());
    check_close(is_a, is_b, "inv_std");
    check_close(h_a, h_b, "xhat");
    check_close(y_a, y_b, "relu(y)");
    // Unfused: batch_norm_fprop, then relu_fprop: the same bits.
    bitgrad::batch_norm_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps,
                              gamma.data(), beta.data(), is_plain.data(), h_plain.data(),
                              y_plain.data());
    std::vector<T> r_plain(total);
    bitgrad::relu_fprop(total, y_plain.data(), r_plain.data());
    CHECK(y_a == r_plain);
    CHECK(h_a == h_plain);
    std::size_t masked = 0;
    for (T v : y_a) masked += v > T(0) ? 0 : 1;
    CAPTURE(masked);
    for (bool batch_stats : {true, false}) {
      CAPTURE(batch_stats);
      std::vector<T> dx_a(total), dx_b(total), dg_a(channels, T(0.5)), dg_b(dg_a),
          db_a(channels, T(-0.25)), db_b(db_a);
      bitgrad::batch_norm_relu_bprop(batch, channels, plane, dy.data(), h_a.data(), y_a.data(),
                                     gamma.data(), is_a.data(), batch_stats, dx_a.data(),
                                     dg_a.data(), db_a.data());
      bitgrad::ref::batch_norm_relu_bprop(batch, channels, plane, dy.data(), h_a.data(), y_a.data(),
                                          gamma.data(), is_a.data(), batch_stats, dx_b.data(),
                                          dg_b.data(), db_b.data());
      check_close(dx_a, dx_b, "dx");
      check_close(dg_a, dg_b, "dgamma");
      check_close(db_a, db_b, "dbeta");
      // Unfused: relu_bprop, then batch_norm_bprop: the same bits.
      std::vector<T> dr(total), dx_p(total), dg_p(channels, T(0.5)), db_p(channels, T(-0.25));
      bitgrad::relu_bprop(total, y_plain.data(), dy.data(), dr.data());
      bitgrad::batch_norm_bprop(batch, channels, plane, dr.data(), h_plain.data(), gamma.data(),
                                is_plain.data(), batch_stats, dx_p.data(), dg_p.data(),
                                db_p.data());
      CHECK(dx_a == dx_p);
      CHECK(dg_a == dg_p);
      CHECK(db_a == db_p);
      // The two halves alone (synchronised batch norm), against the reference and the
      // unfused kernels on the masked dy.
      std::vector<T> s_a(channels), sh_a(channels), s_b(channels), sh_b(channels), s_p(channels),
          sh_p(channels);
      bitgrad::batch_norm_relu_grad_sums(batch, channels, plane, dy.data(), h_a.data(), y_a.data(),
                                         s_a.data(), sh_a.data());
      bitgrad::ref::batch_norm_relu_grad_sums(batch, channels, plane, dy.data(), h_a.data(),
                                              y_a.data(), s_b.data(), sh_b.data());
      bitgrad::batch_norm_grad_sums(batch, channels, plane, dr.data(), h_plain.data(), s_p.data(),
                                    sh_p.data());
      check_close(s_a, s_b, "sum_dy");
      check_close(sh_a, sh_b, "sum_dy_xhat");
      CHECK(s_a == s_p);
      CHECK(sh_a == sh_p);
      for (std::size_t c = 0; c < channels; ++c) {
        s_b[c] = T(d(rng));
        sh_b[c] = T(d(rng));
      }
      const T count = T(3 * batch * plane + 1);
      std::vector<T> dx_c(total);
      bitgrad::batch_norm_relu_dgrad(batch, channels, plane, dy.data(), h_a.data(), y_a.data(),
                                     gamma.data(), is_a.data(), count, s_b.data(), sh_b.data(),
                                     batch_stats, dx_a.data());
      bitgrad::ref::batch_norm_relu_dgrad(batch, channels, plane, dy.data(), h_a.data(), y_a.data(),
                                          gamma.data(), is_a.data(), count, s_b.data(), sh_b.data(),
                                          batch_stats, dx_b.data());
      bitgrad::batch_norm_dgrad(batch, channels, plane, dr.data(), h_plain.data(), gamma.data(),
                                is_plain.data(), count, s_b.data(), sh_b.data(), batch_stats,
                                dx_c.data());
      check_close(dx_a, dx_b, "dx from given sums");
      CHECK(dx_a == dx_c);
    }
  });
}

TEST_CASE_TEMPLATE("batch_norm_train_fprop: the bits of channel_mean_var then batch_norm_fprop, "
                   "the reference on odd shapes",
                   T, float, double) {
  std::mt19937 rng(17);
  for_each_odd_shape({1, 3, 5, 9}, [&](std::size_t batch, std::size_t channels, std::size_t plane) {
    if (batch * plane < 2) return;
    const std::size_t total = batch * channels * plane;
    auto [x, dy, mean, var, gamma, beta] = batch_norm_inputs<T>(total, channels, rng);
    for (T& v : x) v += T(3); // an offset the variance pass must remove
    const T eps = T(1e-5);
    for (bool relu : {false, true}) {
      CAPTURE(relu);
      auto train =
          relu ? bitgrad::batch_norm_relu_train_fprop<T> : bitgrad::batch_norm_train_fprop<T>;
      auto ref_train = relu ? bitgrad::ref::batch_norm_relu_train_fprop<T>
                            : bitgrad::ref::batch_norm_train_fprop<T>;
      auto fprop = relu ? bitgrad::batch_norm_relu_fprop<T> : bitgrad::batch_norm_fprop<T>;
      std::vector<T> m_a(channels), v_a(channels), is_a(channels), h_a(total), y_a(total),
          y_n(total), m_n(channels), v_n(channels), is_n(channels);
      train(batch, channels, plane, x.data(), eps, gamma.data(), beta.data(), m_a.data(),
            v_a.data(), is_a.data(), h_a.data(), y_a.data());
      train(batch, channels, plane, x.data(), eps, gamma.data(), beta.data(), m_n.data(),
            v_n.data(), is_n.data(), nullptr, y_n.data());
      // The two kernels one after the other.
      std::vector<T> m_s(channels), v_s(channels), is_s(channels), h_s(total), y_s(total);
      bitgrad::channel_mean_var(batch, channels, plane, x.data(), m_s.data(), v_s.data());
      fprop(batch, channels, plane, x.data(), m_s.data(), v_s.data(), eps, gamma.data(),
            beta.data(), is_s.data(), h_s.data(), y_s.data());
      CHECK(m_a == m_s);
      CHECK(v_a == v_s);
      CHECK(is_a == is_s);
      CHECK(h_a == h_s);
      CHECK(y_a == y_s);
      CHECK(m_n == m_s);
      CHECK(v_n == v_s);
      CHECK(is_n == is_s);
      CHECK(y_n == y_s);
      std::vector<T> m_r(channels), v_r(channels), is_r(channels), h_r(total), y_r(total);
      ref_train(batch, channels, plane, x.data(), eps, gamma.data(), beta.data(), m_r.data(),
                v_r.data(), is_r.data(), h_r.data(), y_r.data());
      check_close(m_a, m_r, "mean");
      check_close(v_a, v_r, "var");
      check_close(is_a, is_r, "inv_std");
      check_close(h_a, h_r, "xhat");
      check_close(y_a, y_r, "y");
    }
  });
}

TEST_CASE_TEMPLATE("batch norm backward kernels recompute xhat from x: the bits of the stored "
                   "xhat, the reference on odd shapes",
                   T, float, double) {
  std::mt19937 rng(13);
  std::uniform_real_distribution<double> d(-2, 2);
  for_each_odd_shape({1, 3, 5, 9}, [&](std::size_t batch, std::size_t channels, std::size_t plane) {
    const std::size_t total = batch * channels * plane;
    auto [x, dy, mean, var, gamma, beta] = batch_norm_inputs<T>(total, channels, rng);
    const T eps = T(1e-5);
    for (bool relu : {false, true}) {
      CAPTURE(relu);
      // Forward with and without the xhat store: the same y and inv_std.
      std::vector<T> is(channels), h(total), y(total), is_r(channels), h_r(total), y_n(total),
          is_n(channels);
      auto fprop = relu ? bitgrad::batch_norm_relu_fprop<T> : bitgrad::batch_norm_fprop<T>;
      auto ref_fprop =
          relu ? bitgrad::ref::batch_norm_relu_fprop<T> : bitgrad::ref::batch_norm_fprop<T>;
      fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps, gamma.data(),
            beta.data(), is.data(), h.data(), y.data());
      fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps, gamma.data(),
            beta.data(), is_n.data(), nullptr, y_n.data());
      CHECK(y_n == y);
      CHECK(is_n == is);
      // The reference's xhat is the oracle of the recomputed one.
      std::vector<T> y_r(total);
      ref_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps, gamma.data(),
                beta.data(), is_r.data(), h_r.data(), y_r.data());
      const bitgrad::batch_norm_xhat<T> from_x{
          .xhat = nullptr, .x = x.data(), .mean = mean.data(), .inv_std = is.data()};
      for (bool batch_stats : {true, false}) {
        CAPTURE(batch_stats);
        std::vector<T> dx_s(total), dx_x(total), dx_r(total), dg_s(channels, T(0.5)), dg_x(dg_s),
            dg_r(dg_s), db_s(channels, T(-0.25)), db_x(db_s), db_r(db_s);
        if (relu) {
          bitgrad::batch_norm_relu_bprop(batch, channels, plane, dy.data(), h.data(), y.data(),
                                         gamma.data(), is.data(), batch_stats, dx_s.data(),
                                         dg_s.data(), db_s.data());
          bitgrad::batch_norm_relu_bprop(batch, channels, plane, dy.data(), from_x, y.data(),
                                         gamma.data(), is.data(), batch_stats, dx_x.data(),
                                         dg_x.data(), db_x.data());
          bitgrad::ref::batch_norm_relu_bprop(batch, channels, plane, dy.data(), h_r.data(),
                                              y_r.data(), gamma.data(), is_r.data(), batch_stats,
                                              dx_r.data(), dg_r.data(), db_r.data());
        } else {
          bitgrad::batch_norm_bprop(batch, channels, plane, dy.data(), h.data(), gamma.data(),
                                    is.data(), batch_stats, dx_s.data(), dg_s.data(), db_s.data());
          bitgrad::batch_norm_bprop(batch, channels, plane, dy.data(), from_x, gamma.data(),
                                    is.data(), batch_stats, dx_x.data(), dg_x.data(), db_x.data());
          bitgrad::ref::batch_norm_bprop(batch, channels, plane, dy.data(), h_r.data(),
                                         gamma.data(), is_r.data(), batch_stats, dx_r.data(),
                                         dg_r.data(), db_r.data());
        }
        CHECK(dx_x == dx_s);
        CHECK(dg_x == dg_s);
        CHECK(db_x == db_s);
        check_close(dx_x, dx_r, "dx");
        check_close(dg_x, dg_r, "dgamma");
        check_close(db_x, db_r, "dbeta");
        // The two halves (synchronised batch norm).
        std::vector<T> s_s(channels), sh_s(channels), s_x(channels), sh_x(channels), s_r(channels),
            sh_r(channels);
        if (relu) {
          bitgrad::batch_norm_relu_grad_sums(batch, channels, plane, dy.data(), h.data(), y.data(),
                                             s_s.data(), sh_s.data());
          bitgrad::batch_norm_relu_grad_sums(batch, channels, plane, dy.data(), from_x, y.data(),
                                             s_x.data(), sh_x.data());
          bitgrad::ref::batch_norm_relu_grad_sums(batch, channels, plane, dy.data(), h_r.data(),
                                                  y_r.data(), s_r.data(), sh_r.data());
        } else {
          bitgrad::batch_norm_grad_sums(batch, channels, plane, dy.data(), h.data(), s_s.data(),
                                        sh_s.data());
          bitgrad::batch_norm_grad_sums(batch, channels, plane, dy.data(), from_x, s_x.data(),
                                        sh_x.data());
          bitgrad::ref::batch_norm_grad_sums(batch, channels, plane, dy.data(), h_r.data(),
                                             s_r.data(), sh_r.data());
        }
        CHECK(s_x == s_s);
        CHECK(sh_x == sh_s);
        check_close(s_x, s_r, "sum_dy");
        check_close(sh_x, sh_r, "sum_dy_xhat");
        for (std::size_t c = 0; c < channels; ++c) {
          s_s[c] = T(d(rng));
          sh_s[c] = T(d(rng));
        }
        const T count = T(3 * batch * plane + 1);
        if (relu) {
          bitgrad::batch_norm_relu_dgrad(batch, channels, plane, dy.data(), h.data(), y.data(),
                                         gamma.data(), is.data(), count, s_s.data(), sh_s.data(),
                                         batch_stats, dx_s.data());
          bitgrad::batch_norm_relu_dgrad(batch, channels, plane, dy.data(), from_x, y.data(),
                                         gamma.data(), is.data(), count, s_s.data(), sh_s.data(),
                                         batch_stats, dx_x.data());
          bitgrad::ref::batch_norm_relu_dgrad(batch, channels, plane, dy.data(), h_r.data(),
                                              y_r.data(), gamma.data(), is_r.data(), count,
                                              s_s.data(), sh_s.data(), batch_stats, dx_r.data());
        } else {
          bitgrad::batch_norm_dgrad(batch, channels, plane, dy.data(), h.data(), gamma.data(),
                                    is.data(), count, s_s.data(), sh_s.data(), batch_stats,
                                    dx_s.data());
          bitgrad::batch_norm_dgrad(batch, channels, plane, dy.data(), from_x, gamma.data(),
                                    is.data(), count, s_s.data(), sh_s.data(), batch_stats,
                                    dx_x.data());
          bitgrad::ref::batch_norm_dgrad(batch, channels, plane, dy.data(), h_r.data(),
                                         gamma.data(), is_r.data(), count, s_s.data(), sh_s.data(),
                                         batch_stats, dx_r.data());
        }
        CHECK(dx_x == dx_s);
        check_close(dx_x, dx_r, "dx from given sums");
      }
    }
  });
}

TEST_CASE_TEMPLATE("batch_norm_bprop run channel by channel: the bits of batch_norm_grad_sums then "
                   "batch_norm_dgrad, in groups of 4 and one channel at a time",
                   T, float, double) {
  // 7 channels: a group of four and three single ones while a group's operands fit
  // batch_norm_bprop_group_bytes (the small planes), single channels past it (3 x 5477 values
  // of 2 or 3 arrays, even in float); xhat stored and recomputed from x, with and without the
  // ReLU, batch and running statistics; dx may alias dy (in place).
  std::mt19937 rng(29);
  const std::size_t channels = 7;
  for (std::size_t batch : {1, 3})
    for (std::size_t plane : {1, 7, 33, 5477}) {
      CAPTURE(batch);
      CAPTURE(plane);
      const std::size_t total = batch * channels * plane;
      auto [x, dy, mean, var, gamma, beta] = batch_norm_inputs<T>(total, channels, rng);
      std::vector<T> is(channels), h(total), y(total);
      bitgrad::batch_norm_relu_fprop(batch, channels, plane, x.data(), mean.data(), var.data(),
                                     T(1e-5), gamma.data(), beta.data(), is.data(), h.data(),
                                     y.data());
      const bitgrad::batch_norm_xhat<T> stored{.xhat = h.data()};
      const bitgrad::batch_norm_xhat<T> from_x{
          .xhat = nullptr, .x = x.data(), .mean = mean.data(), .inv_std = is.data()};
      for (bool relu : {false, true})
        for (bool batch_stats : {false, true})
          for (const auto& src : {stored, from_x}) {
            CAPTURE(relu);
            CAPTURE(batch_stats);
            CAPTURE(src.xhat != nullptr);
            std::vector<T> dx(total), dg(channels, T(0.5)), db(channels, T(-0.25));
            std::vector<T> s(channels), sh(channels), dx_two(total);
            std::vector<T> inplace = dy, dg_in = dg, db_in = db;
            const T count = T(batch * plane);
            if (relu) {
              bitgrad::batch_norm_relu_bprop(batch, channels, plane, dy.data(), src, y.data(),
                                             gamma.data(), is.data(), batch_stats, dx.data(),
                                             dg.data(), db.data());
              bitgrad::batch_norm_relu_bprop(batch, channels, plane, inplace.data(), src, y.data(),
                                             gamma.data(), is.data(), batch_stats, inplace.data(),
                                             dg_in.data(), db_in.data());
              bitgrad::batch_norm_relu_grad_sums(batch, channels, plane, dy.data(), src, y.data(),
                                                 s.data(), sh.data());
              bitgrad::batch_norm_relu_dgrad(batch, channels, plane, dy.data(), src, y.data(),
                                             gamma.data(), is.data(), count, s.data(), sh.data(),
                                             batch_stats, dx_two.data());
            } else {
              bitgrad::batch_norm_bprop(batch, channels, plane, dy.data(), src, gamma.data(),
                                        is.data(), batch_stats, dx.data(), dg.data(), db.data());
              bitgrad::batch_norm_bprop(batch, channels, plane, inplace.data(), src, gamma.data(),
                                        is.data(), batch_stats, inplace.data(), dg_in.data(),
                                        db_in.data());
              bitgrad::batch_norm_grad_sums(batch, channels, plane, dy.data(), src, s.data(),
                                            sh.data());
              bitgrad::batch_norm_dgrad(batch, channels, plane, dy.data(), src, gamma.data(),
                                        is.data(), count, s.data(), sh.data(), batch_stats,
                                        dx_two.data());
            }
            CHECK(dx == dx_two);
            CHECK(inplace == dx_two);
            for (std::size_t c = 0; c < channels; ++c) {
              CHECK(dg[c] == T(0.5) + sh[c]);
              CHECK(db[c] == T(-0.25) + s[c]);
            }
            CHECK(dg_in == dg);
            CHECK(db_in == db);
          }
    }
}

TEST_CASE_TEMPLATE("batch norm + skip + relu forward: the reference on odd shapes, and the same "
                   "bits as batch norm, the addition, then relu",
                   T, float, double) {
  std::mt19937 rng(31);
  std::uniform_real_distribution<double> d(-2, 2);
  for_each_odd_shape({1, 3, 5, 9}, [&](std::size_t batch, std::size_t channels, std::size_t plane) {
    const std::size_t total = batch * channels * plane;
    auto [x, dy, mean, var, gamma, beta] = batch_norm_inputs<T>(total, channels, rng);
    std::vector<T> skip(total);
    for (auto& v : skip) v = T(d(rng));
    const T eps = T(1e-5);
    for (bool train : {false, true})
      for (bool store : {false, true}) {
        CAPTURE(train);
        CAPTURE(store);
        std::vector<T> m_f = mean, v_f = var, m_u = mean, v_u = var, m_r = mean, v_r = var;
        std::vector<T> is_f(channels), is_u(channels), is_r(channels), h_f(total), h_u(total),
            h_r(total), y_f(total), y_u(total), y_r(total);
        T* const hf = store ? h_f.data() : nullptr;
        if (train) {
          bitgrad::batch_norm_add_relu_train_fprop(batch, channels, plane, x.data(), skip.data(),
                                                   eps, gamma.data(), beta.data(), m_f.data(),
                                                   v_f.data(), is_f.data(), hf, y_f.data());
          bitgrad::batch_norm_train_fprop(batch, channels, plane, x.data(), eps, gamma.data(),
                                          beta.data(), m_u.data(), v_u.data(), is_u.data(),
                                          h_u.data(), y_u.data());
          bitgrad::ref::batch_norm_add_relu_train_fprop(
              batch, channels, plane, x.data(), skip.data(), eps, gamma.data(), beta.data(),
              m_r.data(), v_r.data(), is_r.data(), h_r.data(), y_r.data());
        } else {
          bitgrad::batch_norm_add_relu_fprop(batch, channels, plane, x.data(), skip.data(),
                                             mean.data(), var.data(), eps, gamma.data(),
                                             beta.data(), is_f.data(), hf, y_f.data());
          bitgrad::batch_norm_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), eps,
                                    gamma.data(), beta.data(), is_u.data(), h_u.data(), y_u.data());
          bitgrad::ref::batch_norm_add_relu_fprop(batch, channels, plane, x.data(), skip.data(),
                                                  mean.data(), var.data(), eps, gamma.data(),
                                                  beta.data(), is_r.data(), h_r.data(), y_r.data());
        }
        // Unfused: the addition, then relu_fprop, over batch norm's output.
        for (std::size_t i = 0; i < total; ++i) y_u[i] = y_u[i] + skip[i];
        std::vector<T> y_relu(total);
        bitgrad::relu_fprop(total, y_u.data(), y_relu.data());
        CHECK(y_f == y_relu);
        CHECK(is_f == is_u);
        CHECK(m_f == m_u);
        CHECK(v_f == v_u);
        if (store) CHECK(h_f == h_u);
        check_close(y_f, y_r, "y");
        check_close(is_f, is_r, "inv_std");
        if (store) check_close(h_f, h_r, "xhat");
      }
  });
}

#if defined(BITGRAD_WITH_OPENMP)
TEST_CASE("batch norm kernels: the same bits on 1, 2 and 3 threads (parallel over channels)") {
  // 32 * 7 * 2401 = 537824 values: above batch_norm_parallel_min() with sleeping threads too
  // (ctest runs OMP_WAIT_POLICY=passive); 7 channels: runs of 3 and 4 channels on 2 threads
  // (a group of four side by side, and single ones).
  const std::size_t batch = 32, channels = 7, plane = 2401, total = batch * channels * plane;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> d(-2, 2), pos(0.1f, 3);
  std::vector<float> x(total), dy(total), mean(channels), var(channels), gamma(channels),
      beta(channels);
  for (auto& v : x) v = d(rng);
  for (auto& v : dy) v = d(rng);
  for (std::size_t c = 0; c < channels; ++c) {
    var[c] = pos(rng);
    gamma[c] = d(rng);
    beta[c] = d(rng);
  }
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> first;
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    omp_set_num_threads(threads);
    std::vector<float> m(channels), v(channels), is(channels), h(total), y(total), dx(total),
        dg(channels, 0.f), db(channels, 0.f), hr(total), yr(total), dxr(total), dgr(channels, 0.f),
        dbr(channels, 0.f);
    bitgrad::channel_mean_var(batch, channels, plane, x.data(), m.data(), v.data());
    std::vector<float> tm(channels), tv(channels), tis(channels), ty(total), tyr(total);
    bitgrad::batch_norm_train_fprop(batch, channels, plane, x.data(), 1e-5f, gamma.data(),
                                    beta.data(), tm.data(), tv.data(), tis.data(),
                                    static_cast<float*>(nullptr), ty.data());
    bitgrad::batch_norm_relu_train_fprop(batch, channels, plane, x.data(), 1e-5f, gamma.data(),
                                         beta.data(), tm.data(), tv.data(), tis.data(),
                                         static_cast<float*>(nullptr), tyr.data());
    bitgrad::batch_norm_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), 1e-5f,
                              gamma.data(), beta.data(), is.data(), h.data(), y.data());
    bitgrad::batch_norm_bprop(batch, channels, plane, dy.data(), h.data(), gamma.data(), is.data(),
                              true, dx.data(), dg.data(), db.data());
    bitgrad::batch_norm_relu_fprop(batch, channels, plane, x.data(), mean.data(), var.data(), 1e-5f,
                                   gamma.data(), beta.data(), is.data(), hr.data(), yr.data());
    bitgrad::batch_norm_relu_bprop(batch, channels, plane, dy.data(), hr.data(), yr.data(),
                                   gamma.data(), is.data(), true, dxr.data(), dgr.data(),
                                   dbr.data());
    const std::vector<std::vector<float>> all{m,   v,   h,   y,  dx, dg,  db, hr, yr,
                                              dxr, dgr, dbr, tm, tv, tis, ty, tyr};
    if (first.empty())
      first = all;
    else
      for (std::size_t i = 0; i < all.size(); ++i) {
        CAPTURE(i);
        CHECK(all[i] == first[i]);
      }
  }
  omp_set_num_threads(saved);
}
#endif

} // namespace test_elementwise
