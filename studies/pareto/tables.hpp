// The study's CSV tables: results.csv (one row per arm and seed), aggregate.csv (one row per
// arm, over seeds) and layers.csv (one row per arm, seed and layer), written with the cells of
// report/csv.hpp, and read back with its read_csv (--resume, --from-csv, --check).
#pragma once

#include "stats.hpp"
#include "study.hpp"

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/report/csv.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace pareto {

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

inline std::string results_csv(const std::vector<run_row>& rows) {
  std::string out = std::string(results_header) + "\n";
  for (const auto& r : rows) {
    csv_line c;
    c.text(r.model).text(size_text(r.k)).text(r.a.name()).text(r.a.policy).text(r.a.group);
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
    "mean_rank_correlation_mean,mean_rank_correlation_uniform_sensitivity_mean,"
    "reference_uniform_size_bits,reference_uniform_arm,delta_vs_uniform_ci95_low,"
    "delta_vs_uniform_ci95_high";

inline std::string aggregate_csv(const std::vector<aggregate>& aggs) {
  std::string out = std::string(aggregate_header) + "\n";
  for (const auto& g : aggs) {
    csv_line c;
    c.text(g.model).text(size_text(g.k)).text(g.a.name()).text(g.a.policy).text(g.a.group);
    c.integer(static_cast<long long>(g.runs.size()));
    for (double x :
         {g.accuracy.mean, g.accuracy.std, g.accuracy.min, g.accuracy.max, g.delta.mean,
          g.delta.min, g.delta.max, g.fp32.mean, g.budget_bytes, g.weight_bytes.mean,
          g.total_bytes.mean, g.total_bytes.max, g.code_bits.mean, g.stored_bits.mean,
          g.max_spread.mean, g.layers_spread2.mean, g.mean_rho.mean, g.mean_rho_uniform.mean})
      c.number(x);
    // delta's uniform arm (reference_uniform) and the 95% t interval of the paired mean
    const double h = half_width95(g.delta);
    c.text(std::isfinite(g.reference_k) ? size_text(g.reference_k) : "").text(g.reference_arm);
    out += c.number(g.delta.mean - h).number(g.delta.mean + h).str();
  }
  return out;
}

inline std::string layers_csv(const std::vector<run_row>& rows) {
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
      c.text(r.model).text(size_text(r.k)).text(r.a.name());
      c.integer(static_cast<long long>(r.seed));
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

/// The rows of an earlier study, read back from its results.csv and layers.csv (columns found
/// by header name; columns an older version did not write stay NaN / empty; without a
/// layers.csv the rows have no layers).
inline std::vector<run_row> load_rows(const fs::path& dir) {
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
  const auto results = bitgrad::read_csv(dir / "results.csv");
  if (results.empty()) throw bitgrad::io_error((dir / "results.csv").string() + ": empty");
  const auto rc = columns(results[0]);
  std::vector<run_row> rows;
  for (std::size_t i = 1; i < results.size(); ++i) {
    const auto& c = results[i];
    run_row r;
    r.model = c.at(rc.at("model"));
    r.k = std::stod(c.at(rc.at("size_bits"))); // "2" before fractional points, or "1.5"
    r.a = {c.at(rc.at("policy")), c.at(rc.at("group")), arm::grid_of_name(c.at(rc.at("arm")))};
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
  if (!fs::exists(dir / "layers.csv")) return rows; // a results.csv alone: no per-layer rows
  const auto layers = bitgrad::read_csv(dir / "layers.csv");
  if (layers.empty()) return rows;
  const auto lc = columns(layers[0]);
  for (std::size_t i = 1; i < layers.size(); ++i) {
    const auto& c = layers[i];
    auto it = std::find_if(rows.begin(), rows.end(), [&](const run_row& r) {
      return r.model == c.at(lc.at("model")) && size_text(r.k) == c.at(lc.at("size_bits")) &&
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

} // namespace pareto
