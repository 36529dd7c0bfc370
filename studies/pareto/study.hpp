// The words of the Pareto study: its settings, an arm (a policy at a granularity), the row of
// one finished arm of one seed, and the number formats of its tables and messages.
#pragma once

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/report/csv.hpp>
#include <bitgrad/report/format.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace pareto {

namespace fs = std::filesystem;
using bitgrad::layer_summary;
inline const double nan_value = std::numeric_limits<double>::quiet_NaN();

struct settings {
  std::string data = "/usr/share/datasets/fashion-mnist";
  fs::path out = "runs/pareto";
  std::vector<std::string> models{"lenet5"};
  std::vector<double> sizes{2, 3, 4}; ///< size points k, bits per weight (see size_text)
  /// --uniform-sizes: whole size points where only the uniform arms run. main() keeps here the
  /// ones not in --sizes and appends them to `sizes`, so every loop over the size points sees
  /// them; arms_of() leaves the mixed arms out there.
  std::vector<double> uniform_sizes;
  std::vector<std::string> policies{"frac_bits", "step_bits", "noise_bits"};
  std::vector<std::string> groups{"layer", "4", "channel"};
  std::vector<std::string> uniform_groups{"channel"};
  /// The uniform arms' grids (fixed_bits options::grid): "symmetric" (the reference) and
  /// optionally "full" (every k-bit two's complement code, LSQ's grid; issue #24).
  std::vector<std::string> uniform_grids{"symmetric"};
  /// The initial step of the full-grid uniform arms (fixed_bits options::init): "lsq" or "mse".
  std::string full_grid_init = "lsq";
  std::size_t seeds = 3;
  std::uint64_t first_seed = 1;
  double b_min = 1; ///< step_bits uses max(b_min, 2): it has no 1-bit grid
  double b_max = 8;
  std::optional<double> b_init; ///< unset: the policy's default (b_max - 0.5)
  std::string bits_moment =
      bitgrad::train::to_string(bitgrad::train::trainer_options{}.bits_moment);
  std::size_t train_limit = 0;
  std::size_t threads = 0;
  bool quick = false;
  bool check = false;
  bool check_only = false;
  bool from_csv = false;
  bool resume = false;
  bitgrad::train::trainer_options trainer;
};

/// One arm of the study: a policy at a granularity (and, uniform arms, a grid).
struct arm {
  std::string policy;             ///< fixed_bits (uniform), frac_bits, step_bits, noise_bits
  std::string group;              ///< "layer", "channel" or a number of channels
  std::string grid = "symmetric"; ///< uniform arms: "symmetric" or "full"
  bool uniform() const { return policy == "fixed_bits"; }
  /// A uniform arm on the symmetric grid: the one every arm is compared with.
  bool reference_grid() const { return uniform() && grid != "full"; }
  /// "uniform/channel", "uniform-full/channel" (the full grid), "frac_bits/4", ...
  std::string name() const {
    if (!uniform()) return policy + "/" + group;
    return std::string(grid == "full" ? "uniform-full" : "uniform") + "/" + group;
  }
  /// The grid an arm name says (results.csv stores the name; older files only "uniform/...").
  static std::string grid_of_name(const std::string& name) {
    return name.rfind("uniform-full/", 0) == 0 ? "full" : "symmetric";
  }
};

/// One finished arm of one seed.
struct run_row {
  std::string model;
  double k = 0; ///< size point: bits per weight of the uniform per-channel model (may be 1.5)
  arm a;
  std::uint64_t seed = 0;
  double fp32_accuracy = nan_value;
  double accuracy = nan_value;     ///< quantized, whole test set
  double budget_bytes = nan_value; ///< S_k / 8 (quantized weights, overhead included)
  double weight_bytes = nan_value; ///< sum of size_bits() / 8 after freezing
  double total_bytes = nan_value;  ///< weight_bytes + float32 biases
  double code_bits = nan_value;    ///< average code bits per weight (no overhead)
  double stored_bits = nan_value;  ///< weight_bytes * 8 / weights (overhead included)
  double max_spread = nan_value;   ///< largest bits_max - bits_min inside one layer
  int layers_spread2 = 0;          ///< layers whose groups differ by >= 2 bits
  double mean_rho = nan_value;     ///< mean over layers of Spearman(bits, sensitivity)
  int layers_rho_positive = 0;     ///< layers with a positive rank correlation
  /// Per layer: Spearman(bits, S^u), S^u the sensitivity of the same channels in the uniform
  /// per-channel arm of the same seed and size (summed over a group's channels); see
  /// uniform_rank_correlation. NaN where not available (at a fractional size point: no
  /// uniform arm ran there).
  std::vector<double> rho_uniform;
  double mean_rho_uniform = nan_value;
  /// Uniform arms, per layer: Spearman between the sensitivities measured on the fixed batches
  /// and on as many following test batches (split-half reliability of S^u: how far a rank
  /// correlation with it can be trusted). NaN elsewhere.
  std::vector<double> sensitivity_split_half;
  double seconds = nan_value;
  std::vector<layer_summary> layers;
};

/// Whether size point k is a whole number of bits, the only kind a uniform arm can have.
inline bool whole_size(double k) {
  return k == std::floor(k);
}

/// A size point as the files, directories and messages write it: "2" for a whole k (as before
/// fractional points existed), "1.5" otherwise (the shortest text that reads back as k).
inline std::string size_text(double k) {
  return bitgrad::csv_number(k);
}

/// Whether only the uniform arms run at size point k (--uniform-sizes).
inline bool uniform_only(const settings& cfg, double k) {
  return std::find(cfg.uniform_sizes.begin(), cfg.uniform_sizes.end(), k) !=
         cfg.uniform_sizes.end();
}

/// The arms of size point k in study order: uniform first (only at a whole k: fixed_bits has no
/// fractional bitwidth), then policy by policy (not at a uniform-only size point).
inline std::vector<arm> arms_of(const settings& cfg, double k) {
  std::vector<arm> arms;
  if (whole_size(k))
    for (const auto& grid : cfg.uniform_grids)
      for (const auto& g : cfg.uniform_groups) arms.push_back({"fixed_bits", g, grid});
  if (uniform_only(cfg, k)) return arms;
  for (const auto& p : cfg.policies)
    for (const auto& g : cfg.groups) arms.push_back({p, g});
  return arms;
}

/// The arms of every size point of one model and seed.
inline std::size_t arms_per_model(const settings& cfg) {
  std::size_t n = 0;
  for (double k : cfg.sizes) n += arms_of(cfg, k).size();
  return n;
}

/// The runs of this study (model x seed x size point x arm) that `rows` (results.csv under
/// --resume) does not hold yet. Rows of other models, seeds or size points do not count: a folder
/// may hold a larger grid than the one run now.
inline std::size_t missing_runs(const settings& cfg, const std::vector<run_row>& rows) {
  std::size_t n = 0;
  for (const auto& model : cfg.models)
    for (std::size_t s = 0; s < cfg.seeds; ++s)
      for (double k : cfg.sizes)
        for (const arm& a : arms_of(cfg, k))
          n += std::none_of(rows.begin(), rows.end(), [&](const run_row& r) {
            return r.model == model && r.k == k && r.a.name() == a.name() &&
                   r.seed == cfg.first_seed + s;
          });
  return n;
}

// x with `decimals` digits after the point; "n/a" when not finite (bitgrad/report/format.hpp).
using bitgrad::format_fixed;

/// format_fixed() with a '+' before a finite x >= 0.
inline std::string signed_fixed(double x, int decimals) {
  std::string t = std::isfinite(x) && x >= 0 ? "+" : "";
  return t += format_fixed(x, decimals);
}

} // namespace pareto
