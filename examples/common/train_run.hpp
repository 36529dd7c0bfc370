// One training run (train::trainer built, labelled, run) for the networks that fashion_mnist and
// the Pareto study both train, compiled once for the whole build: the static library
// bitgrad_runs (examples/CMakeLists.txt) instantiates train_run for every (model, policy) pair
// below in examples/common/train_<model>.cpp, and the `extern template` lines here keep every
// other translation unit from instantiating the trainer again (issue #18: the trainer of one
// whole network is most of the compile time of the examples' and the study's runners, and both
// programs trained the same networks, each in its own translation units).
//
// A pair not listed here still works: train_run is then instantiated where it is called.
#pragma once

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>
#include <bitgrad/quant/noise_bits.hpp>
#include <bitgrad/quant/step_bits.hpp>
#include <bitgrad/train/gradient_sync.hpp>
#include <bitgrad/train/trainer.hpp>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad_runs {

/// The network nn::lenet5 / vgg_small / resnet20 builds with the weight policy Quant (no
/// activation quantizers: fashion_mnist's --act-bits networks, which the study does not train,
/// are instantiated in fashion_mnist's own run TUs).
template <template <class> class Quant>
using lenet5_net = decltype(bitgrad::nn::lenet5(bitgrad::nn::model_options<float, Quant>{}));
template <template <class> class Quant>
using vgg_small_net = decltype(bitgrad::nn::vgg_small(bitgrad::nn::model_options<float, Quant>{}));
template <template <class> class Quant>
using resnet20_net = decltype(bitgrad::nn::resnet20(bitgrad::nn::model_options<float, Quant>{}));

/// What a run is told besides its networks, data and options.
struct run_labels {
  std::optional<std::string> model_name; ///< trainer::set_model_name; unset: the trainer's default
  std::vector<std::pair<std::string, std::string>> settings; ///< trainer::add_setting, in order
  bitgrad::train::gradient_sync<float>* sync = nullptr;      ///< data-parallel; null: one process
  /// Called once the trainer is built (its option checks passed), before run(): the caller's
  /// lines that belong between the two.
  std::function<void()> before_run;
};

/// train::trainer(fp32, quantized, train_set, test_set, options), labelled by `labels`, run.
template <class FloatNet, class QuantNet>
bitgrad::train::run_result
train_run(FloatNet& fp32, QuantNet& quantized, const bitgrad::dataset& train_set,
          const bitgrad::dataset& test_set, const bitgrad::train::trainer_options& options,
          const run_labels& labels) {
  bitgrad::train::trainer trainer(fp32, quantized, train_set, test_set, options);
  if (labels.sync) trainer.set_gradient_sync(*labels.sync);
  if (labels.model_name) trainer.set_model_name(*labels.model_name);
  for (const auto& [key, value] : labels.settings) trainer.add_setting(key, value);
  if (labels.before_run) labels.before_run();
  return trainer.run();
}

} // namespace bitgrad_runs

// The instantiations, one line per (FP32 network, quantized network): `extern` everywhere but in
// the train_<model>.cpp that defines them (BITGRAD_RUNS_DEFINE_<MODEL> set).
#define BITGRAD_RUNS_TRAIN_RUN(prefix, Net, Quant)                                                 \
  prefix template bitgrad::train::run_result bitgrad_runs::train_run(                              \
      bitgrad_runs::Net<bitgrad::quant::no_quant>&, bitgrad_runs::Net<Quant>&,                     \
      const bitgrad::dataset&, const bitgrad::dataset&, const bitgrad::train::trainer_options&,    \
      const bitgrad_runs::run_labels&);

// The four policies (the study's arms and its pretraining twin, fashion_mnist's --policy).
#define BITGRAD_RUNS_ALL_POLICIES(prefix, Net)                                                     \
  BITGRAD_RUNS_TRAIN_RUN(prefix, Net, bitgrad::quant::frac_bits)                                   \
  BITGRAD_RUNS_TRAIN_RUN(prefix, Net, bitgrad::quant::noise_bits)                                  \
  BITGRAD_RUNS_TRAIN_RUN(prefix, Net, bitgrad::quant::step_bits)                                   \
  BITGRAD_RUNS_TRAIN_RUN(prefix, Net, bitgrad::quant::fixed_bits)

#ifndef BITGRAD_RUNS_DEFINE_LENET5
BITGRAD_RUNS_ALL_POLICIES(extern, lenet5_net)
#endif
#ifndef BITGRAD_RUNS_DEFINE_VGG_SMALL
BITGRAD_RUNS_ALL_POLICIES(extern, vgg_small_net)
#endif
// resnet20: frac_bits and fixed_bits only (the others are refused by both programs).
#ifndef BITGRAD_RUNS_DEFINE_RESNET20
BITGRAD_RUNS_TRAIN_RUN(extern, resnet20_net, bitgrad::quant::frac_bits)
BITGRAD_RUNS_TRAIN_RUN(extern, resnet20_net, bitgrad::quant::fixed_bits)
#endif
