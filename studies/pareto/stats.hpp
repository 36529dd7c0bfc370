// Statistics over seeds: mean, sample standard deviation, min and max of every measure of an
// arm, and the accuracy difference to the uniform reference arm paired by seed.
#pragma once

#include "study.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

namespace pareto {

/// Mean, sample standard deviation (n - 1; NaN for one value), min and max of the finite values.
struct stats {
  std::size_t n = 0;
  double mean = nan_value, std = nan_value, min = nan_value, max = nan_value;
};

inline stats summarise(const std::vector<double>& values) {
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
  double k = 0;
  arm a;
  stats accuracy, fp32, total_bytes, weight_bytes, code_bits, stored_bits, max_spread,
      layers_spread2, mean_rho, mean_rho_uniform;
  /// accuracy - the reference uniform arm's (reference_uniform: at reference_k), paired by seed
  stats delta;
  double reference_k = nan_value; ///< size point of the uniform arm delta is taken against
  std::string reference_arm;      ///< its name, e.g. "uniform/channel" (empty: none)
  stats reference_total_bytes;    ///< its total bytes over the paired seeds
  double budget_bytes = nan_value;
  std::vector<const run_row*> runs;
};

/// Student's t quantile t(0.975, df): the half-width of a two-sided 95% interval of a mean of
/// df + 1 values is t(0.975, df) s / sqrt(df + 1). Tabulated to df = 30; beyond, the
/// Cornish-Fisher expansion t = z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2),
/// z = 1.959964 (2.0422 at df = 30, the table's 2.042).
inline double student_t95(std::size_t df) {
  static constexpr double table[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                     2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                     2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                     2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df == 0) return nan_value;
  if (df <= std::size(table)) return table[df - 1];
  const double z = 1.959964, n = static_cast<double>(df);
  const double z3 = z * z * z, z5 = z3 * z * z;
  return z + (z3 + z) / (4 * n) + (5 * z5 + 16 * z3 + 3 * z) / (96 * n * n);
}

/// Half-width of the two-sided 95% t interval of s.mean: t(0.975, n - 1) s.std / sqrt(n); NaN
/// for fewer than two values.
inline double half_width95(const stats& s) {
  if (s.n < 2) return nan_value;
  return student_t95(s.n - 1) * s.std / std::sqrt(static_cast<double>(s.n));
}

/// The size point of the uniform arms an arm at k is compared with, "the best uniform of equal
/// or larger size": the smallest whole k' >= k at which the study has a uniform arm of that
/// model (k itself at a whole k; 2 for 1.5 in a study of 1.5 and 2). NaN when there is none.
inline double reference_size(const std::vector<run_row>& rows, const std::string& model, double k) {
  double best = nan_value;
  for (const auto& u : rows)
    if (u.a.uniform() && u.model == model && u.k >= k && !(u.k >= best)) best = u.k;
  return best;
}

/// The uniform arm every arm is compared with, paired by seed: at reference_size(), per channel
/// when it ran, else the first of --uniform-groups (else any); null when that seed has none.
inline const run_row* reference_uniform(const std::vector<run_row>& rows, const run_row& r,
                                        const std::vector<std::string>& uniform_groups) {
  const double k = reference_size(rows, r.model, r.k);
  const run_row* first = nullptr;
  for (const auto& u : rows) {
    if (!u.a.reference_grid() || u.model != r.model || u.k != k || u.seed != r.seed) continue;
    if (u.a.group == "channel") return &u;
    if (!first || u.a.group == uniform_groups.front()) first = &u;
  }
  return first;
}

inline std::vector<aggregate> aggregate_rows(const std::vector<run_row>& rows,
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
    g.reference_total_bytes = collect([&](const run_row& r) {
      const run_row* u = reference_uniform(rows, r, uniform_groups);
      if (u) g.reference_k = u->k, g.reference_arm = u->a.name();
      return u ? u->total_bytes : nan_value;
    });
  }
  return out;
}

} // namespace pareto
