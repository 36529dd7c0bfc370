// The run report: one self-contained HTML page (inline CSS and inline SVG; no scripts, no
// external links, no fonts or images to fetch), readable offline and safe to attach anywhere.
//
// Sections, top to bottom:
//   header    model, policy, FP32 and quantized accuracy, average bits, size, compression, time
//   training  loss, train/test accuracy and average bits over all epochs of all phases, with a
//             dashed vertical line where each phase starts
//   bitwidths heat map of the learned bitwidth of every channel group of every layer
//   layers    per-layer table (sensitivity columns only when some layer has them)
//   activations  bits and learned range of every activation quantizer (when there are any)
//   costs     each cost against its budget (when the run reports costs)
//   settings  the run's settings, in order
//   epochs    the full epoch log (a collapsed <details> table)
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/report/format.hpp>
#include <bitgrad/report/records.hpp>
#include <bitgrad/report/svg.hpp>
#include <bitgrad/version.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace bitgrad {

namespace detail::report {

inline std::string percent(double fraction) {
  return std::isfinite(fraction) ? format_fixed(100 * fraction, 2) + "%" : "n/a";
}

inline std::string cell(const std::string& text, bool number = false) {
  return std::string(number ? "<td class=\"num\">" : "<td>") + xml_escape(text) + "</td>";
}

inline std::string card(const std::string& label, const std::string& value) {
  return "<div class=\"card\"><div class=\"label\">" + xml_escape(label) +
         "</div><div class=\"value\">" + xml_escape(value) + "</div></div>\n";
}

inline const char* style() {
  return R"(body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.card .label{font-size:12px;color:#666}.card .value{font-size:19px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:8px}
svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:32px;color:#888;font-size:12px}
)";
}

} // namespace detail::report

/// The report page for a finished (or interrupted) run; see the top of this header.
inline std::string render_report(const std::vector<epoch_record>& epochs, const run_summary& run) {
  namespace r = detail::report;
  std::string title = "bitgrad: " + run.model + (run.policy.empty() ? "" : " / " + run.policy);
  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  html += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  html += "<title>" + xml_escape(title) + "</title>\n<style>\n" + r::style() + "</style>\n";
  html += "</head>\n<body>\n";

  // Header.
  html += "<h1>" + xml_escape(run.model.empty() ? "bitgrad run" : run.model) + "</h1>\n";
  html += "<p class=\"sub\">policy " + xml_escape(run.policy.empty() ? "n/a" : run.policy) +
          " &middot; " + std::to_string(epochs.size()) + " epochs &middot; " +
          std::to_string(run.layers.size()) + " quantized layers</p>\n";
  html += "<div class=\"cards\">\n";
  html += r::card("FP32 accuracy", r::percent(run.fp32_accuracy));
  html += r::card("quantized accuracy", r::percent(run.quant_accuracy));
  if (std::isfinite(run.fp32_accuracy) && std::isfinite(run.quant_accuracy))
    html += r::card("accuracy change",
                    std::string(run.quant_accuracy >= run.fp32_accuracy ? "+" : "") +
                        format_fixed(100 * (run.quant_accuracy - run.fp32_accuracy), 2) + " pt");
  html += r::card("average bits", format_fixed(run.average_bits, 2));
  html += r::card("size", format_bytes(run.size_bytes));
  html +=
      r::card("compression", std::isfinite(run.compression) ? "x" + format_fixed(run.compression, 1)
                                                            : std::string("n/a"));
  html += r::card("time", std::isfinite(run.seconds) ? format_fixed(run.seconds, 1) + " s"
                                                     : std::string("n/a"));
  html += "</div>\n";

  // Training curves over the global epoch index, phase starts marked.
  html += "<h2>Training</h2>\n";
  {
    series loss{"loss", {}, {}, "#1f77b4", false};
    series train{"train", {}, {}, "#1f77b4", false};
    series test{"test", {}, {}, "#d62728", true};
    series bits{"average bits", {}, {}, "#2ca02c", false};
    chart_options options;
    options.width = 540;
    options.height = 300;
    for (std::size_t i = 0; i < epochs.size(); ++i) {
      const epoch_record& e = epochs[i];
      double x = double(i + 1);
      loss.x.push_back(x), loss.y.push_back(e.loss);
      train.x.push_back(x), train.y.push_back(100 * e.train_accuracy);
      test.x.push_back(x), test.y.push_back(100 * e.test_accuracy);
      bits.x.push_back(x), bits.y.push_back(e.average_bits);
      if (i == 0 || e.phase != epochs[i - 1].phase) options.markers.push_back({x, e.phase});
    }
    html += "<div class=\"charts\">\n";
    html += svg_line_chart("Loss", "epoch", "loss", {loss}, options);
    html += svg_line_chart("Accuracy", "epoch", "accuracy (%)", {train, test}, options);
    html += svg_line_chart("Average bits", "epoch", "bits per weight", {bits}, options);
    html += "</div>\n";
  }

  // Heat map of the learned bitwidths.
  std::vector<heatmap_row> rows;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& layer : run.layers) {
    if (layer.group_bits.empty()) continue;
    rows.emplace_back(layer.name, layer.group_bits);
    for (double b : layer.group_bits)
      if (std::isfinite(b)) lo = std::min(lo, b), hi = std::max(hi, b);
  }
  if (!rows.empty()) {
    html += "<h2>Learned bitwidths</h2>\n";
    if (!(lo <= hi)) lo = 0, hi = 8;
    lo = std::floor(lo);
    hi = std::max(std::ceil(hi), lo + 1);
    heatmap_options options;
    options.width = 1060;
    html += svg_heatmap("Bits per channel group", rows, lo, hi, options);
  }

  // Per-layer table.
  html += "<h2>Layers</h2>\n";
  bool diagnostics = std::any_of(run.layers.begin(), run.layers.end(), [](const auto& l) {
    return std::isfinite(l.rank_correlation) || std::isfinite(l.bits_spread);
  });
  html += "<table class=\"layers\">\n<tr><th>layer</th><th>policy</th><th>params</th>"
          "<th>groups</th><th>bits min</th><th>bits mean</th><th>bits max</th><th>bytes</th>";
  if (diagnostics) html += "<th>bits spread</th><th>sensitivity rank corr.</th>";
  html += "</tr>\n";
  for (const auto& l : run.layers) {
    html += "<tr>" + r::cell(l.name) + r::cell(l.policy) + r::cell(std::to_string(l.params), true) +
            r::cell(std::to_string(l.groups), true) + r::cell(format_fixed(l.bits_min, 2), true) +
            r::cell(format_fixed(l.bits_mean, 2), true) +
            r::cell(format_fixed(l.bits_max, 2), true) + r::cell(format_bytes(l.bytes), true);
    if (diagnostics)
      html += r::cell(format_fixed(l.bits_spread, 2), true) +
              r::cell(format_fixed(l.rank_correlation, 3), true);
    html += "</tr>\n";
  }
  html += "</table>\n";

  // Activation quantizers (issue #22): bits and learned range per group.
  if (!run.activations.empty()) {
    html += "<h2>Activations</h2>\n<table class=\"activations\">\n<tr><th>quantizer</th>"
            "<th>channels</th><th>groups</th><th>bits</th><th>range</th></tr>\n";
    auto list = [](const std::vector<double>& xs, int digits) {
      std::string text;
      for (std::size_t i = 0; i < xs.size(); ++i) {
        if (i) text += ' ';
        text += format_fixed(xs[i], digits);
      }
      return text;
    };
    for (const auto& a : run.activations)
      html += "<tr>" + r::cell(a.name) + r::cell(std::to_string(a.channels), true) +
              r::cell(std::to_string(a.group_bits.size()), true) +
              r::cell(list(a.group_bits, 2), true) + r::cell(list(a.group_ranges, 3), true) +
              "</tr>\n";
    html += "</table>\n";
  }

  // Costs against budgets (issue #22).
  if (!run.costs.empty()) {
    html += "<h2>Costs</h2>\n<table class=\"costs\">\n<tr><th>cost</th><th>value</th>"
            "<th>budget</th><th>met</th></tr>\n";
    auto amount = [](const cost_summary& c, double v) {
      if (!std::isfinite(v)) return std::string("none");
      if (c.unit == "bytes") return format_bytes(v);
      char buf[48];
      std::snprintf(buf, sizeof buf, "%.4g %s", v, c.unit.c_str());
      return std::string(buf);
    };
    for (const auto& c : run.costs)
      html += "<tr>" + r::cell(c.name) + r::cell(amount(c, c.value), true) +
              r::cell(amount(c, c.target), true) +
              r::cell(std::isfinite(c.target) ? (c.met ? "yes" : "no") : "n/a") + "</tr>\n";
    html += "</table>\n";
  }

  // Settings.
  if (!run.settings.empty()) {
    html +=
        "<h2>Settings</h2>\n<table class=\"settings\">\n<tr><th>setting</th><th>value</th></tr>\n";
    for (const auto& [name, value] : run.settings)
      html += "<tr>" + r::cell(name) + r::cell(value) + "</tr>\n";
    html += "</table>\n";
  }

  // The epoch log.
  if (!epochs.empty()) {
    html += "<h2>Epochs</h2>\n<details>\n<summary>" + std::to_string(epochs.size()) +
            " epochs</summary>\n<table class=\"epochs\">\n<tr><th>phase</th><th>epoch</th>"
            "<th>loss</th><th>train</th><th>test</th><th>bits</th><th>size</th>"
            "<th>compression</th><th>seconds</th></tr>\n";
    for (const auto& e : epochs)
      html += "<tr>" + r::cell(e.phase) + r::cell(std::to_string(e.epoch), true) +
              r::cell(format_fixed(e.loss, 4), true) + r::cell(r::percent(e.train_accuracy), true) +
              r::cell(r::percent(e.test_accuracy), true) +
              r::cell(format_fixed(e.average_bits, 2), true) +
              r::cell(format_bytes(e.size_bytes), true) +
              r::cell(std::isfinite(e.compression) ? "x" + format_fixed(e.compression, 1) : "n/a",
                      true) +
              r::cell(format_fixed(e.seconds, 1), true) + "</tr>\n";
    html += "</table>\n</details>\n";
  }

  html += "<footer>generated by bitgrad " BITGRAD_VERSION_STRING "</footer>\n</body>\n</html>\n";
  return html;
}

/// Writes the report to `path` atomically (write_file_atomically: a temporary in the same
/// directory, then rename), so a reader never sees half a page. Throws io_error.
inline void write_report(const std::filesystem::path& path, const std::vector<epoch_record>& epochs,
                         const run_summary& run) {
  write_file_atomically(path, render_report(epochs, run));
}

} // namespace bitgrad
