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
#include <bitgrad/quant/group_quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bitgrad::quant {

template <class T>
class frac_bits : public group_quantizer<frac_bits<T>, T> {
  using core = group_quantizer<frac_bits<T>, T>;
  friend core;

public:
  static constexpr const char* policy_name = "frac_bits";
  static constexpr int lowest_bits = 1; ///< the sign grid

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
  explicit frac_bits(const options& opt) : core(opt.b_min, opt.b_max), opt_(opt) {
    detail::check_bit_range(policy_name, opt.b_min, opt.b_max, detail::initial_bits(opt));
  }

  const options& opts() const { return opt_; }

  void bind(std::size_t channels, std::size_t per_channel, const T* w) {
    const std::size_t n = this->core_bind(channels, per_channel, opt_.group_size);
    bits_.assign(n, static_cast<T>(detail::initial_bits(opt_)));
    bits_grad_.assign(n, T(0));
    range_.assign(n, T(0));
    range_grad_.assign(n, T(0));
    stats_.assign(n, abs_stats<T>{T(0), T(0)});
    last_.assign(n, group_state{});
    for (std::size_t g = 0; g < n; ++g) {
      const auto st = bitgrad::quant_abs_stats(this->layout_.count(g), w + this->layout_.offset(g));
      range_[g] = std::max(st.max_abs, scale_floor<T>);
    }
  }

  void forward(const T* w, T* wq, bool /*training*/) {
    this->check_bound();
    if (!this->frozen_) // state(g) below must not throw on a thread
      for (const T b : bits_)
        if (!std::isfinite(b)) detail::check_finite_bits(policy_name, this->group_bits());
    this->for_each_group([&](std::size_t g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      if (opt_.scale == scale_mode::max_abs) stats_[g] = bitgrad::quant_abs_stats(n, w + off);
      group_state& st = last_[g] = state(g);
      if (st.f == T(0))
        bitgrad::quant_fprop(n, w + off, wq + off, st.lo);
      else
        bitgrad::frac_quant_fprop(n, w + off, wq + off, st.lo, st.hi, st.f);
    });
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    this->for_each_group([&](std::size_t g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      const group_state& st = last_[g];
      if (this->frozen_) {
        const T ds = bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, st.lo);
        if (opt_.scale == scale_mode::learned) range_grad_[g] += ds / st.lo.limit;
        return;
      }
      // max_abs scales get no gradient: the kernel skips their sums.
      const auto s = bitgrad::frac_quant_bprop(n, w + off, grad_wq + off, grad_w + off, st.lo,
                                               st.hi, st.f, opt_.scale == scale_mode::learned);
      bits_grad_[g] += s.d_frac;
      // s_k = a / L_k  =>  dQ/da = (1-f) dQ_lo/ds_lo / L_lo + f dQ_hi/ds_hi / L_hi
      range_grad_[g] +=
          (T(1) - st.f) * s.d_scale_lo / st.lo.limit + st.f * s.d_scale_hi / st.hi.limit;
    });
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

private:
  struct group_state {
    quant_grid<T> lo{T(1), T(1), false};
    quant_grid<T> hi{T(1), T(1), false};
    T f = 0;
  };

  // ---- the core's hooks -----------------------------------------------------------------
  double real_bits(std::size_t g) const { return static_cast<double>(bits_[g]); }
  void freezing(const std::vector<int>& k) {
    for (std::size_t g = 0; g < k.size(); ++g) bits_[g] = static_cast<T>(k[g]);
    std::fill(bits_grad_.begin(), bits_grad_.end(), T(0));
  }
  quant_grid<T> frozen_grid(std::size_t g, const T* w) const {
    abs_stats<T> st{T(0), T(0)};
    if (opt_.scale == scale_mode::max_abs)
      st = bitgrad::quant_abs_stats(this->layout_.count(g), w + this->layout_.offset(g));
    return grid(g, this->kbits_[g], st);
  }

  /// The grid at integer bitwidth k for group g (max_abs: from stats st).
  quant_grid<T> grid(std::size_t g, int k, const abs_stats<T>& st) const {
    if (opt_.scale == scale_mode::learned)
      return make_grid(k, std::max(range_[g] / static_cast<T>(level_limit(k)), scale_floor<T>));
    return max_abs_grid(k, st, this->layout_.count(g));
  }

  group_state state(std::size_t g) const {
    group_state st;
    if (this->frozen_) {
      st.lo = grid(g, this->kbits_[g], stats_[g]);
      st.hi = st.lo;
      return st;
    }
    const T b = bits_[g];
    if (!std::isfinite(b)) // the cast below would be undefined
      detail::check_finite_bits(policy_name, this->group_bits());
    const T k_lo = std::floor(b);
    st.f = b - k_lo;
    st.lo = grid(g, static_cast<int>(k_lo), stats_[g]);
    st.hi = grid(g, static_cast<int>(k_lo) + 1, stats_[g]);
    return st;
  }

  options opt_;
  std::vector<T> bits_, bits_grad_;
  std::vector<T> range_, range_grad_;
  std::vector<abs_stats<T>> stats_;
  std::vector<group_state> last_;
};

static_assert(quantizer<frac_bits<float>>);
static_assert(quantizer<frac_bits<double>>);

} // namespace bitgrad::quant
