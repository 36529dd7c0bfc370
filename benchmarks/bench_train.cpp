// Training throughput: one full training step (zero_grad, forward, softmax cross-entropy,
// backward, size penalty, Adam, quantizer projection) of LeNet-5, the small VGG-style net and
// ResNet-20 (on 28x28x1 inputs), FP32 (no_quant) and with learned per-channel bitwidths
// (frac_bits), in images/s.
//
// The C++ half of the PyTorch comparison in benchmarks/peers/ (train_pytorch.py runs the same
// networks, data, optimizer and quantizer; run_peers.py alternates the two and prints the
// table). The first layer skips dL/dx (conv2d::set_input_grad(false)), as PyTorch does for an
// input that does not require grad. Data: 8 preloaded batches of random Fashion-MNIST-shaped images
// (N, 1, 28, 28), normal(0, 1), labels uniform in [0, 10), cycled. Three warm-up steps run before
// timing.
//
//   cmake --preset bench && cmake --build --preset bench --target bench_train
//   OMP_NUM_THREADS=2 build/bench/benchmarks/bench_train
//   --benchmark_filter='^train/lenet5/quant/64/'
//
// Names: train/<model>/<fp32|quant>/<batch>. Counter: items_per_second = images/s (wall time).
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/penalty.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace {

using namespace bitgrad;

constexpr std::size_t batches_preloaded = 8;
constexpr std::size_t warmup_steps = 3;

struct batch_data {
  tensor4<float> x;
  std::vector<std::int32_t> y;
};

std::vector<batch_data> make_data(std::size_t batch) {
  std::mt19937_64 rng(12345);
  std::normal_distribution<float> pixel(0.0f, 1.0f);
  std::uniform_int_distribution<std::int32_t> label(0, 9);
  std::vector<batch_data> data(batches_preloaded);
  for (auto& b : data) {
    b.x = tensor4<float>::from_shape({batch, 1, 28, 28});
    for (auto& v : b.x) v = pixel(rng);
    b.y.resize(batch);
    for (auto& v : b.y) v = label(rng);
  }
  return data;
}

/// One training step as train/trainer.hpp runs it (search phase when quantized).
/// Net: an nn::sequential; Quantized: its layers carry learnable bitwidths (frac_bits).
template <class Net, bool Quantized>
class step_runner {
public:
  explicit step_runner(Net& net) : net_(net), adam_({.lr = 1e-3}) {
    adam_.set_group(param_kind::bitwidth, {.lr = 0.05, .weight_decay = 0});
    auto quants = [this](auto&& f) { net_.visit_quantizers(f); };
    penalty_ = {.form = quant::penalty_form::hinge,
                .lambda = 5.0,
                .target_bits = quant::target_bits_for_average(quants, 3.0)};
  }

  void step(const batch_data& b) {
    auto params = [this](auto&& f) { net_.visit_parameters(f); };
    auto quants = [this](auto&& f) { net_.visit_quantizers(f); };
    net_.zero_grad();
    const auto& logits = net_.forward(b.x);
    const float l = loss_.forward(logits, b.y);
    benchmark::DoNotOptimize(l);
    net_.backward(loss_.backward());
    if constexpr (Quantized) quant::apply_size_penalty(quants, penalty_);
    adam_.step(params);
    if constexpr (Quantized) net_.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  }

private:
  Net& net_;
  optim::adam<float> adam_;
  nn::softmax_cross_entropy<float> loss_;
  quant::size_penalty penalty_{};
};

template <bool Quantized, class Net>
void run(benchmark::State& state, Net net, std::size_t batch) {
  const auto data = make_data(batch);
  net.train(true);
  // The first layer's input is the data: nothing needs dL/dx there (PyTorch skips it too, the
  // input not requiring grad).
  net.template get<0>().set_input_grad(false);
  step_runner<Net, Quantized> runner(net);
  std::size_t i = 0;
  for (std::size_t w = 0; w < warmup_steps; ++w) runner.step(data[i++ % data.size()]);
  for (auto _ : state) runner.step(data[i++ % data.size()]);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
}

template <bool Quantized, class Make>
void add(const std::string& name, Make make, std::size_t batch) {
  benchmark::RegisterBenchmark(
      name.c_str(), [make, batch](benchmark::State& s) { run<Quantized>(s, make(), batch); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

void register_all() {
  for (std::size_t batch : {64, 256}) {
    const std::string b = std::to_string(batch);
    add<false>(
        "train/lenet5/fp32/" + b, [] { return nn::lenet5<float>({.seed = 1}); }, batch);
    add<true>(
        "train/lenet5/quant/" + b, [] { return nn::lenet5<float, quant::frac_bits>({.seed = 1}); },
        batch);
  }
  for (std::size_t batch : {128}) {
    const std::string b = std::to_string(batch);
    add<false>(
        "train/vgg_small/fp32/" + b, [] { return nn::vgg_small<float>({.seed = 1}); }, batch);
    add<true>(
        "train/vgg_small/quant/" + b,
        [] { return nn::vgg_small<float, quant::frac_bits>({.seed = 1}); }, batch);
    // ResNet-20 on the Fashion-MNIST-shaped data (1 channel, 28x28); every conv and the fc
    // through the quantizer (no 8-bit edge layers), as the PyTorch peer does.
    add<false>(
        "train/resnet20/fp32/" + b,
        [] { return nn::resnet20<float>({.seed = 1, .in_channels = 1, .in_size = 28}); }, batch);
    add<true>(
        "train/resnet20/quant/" + b,
        [] {
          return nn::resnet20<float, quant::frac_bits>(
              {.seed = 1, .in_channels = 1, .in_size = 28});
        },
        batch);
  }
}

} // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
