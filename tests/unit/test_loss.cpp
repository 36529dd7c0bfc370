// Losses against hand-computed values, their gradients against central finite differences in
// double, label smoothing, numerical stability, accuracy and error messages.
#include <bitgrad/nn/loss.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace test_loss {

using bitgrad::config_error;
using bitgrad::shape_error;
using bitgrad::tensor2;
namespace nn = bitgrad::nn;

namespace {

template <class T>
double eps_for() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

// softmax([1, 2, 3]) and log-sum-exp([1, 2, 3]) - 3, worked out once by hand.
constexpr double p1 = 0.09003057317038046, p2 = 0.24472847105479767, p3 = 0.6652409557748219;
constexpr double lse_minus_3 = 0.40760596444438013;

} // namespace

TEST_CASE_TEMPLATE("cross-entropy of logits [1, 2, 3] with label 2", T, float, double) {
  tensor2<T> z = {{1, 2, 3}};
  nn::softmax_cross_entropy<T> ce;
  T loss = ce.forward(z, {2});
  CHECK(double(loss) == doctest::Approx(lse_minus_3).epsilon(eps_for<T>()));
  const auto& p = ce.probabilities();
  CHECK(double(p(0, 0)) == doctest::Approx(p1).epsilon(eps_for<T>()));
  CHECK(double(p(0, 1)) == doctest::Approx(p2).epsilon(eps_for<T>()));
  CHECK(double(p(0, 2)) == doctest::Approx(p3).epsilon(eps_for<T>()));
  const tensor2<T>& g = ce.backward();
  CHECK(double(g(0, 0)) == doctest::Approx(p1).epsilon(eps_for<T>()));
  CHECK(double(g(0, 1)) == doctest::Approx(p2).epsilon(eps_for<T>()));
  CHECK(double(g(0, 2)) == doctest::Approx(p3 - 1).epsilon(eps_for<T>()));
}

TEST_CASE_TEMPLATE("cross-entropy is the mean over the batch", T, float, double) {
  tensor2<T> z = {{1, 2, 3}, {1, 2, 3}};
  nn::softmax_cross_entropy<T> ce;
  // row 0 label 2: 0.4076; row 1 label 0: 2.4076
  CHECK(double(ce.forward(z, {2, 0})) == doctest::Approx(lse_minus_3 + 1).epsilon(eps_for<T>()));
  const tensor2<T>& g = ce.backward();
  CHECK(double(g(0, 2)) == doctest::Approx((p3 - 1) / 2).epsilon(eps_for<T>()));
  CHECK(double(g(1, 0)) == doctest::Approx((p1 - 1) / 2).epsilon(eps_for<T>()));
  CHECK(double(g(1, 1)) == doctest::Approx(p2 / 2).epsilon(eps_for<T>()));
}

TEST_CASE_TEMPLATE("label smoothing: target (1 - eps) onehot + eps / C", T, float, double) {
  // eps = 0.3, C = 3, label 2: q = [0.1, 0.1, 0.8]; L = -sum q log p; dL/dz = p - q
  tensor2<T> z = {{1, 2, 3}};
  nn::softmax_cross_entropy<T> ce(0.3);
  T loss = ce.forward(z, {2});
  double want = -(0.1 * std::log(p1) + 0.1 * std::log(p2) + 0.8 * std::log(p3));
  CHECK(want == doctest::Approx(0.7076059644443804));
  CHECK(double(loss) == doctest::Approx(want).epsilon(eps_for<T>()));
  const tensor2<T>& g = ce.backward();
  CHECK(double(g(0, 0)) == doctest::Approx(p1 - 0.1).epsilon(eps_for<T>()));
  CHECK(double(g(0, 1)) == doctest::Approx(p2 - 0.1).epsilon(eps_for<T>()));
  CHECK(double(g(0, 2)) == doctest::Approx(p3 - 0.8).epsilon(eps_for<T>()));
}

TEST_CASE_TEMPLATE("cross-entropy is stable for large logits", T, float, double) {
  tensor2<T> z = {{1000, 0, -1000}, {1000, 1000, -1000}};
  nn::softmax_cross_entropy<T> ce;
  T loss = ce.forward(z, {1, 0});
  // row 0: 1000 - 0 = 1000 (p of label underflows to 0, its log does not); row 1: log 2
  CHECK(std::isfinite(loss));
  CHECK(double(loss) == doctest::Approx((1000 + std::log(2.0)) / 2).epsilon(eps_for<T>()));
  const tensor2<T>& g = ce.backward();
  for (std::size_t i = 0; i < g.size(); ++i) CHECK(std::isfinite(g.data()[i]));
  CHECK(double(g(0, 0)) == doctest::Approx(0.5));
  CHECK(double(g(0, 1)) == doctest::Approx(-0.5));
  CHECK(double(g(1, 0)) == doctest::Approx(-0.25));
  CHECK(double(g(1, 1)) == doctest::Approx(0.25));
  CHECK(double(ce.forward(z, {0, 0})) == doctest::Approx(std::log(2.0) / 2).epsilon(eps_for<T>()));
  // Smoothing adds eps/C * (max - z_c) terms: with eps = 0.3 and row {1000, 0, -1000}, label 0:
  // -sum q log p = 0.1 * (0 + 1000 + 2000) (log-sum-exp is 1000 up to e^-1000).
  nn::softmax_cross_entropy<T> smooth(0.3);
  tensor2<T> one = {{1000, 0, -1000}};
  CHECK(double(smooth.forward(one, {0})) == doctest::Approx(300.0).epsilon(eps_for<T>()));
}

TEST_CASE("cross-entropy gradient matches central finite differences") {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 2.0);
  for (double smoothing : {0.0, 0.1}) {
    tensor2<double> z = tensor2<double>::from_shape({4, 5});
    for (double& v : z) v = normal(rng);
    std::vector<std::int32_t> labels = {0, 3, 4, 3};
    nn::softmax_cross_entropy<double> ce(smoothing);
    ce.forward(z, labels);
    tensor2<double> g = ce.backward();
    const double h = 1e-5;
    for (std::size_t k = 0; k < z.size(); ++k) {
      double saved = z.data()[k];
      z.data()[k] = saved + h;
      double up = ce.forward(z, labels);
      z.data()[k] = saved - h;
      double down = ce.forward(z, labels);
      z.data()[k] = saved;
      CHECK(g.data()[k] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-7));
    }
  }
}

TEST_CASE_TEMPLATE("mean squared error", T, float, double) {
  tensor2<T> pred = {{1, 2}, {3, 4}};
  tensor2<T> target = {{0, 2}, {5, 4}};
  nn::mse_loss<T> mse;
  CHECK(double(mse.forward(pred, target)) == doctest::Approx(1.25)); // (1 + 0 + 4 + 0) / 4
  const tensor2<T>& g = mse.backward();                              // 2 (pred - target) / 4
  CHECK(g(0, 0) == T(0.5));
  CHECK(g(0, 1) == T(0));
  CHECK(g(1, 0) == T(-1));
  CHECK(g(1, 1) == T(0));
}

TEST_CASE("mean squared error gradient matches central finite differences") {
  tensor2<double> pred = {{0.3, -1.2, 2.0}, {0.7, 0.1, -0.4}};
  tensor2<double> target = {{1.0, -1.0, 0.5}, {0.0, 0.2, 0.3}};
  nn::mse_loss<double> mse;
  mse.forward(pred, target);
  tensor2<double> g = mse.backward();
  const double h = 1e-5;
  for (std::size_t k = 0; k < pred.size(); ++k) {
    double saved = pred.data()[k];
    pred.data()[k] = saved + h;
    double up = mse.forward(pred, target);
    pred.data()[k] = saved - h;
    double down = mse.forward(pred, target);
    pred.data()[k] = saved;
    CHECK(g.data()[k] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-8));
  }
}

TEST_CASE_TEMPLATE("count_correct and accuracy: argmax, ties to the lowest index", T, float,
                   double) {
  tensor2<T> z = {{1, 3, 3}, {5, 1, 0}, {0, 0, 0}};
  CHECK(nn::count_correct(z, {1, 0, 0}) == 3);
  CHECK(nn::count_correct(z, {2, 0, 1}) == 1);
  CHECK(nn::accuracy(z, {2, 0, 1}) == doctest::Approx(1.0 / 3));
  CHECK(nn::argmax_row(z, 0) == 1);
  CHECK_THROWS_AS(nn::count_correct(z, {0, 0}), shape_error);
}

TEST_CASE("losses reject bad labels, shapes and options with clear messages") {
  tensor2<float> z = {{1, 2, 3}, {0, 0, 0}};
  nn::softmax_cross_entropy<float> ce;
  CHECK_THROWS_WITH_AS(ce.forward(z, {0, 3}),
                       doctest::Contains("label 3 of sample 1 is outside [0, 3)"), config_error);
  CHECK_THROWS_WITH_AS(ce.forward(z, {0, -1}), doctest::Contains("label -1"), config_error);
  CHECK_THROWS_WITH_AS(ce.forward(z, {0}), doctest::Contains("1 labels for a batch of 2"),
                       shape_error);
  CHECK_THROWS_AS(ce.backward(), config_error); // no successful forward yet
  tensor2<float> empty = tensor2<float>::from_shape({0, 3});
  CHECK_THROWS_AS(ce.forward(empty, {}), shape_error);
  CHECK_THROWS_AS(nn::softmax_cross_entropy<float>(1.0), config_error);
  CHECK_THROWS_AS(nn::softmax_cross_entropy<float>(-0.1), config_error);

  nn::mse_loss<float> mse;
  tensor2<float> t = {{1, 2}, {3, 4}};
  CHECK_THROWS_WITH_AS(mse.forward(z, t), doctest::Contains("(2, 3)"), shape_error);
  CHECK_THROWS_AS(mse.backward(), config_error);
}

} // namespace test_loss
