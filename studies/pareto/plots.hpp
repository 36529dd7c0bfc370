// The SVG plots, drawn with report/svg.hpp: accuracy against total bytes per arm
// (pareto-<model>.svg zoomed, pareto-<model>-full.svg) and the heat map of the learned
// bitwidths of the best mixed arm (bits-<model>-<k>bit.svg).
#pragma once

#include "markdown.hpp"
#include "stats.hpp"
#include "study.hpp"

#include <bitgrad/bitgrad.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace pareto {

/// The colour and look of an arm in the plot.
inline bitgrad::point_series plot_style(const arm& a) {
  bitgrad::point_series s;
  s.name = a.uniform()
               ? (a.grid == "full" ? "uniform full " : "uniform ") + a.group
               : a.policy.substr(0, a.policy.find('_')) + " " + (a.group == "4" ? "4 ch" : a.group);
  s.connect = true;
  if (a.uniform()) {
    s.color = a.grid == "full" ? (a.group == "channel" ? "#8c564b" : "#c49c94")
                               : (a.group == "channel" ? "#000000" : "#777777");
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
inline std::string pareto_svg(const std::string& model, const std::vector<aggregate>& aggs,
                              bool zoom) {
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
  o.reference = bitgrad::reference_line{f, "FP32 " + format_fixed(f, 2) + "%", "#555555"};
  if (zoom) o.y_min = zoom_floor(model, aggs);
  return bitgrad::svg_document(bitgrad::svg_scatter_chart(
      model + ": test accuracy vs model size (mean over seeds, bars: min-max" +
          (zoom ? ", y from " + format_fixed(*o.y_min, 0) + "%)" : std::string(")")),
      "model size in bytes (codes + per-group scale and bitwidth + float32 biases)",
      "test accuracy (%)", series, o));
}

inline std::string bits_svg(const aggregate& best) {
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
      best.model + ", k = " + size_text(best.k) + ": " + best.a.name() + ", seed " +
          std::to_string(best.runs.front()->seed) + " (learned bits per channel group)",
      rows, lo, hi, o));
}

} // namespace pareto
