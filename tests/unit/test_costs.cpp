// Hardware costs (quant/costs.hpp, nn/costs.hpp): BOPs and peak activation memory of a tiny
// network computed by hand, their gradients in every bitwidth by finite differences (frac_bits,
// noise_bits' logits, activation quantizers), grouped convolutions, the hard and the soft
// maximum, and the penalty on a cost.
#include "quant_gradcheck.hpp"

#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/costs.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/optim/sgd.hpp>
#include <bitgrad/quant/costs.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/noise_bits.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

namespace test_costs {

using namespace bitgrad;
using bitgrad::testing::check_gradients;
using bitgrad::testing::fd_options;

namespace {

using aq = quant::act_quantizer<double>;
using fq = quant::frac_bits<double>;

aq::options aopt(std::size_t group_size, double b_init) {
  aq::options o;
  o.group_size = group_size;
  o.b_min = 1;
  o.b_max = 8;
  o.b_init = b_init;
  o.range_init = 1.0;
  return o;
}

template <class L>
void set_bits(L& l, const std::vector<double>& b) {
  l.visit_parameters([&](param_ref<double>& p) {
    if (p.kind != param_kind::bitwidth) return;
    REQUIRE(p.size == b.size());
    for (std::size_t i = 0; i < b.size(); ++i) p.value[i] = b[i];
  });
}

template <class L>
std::vector<double> bits_grad(L& l) {
  std::vector<double> g;
  l.visit_parameters([&](param_ref<double>& p) {
    if (p.kind == param_kind::bitwidth) g.assign(p.grad, p.grad + p.size);
  });
  return g;
}

template <class L>
void bitwidth_params(L& l, std::vector<param_ref<double>>& out) {
  l.visit_parameters([&](param_ref<double>& p) {
    if (p.kind == param_kind::bitwidth) out.push_back(p);
  });
}

/// aq0 (1 channel, 4x4) -> conv1 1->2 3x3 (2x2 out) -> aq1 (2 channels) -> flatten -> fc 8->3.
struct tiny_net {
  nn::activation_quant<double, 4> aq0{{.channels = 1, .name = "aq0"}, aopt(1, 1.5)};
  nn::conv2d<double, quant::frac_bits> conv1{
      {.in_channels = 1, .out_channels = 2, .kernel = 3, .seed = 1, .name = "conv1"},
      fq::options{.group_size = 1, .b_min = 1}};
  nn::activation_quant<double, 4> aq1{{.channels = 2, .name = "aq1"}, aopt(1, 2.5)};
  nn::linear<double, quant::frac_bits> fc{
      {.in_features = 8, .out_features = 3, .seed = 2, .name = "fc"},
      fq::options{.group_size = 2, .b_min = 1}};
  tiny_net() {
    set_bits(conv1, {3.5, 5.0});
    set_bits(aq1, {2.5, 4.0});
    set_bits(fc, {6.25, 3.0});
  }
  quant::bops_cost bops() {
    quant::bops_cost c;
    c.add_layer(nn::bop_layer_of(conv1, 4, 4, nn::bits_of(aq0)));
    c.add_layer(nn::bop_layer_of(fc, nn::bits_of(aq1)));
    return c;
  }
  quant::activation_memory_cost memory(double tau = 0) {
    quant::activation_memory_cost m(tau);
    m.add_tensor(nn::activation_tensor_of(aq0, 16));
    m.add_tensor(nn::activation_tensor_of(aq1, 4));
    return m;
  }
  void zero_grad() {
    aq0.zero_grad();
    conv1.zero_grad();
    aq1.zero_grad();
    fc.zero_grad();
  }
  std::vector<param_ref<double>> bit_params() {
    std::vector<param_ref<double>> p;
    bitwidth_params(aq0, p);
    bitwidth_params(conv1, p);
    bitwidth_params(aq1, p);
    bitwidth_params(fc, p);
    return p;
  }
};

} // namespace

TEST_CASE("BOPs of a tiny network, by hand") {
  tiny_net net;
  auto c = net.bops();
  // conv1: 36 MACs per connection (3x3 kernel, 2x2 outputs), 2 output channels x 1 input:
  //   36 x 1.5 x (3.5 + 5) = 459
  // fc: input feature j belongs to aq1's channel j / 4; weight groups {0, 1} and {2}:
  //   (2 x 4) 6.25 (2.5 + 4) + (1 x 4) 3 (2.5 + 4) = 325 + 78 = 403
  CHECK(c.macs(0) == 72);
  CHECK(c.macs(1) == 24);
  CHECK(c.layer_value(0) == doctest::Approx(459));
  CHECK(c.layer_value(1) == doctest::Approx(403));
  CHECK(c.value() == doctest::Approx(862));
  net.zero_grad();
  c.add_gradient(1.0);
  CHECK(bits_grad(net.aq0) == std::vector<double>{36 * 8.5});
  CHECK(bits_grad(net.conv1) == std::vector<double>{54, 54});
  CHECK(bits_grad(net.aq1) == std::vector<double>{8 * 6.25 + 4 * 3, 8 * 6.25 + 4 * 3});
  CHECK(bits_grad(net.fc) == std::vector<double>{8 * 6.5, 4 * 6.5});
  // A constant input (the 8-bit image) takes no gradient and counts at 8 bits.
  quant::bops_cost image;
  image.add_layer(nn::bop_layer_of(net.conv1, 4, 4, quant::bits_source::constant(8)));
  CHECK(image.value() == doctest::Approx(36 * 8 * 8.5));
  // Frozen quantizers count at their integer bitwidths and take no gradient.
  net.conv1.quantizer().freeze(quant::rounding::nearest); // 3.5 -> 4, 5 -> 5
  net.zero_grad();
  CHECK(c.layer_value(0) == doctest::Approx(36 * 1.5 * 9));
  c.add_gradient(1.0);
  CHECK(bits_grad(net.conv1) == std::vector<double>{0, 0});
  CHECK(bits_grad(net.aq0) == std::vector<double>{36 * 9});
}

TEST_CASE("BOPs gradient equals finite differences, frac_bits, noise_bits logits and "
          "activation groups") {
  tiny_net net;
  set_bits(net.aq1, {2.7, 3.9});
  auto c = net.bops();
  nn::linear<double, quant::noise_bits> nfc(
      {.in_features = 8, .out_features = 3, .seed = 3, .name = "nfc"},
      quant::noise_bits<double>::options{.group_size = 1});
  set_bits(nfc, {-0.7, 0.4, 1.3}); // logits
  c.add_layer(nn::bop_layer_of(nfc, nn::bits_of(net.aq1)));
  net.zero_grad();
  nfc.zero_grad();
  c.add_gradient(1.0);
  auto params = net.bit_params();
  bitwidth_params(nfc, params);
  CHECK(params.size() == 5);
  CHECK(check_gradients(
            params, [&] { return c.value(); }, fd_options{1e-5, 1e-7, 1e-6}) == 10);
}

TEST_CASE("BOPs of a grouped convolution count only connected channels") {
  // 4 -> 4 channels in 2 conv groups, 1x1 kernel on a 1x1 input: 1 MAC per connection.
  nn::conv2d<double, quant::frac_bits> conv(
      {.in_channels = 4, .out_channels = 4, .kernel = 1, .groups = 2, .seed = 1, .name = "dw"},
      fq::options{.group_size = 1, .b_min = 1});
  set_bits(conv, {2, 3, 4, 5});
  nn::activation_quant<double, 4> a({.channels = 4, .name = "a"}, aopt(1, 1));
  set_bits(a, {1, 2, 3, 4});
  quant::bops_cost c;
  c.add_layer(nn::bop_layer_of(conv, 1, 1, nn::bits_of(a)));
  // (2 + 3)(1 + 2) + (4 + 5)(3 + 4) = 15 + 63 (all 16 pairs would give 14 x 10 = 140)
  CHECK(c.value() == doctest::Approx(78));
  CHECK(c.macs(0) == 8);
  // A linear layer whose inputs do not divide into the activation channels is refused.
  nn::linear<double, quant::frac_bits> fc({.in_features = 6, .out_features = 2, .name = "fc"});
  try {
    c.add_layer(nn::bop_layer_of(fc, nn::bits_of(a)));
    FAIL("accepted 6 inputs over 4 channels");
  } catch (const config_error& e) {
    CHECK(std::string(e.what()).find("'fc'") != std::string::npos);
  }
}

TEST_CASE("peak activation memory: hard maximum with its subgradient, soft maximum") {
  tiny_net net;
  auto m = net.memory();
  // aq0: 16 x 1.5 = 24 bits; aq1: 4 x 2.5 + 4 x 4 = 26 bits: the peak is aq1.
  CHECK(m.tensor_bits(0) == doctest::Approx(24));
  CHECK(m.tensor_bits(1) == doctest::Approx(26));
  CHECK(m.value() == doctest::Approx(26));
  CHECK(m.peak_tensor() == 1);
  net.zero_grad();
  m.add_gradient(2.0);
  CHECK(bits_grad(net.aq1) == std::vector<double>{8, 8});
  CHECK(bits_grad(net.aq0) == std::vector<double>{0});
  // aq0 at 2 bits: 32 bits, now the peak; the subgradient moves to it.
  set_bits(net.aq0, {2});
  net.zero_grad();
  CHECK(m.value() == doctest::Approx(32));
  m.add_gradient(1.0);
  CHECK(bits_grad(net.aq0) == std::vector<double>{16});
  CHECK(bits_grad(net.aq1) == std::vector<double>{0, 0});
  // A tie (aq0 at 1.625 bits: 26 bits): the subgradient goes to the first tensor added.
  set_bits(net.aq0, {1.625});
  net.zero_grad();
  CHECK(m.peak_tensor() == 0);
  m.add_gradient(1.0);
  CHECK(bits_grad(net.aq0) == std::vector<double>{16});
  CHECK(bits_grad(net.aq1) == std::vector<double>{0, 0});
  // Soft maximum, tau = 4 bits: 4 log(e^(24/4) + e^(26/4)) at the first point.
  set_bits(net.aq0, {1.5});
  auto soft = net.memory(4.0);
  const double want = 4 * std::log(std::exp(6.0) + std::exp(6.5));
  CHECK(soft.value() == doctest::Approx(want));
  CHECK(soft.value() >= 26);
  CHECK(soft.value() <= 26 + 4 * std::log(2.0));
  net.zero_grad();
  soft.add_gradient(1.0);
  auto params = net.bit_params();
  CHECK(check_gradients(
            params, [&] { return soft.value(); }, fd_options{1e-6, 1e-7, 1e-8}) == 7);
  CHECK(bits_grad(net.aq0)[0] > 0); // both tensors share the gradient
  // The hard maximum's gradient away from a tie equals finite differences too.
  net.zero_grad();
  m.add_gradient(1.0);
  CHECK(check_gradients(
            params, [&] { return m.value(); }, fd_options{1e-6, 1e-7, 1e-8}) == 7);
  CHECK_THROWS_AS(quant::activation_memory_cost(-1), config_error);
}

TEST_CASE("a penalty on BOPs pushes the bitwidths with the cost's gradient") {
  tiny_net net;
  auto c = net.bops();
  quant::size_penalty p;
  p.form = quant::penalty_form::hinge;
  p.lambda = 2;
  p.target_bits = 431; // half of 862
  net.zero_grad();
  CHECK(quant::apply_cost_penalty(c, p) == doctest::Approx(2 * (862.0 / 431 - 1)));
  CHECK(bits_grad(net.fc) == std::vector<double>{2.0 / 431 * 52, 2.0 / 431 * 26});
  p.target_bits = 1000; // within the budget: no penalty, no gradient
  net.zero_grad();
  CHECK(quant::apply_cost_penalty(c, p) == 0);
  CHECK(bits_grad(net.fc) == std::vector<double>{0, 0});
}

TEST_CASE("the optimizer's bitwidth group moves the activation bitwidths under a BOPs penalty") {
  tiny_net net;
  auto c = net.bops();
  quant::size_penalty p;
  p.lambda = 431;
  p.target_bits = 431; // hinge: dP/dBOPs = lambda / target = 1
  optim::sgd<double> opt({.lr = 0});
  opt.set_group(param_kind::bitwidth, {.lr = 0.01, .weight_decay = 0});
  auto params = [&](auto&& f) {
    net.aq0.visit_parameters(f);
    net.conv1.visit_parameters(f);
    net.aq1.visit_parameters(f);
    net.fc.visit_parameters(f);
  };
  net.zero_grad();
  (void)quant::apply_cost_penalty(c, p);
  const auto range_before = net.aq1.activation_quantizer().group_ranges();
  opt.step(params);
  net.aq1.activation_quantizer().project();
  // aq1's bits: 2.5 - 0.01 x 62 and 4 - 0.01 x 62; its range (kind scale, lr 0) unchanged.
  const auto b = net.aq1.activation_quantizer().group_bits();
  CHECK(b[0] == doctest::Approx(2.5 - 0.62));
  CHECK(b[1] == doctest::Approx(4 - 0.62));
  CHECK(net.aq1.activation_quantizer().group_ranges() == range_before);
  CHECK(c.value() < 862);
}

} // namespace test_costs
