// All reference kernels (bitgrad::ref): plain scalar twins of the optimised kernels, with the
// same signatures. Tests use them as oracles.
#pragma once

#include <bitgrad/kernels/ref/gemm.hpp>
