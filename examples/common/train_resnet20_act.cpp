// train_run for resnet20 with activation quantizers, frac_bits and fixed_bits (fashion_mnist
// --model resnet20 --act-bits) (train_run.hpp says why they are compiled once, here; issue #18).
#define BITGRAD_RUNS_DEFINE_RESNET20_ACT
#include "train_run.hpp"

BITGRAD_RUNS_TRAIN_RUN(, resnet20_act_net, bitgrad::quant::frac_bits)
BITGRAD_RUNS_TRAIN_RUN(, resnet20_act_net, bitgrad::quant::fixed_bits)
