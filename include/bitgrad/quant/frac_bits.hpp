// frac_bits: Differentiable Fine-grained Quantization (Cheng et al. 2018), bitgrad's default
// policy. Each group has a real bitwidth b in [b_min, b_max] and quantizes with the linear
// mix of the two neighbouring integer grids:
//
//   k_lo = floor(b), k_hi = k_lo + 1, f = b - k_lo   (at an integer b: k_lo = b, f = 0)
//   Q_b(w) = (1 - f) Q_klo(w) + f Q_khi(w),   Q_k(w) = s_k clamp(round(w / s_k), -L_k, L_k)
//   L_k = 2^(k-1) - 1; k = 1 is the sign grid Q_1(w) = s_1 sign(w) (sign(0) = +1).
//   (w / s_k is computed as w * (1 / s_k), the same in every kernel: kernels/ref/quantize.hpp.)
//
// Gradients (backward):
//   dL/db   = sum_g dL/dQ (Q_khi - Q_klo)   exact for the relaxation; at an integer b this is the
//             right derivative (k_lo = b, k_hi = b + 1), so learning does not stall when b_init
//             or a projected b is an integer.
//   dL/dw   = dL/dQ ((1-f) [|w/s_klo| <= L_klo] + f [|w/s_khi| <= L_khi])   (STE, zero where
//             clipped)
//   scales  scale_mode::max_abs (default): s_k = max|w_g| / L_k for k >= 2 and
//             s_1 = mean|w_g| (the L2-optimal sign scale; max|w| would send every weight to
//             +-max). Scales are treated as constants: no gradient flows through max / mean.
//           scale_mode::learned: one trained range a_g per group (parameter "qmax", kind
//             scale), s_k = a_g / L_k (s_1 = a_g); initialised to max|w_g| at bind().
//             dQ_k/da = (1 / L_k) dQ_k/ds_k with the LSQ straight-through dQ/ds of
//             kernels/ref/quantize.hpp; no gradient rescaling.
//
// Parameters visited: "bits" (kind bitwidth, one per group), and "qmax" (kind scale) in learned
// mode. The order is fixed for the quantizer's lifetime, freeze included; after freeze the
// "bits" values are ignored (and reset by project()) and receive no gradient.
//
// Size: size_bits = sum_g n_g b_g + 40 groups (b real while training, integer once frozen);
// d size / d b_g = n_g.
// Freeze: nearest = round half up, up = ceil, budget_aware = the greedy of quant/budget.hpp on
// this tensor alone with its own current (real) size as the target. The integer bitwidths are
// clamped to [ceil(b_min), floor(b_max)]. A non-finite bitwidth (a diverged run) is a
// config_error naming the group, in freeze and in forward.
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
#include <optional>
#include <string>
#include <vector>

namespace bitgrad::quant {

template <class T>
class frac_bits {
public:
  using value_type = T;
  static constexpr bool is_identity = false;
  static constexpr const char* policy_name = "frac_bits";

  struct options {
    /// Channels per group: 1 = per channel, per_tensor = one group; must be <= channels.
    std::size_t group_size = 1;
    double b_min = 2;
    double b_max = 8;
    /// Initial bitwidth of every group; unset = b_max - 0.5 (non-integer: both grids active).
    std::optional<double> b_init{};
    scale_mode scale = scale_mode::max_abs;
  };

  frac_bits() : frac_bits(options{}) {}
  explicit frac_bits(const options& opt) : opt_(opt) {
    detail::check_bit_range(policy_name, opt.b_min, opt.b_max, initial_bits());
  }

  const options& opts() const { return opt_; }
  double b_min() const { return opt_.b_min; }
  double b_max() const { return opt_.b_max; }

  void bind(std::size_t channels, std::size_t per_channel, const T* w) {
    layout_ = group_layout(policy_name, channels, per_channel, opt_.group_size);
    const std::size_t n = layout_.groups();
    bits_.assign(n, static_cast<T>(initial_bits()));
    bits_grad_.assign(n, T(0));
    range_.assign(n, T(0));
    range_grad_.assign(n, T(0));
    stats_.assign(n, abs_stats<T>{T(0), T(0)});
    last_.assign(n, group_state{});
    kbits_.clear();
    frozen_ = false;
    for (std::size_t g = 0; g < n; ++g) {
      const auto st = bitgrad::quant_abs_stats(layout_.count(g), w + layout_.offset(g));
      range_[g] = std::max(st.max_abs, scale_floor<T>);
    }
  }

  void forward(const T* w, T* wq, bool /*training*/) {
    detail::check_bound(policy_name, layout_.weight_count());
    for (std::size_t g = 0; g < layout_.groups(); ++g) {
      const std::size_t off = layout_.offset(g), n = layout_.count(g);
      if (opt_.scale == scale_mode::max_abs) stats_[g] = bitgrad::quant_abs_stats(n, w + off);
      group_state& st = last_[g] = state(g);
      if (st.f == T(0))
        bitgrad::quant_fprop(n, w + off, wq + off, st.lo);
      else
        bitgrad::frac_quant_fprop(n, w + off, wq + off, st.lo, st.hi, st.f);
    }
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    for (std::size_t g = 0; g < layout_.groups(); ++g) {
      const std::size_t off = layout_.offset(g), n = layout_.count(g);
      const group_state& st = last_[g];
      if (frozen_) {
        const T ds = bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, st.lo);
        range_grad_[g] += ds / st.lo.limit;
        continue;
      }
      // max_abs scales get no gradient: the kernel skips their sums.
      const auto s = bitgrad::frac_quant_bprop(n, w + off, grad_wq + off, grad_w + off, st.lo,
                                               st.hi, st.f, opt_.scale == scale_mode::learned);
      bits_grad_[g] += s.d_frac;
      // s_k = a / L_k  =>  dQ/da = (1-f) dQ_lo/ds_lo / L_lo + f dQ_hi/ds_hi / L_hi
      range_grad_[g] +=
          (T(1) - st.f) * s.d_scale_lo / st.lo.limit + st.f * s.d_scale_hi / st.hi.limit;
    }
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> bits{"bits", bits_.data(), bits_grad_.data(), bits_.size(), param_kind::bitwidth};
    f(bits);
    if (opt_.scale == scale_mode::learned) {
      param_ref<T> r{"qmax", range_.data(), range_grad_.data(), range_.size(), param_kind::scale};
      f(r);
    }
  }

  void zero_grad() {
    std::fill(bits_grad_.begin(), bits_grad_.end(), T(0));
    std::fill(range_grad_.begin(), range_grad_.end(), T(0));
  }

  double size_bits() const {
    double total = 0;
    const auto b = group_bits();
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      total += static_cast<double>(layout_.count(g)) * b[g] + group_overhead_bits;
    return total;
  }

  /// bits_grad_g += dL/dsize * n_g (nothing once frozen).
  void add_size_gradient(T dloss_dsize) {
    if (frozen_) return;
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      bits_grad_[g] += dloss_dsize * static_cast<T>(layout_.count(g));
  }

  void project() {
    for (std::size_t g = 0; g < bits_.size(); ++g) {
      bits_[g] = frozen_
                     ? static_cast<T>(kbits_[g])
                     : std::clamp(bits_[g], static_cast<T>(opt_.b_min), static_cast<T>(opt_.b_max));
      range_[g] = std::max(range_[g], scale_floor<T>);
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
      const int lo = static_cast<int>(std::ceil(opt_.b_min));
      const int hi = static_cast<int>(std::floor(opt_.b_max));
      for (std::size_t g = 0; g < k.size(); ++g) {
        const double b = static_cast<double>(bits_[g]);
        const double v = r == rounding::up ? std::ceil(b) : std::floor(b + 0.5);
        k[g] = std::clamp(static_cast<int>(v), lo, hi);
      }
    }
    freeze_to(k);
  }

  /// Freezes at explicit integer bitwidths, one per group, each in [1, 16].
  void freeze_to(const std::vector<int>& bits) {
    detail::check_bound(policy_name, layout_.weight_count());
    detail::check_count(policy_name, "bitwidths (one per group)", layout_.groups(), bits.size());
    for (int k : bits) detail::check_integer_bits(policy_name, k);
    kbits_ = bits;
    frozen_ = true;
    for (std::size_t g = 0; g < bits.size(); ++g) {
      bits_[g] = static_cast<T>(bits[g]);
      bits_grad_[g] = T(0);
    }
  }

  bool frozen() const { return frozen_; }
  std::size_t groups() const { return layout_.groups(); }
  std::size_t group_size() const { return layout_.group_size(); }
  std::size_t weight_count() const { return layout_.weight_count(); }
  std::size_t group_weight_count(std::size_t g) const { return layout_.count(g); }
  const group_layout& layout() const { return layout_; }

  std::vector<double> group_bits() const {
    std::vector<double> b(layout_.groups());
    for (std::size_t g = 0; g < b.size(); ++g)
      b[g] = frozen_ ? static_cast<double>(kbits_[g]) : static_cast<double>(bits_[g]);
    return b;
  }

  /// 32 * weights / size_bits.
  double compression_ratio() const {
    return 32.0 * static_cast<double>(weight_count()) / size_bits();
  }

  // ---- export (after freeze) ------------------------------------------------------------
  std::vector<int> frozen_bits() const {
    detail::check_frozen(policy_name, frozen_, "frozen_bits()");
    return kbits_;
  }

  /// The step of each group's grid for weights w (max_abs scales depend on w).
  std::vector<T> group_scales(const T* w) const {
    detail::check_frozen(policy_name, frozen_, "group_scales()");
    std::vector<T> s(layout_.groups());
    for (std::size_t g = 0; g < s.size(); ++g) s[g] = frozen_grid(g, w).scale;
    return s;
  }

  /// Integer codes: code * group_scales(w)[g] == forward(w) exactly, element by element.
  void codes(const T* w, std::int32_t* out) const {
    detail::check_frozen(policy_name, frozen_, "codes()");
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      bitgrad::quant_codes(layout_.count(g), w + layout_.offset(g), out + layout_.offset(g),
                           frozen_grid(g, w));
  }

private:
  struct group_state {
    quant_grid<T> lo{T(1), T(1), false};
    quant_grid<T> hi{T(1), T(1), false};
    T f = 0;
  };

  double initial_bits() const { return opt_.b_init ? *opt_.b_init : opt_.b_max - 0.5; }

  /// The grid at integer bitwidth k for group g (max_abs: from stats st).
  quant_grid<T> grid(std::size_t g, int k, const abs_stats<T>& st) const {
    const T lim = static_cast<T>(level_limit(k));
    T s;
    if (opt_.scale == scale_mode::learned)
      s = range_[g] / lim;
    else if (k == 1)
      s = st.sum_abs / static_cast<T>(layout_.count(g));
    else
      s = st.max_abs / lim;
    return make_grid(k, std::max(s, scale_floor<T>));
  }

  group_state state(std::size_t g) const {
    group_state st;
    if (frozen_) {
      st.lo = grid(g, kbits_[g], stats_[g]);
      st.hi = st.lo;
      return st;
    }
    const T b = bits_[g];
    if (!std::isfinite(b)) // the cast below would be undefined
      detail::check_finite_bits(policy_name, group_bits());
    const T k_lo = std::floor(b);
    st.f = b - k_lo;
    st.lo = grid(g, static_cast<int>(k_lo), stats_[g]);
    st.hi = grid(g, static_cast<int>(k_lo) + 1, stats_[g]);
    return st;
  }

  quant_grid<T> frozen_grid(std::size_t g, const T* w) const {
    abs_stats<T> st{T(0), T(0)};
    if (opt_.scale == scale_mode::max_abs)
      st = bitgrad::quant_abs_stats(layout_.count(g), w + layout_.offset(g));
    return grid(g, kbits_[g], st);
  }

  options opt_;
  group_layout layout_;
  std::vector<T> bits_, bits_grad_;
  std::vector<T> range_, range_grad_;
  std::vector<abs_stats<T>> stats_;
  std::vector<group_state> last_;
  std::vector<int> kbits_;
  bool frozen_ = false;
};

static_assert(quantizer<frac_bits<float>>);
static_assert(quantizer<frac_bits<double>>);
static_assert(budget_quantizer<frac_bits<float>>);

} // namespace bitgrad::quant
