// Every file of the study in --out, rewritten after every arm so that an interrupted study
// keeps what it finished.
#pragma once

#include "markdown.hpp"
#include "plots.hpp"
#include "stats.hpp"
#include "study.hpp"
#include "tables.hpp"

#include <bitgrad/bitgrad.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace pareto {

inline void write_outputs(const settings& cfg, const std::vector<run_row>& rows) {
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
    for (double k : cfg.sizes)
      if (const aggregate* best = best_mixed(aggs, model, k))
        bitgrad::write_file_atomically(cfg.out / ("bits-" + model + "-" + size_text(k) + "bit.svg"),
                                       bits_svg(*best));
  }
}

} // namespace pareto
