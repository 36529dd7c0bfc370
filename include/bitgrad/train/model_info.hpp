// Size accounting and per-layer summaries of a whole network.
//
// THE model size (the one definition, used by every size bitgrad prints or compares: the
// epoch line, the CSV log, summary.json, the report, the freeze message and the size target of
// train::trainer) is model_size::bytes() of measure_size(net): every byte the quantized model
// stores,
//   weights   what each layer's quantizer says (quantizer::size_bits(): codes at their group's
//             bitwidth plus, per group, the scale as float32 and the bitwidth as one byte;
//             32 bits per weight for FP32 layers),
//   bias/norm parameters as float32 (batch norm folds into biases at export, never growing).
// Bitwidth and scale parameters are the per-group overhead already inside size_bits(). The
// packed model file (.bgm) is this plus its header and graph description (docs/model-format.md).
//
//   average bits = sum over quantized groups of n_g * b_g / sum of n_g   (codes only)
//   compression  = 32 * (weights + biases + norm parameters) / total size bits
// A layer's bytes (layer_summary::bytes) are the same count for one layer: its weights' size
// bits and its own bias; norm parameters count in the model's total only.
//
// Twins: copy_parameters copies an FP32-pretrained network into its quantized twin;
// check_twins (called by it and by the trainer's constructor) first requires both networks to
// have the same copyable parameters (weights, biases, norm parameters) by name and size, and
// the same weight shapes, in both directions.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/quant/groups.hpp>
#include <bitgrad/report/records.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad::train {

/// The storage of a network.
struct model_size {
  std::size_t weights = 0;      ///< weights behind every quantizer (FP32 layers included)
  std::size_t float_params = 0; ///< biases and norm parameters, stored as float32
  double weight_bits = 0;       ///< sum of quantizer::size_bits(), overhead included
  double code_bits = 0;         ///< sum of n_g * b_g over the groups (no overhead)

  double float_bits() const { return 32.0 * static_cast<double>(float_params); }
  double total_bits() const { return weight_bits + float_bits(); }
  double bytes() const { return total_bits() / 8.0; }
  double average_bits() const { return weights ? code_bits / static_cast<double>(weights) : 0.0; }
  double compression() const {
    const double fp32 = 32.0 * static_cast<double>(weights + float_params);
    return total_bits() > 0 ? fp32 / total_bits() : 0.0;
  }
};

/// n_g * b_g summed over the groups of one quantizer (32 bits per weight for FP32).
template <class Q>
double code_bits(const Q& q) {
  if constexpr (Q::is_identity) {
    return 32.0 * static_cast<double>(q.weight_count());
  } else {
    const auto bits = q.group_bits();
    double total = 0;
    for (std::size_t g = 0; g < bits.size(); ++g)
      total += static_cast<double>(q.group_weight_count(g)) * bits[g];
    return total;
  }
}

template <class Net>
model_size measure_size(Net& net) {
  model_size s;
  net.visit_quantizers([&](std::string_view, const auto& q) {
    s.weights += q.weight_count();
    s.weight_bits += q.size_bits();
    s.code_bits += code_bits(q);
  });
  net.visit_parameters([&](param_ref<typename Net::value_type>& p) {
    if (p.kind == param_kind::bias || p.kind == param_kind::norm) s.float_params += p.size;
  });
  return s;
}

/// The smallest model_size::total_bits() the bitwidth bounds allow: every group a quantizer
/// still learns at ceil(b_min) bits per weight plus its 40 bits of overhead, frozen and fixed
/// quantizers at their own size_bits(), the float32 parameters as they are. A size target
/// below it cannot be met (the trainer refuses one; the Pareto study checks its budgets
/// with it before pretraining).
template <class Net>
double smallest_size_bits(Net& net) {
  double smallest = measure_size(net).float_bits();
  net.visit_quantizers([&](std::string_view, const auto& q) {
    if (!q.frozen()) {
      smallest += quant::group_overhead_bits * static_cast<double>(q.groups()) +
                  std::ceil(q.b_min()) * static_cast<double>(q.weight_count());
      return;
    }
    smallest += q.size_bits();
  });
  return smallest;
}

/// One row per quantized (or FP32) weight tensor: bits min/mean/max, bytes (the layer's weights
/// with their overhead, and its float32 bias).
template <class Net>
std::vector<layer_summary> layer_summaries(Net& net) {
  std::map<std::string, std::size_t> biases; // "conv1" -> values of "conv1.bias"
  net.visit_parameters([&](param_ref<typename Net::value_type>& p) {
    const std::string_view suffix = ".bias";
    if (p.kind == param_kind::bias && p.name.size() > suffix.size() &&
        p.name.compare(p.name.size() - suffix.size(), suffix.size(), suffix) == 0)
      biases[p.name.substr(0, p.name.size() - suffix.size())] += p.size;
  });
  std::vector<layer_summary> rows;
  net.visit_quantizers([&]<class Q>(std::string_view name, const Q& q) {
    layer_summary row;
    row.name = std::string(name);
    row.policy = Q::policy_name;
    row.params = q.weight_count();
    row.groups = q.groups();
    row.group_bits = q.group_bits();
    const auto [lo, hi] = std::minmax_element(row.group_bits.begin(), row.group_bits.end());
    row.bits_min = *lo;
    row.bits_max = *hi;
    row.bits_mean = code_bits(q) / static_cast<double>(q.weight_count());
    row.bits_spread = row.bits_max - row.bits_min;
    const auto bias = biases.find(row.name);
    row.bytes = (q.size_bits() + (bias == biases.end() ? 0.0 : 32.0 * bias->second)) / 8.0;
    rows.push_back(std::move(row));
  });
  return rows;
}

namespace detail {

/// name -> values of every weight, bias and norm parameter (what copy_parameters copies).
template <class Net>
std::map<std::string, std::size_t> copyable_parameters(Net& net) {
  std::map<std::string, std::size_t> out;
  net.visit_parameters([&](param_ref<typename Net::value_type>& p) {
    if (p.kind == param_kind::weight || p.kind == param_kind::bias || p.kind == param_kind::norm)
      out[p.name] = p.size;
  });
  return out;
}

/// full layer name -> shape of its weight tensor, for every leaf layer that has one.
template <class Net>
std::map<std::string, std::vector<std::size_t>> weight_shapes(Net& net) {
  std::map<std::string, std::vector<std::size_t>> out;
  auto f = [&](std::string_view name, auto& layer) {
    if constexpr (requires { layer.weight().shape(); }) {
      const auto& shape = layer.weight().shape();
      out[std::string(name)] = std::vector<std::size_t>(shape.begin(), shape.end());
    }
  };
  nn::visit_layers(net, f);
  return out;
}

} // namespace detail

/// Throws config_error unless `a` and `b` have the same copyable parameters (weights, biases,
/// norm parameters): each name of either network in the other with the same number of values,
/// and each layer's weight tensor of the same shape in both. The message names the parameter
/// (or layer) and the networks by `a_name` and `b_name`.
template <class A, class B>
void check_twins(A& a, B& b, std::string_view a_name = "the FP32 network",
                 std::string_view b_name = "the quantized network") {
  const auto pa = detail::copyable_parameters(a);
  const auto pb = detail::copyable_parameters(b);
  auto missing = [](const std::string& name, std::size_t size, std::string_view has,
                    std::string_view lacks) {
    return config_error("parameter '" + name + "' (" + std::to_string(size) + " values) of " +
                        std::string(has) + " has no parameter of that name in " +
                        std::string(lacks) + "; both networks need the same layer names");
  };
  for (const auto& [name, size] : pa) {
    const auto it = pb.find(name);
    if (it == pb.end()) throw missing(name, size, a_name, b_name);
    if (it->second != size)
      throw config_error("parameter '" + name + "' has " + std::to_string(size) + " values in " +
                         std::string(a_name) + " and " + std::to_string(it->second) + " in " +
                         std::string(b_name));
  }
  for (const auto& [name, size] : pb)
    if (!pa.count(name)) throw missing(name, size, b_name, a_name);
  const auto sa = detail::weight_shapes(a);
  const auto sb = detail::weight_shapes(b);
  for (const auto& [name, shape] : sa) {
    const auto it = sb.find(name);
    if (it != sb.end() && it->second != shape)
      throw config_error("layer '" + name + "': weight of shape " + shape_string(shape) + " in " +
                         std::string(a_name) + " but " + shape_string(it->second) + " in " +
                         std::string(b_name));
  }
}

/// Copies every weight, bias and norm parameter of `from` into the parameter of the same name
/// in `to` (an FP32-pretrained network into its quantized twin), and the running mean and
/// variance of every batch norm into the layer of the same name (buffers, not parameters: as a
/// PyTorch state_dict carries them), so the twin evaluates with the statistics its weights were
/// trained with until training re-estimates them. Throws config_error (see check_twins) unless
/// both have the same copyable parameters, before copying anything.
template <class From, class To>
void copy_parameters(From& from, To& to) {
  using T = typename To::value_type;
  using S = typename From::value_type;
  check_twins(from, to, "the source network", "the target network");
  // Running statistics, paired by layer name before anything is copied.
  struct running_stats {
    T* mean;
    T* var;
    std::size_t channels;
  };
  std::map<std::string, running_stats, std::less<>> targets_stats;
  auto collect = [&](std::string_view name, auto& layer) {
    if constexpr (requires { layer.running_var(); })
      targets_stats[std::string(name)] = {layer.running_mean().data(), layer.running_var().data(),
                                          layer.running_mean().size()};
  };
  nn::visit_layers(to, collect);
  std::vector<std::pair<const S*, const S*>> sources; // mean, var
  std::vector<running_stats> destinations;
  auto pair_up = [&](std::string_view name, auto& layer) {
    if constexpr (requires { layer.running_var(); }) {
      const auto it = targets_stats.find(name);
      const std::size_t channels = layer.running_mean().size();
      if (it == targets_stats.end() || it->second.channels != channels)
        throw config_error("layer '" + std::string(name) + "': batch norm of " +
                           std::to_string(channels) + " channels in the source network but " +
                           (it == targets_stats.end()
                                ? std::string("no batch norm")
                                : std::to_string(it->second.channels) + " channels") +
                           " in the target network");
      sources.emplace_back(layer.running_mean().data(), layer.running_var().data());
      destinations.push_back(it->second);
    }
  };
  nn::visit_layers(from, pair_up);

  std::map<std::string, T*> targets;
  to.visit_parameters([&](param_ref<T>& p) { targets[p.name] = p.value; });
  from.visit_parameters([&](param_ref<S>& p) {
    if (p.kind != param_kind::weight && p.kind != param_kind::bias && p.kind != param_kind::norm)
      return;
    std::copy(p.value, p.value + p.size, targets.at(p.name));
  });
  for (std::size_t i = 0; i < sources.size(); ++i) {
    std::copy_n(sources[i].first, destinations[i].channels, destinations[i].mean);
    std::copy_n(sources[i].second, destinations[i].channels, destinations[i].var);
  }
}

/// Rebinds every quantizer to its layer's current weights (after copy_parameters: scales and
/// ranges are initialised from the weights, bitwidths start again at their initial value).
template <class Net>
void rebind_quantizers(Net& net) {
  auto rebind = []<class L>(std::string_view, L& layer) {
    if constexpr (nn::quantized_layer<L>) {
      auto& w = layer.weight();
      const std::size_t channels = w.shape(0);
      layer.quantizer().bind(channels, w.size() / channels, w.data());
    }
  };
  nn::visit_layers(net, rebind);
}

} // namespace bitgrad::train
