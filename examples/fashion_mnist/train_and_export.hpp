// fashion_mnist's run, one template for every model: load the data, build the FP32 and the
// quantized twin of the model `build` makes, train them with train::trainer (through
// bitgrad_runs::train_run, compiled once in the library bitgrad_runs), print the
// per-layer table and export model.bgm. Included by run.cpp (lenet5, vgg-small) and
// run_resnet20.cpp (resnet20), each its own translation unit so they compile side by side
// (issues #18, #24).
#pragma once

#include "cli_checks.hpp"
#include "common/train_run.hpp"
#include "run.hpp"

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/train/export.hpp>
#include <bitgrad/train/npz_import.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace fashion_mnist::detail {

namespace cli = bitgrad::cli;

inline void print_table(const bitgrad::run_summary& s, double stored_bits, double target_bits) {
  int name_width = 8; // the longest name: resnet20's "layer2.0.shortcut.conv"
  for (const auto& l : s.layers) name_width = std::max(name_width, static_cast<int>(l.name.size()));
  for (const auto& a : s.activations)
    name_width = std::max(name_width, static_cast<int>(a.name.size()));
  std::printf("\n%-*s %-10s %8s %7s %6s %6s %6s %10s %7s %7s\n", name_width, "layer", "policy",
              "params", "groups", "min", "mean", "max", "bytes", "spread", "rho");
  for (const auto& l : s.layers)
    std::printf("%-*s %-10s %8zu %7zu %6.2f %6.2f %6.2f %10.0f %7.2f %7.2f\n", name_width,
                l.name.c_str(), l.policy.c_str(), l.params, l.groups, l.bits_min, l.bits_mean,
                l.bits_max, l.bytes, l.bits_spread, l.rank_correlation);
  for (const auto& a : s.activations) {
    double mean = 0;
    for (double b : a.group_bits) mean += b / static_cast<double>(a.group_bits.size());
    std::printf("%-*s %-10s %8zu %7zu %6.2f %6.2f %6.2f %10s\n", name_width, a.name.c_str(),
                "activation", a.channels, a.group_bits.size(),
                *std::min_element(a.group_bits.begin(), a.group_bits.end()), mean,
                *std::max_element(a.group_bits.begin(), a.group_bits.end()), "-");
  }
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
    if (cfg.b_init) q.b_init = *cfg.b_init;
  } else {
    q.bits = bits;
  }
  if constexpr (requires { q.seed; }) q.seed = cfg.trainer.seed;
  if constexpr (requires { q.grid; })
    q.grid = cfg.grid == "full" ? bitgrad::quant::uniform_grid::full
                                : bitgrad::quant::uniform_grid::symmetric;
  if constexpr (requires { q.init; })
    q.init =
        cfg.step_init == "mse" ? bitgrad::quant::step_init::mse : bitgrad::quant::step_init::lsq;
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

/// The activation quantizers' options (--act-bits): frac_bits: learned in [--b-min, --b-max];
/// fixed_bits: pinned at --act-bits (only the range learns).
template <template <class> class Quant>
bitgrad::quant::act_quantizer<float>::options act_options(const settings& cfg) {
  bitgrad::quant::act_quantizer<float>::options a{};
  a.b_min = std::max(1.0, cfg.b_min);
  a.b_max = cfg.b_max;
  a.b_init = cfg.act_bits.value_or(cfg.b_max - 0.5);
  if constexpr (std::is_same_v<Quant<float>, bitgrad::quant::fixed_bits<float>>)
    a.b_min = a.b_max = *a.b_init;
  return a;
}

/// Act: the quantized network has activation quantizers after every ReLU (--act-bits).
template <template <class> class Quant, bool Act = false, class Builder>
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
    if constexpr (Act)
      return build(
          bitgrad::nn::act_model_options<T, Quant>{.seed = t.seed,
                                                   .quant = layer_options<Quant>(cfg, bits),
                                                   .edge_quant = edge_options<Quant>(cfg, bits),
                                                   .act_quant = act_options<Quant>(cfg)});
    else
      return build(
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
  auto fp32 = build(bitgrad::nn::model_options<T>{.seed = t.seed});
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
    bits_text = "in [" + cli::number_text(cfg.b_min) + ", " + cli::number_text(cfg.b_max) +
                "] bits, from " + cli::number_text(cfg.b_init.value_or(cfg.b_max - 0.5));
  else
    bits_text = "at " + std::to_string(uniform_bits) + " bits on the " + cfg.grid +
                " grid (the largest uniform bitwidth within the size target), initial step " +
                cfg.step_init;
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
  const bool writes = !cfg.sync || cfg.sync->rank() == 0; // data-parallel: rank 0 prints, writes
  if (!cfg.init.empty()) {
    bitgrad::train::load_npz(fp32, cfg.init);
    if (writes) std::printf("FP32 weights from %s (pretraining skipped)\n", cfg.init.c_str());
  }

  bitgrad_runs::run_labels labels;
  labels.model_name = cfg.model;
  labels.sync = cfg.sync;
  auto& settings = labels.settings;
  settings.emplace_back("policy", cfg.policy);
  settings.emplace_back("bitwidths", bits_text);
  settings.emplace_back("group size", cfg.group);
  settings.emplace_back("first and last layer (" + first_layer + ", " + last_layer + ")",
                        edge_text);
  settings.emplace_back("target average bits", cli::number_text(t.target_average_bits) +
                                                   " stored bits per weight (codes, scales, "
                                                   "bitwidths)");
  settings.emplace_back("epochs (pretrain/search/finetune)",
                        std::to_string(t.pretrain.epochs) + "/" + std::to_string(t.search.epochs) +
                            "/" + std::to_string(t.finetune.epochs));
  settings.emplace_back("steps per epoch", std::to_string(steps_run) + " of batch size " +
                                               std::to_string(t.batch_size));
  if (cfg.act_bits)
    settings.emplace_back(
        "activation quantizers",
        learned ? "after every ReLU, from " + cli::number_text(*cfg.act_bits) + " bits"
                : "after every ReLU, fixed at " + cli::number_text(*cfg.act_bits) + " bits");
  if (t.budget_anneal > 0)
    settings.emplace_back("budget anneal", "size target falls to the final one over the first " +
                                               cli::number_text(t.budget_anneal) +
                                               " of the search steps");
  if (t.penalty_warmup > 0)
    settings.emplace_back("penalty warm-up", "lambda grows from 0 over the first " +
                                                 cli::number_text(t.penalty_warmup) +
                                                 " of the search steps");
  if (t.target_bops) settings.emplace_back("target BOPs", cli::number_text(*t.target_bops));
  if (t.target_activation_kb)
    settings.emplace_back("target activation KB", cli::number_text(*t.target_activation_kb));
  settings.emplace_back("seed", std::to_string(t.seed));
  settings.emplace_back("threads", std::to_string(threads));
  settings.emplace_back("simd", bitgrad::simd_arch_name());
  labels.before_run = [&] {
    if (!writes) return;
    std::printf("%s: %s; %s and %s %s\n", cfg.model.c_str(), quant_text.c_str(),
                first_layer.c_str(), last_layer.c_str(), edge_text.c_str());
    std::printf("size target %s stored bits per weight (codes, scales, bitwidths) = %s; %zu train "
                "/ %zu test images from %s\n",
                cli::number_text(t.target_average_bits).c_str(),
                bitgrad::format_bytes(t.target_average_bits * smallest.weights / 8).c_str(),
                train_set.size(), test_set.size(), cfg.data.c_str());
    std::printf("%zu step%s per epoch of batch size %zu; %d thread%s, %s\n", steps_run,
                steps_run == 1 ? "" : "s", t.batch_size, threads, threads == 1 ? "" : "s",
                bitgrad::simd_arch_name());
    if (cfg.sync) std::printf("data-parallel on %zu ranks\n", cfg.sync->ranks());
  };
  // The trainer, compiled once for fashion_mnist and the Pareto study (common/train_run.hpp).
  const auto result =
      bitgrad_runs::train_run(fp32, quantized, train_set, test_set, cfg.trainer, labels);
  if (!result.finished) return bitgrad::train::interrupt_requested() ? 130 : 0;
  if (!writes) return 0;
  const stored_size stored = measure_stored(quantized, false);
  print_table(result.summary, stored.bits / stored.weights, t.target_average_bits);
  for (const auto& c : result.summary.costs) {
    if (c.name == "size") continue;
    const std::string value = c.unit == "bytes" ? bitgrad::format_bytes(c.value)
                                                : cli::number_text(c.value) + " " + c.unit;
    std::string target = "no budget";
    if (std::isfinite(c.target))
      target = "budget " +
               (c.unit == "bytes" ? bitgrad::format_bytes(c.target)
                                  : cli::number_text(c.target) + " " + c.unit) +
               (c.met ? ", met" : ", NOT met");
    std::printf("%-19s %s per image (%s)\n", c.name == "bops" ? "BOPs" : "peak activations",
                value.c_str(), target.c_str());
  }
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

/// run<Quant> with the activation quantizers --act-bits asks for: learned with frac_bits, fixed
/// with fixed_bits (main.cpp refuses --act-bits with the others: each policy with them compiles
/// two more networks).
template <template <class> class Quant, class Builder>
int run_with_options(const settings& cfg, Builder build) {
  if constexpr (std::is_same_v<Quant<float>, bitgrad::quant::frac_bits<float>> ||
                std::is_same_v<Quant<float>, bitgrad::quant::fixed_bits<float>>)
    if (cfg.act_bits) return run<Quant, true>(cfg, build);
  return run<Quant>(cfg, build);
}

} // namespace fashion_mnist::detail
