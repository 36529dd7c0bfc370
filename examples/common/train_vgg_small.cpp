// train_run for vgg-small: the four policies
// (train_run.hpp says why they are compiled once, here; issue #18).
#define BITGRAD_RUNS_DEFINE_VGG_SMALL
#include "train_run.hpp"

BITGRAD_RUNS_ALL_POLICIES(, vgg_small_net)
