// The Pareto study of issues #9 and #11: test accuracy against model size for uniform
// quantization and for learned mixed precision on Fashion-MNIST, with the per-layer diagnostics
// of the learned bitwidths (spread inside layers, rank correlation with sensitivity).
//
//   pareto --quick --out runs/pareto-quick                 (one seed, short schedule)
//   pareto --models lenet5 --seeds 3 --out runs/pareto     (the whole LeNet-5 grid)
//   pareto --models vgg-small --sizes 3 --policies frac_bits --groups layer,channel ...
//   pareto --sizes 1.5,2 --policies frac_bits --groups layer,channel ...   (below 2 bits)
//   pareto --sizes 1.5,2 --uniform-sizes 1,3,4 ...   (uniform arms only at 1, 3 and 4 bits)
//
// The program, by job: main.cpp (the options), run.hpp (drives bitgrad: pretraining, the arms,
// sizes and sensitivity diagnostics), study.hpp (settings, arm, run_row), stats.hpp (over
// seeds), tables.hpp (the CSV files, written and read back with report/csv.hpp),
// markdown.hpp (results.md), plots.hpp (the SVGs, report/svg.hpp), outputs.hpp (writes them
// all), verify.hpp (--check).
//
// Size points. For every k of --sizes, the budget of every arm is one number,
//   S_k = sum over the quantized layers l of (k n_l + 40 C_l) bits,
// the stored size of the UNIFORM model at k bits with one float32 scale and one bitwidth byte per
// output channel (n_l weights and C_l output channels in layer l; quant/groups.hpp charges every
// policy 40 bits per group, and quant/size.hpp sums size_bits() the same way for every arm).
// A size point may be fractional (issue #24: --sizes 1.5,2): S_k is then the same formula with k
// bits of codes per weight, S_k = S_j + (k - j) n for j = max(1, floor(k)) and n = sum_l n_l
// weights (run.hpp's budget_bits), so S_1.5 lies halfway between S_1 and S_2.
//   uniform arm   fixed_bits (LSQ learned scale) at k bits; per channel it is exactly S_k, with
//                 coarser groups (--uniform-groups layer) it is smaller by the overhead saved.
//                 At a whole k only (k = 2 is the ternary grid {-s, 0, s}, k = 1 the sign grid
//                 {-s, s}, s learned): at a fractional k the study trains no uniform arm.
//                 --uniform-sizes adds whole size points where only the uniform arms run
//                 (issue #24: uniform at 1, 3 and 4 bits for the size-vs-error table without
//                 the cost of mixed arms there).
//                 --uniform-grids symmetric,full adds the arm uniform-full/<group>: the same
//                 bits on the full grid (codes down to -2^(k-1), LSQ's; 2 bits {-2s, -s, 0, s});
//                 the symmetric arm stays the reference of every comparison.
//   mixed arms    frac_bits / step_bits / noise_bits with groups of one layer, 4 channels or one
//                 channel, trained with trainer_options::target_bytes = S_k / 8 plus the
//                 float32 biases (the trainer's target counts them; every arm has the same)
//                 and frozen within it (budget-aware rounding, quant/budget.hpp). A coarser arm
//                 pays less overhead and may spend the difference on code bits: equal total bytes.
// Every arm is compared, paired by seed, with "the best uniform of equal or larger size": the
// uniform arm (per channel when it ran) of the smallest whole size point k' >= k of the study,
// k itself at a whole k (stats.hpp's reference_uniform); results.md gives the mean difference
// and its 95% t interval, aggregate.csv the reference and the interval.
// Every layer is quantized by the arm, the first conv and the last linear included (no layer
// is kept at 8 bits or in float). The float32 biases are the same for every arm; the reported total
// bytes (and the plot's x axis) include them, the weight bytes do not.
//
// Every arm of a seed starts from the same FP32 network (pretrained once per seed with that
// seed) and trains the same epochs with the same batch order: --search-epochs (weights and
// bitwidths under the size penalty; the uniform arm trains weights and scales), freezing, then
// --finetune-epochs. Accuracy is always measured on the whole test set given by --data.
//
// Output in --out:
//   results.csv    one row per arm and seed;        aggregate.csv  one row per arm (over seeds)
//   layers.csv     one row per arm, seed and layer (bits, spread, rank correlation)
//   results.md     the aggregate table, the bitwidth histograms of the best mixed arm of every
//                  size, and the per-channel comparison of the policies (issue #11)
//   pareto-<model>.svg          accuracy (mean, min-max bars) against total bytes, FP32 line
//   bits-<model>-<k>bit.svg     heat map of the best mixed arm's bitwidths (first seed)
//   runs/<model>/seed<s>/<k>bit/<arm>/   report.html, log.csv, summary.json, train.log per arm
// All tables are rewritten after every arm, so an interrupted study keeps what it finished;
// --resume runs the missing arms (none missing: it only rewrites the tables from results.csv),
// an arm interrupted inside from its checkpoint (run.hpp's
// arm_key: only when the checkpoint was made with the same settings; a resnet20 arm's
// checkpoint only from format version 4 on, which keeps the batch norms' running statistics),
// its seconds then the sum over its parts. The FP32 pretraining resumes the same way
// (runs/<model>/seed<s>/pretrain/), and an arm's checkpoint stays until its row is written, so a
// study killed in an arm's sensitivity diagnostics resumes to them without training again.
// --check reads the written files back and fails unless every row is there and every arm is
// within its budget (the ctest smoke test uses it).
#include "cli_checks.hpp"
#include "outputs.hpp"
#include "run.hpp"
#include "study.hpp"
#include "tables.hpp"
#include "verify.hpp"

#include <bitgrad/bitgrad.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

using namespace pareto;

/// --sizes: a size point, a finite number of bits per weight in (0, 16]; whole (2) or not (1.5).
static CLI::Validator size_point() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const std::string failure = "expected a number of bits per weight in (0, 16], whole (2) "
                                    "or fractional (1.5), got " +
                                    text;
        double v = 0;
        const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
        if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size() ||
            !std::isfinite(v) || !(v > 0 && v <= 16))
          return failure;
        text = size_text(v); // the shortest form, as the files write it ("2.0" -> "2")
        return {};
      },
      "(0, 16]");
}

int main(int argc, char** argv) {
  settings cfg;
  auto& t = cfg.trainer;
  // 64 batches of 32 test images: with 16 the sensitivities of LeNet-5's fc1/fc2 channels were
  // mostly noise; at 64 their split-half reliability is 0.2-0.4 (0.3-1.0 in the other layers).
  t.sensitivity_batches = 64;
  namespace cli = bitgrad::cli;
  const auto whole = [](std::uint64_t lo) { return cli::whole_number(lo); };
  CLI::App app{"Pareto study: uniform vs learned mixed-precision quantization on Fashion-MNIST "
               "(issues #9 and #11)"};
  app.add_option("--data", cfg.data, "folder with the gzip IDX files")->capture_default_str();
  app.add_option("--out", cfg.out, "output folder")->capture_default_str();
  app.add_option("--models,--model", cfg.models,
                 "lenet5, vgg-small and/or resnet20 (resnet20: --policies frac_bits only)")
      ->delimiter(',')
      ->check(CLI::IsMember({"lenet5", "vgg-small", "resnet20"}))
      ->capture_default_str();
  app.add_option("--sizes", cfg.sizes,
                 "size points k in (0, 16], bits per weight: the budget is the uniform "
                 "per-channel model at k bits; at a whole k the uniform arms run too, at a "
                 "fractional k (1.5) only the mixed arms, with k bits of codes per weight, "
                 "compared with the uniform arm of the smallest whole k' >= k of the study")
      ->delimiter(',')
      ->check(size_point())
      ->capture_default_str();
  app.add_option("--uniform-sizes", cfg.uniform_sizes,
                 "whole size points k where only the uniform arms run (e.g. 1,3,4 for the "
                 "size-vs-error table beside mixed arms at --sizes 1.5,2); a k also in --sizes "
                 "runs every arm there; they run after the points of --sizes")
      ->delimiter(',')
      ->check(size_point());
  app.add_option("--policies", cfg.policies, "mixed-precision policies")
      ->delimiter(',')
      ->check(CLI::IsMember({"frac_bits", "step_bits", "noise_bits"}))
      ->capture_default_str();
  app.add_option("--groups", cfg.groups, "granularities of the mixed arms: layer, channel or N")
      ->delimiter(',')
      ->check(cli::group_size())
      ->capture_default_str();
  app.add_option("--uniform-grids", cfg.uniform_grids,
                 "grids of the uniform fixed_bits arms: symmetric (the reference) and full "
                 "(every k-bit two's complement code, LSQ's; arm uniform-full/<group>, its "
                 "initial step --full-grid-init's)")
      ->delimiter(',')
      ->check(CLI::IsMember({"symmetric", "full"}))
      ->capture_default_str();
  app.add_option("--full-grid-init", cfg.full_grid_init,
                 "the initial step of the uniform-full arms: lsq (LSQ's 2 mean|w| / sqrt(Qp)) or "
                 "mse (per group, the step with the smallest squared error on the full grid)")
      ->check(CLI::IsMember({"lsq", "mse"}))
      ->capture_default_str();
  app.add_option("--uniform-groups", cfg.uniform_groups,
                 "granularities of the uniform fixed_bits arms (per channel is the reference)")
      ->delimiter(',')
      ->check(cli::group_size())
      ->capture_default_str();
  app.add_option("--seeds", cfg.seeds, "number of seeds")->check(whole(1))->capture_default_str();
  app.add_option("--first-seed", cfg.first_seed)->check(whole(0))->capture_default_str();
  app.add_option("--pretrain-epochs", t.pretrain.epochs, "FP32 epochs (once per seed)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--search-epochs", t.search.epochs, "epochs of every arm before freezing")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--finetune-epochs", t.finetune.epochs, "epochs of every arm after freezing")
      ->check(whole(0))
      ->capture_default_str();
  const auto bitwidth = cli::real_number(1, cli::lower_bound::inclusive, 16);
  app.add_option("--b-min", cfg.b_min, "lowest bitwidth of the mixed arms (step_bits: >= 2)")
      ->check(bitwidth)
      ->capture_default_str();
  app.add_option("--b-max", cfg.b_max, "highest bitwidth of the mixed arms")
      ->check(bitwidth)
      ->capture_default_str();
  app.add_option("--b-init", cfg.b_init, "initial bitwidth (default: b_max - 0.5)")
      ->check(bitwidth);
  app.add_option("--bits-lr", t.search.bits_lr, "bitwidth learning rate")
      ->check(cli::positive_number())
      ->capture_default_str();
  app.add_option("--bits-moment", cfg.bits_moment,
                 "Adam's second moment of the bitwidths: one per group, or one per layer (groups "
                 "of a layer then step in proportion to their gradients)")
      ->check(CLI::IsMember({"group", "layer"}))
      ->capture_default_str();
  app.add_option("--lambda", t.penalty_lambda, "size penalty weight")
      ->check(cli::real_number(0, cli::lower_bound::inclusive))
      ->capture_default_str();
  app.add_option("--sensitivity", t.sensitivity_batches,
                 "batches of 32 test images for the sensitivity diagnostics (0 = off)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--batch-size", t.batch_size)->check(whole(1))->capture_default_str();
  app.add_option("--train-limit", cfg.train_limit, "use only the first N training images (0 = all)")
      ->check(whole(0))
      ->capture_default_str();
  app.add_option("--threads", cfg.threads,
                 "OpenMP threads (0 = OpenMP's default; at most the hardware threads)")
      ->check(cli::thread_count())
      ->capture_default_str();
  app.add_flag("--quick", cfg.quick,
               "short study for a rerun (<= 15 min on 2 cores): 1 seed, 3/2/1 epochs, sizes 2,3,4, "
               "per-layer and per-channel arms (explicit options still win)");
  app.add_flag("--check-only", cfg.check_only,
               "train nothing: only run --check on the files of an earlier study in --out (give "
               "the same --models, --seeds, --sizes, --policies and --groups)");
  app.add_flag("--from-csv", cfg.from_csv,
               "train nothing: rebuild aggregate.csv, results.md and the plots of --out from its "
               "results.csv and layers.csv (models and sizes are taken from the rows)");
  app.add_flag("--resume", cfg.resume,
               "keep the runs already in --out/results.csv (and layers.csv) and run only the "
               "missing arms; a seed with a missing arm starts from its saved FP32 network "
               "(runs/<model>/seed<s>/fp32.npz, kept with the settings that made it in "
               "fp32.json), or is pretrained again when that file is missing or was made with "
               "other settings (an interrupted pretraining continues from "
               "runs/<model>/seed<s>/pretrain/checkpoint.bin); an arm interrupted inside, or "
               "in its diagnostics, continues from its checkpoint "
               "(runs/<model>/seed<s>/<k>bit/<arm>/checkpoint.bin, kept with the arm's settings "
               "in arm.json; else it starts over and says why; so does a resnet20 arm whose "
               "checkpoint, of bitgrad before checkpoint format version 4, lacks the batch "
               "norms' running statistics), appending to its train.log, and its seconds in "
               "results.csv are the sum over its parts");
  app.add_flag("--check", cfg.check,
               "afterwards, read the files back and fail unless every row is there and every arm "
               "is within its budget");
  CLI11_PARSE(app, argc, argv);
  if (cfg.quick) {
    if (!app.count("--seeds")) cfg.seeds = 1;
    if (!app.count("--pretrain-epochs")) t.pretrain.epochs = 3;
    if (!app.count("--search-epochs")) t.search.epochs = 2;
    if (!app.count("--finetune-epochs")) t.finetune.epochs = 1;
    if (!app.count("--groups")) cfg.groups = {"layer", "channel"};
  }
  t.bits_moment = bitgrad::train::parse_bits_normalisation(cfg.bits_moment);
  try {
    if (cfg.b_min > cfg.b_max)
      cli::reject("--b-min", "expected at most --b-max (" + cli::number_text(cfg.b_max) +
                                 "), got " + cli::number_text(cfg.b_min));
    if (cfg.b_init && !(*cfg.b_init >= cfg.b_min && *cfg.b_init <= cfg.b_max))
      cli::reject("--b-init", "expected a bitwidth in [--b-min, --b-max] = [" +
                                  cli::number_text(cfg.b_min) + ", " + cli::number_text(cfg.b_max) +
                                  "], got " + cli::number_text(*cfg.b_init));
    if (std::find(cfg.models.begin(), cfg.models.end(), "resnet20") != cfg.models.end())
      for (const auto& p : cfg.policies)
        if (p != "frac_bits")
          cli::reject("--policies", "--models resnet20 is built with the frac_bits arms (and "
                                    "the uniform fixed_bits arm) only, got " +
                                        p);
    if (cfg.uniform_groups.empty())
      cli::reject("--uniform-groups", "at least one uniform arm is needed");
    if (std::find(cfg.uniform_grids.begin(), cfg.uniform_grids.end(), "symmetric") ==
        cfg.uniform_grids.end())
      cli::reject("--uniform-grids", "the symmetric grid is the reference of every comparison: "
                                     "list it (symmetric,full)");
    // step_bits has no grid below 2 bits (b_min >= 2): under a budget below 2 bits per weight
    // it would stop the study with "below the smallest model" after the arms before it ran.
    if (std::find(cfg.policies.begin(), cfg.policies.end(), "step_bits") != cfg.policies.end())
      for (double k : cfg.sizes)
        if (k < 2)
          cli::reject("--sizes", "step_bits (bitwidths >= 2) cannot fit a size point below 2 "
                                 "bits, got " +
                                     size_text(k) + ": leave step_bits out of --policies");
    // --uniform-sizes: whole k only (fixed_bits has no fractional grid); the points not in
    // --sizes join the study's size points, uniform arms only (arms_of).
    std::vector<double> uniform_only;
    for (double k : cfg.uniform_sizes) {
      if (!whole_size(k))
        cli::reject("--uniform-sizes", "expected whole bits per weight (the uniform arm has no "
                                       "fractional bitwidth), got " +
                                           size_text(k));
      if (std::find(cfg.sizes.begin(), cfg.sizes.end(), k) != cfg.sizes.end()) continue;
      uniform_only.push_back(k);
      cfg.sizes.push_back(k);
    }
    cfg.uniform_sizes = uniform_only;
  } catch (const CLI::Error& e) {
    return app.exit(e);
  }
  cli::use_threads(cfg.threads);
  bitgrad::train::install_interrupt_handlers();
  try {
    const std::size_t arms = arms_per_model(cfg);
    const std::size_t total = arms * cfg.seeds * cfg.models.size();
    auto check = [&] {
      const auto problems = check_outputs(cfg, arms);
      for (const auto& p : problems) std::fprintf(stderr, "check failed: %s\n", p.c_str());
      if (!problems.empty()) return 2;
      std::printf("check passed: %zu runs and %zu arms in results.csv, aggregate.csv, results.md "
                  "and the plot; every arm within its budget\n",
                  total, arms * cfg.models.size());
      return 0;
    };
    if (cfg.check_only) return check();
    if (cfg.from_csv) {
      const auto rows = load_rows(cfg.out);
      cfg.models.clear();
      cfg.sizes.clear();
      for (const auto& r : rows) {
        if (std::find(cfg.models.begin(), cfg.models.end(), r.model) == cfg.models.end())
          cfg.models.push_back(r.model);
        if (std::find(cfg.sizes.begin(), cfg.sizes.end(), r.k) == cfg.sizes.end())
          cfg.sizes.push_back(r.k);
      }
      write_outputs(cfg, rows);
      std::printf("rebuilt %s from %zu rows of results.csv\n", cfg.out.c_str(), rows.size());
      return 0;
    }
    data_sets data;
    const fs::path dir = cfg.data;
    data.train = bitgrad::load_mnist_format(dir / "train-images-idx3-ubyte.gz",
                                            dir / "train-labels-idx1-ubyte.gz");
    data.test = bitgrad::load_mnist_format(dir / "t10k-images-idx3-ubyte.gz",
                                           dir / "t10k-labels-idx1-ubyte.gz");
    if (cfg.train_limit && cfg.train_limit < data.train.size()) {
      std::vector<std::size_t> first(cfg.train_limit);
      std::iota(first.begin(), first.end(), std::size_t{0});
      data.train = bitgrad::subset(data.train, first);
    }
    fs::create_directories(cfg.out);
    // "1 sizes x 3 arms" when every size point has the same arms, "2 sizes (3 arms)" else
    const bool same_arms = std::all_of(cfg.sizes.begin(), cfg.sizes.end(), [&](double k) {
      return arms_of(cfg, k).size() == arms_of(cfg, cfg.sizes.front()).size();
    });
    const std::string sizes_arms =
        std::to_string(cfg.sizes.size()) + " sizes" +
        (same_arms ? " x " + std::to_string(arms_of(cfg, cfg.sizes.front()).size()) + " arms"
                   : " (" + std::to_string(arms) + " arms)");
    std::printf("pareto: %zu models x %zu seeds x %s = %zu runs; epochs "
                "pretrain/search/finetune %zu/%zu/%zu; %zu train / %zu test images; %s\n",
                cfg.models.size(), cfg.seeds, sizes_arms.c_str(), total, t.pretrain.epochs,
                t.search.epochs, t.finetune.epochs, data.train.size(), data.test.size(),
                bitgrad::simd_arch_name());
    if (std::find(cfg.uniform_grids.begin(), cfg.uniform_grids.end(), "full") !=
        cfg.uniform_grids.end())
      std::printf("uniform-full arms: initial step %s (--full-grid-init)\n",
                  cfg.full_grid_init.c_str());
    std::vector<run_row> rows;
    if (cfg.resume && fs::exists(cfg.out / "results.csv")) {
      rows = load_rows(cfg.out);
      std::printf("resuming: %zu runs already in %s/results.csv\n", rows.size(), cfg.out.c_str());
    }
    std::size_t done = 0; // runs of this session, out of the missing ones
    const std::size_t missing = missing_runs(cfg, rows);
    const auto start = std::chrono::steady_clock::now();
    for (const auto& model : cfg.models) {
      const bool finished =
          model == "resnet20" ? run_resnet20(cfg, data, rows, done, missing, start)
          : model == "lenet5"
              ? run_model<true>(
                    cfg, data, model,
                    []<template <class> class Q>(const bitgrad::nn::model_options<float, Q>& o) {
                      return bitgrad::nn::lenet5<float, Q>(o);
                    },
                    rows, done, missing, start)
              : run_model<true>(
                    cfg, data, model,
                    []<template <class> class Q>(const bitgrad::nn::model_options<float, Q>& o) {
                      return bitgrad::nn::vgg_small<float, Q>(o);
                    },
                    rows, done, missing, start);
      if (!finished) {
        std::printf("interrupted: %zu runs written to %s\n", rows.size(), cfg.out.c_str());
        return 130;
      }
    }
    // The tables are written after every arm; when no arm ran (--resume of a complete study) they
    // are written here, from the rows of results.csv, as --from-csv does.
    if (done == 0) write_outputs(cfg, rows);
    std::printf("wrote %s/{results.csv, aggregate.csv, layers.csv, results.md, pareto-*.svg, "
                "bits-*.svg} in %s\n",
                cfg.out.c_str(),
                bitgrad::format_duration(
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count())
                    .c_str());
    return cfg.check ? check() : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pareto: %s\n", e.what());
    return 1;
  }
}
