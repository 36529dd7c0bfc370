// train_run for resnet20 with frac_bits and fixed_bits (the study's arms, fashion_mnist's --model
// resnet20) (train_run.hpp says why they are compiled once, here; issue #18).
#define BITGRAD_RUNS_DEFINE_RESNET20
#include "train_run.hpp"

BITGRAD_RUNS_TRAIN_RUN(, resnet20_net, bitgrad::quant::frac_bits)
BITGRAD_RUNS_TRAIN_RUN(, resnet20_net, bitgrad::quant::fixed_bits)
