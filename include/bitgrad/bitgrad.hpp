// bitgrad: train neural networks whose weight bitwidths are learned by gradient descent.
// The umbrella header: includes the whole library.
#pragma once

#include <bitgrad/version.hpp>

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/core/simd.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/core/xt.hpp>

#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/reference.hpp>
