// Train LeNet-5 (or the VGG-style net) on Fashion-MNIST with learned per-channel bitwidths:
// FP32 pretraining -> bitwidth search under a size penalty -> freeze -> fine-tune.
//
//   fashion_mnist --out runs/demo                 (what `make demo` runs)
//   fashion_mnist --model vgg-small --policy step_bits --target-bits 2.5 --out runs/vgg
//
// --target-bits is the size target of the quantized weights in average STORED bits per weight:
// the codes plus every group's 40 bits of float32 scale and bitwidth byte (biases not counted),
// the trainer's target_average_bits. Budget-aware freezing keeps the model at or below it, so
// the average code bits end below it. With fixed_bits (no learned bitwidths) every layer takes
// the largest uniform bitwidth whose model fits the target.
//
// The first conv and the last linear (the edge layers) are quantized like every other layer
// (--group, --b-min, --b-max, the policy) unless --edge-bits or --edge-group says otherwise.
//
// Prints FP32 and quantized accuracy on the full test set, the per-layer table and the size;
// writes report.html, log.csv, summary.json, checkpoint.bin and the packed model model.bgm
// (docs/model-format.md; run it with examples/deploy) into --out.
#include "cli_checks.hpp"

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/train/export.hpp>
#include <bitgrad/train/npz_import.hpp>

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

namespace {

namespace cli = bitgrad::cli;

struct settings {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string model = "lenet5";
  std::string policy = "frac_bits";
  std::string group = "1";
  double b_min = 2, b_max = 8;
  std::optional<int> edge_bits;          ///< pin the edge layers at this many bits
  std::optional<std::string> edge_group; ///< the edge layers' group size (default: group)
  std::size_t train_limit = 0;
  std::size_t threads = 0;
  std::string init; ///< FP32 weights (.npz) to start from instead of pretraining
  bitgrad::train::trainer_options trainer;
};

void print_table(const bitgrad::run_summary& s, double stored_bits, double target_bits) {
  std::printf("\n%-8s %-10s %8s %7s %6s %6s %6s %10s %7s %7s\n", "layer", "policy", "params",
              "groups", "min", "mean", "max", "bytes", "spread", "rho");
  for (const auto& l : s.layers)
    std::printf("%-8s %-10s %8zu %7zu %6.2f %6.2f %6.2f %10.0f %7.2f %7.2f\n", l.name.c_str(),
                l.policy.c_str(), l.params, l.groups, l.bits_min, l.bits_mean, l.bits_max, l.bytes,
                l.bits_spread, l.rank_correlation);
  std::printf("\nFP32 accuracy       %.2f%%\n", 100 * s.fp32_accuracy);
  std::printf("quantized accuracy  %.2f%%\n", 100 * s.quant_accuracy);
  std::printf("average bits        %.3f per weight (codes)\n", s.average_bits);
  std::printf("stored bits         %.3f per weight (codes, scales, bitwidths; target %.2f)\n",
              stored_bits, target_bits);
  std::printf("model size          %.0f bytes (%.1f KB: codes, scales, bitwidths, biases)\n",
              s.size_bytes, s.size_bytes / 1e3);
  std::printf("compression         %.2fx vs FP32\n", s.compression);
  std::printf("time                %.1f s\n", s.seconds);
}

/// Weights behind the quantizers, and their stored bits: the current size, or (at_minimum) the
/// size with every learnable group at ceil(b_min) as the trainer counts the smallest model.
struct stored_size {
  double weights = 0;
  double bits = 0;
};
template <class Net>
stored_size measure_stored(Net& net, bool at_minimum) {
  stored_size s;
  net.visit_quantizers([&](std::string_view, const auto& q) {
    s.weights += static_cast<double>(q.weight_count());
    if (at_minimum && !q.frozen()) {
      s.bits += std::ceil(q.b_min()) * static_cast<double>(q.weight_count()) +
                bitgrad::quant::group_overhead_bits * static_cast<double>(q.groups());
      return;
    }
    s.bits += q.size_bits();
  });
  return s;
}

/// The options of the layers between the edges (`fixed_bits`: the uniform bitwidth `bits`).
template <template <class> class Quant>
typename Quant<float>::options layer_options(const settings& cfg, int bits) {
  typename Quant<float>::options q{};
  q.group_size = cli::parse_group(cfg.group);
  if constexpr (requires { q.b_min; }) {
    q.b_min = cfg.b_min;
    q.b_max = cfg.b_max;
  } else {
    q.bits = bits;
  }
  if constexpr (requires { q.seed; }) q.seed = cfg.trainer.seed;
  return q;
}

/// The edge layers' options: unset when they are quantized like the others.
template <template <class> class Quant>
std::optional<typename Quant<float>::options> edge_options(const settings& cfg, int bits) {
  if (!cfg.edge_bits && !cfg.edge_group) return std::nullopt;
  auto q = layer_options<Quant>(cfg, bits);
  if (cfg.edge_group) q.group_size = cli::parse_group(*cfg.edge_group);
  if (cfg.edge_bits) {
    if constexpr (requires { q.b_min; }) {
      q.b_min = q.b_max = *cfg.edge_bits; // pinned: the bitwidth cannot move
      q.b_init = *cfg.edge_bits;
    } else {
      q.bits = *cfg.edge_bits;
    }
  }
  return q;
}

template <template <class> class Quant, class Builder>
int run(const settings& cfg, Builder build) {
  using T = float;
  namespace fs = std::filesystem;
  const fs::path dir = cfg.data;
  bitgrad::dataset train_set = bitgrad::load_mnist_format(dir / "train-images-idx3-ubyte.gz",
                                                          dir / "train-labels-idx1-ubyte.gz");
  bitgrad::dataset test_set = bitgrad::load_mnist_format(dir / "t10k-images-idx3-ubyte.gz",
                                                         dir / "t10k-labels-idx1-ubyte.gz");
  if (cfg.train_limit > train_set.size())
    cli::reject("--train-limit", "expected at most the " + std::to_string(train_set.size()) +
                                     " training images in " + cfg.data + ", got " +
                                     std::to_string(cfg.train_limit));
  if (cfg.train_limit) {
    std::vector<std::size_t> first(cfg.train_limit);
    for (std::size_t i = 0; i < first.size(); ++i) first[i] = i;
    train_set = bitgrad::subset(train_set, first);
  }
  const auto& t = cfg.trainer;
  if (t.batch_size > train_set.size())
    cli::reject("--batch-size", "expected at most the " + std::to_string(train_set.size()) +
                                    " training images, got " + std::to_string(t.batch_size));
  const std::size_t test_batches = (test_set.size() + 31) / 32;
  if (t.sensitivity_batches > test_batches)
    cli::reject("--sensitivity", "expected at most " + std::to_string(test_batches) +
                                     " (the batches of 32 in the " +
                                     std::to_string(test_set.size()) + " test images), got " +
                                     std::to_string(t.sensitivity_batches));

  const std::string overhead = cli::number_text(bitgrad::quant::group_overhead_bits) +
                               " bits of scale and bitwidth per group";
  auto make = [&](int bits) {
    return build.template operator()<Quant>(
        bitgrad::nn::model_options<T, Quant>{.seed = t.seed,
                                             .quant = layer_options<Quant>(cfg, bits),
                                             .edge_quant = edge_options<Quant>(cfg, bits)});
  };
  constexpr bool learned = requires(typename Quant<T>::options q) {
    q.b_min;
  };
  // fixed_bits: the largest uniform bitwidth k whose model fits the target. The size grows by
  // the weights that take k for every bit of k, from its size at k = 1.
  int uniform_bits = 0;
  if constexpr (!learned) {
    auto probe = make(1);
    const stored_size at_one = measure_stored(probe, false);
    double per_bit = 0; // weights whose bitwidth is k (not pinned by --edge-bits)
    std::size_t index = 0, count = 0;
    probe.visit_quantizers([&](std::string_view, const auto&) { ++count; });
    probe.visit_quantizers([&](std::string_view, const auto& q) {
      const bool edge = index == 0 || index + 1 == count;
      if (!(edge && cfg.edge_bits)) per_bit += static_cast<double>(q.weight_count());
      ++index;
    });
    const double budget = t.target_average_bits * at_one.weights;
    for (int k = 16; k >= 1 && uniform_bits == 0; --k)
      if (at_one.bits + (k - 1) * per_bit <= budget) uniform_bits = k;
    if (uniform_bits == 0)
      cli::reject("--target-bits",
                  "fixed_bits at 1 bit per weight takes " +
                      cli::number_text(std::round(1000 * at_one.bits / at_one.weights) / 1000) +
                      " stored bits per weight (codes + " + overhead +
                      "), "
                      "above the target " +
                      cli::number_text(t.target_average_bits));
  }
  auto fp32 = build.template operator()<bitgrad::quant::no_quant>(
      bitgrad::nn::model_options<T>{.seed = t.seed});
  auto quantized = make(uniform_bits);

  const stored_size smallest = measure_stored(quantized, true);
  if (smallest.bits > t.target_average_bits * smallest.weights)
    cli::reject(
        "--target-bits",
        "the smallest model the bitwidth bounds allow (every group at " +
            std::string(cfg.edge_bits ? "--b-min, the edge layers at --edge-bits" : "--b-min") +
            ") takes " +
            cli::number_text(std::round(1000 * smallest.bits / smallest.weights) / 1000) +
            " stored bits per weight (codes + " + overhead +
            "), "
            "above the target " +
            cli::number_text(t.target_average_bits));

  std::string first_layer, last_layer;
  quantized.visit_quantizers([&](std::string_view name, const auto&) {
    if (first_layer.empty()) first_layer = name;
    last_layer = name;
  });
  std::string bits_text;
  if constexpr (learned)
    bits_text =
        "in [" + cli::number_text(cfg.b_min) + ", " + cli::number_text(cfg.b_max) + "] bits";
  else
    bits_text = "at " + std::to_string(uniform_bits) +
                " bits (the largest uniform bitwidth within the size target)";
  const std::string quant_text = cfg.policy + " " + bits_text + ", group " + cfg.group;
  std::string edge_text = "quantized like the others";
  if (cfg.edge_bits || cfg.edge_group)
    edge_text = (cfg.edge_bits ? "pinned at " + std::to_string(*cfg.edge_bits) + " bits"
                               : std::string("bits like the others")) +
                ", group " + cfg.edge_group.value_or(cfg.group);
  const std::size_t steps =
      bitgrad::loader<T>(train_set, {.batch_size = t.batch_size}).batches_per_epoch();
  const std::size_t steps_run =
      t.max_steps_per_epoch ? std::min(steps, t.max_steps_per_epoch) : steps;
  const int threads = cli::threads_in_use();
  if (!cfg.init.empty()) {
    bitgrad::train::load_npz(fp32, cfg.init);
    std::printf("FP32 weights from %s (pretraining skipped)\n", cfg.init.c_str());
  }

  bitgrad::train::trainer trainer(fp32, quantized, train_set, test_set, cfg.trainer);
  trainer.set_model_name(cfg.model);
  trainer.add_setting("policy", cfg.policy);
  trainer.add_setting("bitwidths", bits_text);
  trainer.add_setting("group size", cfg.group);
  trainer.add_setting("first and last layer (" + first_layer + ", " + last_layer + ")", edge_text);
  trainer.add_setting("target average bits", cli::number_text(t.target_average_bits) +
                                                 " stored bits per weight (codes, scales, "
                                                 "bitwidths)");
  trainer.add_setting("epochs (pretrain/search/finetune)",
                      std::to_string(t.pretrain.epochs) + "/" + std::to_string(t.search.epochs) +
                          "/" + std::to_string(t.finetune.epochs));
  trainer.add_setting("steps per epoch",
                      std::to_string(steps_run) + " of batch size " + std::to_string(t.batch_size));
  trainer.add_setting("seed", std::to_string(t.seed));
  trainer.add_setting("threads", std::to_string(threads));
  trainer.add_setting("simd", bitgrad::simd_arch_name());
  std::printf("%s: %s; %s and %s %s\n", cfg.model.c_str(), quant_text.c_str(), first_layer.c_str(),
              last_layer.c_str(), edge_text.c_str());
  std::printf("size target %s stored bits per weight (codes, scales, bitwidths) = %s; %zu train "
              "/ %zu test images from %s\n",
              cli::number_text(t.target_average_bits).c_str(),
              bitgrad::format_bytes(t.target_average_bits * smallest.weights / 8).c_str(),
              train_set.size(), test_set.size(), cfg.data.c_str());
  std::printf("%zu step%s per epoch of batch size %zu; %d thread%s, %s\n", steps_run,
              steps_run == 1 ? "" : "s", t.batch_size, threads, threads == 1 ? "" : "s",
              bitgrad::simd_arch_name());
  const auto result = trainer.run();
  if (!result.finished) return bitgrad::train::interrupt_requested() ? 130 : 0;
  const stored_size stored = measure_stored(quantized, false);
  print_table(result.summary, stored.bits / stored.weights, t.target_average_bits);
  if (!t.out_dir.empty()) {
    const auto model = t.out_dir / "model.bgm";
    const std::size_t bytes =
        bitgrad::train::export_model(quantized, model, train_set, t.normalise);
    std::printf("packed model        %zu bytes in %s (%+.0f bytes of header and graph)\n", bytes,
                model.c_str(), static_cast<double>(bytes) - result.summary.size_bytes);
    std::printf("wrote %s/{report.html, log.csv, summary.json, checkpoint.bin, model.bgm}\n",
                t.out_dir.c_str());
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

/// The checks that involve more than one option; CLI::ValidationError names the option.
void check_combinations(const CLI::App& app, const settings& cfg) {
  const bool learned = cfg.policy != "fixed_bits";
  if (!learned)
    for (const char* option : {"--b-min", "--b-max", "--bits-lr", "--bits-moment", "--lambda"})
      if (app.count(option))
        cli::reject(option, "has no effect with --policy fixed_bits (its bitwidths are not "
                            "learned: --target-bits chooses them)");
  if (learned && cfg.b_min > cfg.b_max)
    cli::reject("--b-min", "expected at most --b-max (" + cli::number_text(cfg.b_max) + "), got " +
                               cli::number_text(cfg.b_min));
  if (cfg.policy == "step_bits" && cfg.b_min < 2)
    cli::reject("--b-min", "step_bits needs at least 2 (1 bit leaves only the zero level), got " +
                               cli::number_text(cfg.b_min));
  if (cfg.policy == "step_bits" && cfg.edge_bits && *cfg.edge_bits < 2)
    cli::reject("--edge-bits", "step_bits needs at least 2 (1 bit leaves only the zero level), "
                               "got " +
                                   std::to_string(*cfg.edge_bits));
  if (cfg.trainer.resume && !std::filesystem::exists(cfg.trainer.out_dir / "checkpoint.bin"))
    cli::reject("--resume", "no checkpoint to continue from in " + cfg.trainer.out_dir.string() +
                                " (checkpoint.bin)");
}

} // namespace

int main(int argc, char** argv) {
  settings cfg;
  auto& t = cfg.trainer;
  std::string out = "runs/fashion_mnist";
  const auto whole = [](std::uint64_t lo) { return cli::whole_number(lo); };
  CLI::App app{"Train a network on Fashion-MNIST with learned mixed-precision bitwidths"};
  app.add_option("--data", cfg.data, "folder with the gzip IDX files")->capture_default_str();
  app.add_option("--model", cfg.model, "lenet5 or vgg-small")
      ->check(CLI::IsMember({"lenet5", "vgg-small"}))
      ->capture_default_str();
  app.add_option("--policy", cfg.policy,
                 "frac_bits, step_bits, noise_bits or fixed_bits (uniform LSQ)")
      ->check(CLI::IsMember({"frac_bits", "step_bits", "fixed_bits", "noise_bits"}))
      ->capture_default_str();
  app.add_option("--group", cfg.group,
                 "channels per group: a number, 'channel' or 'layer' (every layer, the first and "
                 "last included, unless --edge-group)")
      ->check(cli::group_size())
      ->capture_default_str();
  app.add_option("--target-bits", t.target_average_bits,
                 "size target: average stored bits per weight, scales and bitwidths included "
                 "(biases not); the average code bits end below it. fixed_bits: the largest "
                 "uniform bitwidth within it")
      ->check(cli::real_number(0, cli::lower_bound::exclusive, 16))
      ->capture_default_str();
  app.add_option("--b-min", cfg.b_min,
                 "lowest bitwidth of every layer's groups (learned policies; step_bits: >= 2)")
      ->check(cli::real_number(1, cli::lower_bound::inclusive, 16))
      ->capture_default_str();
  app.add_option("--b-max", cfg.b_max,
                 "highest bitwidth of every layer's groups (learned policies)")
      ->check(cli::real_number(1, cli::lower_bound::inclusive, 16))
      ->capture_default_str();
  app.add_option("--edge-bits", cfg.edge_bits,
                 "pin the first conv and the last linear at this many bits (default: quantized "
                 "like the other layers)")
      ->check(cli::whole_number(1, 16));
  app.add_option("--edge-group", cfg.edge_group,
                 "channels per group of the first conv and the last linear (default: --group)")
      ->check(cli::group_size());
  app.add_option("--pretrain-epochs", t.pretrain.epochs, "FP32 epochs")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--search-epochs", t.search.epochs, "epochs learning the bitwidths")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--finetune-epochs", t.finetune.epochs, "epochs at the frozen bitwidths")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--lr", t.pretrain.lr, "pretraining learning rate (Adam)")
      ->check(cli::positive_number())
      ->capture_default_str();
  app.add_option("--search-lr", t.search.lr, "weight learning rate while searching")
      ->check(cli::positive_number())
      ->capture_default_str();
  app.add_option("--bits-lr", t.search.bits_lr, "bitwidth learning rate (learned policies)")
      ->check(cli::positive_number())
      ->capture_default_str();
  std::string bits_moment = bitgrad::train::to_string(t.bits_moment);
  app.add_option("--bits-moment", bits_moment,
                 "Adam's second moment of the bitwidths: one per layer (the groups of a layer step "
                 "in proportion to their gradients) or one per group (learned policies)")
      ->check(CLI::IsMember({"group", "layer"}))
      ->capture_default_str();
  app.add_option("--finetune-lr", t.finetune.lr, "weight learning rate at the frozen bitwidths")
      ->check(cli::positive_number())
      ->capture_default_str();
  app.add_option("--lambda", t.penalty_lambda, "size penalty weight (learned policies)")
      ->check(cli::real_number(0, cli::lower_bound::inclusive))
      ->capture_default_str();
  app.add_option("--batch-size", t.batch_size, "images per step (at most the training images)")
      ->check(whole(1))
      ->capture_default_str();
  app.add_option("--seed", t.seed, "initial weights, data order and noise")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--threads", cfg.threads,
                 "OpenMP threads (0 = OpenMP's default; at most the hardware threads)")
      ->check(cli::thread_count())
      ->capture_default_str();
  app.add_option("--train-limit", cfg.train_limit, "use only the first N training images (0 = all)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--max-steps", t.max_steps_per_epoch,
                 "cap the steps of every epoch (0 = whole epochs)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--stop-after", t.stop_after_epochs,
                 "stop after this many epochs (resume later with --resume; 0 = run to the end)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--sensitivity", t.sensitivity_batches,
                 "batches of 32 test images for the per-group sensitivity diagnostics (0 = off)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--out", out, "output folder")->capture_default_str();
  app.add_option("--init", cfg.init,
                 "start from the FP32 weights of this .npz (bitgrad's parameter names, "
                 "train/npz_import.hpp) and skip pretraining");
  app.add_flag("--resume", t.resume, "continue from <out>/checkpoint.bin");
  app.add_flag("--overwrite", t.overwrite,
               "replace the run in <out>: its files are removed once this run writes its first");
  CLI11_PARSE(app, argc, argv);
  t.out_dir = out;
  if (!cfg.init.empty()) t.pretrain.epochs = 0;
  t.bits_moment = bitgrad::train::parse_bits_normalisation(bits_moment);
  try {
    if (out.empty()) cli::reject("--out", "expected a folder, got an empty name");
    check_combinations(app, cfg);
  } catch (const CLI::Error& e) {
    return app.exit(e);
  }
  cli::use_threads(cfg.threads);
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
