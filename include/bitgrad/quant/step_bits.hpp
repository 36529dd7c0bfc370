// step_bits: "Mixed precision DNNs" (Uhlich et al., ICLR 2020). Each group quantizes on a
// uniform grid of step d clipped at q_max, the range the bitwidth b gives that step:
//
//   q_max = d (2^(b-1) - 1)                 (L = 2^(b-1) - 1 = q_max / d levels per side)
//   Q(w)  = d round(clamp(w, -q_max, q_max) / d)
//
// Parameters visited, fixed order: "bits" b (kind bitwidth, one per group) and "step" d (kind
// scale). (Until #18 the parameters were d and q_max with b derived, the paper's U3; b is now a
// parameter, Uhlich's U1, so that the learned bitwidths are of kind bitwidth like every
// policy's and the bitwidth optimizer group (--bits-lr, --bits-moment) applies to them.)
// Gradients (straight-through: round treated as the identity), with x = clamp(w,-q_max,q_max)/d
// and the kernel's partials of kernels/ref/quantize.hpp (step_quant_bprop):
//   dQ/dw     = [|w| <= q_max]
//   dQ/dd|q   = round(x) - x                (q_max held)
//   dQ/dq_max = [|w| > q_max] sign(w)
//   dQ/db     = dQ/dq_max * dq_max/db,  dq_max/db = d ln2 2^(b-1)
//   dQ/dd     = dQ/dd|q + dQ/dq_max (2^(b-1) - 1)
// Size: size_bits = sum_g n_g b_g + 40 groups; d size / d b_g = n_g.
// Bounds: project() keeps d >= scale_floor and b inside [b_min, b_max]. b_min must be >= 2: at
// b = 1 this parameterisation has no level but zero (use frac_bits for 1-bit groups), so the
// lowest integer bitwidth (lowest_bits) is 2.
// Initialisation at bind(): b = b_init, d = max|w_g| / (2^(b_init-1) - 1), so q_max = max|w_g|.
// Freeze (quant/group_quantizer.hpp): k = round / ceil / budget-greedy of b, clamped to the
// bounds. The first freeze (from training) keeps the range the search learned:
// d := q_max / L_k with q_max = d (2^(b-1) - 1) at the real b (holding d instead would shrink
// the range by L_k / L_b, clipping most weights when b falls by several bits); freeze_to on a
// frozen quantizer (sensitivity, checkpoints) keeps d, so lowering a group and restoring it is
// exact. Then Q is exactly the integer grid d * clamp(round(w/d), -L_k, L_k); only d trains
// (LSQ dQ/dd of kernels/ref/quantize.hpp) and q_max follows d.
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/quant/group_quantizer.hpp>

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
class step_bits : public group_quantizer<step_bits<T>, T> {
  using core = group_quantizer<step_bits<T>, T>;
  friend core;

public:
  static constexpr const char* policy_name = "step_bits";
  static constexpr int lowest_bits = 2; ///< b = 1 leaves only the zero level

  struct options {
    /// Channels per group: 1 = per channel, per_tensor = one group; must be <= channels.
    std::size_t group_size = 1;
    double b_min = 2;
    double b_max = 8;
    /// Initial bitwidth; unset = b_max - 0.5.
    std::optional<double> b_init{};
  };

  step_bits() : step_bits(options{}) {}
  explicit step_bits(const options& opt) : core(opt.b_min, opt.b_max), opt_(opt) {
    detail::check_bit_range(policy_name, opt.b_min, opt.b_max, detail::initial_bits(opt));
    if (opt.b_min < lowest_bits)
      throw config_error(std::string(policy_name) +
                         ": expected b_min >= 2 (b = 1 leaves only the zero level), got " +
                         std::to_string(opt.b_min));
  }

  const options& opts() const { return opt_; }

  void bind(std::size_t channels, std::size_t per_channel, const T* w) {
    const std::size_t n = this->core_bind(channels, per_channel, opt_.group_size);
    bits_.assign(n, static_cast<T>(detail::initial_bits(opt_)));
    bits_grad_.assign(n, T(0));
    step_.assign(n, T(0));
    step_grad_.assign(n, T(0));
    const T levels = static_cast<T>(std::exp2(detail::initial_bits(opt_) - 1) - 1);
    for (std::size_t g = 0; g < n; ++g) {
      const auto st = bitgrad::quant_abs_stats(this->layout_.count(g), w + this->layout_.offset(g));
      step_[g] = std::max(st.max_abs / levels, scale_floor<T>);
    }
  }

  void forward(const T* w, T* wq, bool /*training*/) {
    this->check_bound();
    for (std::size_t g = 0; g < this->groups(); ++g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      if (this->frozen_)
        bitgrad::quant_fprop(n, w + off, wq + off, frozen_grid(g, w));
      else
        bitgrad::step_quant_fprop(n, w + off, wq + off, step_[g], qmax(g));
    }
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    for (std::size_t g = 0; g < this->groups(); ++g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      if (this->frozen_) {
        step_grad_[g] +=
            bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, frozen_grid(g, w));
        continue;
      }
      const auto s =
          bitgrad::step_quant_bprop(n, w + off, grad_wq + off, grad_w + off, step_[g], qmax(g));
      const T half = std::exp2(bits_[g] - T(1)); // 2^(b-1)
      bits_grad_[g] += s.d_qmax * step_[g] * std::numbers::ln2_v<T> * half;
      step_grad_[g] += s.d_step + s.d_qmax * (half - T(1));
    }
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> b{"bits", bits_.data(), bits_grad_.data(), bits_.size(), param_kind::bitwidth};
    f(b);
    param_ref<T> d{"step", step_.data(), step_grad_.data(), step_.size(), param_kind::scale};
    f(d);
  }

private:
  // ---- the core's hooks -----------------------------------------------------------------
  double real_bits(std::size_t g) const { return static_cast<double>(bits_[g]); }
  /// b_g := k_g, no gradient; from training, d_g := q_max_g / L_k (the range kept).
  void freezing(const std::vector<int>& k) {
    for (std::size_t g = 0; g < k.size(); ++g) {
      // (b == k already: the range is d L_k, d stays exact; a checkpoint's frozen b is k.)
      if (!this->frozen_ && bits_[g] != static_cast<T>(k[g]))
        step_[g] = std::max(qmax(g) / static_cast<T>(level_limit(k[g])), scale_floor<T>);
      bits_[g] = static_cast<T>(k[g]);
    }
    std::fill(bits_grad_.begin(), bits_grad_.end(), T(0));
  }
  /// The step d of each group (w is not needed: scales are parameters).
  quant_grid<T> frozen_grid(std::size_t g, const T* /*w*/) const {
    return make_grid(this->kbits_[g], step_[g]);
  }

  /// q_max = d (2^(b-1) - 1); a non-finite b is a config_error naming the group.
  T qmax(std::size_t g) const {
    if (!std::isfinite(bits_[g])) detail::check_finite_bits(policy_name, this->group_bits());
    return step_[g] * (std::exp2(bits_[g] - T(1)) - T(1));
  }

  options opt_;
  std::vector<T> bits_, bits_grad_, step_, step_grad_;
};

static_assert(quantizer<step_bits<float>>);
static_assert(quantizer<step_bits<double>>);

} // namespace bitgrad::quant
