// The smallest complete use of bitgrad: LeNet-5 with learned per-channel bitwidths, trained by
// hand (no trainer) on the committed Fashion-MNIST sample or the full data set.
//
//   quickstart [--data DIR] [--steps N]
#include "cli_checks.hpp"

#include <bitgrad/bitgrad.hpp>

#include <CLI/CLI.hpp>

#include <cstddef>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

/// Trains LeNet-5 for `steps` steps on the gzip IDX files in `dir`, freezes its bitwidths within
/// the size target and prints the test accuracy, bits and size.
int run(const std::filesystem::path& dir, std::size_t steps) {
  using namespace bitgrad;
  const dataset train_set =
      load_mnist_format(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz");
  const dataset test_set =
      load_mnist_format(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz");

  // LeNet-5 whose every conv/linear layer learns one bitwidth per output channel, in [2, 8].
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  auto quantizers = [&](auto&& f) { net.visit_quantizers(f); };

  optim::adam<float> opt({.lr = 1e-3});
  opt.set_group(param_kind::bitwidth, {.lr = 0.02, .weight_decay = 0});
  // Penalise a model larger than 3 bits per weight on average (overhead included).
  const quant::size_penalty penalty{.form = quant::penalty_form::hinge,
                                    .lambda = 5.0,
                                    .target_bits = quant::target_bits_for_average(quantizers, 3.0)};

  loader<float> batches(train_set,
                        {.batch_size = 64, .seed = 1, .mean = {0.286}, .stddev = {0.353}});
  nn::softmax_cross_entropy<float> loss;
  tensor4<float> x;
  std::vector<std::int32_t> y;
  for (std::size_t step = 0; step < steps;) {
    if (!batches.next(x, y)) continue; // next epoch
    // forward, loss, backward, d(penalty)/d(bitwidths), Adam, then each quantizer keeps its
    // bitwidths in [2, 8]; train::trainer takes the same step (train/step.hpp).
    const auto r = train::train_step(net, loss, opt, x, y, &penalty);
    // A non-finite loss or gradient (NaN data, a divergent learning rate) changed nothing: the
    // step would have turned weights and bitwidths into NaN.
    if (!r.bad.empty()) {
      std::fprintf(stderr, "step %zu: %s\n", step + 1, r.bad.c_str());
      return 1;
    }
    if (++step % 100 == 0)
      std::printf("step %4zu  loss %.4f  stored bits per weight %.2f\n", step, r.loss,
                  quant::average_bits_per_weight(quantizers));
  }
  // Integer bitwidths within the size target, then the test accuracy. The model size counts
  // every stored byte (codes, per-group scale and bitwidth, float32 biases), as the trainer's.
  quant::freeze_to_budget(quantizers, penalty.target_bits);
  const auto eval = train::evaluate(net, test_set, {.mean = {0.286}, .stddev = {0.353}});
  const auto size = train::measure_size(net);
  std::printf("test accuracy %.2f%% at %.2f stored bits per weight; model size %.0f bytes (%.1fx "
              "smaller than FP32)\n",
              100 * eval.accuracy, quant::average_bits_per_weight(quantizers), size.bytes(),
              size.compression());
  return 0;
}

int main(int argc, char** argv) {
  namespace cli = bitgrad::cli;
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::size_t steps = 600;
  CLI::App app{"bitgrad quickstart: learned bitwidths in a hand-written training loop"};
  app.add_option("--data", data, "folder with Fashion-MNIST gzip IDX files")->capture_default_str();
  app.add_option("--steps", steps, "training steps")
      ->check(cli::whole_number(1))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    return run(data, steps);
  } catch (const std::exception& e) { // a missing or malformed data file: its name and offset
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
  }
}
