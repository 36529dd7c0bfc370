// The one instantiation of run_trainer for the LeNet-5 pair (see lenet5_trainer.hpp, issue #18).
#define BITGRAD_TESTING_DEFINE_LENET5_TRAINER
#include "lenet5_trainer.hpp"

template bitgrad::train::run_result
bitgrad::testing::run_trainer(bitgrad::testing::lenet5_trainer&);
