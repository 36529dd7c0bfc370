// One LeNet-5 (frac_bits) training step, data-parallel: p ranks, each with its slice of a global
// batch of 64 from the sharded loader (augmentation on), backward with the reducer's hook
// (buckets start during backward), then finish(): every parameter's gradient equals the
// gradient one process computes on the whole batch of 64, within the tolerance below, and is
// bit-identical on every rank.
//
// Then 20 training steps (optimizer and bitwidth projection included) against one process.
//
// Tolerance (chosen, stated in docs/distributed.md): per tensor,
//   max_i |g_dist - g_single| <= 1e-5 * max_i |g_single|
// The two differ only in the order of additions: the single process sums 64 per-image terms
// inside its GEMMs, the ranks sum their slices and the reducer adds the slices; float rounding
// of those orders is ~1e-7 of the tensor's scale. (Element-wise relative error is meaningless
// for gradients that cancel to near zero.)
#include <bitgrad/data/loader.hpp>
#include <bitgrad/dist/agreement.hpp>
#include <bitgrad/dist/backward_hook.hpp>
#include <bitgrad/dist/gradient_reducer.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/optim/sgd.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/penalty.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace test_dist_step {

using namespace bitgrad;

namespace {

/// n random Fashion-MNIST-shaped images (1x28x28 bytes), labels in [0, 10); seeded.
dataset random_images(std::size_t n, std::uint64_t seed) {
  dataset d;
  d.channels = 1;
  d.height = 28;
  d.width = 28;
  d.classes = 10;
  std::mt19937_64 rng(seed);
  d.pixels.resize(n * d.image_size());
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
  for (std::size_t i = 0; i < n; ++i) d.labels.push_back(static_cast<std::int32_t>(rng() % 10));
  return d;
}

using lenet = decltype(nn::lenet5<float, quant::frac_bits>());

std::vector<std::vector<float>> gradients(lenet& net) {
  std::vector<std::vector<float>> g;
  net.visit_parameters([&](param_ref<float>& p) { g.emplace_back(p.grad, p.grad + p.size); });
  return g;
}

} // namespace

TEST_CASE("one LeNet-5 step on p ranks x 64/p images equals 1 rank x 64") {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  const dataset data = random_images(100, 17);
  dist::check_same_dataset(comm, data);
  loader_options options{.batch_size = 64, .seed = 5, .crop_padding = 2, .horizontal_flip = true};
  options.mean = {0.286};
  options.stddev = {0.353};

  for (const auto order : {dist::reduction_order::fixed, dist::reduction_order::mpi}) {
    CAPTURE(static_cast<int>(order));
    // The single-process reference, computed on every rank.
    loader<float> whole(data, options);
    auto single = nn::lenet5<float, quant::frac_bits>({.seed = 11});
    nn::softmax_cross_entropy<float> single_loss;
    tensor4<float> x;
    std::vector<std::int32_t> y;
    REQUIRE(whole.next(x, y));
    REQUIRE(y.size() == 64);
    single.zero_grad();
    single_loss.forward(single.forward(x), y);
    single.backward(single_loss.backward());
    const std::vector<std::vector<float>> expect = gradients(single);

    // The data-parallel step.
    loader_options sharded = options;
    sharded.shard_count = static_cast<std::size_t>(p);
    sharded.shard_index = static_cast<std::size_t>(r);
    loader<float> mine(data, sharded);
    auto net = nn::lenet5<float, quant::frac_bits>({.seed = 11});
    auto params = [&](auto&& f) { net.visit_parameters(f); };
    dist::gradient_reducer<float> reducer(comm, params, {.bucket_bytes = 16 << 10, .order = order});
    nn::softmax_cross_entropy<float> loss;
    REQUIRE(mine.next(x, y));
    CHECK(y.size() ==
          shard_slice(64, static_cast<std::size_t>(r), static_cast<std::size_t>(p)).size());
    net.zero_grad();
    reducer.begin_step(params, static_cast<double>(y.size()) /
                                   static_cast<double>(mine.last_global_batch_size()));
    loss.forward(net.forward(x), y);
    dist::backward_with_hook(net, loss.backward(), reducer.hook());
    CHECK(reducer.started_early() > 0); // some buckets started before backward ended
    reducer.finish();

    const std::vector<std::vector<float>> got = gradients(net);
    REQUIRE(got.size() == expect.size());
    std::vector<std::string> names;
    net.visit_parameters([&](param_ref<float>& q) { names.push_back(q.name); });
    double worst = 0;
    for (std::size_t j = 0; j < got.size(); ++j) {
      double scale = 0, diff = 0;
      for (std::size_t i = 0; i < got[j].size(); ++i) {
        scale = std::max(scale, std::abs(static_cast<double>(expect[j][i])));
        diff = std::max(diff, std::abs(static_cast<double>(got[j][i]) - expect[j][i]));
      }
      const double rel = scale > 0 ? diff / scale : diff;
      worst = std::max(worst, rel);
      CAPTURE(names[j]);
      CHECK(rel <= 1e-5);
    }
    if (r == 0) std::printf("p = %d: largest per-tensor relative difference %.3g\n", p, worst);
    // Every rank holds the same averaged gradient, bit for bit.
    auto grads = [&](auto&& f) {
      net.visit_parameters([&](param_ref<float>& q) {
        param_ref<float> as_value{q.name, q.grad, q.value, q.size, q.kind};
        f(as_value);
      });
    };
    CHECK_NOTHROW(dist::check_same_parameters<float>(comm, grads, "the gradient all-reduce"));
  }
}

namespace {

/// Trains `net` for `steps` steps of `data` (global batch 64, sharded as `options` says):
/// gradient (averaged through `reducer` when given), size penalty, Adam, projection.
template <class Opt, class Net>
void train_steps(Net& net, const dataset& data, const loader_options& options, int steps,
                 dist::gradient_reducer<typename Net::value_type>* reducer, Opt adam) {
  using T = typename Net::value_type;
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  auto quants = [&](auto&& f) { net.visit_quantizers(f); };
  adam.set_group(param_kind::bitwidth, {.lr = 0.05, .weight_decay = 0});
  const quant::size_penalty penalty{.form = quant::penalty_form::hinge,
                                    .lambda = 5.0,
                                    .target_bits = quant::target_bits_for_average(quants, 3.0)};
  loader<T> batches(data, options);
  nn::softmax_cross_entropy<T> loss;
  tensor4<T> x;
  std::vector<std::int32_t> y;
  for (int step = 0; step < steps; ++step) {
    if (!batches.next(x, y)) REQUIRE(batches.next(x, y));
    net.zero_grad();
    if (reducer)
      reducer->begin_step(params, static_cast<double>(y.size()) /
                                      static_cast<double>(batches.last_global_batch_size()));
    loss.forward(net.forward(x), y);
    if (reducer) {
      dist::backward_with_hook(net, loss.backward(), reducer->hook());
      reducer->finish();
    } else {
      net.backward(loss.backward());
    }
    quant::apply_size_penalty(quants, penalty);
    adam.step(params);
    net.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  }
}

} // namespace

/// 20 steps on p ranks against 20 steps of one process; checks every parameter tensor:
/// max |w_dist - w_single| <= tolerance * max |w_single|, and the ranks bit-identical.
template <class T, class Opt>
void twenty_steps(const char* what, Opt opt, double tolerance) {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  const dataset data = random_images(200, 23);
  loader_options options{.batch_size = 64, .seed = 8};
  auto single = nn::lenet5<T, quant::frac_bits>({.seed = 12});
  train_steps(single, data, options, 20, nullptr, opt);

  loader_options sharded = options;
  sharded.shard_count = static_cast<std::size_t>(p);
  sharded.shard_index = static_cast<std::size_t>(r);
  auto net = nn::lenet5<T, quant::frac_bits>({.seed = 12});
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  dist::gradient_reducer<T> reducer(comm, params, {.bucket_bytes = 16 << 10});
  train_steps(net, data, sharded, 20, &reducer, opt);
  CHECK_NOTHROW(dist::check_same_parameters<T>(comm, params, "20 steps"));

  std::vector<std::vector<T>> expect;
  std::vector<std::string> names;
  single.visit_parameters([&](param_ref<T>& q) {
    expect.emplace_back(q.value, q.value + q.size);
    names.push_back(q.name);
  });
  std::size_t j = 0;
  double worst_tensor = 0, worst_element = 0;
  std::string worst_name;
  net.visit_parameters([&](param_ref<T>& q) {
    double scale = 0, diff = 0;
    for (std::size_t i = 0; i < q.size; ++i) {
      const double e = expect[j][i];
      scale = std::max(scale, std::abs(e));
      const double d = std::abs(static_cast<double>(q.value[i]) - e);
      diff = std::max(diff, d);
      worst_element = std::max(worst_element, d / std::max(std::abs(e), 1e-30));
    }
    const double rel = scale > 0 ? diff / scale : diff;
    if (rel > worst_tensor) {
      worst_tensor = rel;
      worst_name = names[j];
    }
    ++j;
  });
  if (r == 0)
    std::printf("%s p = %d, 20 steps: largest per-tensor relative difference %.3g (%s), largest "
                "element-wise %.3g\n",
                what, p, worst_tensor, worst_name.c_str(), worst_element);
  CAPTURE(what);
  CAPTURE(worst_name);
  CHECK(worst_tensor <= tolerance);
}

// 20 steps of training (size penalty, optimizer, projection after the averaged gradient). The
// gradients differ from one process's in the last bits (order of additions); what 20 steps make
// of that depends on the optimizer. Measured (largest per-tensor difference relative to the
// tensor's largest magnitude, 2 and 4 ranks): SGD with momentum in float 1.9e-7, 1.7e-7; Adam in
// double 3e-15, 2e-14; Adam in float 1.2e-5, 6.2e-5: Adam divides by sqrt(v), so a gradient
// element near zero whose last bits differ gets an update of up to lr of either sign.
TEST_CASE("20 LeNet-5 steps (size penalty, optimizer, projection) on p ranks follow 1 rank") {
  twenty_steps<float>("SGD, float", optim::sgd<float>({.lr = 0.05, .momentum = 0.9}), 1e-5);
  twenty_steps<double>("Adam, double", optim::adam<double>({.lr = 1e-3}), 1e-10);
  twenty_steps<float>("Adam, float", optim::adam<float>({.lr = 1e-3}), 5e-4);
}

} // namespace test_dist_step
