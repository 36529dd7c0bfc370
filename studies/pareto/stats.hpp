// Statistics over seeds: mean, sample standard deviation, min and max of every measure of an
// arm, and the accuracy difference to the uniform reference arm paired by seed.
#pragma once

#include "study.hpp"

#include <algorithm>
#include <cmath>
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
  int k = 0;
  arm a;
  stats accuracy, fp32, total_bytes, weight_bytes, code_bits, stored_bits, max_spread,
      layers_spread2, mean_rho, mean_rho_uniform, delta; ///< delta: accuracy - uniform's, paired
                                                         ///< by seed
  double budget_bytes = nan_value;
  std::vector<const run_row*> runs;
};

/// The uniform arm every mixed arm is compared with: per channel when it ran, else the first.
inline const run_row* reference_uniform(const std::vector<run_row>& rows, const run_row& r,
                                        const std::vector<std::string>& uniform_groups) {
  const run_row* first = nullptr;
  for (const auto& u : rows) {
    if (!u.a.uniform() || u.model != r.model || u.k != r.k || u.seed != r.seed) continue;
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
  }
  return out;
}

} // namespace pareto
