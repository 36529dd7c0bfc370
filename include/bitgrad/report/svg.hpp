// Small SVG charts as plain strings: a line chart, a scatter chart with error bars (symmetric
// or min/max), optional connecting lines and marker shapes, a reference line, and a heat map. No
// scripts, no external assets, no ids, so any number of charts can sit inline in one HTML page. The
// functions return inline SVG (no xmlns, which an HTML page does not need); svg_document() turns
// one into a standalone .svg file.
//
// Layout of a chart (pixels, origin top left):
//
//   +--------------------------------------------------------+
//   |                       title                            |
//   |  y ticks +---------------------------------+  legend   |
//   |  y label |  plot area: series, markers,    |  - name   |
//   |          |  reference line, grid           |  - name   |
//   |          +---------------------------------+           |
//   |             x ticks          x label                   |
//   +--------------------------------------------------------+
//
// Non-finite values are skipped (a line breaks where a value is missing); a chart without any
// finite value draws its frame and "no data".
#pragma once

#include <bitgrad/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad {

/// One line of a line chart. An empty color takes the next colour of the default palette.
struct series {
  std::string name;
  std::vector<double> x, y;
  std::string color;
  bool dashed = false;
};

/// The shape of a scatter chart's points (and of their legend entry).
enum class marker_shape { circle, square, diamond };

/// Points of a scatter chart; y_err is empty or holds one half-height error bar per point.
/// When y_low and y_high both hold one value per point, the bar of point i spans
/// [y_low[i], y_high[i]] instead (e.g. the minimum and maximum over seeds) and y_err is unused.
/// `connect` draws a line through the finite points in order of increasing x (dashed when
/// `dashed`), e.g. one method's accuracy across model sizes.
struct point_series {
  std::string name{};
  std::vector<double> x{}, y{}, y_err{};
  std::string color{};
  std::vector<double> y_low{}, y_high{};
  bool connect = false;
  bool dashed = false;
  marker_shape shape = marker_shape::circle;
};

/// A labelled vertical line, e.g. the first epoch of a new training phase.
struct x_marker {
  double x = 0;
  std::string label;
};

/// A labelled horizontal line, e.g. the accuracy of the FP32 model.
struct reference_line {
  double y = 0;
  std::string label;
  std::string color = "#555555";
};

struct chart_options {
  double width = 640;
  double height = 320;
  std::optional<double> y_min, y_max; ///< fixed y range (else from the data, rounded to ticks)
  bool log_x = false;                 ///< logarithmic x axis (non-positive x are skipped)
  std::vector<x_marker> markers;
  std::optional<reference_line> reference;
  int max_ticks = 6; ///< roughly how many ticks per axis
};

/// The ticks of a linear axis: the range [lo, hi] rounded outwards to multiples of step.
struct axis_ticks {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> ticks;
};

/// Text with &, <, >, " and ' replaced by entities, safe in XML text and attribute values.
inline std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    case '\'':
      out += "&#39;";
      break;
    default:
      out += c;
    }
  }
  return out;
}

/// A "nice" number (1, 2, 5 or 10 times a power of ten) close to x > 0: the nearest one when
/// `round`, else the smallest one not below x (Heckbert, Graphics Gems, 1990).
inline double nice_number(double x, bool round) {
  double exponent = std::floor(std::log10(x));
  double power = std::pow(10.0, exponent);
  double fraction = x / power;
  double nice;
  if (round)
    nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
  else
    nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  return nice * power;
}

/// Nice ticks covering [lo, hi] with about `max_ticks` ticks. An empty or degenerate range is
/// widened first (lo == hi becomes lo - 1 .. lo + 1, or a 10% band around it).
inline axis_ticks nice_ticks(double lo, double hi, int max_ticks = 6) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(lo))) {
    double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  int n = std::max(max_ticks, 2);
  double range = nice_number(hi - lo, false);
  double step = nice_number(range / (n - 1), true);
  axis_ticks t;
  t.step = step;
  t.lo = std::floor(lo / step) * step;
  t.hi = std::ceil(hi / step) * step;
  for (double v = t.lo; v <= t.hi + step * 0.5; v += step)
    t.ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

/// A tick label: as many decimals as the step needs, and k/M/G for large steps
/// (step 0.25 -> "0.75", step 2 -> "14", step 2e5 -> "400k").
inline std::string tick_label(double value, double step) {
  const char* suffix = "";
  double scale = 1;
  double magnitude = std::abs(step);
  if (magnitude >= 1e9)
    scale = 1e9, suffix = "G";
  else if (magnitude >= 1e6)
    scale = 1e6, suffix = "M";
  else if (magnitude >= 1e4)
    scale = 1e3, suffix = "k";
  double scaled_step = magnitude / scale;
  int decimals = 0;
  while (decimals < 9 && std::abs(scaled_step - std::round(scaled_step)) > 1e-9 * scaled_step) {
    scaled_step *= 10;
    ++decimals;
  }
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f%s", decimals, value / scale, suffix);
  std::string text = buffer;
  if (text.rfind("-0", 0) == 0 && text.find_first_not_of("-0.") == std::string::npos)
    text.erase(0, 1); // "-0.0" -> "0.0"
  return text;
}

/// The inline SVG as a standalone document (XML declaration and SVG namespace added).
inline std::string svg_document(const std::string& svg) {
  std::string out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  if (svg.rfind("<svg ", 0) == 0)
    out += "<svg xmlns=\"http://www.w3.org/2000/svg\" " + svg.substr(5);
  else
    out += svg;
  return out;
}

namespace detail::svg {

inline const std::string& palette(std::size_t i) {
  static const std::vector<std::string> colors = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                                  "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  return colors[i % colors.size()];
}

inline std::string fmt(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", x);
  std::string s = buffer;
  // "12.50" -> "12.5", "12.00" -> "12": shorter SVG, same picture.
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  if (s == "-0") s = "0";
  return s;
}

// The x axis of a chart: linear or logarithmic.
struct x_axis {
  bool log = false;
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  double step = 1; // linear only
  double position(double x) const { return log ? std::log10(x) : x; }
  std::string label(double x) const {
    if (!log) return tick_label(x, step);
    return tick_label(x, std::pow(10.0, std::floor(std::log10(x))));
  }
};

inline x_axis make_x_axis(double lo, double hi, bool log, int max_ticks) {
  x_axis a;
  a.log = log;
  if (!log) {
    axis_ticks t = nice_ticks(lo, hi, max_ticks);
    a.lo = t.lo, a.hi = t.hi, a.step = t.step, a.ticks = t.ticks;
    return a;
  }
  if (!(lo > 0) || !std::isfinite(lo) || !std::isfinite(hi)) lo = 1, hi = 10;
  int first = static_cast<int>(std::floor(std::log10(lo) + 1e-12));
  int last = static_cast<int>(std::ceil(std::log10(hi) - 1e-12));
  if (last <= first) last = first + 1;
  a.lo = first, a.hi = last; // in decades
  bool fine = last - first <= 2;
  for (int d = first; d <= last; ++d) {
    double p = std::pow(10.0, d);
    a.ticks.push_back(p);
    if (fine && d < last) a.ticks.push_back(2 * p), a.ticks.push_back(5 * p);
  }
  return a;
}

// Everything common to the line and scatter charts: frame, grid, ticks, labels, legend.
struct chart_frame {
  double width, height;
  double left = 64, right, top = 34, bottom;
  x_axis x;
  axis_ticks y;
  bool empty = false;

  double px(double v) const {
    return left + (x.position(v) - x.lo) / (x.hi - x.lo) * (right - left);
  }
  double py(double v) const { return bottom - (v - y.lo) / (y.hi - y.lo) * (bottom - top); }
  bool inside_x(double v) const {
    return std::isfinite(v) && (!x.log || v > 0) && x.position(v) >= x.lo - 1e-9 &&
           x.position(v) <= x.hi + 1e-9;
  }
};

struct legend_entry {
  std::string name, color;
  bool dashed = false;
  bool point = false;
  bool line = true; // with point: a short line behind the marker (a connected series)
  marker_shape shape = marker_shape::circle;
};

// One marker of radius ~r centred at (cx, cy); `inner` goes inside the element (a <title>).
inline std::string marker(marker_shape shape, double cx, double cy, double r,
                          std::string_view color, std::string_view inner = "") {
  std::string open, close = inner.empty() ? "/>\n" : ">" + std::string(inner);
  switch (shape) {
  case marker_shape::circle:
    open = "<circle cx=\"" + fmt(cx) + "\" cy=\"" + fmt(cy) + "\" r=\"" + fmt(r) + "\"";
    if (!inner.empty()) close += "</circle>\n";
    break;
  case marker_shape::square:
    open = "<rect class=\"marker\" x=\"" + fmt(cx - r) + "\" y=\"" + fmt(cy - r) + "\" width=\"" +
           fmt(2 * r) + "\" height=\"" + fmt(2 * r) + "\"";
    if (!inner.empty()) close += "</rect>\n";
    break;
  case marker_shape::diamond:
    open = "<polygon points=\"" + fmt(cx) + "," + fmt(cy - 1.3 * r) + " " + fmt(cx + 1.3 * r) +
           "," + fmt(cy) + " " + fmt(cx) + "," + fmt(cy + 1.3 * r) + " " + fmt(cx - 1.3 * r) + "," +
           fmt(cy) + "\"";
    if (!inner.empty()) close += "</polygon>\n";
    break;
  }
  return open + " fill=\"" + xml_escape(color) + "\"" + close;
}

inline chart_frame make_frame(const std::vector<double>& xs, const std::vector<double>& ys,
                              const chart_options& o, bool has_legend) {
  chart_frame f;
  f.width = o.width;
  f.height = o.height;
  f.right = o.width - (has_legend ? 160 : 20);
  f.bottom = o.height - 46;
  constexpr double inf = std::numeric_limits<double>::infinity();
  double xlo = inf, xhi = -inf, ylo = inf, yhi = -inf;
  for (double v : xs)
    if (std::isfinite(v) && (!o.log_x || v > 0)) xlo = std::min(xlo, v), xhi = std::max(xhi, v);
  for (double v : ys)
    if (std::isfinite(v)) ylo = std::min(ylo, v), yhi = std::max(yhi, v);
  f.empty = !(xlo <= xhi) || !(ylo <= yhi);
  if (!(xlo <= xhi)) xlo = o.log_x ? 1 : 0, xhi = o.log_x ? 10 : 1;
  if (!(ylo <= yhi)) ylo = 0, yhi = 1;
  if (o.reference && std::isfinite(o.reference->y))
    ylo = std::min(ylo, o.reference->y), yhi = std::max(yhi, o.reference->y);
  if (o.y_min) ylo = *o.y_min;
  if (o.y_max) yhi = *o.y_max;
  f.x = make_x_axis(xlo, xhi, o.log_x, o.max_ticks);
  f.y = nice_ticks(ylo, yhi, o.max_ticks);
  // A fixed range is kept exactly; ticks outside it are dropped.
  if (o.y_min) f.y.lo = *o.y_min;
  if (o.y_max) f.y.hi = *o.y_max;
  if (o.y_min || o.y_max) {
    std::erase_if(f.y.ticks, [&](double t) { return t < f.y.lo - 1e-9 || t > f.y.hi + 1e-9; });
    if (!(f.y.hi > f.y.lo)) f.y = nice_ticks(f.y.lo, f.y.hi, o.max_ticks);
  }
  return f;
}

inline std::string open_svg(double width, double height, std::string_view title) {
  std::string s = "<svg class=\"chart\" width=\"" + fmt(width) + "\" height=\"" + fmt(height) +
                  "\" viewBox=\"0 0 " + fmt(width) + " " + fmt(height) +
                  "\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n";
  s += "<title>" + xml_escape(title) + "</title>\n";
  s += "<rect x=\"0\" y=\"0\" width=\"" + fmt(width) + "\" height=\"" + fmt(height) +
       "\" fill=\"#ffffff\"/>\n";
  s += "<text x=\"" + fmt(width / 2) +
       "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" +
       xml_escape(title) + "</text>\n";
  return s;
}

inline std::string text(double x, double y, std::string_view anchor, std::string_view content,
                        std::string_view extra = "") {
  return "<text x=\"" + fmt(x) + "\" y=\"" + fmt(y) + "\" text-anchor=\"" + std::string(anchor) +
         "\"" + (extra.empty() ? "" : " " + std::string(extra)) + ">" + xml_escape(content) +
         "</text>\n";
}

inline std::string line(double x1, double y1, double x2, double y2, std::string_view stroke,
                        std::string_view extra = "") {
  return "<line x1=\"" + fmt(x1) + "\" y1=\"" + fmt(y1) + "\" x2=\"" + fmt(x2) + "\" y2=\"" +
         fmt(y2) + "\" stroke=\"" + xml_escape(stroke) + "\"" +
         (extra.empty() ? "" : " " + std::string(extra)) + "/>\n";
}

inline std::string draw_axes(const chart_frame& f, std::string_view x_label,
                             std::string_view y_label) {
  std::string s;
  for (double t : f.y.ticks) {
    double y = f.py(t);
    s += line(f.left, y, f.right, y, "#e4e4e4");
    s += text(f.left - 6, y + 4, "end", tick_label(t, f.y.step));
  }
  for (double t : f.x.ticks) {
    double x = f.px(t);
    s += line(x, f.top, x, f.bottom, "#f0f0f0");
    s += line(x, f.bottom, x, f.bottom + 4, "#333333");
    s += text(x, f.bottom + 17, "middle", f.x.label(t));
  }
  s += "<rect x=\"" + fmt(f.left) + "\" y=\"" + fmt(f.top) + "\" width=\"" + fmt(f.right - f.left) +
       "\" height=\"" + fmt(f.bottom - f.top) + "\" fill=\"none\" stroke=\"#333333\"/>\n";
  s += text((f.left + f.right) / 2, f.height - 8, "middle", x_label);
  double cy = (f.top + f.bottom) / 2;
  s += text(16, cy, "middle", y_label, "transform=\"rotate(-90 16 " + fmt(cy) + ")\"");
  if (f.empty) s += text((f.left + f.right) / 2, cy, "middle", "no data", "fill=\"#888888\"");
  return s;
}

// The marker and reference lines (labels == false, drawn under the data) or their labels
// (labels == true, drawn over it).
inline std::string draw_markers(const chart_frame& f, const chart_options& o, bool labels) {
  std::string s;
  // Labels sit at the top of the plot, right of their line (left of it near the right edge);
  // a label that would run into the previous one drops one line lower.
  double previous_end = -1e300;
  int row = 0;
  for (const auto& m : o.markers) {
    if (!f.inside_x(m.x)) continue;
    double x = f.px(m.x);
    double label_width = 6.0 * double(m.label.size()) + 6; // ~font-size 10
    bool flip = x + label_width > f.right;
    double start = flip ? x - label_width : x;
    row = start < previous_end ? (row + 1) % 3 : 0;
    previous_end = std::max(previous_end, start + label_width);
    if (!labels) {
      s += line(x, f.top, x, f.bottom, "#888888", "stroke-dasharray=\"4 3\"");
      continue;
    }
    s += text(flip ? x - 3 : x + 3, f.top + 11 + 12 * row, flip ? "end" : "start", m.label,
              "font-size=\"10\" fill=\"#555555\" stroke=\"#ffffff\" stroke-width=\"3\" "
              "paint-order=\"stroke\"");
  }
  if (o.reference && std::isfinite(o.reference->y) && o.reference->y >= f.y.lo &&
      o.reference->y <= f.y.hi) {
    double y = f.py(o.reference->y);
    if (!labels)
      s += line(f.left, y, f.right, y, o.reference->color,
                "stroke-width=\"1.5\" stroke-dasharray=\"6 3\"");
    else
      s += text(f.right - 4, y - 4, "end", o.reference->label,
                "font-size=\"11\" fill=\"" + xml_escape(o.reference->color) +
                    "\" stroke=\"#ffffff\" stroke-width=\"3\" paint-order=\"stroke\"");
  }
  return s;
}

inline std::string draw_legend(const chart_frame& f, const std::vector<legend_entry>& entries) {
  std::string s;
  double x = f.right + 12;
  double y = f.top + 6;
  for (const auto& e : entries) {
    if (!e.point || e.line)
      s += line(x, y, x + 20, y, e.color,
                std::string("stroke-width=\"2\"") + (e.dashed ? " stroke-dasharray=\"5 3\"" : ""));
    if (e.point) s += marker(e.shape, x + 10, y, 4, e.color);
    s += text(x + 26, y + 4, "start", e.name);
    y += 18;
  }
  return s;
}

// A data value in a tooltip: up to 6 significant digits ("1000", "0.95", "0.004").
inline std::string value_text(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6g", x);
  return buffer;
}

inline bool any_named(const auto& list) {
  return std::any_of(list.begin(), list.end(), [](const auto& s) { return !s.name.empty(); });
}

} // namespace detail::svg

/// A line chart of one or more series (x and y of equal length; extra values are ignored).
/// Series with names get a legend entry. Short series also get a dot per point, so a
/// one-point series is visible.
inline std::string svg_line_chart(std::string_view title, std::string_view x_label,
                                  std::string_view y_label, const std::vector<series>& lines,
                                  const chart_options& options = {}) {
  std::vector<double> xs, ys;
  for (const auto& s : lines) {
    std::size_t n = std::min(s.x.size(), s.y.size());
    for (std::size_t i = 0; i < n; ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]))
        xs.push_back(s.x[i]), ys.push_back(s.y[i]);
  }
  bool legend = detail::svg::any_named(lines);
  detail::svg::chart_frame f = detail::svg::make_frame(xs, ys, options, legend);
  std::string svg = detail::svg::open_svg(options.width, options.height, title);
  svg += detail::svg::draw_axes(f, x_label, y_label);
  svg += detail::svg::draw_markers(f, options, false);
  std::vector<detail::svg::legend_entry> entries;
  for (std::size_t k = 0; k < lines.size(); ++k) {
    const series& s = lines[k];
    std::string color = s.color.empty() ? detail::svg::palette(k) : s.color;
    std::string dash = s.dashed ? " stroke-dasharray=\"6 4\"" : "";
    std::size_t n = std::min(s.x.size(), s.y.size());
    std::vector<std::pair<double, double>> run;
    std::string dots;
    auto flush = [&] {
      if (run.size() >= 2) {
        svg += "<polyline fill=\"none\" stroke=\"" + xml_escape(color) + "\" stroke-width=\"2\"" +
               dash + " points=\"";
        for (std::size_t i = 0; i < run.size(); ++i) {
          if (i) svg += ' ';
          svg += detail::svg::fmt(run[i].first) + "," + detail::svg::fmt(run[i].second);
        }
        svg += "\"/>\n";
      }
      run.clear();
    };
    for (std::size_t i = 0; i < n; ++i) {
      double x = s.x[i], y = s.y[i];
      if (!f.inside_x(x) || !std::isfinite(y) || y < f.y.lo || y > f.y.hi) {
        flush();
        continue;
      }
      run.emplace_back(f.px(x), f.py(y));
      if (n <= 40)
        dots += "<circle cx=\"" + detail::svg::fmt(f.px(x)) + "\" cy=\"" +
                detail::svg::fmt(f.py(y)) + "\" r=\"2.5\" fill=\"" + xml_escape(color) + "\"/>\n";
    }
    flush();
    svg += dots;
    if (!s.name.empty()) entries.push_back({s.name, color, s.dashed, false});
  }
  svg += detail::svg::draw_markers(f, options, true);
  if (legend) svg += detail::svg::draw_legend(f, entries);
  svg += "</svg>\n";
  return svg;
}

/// A scatter chart: one marker per point, a vertical error bar (+-y_err, or y_low .. y_high)
/// where given, an optional line through each series' points, and the optional reference line
/// of `options` (e.g. FP32 accuracy). Each point carries a tooltip "name: (x, y +- err)" or
/// "name: (x, y in [low, high])".
inline std::string svg_scatter_chart(std::string_view title, std::string_view x_label,
                                     std::string_view y_label,
                                     const std::vector<point_series>& points,
                                     const chart_options& options = {}) {
  // The bar of point i of s as (low, high), or nullopt.
  auto bar = [](const point_series& s, std::size_t i) -> std::optional<std::pair<double, double>> {
    const std::size_t n = std::min(s.x.size(), s.y.size());
    if (s.y_low.size() == n && s.y_high.size() == n) {
      if (!std::isfinite(s.y_low[i]) || !std::isfinite(s.y_high[i])) return std::nullopt;
      return std::pair{std::min(s.y_low[i], s.y_high[i]), std::max(s.y_low[i], s.y_high[i])};
    }
    const double err = i < s.y_err.size() && std::isfinite(s.y_err[i]) ? std::abs(s.y_err[i]) : 0;
    if (err == 0) return std::nullopt;
    return std::pair{s.y[i] - err, s.y[i] + err};
  };
  std::vector<double> xs, ys;
  for (const auto& s : points) {
    std::size_t n = std::min(s.x.size(), s.y.size());
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xs.push_back(s.x[i]);
      ys.push_back(s.y[i]);
      if (const auto b = bar(s, i)) ys.push_back(b->first), ys.push_back(b->second);
    }
  }
  bool legend = detail::svg::any_named(points);
  detail::svg::chart_frame f = detail::svg::make_frame(xs, ys, options, legend);
  std::string svg = detail::svg::open_svg(options.width, options.height, title);
  svg += detail::svg::draw_axes(f, x_label, y_label);
  svg += detail::svg::draw_markers(f, options, false);
  std::vector<detail::svg::legend_entry> entries;
  for (std::size_t k = 0; k < points.size(); ++k) {
    const point_series& s = points[k];
    const std::string raw_color = s.color.empty() ? detail::svg::palette(k) : s.color;
    const std::string color = xml_escape(raw_color);
    std::size_t n = std::min(s.x.size(), s.y.size());
    auto visible = [&](std::size_t i) {
      return f.inside_x(s.x[i]) && std::isfinite(s.y[i]) && s.y[i] >= f.y.lo && s.y[i] <= f.y.hi;
    };
    if (s.connect) {
      std::vector<std::size_t> order;
      for (std::size_t i = 0; i < n; ++i)
        if (visible(i)) order.push_back(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return s.x[a] < s.x[b]; });
      if (order.size() >= 2) {
        svg += "<polyline class=\"connect\" fill=\"none\" stroke=\"" + color +
               "\" stroke-width=\"1.5\"" + (s.dashed ? " stroke-dasharray=\"6 4\"" : "") +
               " points=\"";
        for (std::size_t j = 0; j < order.size(); ++j) {
          if (j) svg += ' ';
          svg +=
              detail::svg::fmt(f.px(s.x[order[j]])) + "," + detail::svg::fmt(f.py(s.y[order[j]]));
        }
        svg += "\"/>\n";
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (!visible(i)) continue;
      const double x = s.x[i], y = s.y[i];
      double cx = f.px(x);
      std::string tip = (s.name.empty() ? "" : s.name + ": ") + "(" + detail::svg::value_text(x) +
                        ", " + detail::svg::value_text(y);
      if (const auto b = bar(s, i)) {
        double y1 = f.py(std::min(b->second, f.y.hi)), y2 = f.py(std::max(b->first, f.y.lo));
        svg += detail::svg::line(cx, y1, cx, y2, color, "class=\"error-bar\"");
        svg += detail::svg::line(cx - 4, y1, cx + 4, y1, color);
        svg += detail::svg::line(cx - 4, y2, cx + 4, y2, color);
        if (s.y_low.size() == n && s.y_high.size() == n)
          tip += " in [" + detail::svg::value_text(b->first) + ", " +
                 detail::svg::value_text(b->second) + "]";
        else
          tip += " +- " + detail::svg::value_text(std::abs(s.y_err[i]));
      }
      tip += ")";
      svg += detail::svg::marker(s.shape, cx, f.py(y), 4, raw_color,
                                 "<title>" + xml_escape(tip) + "</title>");
    }
    if (!s.name.empty()) entries.push_back({s.name, raw_color, s.dashed, true, s.connect, s.shape});
  }
  svg += detail::svg::draw_markers(f, options, true);
  if (legend) svg += detail::svg::draw_legend(f, entries);
  svg += "</svg>\n";
  return svg;
}

/// One row of a heat map: a label and its values (rows may differ in length).
using heatmap_row = std::pair<std::string, std::vector<double>>;

struct heatmap_options {
  double width = 720;     ///< whole picture
  double row_height = 16; ///< one row of cells
  double max_cell_width = 24;
  std::string unit = "bits"; ///< in tooltips and the legend
  int decimals = 2;          ///< of values in tooltips
  std::string x_label = "channel group";
};

/// The colour of value v on a scale from lo (dark blue) to hi (yellow), viridis-like; grey for
/// a non-finite value. Values outside [lo, hi] are clamped.
inline std::string heat_color(double v, double lo, double hi) {
  if (!std::isfinite(v)) return "#cccccc";
  static constexpr double stops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  t = std::clamp(t, 0.0, 1.0) * 4;
  int i = std::min(static_cast<int>(t), 3);
  double u = t - i;
  char buffer[8];
  int rgb[3];
  for (int c = 0; c < 3; ++c)
    rgb[c] = static_cast<int>(std::lround(stops[i][c] + u * (stops[i + 1][c] - stops[i][c])));
  std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buffer;
}

/// A heat map: one row per layer, one cell (a <rect class="cell">) per value, coloured on the
/// scale [lo, hi] with a colour-scale legend underneath. Each cell has a tooltip
/// "<row label> group <g>: <value> <unit>" (g counts from 0). Throws config_error unless
/// lo < hi.
inline std::string svg_heatmap(std::string_view title, const std::vector<heatmap_row>& rows,
                               double lo, double hi, const heatmap_options& options = {}) {
  if (!(lo < hi) || !std::isfinite(lo) || !std::isfinite(hi))
    throw config_error("svg_heatmap: value range must be finite with lo < hi, got " +
                       std::to_string(lo) + " .. " + std::to_string(hi));
  std::size_t longest_label = 0, longest_row = 0;
  for (const auto& [label, values] : rows) {
    longest_label = std::max(longest_label, label.size());
    longest_row = std::max(longest_row, values.size());
  }
  const double left = std::clamp(12.0 + 7.0 * static_cast<double>(longest_label), 60.0, 220.0);
  const double right_margin = 20, top = 34;
  const double plot_width = std::max(options.width - left - right_margin, 50.0);
  const double cell_width =
      longest_row == 0 ? options.max_cell_width
                       : std::min(options.max_cell_width, plot_width / double(longest_row));
  const double grid_height = options.row_height * double(rows.size());
  const double legend_top = top + grid_height + 40;
  const double height = legend_top + 40;

  std::string svg = detail::svg::open_svg(options.width, height, title);
  char value_text[64];
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const auto& [label, values] = rows[r];
    double y = top + options.row_height * double(r);
    svg += detail::svg::text(left - 6, y + options.row_height * 0.5 + 4, "end", label);
    for (std::size_t g = 0; g < values.size(); ++g) {
      double v = values[g];
      std::string tip = label + " group " + std::to_string(g) + ": ";
      if (std::isfinite(v)) {
        std::snprintf(value_text, sizeof value_text, "%.*f", options.decimals, v);
        tip += value_text;
        if (!options.unit.empty()) tip += " " + options.unit;
      } else {
        tip += "n/a";
      }
      svg += "<rect class=\"cell\" x=\"" + detail::svg::fmt(left + cell_width * double(g)) +
             "\" y=\"" + detail::svg::fmt(y) + "\" width=\"" + detail::svg::fmt(cell_width) +
             "\" height=\"" + detail::svg::fmt(options.row_height - 1) + "\" fill=\"" +
             heat_color(v, lo, hi) + "\"><title>" + xml_escape(tip) + "</title></rect>\n";
    }
  }
  if (rows.empty()) svg += detail::svg::text(options.width / 2, top + 20, "middle", "no data");
  // x axis: group indices at nice steps.
  if (longest_row > 0) {
    double axis_y = top + grid_height + 14;
    axis_ticks t = nice_ticks(0, double(longest_row - 1), 8);
    for (double g : t.ticks) {
      if (g < 0 || g > double(longest_row - 1)) continue;
      svg += detail::svg::text(left + cell_width * (g + 0.5), axis_y, "middle", tick_label(g, 1));
    }
    svg += detail::svg::text(left + cell_width * double(longest_row) / 2, axis_y + 16, "middle",
                             options.x_label);
  }
  // Colour-scale legend: 32 swatches from lo to hi with the ends and ticks labelled.
  const int swatches = 32;
  const double legend_width = std::min(plot_width, 320.0), swatch = legend_width / swatches;
  for (int i = 0; i < swatches; ++i) {
    double v = lo + (hi - lo) * (i + 0.5) / swatches;
    svg += "<rect class=\"legend\" x=\"" + detail::svg::fmt(left + swatch * i) + "\" y=\"" +
           detail::svg::fmt(legend_top) + "\" width=\"" + detail::svg::fmt(swatch + 0.5) +
           "\" height=\"12\" fill=\"" + heat_color(v, lo, hi) + "\"/>\n";
  }
  axis_ticks scale = nice_ticks(lo, hi, 5);
  for (double v : scale.ticks) {
    if (v < lo - 1e-9 || v > hi + 1e-9) continue;
    svg += detail::svg::text(left + (v - lo) / (hi - lo) * legend_width, legend_top + 26, "middle",
                             tick_label(v, scale.step));
  }
  svg += detail::svg::text(left + legend_width + 8, legend_top + 10, "start", options.unit);
  svg += "</svg>\n";
  return svg;
}

} // namespace bitgrad
