// Parameter sources and per-kind parameter groups, shared by every optimizer.
//
// Words
//   parameter source  any callable `visit` such that visit(f) calls f(param_ref<T>&) once for
//                     every trainable tensor, always in the same order. A network's
//                     visit_parameters wrapped in a lambda is one:
//                         auto params = [&](auto&& f) { net.visit_parameters(f); };
//   slot              the optimizer's state for one parameter (momentum, Adam moments), kept in
//                     visitation order: slot i belongs to the i-th parameter visited.
//   base lr           the optimizer's learning rate, lr(); a schedule sets it with set_lr().
//   group             the options for one param_kind (weight, bias, bitwidth, scale, norm).
//
// Group options and their defaults
//   lr            absolute learning rate of the group, as of the optimizer's initial lr. It
//                 follows the schedule: the group's effective lr is group.lr * lr() / initial lr
//                 (as PyTorch schedulers scale every group's initial lr by the same factor).
//                 When the initial lr is 0 the absolute lr is used as it is.
//   lr_scale      multiplier of the base lr (used when `lr` is not set); default 1.
//   weight_decay  the group's decay; when not set, the optimizer's weight_decay applies to
//                 param_kind::weight only, and bias, norm, bitwidth and scale get none.
//
//   opt.set_group(param_kind::bitwidth, {.lr = 0.01, .weight_decay = 0});
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>

#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>

namespace bitgrad::optim {

/// A parameter visitor that accepts anything (used to state the param_source concept).
template <class T>
struct param_sink {
  void operator()(param_ref<T>&) const {}
};

/// A callable that hands every trainable tensor of element type T to its argument.
template <class V, class T>
concept param_source = std::invocable < V&,
        param_sink<T>
& > ;

/// Options of one parameter group (see the header comment for their meaning).
struct group_options {
  std::optional<double> lr{};           ///< absolute lr at the initial base lr
  double lr_scale = 1.0;                ///< multiplier of the base lr when `lr` is not set
  std::optional<double> weight_decay{}; ///< unset: optimizer's decay for weights, 0 otherwise
};

inline constexpr std::size_t param_kind_count = 5;

inline std::size_t kind_index(param_kind kind) {
  return static_cast<std::size_t>(kind);
}

/// A set of param_kinds, for filtering (gradient clipping).
class kind_set {
public:
  /// Every kind.
  kind_set() : bits_((1u << param_kind_count) - 1u) {}
  kind_set(std::initializer_list<param_kind> kinds) : bits_(0) {
    for (param_kind k : kinds) bits_ |= 1u << kind_index(k);
  }
  bool contains(param_kind kind) const { return (bits_ >> kind_index(kind)) & 1u; }

private:
  unsigned bits_;
};

/// The per-kind options of an optimizer and the rules that turn them into an lr and a decay.
class param_groups {
public:
  param_groups(double lr, double weight_decay, const char* who)
      : who_(who), initial_lr_(lr), lr_(lr), weight_decay_(weight_decay) {
    check_non_negative("lr", lr);
    check_non_negative("weight_decay", weight_decay);
  }

  /// Replaces the options of every parameter of `kind`.
  void set_group(param_kind kind, const group_options& options) {
    if (options.lr) check_non_negative("group lr", *options.lr);
    check_non_negative("group lr_scale", options.lr_scale);
    if (options.weight_decay) check_non_negative("group weight_decay", *options.weight_decay);
    groups_[kind_index(kind)] = options;
  }
  const group_options& group(param_kind kind) const { return groups_[kind_index(kind)]; }

  /// The base learning rate.
  double lr() const { return lr_; }
  void set_lr(double lr) {
    check_non_negative("lr", lr);
    lr_ = lr;
  }
  /// The lr given at construction (absolute group lrs are relative to it).
  double initial_lr() const { return initial_lr_; }
  double weight_decay() const { return weight_decay_; }

  /// The learning rate a parameter of `kind` is updated with now.
  double lr_for(param_kind kind) const {
    const group_options& g = groups_[kind_index(kind)];
    if (g.lr) return initial_lr_ > 0 ? *g.lr * (lr_ / initial_lr_) : *g.lr;
    return lr_ * g.lr_scale;
  }
  /// The weight decay a parameter of `kind` is updated with.
  double decay_for(param_kind kind) const {
    const group_options& g = groups_[kind_index(kind)];
    if (g.weight_decay) return *g.weight_decay;
    return kind == param_kind::weight ? weight_decay_ : 0.0;
  }

  void check_non_negative(const char* what, double value) const {
    if (!(value >= 0.0) || !std::isfinite(value))
      throw config_error(std::string(who_) + ": " + what + " must be finite and >= 0, got " +
                         std::to_string(value));
  }
  const char* who() const { return who_; }

private:
  const char* who_;
  double initial_lr_;
  double lr_;
  double weight_decay_;
  std::array<group_options, param_kind_count> groups_{};
};

} // namespace bitgrad::optim
