// bitgrad: train neural networks whose weight bitwidths are learned by gradient descent.
// The umbrella header: includes the whole library.
#pragma once

#include <bitgrad/version.hpp>

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/simd.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/core/xt.hpp>

#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/pool2d.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <bitgrad/quant/budget.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>
#include <bitgrad/quant/noise_bits.hpp>
#include <bitgrad/quant/penalty.hpp>
#include <bitgrad/quant/quantizer.hpp>
#include <bitgrad/quant/size.hpp>
#include <bitgrad/quant/step_bits.hpp>

#include <bitgrad/nn/layer.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/nn/visit.hpp>

#include <bitgrad/optim/adam.hpp>
#include <bitgrad/optim/clip.hpp>
#include <bitgrad/optim/schedule.hpp>
#include <bitgrad/optim/sgd.hpp>

#include <bitgrad/data/cifar.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/idx.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/io/atomic_file.hpp>

#include <bitgrad/train/checkpoint.hpp>
#include <bitgrad/train/sensitivity.hpp>
#include <bitgrad/train/trainer.hpp>
