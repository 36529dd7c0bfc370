// Sensitivity diagnostics: Spearman's rho on hand cases, the exact per-group sensitivity of a
// tiny network against an independent hand loop, the estimate's bookkeeping, and the agreement
// of the cheap estimate with the exact sensitivity on a LeNet-5 trained with noise_bits on the
// committed Fashion-MNIST sample.
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/quant/budget.hpp>
#include <bitgrad/quant/noise_bits.hpp>
#include <bitgrad/quant/penalty.hpp>
#include <bitgrad/quant/step_bits.hpp>
#include <bitgrad/train/model_info.hpp>
#include <bitgrad/train/sensitivity.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace test_sensitivity {

using namespace bitgrad;
using train::labelled_batch;

namespace {

const double nan_v = std::numeric_limits<double>::quiet_NaN();

template <class T>
typename quant::noise_bits<T>::options nopt(std::size_t gs, double b_init) {
  typename quant::noise_bits<T>::options o;
  o.group_size = gs;
  o.b_init = b_init;
  o.seed = 3;
  return o;
}

} // namespace

TEST_CASE("spearman: hand cases, ties by average rank") {
  using train::spearman;
  const std::vector<double> x{1, 2, 3, 4, 5};
  CHECK(spearman(x, std::vector<double>{2, 4, 8, 16, 32}) == doctest::Approx(1.0));
  CHECK(spearman(x, std::vector<double>{5, 4, 3, 2, 1}) == doctest::Approx(-1.0));
  // y ranks {1, 2, 3.5, 5, 3.5}: rho = 8 / sqrt(10 * 9.5)
  CHECK(spearman(x, std::vector<double>{5, 6, 7, 8, 7}) ==
        doctest::Approx(8 / std::sqrt(95.0)).epsilon(1e-12));
  // ties on both sides: ranks {1, 2.5, 2.5, 4} and {1, 3, 2, 4}: rho = 4.5 / sqrt(4.5 * 5)
  CHECK(spearman(std::vector<double>{1, 2, 2, 3}, std::vector<double>{1, 3, 2, 4}) ==
        doctest::Approx(3 / std::sqrt(10.0)).epsilon(1e-12));
  CHECK(train::average_ranks(std::vector<double>{10, 20, 10, 30, 20, 20}) ==
        std::vector<double>{1.5, 4, 1.5, 6, 4, 4});
  // NaN pairs are left out; constant sides and too few pairs give NaN.
  CHECK(spearman(std::vector<double>{1, nan_v, 3, 2}, std::vector<double>{10, 0, 30, 20}) ==
        doctest::Approx(1.0));
  CHECK(std::isnan(spearman(std::vector<double>{1, 1, 1}, std::vector<double>{1, 2, 3})));
  CHECK(std::isnan(spearman(std::vector<double>{1, nan_v}, std::vector<double>{1, 2})));
  CHECK_THROWS_AS(spearman(std::vector<double>{1, 2}, std::vector<double>{1, 2, 3}), config_error);
}

namespace {

using tiny_net =
    decltype(nn::sequential(nn::linear<double, quant::noise_bits>({}, {}), nn::relu<double, 2>("r"),
                            nn::linear<double, quant::noise_bits>({}, {})));

tiny_net make_tiny() {
  return nn::sequential(
      nn::linear<double, quant::noise_bits>(
          {.in_features = 4, .out_features = 5, .bias = true, .seed = 1, .name = "fc1"},
          nopt<double>(1, 6.0)),
      nn::relu<double, 2>("relu"),
      nn::linear<double, quant::noise_bits>(
          {.in_features = 5, .out_features = 3, .bias = true, .seed = 2, .name = "fc2"},
          nopt<double>(2, 6.0)));
}

std::vector<labelled_batch<tensor2<double>>> tiny_batches() {
  std::mt19937 gen(5);
  std::normal_distribution<double> d(0, 1);
  std::vector<labelled_batch<tensor2<double>>> out;
  for (std::size_t rows : {3u, 4u}) {
    labelled_batch<tensor2<double>> b{tensor2<double>::from_shape({rows, 4}), {}};
    for (std::size_t i = 0; i < b.x.size(); ++i) b.x.data()[i] = d(gen);
    for (std::size_t r = 0; r < rows; ++r) b.labels.push_back(static_cast<std::int32_t>(r % 3));
    out.push_back(std::move(b));
  }
  return out;
}

/// Symmetric quantization by hand: rows [c0, c1) of W (per_channel columns) at k bits.
void quantize_rows(const double* w, double* q, std::size_t c0, std::size_t c1, std::size_t cols,
                   int k) {
  double mx = 0, sum = 0;
  for (std::size_t i = c0 * cols; i < c1 * cols; ++i) {
    mx = std::max(mx, std::abs(w[i]));
    sum += std::abs(w[i]);
  }
  for (std::size_t i = c0 * cols; i < c1 * cols; ++i) {
    if (k == 1) {
      q[i] = sum / static_cast<double>((c1 - c0) * cols) * (w[i] >= 0 ? 1.0 : -1.0);
    } else {
      const double lim = std::ldexp(1.0, k - 1) - 1, s = mx / lim;
      q[i] = s * std::nearbyint(w[i] / s);
    }
  }
}

/// The mean cross-entropy of the two-layer network by hand, at the given bits per group.
double hand_loss(tiny_net& net, const std::vector<labelled_batch<tensor2<double>>>& batches,
                 const std::vector<int>& bits1, const std::vector<int>& bits2) {
  auto& l1 = net.get<0>();
  auto& l2 = net.get<2>();
  std::vector<double> q1(20), q2(15);
  for (std::size_t g = 0; g < 5; ++g)
    quantize_rows(l1.weight().data(), q1.data(), g, g + 1, 4, bits1[g]);
  for (std::size_t g = 0; g < 2; ++g)
    quantize_rows(l2.weight().data(), q2.data(), 2 * g, std::min<std::size_t>(2 * g + 2, 3), 5,
                  bits2[g]);
  double total = 0;
  std::size_t images = 0;
  for (const auto& b : batches) {
    for (std::size_t r = 0; r < b.labels.size(); ++r) {
      double h[5], z[3];
      for (std::size_t o = 0; o < 5; ++o) {
        double a = l1.bias()(o);
        for (std::size_t i = 0; i < 4; ++i) a += q1[o * 4 + i] * b.x(r, i);
        h[o] = std::max(a, 0.0);
      }
      for (std::size_t o = 0; o < 3; ++o) {
        z[o] = l2.bias()(o);
        for (std::size_t i = 0; i < 5; ++i) z[o] += q2[o * 5 + i] * h[i];
      }
      const double m = std::max({z[0], z[1], z[2]});
      const double lse = m + std::log(std::exp(z[0] - m) + std::exp(z[1] - m) + std::exp(z[2] - m));
      total += lse - z[b.labels[r]];
      ++images;
    }
  }
  return total / static_cast<double>(images);
}

} // namespace

TEST_CASE("sensitivity stops at the policy's lowest bitwidth: step_bits groups at 2 bits") {
  // Issue #18: the floor was a hard-coded 1 bit, so lowering a step_bits group from 2 to 1 bit
  // threw (step_bits has no 1-bit grid) and examples/pareto.cpp carried its own copy.
  auto make = [](std::size_t in, std::size_t out, std::uint64_t seed, const char* name) {
    return nn::linear<double, quant::step_bits>(
        {.in_features = in, .out_features = out, .bias = true, .seed = seed, .name = name},
        {.group_size = 1, .b_min = 2, .b_max = 8, .b_init = 6.0});
  };
  auto net =
      nn::sequential(make(4, 5, 1, "fc1"), nn::relu<double, 2>("relu"), make(5, 3, 2, "fc2"));
  const auto batches = tiny_batches();
  const std::vector<int> bits1{2, 3, 2, 4, 5}, bits2{3, 2, 2};
  net.get<0>().quantizer().freeze_to(bits1);
  net.get<2>().quantizer().freeze_to(bits2);
  const double base = train::mean_loss(net, batches);
  const auto s = train::exact_sensitivity(net, batches);
  const auto est = train::estimated_sensitivity(net, batches);
  REQUIRE(s.size() == 2);
  REQUIRE(est.size() == 2);
  for (std::size_t g = 0; g < bits1.size(); ++g) {
    CAPTURE(g);
    CHECK(std::isnan(s[0][g]) == (bits1[g] == 2));
    CHECK(std::isnan(est[0][g]) == (bits1[g] == 2));
    if (bits1[g] == 2) continue;
    auto lower = bits1;
    --lower[g];
    net.get<0>().quantizer().freeze_to(lower);
    const double lowered = train::mean_loss(net, batches);
    net.get<0>().quantizer().freeze_to(bits1);
    CHECK(s[0][g] == doctest::Approx(lowered - base).epsilon(1e-12));
  }
  CHECK(std::isnan(s[1][1]));
  CHECK(std::isfinite(s[1][0]));
  CHECK(net.get<0>().quantizer().frozen_bits() == bits1); // left as it was
}

TEST_CASE("exact sensitivity of a tiny network matches a hand loop") {
  tiny_net net = make_tiny();
  const auto batches = tiny_batches();
  const std::vector<int> bits1{3, 1, 4, 2, 3}, bits2{2, 5};
  net.get<0>().quantizer().freeze_to(bits1);
  net.get<2>().quantizer().freeze_to(bits2);
  net.train(true);

  const double base = hand_loss(net, batches, bits1, bits2);
  CHECK(train::mean_loss(net, batches) == doctest::Approx(base).epsilon(1e-12));
  const auto s = train::exact_sensitivity(net, batches);
  REQUIRE(s.size() == 2);
  REQUIRE(s[0].size() == 5);
  REQUIRE(s[1].size() == 2);
  for (std::size_t g = 0; g < 5; ++g) {
    CAPTURE(g);
    if (bits1[g] == 1) {
      CHECK(std::isnan(s[0][g])); // one bit cannot lose a bit
      continue;
    }
    auto lower = bits1;
    --lower[g];
    CHECK(s[0][g] == doctest::Approx(hand_loss(net, batches, lower, bits2) - base).epsilon(1e-9));
  }
  for (std::size_t g = 0; g < 2; ++g) {
    auto lower = bits2;
    --lower[g];
    CHECK(s[1][g] == doctest::Approx(hand_loss(net, batches, bits1, lower) - base).epsilon(1e-9));
  }
  // The network is left as it was.
  CHECK(net.get<0>().quantizer().frozen_bits() == bits1);
  CHECK(net.get<2>().quantizer().frozen_bits() == bits2);
  CHECK(net.training());

  // The first-order estimate is |gbar . d| with gbar the image-weighted mean weight gradient.
  const auto est =
      train::estimated_sensitivity(net, batches, train::sensitivity_estimate::first_order);
  const auto fis = train::estimated_sensitivity(net, batches, train::sensitivity_estimate::fisher);
  const auto tay = train::estimated_sensitivity(net, batches, train::sensitivity_estimate::taylor);
  std::vector<double> gbar(15, 0.0), fisher(15, 0.0);
  nn::softmax_cross_entropy<double> loss;
  net.train(false);
  for (const auto& b : batches) {
    net.zero_grad();
    loss.forward(net.forward(b.x), b.labels);
    net.backward(loss.backward());
    const double nb = static_cast<double>(b.labels.size());
    for (std::size_t i = 0; i < 15; ++i) {
      const double g = net.get<2>().weight_grad().data()[i];
      gbar[i] += nb / 7.0 * g;
      fisher[i] += nb / 7.0 * nb * g * g;
    }
  }
  std::vector<double> qk(15), ql(15);
  const double* w2 = net.get<2>().weight().data();
  for (std::size_t g = 0; g < 2; ++g) {
    const std::size_t c0 = 2 * g, c1 = std::min<std::size_t>(2 * g + 2, 3);
    quantize_rows(w2, qk.data(), c0, c1, 5, bits2[g]);
    quantize_rows(w2, ql.data(), c0, c1, 5, bits2[g] - 1);
    double first = 0, second = 0;
    for (std::size_t i = c0 * 5; i < c1 * 5; ++i) {
      first += gbar[i] * (ql[i] - qk[i]);
      second += 0.5 * fisher[i] * (ql[i] - qk[i]) * (ql[i] - qk[i]);
    }
    CHECK(est[1][g] == doctest::Approx(std::abs(first)).epsilon(1e-9));
    CHECK(fis[1][g] == doctest::Approx(second).epsilon(1e-9));
    CHECK(tay[1][g] == doctest::Approx(first + second).epsilon(1e-9));
  }
  CHECK(std::isnan(tay[0][1]));

  // A network that is not frozen is refused.
  tiny_net loose = make_tiny();
  CHECK_THROWS_AS(train::exact_sensitivity(loose, batches), config_error);
}

TEST_CASE("the cheap estimate agrees with the exact sensitivity on a trained LeNet-5") {
  const std::string dir = BITGRAD_TEST_DATA_DIR "/fashion-sample/";
  const dataset train_set =
      load_mnist_format(dir + "train-images-idx3-ubyte.gz", dir + "train-labels-idx1-ubyte.gz");
  const dataset test_set =
      load_mnist_format(dir + "t10k-images-idx3-ubyte.gz", dir + "t10k-labels-idx1-ubyte.gz");
  const loader_options norm{.mean = {0.2860}, .stddev = {0.3530}};

  const auto t_start = std::chrono::steady_clock::now();
  // LeNet-5 with noise_bits everywhere, groups of 4 channels (60 groups).
  nn::model_options<float, quant::noise_bits> mo;
  mo.seed = 1;
  mo.quant.group_size = 4;
  mo.quant.b_init = 5.5;
  mo.quant.seed = 7;
  mo.edge_quant = mo.quant;
  auto net = nn::lenet5<float, quant::noise_bits>(mo);

  // Weights and bitwidths train jointly toward 4 bits per weight on average.
  optim::adam<float> adam({.lr = 2e-3});
  adam.set_group(param_kind::bitwidth, {.lr = 0.05, .weight_decay = 0});
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  auto quants = [&](auto&& f) { net.visit_quantizers(f); };
  const double target = quant::target_bits_for_average(quants, 4.0);
  const quant::size_penalty penalty{
      .form = quant::penalty_form::hinge, .lambda = 2.0, .target_bits = target};
  loader_options lo = norm;
  lo.batch_size = 32;
  lo.seed = 11;
  loader<float> batches(train_set, lo);
  nn::softmax_cross_entropy<float> loss;
  tensor4<float> x;
  std::vector<std::int32_t> y;
  net.train(true);
  const std::size_t steps = 200;
  for (std::size_t step = 0; step < steps; ++step) {
    if (!batches.next(x, y)) REQUIRE(batches.next(x, y));
    net.zero_grad();
    loss.forward(net.forward(x), y);
    net.backward(loss.backward());
    quant::apply_size_penalty(quants, penalty);
    adam.step(params);
    net.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  }
  const auto t_trained = std::chrono::steady_clock::now();
  const auto r = quant::freeze_to_budget(quants, target);
  CHECK(r.within_target);

  // Fixed batches: the first 128 test images in 4 batches of 32.
  const auto fixed = train::fixed_batches<float>(test_set, norm, 32, 4);
  REQUIRE(fixed.size() == 4);
  const auto report = train::measure_sensitivity(net, fixed);
  const auto t_measured = std::chrono::steady_clock::now();
  std::cout << "train " << std::chrono::duration<double>(t_trained - t_start).count()
            << " s, measure " << std::chrono::duration<double>(t_measured - t_trained).count()
            << " s\n";
  REQUIRE(report.layers.size() == 5);
  std::vector<double> exact_all;
  for (const auto& l : report.layers)
    exact_all.insert(exact_all.end(), l.exact.begin(), l.exact.end());
  CHECK(exact_all.size() == 60);

  std::cout << "sensitivity (LeNet-5, noise_bits, " << steps << " steps, base loss "
            << report.base_loss << "):\n";
  for (const auto& l : report.layers) {
    double mean = 0;
    std::size_t n = 0;
    for (double v : l.exact)
      if (!std::isnan(v)) mean += v, ++n;
    std::cout << "  " << l.name << ": groups " << l.bits.size() << ", bits spread " << l.bits_spread
              << ", rho(bits, exact) " << l.rank_correlation << ", rho(exact, taylor) "
              << l.estimate_correlation << ", mean exact "
              << (n ? mean / static_cast<double>(n) : nan_v) << '\n';
  }
  for (auto kind : {train::sensitivity_estimate::first_order, train::sensitivity_estimate::fisher,
                    train::sensitivity_estimate::taylor}) {
    const auto est = train::estimated_sensitivity(net, fixed, kind);
    std::vector<double> est_all;
    for (const auto& e : est) est_all.insert(est_all.end(), e.begin(), e.end());
    const double rho = train::spearman(exact_all, est_all);
    std::cout << "  rho(exact, " << train::to_string(kind) << ") over all groups: " << rho << '\n';
    if (kind == train::sensitivity_estimate::taylor)
      CHECK(rho == doctest::Approx(report.estimate_correlation));
  }
  CHECK(report.estimate_correlation > 0.5);

  // The summaries the report draws.
  auto rows = train::layer_summaries(net);
  train::fill_layer_summaries(rows, report);
  REQUIRE(rows.size() == 5);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CHECK(rows[i].name == report.layers[i].name);
    CHECK(rows[i].group_sensitivity == report.layers[i].exact);
    CHECK(rows[i].bits_spread == report.layers[i].bits_spread);
    CHECK(rows[i].bits_spread == rows[i].bits_max - rows[i].bits_min);
  }
}

} // namespace test_sensitivity
