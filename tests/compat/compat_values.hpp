// The state written into the compatibility files of tests/data/compat/ (make_compat_files.cpp,
// built against the commit that wrote them) and expected back by tests/unit/test_compat.cpp:
// the network of tests/fuzz/checkpoint_net.hpp with every parameter value set by a formula,
// the conv's bitwidths frozen to {3, 6}, a loader one batch into its first epoch and an Adam
// state after one step on formula gradients. Only APIs that both sides share are used here.
#pragma once

#include "../fuzz/checkpoint_net.hpp"

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/data/loader.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace bitgrad_compat {

using namespace bitgrad;

/// Value j of the i-th visited parameter: exact binary fractions, in bounds for its kind
/// (bitwidths in [2, 6.75], scales in [1/16, 7/16]).
inline float parameter_value(std::size_t i, std::size_t j, param_kind kind) {
  if (kind == param_kind::bitwidth) return 2.0f + 0.25f * static_cast<float>((i + j) % 20);
  if (kind == param_kind::scale) return 0.0625f * static_cast<float>(1 + (i + 2 * j) % 7);
  return static_cast<float>(static_cast<int>((i * 31 + j * 7) % 23) - 8) / 32.0f;
}

/// Gradient j of the i-th visited parameter for the one Adam step.
inline float gradient_value(std::size_t i, std::size_t j) {
  return static_cast<float>(static_cast<int>((i * 13 + j * 5) % 17) - 8) / 32.0f;
}

/// The conv's frozen bitwidths (two output channels, one group each).
inline const std::vector<int> conv_bits = {3, 6};

/// The network in the state described above (parameters set after freezing, so freezing
/// cannot move them).
inline auto make_network() {
  auto net = bitgrad_fuzz::checkpoint_net(1);
  net.template get<0>().quantizer().freeze_to(conv_bits);
  std::size_t i = 0;
  net.visit_parameters([&](param_ref<float>& p) {
    for (std::size_t j = 0; j < p.size; ++j) p.value[j] = parameter_value(i, j, p.kind);
    ++i;
  });
  return net;
}

/// Sets every gradient of net to gradient_value.
template <class Net>
void set_gradients(Net& net) {
  std::size_t i = 0;
  net.visit_parameters([&](param_ref<float>& p) {
    for (std::size_t j = 0; j < p.size; ++j) p.grad[j] = gradient_value(i, j);
    ++i;
  });
}

/// The loader options of the saved loader state (over bitgrad_fuzz::checkpoint_data_set()).
inline loader_options loader_settings() {
  loader_options o;
  o.batch_size = 2;
  o.seed = 3;
  return o;
}

} // namespace bitgrad_compat
