// step_bits: "Mixed precision DNNs" (Uhlich et al., ICLR 2020), the U3 parameterisation. Each
// group learns a step d and a range q_max; the bitwidth is derived:
//
//   Q(w) = d round(clamp(w, -q_max, q_max) / d)
//   b    = log2(q_max / d + 1) + 1        (so that L = 2^(b-1) - 1 = q_max / d levels per side)
//
// Gradients (straight-through: round treated as the identity), with x = clamp(w,-q_max,q_max)/d:
//   dQ/dw     = [|w| <= q_max]
//   dQ/dd     = round(x) - x              (= (Q - w) / d inside the range)
//   dQ/dq_max = [|w| > q_max] sign(w)
// Size: size_bits = sum_g n_g b_g + 40 groups with b continuous while training, so the size
// gradient reaches d and q_max through b:
//   db/dq_max = 1 / ((q_max + d) ln 2),   db/dd = -q_max / (d (q_max + d) ln 2).
// Bounds: project() keeps d >= scale_floor and b inside [b_min, b_max] by clamping
// q_max / d to [2^(b_min-1) - 1, 2^(b_max-1) - 1]. b_min must be >= 2: at b = 1 this
// parameterisation has no level but zero (use frac_bits for 1-bit groups).
// Initialisation at bind(): q_max = max|w_g|, d = q_max / (2^(b_init-1) - 1), so b = b_init.
// Freeze: k = round / ceil / budget-greedy of the derived b, clamped to the bounds; then
// q_max := d (2^(k-1) - 1) and Q is exactly the integer grid d * clamp(round(w/d), -L_k, L_k).
// After freeze only d trains (LSQ dQ/dd of kernels/ref/quantize.hpp); q_max follows d.
// Parameters visited: "step" and "qmax" (kind scale), fixed order.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/quant/budget.hpp>
#include <bitgrad/quant/groups.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <optional>
#include <string>
#include <vector>

namespace bitgrad::quant {

template <class T>
class step_bits {
public:
  using value_type = T;
  static constexpr bool is_identity = false;
  static constexpr const char* policy_name = "step_bits";

  struct options {
    /// Channels per group: 1 = per channel, per_tensor = one group; must be <= channels.
    std::size_t group_size = 1;
    double b_min = 2;
    double b_max = 8;
    /// Initial (derived) bitwidth; unset = b_max - 0.5.
    std::optional<double> b_init{};
  };

  step_bits() : step_bits(options{}) {}
  explicit step_bits(const options& opt) : opt_(opt) {
    detail::check_bit_range(policy_name, opt.b_min, opt.b_max, initial_bits());
    if (opt.b_min < 2)
      throw config_error(std::string(policy_name) +
                         ": expected b_min >= 2 (b = 1 leaves only the zero level), got " +
                         std::to_string(opt.b_min));
  }

  const options& opts() const { return opt_; }
  double b_min() const { return opt_.b_min; }
  double b_max() const { return opt_.b_max; }

  void bind(std::size_t channels, std::size_t per_channel, const T* w) {
    layout_ = group_layout(policy_name, channels, per_channel, opt_.group_size);
    const std::size_t n = layout_.groups();
    step_.assign(n, T(0));
    qmax_.assign(n, T(0));
    step_grad_.assign(n, T(0));
    qmax_grad_.assign(n, T(0));
    kbits_.clear();
    frozen_ = false;
    const T levels = static_cast<T>(std::exp2(initial_bits() - 1) - 1);
    for (std::size_t g = 0; g < n; ++g) {
      const auto st = bitgrad::quant_abs_stats(layout_.count(g), w + layout_.offset(g));
      qmax_[g] = std::max(st.max_abs, scale_floor<T> * levels);
      step_[g] = std::max(qmax_[g] / levels, scale_floor<T>);
    }
  }

  void forward(const T* w, T* wq, bool /*training*/) {
    detail::check_bound(policy_name, layout_.weight_count());
    for (std::size_t g = 0; g < layout_.groups(); ++g) {
      const std::size_t off = layout_.offset(g), n = layout_.count(g);
      if (frozen_)
        bitgrad::quant_fprop(n, w + off, wq + off, frozen_grid(g));
      else
        bitgrad::step_quant_fprop(n, w + off, wq + off, step_[g], qmax_[g]);
    }
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    for (std::size_t g = 0; g < layout_.groups(); ++g) {
      const std::size_t off = layout_.offset(g), n = layout_.count(g);
      if (frozen_) {
        step_grad_[g] +=
            bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, frozen_grid(g));
        continue;
      }
      const auto s =
          bitgrad::step_quant_bprop(n, w + off, grad_wq + off, grad_w + off, step_[g], qmax_[g]);
      step_grad_[g] += s.d_step;
      qmax_grad_[g] += s.d_qmax;
    }
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> d{"step", step_.data(), step_grad_.data(), step_.size(), param_kind::scale};
    f(d);
    param_ref<T> q{"qmax", qmax_.data(), qmax_grad_.data(), qmax_.size(), param_kind::scale};
    f(q);
  }

  void zero_grad() {
    std::fill(step_grad_.begin(), step_grad_.end(), T(0));
    std::fill(qmax_grad_.begin(), qmax_grad_.end(), T(0));
  }

  double size_bits() const {
    double total = 0;
    const auto b = group_bits();
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      total += static_cast<double>(layout_.count(g)) * b[g] + group_overhead_bits;
    return total;
  }

  /// Accumulates dL/dsize * n_g * db_g/d(d, q_max) (nothing once frozen).
  void add_size_gradient(T dloss_dsize) {
    if (frozen_) return;
    for (std::size_t g = 0; g < layout_.groups(); ++g) {
      const double d = step_[g], q = qmax_[g], n = static_cast<double>(layout_.count(g));
      const double db_dq = 1.0 / ((q + d) * std::numbers::ln2);
      const double db_dd = -q / (d * (q + d) * std::numbers::ln2);
      qmax_grad_[g] += dloss_dsize * static_cast<T>(n * db_dq);
      step_grad_[g] += dloss_dsize * static_cast<T>(n * db_dd);
    }
  }

  void project() {
    const T lo = static_cast<T>(std::exp2(opt_.b_min - 1) - 1);
    const T hi = static_cast<T>(std::exp2(opt_.b_max - 1) - 1);
    for (std::size_t g = 0; g < step_.size(); ++g) {
      step_[g] = std::max(step_[g], scale_floor<T>);
      if (frozen_)
        qmax_[g] = step_[g] * static_cast<T>(level_limit(kbits_[g]));
      else
        qmax_[g] = std::clamp(qmax_[g], lo * step_[g], hi * step_[g]);
    }
  }

  void freeze(rounding r) {
    detail::check_bound(policy_name, layout_.weight_count());
    detail::check_finite_bits(policy_name, group_bits());
    std::vector<int> k(layout_.groups());
    if (r == rounding::budget_aware) {
      std::vector<budget_item> items;
      detail::append_items(*this, items);
      k = round_to_budget(items, size_bits() - group_overhead_bits * static_cast<double>(k.size()));
    } else {
      const auto b = group_bits();
      const int lo = static_cast<int>(std::ceil(opt_.b_min));
      const int hi = static_cast<int>(std::floor(opt_.b_max));
      for (std::size_t g = 0; g < k.size(); ++g) {
        // A relative slack of 1e-9 keeps an exactly-integer b (up to log2 rounding) integer.
        const double v = r == rounding::up ? std::ceil(b[g] - 1e-9) : std::floor(b[g] + 0.5);
        k[g] = std::clamp(static_cast<int>(v), lo, hi);
      }
    }
    freeze_to(k);
  }

  /// Freezes at explicit integer bitwidths (each in [2, 16]): q_max := d (2^(k-1) - 1).
  void freeze_to(const std::vector<int>& bits) {
    detail::check_bound(policy_name, layout_.weight_count());
    detail::check_count(policy_name, "bitwidths (one per group)", layout_.groups(), bits.size());
    for (int k : bits) {
      detail::check_integer_bits(policy_name, k);
      if (k < 2)
        throw config_error(std::string(policy_name) + ": expected bitwidths >= 2, got " +
                           std::to_string(k));
    }
    kbits_ = bits;
    frozen_ = true;
    for (std::size_t g = 0; g < bits.size(); ++g) {
      qmax_[g] = step_[g] * static_cast<T>(level_limit(bits[g]));
      qmax_grad_[g] = T(0);
    }
  }

  bool frozen() const { return frozen_; }
  std::size_t groups() const { return layout_.groups(); }
  std::size_t group_size() const { return layout_.group_size(); }
  std::size_t weight_count() const { return layout_.weight_count(); }
  std::size_t group_weight_count(std::size_t g) const { return layout_.count(g); }
  const group_layout& layout() const { return layout_; }

  /// Derived b = log2(q_max / d + 1) + 1 while training; the integer k once frozen.
  std::vector<double> group_bits() const {
    std::vector<double> b(layout_.groups());
    for (std::size_t g = 0; g < b.size(); ++g)
      b[g] = frozen_
                 ? static_cast<double>(kbits_[g])
                 : std::log2(static_cast<double>(qmax_[g]) / static_cast<double>(step_[g]) + 1) + 1;
    return b;
  }

  double compression_ratio() const {
    return 32.0 * static_cast<double>(weight_count()) / size_bits();
  }

  // ---- export (after freeze) ------------------------------------------------------------
  std::vector<int> frozen_bits() const {
    detail::check_frozen(policy_name, frozen_, "frozen_bits()");
    return kbits_;
  }
  /// The step d of each group (w is not needed: scales are parameters).
  std::vector<T> group_scales(const T* /*w*/) const {
    detail::check_frozen(policy_name, frozen_, "group_scales()");
    return step_;
  }
  void codes(const T* w, std::int32_t* out) const {
    detail::check_frozen(policy_name, frozen_, "codes()");
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      bitgrad::quant_codes(layout_.count(g), w + layout_.offset(g), out + layout_.offset(g),
                           frozen_grid(g));
  }

private:
  double initial_bits() const { return opt_.b_init ? *opt_.b_init : opt_.b_max - 0.5; }
  quant_grid<T> frozen_grid(std::size_t g) const { return make_grid(kbits_[g], step_[g]); }

  options opt_;
  group_layout layout_;
  std::vector<T> step_, qmax_, step_grad_, qmax_grad_;
  std::vector<int> kbits_;
  bool frozen_ = false;
};

static_assert(quantizer<step_bits<float>>);
static_assert(quantizer<step_bits<double>>);
static_assert(budget_quantizer<step_bits<float>>);

} // namespace bitgrad::quant
