// fashion_mnist's run of resnet20 (train_and_export.hpp), in a translation unit of its own that
// the build compiles beside run.cpp (issues #18, #24). Only frac_bits and fixed_bits (each with
// and without --act-bits), which the study of issue #24 needs (the learned and the uniform
// arms): with all four policies this file took 351 s of compiler user CPU and 6.6 GB of
// memory, with these two 255 s and 5.0 GB (g++ 12 -O2). main.cpp refuses the other two.
#include "run.hpp"
#include "train_and_export.hpp"

#include <bitgrad/nn/models.hpp>

namespace fashion_mnist {

template <template <class> class Quant>
int run_resnet20(const settings& cfg) {
  // ResNet-20 on 28x28 grey images: 1 input channel (the builder's default is CIFAR's 3 x 32 x
  // 32); its three stages give 28 -> 14 -> 7 before the global average pool.
  const auto resnet20 = [](auto o) {
    o.in_channels = 1;
    o.in_size = 28;
    return bitgrad::nn::resnet20(o);
  };
  return detail::run_with_options<Quant>(cfg, resnet20);
}

template int run_resnet20<bitgrad::quant::frac_bits>(const settings&);
template int run_resnet20<bitgrad::quant::fixed_bits>(const settings&);

} // namespace fashion_mnist
