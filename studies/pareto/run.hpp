// Driving bitgrad: per seed, one FP32 network pretrained by the trainer; per size point and
// arm, a network quantized by the arm's policy, trained from that FP32 start under the size
// budget, frozen within it and fine-tuned; then the sizes and the sensitivity diagnostics.
#pragma once

#include "cli_checks.hpp"
#include "common/train_run.hpp"
#include "outputs.hpp"
#include "stats.hpp"
#include "study.hpp"

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/core/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace pareto {

struct data_sets {
  bitgrad::dataset train, test;
};

/// The split-half reliability of the sensitivity diagnostics (see run_row): S_g measured again
/// on the next sensitivity_batches batches of 32 test images, Spearman per layer with the
/// first measurement.
template <class Net>
void sensitivity_split_half(Net& net, const data_sets& data, const settings& cfg, run_row& r) {
  namespace tr = bitgrad::train;
  const std::size_t n = cfg.trainer.sensitivity_batches;
  auto batches = tr::fixed_batches<float>(data.test, cfg.trainer.normalise, 32, 2 * n);
  if (batches.size() <= n) return; // the test set has no second half
  batches.erase(batches.begin(), batches.begin() + static_cast<std::ptrdiff_t>(n));
  const auto second = tr::exact_sensitivity(net, batches);
  r.sensitivity_split_half.assign(r.layers.size(), nan_value);
  for (std::size_t li = 0; li < r.layers.size() && li < second.size(); ++li) {
    const auto& first = r.layers[li].group_sensitivity;
    if (first.size() == second[li].size() && first.size() >= 2)
      r.sensitivity_split_half[li] = tr::spearman(first, second[li]);
  }
}

/// The quantized network of arm `a` at size point k (policy Quant, its options from the study's
/// settings), not yet trained.
template <template <class> class Quant, class Build>
auto arm_network(const settings& cfg, Build build, const arm& a, double k, std::uint64_t seed) {
  using T = float;
  typename Quant<T>::options q{};
  q.group_size = bitgrad::cli::parse_group(a.group);
  if constexpr (requires { q.b_min; }) {
    q.b_min = std::is_same_v<Quant<T>, bitgrad::quant::step_bits<T>> ? std::max(cfg.b_min, 2.0)
                                                                     : cfg.b_min;
    q.b_max = cfg.b_max;
    q.b_init = cfg.b_init;
  } else {
    q.bits = static_cast<int>(k); // a uniform arm runs at whole size points only (arms_of)
  }
  if constexpr (requires { q.seed; }) q.seed = seed;
  if constexpr (requires { q.grid; })
    q.grid = a.grid == "full" ? bitgrad::quant::uniform_grid::full
                              : bitgrad::quant::uniform_grid::symmetric;
  if constexpr (requires { q.init; })
    q.init = a.grid == "full" && cfg.full_grid_init == "mse" ? bitgrad::quant::step_init::mse
                                                             : bitgrad::quant::step_init::lsq;
  // Every layer, the first conv and the last linear included, quantized as the arm says
  // (model_options::quant reaches them when edge_quant is unset).
  return build.template operator()<Quant>(
      bitgrad::nn::model_options<T, Quant>{.seed = seed, .quant = q});
}

inline bitgrad::json pretrain_key(const settings& cfg, const data_sets& data,
                                  const std::string& model, std::uint64_t seed);

/// What decides an arm's result, kept beside its checkpoint as <arm dir>/arm.json: --resume
/// continues an interrupted arm from its checkpoint.bin only when this key is the saved one, so
/// the resumed arm ends where an unbroken run of the same settings would. The FP32 start's own
/// key (pretrain_key: model, seed, data, images, batch size, pretraining), the size point and
/// budget, the arm, and every option of the search and fine-tuning. Not the thread count (as
/// for fp32.json): an arm resumed with other --threads is a valid run, but its sums may be
/// added in another order than in an unbroken one.
inline bitgrad::json arm_key(const settings& cfg, const data_sets& data, const std::string& model,
                             const arm& a, double k, std::uint64_t seed, double budget_bits) {
  const auto& t = cfg.trainer;
  bitgrad::json key{{"fp32", pretrain_key(cfg, data, model, seed)},
                    {"size_bits", size_text(k)},
                    {"budget_bits", budget_bits},
                    {"arm", a.name()},
                    {"b_min", cfg.b_min},
                    {"b_max", cfg.b_max},
                    {"b_init", cfg.b_init ? bitgrad::json(*cfg.b_init) : bitgrad::json()},
                    {"search_epochs", t.search.epochs},
                    {"search_lr", t.search.lr},
                    {"bits_lr", t.search.bits_lr},
                    {"bits_moment", bitgrad::train::to_string(t.bits_moment)},
                    {"lambda", t.penalty_lambda},
                    {"penalty", static_cast<int>(t.penalty)},
                    {"budget_anneal", t.budget_anneal},
                    {"penalty_warmup", t.penalty_warmup},
                    {"freeze_rounding", static_cast<int>(t.freeze_rounding)},
                    {"finetune_epochs", t.finetune.epochs},
                    {"finetune_lr", t.finetune.lr},
                    {"max_steps_per_epoch", t.max_steps_per_epoch}};
  // Only when it is not LSQ's, so the keys of earlier checkpoints stay valid.
  if (a.uniform() && a.grid == "full" && cfg.full_grid_init != "lsq")
    key["full_grid_init"] = cfg.full_grid_init;
  return key;
}

/// --resume: whether the arm in `dir` continues from its checkpoint.bin, that is, one is there
/// and <dir>/arm.json holds `key`. When a checkpoint is there but cannot be used, says why on
/// stdout (the arm then starts over and its checkpoint is removed).
inline bool resumable_arm(const fs::path& dir, const bitgrad::json& key, const std::string& what) {
  if (!fs::exists(dir / "checkpoint.bin")) return false;
  std::string why;
  std::ifstream in(dir / "arm.json");
  const auto saved =
      in ? bitgrad::json::parse(in, nullptr, /*allow_exceptions=*/false) : bitgrad::json();
  if (!in)
    why = "no arm.json beside it (the settings that made it are unknown)";
  else if (saved.is_discarded() || !saved.is_object()) // see load_pretrained
    why = (dir / "arm.json").string() + " is not a JSON object";
  else if (!(saved == key)) {
    why = "made with other settings:";
    for (const auto& [name, value] : key.items())
      if (!saved.contains(name) || !(saved[name] == value))
        why += " " + name + " " + (saved.contains(name) ? saved[name].dump() : "(none)") +
               ", now " + value.dump() + ";";
    for (const auto& [name, value] : saved.items())
      if (!key.contains(name)) why += " " + name + " " + value.dump() + ", now (none);";
    why.pop_back();
  }
  if (why.empty()) {
    std::cout << what << ": resuming from " << (dir / "checkpoint.bin").string() << "\n"
              << std::flush;
    return true;
  }
  std::cout << what << ": starting over, not from " << (dir / "checkpoint.bin").string() << ": "
            << why << "\n"
            << std::flush;
  return false;
}

/// The folder of one arm's run: <out>/runs/<model>/seed<s>/<k>bit/<policy>[-full]-<group>.
inline fs::path arm_dir(const settings& cfg, const std::string& model, const arm& a, double k,
                        std::uint64_t seed) {
  return cfg.out / "runs" / model / ("seed" + std::to_string(seed)) / (size_text(k) + "bit") /
         (a.policy + (a.uniform() && a.grid == "full" ? "-full-" : "-") + a.group);
}

template <template <class> class Quant, class Build, class FloatNet>
std::optional<run_row> run_arm(const settings& cfg, const data_sets& data, Build build,
                               FloatNet& fp32, const std::string& model, const arm& a, double k,
                               std::uint64_t seed, double budget_bits) {
  using T = float;
  auto net = arm_network<Quant>(cfg, build, a, k, seed);

  bitgrad::train::trainer_options t = cfg.trainer;
  t.pretrain.epochs = 0; // every arm starts from the shared pretrained FP32 network
  t.seed = seed;
  // The trainer's target is the model's stored bytes, biases included (the same in every arm).
  t.target_bytes = budget_bits / 8 + bitgrad::train::measure_size(net).float_bits() / 8;
  t.out_dir = arm_dir(cfg, model, a, k, seed);
  // An arm not in results.csv: with --resume, continued from its checkpoint when that was made
  // with this arm's settings (arm_key), else run again from its start (overwrite: the trainer
  // replaces the old run's files). A new start's key is written before its first checkpoint.
  fs::create_directories(t.out_dir);
  const auto key = arm_key(cfg, data, model, a, k, seed, budget_bits);
  const std::string what =
      model + " seed " + std::to_string(seed) + " k=" + size_text(k) + " " + a.name();
  // The trainer's checkpoint keeps the batch norms' running statistics from format version 4
  // on. An older one resumed would restart them from their initial values (mean 0, variance 1)
  // and the arm would end elsewhere than an unbroken one (a ResNet-20 arm on 256 images: 8.75 %
  // against 28.25 %): a network with batch norms (resnet20) starts such an arm over. (A file
  // that is no checkpoint goes on to resumable_arm and the trainer, which say what is wrong.)
  bool batch_norms = false;
  net.visit_parameters([&](bitgrad::param_ref<T>& p) {
    batch_norms = batch_norms || p.kind == bitgrad::param_kind::norm;
  });
  const fs::path checkpoint = t.out_dir / "checkpoint.bin";
  const bool old_checkpoint =
      cfg.resume && batch_norms && fs::exists(checkpoint) &&
      bitgrad::train::checkpoint_file_version(checkpoint)
              .value_or(bitgrad::train::detail::batch_norm_statistics_version) <
          bitgrad::train::detail::batch_norm_statistics_version;
  if (old_checkpoint)
    std::cout << what << ": starting over, not from " << checkpoint.string()
              << ": a checkpoint of bitgrad before checkpoint format version 4 does not keep the "
                 "batch norms' running statistics, so the arm could not end where an unbroken "
                 "run would\n"
              << std::flush;
  t.resume = cfg.resume && !old_checkpoint && resumable_arm(t.out_dir, key, what);
  t.overwrite = true;
  if (!t.resume) {
    fs::remove(t.out_dir / "checkpoint.bin"); // never a checkpoint beside another arm's key
    bitgrad::write_file_atomically(t.out_dir / "arm.json", key.dump(2) + "\n");
  }
  // A resumed arm's log goes on where the interrupted part's ended.
  std::ofstream log(t.out_dir / "train.log", t.resume ? std::ios::app : std::ios::trunc);
  t.log = &log;
  t.terminal = false;
  bitgrad_runs::run_labels labels;
  labels.model_name = model;
  labels.settings = {{"arm", a.name()},
                     {"size point", size_text(k) + " bits per weight (uniform per channel" +
                                        (whole_size(k) ? ")" : ", code bits interpolated)")},
                     {"budget bytes (weights)", format_fixed(budget_bits / 8, 1)},
                     {"seed", std::to_string(seed)}};
  // The trainer, compiled once for the study and fashion_mnist (common/train_run.hpp).
  const auto result = bitgrad_runs::train_run(fp32, net, data.train, data.test, t, labels);
  if (!result.finished) {
    // The trainer wrote a checkpoint as it stopped: --resume continues the arm from there.
    if (fs::exists(t.out_dir / "checkpoint.bin"))
      std::cout << what << ": interrupted; --resume continues it from "
                << (t.out_dir / "checkpoint.bin").string() << "\n"
                << std::flush;
    return std::nullopt;
  }
  // The checkpoint (at the end of fine-tuning now) stays until the arm's row is in results.csv
  // (run_model): the sensitivity diagnostics below and in the trainer take a while, and a study
  // killed during them resumes from it to the diagnostics instead of training the arm again.

  const auto size = bitgrad::train::measure_size(net);
  run_row r;
  r.model = model;
  r.k = k;
  r.a = a;
  r.seed = seed;
  r.fp32_accuracy = result.summary.fp32_accuracy;
  r.accuracy = result.summary.quant_accuracy;
  r.budget_bytes = budget_bits / 8;
  r.weight_bytes = size.weight_bits / 8;
  r.total_bytes = size.bytes();
  r.code_bits = size.average_bits();
  r.stored_bits = size.weight_bits / static_cast<double>(size.weights);
  r.seconds = result.summary.seconds; // a resumed arm: the sum over its parts (the checkpoint's)
  r.layers = result.summary.layers;
  // Only the uniform arm (fixed_bits) measures it: the other policies' networks need no
  // exact_sensitivity compiled for them (its backward passes; issue #18).
  if constexpr (std::is_same_v<Quant<T>, bitgrad::quant::fixed_bits<T>>)
    if (a.uniform() && cfg.trainer.sensitivity_batches > 0)
      sensitivity_split_half(net, data, cfg, r);
  std::vector<double> rhos;
  for (const auto& l : r.layers) {
    if (std::isfinite(l.bits_spread))
      r.max_spread =
          std::isfinite(r.max_spread) ? std::max(r.max_spread, l.bits_spread) : l.bits_spread;
    if (l.bits_spread >= 2) ++r.layers_spread2;
    if (std::isfinite(l.rank_correlation)) {
      rhos.push_back(l.rank_correlation);
      if (l.rank_correlation > 0) ++r.layers_rho_positive;
    }
  }
  r.mean_rho = summarise(rhos).mean;
  return r;
}

/// Spearman's rho, per layer, between the learned bits of `mixed` and the sensitivity S^u the
/// same channels had in the uniform per-channel arm of the same seed and size (all groups at
/// k bits, so S^u is not confounded by the learned bits themselves: a group frozen at more bits
/// loses less when it drops one, see train/sensitivity.hpp). A group of several channels takes
/// the sum of its channels' S^u (the first-order loss change of lowering them all). NaN when
/// the uniform arm has no sensitivities or the layer has fewer than two groups.
inline void uniform_rank_correlation(run_row& mixed, const run_row& uniform) {
  mixed.rho_uniform.assign(mixed.layers.size(), nan_value);
  std::vector<double> finite;
  for (std::size_t li = 0; li < mixed.layers.size() && li < uniform.layers.size(); ++li) {
    const auto& m = mixed.layers[li];
    const auto& su = uniform.layers[li].group_sensitivity; // one per channel
    if (m.groups < 2 || su.empty() || su.size() < m.groups) continue;
    const std::size_t g = (su.size() + m.groups - 1) / m.groups; // channels per group
    std::vector<double> s(m.groups, 0.0);
    for (std::size_t c = 0; c < su.size(); ++c) s[std::min(c / g, m.groups - 1)] += su[c];
    mixed.rho_uniform[li] = bitgrad::train::spearman(m.group_bits, s);
    if (std::isfinite(mixed.rho_uniform[li])) finite.push_back(mixed.rho_uniform[li]);
  }
  mixed.mean_rho_uniform = summarise(finite).mean;
}

/// S_k: the stored bits of the model's quantized weights, uniform at k bits per channel,
///   S_k = sum over the quantized layers l of (k n_l + 40 C_l)
/// (n_l weights, C_l output channels, 40 bits of scale and bitwidth byte per channel). At a whole
/// k it is measured on that uniform model; at a fractional k (1.5) no such model exists and the
/// code bits are interpolated: S_k = S_j + (k - j) n, j = max(1, floor(k)), n = sum_l n_l, the
/// same formula (the overhead does not depend on k), so S_1.5 lies halfway between S_1 and S_2.
template <class Build>
double budget_bits(Build build, double k) {
  using bitgrad::quant::fixed_bits;
  const int j = std::max(1, static_cast<int>(std::floor(k)));
  const fixed_bits<float>::options q{.group_size = 1, .bits = j};
  auto net = build.template operator()<fixed_bits>(
      bitgrad::nn::model_options<float, fixed_bits>{.quant = q});
  const auto size = bitgrad::train::measure_size(net);
  return size.weight_bits + (k - j) * static_cast<double>(size.weights);
}

/// What decides a seed's FP32 pretraining. --resume reuses a saved network only when its key
/// is this one (same model, seed, data, images, batch size, pretraining epochs and rate), so a
/// study run in parts trains its arms from the very network an unbroken run would have.
inline bitgrad::json pretrain_key(const settings& cfg, const data_sets& data,
                                  const std::string& model, std::uint64_t seed) {
  return {{"model", model},
          {"seed", seed},
          {"data", fs::absolute(cfg.data).lexically_normal().string()},
          {"train_images", data.train.size()},
          {"batch_size", cfg.trainer.batch_size},
          {"pretrain_epochs", cfg.trainer.pretrain.epochs},
          {"pretrain_lr", cfg.trainer.pretrain.lr}};
}

/// Saves the pretrained network as <dir>/fp32.npz (train::save_npz: weights, biases, batch
/// norms' statistics) and its key as <dir>/fp32.json, both written atomically, the key last.
template <class Net>
void save_pretrained(Net& net, const fs::path& dir, const bitgrad::json& key) {
  fs::remove(dir / "fp32.json"); // no key of an older network beside a half-replaced one
  bitgrad::train::save_npz(net, dir / "fp32.npz");
  bitgrad::write_file_atomically(dir / "fp32.json", key.dump(2) + "\n");
}

/// Loads <dir>/fp32.npz into net when <dir>/fp32.json holds `key`; false (net untouched, the
/// reason printed) when either file is missing or the key differs.
template <class Net>
bool load_pretrained(Net& net, const fs::path& dir, const bitgrad::json& key) {
  std::ifstream in(dir / "fp32.json");
  if (!in) return false;
  const auto saved = bitgrad::json::parse(in, nullptr, /*allow_exceptions=*/false);
  // (A discarded value, what a file that is not JSON parses to, compares neither equal nor
  // unequal to anything in nlohmann/json 3.11: test it first.)
  if (saved.is_discarded() || !(saved == key)) {
    std::cout << "pretraining again: " << (dir / "fp32.json").string() << " is "
              << (saved.is_discarded() ? std::string("not JSON") : saved.dump())
              << ", this study needs " << key.dump() << "\n";
    return false;
  }
  bitgrad::train::load_npz(net, dir / "fp32.npz");
  return true;
}

/// Calls f.template operator()<Q>() with the policy template Q of arm `a`. AllPolicies = false
/// compiles only frac_bits and fixed_bits (see run_model): another policy is then a config_error.
template <bool AllPolicies, class F>
void with_policy(const std::string& model, const arm& a, F&& f) {
  if (a.policy == "fixed_bits")
    f.template operator()<bitgrad::quant::fixed_bits>();
  else if (a.policy == "frac_bits")
    f.template operator()<bitgrad::quant::frac_bits>();
  else if constexpr (!AllPolicies)
    throw bitgrad::config_error(model + // main.cpp puts "pareto: " in front
                                " is built with the frac_bits and fixed_bits arms only, got " +
                                a.policy);
  else if (a.policy == "step_bits")
    f.template operator()<bitgrad::quant::step_bits>();
  else
    f.template operator()<bitgrad::quant::noise_bits>();
}

/// Before any training: every arm's budget at every size point holds its smallest model (every
/// group at ceil(b_min), 40 bits of overhead per group; train::smallest_size_bits), else a
/// config_error naming the model, size point and arm. The trainer would refuse the same budget,
/// but only after the seed's FP32 pretraining.
template <bool AllPolicies, class Build>
void check_budgets(const settings& cfg, const std::string& model, Build build) {
  for (double k : cfg.sizes) {
    const double budget = budget_bits(build, k);
    for (const arm& a : arms_of(cfg, k))
      with_policy<AllPolicies>(model, a, [&]<template <class> class Q>() {
        auto net = arm_network<Q>(cfg, build, a, k, cfg.first_seed);
        const double floats = bitgrad::train::measure_size(net).float_bits();
        const double smallest = bitgrad::train::smallest_size_bits(net) - floats;
        if (budget < smallest)
          throw bitgrad::config_error(
              model + " at size point " + size_text(k) + ": the budget (" +
              format_fixed(budget / 8, 1) + " B of weights) is below the smallest " + a.name() +
              " model (" + format_fixed(smallest / 8, 1) +
              " B, every group at b_min = " + format_fixed(cfg.b_min, 1) +
              " bits plus 40 bits per group): raise the size point or lower --b-min");
      });
  }
}

/// Runs every seed, size and arm of one model; false when interrupted. AllPolicies = false
/// compiles only the frac_bits and fixed_bits arms (resnet20, run_resnet20.cpp): a step_bits or
/// noise_bits arm is then a config_error (main.cpp refuses it first).
template <bool AllPolicies, class Build>
bool run_model(const settings& cfg, const data_sets& data, const std::string& model, Build build,
               std::vector<run_row>& rows, std::size_t& done, std::size_t total,
               std::chrono::steady_clock::time_point start) {
  using bitgrad::quant::fixed_bits;
  auto finished = [&](double k, const arm& a, std::uint64_t seed) {
    return std::any_of(rows.begin(), rows.end(), [&](const run_row& r) {
      return r.model == model && r.k == k && r.a.name() == a.name() && r.seed == seed;
    });
  };
  check_budgets<AllPolicies>(cfg, model, build);
  for (std::size_t s = 0; s < cfg.seeds; ++s) {
    const std::uint64_t seed = cfg.first_seed + s;
    bool all_done = true; // --resume: every arm of this seed is in results.csv already
    for (double k : cfg.sizes)
      for (const arm& a : arms_of(cfg, k)) all_done = all_done && finished(k, a, seed);
    if (all_done) continue;
    // Pretrain the FP32 network once for this seed. The trainer needs a quantized twin; a
    // throw-away 8-bit per-layer one, with no search or fine-tuning epochs, is enough.
    auto fp32 = build.template operator()<bitgrad::quant::no_quant>(
        bitgrad::nn::model_options<float>{.seed = seed});
    const fs::path seed_dir = cfg.out / "runs" / model / ("seed" + std::to_string(seed));
    if (cfg.resume && load_pretrained(fp32, seed_dir, pretrain_key(cfg, data, model, seed))) {
      std::cout << model << " seed " << seed << ": FP32 network of the earlier pretraining ("
                << (seed_dir / "fp32.npz").string() << ")\n"
                << std::flush;
    } else {
      auto scratch =
          build.template operator()<fixed_bits>(bitgrad::nn::model_options<float, fixed_bits>{
              .seed = seed, .quant = {.group_size = bitgrad::quant::per_tensor, .bits = 8}});
      bitgrad::train::trainer_options t = cfg.trainer;
      t.search.epochs = t.finetune.epochs = 0;
      t.sensitivity_batches = 0; // nothing to diagnose in the throw-away twin
      t.seed = seed;
      t.target_bytes = 1e12;
      // The pretraining checkpoints into <seed>/pretrain/ like an arm (its key in arm.json
      // there), so --resume continues a pretraining cut off by a session's end.
      t.out_dir = seed_dir / "pretrain";
      fs::create_directories(t.out_dir);
      const auto key = pretrain_key(cfg, data, model, seed);
      const std::string what = model + " seed " + std::to_string(seed) + " FP32 pretraining";
      t.resume = cfg.resume && resumable_arm(t.out_dir, key, what);
      t.overwrite = true;
      if (!t.resume) {
        fs::remove(t.out_dir / "checkpoint.bin");
        bitgrad::write_file_atomically(t.out_dir / "arm.json", key.dump(2) + "\n");
      }
      std::ofstream log(seed_dir / "pretrain.log", t.resume ? std::ios::app : std::ios::trunc);
      t.log = &log;
      t.terminal = false;
      const auto result = bitgrad_runs::train_run(fp32, scratch, data.train, data.test, t, {});
      if (!result.finished) {
        if (fs::exists(t.out_dir / "checkpoint.bin"))
          std::cout << what << ": interrupted; --resume continues it from "
                    << (t.out_dir / "checkpoint.bin").string() << "\n"
                    << std::flush;
        return false;
      }
      // Seconds: the sum over the pretraining's parts (the checkpoint's, when resumed).
      std::cout << model << " seed " << seed << ": FP32 pretrained " << t.pretrain.epochs
                << " epochs, test accuracy " << format_fixed(100 * result.summary.fp32_accuracy, 2)
                << "% (" << format_fixed(result.summary.seconds, 1) << " s)\n"
                << std::flush;
      save_pretrained(fp32, seed_dir, key);
      fs::remove(t.out_dir / "checkpoint.bin"); // fp32.npz holds the network now
    }
    for (double k : cfg.sizes) {
      const double budget = budget_bits(build, k);
      for (const arm& a : arms_of(cfg, k)) {
        if (finished(k, a, seed)) continue;
        std::optional<run_row> r;
        with_policy<AllPolicies>(model, a, [&]<template <class> class Q>() {
          r = run_arm<Q>(cfg, data, build, fp32, model, a, k, seed, budget);
        });
        if (!r) return false;
        if (!a.uniform())
          for (const auto& u : rows)
            if (u.a.reference_grid() && u.a.group == "channel" && u.model == model && u.k == k &&
                u.seed == seed)
              uniform_rank_correlation(*r, u);
        rows.push_back(*r);
        write_outputs(cfg, rows);
        fs::remove(arm_dir(cfg, model, a, k, seed) / "checkpoint.bin"); // the row is written
        ++done;
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double split_half = summarise(r->sensitivity_split_half).mean; // NaN: none
        char line[320];
        std::snprintf(
            line, sizeof line,
            "[%zu/%zu] %s seed %llu k=%s %-18s acc %6.2f%%  %7.0f B (budget %.0f B "
            "weights, used %.0f)  code bits %.2f  spread %s  rho %s  rho_u %s%s  %5.1f s  "
            "elapsed %s, ETA %s\n",
            done, total, model.c_str(), static_cast<unsigned long long>(seed), size_text(k).c_str(),
            a.name().c_str(), 100 * r->accuracy, r->total_bytes, r->budget_bytes, r->weight_bytes,
            r->code_bits, format_fixed(r->max_spread, 0).c_str(),
            signed_fixed(r->mean_rho, 2).c_str(), signed_fixed(r->mean_rho_uniform, 2).c_str(),
            std::isfinite(split_half) ? ("  S split-half " + signed_fixed(split_half, 2)).c_str()
                                      : "",
            r->seconds, bitgrad::format_duration(elapsed).c_str(),
            bitgrad::format_duration(elapsed / static_cast<double>(done) *
                                     static_cast<double>(total - done))
                .c_str());
        std::cout << line << std::flush;
      }
    }
  }
  return true;
}

/// run_model for resnet20 on 28x28 grey images, frac_bits and fixed_bits arms only: compiled in
/// run_resnet20.cpp, a translation unit of its own beside main.cpp (issues #18, #24).
bool run_resnet20(const settings& cfg, const data_sets& data, std::vector<run_row>& rows,
                  std::size_t& done, std::size_t total,
                  std::chrono::steady_clock::time_point start);

} // namespace pareto
