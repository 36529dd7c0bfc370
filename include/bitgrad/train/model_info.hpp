// Size accounting and per-layer summaries of a whole network.
//
// Every byte that must be stored counts:
//   weights   what each layer's quantizer says (quantizer::size_bits(): codes at their group's
//             bitwidth plus, per group, the scale as float32 and the bitwidth as one byte;
//             32 bits per weight for FP32 layers),
//   bias/norm parameters as float32 (batch norm folds into biases at export, never growing).
// Bitwidth and scale parameters are the per-group overhead already inside size_bits().
//
//   average bits = sum over quantized groups of n_g * b_g / sum of n_g   (codes only)
//   compression  = 32 * (weights + biases + norm parameters) / total size bits
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/train/records.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::train {

/// The storage of a network.
struct model_size {
  std::size_t weights = 0;      ///< weights behind every quantizer (FP32 layers included)
  std::size_t float_params = 0; ///< biases and norm parameters, stored as float32
  double weight_bits = 0;       ///< sum of quantizer::size_bits(), overhead included
  double code_bits = 0;         ///< sum of n_g * b_g over the groups (no overhead)

  double total_bits() const { return weight_bits + 32.0 * static_cast<double>(float_params); }
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

/// One row per quantized (or FP32) weight tensor: bits min/mean/max, bytes.
template <class Net>
std::vector<layer_summary> layer_summaries(Net& net) {
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
    row.bytes = q.size_bits() / 8.0;
    rows.push_back(std::move(row));
  });
  return rows;
}

/// Copies every weight, bias and norm parameter of `from` into the parameter of the same name
/// in `to` (an FP32-pretrained network into its quantized twin). Throws config_error when a
/// parameter of `from` has no twin of the same size.
template <class From, class To>
void copy_parameters(From& from, To& to) {
  using T = typename To::value_type;
  std::vector<param_ref<T>> targets;
  to.visit_parameters([&](param_ref<T>& p) { targets.push_back(p); });
  from.visit_parameters([&](param_ref<typename From::value_type>& p) {
    if (p.kind != param_kind::weight && p.kind != param_kind::bias && p.kind != param_kind::norm)
      return;
    auto it = std::find_if(targets.begin(), targets.end(),
                           [&](const param_ref<T>& t) { return t.name == p.name; });
    if (it == targets.end() || it->size != p.size)
      throw config_error("copy_parameters: " + p.name + " (" + std::to_string(p.size) +
                         " values) has no parameter of that name and size in the target network");
    std::copy(p.value, p.value + p.size, it->value);
  });
}

/// Rebinds every quantizer to its layer's current weights (after copy_parameters: scales and
/// ranges are initialised from the weights, bitwidths start again at their initial value).
template <class Net>
void rebind_quantizers(Net& net) {
  auto rebind = [](std::string_view, auto& layer) {
    if constexpr (requires {
                    layer.quantizer();
                    layer.weight();
                  }) {
      auto& w = layer.weight();
      const std::size_t channels = w.shape(0);
      layer.quantizer().bind(channels, w.size() / channels, w.data());
    }
  };
  nn::visit_layers(net, rebind);
}

} // namespace bitgrad::train
