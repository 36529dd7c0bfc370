// Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay,
// with PyTorch's semantics (torch.optim.SGD, dampening 0).
//
// For each parameter p with gradient g, group lr `lr` and group decay `wd`:
//   g   = g + wd * p
//   buf = g                      on the parameter's first update (momentum > 0)
//   buf = momentum * buf + g     afterwards
//   d   = g + momentum * buf     nesterov
//   d   = buf                    plain momentum
//   d   = g                      momentum == 0
//   p   = p - lr * d
//
//   optim::sgd<float> opt({.lr = 0.1, .momentum = 0.9, .weight_decay = 5e-4});
//   opt.set_group(param_kind::bitwidth, {.lr = 0.01, .weight_decay = 0});
//   auto params = [&](auto&& f) { net.visit_parameters(f); };
//   opt.step(params);
//
// The element updates run after the visit, on the OpenMP threads for large steps (see step()).
// Parameters whose grad pointer is null are skipped (they keep their place in the state).
// See param_groups.hpp for groups and defaults (decay on weights only), state.hpp for the
// state's checks and binary form.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/kernels/optim_update.hpp>
#include <bitgrad/optim/param_groups.hpp>
#include <bitgrad/optim/state.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace bitgrad::optim {

struct sgd_options {
  double lr = 0.01;
  double momentum = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0; ///< L2 decay added to the gradient (weights only by default)
};

/// T: element type of the parameters (float or double).
template <class T>
class sgd {
public:
  using value_type = T;

  explicit sgd(const sgd_options& options = {})
      : options_(options), groups_(options.lr, options.weight_decay, "sgd"),
        state_("sgd", options.momentum > 0 ? 1 : 0) {
    groups_.check_non_negative("momentum", options.momentum);
    if (options.nesterov && options.momentum <= 0)
      throw config_error("sgd: nesterov momentum needs momentum > 0");
  }

  /// One update of every parameter the source visits: the visit gathers each parameter's
  /// constants, then the element updates run together (kernels/optim_update.hpp: on the OpenMP
  /// threads when the step is large, bitwise the same as on one thread).
  template <param_source<T> V>
  void step(V&& visit) {
    state_.bind(visit);
    tensors_.clear();
    std::size_t i = 0;
    visit([&](param_ref<T>& p) {
      slot<T>& s = state_.at(i++);
      if (p.grad == nullptr) return;
      sgd_update_params<T> k{};
      k.lr = static_cast<T>(groups_.lr_for(p.kind));
      k.decay = static_cast<T>(groups_.decay_for(p.kind));
      T* buf = nullptr;
      if (options_.momentum > 0) {
        state_.ensure_buffers(s); // zeros: the first update gives buf = g, as in torch
        buf = s.buffers[0].data();
        k.momentum = static_cast<T>(options_.momentum);
        k.nesterov = options_.nesterov;
      }
      ++s.steps;
      tensors_.push_back({p.value, p.grad, buf, nullptr, p.size, k});
    });
    update_tensors(
        tensors_,
        [](const tensor& x, std::size_t b, std::size_t e) {
          sgd_update(e - b, x.w + b, x.g + b, x.state0 ? x.state0 + b : nullptr, x.params);
        },
        bitgrad::detail::sgd_parallel_min());
  }

  void set_group(param_kind kind, const group_options& options) {
    groups_.set_group(kind, options);
  }
  const param_groups& groups() const { return groups_; }

  /// The base learning rate (a schedule sets it before each step or epoch).
  double lr() const { return groups_.lr(); }
  void set_lr(double lr) { groups_.set_lr(lr); }
  const sgd_options& options() const { return options_; }

  /// Per-parameter state in visitation order (empty before the first step).
  const std::vector<slot<T>>& state() const { return state_.slots(); }

  /// Writes the base lr and the momentum buffers (binary form in state.hpp).
  void save(io::byte_writer& out) const { state_.save(out, groups_.lr()); }
  /// Restores what save() wrote (format_error naming the reader's source, offset and field);
  /// the optimizer is unchanged on error.
  void load(io::byte_reader& in) { groups_.set_lr(state_.load(in)); }

private:
  sgd_options options_;
  param_groups groups_;
  optimizer_state<T> state_;
  using tensor = optim_tensor<T, sgd_update_params<T>>;
  std::vector<tensor> tensors_; // this step's updates (kept to reuse the allocation)
};

} // namespace bitgrad::optim
