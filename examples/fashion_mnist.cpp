// Train LeNet-5 (or the VGG-style net) on Fashion-MNIST with learned per-channel bitwidths:
// FP32 pretraining -> bitwidth search under a size penalty -> freeze -> fine-tune.
//
//   fashion_mnist --out runs/demo                 (what `make demo` runs)
//   fashion_mnist --model vgg-small --policy step_bits --target-bits 2 --out runs/vgg
//
// Prints FP32 and quantized accuracy on the full test set, the per-layer table and the size;
// writes report.html, log.csv, summary.json, checkpoint.bin and the packed model model.bgm
// (docs/model-format.md; run it with examples/deploy) into --out.
#include <bitgrad/bitgrad.hpp>
#include <bitgrad/train/export.hpp>
#include <bitgrad/train/npz_import.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <string>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace {

struct settings {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string model = "lenet5";
  std::string policy = "frac_bits";
  std::string group = "1";
  double target_bits = 3.0;
  double b_min = 2, b_max = 8;
  std::size_t train_limit = 0;
  int threads = 0;
  std::string init; ///< FP32 weights (.npz) to start from instead of pretraining
  bitgrad::train::trainer_options trainer;
};

std::size_t parse_group(const std::string& g) {
  if (g == "layer" || g == "tensor") return bitgrad::quant::per_tensor;
  if (g == "channel") return 1;
  try {
    std::size_t used = 0;
    const unsigned long v = std::stoul(g, &used);
    if (used == g.size() && v > 0) return v;
  } catch (const std::exception&) {
  }
  throw bitgrad::config_error("--group: expected a positive number, 'channel' or 'layer', got '" +
                              g + "'");
}

void print_table(const bitgrad::run_summary& s) {
  std::printf("\n%-8s %-10s %8s %7s %6s %6s %6s %10s %7s %7s\n", "layer", "policy", "params",
              "groups", "min", "mean", "max", "bytes", "spread", "rho");
  for (const auto& l : s.layers)
    std::printf("%-8s %-10s %8zu %7zu %6.2f %6.2f %6.2f %10.0f %7.2f %7.2f\n", l.name.c_str(),
                l.policy.c_str(), l.params, l.groups, l.bits_min, l.bits_mean, l.bits_max, l.bytes,
                l.bits_spread, l.rank_correlation);
  std::printf("\nFP32 accuracy       %.2f%%\n", 100 * s.fp32_accuracy);
  std::printf("quantized accuracy  %.2f%%\n", 100 * s.quant_accuracy);
  std::printf("average bits        %.3f per weight (codes)\n", s.average_bits);
  std::printf("model size          %.0f bytes (%.1f KB: codes, scales, bitwidths, biases)\n",
              s.size_bytes, s.size_bytes / 1e3);
  std::printf("compression         %.2fx vs FP32\n", s.compression);
  std::printf("time                %.1f s\n", s.seconds);
}

template <template <class> class Quant, class Builder>
int run(const settings& cfg, Builder build) {
  using T = float;
  const std::filesystem::path dir = cfg.data;
  bitgrad::dataset train_set = bitgrad::load_mnist_format(dir / "train-images-idx3-ubyte.gz",
                                                          dir / "train-labels-idx1-ubyte.gz");
  bitgrad::dataset test_set = bitgrad::load_mnist_format(dir / "t10k-images-idx3-ubyte.gz",
                                                         dir / "t10k-labels-idx1-ubyte.gz");
  if (cfg.train_limit && cfg.train_limit < train_set.size()) {
    std::vector<std::size_t> first(cfg.train_limit);
    for (std::size_t i = 0; i < first.size(); ++i) first[i] = i;
    train_set = bitgrad::subset(train_set, first);
  }

  typename Quant<T>::options qopt{};
  qopt.group_size = parse_group(cfg.group);
  if constexpr (requires { qopt.b_min; }) {
    qopt.b_min = cfg.b_min;
    qopt.b_max = cfg.b_max;
  } else {
    qopt.bits = static_cast<int>(std::lround(cfg.target_bits));
  }
  if constexpr (requires { qopt.seed; }) qopt.seed = cfg.trainer.seed;
  auto fp32 = build.template operator()<bitgrad::quant::no_quant>(
      bitgrad::nn::model_options<T>{.seed = cfg.trainer.seed});
  auto quantized = build.template operator()<Quant>(
      bitgrad::nn::model_options<T, Quant>{.seed = cfg.trainer.seed, .quant = qopt});
  if (!cfg.init.empty()) {
    bitgrad::train::load_npz(fp32, cfg.init);
    std::printf("FP32 weights from %s (pretraining skipped)\n", cfg.init.c_str());
  }

  bitgrad::train::trainer trainer(fp32, quantized, train_set, test_set, cfg.trainer);
  trainer.set_model_name(cfg.model);
  trainer.add_setting("policy", cfg.policy);
  trainer.add_setting("group size", cfg.group);
  trainer.add_setting("target average bits", std::to_string(cfg.target_bits));
  trainer.add_setting("epochs (pretrain/search/finetune)",
                      std::to_string(cfg.trainer.pretrain.epochs) + "/" +
                          std::to_string(cfg.trainer.search.epochs) + "/" +
                          std::to_string(cfg.trainer.finetune.epochs));
  trainer.add_setting("seed", std::to_string(cfg.trainer.seed));
  trainer.add_setting("simd", bitgrad::simd_arch_name());
  std::printf("%s, %s (group %s), target %.2f bits/weight, %zu train / %zu test images, %s\n",
              cfg.model.c_str(), cfg.policy.c_str(), cfg.group.c_str(), cfg.target_bits,
              train_set.size(), test_set.size(), bitgrad::simd_arch_name());
  const auto result = trainer.run();
  if (!result.finished) return bitgrad::train::interrupt_requested() ? 130 : 0;
  print_table(result.summary);
  if (!cfg.trainer.out_dir.empty()) {
    const auto model = cfg.trainer.out_dir / "model.bgm";
    const std::size_t bytes =
        bitgrad::train::export_model(quantized, model, train_set, cfg.trainer.normalise);
    std::printf("packed model        %zu bytes in %s (%+.0f bytes of header and graph)\n", bytes,
                model.c_str(), static_cast<double>(bytes) - result.summary.size_bytes);
    std::printf("wrote %s/{report.html, log.csv, summary.json, checkpoint.bin, model.bgm}\n",
                cfg.trainer.out_dir.c_str());
  }
  return 0;
}

template <template <class> class Quant>
int run_model(const settings& cfg) {
  if (cfg.model == "lenet5")
    return run<Quant>(cfg,
                      []<template <class> class Q>(const bitgrad::nn::model_options<float, Q>& o) {
                        return bitgrad::nn::lenet5<float, Q>(o);
                      });
  return run<Quant>(cfg,
                    []<template <class> class Q>(const bitgrad::nn::model_options<float, Q>& o) {
                      return bitgrad::nn::vgg_small<float, Q>(o);
                    });
}

} // namespace

int main(int argc, char** argv) {
  settings cfg;
  auto& t = cfg.trainer;
  std::string out = "runs/fashion_mnist";
  CLI::App app{"Train a network on Fashion-MNIST with learned mixed-precision bitwidths"};
  app.add_option("--data", cfg.data, "folder with the gzip IDX files")->capture_default_str();
  app.add_option("--model", cfg.model, "lenet5 or vgg-small")
      ->check(CLI::IsMember({"lenet5", "vgg-small"}))
      ->capture_default_str();
  app.add_option("--policy", cfg.policy,
                 "frac_bits, step_bits, noise_bits or fixed_bits (uniform LSQ)")
      ->check(CLI::IsMember({"frac_bits", "step_bits", "fixed_bits", "noise_bits"}))
      ->capture_default_str();
  app.add_option("--group", cfg.group, "channels per group: a number, 'channel' or 'layer'")
      ->capture_default_str();
  app.add_option("--target-bits", cfg.target_bits,
                 "size target: average stored bits per weight, overhead included")
      ->check(CLI::Range(0.5, 16.0))
      ->capture_default_str();
  app.add_option("--b-min", cfg.b_min, "lowest bitwidth")->capture_default_str();
  app.add_option("--b-max", cfg.b_max, "highest bitwidth")->capture_default_str();
  app.add_option("--pretrain-epochs", t.pretrain.epochs)->capture_default_str();
  app.add_option("--search-epochs", t.search.epochs)->capture_default_str();
  app.add_option("--finetune-epochs", t.finetune.epochs)->capture_default_str();
  app.add_option("--lr", t.pretrain.lr, "pretraining learning rate (Adam)")->capture_default_str();
  app.add_option("--search-lr", t.search.lr, "weight learning rate while searching")
      ->capture_default_str();
  app.add_option("--bits-lr", t.search.bits_lr, "bitwidth learning rate")->capture_default_str();
  std::string bits_moment = bitgrad::train::to_string(t.bits_moment);
  app.add_option("--bits-moment", bits_moment,
                 "Adam's second moment of the bitwidths: one per layer (the groups of a layer step "
                 "in proportion to their gradients) or one per group")
      ->check(CLI::IsMember({"group", "layer"}))
      ->capture_default_str();
  app.add_option("--finetune-lr", t.finetune.lr)->capture_default_str();
  app.add_option("--lambda", t.penalty_lambda, "size penalty weight")->capture_default_str();
  app.add_option("--batch-size", t.batch_size)->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", t.seed)->capture_default_str();
  app.add_option("--threads", cfg.threads, "OpenMP threads (0 = default)")->capture_default_str();
  app.add_option("--train-limit", cfg.train_limit, "use only the first N training images")
      ->capture_default_str();
  app.add_option("--max-steps", t.max_steps_per_epoch, "cap the steps of every epoch")
      ->capture_default_str();
  app.add_option("--stop-after", t.stop_after_epochs,
                 "stop after this many epochs (resume later with --resume)");
  app.add_option("--sensitivity", t.sensitivity_batches,
                 "batches of 32 test images for the per-group sensitivity diagnostics (0 = off)")
      ->capture_default_str();
  app.add_option("--out", out, "output folder")->capture_default_str();
  app.add_option("--init", cfg.init,
                 "start from the FP32 weights of this .npz (bitgrad's parameter names, "
                 "train/npz_import.hpp) and skip pretraining");
  app.add_flag("--resume", t.resume, "continue from <out>/checkpoint.bin");
  CLI11_PARSE(app, argc, argv);
  t.out_dir = out;
  if (!cfg.init.empty()) t.pretrain.epochs = 0;
  t.bits_moment = bitgrad::train::parse_bits_normalisation(bits_moment);
#if defined(BITGRAD_WITH_OPENMP)
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
#endif
  // Ctrl-C / SIGTERM: finish the current step, write the checkpoint, exit; --resume continues.
  bitgrad::train::install_interrupt_handlers();
  try {
    if (cfg.policy == "step_bits") return run_model<bitgrad::quant::step_bits>(cfg);
    if (cfg.policy == "fixed_bits") return run_model<bitgrad::quant::fixed_bits>(cfg);
    if (cfg.policy == "noise_bits") return run_model<bitgrad::quant::noise_bits>(cfg);
    return run_model<bitgrad::quant::frac_bits>(cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist: %s\n", e.what());
    return 1;
  }
}
