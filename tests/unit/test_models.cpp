// Model builders: shapes, parameter counts, names, quantizer placement, and small instances of
// each network through the gradient checker.
#include "random_tensor.hpp"

#include <bitgrad/nn/gradcheck.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace test_models {

using namespace bitgrad;
using bitgrad::testing::random_tensor;

namespace {

template <class Net>
std::vector<std::string> parameter_names(Net& net) {
  std::vector<std::string> names;
  net.visit_parameters([&](param_ref<typename Net::value_type>& p) { names.push_back(p.name); });
  return names;
}

/// forward / backward layer by layer (no fused pairs: each layer's own forward), from layer I.
template <std::size_t I, class Net, class X>
const typename Net::output_type& forward_layers(Net& net, const X& x) {
  const auto& y = net.template get<I>().forward(x);
  if constexpr (I + 1 < Net::size)
    return forward_layers<I + 1>(net, y);
  else
    return y;
}
template <std::size_t I, class Net, class DY>
const typename Net::input_type& backward_layers(Net& net, const DY& dy) {
  const auto& dx = net.template get<I>().backward(dy);
  if constexpr (I > 0)
    return backward_layers<I - 1>(net, dx);
  else
    return dx;
}

/// Every parameter gradient, in visiting order.
template <class Net>
std::vector<std::vector<typename Net::value_type>> gradients(Net& net) {
  std::vector<std::vector<typename Net::value_type>> out;
  net.visit_parameters(
      [&](param_ref<typename Net::value_type>& p) { out.emplace_back(p.grad, p.grad + p.size); });
  return out;
}

/// Two copies of a flat network: `fused` through sequential::forward/backward (conv/linear + relu
/// pairs as one pass), `plain` layer by layer; outputs, input gradients and every parameter
/// gradient must be the same bits, over two steps (the second with the layers' buffers reused).
template <class Net>
void require_fused_equals_plain(Net fused, Net plain, const typename Net::input_type& x) {
  using T = typename Net::value_type;
  fused.zero_grad();
  plain.zero_grad();
  for (int step = 0; step < 2; ++step) {
    const auto& yf = fused.forward(x);
    const auto& yp = forward_layers<0>(plain, x);
    REQUIRE(yf.shape() == yp.shape());
    CHECK(std::equal(yf.begin(), yf.end(), yp.begin()));
    typename Net::output_type dy =
        random_tensor<T, 2>({yf.shape()[0], yf.shape()[1]}, 40 + static_cast<std::uint64_t>(step));
    const auto& dxf = fused.backward(dy);
    const auto& dxp = backward_layers<Net::size - 1>(plain, dy);
    CHECK(std::equal(dxf.begin(), dxf.end(), dxp.begin(), dxp.end()));
    CHECK(gradients(fused) == gradients(plain));
  }
}

/// L without forward_relu: nn::sequential then runs L and a following relu one by one.
template <class L>
struct unfused : L {
  using L::L;
  explicit unfused(L l) : L(std::move(l)) {}
  template <class X>
  void forward_relu(const X&) = delete;
};

/// A ResNet-style network: conv + bn + relu stem, a basic block with a projection shortcut
/// (conv 1x1 stride 2 + bn) and the block's relu, a block with an identity shortcut and its
/// relu, pool, fc. Fuse = false hides every forward_relu (conv, bn, residual), so each relu runs
/// as its own layer.
template <class T, bool Fuse>
auto resnet_style(bool sync) {
  auto wrap = [](auto l) {
    if constexpr (Fuse)
      return l;
    else
      return unfused<decltype(l)>(std::move(l));
  };
  auto conv = [&](std::size_t in, std::size_t out, std::size_t k, std::size_t stride,
                  std::uint64_t seed) {
    return wrap(nn::conv2d<T>({.in_channels = in,
                               .out_channels = out,
                               .kernel = k,
                               .stride = stride,
                               .padding = k / 2,
                               .bias = false,
                               .seed = seed}));
  };
  auto bn = [&](std::size_t c, const char* name) {
    nn::batch_norm<T, 4> b({.features = c, .name = name});
    for (std::size_t i = 0; i < c; ++i) {
      b.gamma()[i] = T(0.5) + T(0.25) * T(i % 3) - (i % 2 ? T(1.25) : T(0));
      b.beta()[i] = T(0.1) * T(int(i % 5) - 2);
    }
    if (sync) b.set_sync([](std::span<double>) {}); // one process: the sum over it is itself
    return wrap(std::move(b));
  };
  auto body = nn::sequential(std::string("body"), conv(3, 5, 3, 2, 21), bn(5, "bn1"),
                             nn::relu<T, 4>("relu1"), conv(5, 5, 3, 1, 22), bn(5, "bn2"));
  auto shortcut = nn::sequential(std::string("shortcut"), conv(3, 5, 1, 2, 23), bn(5, "bn"));
  auto body2 = nn::sequential(std::string("body2"), conv(5, 5, 3, 1, 25), bn(5, "bn3"),
                              nn::relu<T, 4>("relu3"), conv(5, 5, 3, 1, 26), bn(5, "bn4"));
  return nn::sequential(
      conv(2, 3, 3, 1, 20), bn(3, "bn0"), nn::relu<T, 4>("relu0"),
      wrap(nn::residual(std::string("block"), std::move(body), std::move(shortcut))),
      nn::relu<T, 4>("relu"),
      wrap(nn::residual(std::string("block2"), std::move(body2), nn::identity<T, 4>("skip"))),
      nn::relu<T, 4>("relu2"), nn::global_avg_pool<T>(),
      nn::linear<T>({.in_features = 5, .out_features = 3, .seed = 24}));
}

} // namespace

TEST_CASE_TEMPLATE("fused batch norm + relu and residual + relu: the same bits as unfused "
                   "(ResNet-style block, training with and without sync, eval)",
                   T, float, double) {
  for (bool sync : {false, true}) {
    CAPTURE(sync);
    auto fused = resnet_style<T, true>(sync);
    auto plain = resnet_style<T, false>(sync);
    const auto x = random_tensor<T, 4>({3, 2, 7, 9}, 31);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      if (step == 2) { // eval: running statistics
        fused.train(false);
        plain.train(false);
      }
      fused.zero_grad();
      plain.zero_grad();
      const auto& yf = fused.forward(x);
      const auto& yp = plain.forward(x);
      REQUIRE(yf.shape() == yp.shape());
      CHECK(std::equal(yf.begin(), yf.end(), yp.begin(), yp.end()));
      const tensor2<T> dy = random_tensor<T, 2>({3, 3}, 40 + static_cast<std::uint64_t>(step));
      const auto& dxf = fused.backward(dy);
      const auto& dxp = plain.backward(dy);
      CHECK(std::equal(dxf.begin(), dxf.end(), dxp.begin(), dxp.end()));
      CHECK(gradients(fused) == gradients(plain));
      CHECK(fused.template get<1>().running_mean() == plain.template get<1>().running_mean());
      CHECK(fused.template get<1>().running_var() == plain.template get<1>().running_var());
    }
    // The pairs do run fused: the stem's relu hands dy back as is (bn0 masks it).
    fused.train(true);
    (void)fused.forward(x);
    const tensor4<T> probe = random_tensor<T, 4>({3, 3, 7, 9}, 32);
    CHECK(&fused.template get<2>().backward(probe) == &probe);
    (void)plain.forward(x);
    CHECK(&plain.template get<2>().backward(probe) != &probe);
  }
}

TEST_CASE_TEMPLATE("lenet5: output (N, 10), 44426 parameters, PyTorch-style names", T, float,
                   double) {
  auto net = nn::lenet5<T>({.seed = 1});
  static_assert(nn::layer<decltype(net)>);
  // conv1 6*25+6, conv2 16*6*25+16, fc1 256*120+120, fc2 120*84+84, fc3 84*10+10
  CHECK(nn::parameter_count(net) == 156 + 2416 + 30840 + 10164 + 850);
  const auto names = parameter_names(net);
  REQUIRE(names.size() == 10);
  CHECK(names.front() == "conv1.weight");
  CHECK(names.back() == "fc3.bias");
  auto x = random_tensor<T, 4>({3, 1, 28, 28}, 2);
  const auto& y = net.forward(x);
  CHECK(y.shape()[0] == 3);
  CHECK(y.shape()[1] == 10);
  tensor2<T> dy = xt::ones<T>({3, 10});
  net.zero_grad();
  const auto& dx = net.backward(dy);
  CHECK(dx.shape() == x.shape());
  // Same seed, same network.
  auto twin = nn::lenet5<T>({.seed = 1});
  CHECK(twin.forward(x) == net.forward(x));
  CHECK_THROWS_AS(nn::lenet5<T>({.in_size = 30}), config_error);
}

TEST_CASE("lenet5 with frac_bits inside and fixed 8-bit first and last layers") {
  auto net =
      nn::lenet5<float, quant::frac_bits, quant::fixed_bits>({.seed = 1, .quant = {.b_init = 4.5}});
  std::vector<std::string> seen;
  net.visit_quantizers([&](std::string_view name, auto& q) {
    using Q = std::remove_cvref_t<decltype(q)>;
    seen.push_back(std::string(name) + ":" + Q::policy_name);
    for (double b : q.group_bits()) CHECK(b == (name == "conv1" || name == "fc3" ? 8.0 : 4.5));
  });
  CHECK(seen == std::vector<std::string>{"conv1:fixed_bits", "conv2:frac_bits", "fc1:frac_bits",
                                         "fc2:frac_bits", "fc3:fixed_bits"});
  const auto names = parameter_names(net);
  CHECK(std::find(names.begin(), names.end(), "conv2.bits") != names.end());
  CHECK(std::find(names.begin(), names.end(), "conv1.scale") != names.end());
  CHECK(net.get<0>().describe() == "conv2d 1->6 5x5 fixed_bits");
  auto x = random_tensor<float, 4>({2, 1, 28, 28}, 3);
  CHECK(net.forward(x).shape()[1] == 10);

  // Edge layers kept in float.
  auto fp_edges = nn::lenet5<float, quant::frac_bits, quant::no_quant>({.seed = 1});
  std::size_t quantized = 0;
  fp_edges.visit_quantizers([&](std::string_view, auto& q) {
    quantized += !std::remove_cvref_t<decltype(q)>::is_identity;
  });
  CHECK(quantized == 3);
}

TEST_CASE("model_options::quant reaches the first conv and the last linear") {
  // One policy everywhere and no edge_quant: every layer, conv1 and fc3 included, takes
  // model_options::quant (before issue #17 the edge layers kept per-channel groups in [2, 8]).
  const quant::frac_bits<float>::options q{.group_size = 4, .b_min = 3, .b_max = 5, .b_init = 4.5};
  auto groups_and_bounds = [](auto& net) {
    std::vector<std::string> seen;
    net.visit_quantizers([&](std::string_view name, const auto& quantizer) {
      seen.push_back(std::string(name) + ":" + std::to_string(quantizer.groups()) + ":" +
                     std::to_string(quantizer.b_min()) + "-" + std::to_string(quantizer.b_max()));
      for (double b : quantizer.group_bits()) CHECK(b == 4.5);
    });
    return seen;
  };
  SUBCASE("lenet5: groups of 4 channels give 2 groups in conv1 (6 channels), 3 in fc3 (10)") {
    auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1, .quant = q});
    CHECK(groups_and_bounds(net) ==
          std::vector<std::string>{"conv1:2:3.000000-5.000000", "conv2:4:3.000000-5.000000",
                                   "fc1:30:3.000000-5.000000", "fc2:21:3.000000-5.000000",
                                   "fc3:3:3.000000-5.000000"});
  }
  SUBCASE("vgg_small and resnet20: conv1 and the classifier too") {
    auto vgg = nn::vgg_small<float, quant::frac_bits>({.seed = 1, .quant = q, .width = 8});
    const auto v = groups_and_bounds(vgg);
    REQUIRE(v.size() == 6);
    CHECK(v.front() == "conv1:2:3.000000-5.000000"); // 8 channels
    CHECK(v.back() == "fc2:3:3.000000-5.000000");    // 10 classes
    auto resnet = nn::resnet20<float, quant::frac_bits>({.seed = 1, .quant = q, .width = 4});
    const auto r = groups_and_bounds(resnet);
    CHECK(r.front() == "conv1:1:3.000000-5.000000"); // 4 channels
    CHECK(r.back() == "fc:3:3.000000-5.000000");
  }
  SUBCASE("edge_quant, when set, is what the edge layers get") {
    nn::model_options<float, quant::frac_bits> o{.seed = 1, .quant = q};
    o.edge_quant = o.quant;
    o.edge_quant->group_size = quant::per_tensor;
    o.edge_quant->b_min = o.edge_quant->b_max = 8;
    o.edge_quant->b_init = 8;
    CHECK(o.edge_options().b_min == 8);
    auto net = nn::lenet5<float, quant::frac_bits>(o);
    std::vector<std::string> seen;
    net.visit_quantizers([&](std::string_view name, const auto& quantizer) {
      seen.push_back(std::string(name) + ":" + std::to_string(quantizer.groups()) + ":" +
                     std::to_string(quantizer.group_bits().front()));
    });
    CHECK(seen == std::vector<std::string>{"conv1:1:8.000000", "conv2:4:4.500000",
                                           "fc1:30:4.500000", "fc2:21:4.500000", "fc3:1:8.000000"});
  }
  SUBCASE("another edge policy keeps its own defaults: fixed_bits at 8 bits per channel") {
    const nn::model_options<float, quant::frac_bits, quant::fixed_bits> o{.quant = q};
    CHECK(o.edge_options().bits == 8);
    CHECK(o.edge_options().group_size == 1);
    const nn::model_options<float, quant::frac_bits, quant::no_quant> f{.quant = q};
    (void)f.edge_options();
  }
}

TEST_CASE("vgg_small: shapes and parameter count") {
  auto net = nn::vgg_small<float>({.seed = 3});
  CHECK(nn::parameter_count(net) == 320 + 9248 + 18496 + 36928 + 803072 + 2570);
  auto x = random_tensor<float, 4>({2, 1, 28, 28}, 4);
  const auto& y = net.forward(x);
  CHECK(y.shape() == std::array<std::size_t, 2>{2, 10});
  auto cifar = nn::vgg_small<float>(
      {.in_channels = 3, .in_size = 32, .num_classes = 100, .width = 8, .hidden = 64});
  auto xc = random_tensor<float, 4>({1, 3, 32, 32}, 5);
  CHECK(cifar.forward(xc).shape() == std::array<std::size_t, 2>{1, 100});
}

TEST_CASE("resnet20: structure, parameter count, forward and backward") {
  auto net = nn::resnet20<float>({.seed = 1});
  static_assert(nn::layer<decltype(net)>);
  // Projection shortcuts (1x1 conv + bn) in stages 2 and 3: 269722 + 2752 - 0.
  CHECK(nn::parameter_count(net) == 272474);
  std::size_t convs = 0, bns = 0;
  std::vector<std::string> leaves;
  auto count = [&](const std::string& name, auto& leaf) {
    const std::string d = leaf.describe();
    convs += d.rfind("conv2d", 0) == 0;
    bns += d.rfind("batch_norm2d", 0) == 0;
    leaves.push_back(name);
  };
  nn::visit_layers(net, count);
  CHECK(convs == 21); // 1 + 18 + 2 projections
  CHECK(bns == 21);
  CHECK(std::find(leaves.begin(), leaves.end(), "layer2.0.shortcut.conv") != leaves.end());
  CHECK(std::find(leaves.begin(), leaves.end(), "layer3.2.conv2") != leaves.end());
  auto x = random_tensor<float, 4>({2, 3, 32, 32}, 6);
  const auto& y = net.forward(x);
  CHECK(y.shape() == std::array<std::size_t, 2>{2, 10});
  tensor2<float> dy = xt::ones<float>({2, 10});
  CHECK(net.backward(dy).shape() == x.shape());
  net.train(false);
  const tensor2<float> eval_y = net.forward(x);
  CHECK(eval_y.shape() == y.shape());
}

TEST_CASE("a NaN pixel anywhere reaches its sample's logits and the loss (every model)") {
  // Issue #17: NaN data gave a finite loss (ReLU and max pooling turned NaN into numbers)
  // while the first layer's weight gradients were NaN. Now every logit of the sample with the
  // NaN is NaN, the other sample's are finite, and so the loss is NaN.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto check = [&](auto& net, std::array<std::size_t, 4> shape, std::size_t h, std::size_t w) {
    CAPTURE(h);
    CAPTURE(w);
    auto x = random_tensor<float, 4>(shape, 9);
    x(1, 0, h, w) = nan;
    const auto& logits = net.forward(x);
    for (std::size_t c = 0; c < logits.shape(1); ++c) {
      CHECK(std::isfinite(logits(0, c)));
      CHECK(std::isnan(logits(1, c)));
    }
    nn::softmax_cross_entropy<float> loss;
    CHECK(std::isnan(loss.forward(logits, {3, 4})));
  };
  const std::size_t corners[][2] = {{0, 0}, {0, 1}, {1, 0}, {5, 7}, {13, 14}, {27, 27}};
  auto lenet = nn::lenet5<float>({.seed = 1});
  auto lenet_q = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  auto vgg = nn::vgg_small<float>({.seed = 1, .width = 4, .hidden = 16});
  for (const auto& p : corners) {
    check(lenet, {2, 1, 28, 28}, p[0], p[1]);
    check(lenet_q, {2, 1, 28, 28}, p[0], p[1]);
    check(vgg, {2, 1, 28, 28}, p[0], p[1]);
  }
  auto resnet = nn::resnet20<float>({.seed = 1, .in_size = 8, .width = 4});
  resnet.train(false); // batch statistics would spread the NaN to the other sample
  check(resnet, {2, 3, 8, 8}, 3, 5);
}

TEST_CASE("gradient check: a narrow resnet20 on 8x8 inputs (batch norm, residuals)") {
  auto net = nn::resnet20<double>(
      {.seed = 2, .in_channels = 1, .in_size = 8, .num_classes = 3, .width = 2});
  nn::gradcheck_options opt;
  opt.max_per_tensor = 3;
  const auto r = nn::gradcheck(net, random_tensor<double, 4>({2, 1, 8, 8}, 7), opt);
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.tensors.size() == 1 + 21 + 21 * 2 + 2); // input, convs, bn gamma+beta, fc
  CHECK(r.max_error < 1e-5);
}

TEST_CASE("gradient check: lenet5 and vgg_small on small inputs") {
  nn::gradcheck_options opt;
  opt.max_per_tensor = 6;
  auto lenet = nn::lenet5<double>({.seed = 4, .in_size = 16});
  auto r = nn::gradcheck(lenet, random_tensor<double, 4>({2, 1, 16, 16}, 8), opt);
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.max_error < 1e-5);
  auto vgg = nn::vgg_small<double>({.seed = 5, .in_size = 8, .width = 2, .hidden = 5});
  r = nn::gradcheck(vgg, random_tensor<double, 4>({2, 1, 8, 8}, 9), opt);
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.max_error < 1e-5);
}

TEST_CASE_TEMPLATE("fused conv/linear + relu: the same bits as layer by layer (lenet5, vgg_small)",
                   T, float, double) {
  // Odd shapes: 3 images, 5 channels, hidden 7, inputs of side 20 and 12.
  auto lenet = nn::lenet5<T>({.seed = 11, .in_size = 20, .num_classes = 3});
  require_fused_equals_plain(lenet, lenet, random_tensor<T, 4>({3, 1, 20, 20}, 12));
  auto vgg = nn::vgg_small<T, quant::frac_bits>(
      {.seed = 13, .in_channels = 2, .in_size = 12, .num_classes = 3, .width = 5, .hidden = 7});
  require_fused_equals_plain(vgg, vgg, random_tensor<T, 4>({3, 2, 12, 12}, 14));
  // The pairs do run fused: after sequential::forward, a relu's backward hands dy back as is
  // (its conv masks it); layer by layer it returns its own buffer.
  const auto x = random_tensor<T, 4>({3, 2, 12, 12}, 15);
  const auto& y1 = vgg.forward(x);
  (void)y1;
  auto& relu1 = vgg.template get<1>();
  const tensor4<T> probe = random_tensor<T, 4>({3, 5, 12, 12}, 16);
  CHECK(&relu1.backward(probe) == &probe);
  (void)forward_layers<0>(vgg, x);
  CHECK(&relu1.backward(probe) != &probe);
}
} // namespace test_models
