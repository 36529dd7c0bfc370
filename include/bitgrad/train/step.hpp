// One training step, the same for a hand-written loop (examples/quickstart.cpp) and the trainer
// (train/trainer.hpp, which the studies use):
//
//   zero_grad -> logits = net.forward(x) -> l = loss.forward(logits, y) -> net.backward(dL/dlogits)
//   -> [size penalty: d(penalty)/d(bitwidths) added to the bitwidth gradients]
//   -> [hardware-cost penalties (quant::cost_penalties: BOPs, peak activation memory): their
//      gradients added to the weight and activation bitwidths they depend on]
//   -> if l and every gradient are finite: optimizer.step, then every quantizer projects its
//      parameters back into bounds (bitwidths into [b_min, b_max], ...): the weight quantizers
//      and the activation quantizers (nn/activation_quant.hpp, reached through nn/visit.hpp) alike
//
// Data-parallel (`sync` set, train/gradient_sync.hpp): x, y are this rank's slice of the global
// batch. After the loss, one sum over the ranks gives the global batch's loss, correct count and
// size b; the backward pass runs between sync->begin_step(n_r / b) and sync->finish_step(), which
// leave the global batch's mean-loss gradient in every parameter, the same on every rank; the
// size penalty, the finiteness checks, the optimizer and the projection then act on identical
// values on every rank, so the parameters stay bit-identical. A rank with an empty slice
// (n_r = 0) skips its forward and backward but joins the sums.
//
// A step with a non-finite loss or gradient changes no parameter: it would turn weights and
// bitwidths into NaN. The caller decides what to do with it (stop naming the step, or skip the
// batch and count it): step_result::bad says what was not finite.
#pragma once

#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/visit.hpp>
#include <bitgrad/optim/clip.hpp>
#include <bitgrad/quant/costs.hpp>
#include <bitgrad/quant/penalty.hpp>
#include <bitgrad/train/gradient_sync.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::train {

/// A classification loss as the step uses it (nn::softmax_cross_entropy is one): forward(logits,
/// labels) returns the mean loss over the batch and keeps what backward() needs; backward()
/// returns dL/dlogits, valid until the next forward().
template <class L, class T>
concept classification_loss = requires(L& loss, const tensor2<T>& logits,
                                       const std::vector<std::int32_t>& labels) {
  { loss.forward(logits, labels) } -> std::convertible_to<T>;
  { loss.backward() } -> std::convertible_to<const tensor2<T>&>;
};

/// What one step did.
template <class T>
struct step_result {
  T loss{};                ///< the batch's mean loss (before the size penalty)
  std::size_t correct = 0; ///< images of the batch whose largest logit is their label
  std::size_t images = 0;  ///< images of the batch (data-parallel: of the global batch)
  /// Empty when the optimizer stepped; otherwise what was not finite ("the loss is not finite",
  /// "the gradient of <parameter> is not finite") and no parameter changed.
  std::string bad;
};

/// One step of `net` on the batch (x, y): forward, loss, backward, the size penalty's gradient
/// when `penalty` is set, then (all finite) `optimizer.step` and the quantizers' projection.
/// The optimizer's learning rate is the caller's (set it from a schedule before the step).
/// `costs`: the hardware-cost penalties, their gradients added after the size penalty's.
/// `sync`: data-parallel training (see the top); null = one process.
template <class Net, classification_loss<typename Net::value_type> Loss, class Optimizer>
step_result<typename Net::value_type>
train_step(Net& net, Loss& loss, Optimizer& optimizer, const typename Net::input_type& x,
           const std::vector<std::int32_t>& y, const quant::size_penalty* penalty = nullptr,
           const quant::cost_penalties* costs = nullptr,
           gradient_sync<typename Net::value_type>* sync = nullptr) {
  using T = typename Net::value_type;
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  auto quantizers = [&](auto&& f) { net.visit_quantizers(f); };
  step_result<T> r;
  net.zero_grad();
  r.images = y.size();
  if (!sync || !y.empty()) {
    const auto& logits = net.forward(x);
    r.loss = loss.forward(logits, y);
    r.correct = nn::count_correct(logits, y);
  }
  if (!sync) {
    net.backward(loss.backward());
  } else {
    const double n = static_cast<double>(y.size());
    double global[3] = {static_cast<double>(r.loss) * n, static_cast<double>(r.correct), n};
    sync->sum(global); // loss sum, correct, b
    r.loss = static_cast<T>(global[0] / global[2]);
    r.correct = static_cast<std::size_t>(global[1]);
    r.images = static_cast<std::size_t>(global[2]);
    sync->begin_step(n / global[2]);
    if (!y.empty()) {
      if constexpr (requires { net.backward(loss.backward(), [](param_ref<T>&) {}); }) {
        if (sync->overlap())
          net.backward(loss.backward(), [&](param_ref<T>& p) { sync->gradient_ready(p); });
        else
          net.backward(loss.backward());
      } else {
        net.backward(loss.backward());
      }
    }
    sync->finish_step();
  }
  if (penalty) quant::apply_size_penalty(quantizers, *penalty); // d(penalty)/d(bitwidths)
  if (costs) costs->apply(); // d(cost penalties)/d(weight and activation bitwidths)
  if (!std::isfinite(static_cast<double>(r.loss)))
    r.bad = "the loss is not finite";
  else if (const std::string p = optim::grad_is_finite<T>(params); !p.empty())
    r.bad = "the gradient of " + p + " is not finite";
  if (!r.bad.empty()) return r;
  optimizer.step(params);
  net.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  nn::visit_activation_quantizers(net, [](std::string_view, auto& q) { q.project(); });
  return r;
}

} // namespace bitgrad::train
