// A network of linear layers fed image batches without nn::flatten must not compile, and the
// compiler must name the missing flatten (issue #17: it compiled, and xtensor's implicit
// tensor4 -> tensor2 conversion overflowed the stack at run time). tests/compile_fail/
// CMakeLists.txt builds this file once per BITGRAD_CASE and checks the compiler's message;
// case 0 is the same code with the flatten in place, which must compile.
//   0  control: flatten -> linear -> relu -> linear, through forward, evaluate and trainer
//   1  sequential::forward(tensor4) on linear -> relu -> linear
//   2  linear::forward(tensor4)
//   3  train::evaluate on linear -> relu -> linear
//   4  train::trainer on linear -> relu -> linear
//   5  sequential(conv2d, relu, linear): a (N, C, H, W) -> (N, features) step
#ifndef BITGRAD_CASE
#error "define BITGRAD_CASE (0 to 5)"
#endif

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/sequential.hpp>
// Only the cases that evaluate or train parse the training headers (~40 % of a case's compile
// time; issue #18).
#if BITGRAD_CASE == 0 || BITGRAD_CASE == 3
#include <bitgrad/train/evaluate.hpp>
#endif
#if BITGRAD_CASE == 0 || BITGRAD_CASE == 4
#include <bitgrad/train/trainer.hpp>
#endif

using namespace bitgrad;

namespace {

auto mlp() {
  return nn::sequential(nn::linear<float>({.in_features = 784, .out_features = 32, .name = "fc1"}),
                        nn::relu<float, 2>("relu"),
                        nn::linear<float>({.in_features = 32, .out_features = 10, .name = "fc2"}));
}

auto mlp_with_flatten() {
  return nn::sequential(nn::flatten<float>("flatten"),
                        nn::linear<float>({.in_features = 784, .out_features = 32, .name = "fc1"}),
                        nn::relu<float, 2>("relu"),
                        nn::linear<float>({.in_features = 32, .out_features = 10, .name = "fc2"}));
}

} // namespace

int main() {
  tensor4<float> x = xt::zeros<float>({2ul, 1ul, 28ul, 28ul});
  const dataset data;
#if BITGRAD_CASE == 0
  auto net = mlp_with_flatten();
  auto twin = mlp_with_flatten();
  (void)net.forward(x);
  (void)train::evaluate(net, data, {});
  train::trainer<decltype(net), decltype(twin)> t(net, twin, data, data, {});
  (void)t;
#elif BITGRAD_CASE == 1
  auto net = mlp();
  (void)net.forward(x);
#elif BITGRAD_CASE == 2
  nn::linear<float> fc({.in_features = 784, .out_features = 10, .name = "fc"});
  (void)fc.forward(x);
#elif BITGRAD_CASE == 3
  auto net = mlp();
  (void)train::evaluate(net, data, {});
#elif BITGRAD_CASE == 4
  auto net = mlp();
  auto twin = mlp();
  train::trainer<decltype(net), decltype(twin)> t(net, twin, data, data, {});
  (void)t;
#elif BITGRAD_CASE == 5
  auto net = nn::sequential(nn::conv2d<float>({.in_channels = 1, .out_channels = 4, .kernel = 3}),
                            nn::relu<float, 4>("relu"),
                            nn::linear<float>({.in_features = 4 * 26 * 26, .out_features = 10}));
  (void)net;
#endif
  (void)x;
  (void)data;
  return 0;
}
