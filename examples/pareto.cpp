// The Pareto study of issues #9 and #11: test accuracy against model size for uniform
// quantization and for learned mixed precision on Fashion-MNIST, with the per-layer diagnostics
// of the learned bitwidths (spread inside layers, rank correlation with sensitivity).
//
//   pareto --quick --out runs/pareto-quick                 (one seed, short schedule)
//   pareto --models lenet5 --seeds 3 --out runs/pareto     (the whole LeNet-5 grid)
//   pareto --models vgg-small --sizes 3 --policies frac_bits --groups layer,channel ...
//
// Size points. For every k of --sizes, the budget of every arm is one number,
//   S_k = sum over the quantized layers l of (k n_l + 40 C_l) bits,
// the stored size of the UNIFORM model at k bits with one float32 scale and one bitwidth byte per
// output channel (n_l weights and C_l output channels in layer l; quant/groups.hpp charges every
// policy 40 bits per group, and quant/size.hpp sums size_bits() the same way for every arm).
//   uniform arm   fixed_bits (LSQ learned scale) at k bits; per channel it is exactly S_k, with
//                 coarser groups (--uniform-groups layer) it is smaller by the overhead saved.
//   mixed arms    frac_bits / step_bits / noise_bits with groups of one layer, 4 channels or one
//                 channel, trained with trainer_options::target_bytes = S_k / 8 plus the
//                 float32 biases (the trainer's target counts them; every arm has the same)
//                 and frozen within it (budget-aware rounding, quant/budget.hpp). A coarser arm
//                 pays less overhead and may spend the difference on code bits: equal total bytes.
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
// All tables are rewritten after every arm, so an interrupted study keeps what it finished.
// --check reads the written files back and fails unless every row is there and every arm is
// within its budget (the ctest smoke test uses it).
#include "cli_checks.hpp"

#include <bitgrad/bitgrad.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using bitgrad::layer_summary;
const double nan_value = std::numeric_limits<double>::quiet_NaN();

struct settings {
  std::string data = "/usr/share/datasets/fashion-mnist";
  fs::path out = "runs/pareto";
  std::vector<std::string> models{"lenet5"};
  std::vector<int> sizes{2, 3, 4};
  std::vector<std::string> policies{"frac_bits", "step_bits", "noise_bits"};
  std::vector<std::string> groups{"layer", "4", "channel"};
  std::vector<std::string> uniform_groups{"channel"};
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

/// One arm of the study: a policy at a granularity.
struct arm {
  std::string policy; ///< fixed_bits (uniform), frac_bits, step_bits, noise_bits
  std::string group;  ///< "layer", "channel" or a number of channels
  bool uniform() const { return policy == "fixed_bits"; }
  std::string name() const { return (uniform() ? std::string("uniform") : policy) + "/" + group; }
};

/// One finished arm of one seed.
struct run_row {
  std::string model;
  int k = 0; ///< size point: bits per weight of the uniform per-channel model
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
  /// uniform_rank_correlation. NaN where not available.
  std::vector<double> rho_uniform;
  double mean_rho_uniform = nan_value;
  /// Uniform arms, per layer: Spearman between the sensitivities measured on the fixed batches
  /// and on as many following test batches (split-half reliability of S^u: how far a rank
  /// correlation with it can be trusted). NaN elsewhere.
  std::vector<double> sensitivity_split_half;
  double seconds = nan_value;
  std::vector<layer_summary> layers;
};

std::string fixed(double x, int decimals) {
  if (!std::isfinite(x)) return "n/a";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, x);
  return buffer;
}

std::string signed_fixed(double x, int decimals) {
  std::string t = std::isfinite(x) && x >= 0 ? "+" : "";
  return t += fixed(x, decimals);
}

// ---- statistics over seeds -----------------------------------------------------------------

/// Mean, sample standard deviation (n - 1; NaN for one value), min and max of the finite values.
struct stats {
  std::size_t n = 0;
  double mean = nan_value, std = nan_value, min = nan_value, max = nan_value;
};

stats summarise(const std::vector<double>& values) {
  stats s;
  std::vector<double> v;
  for (double x : values)
    if (std::isfinite(x)) v.push_back(x);
  s.n = v.size();
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return s;
}

/// One arm of one model at one size point, over seeds.
struct aggregate {
  std::string model;
  int k = 0;
  arm a;
  stats accuracy, fp32, total_bytes, weight_bytes, code_bits, stored_bits, max_spread,
      layers_spread2, mean_rho, mean_rho_uniform, delta; ///< delta: accuracy - uniform's, paired
                                                         ///< by seed
  double budget_bytes = nan_value;
  std::vector<const run_row*> runs;
};

/// The uniform arm every mixed arm is compared with: per channel when it ran, else the first.
const run_row* reference_uniform(const std::vector<run_row>& rows, const run_row& r,
                                 const std::vector<std::string>& uniform_groups) {
  const run_row* first = nullptr;
  for (const auto& u : rows) {
    if (!u.a.uniform() || u.model != r.model || u.k != r.k || u.seed != r.seed) continue;
    if (u.a.group == "channel") return &u;
    if (!first || u.a.group == uniform_groups.front()) first = &u;
  }
  return first;
}

std::vector<aggregate> aggregate_rows(const std::vector<run_row>& rows,
                                      const std::vector<std::string>& uniform_groups) {
  std::vector<aggregate> out;
  for (const auto& r : rows) {
    auto it = std::find_if(out.begin(), out.end(), [&](const aggregate& g) {
      return g.model == r.model && g.k == r.k && g.a.name() == r.a.name();
    });
    if (it == out.end()) {
      aggregate g;
      g.model = r.model;
      g.k = r.k;
      g.a = r.a;
      g.budget_bytes = r.budget_bytes;
      out.push_back(g);
      it = out.end() - 1;
    }
    it->runs.push_back(&r);
  }
  for (auto& g : out) {
    auto collect = [&](auto field) {
      std::vector<double> v;
      for (const run_row* r : g.runs) v.push_back(field(*r));
      return summarise(v);
    };
    g.accuracy = collect([](const run_row& r) { return r.accuracy; });
    g.fp32 = collect([](const run_row& r) { return r.fp32_accuracy; });
    g.total_bytes = collect([](const run_row& r) { return r.total_bytes; });
    g.weight_bytes = collect([](const run_row& r) { return r.weight_bytes; });
    g.code_bits = collect([](const run_row& r) { return r.code_bits; });
    g.stored_bits = collect([](const run_row& r) { return r.stored_bits; });
    g.max_spread = collect([](const run_row& r) { return r.max_spread; });
    g.layers_spread2 = collect([](const run_row& r) { return double(r.layers_spread2); });
    g.mean_rho = collect([](const run_row& r) { return r.mean_rho; });
    g.mean_rho_uniform = collect([](const run_row& r) { return r.mean_rho_uniform; });
    g.delta = collect([&](const run_row& r) {
      const run_row* u = reference_uniform(rows, r, uniform_groups);
      return u ? r.accuracy - u->accuracy : nan_value;
    });
  }
  return out;
}

// ---- the files -----------------------------------------------------------------------------

/// A CSV line built cell by cell: text quoted as RFC 4180 asks, numbers in round-trip form and
/// empty when not finite (report/csv.hpp).
class csv_line {
public:
  csv_line& text(std::string_view s) { return cell(bitgrad::csv_field(s)); }
  csv_line& number(double x) { return cell(bitgrad::csv_number(x)); }
  csv_line& integer(long long x) { return cell(std::to_string(x)); }
  std::string str() const { return line_ + '\n'; }

private:
  csv_line& cell(const std::string& c) {
    if (!line_.empty() || started_) line_ += ',';
    started_ = true;
    line_ += c;
    return *this;
  }
  std::string line_;
  bool started_ = false;
};

constexpr const char* results_header =
    "model,size_bits,arm,policy,group,seed,fp32_accuracy,accuracy,budget_bytes,weight_bytes,"
    "total_bytes,code_bits,stored_bits,max_spread,layers_spread_ge2,mean_rank_correlation,"
    "layers_rank_correlation_positive,mean_rank_correlation_uniform_sensitivity,seconds";

std::string results_csv(const std::vector<run_row>& rows) {
  std::string out = std::string(results_header) + "\n";
  for (const auto& r : rows) {
    csv_line c;
    c.text(r.model).integer(r.k).text(r.a.name()).text(r.a.policy).text(r.a.group);
    c.integer(static_cast<long long>(r.seed));
    for (double x : {r.fp32_accuracy, r.accuracy, r.budget_bytes, r.weight_bytes, r.total_bytes,
                     r.code_bits, r.stored_bits, r.max_spread})
      c.number(x);
    c.integer(r.layers_spread2).number(r.mean_rho).integer(r.layers_rho_positive);
    c.number(r.mean_rho_uniform);
    out += c.number(r.seconds).str();
  }
  return out;
}

constexpr const char* aggregate_header =
    "model,size_bits,arm,policy,group,seeds,accuracy_mean,accuracy_std,accuracy_min,"
    "accuracy_max,delta_vs_uniform_mean,delta_vs_uniform_min,delta_vs_uniform_max,"
    "fp32_accuracy_mean,budget_bytes,weight_bytes_mean,total_bytes_mean,total_bytes_max,"
    "code_bits_mean,stored_bits_mean,max_spread_mean,layers_spread_ge2_mean,"
    "mean_rank_correlation_mean,mean_rank_correlation_uniform_sensitivity_mean";

std::string aggregate_csv(const std::vector<aggregate>& aggs) {
  std::string out = std::string(aggregate_header) + "\n";
  for (const auto& g : aggs) {
    csv_line c;
    c.text(g.model).integer(g.k).text(g.a.name()).text(g.a.policy).text(g.a.group);
    c.integer(static_cast<long long>(g.runs.size()));
    for (double x :
         {g.accuracy.mean, g.accuracy.std, g.accuracy.min, g.accuracy.max, g.delta.mean,
          g.delta.min, g.delta.max, g.fp32.mean, g.budget_bytes, g.weight_bytes.mean,
          g.total_bytes.mean, g.total_bytes.max, g.code_bits.mean, g.stored_bits.mean,
          g.max_spread.mean, g.layers_spread2.mean, g.mean_rho.mean, g.mean_rho_uniform.mean})
      c.number(x);
    out += c.str();
  }
  return out;
}

std::string layers_csv(const std::vector<run_row>& rows) {
  std::string out = "model,size_bits,arm,seed,layer,params,groups,bits_min,bits_mean,bits_max,"
                    "bytes,bits_spread,rank_correlation,rank_correlation_uniform_sensitivity,"
                    "sensitivity_split_half_rho,group_bits,group_sensitivity\n";
  auto joined = [](const std::vector<double>& v) { // space-separated, one per group
    std::string t;
    for (double x : v) {
      if (!t.empty()) t += ' ';
      t += std::isfinite(x) ? bitgrad::csv_number(x) : std::string("nan");
    }
    return t;
  };
  for (const auto& r : rows)
    for (std::size_t li = 0; li < r.layers.size(); ++li) {
      const auto& l = r.layers[li];
      csv_line c;
      c.text(r.model).integer(r.k).text(r.a.name()).integer(static_cast<long long>(r.seed));
      c.text(l.name).integer(static_cast<long long>(l.params));
      c.integer(static_cast<long long>(l.groups));
      for (double x :
           {l.bits_min, l.bits_mean, l.bits_max, l.bytes, l.bits_spread, l.rank_correlation,
            li < r.rho_uniform.size() ? r.rho_uniform[li] : nan_value,
            li < r.sensitivity_split_half.size() ? r.sensitivity_split_half[li] : nan_value})
        c.number(x);
      out += c.text(joined(l.group_bits)).text(joined(l.group_sensitivity)).str();
    }
  return out;
}

std::string accuracy_cell(const stats& s) {
  if (s.n == 0) return "n/a";
  std::string t = fixed(100 * s.mean, 2);
  if (s.n > 1)
    t += " ± " + fixed(100 * s.std, 2) + " [" + fixed(100 * s.min, 2) + ", " +
         fixed(100 * s.max, 2) + "]";
  return t;
}

std::string delta_cell(const stats& s) {
  if (s.n == 0) return "n/a";
  std::string t = signed_fixed(100 * s.mean, 2);
  if (s.n > 1) t += " [" + signed_fixed(100 * s.min, 2) + ", " + signed_fixed(100 * s.max, 2) + "]";
  return t;
}

/// The best mixed arm (highest mean accuracy) of a model at size k, or null.
const aggregate* best_mixed(const std::vector<aggregate>& aggs, const std::string& model, int k) {
  const aggregate* best = nullptr;
  for (const auto& g : aggs)
    if (g.model == model && g.k == k && !g.a.uniform() &&
        (!best || g.accuracy.mean > best->accuracy.mean))
      best = &g;
  return best;
}

/// The lower end of the zoomed plot: below the lowest mean accuracy that is within 10 points of
/// FP32 (arms that collapsed further are left to the full-range plot and listed in results.md).
double zoom_floor(const std::string& model, const std::vector<aggregate>& aggs) {
  std::vector<double> fp32;
  for (const auto& g : aggs)
    if (g.model == model) fp32.push_back(g.fp32.mean);
  const double f = 100 * summarise(fp32).mean;
  double lo = f;
  for (const auto& g : aggs)
    if (g.model == model && 100 * g.accuracy.mean >= f - 10)
      lo = std::min(lo, 100 * g.accuracy.mean);
  return std::floor(lo - 0.5);
}

std::string markdown(const settings& cfg, const std::vector<aggregate>& aggs) {
  std::ostringstream md;
  for (const auto& model : cfg.models) {
    std::vector<const aggregate*> mine;
    for (const auto& g : aggs)
      if (g.model == model) mine.push_back(&g);
    if (mine.empty()) continue;
    const stats fp32 = mine.front()->fp32;
    md << "### " << model << "\n\n";
    md << "FP32 accuracy " << accuracy_cell(fp32) << "% (" << mine.front()->runs.size()
       << " seed(s)). Accuracy in % on the whole test set: mean ± sample std [min, max] over "
          "seeds; "
          "Δ: accuracy minus the uniform per-channel arm's, paired by seed (same FP32 start), in "
          "points. Budget: the uniform per-channel model at k bits (codes + 40 bits per "
          "channel); total bytes add the float32 biases. Spread: bits_max - bits_min inside a "
          "layer (largest over layers); ρ: Spearman rank correlation of learned bits and "
          "measured sensitivity per layer (each group lowered one bit from its own frozen "
          "bitwidth), mean over layers with >= 2 groups; ρ_u: the same with the sensitivity "
          "the same channels had in the uniform per-channel arm of that seed (every channel at k "
          "bits, lowered to k - 1), which the learned bits themselves do not confound. The FP32 "
          "line is "
          "the shared starting point (pretraining only); every quantized arm trained "
          "search + finetune epochs more.\n\n";
    md << "| k | arm | budget B | total B | code bits/w | stored bits/w | accuracy % | Δ vs "
          "uniform | max spread | layers spread>=2 | mean ρ | mean ρ_u |\n";
    md << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const aggregate* g : mine)
      md << "| " << g->k << " | " << g->a.name() << " | " << fixed(g->budget_bytes, 0) << " | "
         << fixed(g->total_bytes.mean, 0) << " | " << fixed(g->code_bits.mean, 3) << " | "
         << fixed(g->stored_bits.mean, 3) << " | " << accuracy_cell(g->accuracy) << " | "
         << (g->a.uniform() && g->a.group == "channel" ? std::string("0 (reference)")
                                                       : delta_cell(g->delta))
         << " | " << fixed(g->max_spread.mean, 2) << " | " << fixed(g->layers_spread2.mean, 1)
         << " | " << fixed(g->mean_rho.mean, 3) << " | " << fixed(g->mean_rho_uniform.mean, 3)
         << " |\n";
    md << "\n";

    {
      const double floor = zoom_floor(model, aggs);
      std::string hidden;
      for (const aggregate* g : mine)
        if (100 * g->accuracy.mean < floor)
          hidden += std::string(hidden.empty() ? "" : ", ") + g->a.name() +
                    " at k = " + std::to_string(g->k) + " (" + fixed(100 * g->accuracy.mean, 2) +
                    "%)";
      md << "Plot: pareto-" << model << ".svg (y axis from " << fixed(floor, 0) << "%";
      if (!hidden.empty()) md << "; below it, only in pareto-" << model << "-full.svg: " << hidden;
      md << ").\n\n";
    }

    // Verdict per size: the best mixed arm against the uniform reference.
    md << "| k | uniform/channel % | best mixed arm | its accuracy % | Δ paired | mixed arms "
          "above uniform (mean Δ > 0 / every seed Δ > 0) |\n|---|---:|---|---:|---:|---:|\n";
    for (int k : cfg.sizes) {
      const aggregate* best = best_mixed(aggs, model, k);
      const aggregate* uniform = nullptr;
      int mixed = 0, above = 0, always = 0;
      for (const aggregate* g : mine) {
        if (g->k != k) continue;
        if (g->a.uniform() && g->a.group == "channel") uniform = g;
        if (g->a.uniform()) continue;
        ++mixed;
        above += g->delta.mean > 0;
        always += g->delta.min > 0;
      }
      if (!best || !uniform) continue;
      md << "| " << k << " | " << accuracy_cell(uniform->accuracy) << " | " << best->a.name()
         << " | " << accuracy_cell(best->accuracy) << " | " << delta_cell(best->delta) << " | "
         << above << " / " << always << " of " << mixed << " |\n";
    }
    md << "\n";

    // Histograms of the learned bitwidths of the best mixed arm of every size.
    for (int k : cfg.sizes) {
      const aggregate* best = best_mixed(aggs, model, k);
      if (!best) continue;
      int lo = 16, hi = 1;
      for (const run_row* r : best->runs)
        for (const auto& l : r->layers)
          for (double b : l.group_bits)
            lo = std::min(lo, static_cast<int>(b)), hi = std::max(hi, static_cast<int>(b));
      if (lo > hi) continue;
      md << "Learned bitwidths of the best mixed arm at k = " << k << ", **" << best->a.name()
         << "** (" << accuracy_cell(best->accuracy)
         << "%): channel groups per bitwidth, summed over " << best->runs.size()
         << " seed(s); spread, ρ and ρ_u are means over seeds.\n\n| layer | groups |";
      for (int b = lo; b <= hi; ++b) md << " " << b << " bits |";
      md << " mean bits | spread | ρ | ρ_u |\n|---|---:|";
      for (int b = lo; b <= hi; ++b) md << "---:|";
      md << "---:|---:|---:|---:|\n";
      const auto& first_layers = best->runs.front()->layers;
      for (std::size_t li = 0; li < first_layers.size(); ++li) {
        std::vector<int> count(static_cast<std::size_t>(hi - lo + 1), 0);
        std::vector<double> mean_bits, spread, rho, rho_u;
        for (const run_row* r : best->runs) {
          const auto& l = r->layers[li];
          rho_u.push_back(li < r->rho_uniform.size() ? r->rho_uniform[li] : nan_value);
          for (double b : l.group_bits) ++count[static_cast<std::size_t>(static_cast<int>(b) - lo)];
          mean_bits.push_back(l.bits_mean);
          spread.push_back(l.bits_spread);
          rho.push_back(l.rank_correlation);
        }
        md << "| " << first_layers[li].name << " | " << first_layers[li].groups << " |";
        for (int c : count) md << " " << c << " |";
        md << " " << fixed(summarise(mean_bits).mean, 2) << " | "
           << fixed(summarise(spread).mean, 2) << " | " << fixed(summarise(rho).mean, 3) << " | "
           << fixed(summarise(rho_u).mean, 3) << " |\n";
      }
      md << "\n";
    }

    // Issue #11: the policies per channel, layer by layer, at the size closest to 3 bits.
    int k3 = cfg.sizes.front();
    for (int k : cfg.sizes)
      if (std::abs(k - 3) < std::abs(k3 - 3)) k3 = k;
    std::vector<const aggregate*> per_channel;
    for (const aggregate* g : mine)
      if (g->k == k3 && g->a.group == "channel" && !g->a.uniform()) per_channel.push_back(g);
    if (!per_channel.empty()) {
      const auto& names = per_channel.front()->runs.front()->layers;
      md << "Per-channel groups at k = " << k3
         << ": per layer, spread of the learned bits inside the layer (bits_max - bits_min) / "
            "ρ / ρ_u (means over seeds; in brackets the seeds with ρ_u > 0). The uniform row "
            "gives instead the split-half reliability of S^u: Spearman between the sensitivities "
            "measured on the fixed batches and on as many following ones (a correlation with a "
            "measure this noisy cannot exceed about its square root).\n\n"
            "| policy | accuracy % | Δ vs uniform |";
      for (const auto& l : names) md << " " << l.name << " |";
      md << "\n|---|---:|---:|";
      for (std::size_t i = 0; i < names.size(); ++i) md << "---:|";
      md << "\n";
      for (const aggregate* g : mine)
        if (g->k == k3 && g->a.uniform() && g->a.group == "channel") {
          md << "| uniform: S^u split-half | " << accuracy_cell(g->accuracy) << " | 0 |";
          for (std::size_t li = 0; li < names.size(); ++li) {
            std::vector<double> rel;
            for (const run_row* r : g->runs)
              rel.push_back(li < r->sensitivity_split_half.size() ? r->sensitivity_split_half[li]
                                                                  : nan_value);
            md << " " << signed_fixed(summarise(rel).mean, 2) << " |";
          }
          md << "\n";
        }
      for (const aggregate* g : per_channel) {
        md << "| " << g->a.policy << " | " << accuracy_cell(g->accuracy) << " | "
           << delta_cell(g->delta) << " |";
        for (std::size_t li = 0; li < names.size(); ++li) {
          std::vector<double> spread, rho, rho_u;
          for (const run_row* r : g->runs) {
            spread.push_back(r->layers[li].bits_spread);
            rho.push_back(r->layers[li].rank_correlation);
            rho_u.push_back(li < r->rho_uniform.size() ? r->rho_uniform[li] : nan_value);
          }
          const auto positive =
              std::count_if(rho_u.begin(), rho_u.end(), [](double x) { return x > 0; });
          const auto measured =
              std::count_if(rho_u.begin(), rho_u.end(), [](double x) { return std::isfinite(x); });
          md << " " << fixed(summarise(spread).mean, 1) << " / "
             << signed_fixed(summarise(rho).mean, 2) << " / "
             << signed_fixed(summarise(rho_u).mean, 2);
          if (measured > 0) md << " (" << positive << "/" << measured << ")";
          md << " |";
        }
        md << "\n";
      }
      md << "\n";
    }
  }
  return md.str();
}

/// The colour and look of an arm in the plot.
bitgrad::point_series plot_style(const arm& a) {
  bitgrad::point_series s;
  s.name = a.uniform()
               ? "uniform " + a.group
               : a.policy.substr(0, a.policy.find('_')) + " " + (a.group == "4" ? "4 ch" : a.group);
  s.connect = true;
  if (a.uniform()) {
    s.color = a.group == "channel" ? "#000000" : "#777777";
    s.shape = bitgrad::marker_shape::square;
    return s;
  }
  // Hue by policy, shade by granularity (light: per layer ... dark: per channel).
  static const std::map<std::string, std::vector<std::string>> shades = {
      {"frac_bits", {"#9ecae1", "#4292c6", "#08519c"}},
      {"step_bits", {"#fc9272", "#ef3b2c", "#a50f15"}},
      {"noise_bits", {"#a1d99b", "#41ab5d", "#006d2c"}}};
  const std::size_t shade = a.group == "layer" ? 0 : a.group == "channel" ? 2 : 1;
  s.color = shades.at(a.policy)[shade];
  s.shape = a.group == "layer" ? bitgrad::marker_shape::diamond : bitgrad::marker_shape::circle;
  s.dashed = a.group != "channel";
  return s;
}

/// Accuracy (mean, min-max bars) against total bytes, one connected series per arm; `zoom`
/// cuts the y axis at zoom_floor().
std::string pareto_svg(const std::string& model, const std::vector<aggregate>& aggs, bool zoom) {
  std::vector<bitgrad::point_series> series;
  std::vector<double> fp32;
  for (const auto& g : aggs) {
    if (g.model != model) continue;
    fp32.push_back(g.fp32.mean);
    auto it = std::find_if(series.begin(), series.end(),
                           [&](const auto& s) { return s.name == plot_style(g.a).name; });
    if (it == series.end()) {
      series.push_back(plot_style(g.a));
      it = series.end() - 1;
    }
    it->x.push_back(g.total_bytes.mean);
    it->y.push_back(100 * g.accuracy.mean);
    it->y_low.push_back(100 * g.accuracy.min);
    it->y_high.push_back(100 * g.accuracy.max);
  }
  bitgrad::chart_options o;
  o.width = 900;
  o.height = 480;
  const double f = 100 * summarise(fp32).mean;
  o.reference = bitgrad::reference_line{f, "FP32 " + fixed(f, 2) + "%", "#555555"};
  if (zoom) o.y_min = zoom_floor(model, aggs);
  return bitgrad::svg_document(bitgrad::svg_scatter_chart(
      model + ": test accuracy vs model size (mean over seeds, bars: min-max" +
          (zoom ? ", y from " + fixed(*o.y_min, 0) + "%)" : std::string(")")),
      "model size in bytes (codes + per-group scale and bitwidth + float32 biases)",
      "test accuracy (%)", series, o));
}

std::string bits_svg(const aggregate& best) {
  std::vector<bitgrad::heatmap_row> rows;
  double lo = 16, hi = 1;
  for (const auto& l : best.runs.front()->layers) {
    rows.emplace_back(l.name, l.group_bits);
    for (double b : l.group_bits) lo = std::min(lo, b), hi = std::max(hi, b);
  }
  if (!(lo < hi)) lo = std::min(lo, hi) - 1, hi = lo + 2;
  bitgrad::heatmap_options o;
  o.width = 900;
  return bitgrad::svg_document(bitgrad::svg_heatmap(
      best.model + ", k = " + std::to_string(best.k) + ": " + best.a.name() + ", seed " +
          std::to_string(best.runs.front()->seed) + " (learned bits per channel group)",
      rows, lo, hi, o));
}

void write_outputs(const settings& cfg, const std::vector<run_row>& rows) {
  const auto aggs = aggregate_rows(rows, cfg.uniform_groups);
  bitgrad::write_file_atomically(cfg.out / "results.csv", results_csv(rows));
  bitgrad::write_file_atomically(cfg.out / "aggregate.csv", aggregate_csv(aggs));
  bitgrad::write_file_atomically(cfg.out / "layers.csv", layers_csv(rows));
  bitgrad::write_file_atomically(cfg.out / "results.md", markdown(cfg, aggs));
  for (const auto& model : cfg.models) {
    if (std::none_of(aggs.begin(), aggs.end(), [&](const auto& g) { return g.model == model; }))
      continue;
    bitgrad::write_file_atomically(cfg.out / ("pareto-" + model + ".svg"),
                                   pareto_svg(model, aggs, true));
    bitgrad::write_file_atomically(cfg.out / ("pareto-" + model + "-full.svg"),
                                   pareto_svg(model, aggs, false));
    for (int k : cfg.sizes)
      if (const aggregate* best = best_mixed(aggs, model, k))
        bitgrad::write_file_atomically(
            cfg.out / ("bits-" + model + "-" + std::to_string(k) + "bit.svg"), bits_svg(*best));
  }
}

// ---- --check: read the written files back ---------------------------------------------------

std::vector<std::vector<std::string>> read_csv(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw bitgrad::io_error(path.string() + ": cannot open");
  std::vector<std::vector<std::string>> table;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells(1);
    bool quoted = false;
    for (char c : line) {
      if (c == '"')
        quoted = !quoted;
      else if (c == ',' && !quoted)
        cells.emplace_back();
      else
        cells.back() += c;
    }
    table.push_back(cells);
  }
  return table;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw bitgrad::io_error(path.string() + ": cannot open");
  return {std::istreambuf_iterator<char>(in), {}};
}

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto i = text.find(needle); i != std::string::npos; i = text.find(needle, i + 1)) ++n;
  return n;
}

/// The rows of an earlier study, read back from its results.csv and layers.csv (columns found
/// by header name; columns an older version did not write stay NaN / empty).
std::vector<run_row> load_rows(const fs::path& dir) {
  auto columns = [](const std::vector<std::string>& header) {
    std::map<std::string, std::size_t> at;
    for (std::size_t i = 0; i < header.size(); ++i) at[header[i]] = i;
    return at;
  };
  auto number = [](const std::vector<std::string>& row,
                   const std::map<std::string, std::size_t>& at, const std::string& name) {
    const auto it = at.find(name);
    if (it == at.end() || it->second >= row.size() || row[it->second].empty()) return nan_value;
    return row[it->second] == "nan" ? nan_value : std::stod(row[it->second]);
  };
  auto numbers = [](const std::string& text) {
    std::vector<double> v;
    std::istringstream in(text);
    for (std::string t; in >> t;) v.push_back(t == "nan" ? nan_value : std::stod(t));
    return v;
  };
  const auto results = read_csv(dir / "results.csv");
  if (results.empty()) throw bitgrad::io_error((dir / "results.csv").string() + ": empty");
  const auto rc = columns(results[0]);
  std::vector<run_row> rows;
  for (std::size_t i = 1; i < results.size(); ++i) {
    const auto& c = results[i];
    run_row r;
    r.model = c.at(rc.at("model"));
    r.k = std::stoi(c.at(rc.at("size_bits")));
    r.a = {c.at(rc.at("policy")), c.at(rc.at("group"))};
    r.seed = std::stoull(c.at(rc.at("seed")));
    r.fp32_accuracy = number(c, rc, "fp32_accuracy");
    r.accuracy = number(c, rc, "accuracy");
    r.budget_bytes = number(c, rc, "budget_bytes");
    r.weight_bytes = number(c, rc, "weight_bytes");
    r.total_bytes = number(c, rc, "total_bytes");
    r.code_bits = number(c, rc, "code_bits");
    r.stored_bits = number(c, rc, "stored_bits");
    r.max_spread = number(c, rc, "max_spread");
    r.layers_spread2 = static_cast<int>(number(c, rc, "layers_spread_ge2"));
    r.mean_rho = number(c, rc, "mean_rank_correlation");
    r.layers_rho_positive = static_cast<int>(number(c, rc, "layers_rank_correlation_positive"));
    r.mean_rho_uniform = number(c, rc, "mean_rank_correlation_uniform_sensitivity");
    r.seconds = number(c, rc, "seconds");
    rows.push_back(r);
  }
  const auto layers = read_csv(dir / "layers.csv");
  if (layers.empty()) return rows;
  const auto lc = columns(layers[0]);
  for (std::size_t i = 1; i < layers.size(); ++i) {
    const auto& c = layers[i];
    auto it = std::find_if(rows.begin(), rows.end(), [&](const run_row& r) {
      return r.model == c.at(lc.at("model")) && std::to_string(r.k) == c.at(lc.at("size_bits")) &&
             r.a.name() == c.at(lc.at("arm")) && std::to_string(r.seed) == c.at(lc.at("seed"));
    });
    if (it == rows.end()) continue;
    layer_summary l;
    l.name = c.at(lc.at("layer"));
    l.policy = it->a.policy;
    l.params = static_cast<std::size_t>(number(c, lc, "params"));
    l.groups = static_cast<std::size_t>(number(c, lc, "groups"));
    l.bits_min = number(c, lc, "bits_min");
    l.bits_mean = number(c, lc, "bits_mean");
    l.bits_max = number(c, lc, "bits_max");
    l.bytes = number(c, lc, "bytes");
    l.bits_spread = number(c, lc, "bits_spread");
    l.rank_correlation = number(c, lc, "rank_correlation");
    if (lc.count("group_bits")) l.group_bits = numbers(c.at(lc.at("group_bits")));
    if (lc.count("group_sensitivity") && lc.at("group_sensitivity") < c.size())
      l.group_sensitivity = numbers(c.at(lc.at("group_sensitivity")));
    it->layers.push_back(l);
    it->rho_uniform.push_back(number(c, lc, "rank_correlation_uniform_sensitivity"));
    if (lc.count("sensitivity_split_half_rho"))
      it->sensitivity_split_half.push_back(number(c, lc, "sensitivity_split_half_rho"));
  }
  return rows;
}

/// Problems found in the files of a finished study with `runs` rows and `arms` arms per model.
std::vector<std::string> check_outputs(const settings& cfg, std::size_t arms) {
  std::vector<std::string> problems;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) problems.push_back(what);
  };
  const std::size_t runs = arms * cfg.seeds * cfg.models.size();
  const auto results = read_csv(cfg.out / "results.csv");
  expect(!results.empty() && results[0].size() == 19, "results.csv: header of 19 columns");
  expect(results.size() == runs + 1, "results.csv: " + std::to_string(runs) + " rows expected, " +
                                         std::to_string(results.size() - 1) + " found");
  for (std::size_t i = 1; i < results.size(); ++i) {
    const auto& r = results[i];
    if (r.size() != 19) {
      expect(false, "results.csv row " + std::to_string(i) + ": 19 cells expected");
      continue;
    }
    const double acc = std::stod(r[7]), budget = std::stod(r[8]), weight = std::stod(r[9]),
                 total = std::stod(r[10]);
    expect(acc > 0 && acc <= 1, "results.csv row " + std::to_string(i) + ": accuracy " + r[7]);
    expect(weight <= budget, "results.csv row " + std::to_string(i) + " (" + r[2] +
                                 "): weight bytes " + r[9] + " exceed the budget " + r[8]);
    expect(total > weight, "results.csv row " + std::to_string(i) + ": total <= weight bytes");
    if (r[3] == "fixed_bits" && r[4] == "channel")
      expect(weight == budget, "results.csv row " + std::to_string(i) +
                                   ": uniform per-channel is not exactly the budget");
  }
  const auto agg = read_csv(cfg.out / "aggregate.csv");
  const std::size_t aggregates = arms * cfg.models.size();
  expect(agg.size() == aggregates + 1, "aggregate.csv: " + std::to_string(aggregates) +
                                           " rows expected, " + std::to_string(agg.size() - 1) +
                                           " found");
  const std::string md = read_text(cfg.out / "results.md");
  for (std::size_t i = 1; i < agg.size(); ++i)
    expect(md.find("| " + agg[i][1] + " | " + agg[i][2] + " |") != std::string::npos,
           "results.md: no row for " + agg[i][2] + " at " + agg[i][1] + " bits");
  for (const auto& model : cfg.models) {
    const std::string svg = read_text(cfg.out / ("pareto-" + model + "-full.svg"));
    expect(svg.starts_with("<?xml") && svg.ends_with("</svg>\n"), "pareto svg: not a document");
    // One tooltip per plotted point: every arm at every size.
    expect(count_of(svg, "<title>") == arms + 1,
           "pareto-" + model + "-full.svg: " + std::to_string(arms) + " points expected, " +
               std::to_string(count_of(svg, "<title>") - 1) + " found");
    expect(svg.find(">FP32 ") != std::string::npos, "pareto svg: no FP32 line");
  }
  return problems;
}

// ---- running the arms ------------------------------------------------------------------------

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

template <template <class> class Quant, class Build, class FloatNet>
std::optional<run_row> run_arm(const settings& cfg, const data_sets& data, Build build,
                               FloatNet& fp32, const std::string& model, const arm& a, int k,
                               std::uint64_t seed, double budget_bits) {
  using T = float;
  typename Quant<T>::options q{};
  q.group_size = bitgrad::cli::parse_group(a.group);
  if constexpr (requires { q.b_min; }) {
    q.b_min = std::is_same_v<Quant<T>, bitgrad::quant::step_bits<T>> ? std::max(cfg.b_min, 2.0)
                                                                     : cfg.b_min;
    q.b_max = cfg.b_max;
    q.b_init = cfg.b_init;
  } else {
    q.bits = k;
  }
  if constexpr (requires { q.seed; }) q.seed = seed;
  // Every layer, the first conv and the last linear included, quantized as the arm says
  // (model_options::quant reaches them when edge_quant is unset).
  auto net = build.template operator()<Quant>(
      bitgrad::nn::model_options<T, Quant>{.seed = seed, .quant = q});

  bitgrad::train::trainer_options t = cfg.trainer;
  t.pretrain.epochs = 0; // every arm starts from the shared pretrained FP32 network
  t.seed = seed;
  // The trainer's target is the model's stored bytes, biases included (the same in every arm).
  t.target_bytes = budget_bits / 8 + bitgrad::train::measure_size(net).float_bits() / 8;
  t.out_dir = cfg.out / "runs" / model / ("seed" + std::to_string(seed)) /
              (std::to_string(k) + "bit") / (a.policy + "-" + a.group);
  t.overwrite = true; // an arm not in results.csv runs again from its start
  fs::create_directories(t.out_dir);
  std::ofstream log(t.out_dir / "train.log");
  t.log = &log;
  t.terminal = false;
  bitgrad::train::trainer trainer(fp32, net, data.train, data.test, t);
  trainer.set_model_name(model);
  trainer.add_setting("arm", a.name());
  trainer.add_setting("size point", std::to_string(k) + " bits per weight (uniform per channel)");
  trainer.add_setting("budget bytes (weights)", fixed(budget_bits / 8, 1));
  trainer.add_setting("seed", std::to_string(seed));
  const auto result = trainer.run();
  fs::remove(t.out_dir / "checkpoint.bin");
  if (!result.finished) return std::nullopt;

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
  r.seconds = result.summary.seconds;
  r.layers = result.summary.layers;
  if (a.uniform() && cfg.trainer.sensitivity_batches > 0) sensitivity_split_half(net, data, cfg, r);
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
void uniform_rank_correlation(run_row& mixed, const run_row& uniform) {
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

/// The arms of one size point in study order: uniform first, then policy by policy.
std::vector<arm> arms_of(const settings& cfg) {
  std::vector<arm> arms;
  for (const auto& g : cfg.uniform_groups) arms.push_back({"fixed_bits", g});
  for (const auto& p : cfg.policies)
    for (const auto& g : cfg.groups) arms.push_back({p, g});
  return arms;
}

/// S_k: the stored bits of the model's quantized weights, uniform at k bits per channel.
template <class Build>
double budget_bits(Build build, int k) {
  using bitgrad::quant::fixed_bits;
  const fixed_bits<float>::options q{.group_size = 1, .bits = k};
  auto net = build.template operator()<fixed_bits>(
      bitgrad::nn::model_options<float, fixed_bits>{.quant = q});
  return bitgrad::train::measure_size(net).weight_bits;
}

/// Runs every seed, size and arm of one model; false when interrupted.
template <class Build>
bool run_model(const settings& cfg, const data_sets& data, const std::string& model, Build build,
               std::vector<run_row>& rows, std::size_t& done, std::size_t total,
               std::chrono::steady_clock::time_point start) {
  using bitgrad::quant::fixed_bits;
  const auto arms = arms_of(cfg);
  auto finished = [&](int k, const arm& a, std::uint64_t seed) {
    return std::any_of(rows.begin(), rows.end(), [&](const run_row& r) {
      return r.model == model && r.k == k && r.a.name() == a.name() && r.seed == seed;
    });
  };
  for (std::size_t s = 0; s < cfg.seeds; ++s) {
    const std::uint64_t seed = cfg.first_seed + s;
    bool all_done = true; // --resume: every arm of this seed is in results.csv already
    for (int k : cfg.sizes)
      for (const arm& a : arms) all_done = all_done && finished(k, a, seed);
    if (all_done) continue;
    // Pretrain the FP32 network once for this seed. The trainer needs a quantized twin; a
    // throw-away 8-bit per-layer one, with no search or fine-tuning epochs, is enough.
    auto fp32 = build.template operator()<bitgrad::quant::no_quant>(
        bitgrad::nn::model_options<float>{.seed = seed});
    {
      auto scratch =
          build.template operator()<fixed_bits>(bitgrad::nn::model_options<float, fixed_bits>{
              .seed = seed, .quant = {.group_size = bitgrad::quant::per_tensor, .bits = 8}});
      bitgrad::train::trainer_options t = cfg.trainer;
      t.search.epochs = t.finetune.epochs = 0;
      t.seed = seed;
      t.target_bytes = 1e12;
      const fs::path dir = cfg.out / "runs" / model / ("seed" + std::to_string(seed));
      fs::create_directories(dir);
      std::ofstream log(dir / "pretrain.log");
      t.log = &log;
      t.terminal = false;
      const auto t0 = std::chrono::steady_clock::now();
      bitgrad::train::trainer pre(fp32, scratch, data.train, data.test, t);
      const auto result = pre.run();
      if (!result.finished) return false;
      std::cout
          << model << " seed " << seed << ": FP32 pretrained " << t.pretrain.epochs
          << " epochs, test accuracy " << fixed(100 * result.summary.fp32_accuracy, 2) << "% ("
          << fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1)
          << " s)\n"
          << std::flush;
    }
    for (int k : cfg.sizes) {
      const double budget = budget_bits(build, k);
      for (const arm& a : arms) {
        if (finished(k, a, seed)) continue;
        std::optional<run_row> r;
        auto go = [&]<template <class> class Q>() {
          r = run_arm<Q>(cfg, data, build, fp32, model, a, k, seed, budget);
        };
        if (a.policy == "fixed_bits")
          go.template operator()<fixed_bits>();
        else if (a.policy == "frac_bits")
          go.template operator()<bitgrad::quant::frac_bits>();
        else if (a.policy == "step_bits")
          go.template operator()<bitgrad::quant::step_bits>();
        else
          go.template operator()<bitgrad::quant::noise_bits>();
        if (!r) return false;
        if (!a.uniform())
          for (const auto& u : rows)
            if (u.a.uniform() && u.a.group == "channel" && u.model == model && u.k == k &&
                u.seed == seed)
              uniform_rank_correlation(*r, u);
        rows.push_back(*r);
        write_outputs(cfg, rows);
        ++done;
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double split_half = summarise(r->sensitivity_split_half).mean; // NaN: none
        char line[320];
        std::snprintf(
            line, sizeof line,
            "[%zu/%zu] %s seed %llu k=%d %-18s acc %6.2f%%  %7.0f B (budget %.0f B "
            "weights, used %.0f)  code bits %.2f  spread %s  rho %s  rho_u %s%s  %5.1f s  "
            "elapsed %s, ETA %s\n",
            done, total, model.c_str(), static_cast<unsigned long long>(seed), k, a.name().c_str(),
            100 * r->accuracy, r->total_bytes, r->budget_bytes, r->weight_bytes, r->code_bits,
            fixed(r->max_spread, 0).c_str(), signed_fixed(r->mean_rho, 2).c_str(),
            signed_fixed(r->mean_rho_uniform, 2).c_str(),
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

} // namespace

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
  app.add_option("--models,--model", cfg.models, "lenet5 and/or vgg-small")
      ->delimiter(',')
      ->check(CLI::IsMember({"lenet5", "vgg-small"}))
      ->capture_default_str();
  app.add_option("--sizes", cfg.sizes, "size points: uniform bits per weight")
      ->delimiter(',')
      ->check(cli::whole_number(1, 16))
      ->capture_default_str();
  app.add_option("--policies", cfg.policies, "mixed-precision policies")
      ->delimiter(',')
      ->check(CLI::IsMember({"frac_bits", "step_bits", "noise_bits"}))
      ->capture_default_str();
  app.add_option("--groups", cfg.groups, "granularities of the mixed arms: layer, channel or N")
      ->delimiter(',')
      ->check(cli::group_size())
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
               "missing arms; a seed's FP32 network is pretrained again when one of its arms is "
               "missing (same seed, but not always bit-identical: compare arms of one run only)");
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
    if (cfg.uniform_groups.empty())
      cli::reject("--uniform-groups", "at least one uniform arm is needed");
  } catch (const CLI::Error& e) {
    return app.exit(e);
  }
  cli::use_threads(cfg.threads);
  bitgrad::train::install_interrupt_handlers();
  try {
    const std::size_t arms = arms_of(cfg).size() * cfg.sizes.size();
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
    std::printf("pareto: %zu models x %zu seeds x %zu sizes x %zu arms = %zu runs; epochs "
                "pretrain/search/finetune %zu/%zu/%zu; %zu train / %zu test images; %s\n",
                cfg.models.size(), cfg.seeds, cfg.sizes.size(), arms_of(cfg).size(), total,
                t.pretrain.epochs, t.search.epochs, t.finetune.epochs, data.train.size(),
                data.test.size(), bitgrad::simd_arch_name());
    std::vector<run_row> rows;
    if (cfg.resume && fs::exists(cfg.out / "results.csv")) {
      rows = load_rows(cfg.out);
      std::printf("resuming: %zu runs already in %s/results.csv\n", rows.size(), cfg.out.c_str());
    }
    std::size_t done = 0; // runs of this session, out of the missing ones
    const std::size_t missing = total - std::min(total, rows.size());
    const auto start = std::chrono::steady_clock::now();
    for (const auto& model : cfg.models) {
      const bool finished =
          model == "lenet5"
              ? run_model(
                    cfg, data, model,
                    []<template <class> class Q>(const bitgrad::nn::model_options<float, Q>& o) {
                      return bitgrad::nn::lenet5<float, Q>(o);
                    },
                    rows, done, missing, start)
              : run_model(
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
