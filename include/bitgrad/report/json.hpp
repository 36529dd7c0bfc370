// The JSON form of a run summary (summary.json), built with nlohmann/json (core/json.hpp).
//
// Values: NaN and infinities are null (JSON has no spelling for them); a number with an
// integer value below 2^53 is written as an integer ("12345", not "12345.0"), any other in
// the shortest form that reads back to the same double; strings are escaped as RFC 8259
// requires, and bytes that are not UTF-8 become U+FFFD. Layout: two spaces per level, one
// member or item per line, except arrays of numbers, which stay on one line ("[2, 3.75, 4]").
#pragma once

#include <bitgrad/core/json.hpp>
#include <bitgrad/report/records.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace bitgrad {

/// x as a JSON value: null when not finite, an integer when it has an integer value below
/// 2^53 in magnitude, else the double.
inline json json_number(double x) {
  if (!std::isfinite(x)) return nullptr;
  if (std::abs(x) < 9007199254740992.0 && x == std::trunc(x)) return static_cast<std::int64_t>(x);
  return x;
}

/// The numbers xs as a JSON array (json_number of each).
inline json json_numbers(const std::vector<double>& xs) {
  json a = json::array();
  for (double x : xs) a.push_back(json_number(x));
  return a;
}

/// v as text in the layout described at the top of this header (no final line break).
inline std::string json_text(const json& v) {
  std::string out;
  auto scalar = [](const json& s) {
    return s.dump(-1, ' ', false, json::error_handler_t::replace);
  };
  auto write = [&](auto&& self, const json& value, std::size_t depth) -> void {
    auto newline = [&](std::size_t d) {
      out += '\n';
      out.append(2 * d, ' ');
    };
    if (value.is_object() && !value.empty()) {
      out += '{';
      bool first = true;
      for (const auto& [key, member] : value.items()) {
        out += first ? "" : ",";
        first = false;
        newline(depth + 1);
        out += scalar(json(key)) + ": ";
        self(self, member, depth + 1);
      }
      newline(depth);
      out += '}';
    } else if (value.is_array() && !value.empty()) {
      const bool numbers = std::all_of(value.begin(), value.end(),
                                       [](const json& x) { return x.is_number() || x.is_null(); });
      out += '[';
      for (std::size_t i = 0; i < value.size(); ++i) {
        out += i == 0 ? "" : numbers ? ", " : ",";
        if (!numbers) newline(depth + 1);
        self(self, value[i], depth + 1);
      }
      if (!numbers) newline(depth);
      out += ']';
    } else {
      out += scalar(value); // a scalar, {} or []
    }
  };
  write(write, v, 0);
  return out;
}

/// One layer of the summary: name, policy, params, groups, bits_min, bits_mean, bits_max,
/// bytes, group_bits, group_sensitivity, bits_spread, rank_correlation.
inline json to_json_value(const layer_summary& layer) {
  json j = json::object();
  j["name"] = layer.name;
  j["policy"] = layer.policy;
  j["params"] = layer.params;
  j["groups"] = layer.groups;
  j["bits_min"] = json_number(layer.bits_min);
  j["bits_mean"] = json_number(layer.bits_mean);
  j["bits_max"] = json_number(layer.bits_max);
  j["bytes"] = json_number(layer.bytes);
  j["group_bits"] = json_numbers(layer.group_bits);
  j["group_sensitivity"] = json_numbers(layer.group_sensitivity);
  j["bits_spread"] = json_number(layer.bits_spread);
  j["rank_correlation"] = json_number(layer.rank_correlation);
  return j;
}

/// One activation quantizer: name, channels, group_bits, group_ranges.
inline json to_json_value(const activation_summary& a) {
  json j = json::object();
  j["name"] = a.name;
  j["channels"] = a.channels;
  j["group_bits"] = json_numbers(a.group_bits);
  j["group_ranges"] = json_numbers(a.group_ranges);
  return j;
}

/// One cost: name, unit, value, target (null: no budget), met.
inline json to_json_value(const cost_summary& c) {
  json j = json::object();
  j["name"] = c.name;
  j["unit"] = c.unit;
  j["value"] = json_number(c.value);
  j["target"] = json_number(c.target);
  j["met"] = c.met;
  return j;
}

/// The run summary: model, policy, fp32_accuracy, quant_accuracy, average_bits, size_bytes,
/// compression, seconds, settings (an object of strings, in order), layers, activations (only
/// when the network has activation quantizers) and costs (each cost against its budget, only
/// when the run reports costs).
inline json to_json_value(const run_summary& run) {
  json j = json::object();
  j["model"] = run.model;
  j["policy"] = run.policy;
  j["fp32_accuracy"] = json_number(run.fp32_accuracy);
  j["quant_accuracy"] = json_number(run.quant_accuracy);
  j["average_bits"] = json_number(run.average_bits);
  j["size_bytes"] = json_number(run.size_bytes);
  j["compression"] = json_number(run.compression);
  j["seconds"] = json_number(run.seconds);
  json settings = json::object();
  for (const auto& [name, setting] : run.settings) settings[name] = setting;
  j["settings"] = std::move(settings);
  json layers = json::array();
  for (const auto& layer : run.layers) layers.push_back(to_json_value(layer));
  j["layers"] = std::move(layers);
  if (!run.activations.empty()) {
    json activations = json::array();
    for (const auto& a : run.activations) activations.push_back(to_json_value(a));
    j["activations"] = std::move(activations);
  }
  if (!run.costs.empty()) {
    json costs = json::array();
    for (const auto& c : run.costs) costs.push_back(to_json_value(c));
    j["costs"] = std::move(costs);
  }
  return j;
}

/// One epoch: phase, epoch, loss, train_accuracy, test_accuracy, average_bits, size_bytes,
/// compression, seconds.
inline json to_json_value(const epoch_record& e) {
  json j = json::object();
  j["phase"] = e.phase;
  j["epoch"] = e.epoch;
  j["loss"] = json_number(e.loss);
  j["train_accuracy"] = json_number(e.train_accuracy);
  j["test_accuracy"] = json_number(e.test_accuracy);
  j["average_bits"] = json_number(e.average_bits);
  j["size_bytes"] = json_number(e.size_bytes);
  j["compression"] = json_number(e.compression);
  j["seconds"] = json_number(e.seconds);
  if (std::isfinite(e.bops)) j["bops"] = json_number(e.bops);
  if (std::isfinite(e.activation_bytes)) j["activation_bytes"] = json_number(e.activation_bytes);
  return j;
}

/// The text of summary.json: to_json_value(run) and a final line break.
inline std::string to_json(const run_summary& run) {
  return json_text(to_json_value(run)) + "\n";
}

/// As to_json(run), plus "epochs": one object per epoch_record.
inline std::string to_json(const run_summary& run, const std::vector<epoch_record>& epochs) {
  json j = to_json_value(run);
  json log = json::array();
  for (const auto& e : epochs) log.push_back(to_json_value(e));
  j["epochs"] = std::move(log);
  return json_text(j) + "\n";
}

} // namespace bitgrad
