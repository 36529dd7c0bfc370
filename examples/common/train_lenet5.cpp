// train_run for lenet5: the four policies
// (train_run.hpp says why they are compiled once, here; issue #18).
#define BITGRAD_RUNS_DEFINE_LENET5
#include "train_run.hpp"

BITGRAD_RUNS_ALL_POLICIES(, lenet5_net)
