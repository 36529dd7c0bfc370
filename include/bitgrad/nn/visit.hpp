// Walking a network: leaf layers, parameter counts and a one-line-per-layer summary.
//
//   visit_layers(net, f)   f(full_name, layer&) for every leaf layer (compositions recurse;
//                          full_name joins the enclosing compositions' names: "layer1.0.conv1")
//   visit_activation_quantizers(net, f)
//                          f(full_name, quantizer&) for every leaf with an activation quantizer
//                          (nn/activation_quant.hpp's layer)
//   parameter_count(net)   number of trainable scalars (quantizer parameters included)
//   summary(net)           "name  describe  parameters" per leaf layer, and the total
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/nn/layer.hpp>

#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>

namespace bitgrad::nn {

/// f(full_name, leaf&) for `l` itself or, for a composition, for each of its leaves.
template <class L, class F>
void visit_layers(L& l, F& f, std::string_view prefix = {}) {
  if constexpr (requires { l.visit_layers(f, prefix); })
    l.visit_layers(f, prefix);
  else
    f(join_name(prefix, l.name()), l);
}

/// f(full_name, act_quantizer&) for every leaf of `net` (a layer or a composition) that holds an
/// activation quantizer (nn::activation_quant), in the order of visit_layers. Here, not in
/// nn/activation_quant.hpp, so that a training step can reach them without including the
/// quantizer's kernels.
template <class L, class F>
void visit_activation_quantizers(L& net, F&& f) {
  auto leaf = [&](const std::string& name, auto& l) {
    if constexpr (requires { l.activation_quantizer(); })
      f(std::string_view(name), l.activation_quantizer());
  };
  visit_layers(net, leaf);
}

/// Trainable scalars of a layer or network.
template <class L>
std::size_t parameter_count(L& l) {
  std::size_t n = 0;
  l.visit_parameters([&](param_ref<typename L::value_type>& p) { n += p.size; });
  return n;
}

/// A table of the leaf layers: name, description, parameter count; then the total.
template <class L>
std::string summary(L& net) {
  std::ostringstream out;
  std::size_t total = 0;
  auto row = [&](const std::string& name, auto& leaf) {
    const std::size_t n = parameter_count(leaf);
    total += n;
    out << name << "  " << leaf.describe() << "  " << n << '\n';
  };
  visit_layers(net, row);
  out << "total parameters  " << total << '\n';
  return out.str();
}

} // namespace bitgrad::nn
