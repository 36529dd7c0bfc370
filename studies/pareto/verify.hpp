// --check: reads the written files back and lists what is missing or wrong (a row, a point of
// the plot, an arm above its budget).
#pragma once

#include "study.hpp"
#include "tables.hpp"

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/report/csv.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

namespace pareto {

/// A written file as text (io/read_file.hpp; io_error when it cannot be read).
inline std::string read_text(const fs::path& path) {
  const auto bytes = bitgrad::read_file_bytes(path, std::size_t{1} << 30);
  return {bytes.begin(), bytes.end()};
}

inline std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto i = text.find(needle); i != std::string::npos; i = text.find(needle, i + 1)) ++n;
  return n;
}

/// Problems found in the files of a finished study with `runs` rows and `arms` arms per model.
inline std::vector<std::string> check_outputs(const settings& cfg, std::size_t arms) {
  std::vector<std::string> problems;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) problems.push_back(what);
  };
  const std::size_t runs = arms * cfg.seeds * cfg.models.size();
  const auto results = bitgrad::read_csv(cfg.out / "results.csv");
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
    const double k = std::stod(r[1]);
    expect(k > 0 && k <= 16, "results.csv row " + std::to_string(i) + ": size point " + r[1]);
    expect(r[3] != "fixed_bits" || whole_size(k), "results.csv row " + std::to_string(i) +
                                                      ": a uniform arm at the fractional size " +
                                                      r[1]);
  }
  const auto agg = bitgrad::read_csv(cfg.out / "aggregate.csv");
  const std::size_t aggregates = arms * cfg.models.size();
  expect(agg.size() == aggregates + 1, "aggregate.csv: " + std::to_string(aggregates) +
                                           " rows expected, " + std::to_string(agg.size() - 1) +
                                           " found");
  const std::string md = read_text(cfg.out / "results.md");
  for (std::size_t i = 1; i < agg.size(); ++i)
    expect(md.find("| " + agg[i][1] + " | " + agg[i][2] + " |") != std::string::npos,
           "results.md: no row for " + agg[i][2] + " at " + agg[i][1] + " bits");
  // Every mixed arm against the uniform arm of the smallest whole size point k' >= k (issue #24):
  // in aggregate.csv (a study written before it has no such column) and in results.md's
  // paired table.
  const auto at = [&](const std::string& name) {
    const auto& h = agg.empty() ? std::vector<std::string>{} : agg[0];
    return static_cast<std::size_t>(std::find(h.begin(), h.end(), name) - h.begin());
  };
  const std::size_t ref_k = at("reference_uniform_size_bits"),
                    ref_arm = at("reference_uniform_arm");
  const bool has_reference = !agg.empty() && ref_k < agg[0].size() && ref_arm < agg[0].size();
  for (std::size_t i = 1; has_reference && i < agg.size(); ++i) {
    const auto& g = agg[i];
    if (g.size() != agg[0].size() || g[3] == "fixed_bits") continue;
    const double k = std::stod(g[1]);
    double expected = nan_value; // the smallest whole size point >= k
    for (double s : cfg.sizes)
      if (whole_size(s) && s >= k && !(s >= expected)) expected = s;
    const std::string want = std::isfinite(expected) ? size_text(expected) : "";
    expect(g[ref_k] == want, "aggregate.csv: " + g[2] + " at " + g[1] +
                                 " bits compared with the uniform arm at '" + g[ref_k] +
                                 "', expected '" + want + "'");
    if (want.empty()) continue;
    bool found = false;
    for (std::size_t p = md.find("\n| " + g[1] + " | " + g[2] + " | "); p != std::string::npos;
         p = md.find("\n| " + g[1] + " | " + g[2] + " | ", p + 1))
      found =
          found || md.substr(p + 1, md.find('\n', p + 1) - p - 1)
                           .find(" | " + g[ref_arm] + " at " + want + " | ") != std::string::npos;
    expect(found, "results.md: no paired row for " + g[2] + " at " + g[1] + " bits against " +
                      g[ref_arm] + " at " + want);
  }
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

} // namespace pareto
