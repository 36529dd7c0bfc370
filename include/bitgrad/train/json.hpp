// A minimal JSON writer and the JSON form of a run_summary.
//
// json_writer builds indented JSON text with a stack of open containers; it escapes strings
// (quote, backslash and every control character, as RFC 8259 requires), writes numbers in the
// shortest form that reads back to the same double, and writes NaN and infinities as null
// (JSON has no spelling for them). Misuse (a value inside an object without a key, closing
// the wrong container, reading an unfinished document) throws std::logic_error.
#pragma once

#include <bitgrad/train/records.hpp>

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace bitgrad {

/// `"text"` with JSON escapes: \" \\ \n \r \t \b \f, other control characters as \u00XX.
/// Bytes >= 0x80 pass through unchanged (UTF-8 stays UTF-8).
inline std::string json_quote(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (char c : text) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    case '\b':
      out += "\\b";
      break;
    case '\f':
      out += "\\f";
      break;
    default:
      if (static_cast<unsigned char>(c) < 0x20) {
        static constexpr char hex[] = "0123456789abcdef";
        out += "\\u00";
        out += hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
        out += hex[static_cast<unsigned char>(c) & 0xf];
      } else {
        out += c;
      }
    }
  }
  out += '"';
  return out;
}

/// The shortest decimal text that reads back to `x` ("0.1", "3", "1e-07"); "null" when x is
/// NaN or infinite.
inline std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, x);
  if (ec != std::errc{}) throw std::logic_error("json_number: to_chars failed");
  return std::string(buffer, end);
}

/// Streaming JSON builder. Containers nest; inside an object every value follows a key().
///   json_writer w;
///   w.begin_object().key("a").value(1.0).key("b").begin_array(true).value(2).end_array();
///   w.end_object();
///   w.str() == "{\n  \"a\": 1,\n  \"b\": [2]\n}"
class json_writer {
public:
  /// `indent` spaces per nesting level; 0 writes everything on one line.
  explicit json_writer(int indent = 2) : indent_(indent < 0 ? 0 : indent) {}

  /// Opens an object.
  json_writer& begin_object() { return open('{', true, false); }
  json_writer& end_object() { return close('}', true); }
  /// Opens an array; a compact array keeps all its items on one line (for long number lists).
  json_writer& begin_array(bool compact = false) { return open('[', false, compact); }
  json_writer& end_array() { return close(']', false); }

  /// Names the next value of the enclosing object.
  json_writer& key(std::string_view name) {
    if (stack_.empty() || !stack_.back().object || have_key_)
      throw std::logic_error("json_writer: key() outside an object or twice in a row");
    separate();
    out_ += json_quote(name);
    out_ += indent_ > 0 ? ": " : ":";
    have_key_ = true;
    return *this;
  }

  json_writer& value(std::string_view text) { return raw(json_quote(text)); }
  json_writer& value(const char* text) { return value(std::string_view(text)); }
  json_writer& value(const std::string& text) { return value(std::string_view(text)); }
  json_writer& value(double x) { return raw(json_number(x)); }
  json_writer& value(bool b) { return raw(b ? "true" : "false"); }
  /// Any integer type (int, std::size_t, std::int64_t, ...), written exactly.
  template <class Int>
  requires(std::is_integral_v<Int> && !std::is_same_v<Int, bool>) json_writer& value(Int n) {
    return raw(std::to_string(n));
  }
  json_writer& null() { return raw("null"); }

  /// A compact array of numbers.
  json_writer& value(std::span<const double> xs) {
    begin_array(true);
    for (double x : xs) value(x);
    return end_array();
  }
  json_writer& value(const std::vector<double>& xs) { return value(std::span<const double>(xs)); }

  /// The finished document; throws when containers are still open or nothing was written.
  const std::string& str() const {
    if (!stack_.empty() || !done_) throw std::logic_error("json_writer: document not finished");
    return out_;
  }

private:
  struct level {
    bool object;
    bool compact;
    std::size_t count = 0;
  };

  // Writes the separator and line break that come before an item of the current container.
  void separate() {
    if (stack_.empty()) return;
    level& top = stack_.back();
    if (top.count > 0) out_ += top.compact && indent_ > 0 ? ", " : ",";
    if (!top.compact) newline(stack_.size());
    ++top.count;
  }

  void newline(std::size_t depth) {
    if (indent_ == 0) return;
    out_ += '\n';
    out_.append(depth * static_cast<std::size_t>(indent_), ' ');
  }

  // Called before any value or container opening.
  void before_value() {
    if (stack_.empty()) {
      if (done_) throw std::logic_error("json_writer: a second top-level value");
      return;
    }
    if (stack_.back().object) {
      if (!have_key_) throw std::logic_error("json_writer: value inside an object without a key");
      have_key_ = false; // key() already wrote the separator
    } else {
      separate();
    }
  }

  json_writer& raw(std::string_view text) {
    before_value();
    out_ += text;
    if (stack_.empty()) done_ = true;
    return *this;
  }

  json_writer& open(char bracket, bool object, bool compact) {
    before_value();
    out_ += bracket;
    // Inside a compact array everything stays on one line.
    bool inherited = !stack_.empty() && stack_.back().compact;
    stack_.push_back(level{object, compact || inherited});
    return *this;
  }

  json_writer& close(char bracket, bool object) {
    if (stack_.empty() || stack_.back().object != object || have_key_)
      throw std::logic_error(std::string("json_writer: unexpected '") + bracket + "'");
    level top = stack_.back();
    stack_.pop_back();
    if (top.count > 0 && !top.compact) newline(stack_.size());
    out_ += bracket;
    if (stack_.empty()) done_ = true;
    return *this;
  }

  int indent_;
  std::string out_;
  std::vector<level> stack_;
  bool have_key_ = false;
  bool done_ = false;
};

namespace detail::json {

inline void write_layer_json(json_writer& w, const layer_summary& layer) {
  w.begin_object();
  w.key("name").value(layer.name);
  w.key("policy").value(layer.policy);
  w.key("params").value(layer.params);
  w.key("groups").value(layer.groups);
  w.key("bits_min").value(layer.bits_min);
  w.key("bits_mean").value(layer.bits_mean);
  w.key("bits_max").value(layer.bits_max);
  w.key("bytes").value(layer.bytes);
  w.key("group_bits").value(layer.group_bits);
  w.key("group_sensitivity").value(layer.group_sensitivity);
  w.key("bits_spread").value(layer.bits_spread);
  w.key("rank_correlation").value(layer.rank_correlation);
  w.end_object();
}

inline void write_summary_fields(json_writer& w, const run_summary& run) {
  w.key("model").value(run.model);
  w.key("policy").value(run.policy);
  w.key("fp32_accuracy").value(run.fp32_accuracy);
  w.key("quant_accuracy").value(run.quant_accuracy);
  w.key("average_bits").value(run.average_bits);
  w.key("size_bytes").value(run.size_bytes);
  w.key("compression").value(run.compression);
  w.key("seconds").value(run.seconds);
  w.key("settings").begin_object();
  for (const auto& [name, setting] : run.settings) w.key(name).value(setting);
  w.end_object();
  w.key("layers").begin_array();
  for (const auto& layer : run.layers) write_layer_json(w, layer);
  w.end_array();
}

} // namespace detail::json

/// The run summary as a JSON object: model, policy, fp32_accuracy, quant_accuracy,
/// average_bits, size_bytes, compression, seconds, settings (an object of strings, in order)
/// and layers (an array of objects: name, policy, params, groups, bits_min, bits_mean,
/// bits_max, bytes, group_bits, group_sensitivity, bits_spread, rank_correlation).
/// Unmeasured numbers (NaN) appear as null.
inline std::string to_json(const run_summary& run) {
  json_writer w;
  w.begin_object();
  detail::json::write_summary_fields(w, run);
  w.end_object();
  return w.str() + "\n";
}

/// As to_json(run), plus "epochs": one object per epoch_record (phase, epoch, loss,
/// train_accuracy, test_accuracy, average_bits, size_bytes, compression, seconds).
inline std::string to_json(const run_summary& run, const std::vector<epoch_record>& epochs) {
  json_writer w;
  w.begin_object();
  detail::json::write_summary_fields(w, run);
  w.key("epochs").begin_array();
  for (const auto& e : epochs) {
    w.begin_object();
    w.key("phase").value(e.phase);
    w.key("epoch").value(e.epoch);
    w.key("loss").value(e.loss);
    w.key("train_accuracy").value(e.train_accuracy);
    w.key("test_accuracy").value(e.test_accuracy);
    w.key("average_bits").value(e.average_bits);
    w.key("size_bytes").value(e.size_bytes);
    w.key("compression").value(e.compression);
    w.key("seconds").value(e.seconds);
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return w.str() + "\n";
}

} // namespace bitgrad
