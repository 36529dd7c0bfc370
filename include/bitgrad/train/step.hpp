// One training step, the same for a hand-written loop (examples/quickstart.cpp) and the trainer
// (train/trainer.hpp, which the studies use):
//
//   zero_grad -> logits = net.forward(x) -> l = loss.forward(logits, y) -> net.backward(dL/dlogits)
//   -> [size penalty: d(penalty)/d(bitwidths) added to the bitwidth gradients]
//   -> [hardware-cost penalties (quant::cost_penalties: BOPs, peak activation memory): their
//      gradients added to the weight and activation bitwidths they depend on]
//   -> if l and every gradient are finite: optimizer.step, then every quantizer projects its
//      parameters back into bounds (bitwidths into [b_min, b_max], ...): the weight quantizers
//      and the activation quantizers (nn/activation_quant.hpp) alike
//
// A step with a non-finite loss or gradient changes no parameter: it would turn weights and
// bitwidths into NaN. The caller decides what to do with it (stop naming the step, or skip the
// batch and count it): step_result::bad says what was not finite.
#pragma once

#include <bitgrad/core/tensor.hpp>
#include <bitgrad/nn/activation_quant.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/optim/clip.hpp>
#include <bitgrad/quant/costs.hpp>
#include <bitgrad/quant/penalty.hpp>

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
  /// Empty when the optimizer stepped; otherwise what was not finite ("the loss is not finite",
  /// "the gradient of <parameter> is not finite") and no parameter changed.
  std::string bad;
};

/// One step of `net` on the batch (x, y): forward, loss, backward, the size penalty's gradient
/// when `penalty` is set, then (all finite) `optimizer.step` and the quantizers' projection.
/// The optimizer's learning rate is the caller's (set it from a schedule before the step).
/// `costs`: the hardware-cost penalties, their gradients added after the size penalty's.
template <class Net, classification_loss<typename Net::value_type> Loss, class Optimizer>
step_result<typename Net::value_type>
train_step(Net& net, Loss& loss, Optimizer& optimizer, const typename Net::input_type& x,
           const std::vector<std::int32_t>& y, const quant::size_penalty* penalty = nullptr,
           const quant::cost_penalties* costs = nullptr) {
  using T = typename Net::value_type;
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  auto quantizers = [&](auto&& f) { net.visit_quantizers(f); };
  step_result<T> r;
  net.zero_grad();
  const auto& logits = net.forward(x);
  r.loss = loss.forward(logits, y);
  r.correct = nn::count_correct(logits, y);
  net.backward(loss.backward());
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
