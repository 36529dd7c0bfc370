// Evaluation of a classifier on a whole dataset, in eval mode, in dataset order.
#pragma once

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/nn/loss.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::train {

/// Mean loss and accuracy (fraction correct) over a dataset.
struct evaluation {
  double loss = 0;
  double accuracy = 0;
  std::size_t images = 0;
  std::size_t correct = 0; ///< images whose largest logit is their label
};

/// Runs `net` over every image of `data` (batches of `batch_size`, normalised as `normalise`
/// says, no augmentation; only this shard's slice of every batch when `normalise` sets
/// shard_count) in eval mode; the network's mode is restored afterwards. `net` takes
/// image batches (N, C, H, W) (checked at compile time).
template <class Net>
evaluation evaluate(Net& net, const dataset& data, const loader_options& normalise,
                    std::size_t batch_size = 500) {
  using T = typename Net::value_type;
  static_assert(std::same_as<typename Net::input_type, tensor4<T>>,
                "train::evaluate: the network must take image batches (N, C, H, W) as the loader "
                "gives them; a network that starts with nn::linear needs nn::flatten in front "
                "(put nn::flatten before the first linear)");
  loader_options opt = normalise;
  opt.batch_size = batch_size;
  opt.shuffle = false;
  opt.drop_last = false;
  opt.crop_padding = 0;
  opt.horizontal_flip = false;
  loader<T> batches(data, opt);
  const bool was_training = net.training();
  net.train(false);
  nn::softmax_cross_entropy<T> loss;
  tensor4<T> x;
  std::vector<std::int32_t> y;
  evaluation result;
  double loss_sum = 0;
  std::size_t correct = 0;
  while (batches.next(x, y)) {
    if (y.empty()) continue; // a shard's empty slice of a batch (loader_options::shard_count)
    const auto& logits = net.forward(x);
    loss_sum += static_cast<double>(loss.forward(logits, y)) * static_cast<double>(y.size());
    correct += nn::count_correct(logits, y);
    result.images += y.size();
  }
  net.train(was_training);
  result.correct = correct;
  if (result.images > 0) {
    result.loss = loss_sum / static_cast<double>(result.images);
    result.accuracy = static_cast<double>(correct) / static_cast<double>(result.images);
  }
  return result;
}

} // namespace bitgrad::train
