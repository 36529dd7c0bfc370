// Composition: sequential and residual (values, names, nesting, visitors) and whole networks
// through the gradient checker, batch norm and residual connections included.
#include "random_tensor.hpp"

#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/dropout.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/gradcheck.hpp>
#include <bitgrad/nn/identity.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/pooling.hpp>
#include <bitgrad/nn/residual.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/nn/visit.hpp>

#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

namespace test_nn_compose {

using namespace bitgrad;
using bitgrad::testing::random_tensor;

namespace {

template <class T>
auto small_mlp() {
  return nn::sequential(
      nn::linear<T>({.in_features = 4, .out_features = 5, .seed = 1, .name = "fc1"}),
      nn::relu<T, 2>("relu1"),
      nn::linear<T>({.in_features = 5, .out_features = 3, .seed = 2, .name = "fc2"}));
}

} // namespace

TEST_CASE_TEMPLATE("sequential chains forward and backward through its layers", T, float, double) {
  auto net = small_mlp<T>();
  static_assert(nn::layer<decltype(net)>);
  static_assert(decltype(net)::size == 3);
  auto x = random_tensor<T, 2>({2, 4}, 3);
  const auto& y = net.forward(x);
  // The same computation by hand, layer by layer.
  nn::linear<T> a({.in_features = 4, .out_features = 5, .seed = 1});
  nn::relu<T, 2> r;
  nn::linear<T> b({.in_features = 5, .out_features = 3, .seed = 2});
  const auto& expect = b.forward(r.forward(a.forward(x)));
  CHECK(xt::allclose(y, expect));
  CHECK(&net.template get<2>().forward(
            net.template get<1>().forward(net.template get<0>().forward(x))) == &y);
  tensor2<T> dy = xt::ones<T>({2, 3});
  const auto& dx = net.backward(dy);
  const auto& dx_ref = a.backward(r.backward(b.backward(dy)));
  CHECK(xt::allclose(dx, dx_ref));
  CHECK(xt::allclose(net.template get<0>().weight_grad(), a.weight_grad()));
}

TEST_CASE("sequential::backward(dy, hook) reports each layer's parameters once their gradients "
          "are final, last layer first") {
  auto net = nn::sequential(
      std::string("net"), small_mlp<double>(),
      nn::linear<double>({.in_features = 3, .out_features = 2, .seed = 3, .name = "fc3"}));
  auto twin = nn::sequential(
      std::string("net"), small_mlp<double>(),
      nn::linear<double>({.in_features = 3, .out_features = 2, .seed = 3, .name = "fc3"}));
  const auto x = random_tensor<double, 2>({4, 4}, 7);
  const auto dy = random_tensor<double, 2>({4, 2}, 8);
  net.zero_grad();
  twin.zero_grad();
  net.forward(x);
  twin.forward(x);
  std::vector<std::string> order;
  std::vector<std::vector<double>> at_report;
  const tensor2<double> dx = net.backward(dy, [&](param_ref<double>& p) {
    order.push_back(p.name);
    at_report.emplace_back(p.grad, p.grad + p.size);
  });
  const tensor2<double> dx_plain = twin.backward(dy);
  CHECK(dx == dx_plain);
  // The top-level layers from the last: fc3, then the nested sequential as one unit.
  CHECK(order == std::vector<std::string>{"net.fc3.weight", "net.fc3.bias", "net.fc1.weight",
                                          "net.fc1.bias", "net.fc2.weight", "net.fc2.bias"});
  // What the hook saw is the final gradient, equal to the plain backward's.
  std::size_t i = 0;
  std::map<std::string, std::vector<double>> final_grads;
  twin.visit_parameters([&](param_ref<double>& p) {
    final_grads[p.name] = std::vector<double>(p.grad, p.grad + p.size);
  });
  for (const std::string& name : order) CHECK(at_report[i++] == final_grads.at(name));
}

TEST_CASE("parameter names, counts, train mode and layer visits through nesting") {
  auto block = nn::residual(
      std::string("block"),
      nn::sequential(
          nn::conv2d<float>(
              {.in_channels = 2, .out_channels = 2, .kernel = 3, .padding = 1, .name = "conv1"}),
          nn::batch_norm<float, 4>({.features = 2, .name = "bn1"})),
      nn::identity<float, 4>("shortcut"));
  auto net = nn::sequential(std::string("net"), std::move(block), nn::relu<float, 4>("relu"),
                            nn::global_avg_pool<float>("gap"),
                            nn::dropout<float, 2>({.p = 0.5, .name = "drop"}));
  static_assert(nn::layer<decltype(net)>);
  std::vector<std::string> names;
  net.visit_parameters([&](param_ref<float>& p) { names.push_back(p.name); });
  CHECK(names == std::vector<std::string>{"net.block.conv1.weight", "net.block.conv1.bias",
                                          "net.block.bn1.gamma", "net.block.bn1.beta"});
  CHECK(nn::parameter_count(net) == 2 * 2 * 9 + 2 + 2 + 2);
  std::vector<std::string> leaves;
  auto visit = [&](const std::string& full, auto& leaf) {
    leaves.push_back(full + ":" + leaf.describe());
  };
  nn::visit_layers(net, visit);
  REQUIRE(leaves.size() == 6);
  CHECK(leaves[0] == "net.block.conv1:conv2d 2->2 3x3 pad 1 no_quant");
  CHECK(leaves[2] == "net.block.shortcut:identity");
  CHECK(leaves[5].rfind("net.drop:dropout", 0) == 0);
  const std::string table = nn::summary(net);
  CHECK(table.find("total parameters  42") != std::string::npos);
  net.train(false);
  CHECK_FALSE(net.training());
  CHECK_FALSE(net.get<3>().training());
  CHECK_FALSE(net.get<0>().block().get<1>().training());
  std::size_t quantizers = 0;
  net.visit_quantizers([&](std::string_view layer_name, auto&) {
    ++quantizers;
    CHECK(layer_name == "net.block.conv1");
  });
  CHECK(quantizers == 1);
}

TEST_CASE("residual adds block and shortcut outputs and gradients") {
  auto res = nn::residual(std::string("res"),
                          nn::linear<double>({.in_features = 3, .out_features = 3, .seed = 4}),
                          nn::identity<double, 2>());
  auto x = random_tensor<double, 2>({2, 3}, 5);
  nn::linear<double> same({.in_features = 3, .out_features = 3, .seed = 4});
  const tensor2<double> fx = same.forward(x);
  CHECK(xt::allclose(res.forward(x), fx + x));
  tensor2<double> dy = random_tensor<double, 2>({2, 3}, 6);
  const tensor2<double> expect = same.backward(dy) + dy;
  CHECK(res.backward(dy) == expect); // one addition per element: exact
}

TEST_CASE("residual backward: dx = block dx + shortcut dx exactly, over SIMD batches and a tail") {
  // 3 x 37 = 111 values: whole SIMD batches and a scalar tail on every instruction set.
  auto res = nn::residual(std::string("res"),
                          nn::linear<float>({.in_features = 37, .out_features = 37, .seed = 8}),
                          nn::identity<float, 2>());
  nn::linear<float> same({.in_features = 37, .out_features = 37, .seed = 8});
  const auto x = random_tensor<float, 2>({3, 37}, 9);
  const auto dy = random_tensor<float, 2>({3, 37}, 10);
  static_cast<void>(res.forward(x));
  static_cast<void>(same.forward(x));
  const tensor2<float>& dx = res.backward(dy);
  const tensor2<float>& da = same.backward(dy);
  REQUIRE(dx.shape() == da.shape());
  for (std::size_t i = 0; i < dx.size(); ++i) {
    INFO("i = ", i);
    CHECK(dx.data()[i] == da.data()[i] + dy.data()[i]);
  }
}

TEST_CASE("residual + relu over a block ending in batch norm: the sum and the relu in batch norm's "
          "pass (forward_add_relu), the same bits as block, shortcut, add, relu") {
  // 2 x 3 x 5 x 7: planes of 35 values (SIMD batches and a tail); training, then eval.
  auto block = [] {
    return nn::sequential(nn::conv2d<float>({.in_channels = 3,
                                             .out_channels = 3,
                                             .kernel = 3,
                                             .padding = 1,
                                             .bias = false,
                                             .seed = 11,
                                             .name = "conv"}),
                          nn::batch_norm<float, 4>({.features = 3, .name = "bn"}));
  };
  auto res = nn::residual(std::string("res"), block(), nn::identity<float, 4>());
  auto same = block();
  const auto x = random_tensor<float, 4>({2, 3, 5, 7}, 12);
  const auto dy = random_tensor<float, 4>({2, 3, 5, 7}, 13);
  for (bool training : {true, false}) {
    CAPTURE(training);
    res.train(training);
    same.train(training);
    const tensor4<float>& y = res.forward_relu(x);
    const tensor4<float>& a = same.forward(x);
    tensor4<float> expect = a;
    for (std::size_t i = 0; i < expect.size(); ++i) {
      const float v = a.data()[i] + x.data()[i];
      expect.data()[i] = v <= 0.0f ? 0.0f : v;
    }
    CHECK(y == expect);
    if (!training) { // the fused pass ran: the output is the batch norm's own tensor (eval:
                     // running the layers again changes no state)
      CHECK(&y == &res.block().get<1>().forward(res.block().get<0>().forward(x)));
      static_cast<void>(res.forward_relu(x));
    }
    // Backward: dy masked by y > 0, through the block (plain batch norm backward) and the
    // identity, added.
    tensor4<float> masked = dy;
    for (std::size_t i = 0; i < masked.size(); ++i)
      masked.data()[i] = expect.data()[i] > 0.0f ? dy.data()[i] : 0.0f;
    const tensor4<float>& dx = res.backward(dy);
    const tensor4<float>& da = same.backward(masked);
    REQUIRE(dx.shape() == da.shape());
    for (std::size_t i = 0; i < dx.size(); ++i) {
      INFO("i = ", i);
      CHECK(dx.data()[i] == da.data()[i] + masked.data()[i]);
    }
  }
}

TEST_CASE("batch_norm forward_add_relu rejects a skip operand of another shape") {
  nn::batch_norm<float, 4> bn({.features = 2, .name = "bn2"});
  const auto x = random_tensor<float, 4>({2, 2, 3, 3}, 14);
  const auto skip = random_tensor<float, 4>({2, 2, 3, 4}, 15);
  CHECK_THROWS_WITH_AS(bn.forward_add_relu(x, [&]() -> const tensor4<float>& { return skip; }),
                       "bn2: output (2, 2, 3, 3) and skip operand (2, 2, 3, 4) differ",
                       shape_error);
}

TEST_CASE("gradient check: an MLP with batch norm and dropout") {
  auto net = nn::sequential(
      nn::linear<double>({.in_features = 6, .out_features = 8, .seed = 1, .name = "fc1"}),
      nn::batch_norm<double, 2>({.features = 8, .name = "bn1"}), nn::relu<double, 2>("relu1"),
      nn::dropout<double, 2>({.p = 0.25, .seed = 3, .name = "drop"}),
      nn::linear<double>({.in_features = 8, .out_features = 4, .seed = 2, .name = "fc2"}));
  net.get<3>().hold_mask(true);
  const auto r = nn::gradcheck(net, random_tensor<double, 2>({5, 6}, 7));
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.tensors.size() == 1 + 6);
  CHECK(r.max_error < 1e-5);
}

TEST_CASE("gradient check: a conv net with a projection residual block and batch norm") {
  auto body = nn::sequential(nn::conv2d<double>({.in_channels = 2,
                                                 .out_channels = 3,
                                                 .kernel = 3,
                                                 .stride = 2,
                                                 .padding = 1,
                                                 .bias = false,
                                                 .seed = 1,
                                                 .name = "conv1"}),
                             nn::batch_norm<double, 4>({.features = 3, .name = "bn1"}),
                             nn::relu<double, 4>("relu1"),
                             nn::conv2d<double>({.in_channels = 3,
                                                 .out_channels = 3,
                                                 .kernel = 3,
                                                 .padding = 1,
                                                 .bias = false,
                                                 .seed = 2,
                                                 .name = "conv2"}),
                             nn::batch_norm<double, 4>({.features = 3, .name = "bn2"}));
  auto shortcut = nn::sequential(std::string("shortcut"),
                                 nn::conv2d<double>({.in_channels = 2,
                                                     .out_channels = 3,
                                                     .kernel = 1,
                                                     .stride = 2,
                                                     .bias = false,
                                                     .seed = 3,
                                                     .name = "conv"}),
                                 nn::batch_norm<double, 4>({.features = 3, .name = "bn"}));
  auto net = nn::sequential(
      nn::residual(std::string("block"), std::move(body), std::move(shortcut)),
      nn::relu<double, 4>("relu"),
      nn::residual(std::string("block2"),
                   nn::sequential(nn::conv2d<double>({.in_channels = 3,
                                                      .out_channels = 3,
                                                      .kernel = 3,
                                                      .padding = 1,
                                                      .seed = 4,
                                                      .name = "conv"}),
                                  nn::batch_norm<double, 4>({.features = 3, .name = "bn"})),
                   nn::identity<double, 4>()),
      nn::max_pool2d<double>({.kernel = 2, .name = "pool"}), nn::flatten<double>(),
      nn::linear<double>({.in_features = 3 * 2 * 2, .out_features = 3, .seed = 5, .name = "fc"}));
  const auto r = nn::gradcheck(net, random_tensor<double, 4>({2, 2, 8, 8}, 9));
  INFO(r.worst, " analytic ", r.analytic, " numeric ", r.numeric);
  CHECK(r.checked > 300);
  CHECK(r.max_error < 1e-5);
}

} // namespace test_nn_compose
