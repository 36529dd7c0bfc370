// Train LeNet-5 (or the VGG-style net, or ResNet-20) on Fashion-MNIST with learned per-channel
// bitwidths:
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
// --model resnet20 is nn::resnet20 with one input channel (28x28 images), with --policy
// frac_bits or fixed_bits (the others are refused: fashion_mnist/run_resnet20.cpp says why);
// --act-bits and the BOPs / activation memory targets work with it as with the others.
//
// The first conv and the last linear (the edge layers) are quantized like every other layer
// (--group, --b-min, --b-max, the policy) unless --edge-bits or --edge-group says otherwise.
//
// Prints FP32 and quantized accuracy on the full test set, the per-layer table and the size;
// writes report.html, log.csv, summary.json, checkpoint.bin and the packed model model.bgm
// (docs/model-format.md; run it with examples/deploy) into --out.
//
// The command line is read here; the run itself is in run.cpp.
#include "cli_checks.hpp"
#include "run.hpp"

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

namespace {

namespace cli = bitgrad::cli;
using fashion_mnist::run_model;
using fashion_mnist::settings;

/// The checks that involve more than one option; CLI::ValidationError names the option.
void check_combinations(const CLI::App& app, const settings& cfg) {
  const bool learned = cfg.policy != "fixed_bits";
  if (!learned)
    for (const char* option : {"--b-min", "--b-max", "--b-init", "--bits-lr", "--bits-moment",
                               "--lambda", "--budget-anneal", "--penalty-warmup"})
      if (app.count(option))
        cli::reject(option, "has no effect with --policy fixed_bits (its bitwidths are not "
                            "learned: --target-bits chooses them)");
  if (learned && app.count("--grid"))
    cli::reject("--grid", "chooses the uniform grid of --policy fixed_bits (the other policies "
                          "quantize on the symmetric grid), got --policy " +
                              cfg.policy);
  if (learned && app.count("--step-init"))
    cli::reject("--step-init",
                "chooses the initial step of --policy fixed_bits, got --policy " + cfg.policy);
  if (learned && cfg.b_min > cfg.b_max)
    cli::reject("--b-min", "expected at most --b-max (" + cli::number_text(cfg.b_max) + "), got " +
                               cli::number_text(cfg.b_min));
  if (learned && cfg.b_init && (*cfg.b_init < cfg.b_min || *cfg.b_init > cfg.b_max))
    cli::reject("--b-init", "expected a value in [--b-min, --b-max] = [" +
                                cli::number_text(cfg.b_min) + ", " + cli::number_text(cfg.b_max) +
                                "], got " + cli::number_text(*cfg.b_init));
  if (cfg.policy == "step_bits" && cfg.b_min < 2)
    cli::reject("--b-min", "step_bits needs at least 2 (1 bit leaves only the zero level), got " +
                               cli::number_text(cfg.b_min));
  if (cfg.policy == "step_bits" && cfg.edge_bits && *cfg.edge_bits < 2)
    cli::reject("--edge-bits", "step_bits needs at least 2 (1 bit leaves only the zero level), "
                               "got " +
                                   std::to_string(*cfg.edge_bits));
  if (cfg.model == "resnet20" && (cfg.policy == "noise_bits" || cfg.policy == "step_bits"))
    cli::reject("--policy",
                "--model resnet20 is built with frac_bits and fixed_bits only, got " + cfg.policy);
  if (cfg.act_bits && (cfg.policy == "noise_bits" || cfg.policy == "step_bits"))
    cli::reject("--act-bits", "activation quantizers are learned with --policy frac_bits, or "
                              "fixed with --policy fixed_bits, got --policy " +
                                  cfg.policy);
  if (cfg.act_bits && !learned && *cfg.act_bits != std::round(*cfg.act_bits))
    cli::reject("--act-bits", "expected a whole number of bits with --policy fixed_bits (the "
                              "activation bitwidth is fixed), got " +
                                  cli::number_text(*cfg.act_bits));
  if (cfg.act_bits && learned && (*cfg.act_bits < cfg.b_min || *cfg.act_bits > cfg.b_max))
    cli::reject("--act-bits", "expected a value in [--b-min, --b-max] = [" +
                                  cli::number_text(cfg.b_min) + ", " + cli::number_text(cfg.b_max) +
                                  "], got " + cli::number_text(*cfg.act_bits));
  if (cfg.trainer.resume && fashion_mnist::checks_run_folder() &&
      !std::filesystem::exists(cfg.trainer.out_dir / "checkpoint.bin"))
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
  app.add_option("--model", cfg.model, "lenet5, vgg-small or resnet20")
      ->check(CLI::IsMember({"lenet5", "vgg-small", "resnet20"}))
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
  app.add_option("--target-bops", t.target_bops,
                 "BOPs budget per image (sum over conv / linear layers of MACs x weight bits x "
                 "input bits; input image 8 bits, unquantized activations 32): a penalty in the "
                 "search and a budget at freezing, beside the size target")
      ->check(cli::positive_number());
  app.add_option("--target-activation-kb", t.target_activation_kb,
                 "peak activation memory budget per image in KB (10^3 bytes): the largest "
                 "quantized activation tensor (or the 8-bit input image) at its bitwidth")
      ->check(cli::positive_number());
  app.add_option("--grid", cfg.grid,
                 "the uniform grid of --policy fixed_bits at k >= 2 bits: symmetric "
                 "{-(2^(k-1)-1)..2^(k-1)-1} or full (every k-bit two's complement code, LSQ's: "
                 "2 bits = {-2, -1, 0, 1}; same storage, one level more)")
      ->check(CLI::IsMember({"symmetric", "full"}))
      ->capture_default_str();
  app.add_option("--step-init", cfg.step_init,
                 "the initial step of --policy fixed_bits: lsq (LSQ's 2 mean|w| / sqrt(Qp)) or "
                 "mse (per group, the step with the smallest squared quantization error on the "
                 "--grid, a search over 128 candidate steps)")
      ->check(CLI::IsMember({"lsq", "mse"}))
      ->capture_default_str();
  app.add_option("--act-bits", cfg.act_bits,
                 "put an activation quantizer (unsigned grid, learned range) after every ReLU; "
                 "its bitwidth starts at this value and is learned in [--b-min, --b-max] "
                 "(--policy frac_bits), or stays at this whole number (--policy fixed_bits: "
                 "uniform weights and activations)")
      ->check(cli::real_number(1, cli::lower_bound::inclusive, 16));
  app.add_option("--b-min", cfg.b_min,
                 "lowest bitwidth of every layer's groups (learned policies; step_bits: >= 2)")
      ->check(cli::real_number(1, cli::lower_bound::inclusive, 16))
      ->capture_default_str();
  app.add_option("--b-max", cfg.b_max,
                 "highest bitwidth of every layer's groups (learned policies)")
      ->check(cli::real_number(1, cli::lower_bound::inclusive, 16))
      ->capture_default_str();
  app.add_option("--b-init", cfg.b_init,
                 "initial bitwidth of every learnable group when the search starts, in "
                 "[--b-min, --b-max] (learned policies; default --b-max - 0.5)")
      ->check(cli::real_number(1, cli::lower_bound::inclusive, 16));
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
  app.add_option("--budget-anneal", t.budget_anneal,
                 "fraction of the search steps over which the size penalty's target falls "
                 "linearly from the size the search starts at to --target-bits (0 = the final "
                 "target from the first step; freezing always uses --target-bits)")
      ->check(cli::real_number(0, cli::lower_bound::inclusive, 1))
      ->capture_default_str();
  app.add_option("--penalty-warmup", t.penalty_warmup,
                 "fraction of the search steps over which the size penalty weight grows "
                 "linearly from 0 to --lambda (0 = full weight from the first step)")
      ->check(cli::real_number(0, cli::lower_bound::inclusive, 1))
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
  return launch(cfg);
}
