// Activation quantizers in the model builders (nn/models.hpp, ActQuant) and the costs of a
// built network (nn/model_costs.hpp): the network without them is today's type; with them each
// ReLU is followed by an unsigned quantizer; LeNet-5's, vgg_small's and ResNet-20's BOPs and
// peak activation memory by hand, their gradients by finite differences; a short training run under
// a BOPs penalty lowers the activation bitwidths.
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/dropout.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/model_costs.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/optim/sgd.hpp>
#include <bitgrad/quant/costs.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/step.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace test_act_models {

using namespace bitgrad;

namespace {

template <class Net>
std::vector<std::string> parameter_names(Net& net) {
  std::vector<std::string> names;
  net.visit_parameters([&](param_ref<typename Net::value_type>& p) { names.push_back(p.name); });
  return names;
}

/// The parameter `name` of net (value and gradient pointers); fails the test when absent.
template <class Net>
param_ref<typename Net::value_type> find_param(Net& net, const std::string& name) {
  param_ref<typename Net::value_type> out{};
  bool found = false;
  net.visit_parameters([&](param_ref<typename Net::value_type>& p) {
    if (p.name == name) {
      out = p;
      found = true;
    }
  });
  REQUIRE_MESSAGE(found, name);
  return out;
}

template <class Net>
std::vector<double> activation_bits(Net& net) {
  std::vector<double> b;
  nn::visit_activation_quantizers(net, [&](std::string_view, auto& q) {
    for (double v : q.group_bits()) b.push_back(v);
  });
  return b;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

// LeNet-5 at 28x28, MACs per image (out channels x out positions x in channels x kernel area):
//   conv1  6 x 24*24 x 1*5*5   = 6 x 576 x 25   =  86,400   (28 - 5 + 1 = 24)
//   conv2 16 x  8*8  x 6*5*5   = 16 x 64 x 150  = 153,600   (pool: 12; 12 - 5 + 1 = 8)
//   fc1   256 x 120                             =  30,720   (pool: 4; 16*4*4 = 256)
//   fc2   120 x 84                              =  10,080
//   fc3    84 x 10                              =     840
constexpr double lenet_macs[] = {86400, 153600, 30720, 10080, 840};

} // namespace

TEST_CASE("without activation quantizers the builders give today's network types") {
  using T = float;
  using lenet_today =
      nn::sequential<nn::conv2d<T, quant::frac_bits>, nn::relu<T, 4>, nn::max_pool2d<T>,
                     nn::conv2d<T, quant::frac_bits>, nn::relu<T, 4>, nn::max_pool2d<T>,
                     nn::flatten<T>, nn::linear<T, quant::frac_bits>, nn::relu<T, 2>,
                     nn::linear<T, quant::frac_bits>, nn::relu<T, 2>,
                     nn::linear<T, quant::frac_bits>>;
  static_assert(std::is_same_v<decltype(nn::lenet5<T, quant::frac_bits>({})), lenet_today>);
  static_assert(
      std::is_same_v<decltype(nn::lenet5(nn::model_options<T, quant::frac_bits>{})), lenet_today>);
  using vgg_today = nn::sequential<
      nn::conv2d<T, quant::frac_bits>, nn::relu<T, 4>, nn::conv2d<T, quant::frac_bits>,
      nn::relu<T, 4>, nn::max_pool2d<T>, nn::conv2d<T, quant::frac_bits>, nn::relu<T, 4>,
      nn::conv2d<T, quant::frac_bits>, nn::relu<T, 4>, nn::max_pool2d<T>, nn::flatten<T>,
      nn::linear<T, quant::frac_bits>, nn::relu<T, 2>, nn::linear<T, quant::frac_bits>>;
  static_assert(std::is_same_v<decltype(nn::vgg_small<T, quant::frac_bits>({})), vgg_today>);
  auto net = nn::lenet5<T, quant::frac_bits>({.seed = 1});
  CHECK(activation_bits(net).empty());
}

TEST_CASE("lenet5 and vgg_small with activation quantizers after every ReLU") {
  nn::act_model_options<float, quant::frac_bits> o{.seed = 1};
  o.act_quant.b_init = 4;
  auto net = nn::lenet5(o);
  // the activation quantizers' parameters, in network order
  std::vector<std::string> act;
  for (const auto& name : parameter_names(net))
    if (name.find("_quant.") != std::string::npos) act.push_back(name);
  CHECK(act == std::vector<std::string>{"relu1_quant.bits", "relu1_quant.range", "relu2_quant.bits",
                                        "relu2_quant.range", "relu3_quant.bits",
                                        "relu3_quant.range", "relu4_quant.bits",
                                        "relu4_quant.range"});
  CHECK(activation_bits(net) == std::vector<double>{4, 4, 4, 4});
  CHECK(net.get<2>().name() == "relu1_quant"); // right after relu1, before pool1
  CHECK(net.get<2>().activation_quantizer().channels() == 6);
  CHECK(net.get<14>().activation_quantizer().channels() == 84);

  // Forward: relu1's output leaves relu1_quant on a 4-bit unsigned grid (at most 16 values).
  nn::visit_activation_quantizers(net, [](std::string_view, auto& q) { q.freeze_to({4}); });
  tensor4<float> x = tensor4<float>::from_shape({2, 1, 28, 28});
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> d(0.f, 1.f);
  for (auto& v : x) v = d(rng);
  const auto& y = net.forward(x);
  for (float v : y) REQUIRE(std::isfinite(v));
  const auto& q1 = net.get<2>().forward(net.get<1>().forward(net.get<0>().forward(x)));
  const std::set<float> levels(q1.begin(), q1.end());
  CHECK(levels.size() <= 16);
  CHECK(levels.size() >= 4);
  CHECK(*levels.begin() == 0.f);

  auto vgg = nn::vgg_small(nn::act_model_options<float, quant::frac_bits>{.width = 4, .hidden = 8});
  CHECK(activation_bits(vgg).size() == 5);
  CHECK(vgg.get<2>().name() == "relu1_quant");

  nn::act_model_options<float, quant::frac_bits> s;
  s.act_quant.is_signed = true;
  CHECK_THROWS_WITH_AS(
      nn::lenet5(s),
      doctest::Contains("lenet5: the activation quantizers after ReLU use the unsigned grid"),
      config_error);
}

TEST_CASE("resnet20 with activation quantizers after its 19 ReLUs, backward reaches them") {
  auto base = nn::resnet20<float>({.seed = 1, .width = 2});
  CHECK(activation_bits(base).empty());

  nn::act_model_options<float, quant::frac_bits> o{.seed = 1, .in_size = 8, .width = 2};
  o.act_quant.b_init = 3;
  auto net = nn::resnet20(o);
  std::vector<std::string> names;
  nn::visit_activation_quantizers(net, [&](std::string_view n, auto&) { names.emplace_back(n); });
  REQUIRE(names.size() == 19);
  CHECK(names[0] == "relu_quant");
  CHECK(names[1] == "layer1.0.relu1_quant");
  CHECK(names[2] == "layer1.0.relu_quant");
  CHECK(names[18] == "layer3.2.relu_quant");
  // 2 parameters (bits, range) per quantizer on top of the network without them
  auto wq = nn::resnet20(nn::model_options<float, quant::frac_bits>{.seed = 1, .width = 2});
  CHECK(nn::parameter_count(net) == nn::parameter_count(wq) + 2 * 19);
  tensor4<float> x = tensor4<float>::from_shape({2, 3, 8, 8});
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (auto& v : x) v = d(rng);
  const auto& y = net.forward(x);
  for (float v : y) CHECK(std::isfinite(v));
  tensor2<float> dy = tensor2<float>::from_shape({2, 10});
  for (auto& v : dy) v = 1.f;
  net.zero_grad();
  const auto& dx = net.backward(dy);
  for (float v : dx) REQUIRE(std::isfinite(v));
  CHECK(find_param(net, "layer2.1.relu1_quant.bits").grad[0] != 0);
}

TEST_CASE("LeNet-5 W4A4 BOPs and peak activation memory by hand (input 8-bit)") {
  nn::model_options<float, quant::fixed_bits, quant::fixed_bits, quant::act_quantizer> o;
  o.quant.bits = 4;
  o.act_quant.b_init = 4;
  auto net = nn::lenet5(o);
  auto costs = nn::model_costs_of(net, {.channels = 1, .height = 28, .width = 28});
  REQUIRE(costs.bops.layers() == 5);
  for (std::size_t l = 0; l < 5; ++l) CHECK(costs.bops.macs(l) == lenet_macs[l]);
  // conv1 reads the 8-bit image: 86,400 x 4 x 8; the rest 4 x 4.
  const double bops = 86400.0 * 4 * 8 + (153600.0 + 30720 + 10080 + 840) * 4 * 4;
  CHECK(bops == 5888640.0);
  CHECK(costs.bops.value() == bops);
  // input 784 x 8 = 6,272; relu1_quant 6 x 576 x 4 = 13,824 (the peak); relu2_quant
  // 16 x 64 x 4 = 4,096; relu3_quant 120 x 4; relu4_quant 84 x 4.
  REQUIRE(costs.memory.tensors() == 5);
  CHECK(costs.memory.tensor_bits(0) == 6272);
  CHECK(costs.memory.tensor_bits(2) == 4096);
  CHECK(costs.memory.tensor_bits(4) == 336);
  CHECK(costs.memory.value() == 13824);
  CHECK(costs.memory.name(costs.memory.peak_tensor()) == "relu1_quant");

  // Without activation quantizers every input after conv1 counts as float (32 bits).
  nn::model_options<float, quant::fixed_bits> w;
  w.quant.bits = 4;
  auto plain = nn::lenet5(w);
  auto c2 = nn::model_costs_of(plain, {});
  CHECK(c2.bops.value() == 86400.0 * 4 * 8 + (153600.0 + 30720 + 10080 + 840) * 4 * 32);
  CHECK(c2.memory.value() == 6272);
}

TEST_CASE("vgg_small W4A4 BOPs by hand at 28x28") {
  nn::model_options<float, quant::fixed_bits, quant::fixed_bits, quant::act_quantizer> o;
  o.quant.bits = 4;
  o.act_quant.b_init = 4;
  auto net = nn::vgg_small(o); // width 32, hidden 256
  auto costs = nn::model_costs_of(net, {});
  // conv1 32 x 28*28 x 1*9; conv2 32 x 784 x 32*9; conv3 (pool: 14) 64 x 196 x 32*9;
  // conv4 64 x 196 x 64*9; fc1 (pool: 7) 64*7*7 x 256; fc2 256 x 10
  const double macs[] = {225792, 7225344, 3612672, 7225344, 802816, 2560};
  REQUIRE(costs.bops.layers() == 6);
  double rest = 0;
  for (std::size_t l = 0; l < 6; ++l) {
    CHECK(costs.bops.macs(l) == macs[l]);
    if (l > 0) rest += macs[l];
  }
  CHECK(costs.bops.value() == macs[0] * 4 * 8 + rest * 4 * 4);
  // peak: relu1_quant and relu2_quant, 32 x 784 x 4 = 100,352 bits each; the first is reported
  CHECK(costs.memory.value() == 100352);
  CHECK(costs.memory.name(costs.memory.peak_tensor()) == "relu1_quant");
}

TEST_CASE("model costs: gradient in an activation bitwidth equals finite differences") {
  nn::act_model_options<double, quant::frac_bits> o;
  o.quant.group_size = quant::per_tensor;
  o.quant.b_init = 5.25;
  o.act_quant.b_min = 1;
  o.act_quant.b_init = 3.5;
  auto net = nn::lenet5(o);
  auto costs = nn::model_costs_of(net, {});
  auto b2 = find_param(net, "relu2_quant.bits"); // fc1's input (through pool2, flatten)
  auto b1 = find_param(net, "relu1_quant.bits"); // conv2's input, and the memory peak
  b2.value[0] = 3.3;
  const double h = 1e-3;
  auto fd = [&](param_ref<double>& p, auto value) {
    const double v0 = p.value[0];
    p.value[0] = v0 + h;
    const double up = value();
    p.value[0] = v0 - h;
    const double down = value();
    p.value[0] = v0;
    return (up - down) / (2 * h);
  };
  auto bops = [&] { return costs.bops.value(); };
  auto peak = [&] { return costs.memory.value(); };

  net.zero_grad();
  costs.bops.add_gradient(1.0);
  // dBOPs/db(relu2_quant) = MACs(fc1) x b_w(fc1) = 30,720 x 5.25
  CHECK(b2.grad[0] == doctest::Approx(30720 * 5.25).epsilon(1e-12));
  CHECK(b2.grad[0] == doctest::Approx(fd(b2, bops)).epsilon(1e-9));
  CHECK(b1.grad[0] == doctest::Approx(153600 * 5.25).epsilon(1e-12));
  CHECK(b1.grad[0] == doctest::Approx(fd(b1, bops)).epsilon(1e-9));

  net.zero_grad();
  costs.memory.add_gradient(1.0);
  // the peak is relu1_quant (6 x 576 x 3.5 bits): dpeak/db = 3,456
  CHECK(b1.grad[0] == doctest::Approx(3456).epsilon(1e-12));
  CHECK(b1.grad[0] == doctest::Approx(fd(b1, peak)).epsilon(1e-9));
  CHECK(b2.grad[0] == 0);
}

TEST_CASE("ResNet-20 W4A4 BOPs and peak activation memory by hand (residual blocks)") {
  // 1 x 28 x 28 input (Fashion-MNIST), width 16: stages at 28, 14 and 7 pixels.
  nn::model_options<float, quant::fixed_bits, quant::fixed_bits, quant::act_quantizer> o{
      .in_channels = 1, .in_size = 28};
  o.quant.bits = 4;
  o.act_quant.b_init = 4;
  auto net = nn::resnet20(o);
  auto costs = nn::model_costs_of(net, {});
  // MACs = C_out x H_out W_out x C_in k^2. Stem 16 x 784 x 9; a 3x3 16->16 conv at 28x28
  // 16 x 784 x 144; the first conv of stage 2 (stride 2) 32 x 196 x 144, its projection 1x1
  // 32 x 196 x 16; stage 3 alike at 7x7; fc 64 x 10.
  const double stem = 112896, same = 1806336, down = 903168, projection = 100352, fc = 640;
  REQUIRE(costs.bops.layers() == 22); // 1 + 18 + 2 projections + fc
  CHECK(costs.bops.macs(0) == stem);
  CHECK(costs.bops.macs(1) == same);       // layer1.0.conv1
  CHECK(costs.bops.macs(7) == down);       // layer2.0.conv1
  CHECK(costs.bops.macs(8) == same);       // layer2.0.conv2
  CHECK(costs.bops.macs(9) == projection); // layer2.0.shortcut.conv, read from the block input
  CHECK(costs.bops.macs(21) == fc);
  // Every conv after the stem reads a 4-bit relu_quant / relu1_quant output (the shortcut reads
  // the block's input, the previous block's relu_quant); the stem the 8-bit image; fc the
  // average pool (off the grid: 32 bits).
  const double inner = 6 * same + 2 * (down + same + projection + 4 * same);
  CHECK(inner == 30908416);
  CHECK(costs.bops.value() == stem * 4 * 8 + inner * 4 * 4 + fc * 4 * 32);
  // input 784 x 8 = 6,272; relu_quant (stem) and the stage-1 quantizers 16 x 784 x 4 = 50,176
  // each (the peak, the first reported); 19 quantizers in all.
  REQUIRE(costs.memory.tensors() == 20);
  CHECK(costs.memory.tensor_bits(0) == 6272);
  CHECK(costs.memory.value() == 50176);
  CHECK(costs.memory.name(costs.memory.peak_tensor()) == "relu_quant");
  CHECK(costs.memory.name(19) == "layer3.2.relu_quant");
  CHECK(costs.memory.tensor_bits(19) == 64 * 49 * 4);

  // Without activation quantizers every conv after the stem reads float: the sum of a block
  // and its shortcut is on no grid.
  nn::model_options<float, quant::fixed_bits> w{.in_channels = 1, .in_size = 28};
  w.quant.bits = 4;
  auto plain = nn::resnet20(w);
  auto c2 = nn::model_costs_of(plain, {});
  CHECK(c2.bops.value() == stem * 4 * 8 + inner * 4 * 32 + fc * 4 * 32);
  CHECK(c2.memory.value() == 6272);
}

TEST_CASE("model costs reject a residual whose block and shortcut end at different shapes") {
  // The channels agree (the constructor's check passes), the stride does not.
  auto net = nn::sequential(nn::residual(
      std::string("block"),
      nn::sequential(nn::conv2d<float>(
          {.in_channels = 2, .out_channels = 2, .kernel = 3, .stride = 2, .name = "conv"})),
      nn::identity<float, 4>("shortcut")));
  CHECK_THROWS_WITH_AS(
      nn::model_costs_of(net, {.channels = 2, .height = 9, .width = 9}),
      doctest::Contains("layer 0 'block': the block gives 2x4x4, the shortcut 2x9x9"),
      config_error);
}

TEST_CASE("model costs reject networks they cannot walk, naming the layer") {
  auto res = nn::sequential(nn::conv2d<float>({.in_channels = 1, .out_channels = 2, .kernel = 3}),
                            nn::dropout<float, 4>({.name = "drop"}));
  CHECK_THROWS_WITH_AS(nn::model_costs_of(res, {}), doctest::Contains("layer 1 'drop' (dropout"),
                       config_error);
  auto nested = nn::sequential(std::string("outer"),
                               nn::sequential(std::string("inner"), nn::identity<float, 4>("id"),
                                              nn::dropout<float, 4>({.name = "drop"})));
  CHECK_THROWS_WITH_AS(nn::model_costs_of(nested, {}),
                       doctest::Contains("layer 0.1 'outer.inner.drop'"), config_error);
  auto net = nn::lenet5<float>({});
  CHECK_THROWS_WITH_AS(nn::model_costs_of(net, {.channels = 3}),
                       doctest::Contains("layer 0 'conv1': expected an input of 1 channels"),
                       config_error);
}

TEST_CASE("training LeNet-5 under a BOPs penalty lowers the activation bitwidths") {
  // Two classes of 16x16 images: a bright bar in the top or the bottom half, with noise.
  const std::size_t n = 32, s = 16;
  tensor4<float> x = tensor4<float>::from_shape({n, 1, s, s});
  std::vector<std::int32_t> labels(n);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> noise(0.f, 0.2f);
  for (std::size_t i = 0; i < n; ++i) {
    labels[i] = static_cast<std::int32_t>(i % 2);
    for (std::size_t r = 0; r < s; ++r)
      for (std::size_t c = 0; c < s; ++c) {
        const bool bar = labels[i] == 0 ? (r >= 3 && r < 6) : (r >= 10 && r < 13);
        x(i, 0, r, c) = (bar ? 1.f : 0.f) + noise(rng);
      }
  }
  nn::act_model_options<float, quant::frac_bits> o{.seed = 2, .in_size = s, .num_classes = 2};
  o.quant.b_init = 6;
  o.act_quant.b_min = 2;
  o.act_quant.b_max = 8;
  o.act_quant.b_init = 6;
  auto net = nn::lenet5(o);
  auto costs = nn::model_costs_of(net, {.height = s, .width = s});
  const double bops0 = costs.bops.value();
  REQUIRE(mean(activation_bits(net)) == 6);

  quant::size_penalty p;
  p.lambda = 1;
  p.target_bits = bops0 / 4; // W3A3-ish: well below the start
  nn::softmax_cross_entropy<float> loss;
  optim::adam<float> opt({.lr = 1e-3});
  opt.set_group(param_kind::bitwidth, {.lr = 5e-2, .weight_decay = 0});
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  float first_loss = 0, last_loss = 0;
  for (int step = 0; step < 30; ++step) {
    net.zero_grad();
    const auto& y = net.forward(x);
    for (float v : y) REQUIRE(std::isfinite(v));
    last_loss = loss.forward(y, labels);
    if (step == 0) first_loss = last_loss;
    net.backward(loss.backward());
    (void)quant::apply_cost_penalty(costs.bops, p);
    opt.step(params);
    nn::visit_activation_quantizers(net, [](std::string_view, auto& q) { q.project(); });
    net.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  }
  REQUIRE(std::isfinite(last_loss));
  const double after = mean(activation_bits(net));
  MESSAGE("mean activation bits 6 -> " << after << ", BOPs " << bops0 << " -> "
                                       << costs.bops.value() << ", loss " << first_loss << " -> "
                                       << last_loss);
  // Adam moves each bitwidth by up to ~lr = 0.05 per step against the penalty: 30 steps, >= 1 bit.
  CHECK(after <= 5.0);
  CHECK(costs.bops.value() < 0.8 * bops0);
  CHECK(last_loss < first_loss + 0.05f);
}

TEST_CASE("train::train_step projects the activation quantizers' bitwidths into their bounds") {
  // One SGD step with a huge bitwidth learning rate throws every activation bitwidth far out of
  // [b_min, b_max] = [2, 8]; the step's projection must bring each back to a bound.
  const std::size_t n = 4, s = 16;
  tensor4<float> x = tensor4<float>::from_shape({n, 1, s, s});
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> pixel(0.f, 1.f);
  for (float& v : x) v = pixel(rng);
  const std::vector<std::int32_t> labels{0, 1, 0, 1};
  nn::act_model_options<float, quant::frac_bits> o{.seed = 4, .in_size = s, .num_classes = 2};
  o.act_quant.b_init = 5;
  auto net = nn::lenet5(o);
  nn::softmax_cross_entropy<float> loss;
  optim::sgd<float> opt({.lr = 1e-3});
  opt.set_group(param_kind::bitwidth, {.lr = 1e7, .weight_decay = 0});
  const auto r = train::train_step(net, loss, opt, x, labels);
  REQUIRE(r.bad.empty());
  const std::vector<double> bits = activation_bits(net);
  REQUIRE(bits.size() == 4);
  std::size_t at_bound = 0;
  for (double b : bits) {
    CHECK(b >= 2.0);
    CHECK(b <= 8.0);
    at_bound += (b == 2.0 || b == 8.0) ? 1 : 0;
  }
  CHECK(at_bound >= 1); // the step did move them (to a bound), so the check above was exercised
}

} // namespace test_act_models
