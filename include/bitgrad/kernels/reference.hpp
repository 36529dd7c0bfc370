// All reference kernels (bitgrad::ref): plain scalar twins of the optimised kernels, with the
// same signatures. Tests use them as oracles.
#pragma once

#include <bitgrad/kernels/ref/batch_norm.hpp>
#include <bitgrad/kernels/ref/conv2d.hpp>
#include <bitgrad/kernels/ref/elementwise.hpp>
#include <bitgrad/kernels/ref/gemm.hpp>
#include <bitgrad/kernels/ref/noise.hpp>
#include <bitgrad/kernels/ref/optim_update.hpp>
#include <bitgrad/kernels/ref/pool2d.hpp>
