// The network and data the checkpoint fuzzer loads into, shared with the seed-corpus generator
// (make_seed_corpus.cpp) so the committed seed checkpoints match it parameter by parameter.
//
// Small on purpose: every layer kind that stores state in a checkpoint (a frac_bits conv with
// bitwidth parameters, a fixed_bits linear with learned scales, a float linear), with a few
// hundred bytes of parameters, so that mutations land on structure rather than on weights.
#pragma once

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>

#include <cstddef>
#include <cstdint>

namespace bitgrad_fuzz {

using namespace bitgrad;

/// conv 1->2 3x3 (frac_bits, per channel) -> relu -> flatten (2*2*2 for a 4x4 input) ->
/// fc 8->3 (fixed_bits 4, per channel) -> relu -> fc 3->2 (float).
inline auto checkpoint_net(std::uint64_t seed = 1) {
  return nn::sequential(
      nn::conv2d<float, quant::frac_bits>(
          {.in_channels = 1, .out_channels = 2, .kernel = 3, .seed = seed, .name = "conv"},
          {.group_size = 1,
           .b_min = 2,
           .b_max = 8,
           .b_init = 5.5,
           .scale = quant::scale_mode::max_abs}),
      nn::relu<float, 4>("relu1"), nn::flatten<float>("flatten"),
      nn::linear<float, quant::fixed_bits>(
          {.in_features = 8, .out_features = 3, .seed = seed + 1, .name = "fc1"},
          {.group_size = 1, .bits = 4, .lsq_grad_scale = true}),
      nn::relu<float, 2>("relu2"),
      nn::linear<float, quant::no_quant>(
          {.in_features = 3, .out_features = 2, .seed = seed + 2, .name = "fc2"}));
}

/// Five 1x4x4 images of two classes, for restoring a loader state.
inline const dataset& checkpoint_data_set() {
  static const dataset d = [] {
    dataset s;
    s.channels = 1;
    s.height = 4;
    s.width = 4;
    s.classes = 2;
    for (std::size_t i = 0; i < 5; ++i) {
      s.labels.push_back(static_cast<std::int32_t>(i % 2));
      for (std::size_t p = 0; p < 16; ++p)
        s.pixels.push_back(static_cast<std::uint8_t>(i * 16 + p));
    }
    return s;
  }();
  return d;
}

} // namespace bitgrad_fuzz
