// train::trainer::run() for the LeNet-5 pair the tests train most (FP32 nn::lenet5<float>, its
// frac_bits twin), compiled once: tests/unit/lenet5_trainer.cpp instantiates run_trainer for
// that pair into the static library bitgrad_test_trainers, and the `extern template` line below
// keeps every test translation unit that includes this header from instantiating and optimising
// the trainer's run() for it again (issue #18). run_trainer is a function template that is not
// inline, so `extern template` keeps its whole body, and with it trainer::run() and everything
// run() calls, out of the including translation unit. trainer's own members are defined in its
// class body, implicitly inline: under an `extern template class` GCC still instantiates them
// (front-end time), though at -O1 it did not emit run() or the constructor (h18-inst's probe).
//
// Any other trainer type works too: run_trainer is then instantiated where it is called.
#pragma once

#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/no_quant.hpp>
#include <bitgrad/train/trainer.hpp>

namespace bitgrad::testing {

using lenet5_fp32 = decltype(nn::lenet5(nn::model_options<float, quant::no_quant>{}));
using lenet5_frac_bits = decltype(nn::lenet5(nn::model_options<float, quant::frac_bits>{}));
using lenet5_trainer = train::trainer<lenet5_fp32, lenet5_frac_bits>;

/// t.run(): what a test calls instead of t.run() so that the shared instantiation is used.
template <class Trainer>
train::run_result run_trainer(Trainer& t) {
  return t.run();
}

} // namespace bitgrad::testing

#ifndef BITGRAD_TESTING_DEFINE_LENET5_TRAINER
extern template bitgrad::train::run_result
bitgrad::testing::run_trainer(bitgrad::testing::lenet5_trainer&);
#endif
