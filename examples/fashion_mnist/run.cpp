// fashion_mnist's run of lenet5 and vgg-small (train_and_export.hpp), compiled here for the four
// policies; resnet20's is in run_resnet20.cpp, a translation unit of its own.
#include "run.hpp"

#include "train_and_export.hpp"

#include <bitgrad/nn/models.hpp>

namespace fashion_mnist {

int run_policy(const settings& cfg) {
  if (cfg.policy == "step_bits") return run_model<bitgrad::quant::step_bits>(cfg);
  if (cfg.policy == "fixed_bits") return run_model<bitgrad::quant::fixed_bits>(cfg);
  if (cfg.policy == "noise_bits") return run_model<bitgrad::quant::noise_bits>(cfg);
  return run_model<bitgrad::quant::frac_bits>(cfg);
}

template <template <class> class Quant>
int run_model(const settings& cfg) {
  if (cfg.model == "resnet20") {
    if constexpr (resnet20_policy<Quant>)
      return run_resnet20<Quant>(cfg);
    else // main.cpp refuses it first
      bitgrad::cli::reject("--policy", "--model resnet20 is built with frac_bits and fixed_bits "
                                       "only, got " +
                                           cfg.policy);
  }
  const auto lenet5 = [](const auto& o) { return bitgrad::nn::lenet5(o); };
  const auto vgg = [](const auto& o) { return bitgrad::nn::vgg_small(o); };
  return cfg.model == "lenet5" ? detail::run_with_options<Quant>(cfg, lenet5)
                               : detail::run_with_options<Quant>(cfg, vgg);
}

template int run_model<bitgrad::quant::frac_bits>(const settings&);
template int run_model<bitgrad::quant::noise_bits>(const settings&);
template int run_model<bitgrad::quant::step_bits>(const settings&);
template int run_model<bitgrad::quant::fixed_bits>(const settings&);

} // namespace fashion_mnist
