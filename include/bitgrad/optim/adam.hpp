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
// Parameters whose grad pointer is null are skipped and their t does not advance. See
// param_groups.hpp for groups and defaults (decay on weights only), state.hpp for the state's
// checks and binary form (two buffers per parameter: m then v).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/optim/param_groups.hpp>
#include <bitgrad/optim/state.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <ostream>
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

  /// One update of every parameter the source visits.
  template <param_source<T> V>
  void step(V&& visit) {
    state_.bind(visit);
    std::size_t i = 0;
    const T b1 = static_cast<T>(options_.beta1);
    const T b2 = static_cast<T>(options_.beta2);
    const T c1 = static_cast<T>(1.0 - options_.beta1); // in double first, as torch does
    const T c2 = static_cast<T>(1.0 - options_.beta2);
    const T eps = static_cast<T>(options_.eps);
    visit([&](param_ref<T>& p) {
      slot<T>& s = state_.at(i++);
      if (p.grad == nullptr) return;
      state_.ensure_buffers(s);
      const std::uint64_t t = ++s.steps;
      const double lr = groups_.lr_for(p.kind);
      const T wd = static_cast<T>(groups_.decay_for(p.kind));
      const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(t));
      const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(t));
      const T step_size = static_cast<T>(lr / bc1);
      const T sqrt_bc2 = static_cast<T>(std::sqrt(bc2));
      const T keep = static_cast<T>(1.0 - lr * static_cast<double>(wd));
      T* w = p.value;
      const T* gp = p.grad;
      T* m = s.buffers[0].data();
      T* v = s.buffers[1].data();
      const bool shared = shared_v_[kind_index(p.kind)] && p.size > 0;
      T mean_square = 0;
      if (shared) {
        double sum = 0;
        for (std::size_t k = 0, n = p.size; k < n; ++k) {
          const double g = static_cast<double>(Decoupled ? gp[k] : gp[k] + wd * w[k]);
          sum += g * g;
        }
        mean_square = static_cast<T>(sum / static_cast<double>(p.size));
      }
      for (std::size_t k = 0, n = p.size; k < n; ++k) {
        T g = gp[k];
        if constexpr (Decoupled)
          w[k] *= keep;
        else
          g += wd * w[k];
        m[k] = b1 * m[k] + c1 * g;
        v[k] = b2 * v[k] + c2 * (shared ? mean_square : g * g);
        w[k] -= step_size * m[k] / (std::sqrt(v[k]) / sqrt_bc2 + eps);
      }
    });
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
  void save(std::ostream& out) const { state_.save(out, groups_.lr()); }
  /// Restores what save() wrote; `source` names the stream in format_error messages.
  void load(std::istream& in, const std::string& source = std::string(tag) + " state") {
    groups_.set_lr(state_.load(in, source));
  }

private:
  options_type options_;
  param_groups groups_;
  optimizer_state<T> state_;
  std::array<bool, param_kind_count> shared_v_{};
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
