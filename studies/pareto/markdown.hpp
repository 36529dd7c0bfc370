// results.md: per model, the aggregate table, the verdict per size point, the bitwidth
// histograms of the best mixed arm of every size, and the per-channel comparison of the
// policies (issue #11).
#pragma once

#include "stats.hpp"
#include "study.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace pareto {

/// An accuracy cell in %: "mean ± std [min, max]" over seeds, the mean alone for one seed.
inline std::string accuracy_cell(const stats& s) {
  if (s.n == 0) return "n/a";
  std::string t = format_fixed(100 * s.mean, 2);
  if (s.n > 1)
    t += " ± " + format_fixed(100 * s.std, 2) + " [" + format_fixed(100 * s.min, 2) + ", " +
         format_fixed(100 * s.max, 2) + "]";
  return t;
}

/// A Δ cell in points: "+mean [+min, +max]", the mean alone for one seed.
inline std::string delta_cell(const stats& s) {
  if (s.n == 0) return "n/a";
  std::string t = signed_fixed(100 * s.mean, 2);
  if (s.n > 1) t += " [" + signed_fixed(100 * s.min, 2) + ", " + signed_fixed(100 * s.max, 2) + "]";
  return t;
}

/// The best mixed arm (highest mean accuracy) of a model at size k, or null.
inline const aggregate* best_mixed(const std::vector<aggregate>& aggs, const std::string& model,
                                   double k) {
  const aggregate* best = nullptr;
  for (const auto& g : aggs)
    if (g.model == model && g.k == k && !g.a.uniform() &&
        (!best || g.accuracy.mean > best->accuracy.mean))
      best = &g;
  return best;
}

/// The lower end of the zoomed plot: below the lowest mean accuracy that is within 10 points of
/// FP32 (arms that collapsed further are left to the full-range plot and listed in results.md).
inline double zoom_floor(const std::string& model, const std::vector<aggregate>& aggs) {
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

/// The definitions of the columns, the table of every arm over seeds and the plot's range.
inline void arm_table(std::ostream& md, const std::string& model,
                      const std::vector<aggregate>& aggs,
                      const std::vector<const aggregate*>& mine) {
  const stats fp32 = mine.front()->fp32;
  md << "### " << model << "\n\n";
  md << "FP32 accuracy " << accuracy_cell(fp32) << "% (" << mine.front()->runs.size()
     << " seed(s)). Accuracy in % on the whole test set: mean ± sample std [min, max] over "
        "seeds; "
        "Δ: accuracy minus the uniform per-channel arm's, paired by seed (same FP32 start), in "
        "points; at a fractional size point k (mixed arms only) the uniform arm of the smallest "
        "whole size point k' >= k. Budget: the uniform per-channel model at k bits (codes + 40 "
        "bits per channel; at a fractional k the code bits interpolated, k bits per weight); "
        "total bytes add the float32 biases. Spread: bits_max - bits_min inside a "
        "layer (largest over layers); ρ: Spearman rank correlation of learned bits and "
        "measured sensitivity per layer (each group lowered one bit from its own frozen "
        "bitwidth), mean over layers with >= 2 groups; ρ_u: the same with the sensitivity "
        "the same channels had in the uniform per-channel arm of that seed (every channel at k "
        "bits, lowered to k - 1), which the learned bits themselves do not confound. The FP32 "
        "line is "
        "the shared starting point (pretraining only); every quantized arm trained "
        "search + finetune epochs more (results.csv's seconds: an arm's training time, summed over "
        "its parts when it was interrupted and resumed with --resume).\n\n";
  md << "| k | arm | budget B | total B | code bits/w | stored bits/w | accuracy % | Δ vs "
        "uniform | max spread | layers spread>=2 | mean ρ | mean ρ_u |\n";
  md << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const aggregate* g : mine)
    md << "| " << size_text(g->k) << " | " << g->a.name() << " | "
       << format_fixed(g->budget_bytes, 0) << " | " << format_fixed(g->total_bytes.mean, 0) << " | "
       << format_fixed(g->code_bits.mean, 3) << " | " << format_fixed(g->stored_bits.mean, 3)
       << " | " << accuracy_cell(g->accuracy) << " | "
       << (g->a.reference_grid() && g->a.group == "channel" ? std::string("0 (reference)")
                                                            : delta_cell(g->delta))
       << " | " << format_fixed(g->max_spread.mean, 2) << " | "
       << format_fixed(g->layers_spread2.mean, 1) << " | " << format_fixed(g->mean_rho.mean, 3)
       << " | " << format_fixed(g->mean_rho_uniform.mean, 3) << " |\n";
  md << "\n";

  {
    const double floor = zoom_floor(model, aggs);
    std::string hidden;
    for (const aggregate* g : mine)
      if (100 * g->accuracy.mean < floor)
        hidden += std::string(hidden.empty() ? "" : ", ") + g->a.name() +
                  " at k = " + size_text(g->k) + " (" + format_fixed(100 * g->accuracy.mean, 2) +
                  "%)";
    md << "Plot: pareto-" << model << ".svg (y axis from " << format_fixed(floor, 0) << "%";
    if (!hidden.empty()) md << "; below it, only in pareto-" << model << "-full.svg: " << hidden;
    md << ").\n\n";
  }
}

/// Verdict per size: the best mixed arm against the uniform reference (at a fractional k, the
/// uniform per-channel arm of the smallest whole size point k' >= k, named in the cell).
inline void verdict_table(std::ostream& md, const settings& cfg, const std::string& model,
                          const std::vector<aggregate>& aggs,
                          const std::vector<const aggregate*>& mine) {
  md << "| k | uniform/channel % | best mixed arm | its accuracy % | Δ paired | mixed arms "
        "above uniform (mean Δ > 0 / every seed Δ > 0) |\n|---|---:|---|---:|---:|---:|\n";
  for (double k : cfg.sizes) {
    const aggregate* best = best_mixed(aggs, model, k);
    const aggregate* uniform = nullptr;
    int mixed = 0, above = 0, always = 0;
    const double k_ref = best ? best->reference_k : k;
    for (const aggregate* g : mine) {
      if (g->k == k_ref && g->a.reference_grid() && g->a.group == "channel") uniform = g;
      if (g->k != k || g->a.uniform()) continue;
      ++mixed;
      above += g->delta.mean > 0;
      always += g->delta.min > 0;
    }
    if (!best || !uniform) continue;
    md << "| " << size_text(k) << " | " << accuracy_cell(uniform->accuracy)
       << (k_ref == k ? std::string() : " (at k' = " + size_text(k_ref) + ")") << " | "
       << best->a.name() << " | " << accuracy_cell(best->accuracy) << " | "
       << delta_cell(best->delta) << " | " << above << " / " << always << " of " << mixed << " |\n";
  }
  md << "\n";
}

/// Issue #24: every mixed arm against "the best uniform of equal or larger size", paired by
/// seed: the uniform arm of the smallest whole size point k' >= k of the study (reference_size;
/// k' = k at a whole k, where the numbers are the Δ column's), with the two-sided 95% Student t
/// interval of the mean difference, mean ± t(0.975, n - 1) s / sqrt(n) over the n seeds.
inline void paired_table(std::ostream& md, const settings& cfg,
                         const std::vector<const aggregate*>& mine) {
  md << "Each mixed arm against the best uniform arm of equal or larger size: the uniform arm of "
        "the smallest whole size point k' >= k (k' = k at a whole k), paired by seed; Δ in "
        "points, mean and two-sided 95% t interval (mean ± t(0.975, n - 1) s / √n, none for "
        "one seed).\n\n"
        "| k | arm | total B | compared with | its total B | seeds | Δ mean | 95% interval |\n"
        "|---|---|---:|---|---:|---:|---:|---:|\n";
  for (double k : cfg.sizes)
    for (const aggregate* g : mine) {
      if (g->k != k || g->a.uniform()) continue;
      const double h = half_width95(g->delta);
      md << "| " << size_text(k) << " | " << g->a.name() << " | "
         << format_fixed(g->total_bytes.mean, 0) << " | "
         << (g->reference_arm.empty() ? std::string("none")
                                      : g->reference_arm + " at " + size_text(g->reference_k))
         << " | " << format_fixed(g->reference_total_bytes.mean, 0) << " | " << g->delta.n << " | "
         << signed_fixed(100 * g->delta.mean, 2) << " | "
         << (std::isfinite(h) ? "[" + signed_fixed(100 * (g->delta.mean - h), 2) + ", " +
                                    signed_fixed(100 * (g->delta.mean + h), 2) + "]"
                              : std::string("n/a"))
         << " |\n";
    }
  md << "\n";
}

/// The quantized weights of a model's arm: summed over its first run's layers (layers.csv), or
/// when a results.csv came without them, weight_bytes * 8 / stored_bits (the definition of
/// stored_bits, see run_row) rounded; NaN when neither is known.
inline double quantized_weights(const aggregate& g) {
  const run_row& first = *g.runs.front();
  double weights = 0;
  for (const auto& l : first.layers) weights += static_cast<double>(l.params);
  if (weights > 0) return weights;
  return std::round(first.weight_bytes * 8 / first.stored_bits);
}

/// A test error cell in %: 100 - mean accuracy over the seeds, then in brackets every seed's
/// error in seed order (the mean alone for one seed), e.g. "7.85 (7.62, 8.10, 7.83)".
inline std::string error_cell(std::vector<std::pair<std::uint64_t, double>> accuracy_by_seed) {
  if (accuracy_by_seed.empty()) return "n/a";
  std::stable_sort(accuracy_by_seed.begin(), accuracy_by_seed.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<double> accuracy;
  for (const auto& [seed, a] : accuracy_by_seed) accuracy.push_back(a);
  std::string t = format_fixed(100 - 100 * summarise(accuracy).mean, 2);
  if (accuracy.size() < 2) return t;
  for (std::size_t i = 0; i < accuracy.size(); ++i)
    t += (i == 0 ? " (" : ", ") + format_fixed(100 - 100 * accuracy[i], 2);
  return t + ")";
}

/// Issue #24: size against error in the form Uhlich et al. (ICLR 2020) report: the weight memory
/// of the quantized layers in KB (1 KB = 1,000 bytes; every stored byte of them: codes, scales,
/// bitwidths, i.e. weight_bytes; no biases) and the test error in % (100 - accuracy). Rows: the
/// FP32 start (32 bits per weight of the same layers), the uniform arms by size point, then the
/// learned arms by size point (in study order of policy and granularity at each).
inline void size_error_table(std::ostream& md, const std::vector<const aggregate*>& mine) {
  std::vector<std::pair<std::uint64_t, double>> fp32; // one per seed: its arms share the start
  for (const aggregate* g : mine)
    for (const run_row* r : g->runs)
      if (std::none_of(fp32.begin(), fp32.end(), [&](const auto& f) { return f.first == r->seed; }))
        fp32.emplace_back(r->seed, r->fp32_accuracy);
  std::vector<const aggregate*> ordered;
  for (bool uniform : {true, false}) {
    const auto first = ordered.size();
    for (const aggregate* g : mine)
      if (g->a.uniform() == uniform) ordered.push_back(g);
    std::stable_sort(ordered.begin() + static_cast<std::ptrdiff_t>(first), ordered.end(),
                     [](const aggregate* x, const aggregate* y) { return x->k < y->k; });
  }
  const auto runs_of = [](const aggregate& g) {
    std::vector<std::pair<std::uint64_t, double>> v;
    for (const run_row* r : g.runs) v.emplace_back(r->seed, r->accuracy);
    return v;
  };
  md << "Size against error (the form of Uhlich et al. 2020): weight memory of the quantized "
        "layers in KB (1 KB = 1,000 bytes, every byte they store: codes, scales and bitwidths; "
        "the float32 biases not counted; mean over seeds), test error in % (100 - accuracy): "
        "mean over seeds, in brackets each seed's, by seed. k: bits per weight (the budget's "
        "size point for a learned arm).\n\n"
        "| arm | k | granularity | weight KB | test error % | seeds |\n"
        "|---|---:|---|---:|---:|---:|\n";
  md << "| FP32 | 32 | - | " << format_fixed(4 * quantized_weights(*mine.front()) / 1000, 2)
     << " | " << error_cell(fp32) << " | " << fp32.size() << " |\n";
  for (const aggregate* g : ordered)
    md << "| " << (g->a.uniform() ? std::string("uniform") : g->a.policy) << " | "
       << size_text(g->k) << " | " << g->a.group << " | "
       << format_fixed(g->weight_bytes.mean / 1000, 2) << " | " << error_cell(runs_of(*g)) << " | "
       << g->runs.size() << " |\n";
  md << "\n";
}

/// Histograms of the learned bitwidths of the best mixed arm of every size.
inline void bit_histograms(std::ostream& md, const settings& cfg, const std::string& model,
                           const std::vector<aggregate>& aggs) {
  for (double k : cfg.sizes) {
    const aggregate* best = best_mixed(aggs, model, k);
    if (!best) continue;
    int lo = 16, hi = 1;
    for (const run_row* r : best->runs)
      for (const auto& l : r->layers)
        for (double b : l.group_bits)
          lo = std::min(lo, static_cast<int>(b)), hi = std::max(hi, static_cast<int>(b));
    if (lo > hi) continue;
    md << "Learned bitwidths of the best mixed arm at k = " << size_text(k) << ", **"
       << best->a.name() << "** (" << accuracy_cell(best->accuracy)
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
      md << " " << format_fixed(summarise(mean_bits).mean, 2) << " | "
         << format_fixed(summarise(spread).mean, 2) << " | " << format_fixed(summarise(rho).mean, 3)
         << " | " << format_fixed(summarise(rho_u).mean, 3) << " |\n";
    }
    md << "\n";
  }
}

/// Issue #11: the policies per channel, layer by layer, at the size closest to 3 bits.
inline void policy_comparison(std::ostream& md, const settings& cfg,
                              const std::vector<const aggregate*>& mine) {
  // The size point closest to 3 bits among those with a mixed per-channel arm (a uniform-only
  // size point, --uniform-sizes, has none).
  double k3 = nan_value;
  for (double k : cfg.sizes)
    if (std::any_of(mine.begin(), mine.end(),
                    [&](const aggregate* g) {
                      return g->k == k && g->a.group == "channel" && !g->a.uniform();
                    }) &&
        !(std::abs(k - 3) >= std::abs(k3 - 3)))
      k3 = k;
  std::vector<const aggregate*> per_channel;
  for (const aggregate* g : mine)
    if (g->k == k3 && g->a.group == "channel" && !g->a.uniform()) per_channel.push_back(g);
  if (!per_channel.empty()) {
    const auto& names = per_channel.front()->runs.front()->layers;
    md << "Per-channel groups at k = " << size_text(k3)
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
      if (g->k == k3 && g->a.reference_grid() && g->a.group == "channel") {
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
        md << " " << format_fixed(summarise(spread).mean, 1) << " / "
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

inline std::string markdown(const settings& cfg, const std::vector<aggregate>& aggs) {
  std::ostringstream md;
  for (const auto& model : cfg.models) {
    std::vector<const aggregate*> mine;
    for (const auto& g : aggs)
      if (g.model == model) mine.push_back(&g);
    if (mine.empty()) continue;
    arm_table(md, model, aggs, mine);
    verdict_table(md, cfg, model, aggs, mine);
    paired_table(md, cfg, mine);
    size_error_table(md, mine);
    bit_histograms(md, cfg, model, aggs);
    policy_comparison(md, cfg, mine);
  }
  return md.str();
}

} // namespace pareto
