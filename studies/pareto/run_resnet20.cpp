// The Pareto study's resnet20 (1 input channel, 28x28), in a translation unit of its own so the
// build compiles it beside main.cpp: its networks are the slowest of the study to compile, and
// only the frac_bits arms and the uniform fixed_bits arm are built (issues #18, #24).
#include "run.hpp"

#include <bitgrad/nn/models.hpp>

namespace pareto {

bool run_resnet20(const settings& cfg, const data_sets& data, std::vector<run_row>& rows,
                  std::size_t& done, std::size_t total,
                  std::chrono::steady_clock::time_point start) {
  return run_model<false>(
      cfg, data, "resnet20",
      []<template <class> class Q>(const bitgrad::nn::model_options<float, Q>& o) {
        auto grey = o;
        grey.in_channels = 1;
        grey.in_size = 28;
        return bitgrad::nn::resnet20<float, Q>(grey);
      },
      rows, done, total, start);
}

} // namespace pareto
