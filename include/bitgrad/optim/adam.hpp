// Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight decay), with
// PyTorch's semantics (torch.optim.Adam / torch.optim.AdamW, amsgrad off).
//
// For each parameter p with gradient g, group lr `lr`, group decay `wd`, and t the number of
// updates this parameter has had including this one (t = 1 on its first update):
//   adam:   g = g + wd * p                 adamw:  p = p * (1 - lr * wd)
//   m = beta1 * m + (1 - beta1) * g                  (m, v start at 0)
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// A kind with a shared second moment (set_shared_second_moment) feeds every element of a
// tensor the tensor's mean square gradient instead of its own:
//   v_i = beta2 * v_i + (1 - beta2) * (1/n) sum_j g_j^2        (so every v_i of it is equal)
// The elements then keep the relative sizes of their gradients (one step size per tensor, as
// SGD's within the tensor) while the tensor's scale stays normalised as Adam's. Used for
// bitwidths, whose gradient size carries the information (see train/trainer.hpp).
//
//   optim::adamw<float> opt({.lr = 1e-3, .weight_decay = 0.05}); // adamw default decay: 0.01
//   opt.set_group(param_kind::bitwidth, {.lr = 1e-2, .weight_decay = 0});
//   opt.step([&](auto&& f) { net.visit_parameters(f); });
//
// The element updates run after the visit, on the OpenMP threads for large steps (see step()).
// Parameters whose grad pointer is null are skipped and their t does not advance. See
// param_groups.hpp for groups and defaults (decay on weights only), state.hpp for the state's
// checks and binary form (two buffers per parameter: m then v).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/kernels/optim_update.hpp>
#include <bitgrad/optim/param_groups.hpp>
#include <bitgrad/optim/state.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace bitgrad::optim {

struct adam_options {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0; ///< L2 decay added to the gradient (weights only by default)
};

/// AdamW's options: as adam_options, with PyTorch's default decoupled decay of 0.01.
struct adamw_options {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01; ///< decoupled decay, p *= 1 - lr * wd (weights only by default)
};

namespace detail {

/// Adam and AdamW; Decoupled selects AdamW.
template <class T, bool Decoupled>
class adam_impl {
public:
  using value_type = T;
  using options_type = std::conditional_t<Decoupled, adamw_options, adam_options>;
  static constexpr const char* tag = Decoupled ? "adamw" : "adam";

  explicit adam_impl(const options_type& options)
      : options_(options), groups_(options.lr, options.weight_decay, tag), state_(tag, 2) {
    auto beta_ok = [](double b) { return b >= 0.0 && b < 1.0; };
    if (!beta_ok(options.beta1) || !beta_ok(options.beta2))
      throw config_error(std::string(tag) + ": betas must be in [0, 1), got " +
                         std::to_string(options.beta1) + ", " + std::to_string(options.beta2));
    groups_.check_non_negative("eps", options.eps);
  }

  /// One update of every parameter the source visits. The visit gathers each parameter's
  /// constants (and, for a shared second moment, its mean square, serially in double); the
  /// element updates then run together (kernels/optim_update.hpp: on the OpenMP threads when the
  /// step is large, bitwise the same as on one thread).
  template <param_source<T> V>
  void step(V&& visit) {
    state_.bind(visit);
    tensors_.clear();
    std::size_t i = 0;
    visit([&](param_ref<T>& p) {
      slot<T>& s = state_.at(i++);
      if (p.grad == nullptr) return;
      state_.ensure_buffers(s);
      const std::uint64_t t = ++s.steps;
      const double lr = groups_.lr_for(p.kind);
      const T wd = static_cast<T>(groups_.decay_for(p.kind));
      adam_update_params<T> k{};
      k.beta1 = static_cast<T>(options_.beta1);
      k.beta2 = static_cast<T>(options_.beta2);
      k.one_minus_beta1 = static_cast<T>(1.0 - options_.beta1); // in double first, as torch does
      k.one_minus_beta2 = static_cast<T>(1.0 - options_.beta2);
      k.eps = static_cast<T>(options_.eps);
      k.step_size = static_cast<T>(lr / (1.0 - std::pow(options_.beta1, static_cast<double>(t))));
      k.sqrt_bc2 =
          static_cast<T>(std::sqrt(1.0 - std::pow(options_.beta2, static_cast<double>(t))));
      k.decoupled = Decoupled;
      k.decay = Decoupled ? T(0) : wd;
      k.keep = Decoupled ? static_cast<T>(1.0 - lr * static_cast<double>(wd)) : T(1);
      k.shared_second_moment = shared_v_[kind_index(p.kind)] && p.size > 0;
      if (k.shared_second_moment) {
        double sum = 0;
        for (std::size_t e = 0; e < p.size; ++e) {
          const double g = static_cast<double>(Decoupled ? p.grad[e] : p.grad[e] + wd * p.value[e]);
          sum += g * g;
        }
        k.mean_square = static_cast<T>(sum / static_cast<double>(p.size));
      }
      tensors_.push_back({p.value, p.grad, s.buffers[0].data(), s.buffers[1].data(), p.size, k});
    });
    update_tensors(
        tensors_,
        [](const tensor& x, std::size_t b, std::size_t e) {
          adam_update(e - b, x.w + b, x.g + b, x.state0 + b, x.state1 + b, x.params);
        },
        bitgrad::detail::adam_parallel_min());
  }

  /// Parameters of `kind` use one second moment per tensor (see the top of this file).
  void set_shared_second_moment(param_kind kind, bool shared = true) {
    shared_v_[kind_index(kind)] = shared;
  }
  bool shared_second_moment(param_kind kind) const { return shared_v_[kind_index(kind)]; }

  void set_group(param_kind kind, const group_options& options) {
    groups_.set_group(kind, options);
  }
  const param_groups& groups() const { return groups_; }

  /// The base learning rate (a schedule sets it before each step or epoch).
  double lr() const { return groups_.lr(); }
  void set_lr(double lr) { groups_.set_lr(lr); }
  const options_type& options() const { return options_; }

  /// Per-parameter state in visitation order (empty before the first step).
  const std::vector<slot<T>>& state() const { return state_.slots(); }

  /// Writes the base lr, each parameter's step count and moments (binary form in state.hpp).
  void save(io::byte_writer& out) const { state_.save(out, groups_.lr()); }
  /// Restores what save() wrote (format_error naming the reader's source, offset and field);
  /// the optimizer is unchanged on error.
  void load(io::byte_reader& in) { groups_.set_lr(state_.load(in)); }

private:
  options_type options_;
  param_groups groups_;
  optimizer_state<T> state_;
  std::array<bool, param_kind_count> shared_v_{};
  using tensor = optim_tensor<T, adam_update_params<T>>;
  std::vector<tensor> tensors_; // this step's updates (kept to reuse the allocation)
};

} // namespace detail

/// Adam with L2 weight decay added to the gradient. T: element type of the parameters.
template <class T>
class adam : public detail::adam_impl<T, false> {
public:
  explicit adam(const adam_options& options = {}) : detail::adam_impl<T, false>(options) {}
};

/// AdamW: weight decay decoupled from the gradient. T: element type of the parameters.
template <class T>
class adamw : public detail::adam_impl<T, true> {
public:
  explicit adamw(const adamw_options& options = {}) : detail::adam_impl<T, true>(options) {}
};

} // namespace bitgrad::optim
