// fixed_bits: uniform quantization at an integer bitwidth with a learned step (LSQ, Esser et
// al., ICLR 2020). The bitwidth does not train; the per-group scale s does:
//
//   Q(w) = s clamp(round(w / s), -Qn, Qp),  Qp = L = 2^(k-1) - 1 and (options::grid)
//          Qn = L (symmetric, the default) or Qn = 2^(k-1) (full: every k-bit two's
//          complement code, LSQ's grid for signed weights; 2 bits: {-2, -1, 0, 1});
//          k = 1: the sign grid s sign(w) on either
//   dQ/dw = [-Qn <= w / s <= Qp]                                 (STE)
//   dQ/ds = round(w/s) - w/s inside, -Qn or Qp at the clip        (k = 1: sign(w))
//   grad_s is multiplied by 1 / sqrt(n_g Qp) (LSQ's gradient scale, n_g = weights in the
//   group) unless options::lsq_grad_scale is false.
// Initialisation at bind() (options::init): s = 2 mean|w_g| / sqrt(Qp) (lsq, LSQ's), or the
// step that minimises the group's squared quantization error on its grid, symmetric or full
// (mse: a 1-D search over candidate steps, quant/mse_step.hpp); for k = 1, s = mean|w_g| in both.
// frozen() is always true (bitwidths are integers from the start); freeze() does nothing and
// freeze_to(bits) changes the bitwidths, rescaling s so that the range s * L is kept. Its
// bounds are the whole range b_min = 1, b_max = 16 (every bitwidth freeze_to accepts).
// Size: sum_g n_g k_g + 40 groups, constant (add_size_gradient does nothing).
// Parameters visited: "scale" (kind scale).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/quant/group_quantizer.hpp>
#include <bitgrad/quant/mse_step.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::quant {

/// The codes of a uniform grid at k >= 2 bits: {-L, ..., L} (symmetric, zero in the middle)
/// or {-(L+1), ..., L} (full: all 2^k two's complement codes), L = 2^(k-1) - 1.
enum class uniform_grid { symmetric, full };

inline const char* to_string(uniform_grid g) {
  return g == uniform_grid::full ? "full" : "symmetric";
}

/// The initial step of fixed_bits: LSQ's 2 mean|w| / sqrt(Qp), or the step with the smallest
/// squared error on the group's grid (mse_step).
enum class step_init { lsq, mse };

inline const char* to_string(step_init i) {
  return i == step_init::mse ? "mse" : "lsq";
}

template <class T>
class fixed_bits : public group_quantizer<fixed_bits<T>, T> {
  using core = group_quantizer<fixed_bits<T>, T>;
  friend core;

public:
  static constexpr const char* policy_name = "fixed_bits";
  static constexpr int lowest_bits = 1; ///< the sign grid

  struct options {
    /// Channels per group: 1 = per channel, per_tensor = one group; must be <= channels.
    std::size_t group_size = 1;
    /// The bitwidth of every group, in [1, 16].
    int bits = 4;
    /// Multiply grad_s by 1 / sqrt(n_g Qp) as LSQ does.
    bool lsq_grad_scale = true;
    /// The codes at k >= 2: symmetric {-L..L} or full {-(L+1)..L} (same storage, one level more).
    uniform_grid grid = uniform_grid::symmetric;
    /// The initial step at bind(): LSQ's, or the smallest squared error on `grid`.
    step_init init = step_init::lsq;
  };

  fixed_bits() : fixed_bits(options{}) {}
  explicit fixed_bits(const options& opt) : core(min_bitwidth, max_bitwidth), opt_(opt) {
    detail::check_integer_bits(policy_name, opt.bits);
  }

  const options& opts() const { return opt_; }
  /// True when the codes are on the full grid (export stores it per tensor).
  bool full_grid() const { return opt_.grid == uniform_grid::full; }

  void bind(std::size_t channels, std::size_t per_channel, const T* w) {
    const std::size_t n = this->core_bind(channels, per_channel, opt_.group_size);
    this->kbits_.assign(n, opt_.bits);
    this->frozen_ = true;
    scale_.assign(n, T(0));
    scale_grad_.assign(n, T(0));
    const T qp = static_cast<T>(level_limit(opt_.bits));
    for (std::size_t g = 0; g < n; ++g) {
      const std::size_t cnt = this->layout_.count(g);
      const auto st = bitgrad::quant_abs_stats(cnt, w + this->layout_.offset(g));
      const T mean = st.sum_abs / static_cast<T>(cnt);
      const T s = opt_.bits == 1 ? mean
                  : opt_.init == step_init::mse
                      ? mse_step(cnt, w + this->layout_.offset(g), opt_.bits, full_grid())
                      : T(2) * mean / std::sqrt(qp);
      scale_[g] = std::max(s, scale_floor<T>);
    }
  }

  void forward(const T* w, T* wq, bool /*training*/) {
    this->check_bound();
    this->for_each_group([&](std::size_t g) {
      bitgrad::quant_fprop(this->layout_.count(g), w + this->layout_.offset(g),
                           wq + this->layout_.offset(g), frozen_grid(g, w));
    });
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    this->for_each_group([&](std::size_t g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      const T ds = bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, frozen_grid(g, w));
      scale_grad_[g] += opt_.lsq_grad_scale ? ds * grad_scale(g) : ds;
    });
  }

  /// LSQ's gradient scale for group g: 1 / sqrt(n_g Qp).
  T grad_scale(std::size_t g) const {
    return T(1) / std::sqrt(static_cast<T>(this->layout_.count(g)) *
                            static_cast<T>(level_limit(this->kbits_[g])));
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> s{"scale", scale_.data(), scale_grad_.data(), scale_.size(), param_kind::scale};
    f(s);
  }

  /// The size is constant: no parameter of kind bitwidth.
  void add_size_gradient(T) {}
  /// Nothing to round: the bitwidths are integers from bind() on.
  void freeze(rounding) {}

private:
  // ---- the core's hooks -----------------------------------------------------------------
  double real_bits(std::size_t g) const { return static_cast<double>(this->kbits_[g]); }
  /// New bitwidths k: s is rescaled to keep the range s * L.
  void freezing(const std::vector<int>& k) {
    for (std::size_t g = 0; g < k.size(); ++g)
      scale_[g] =
          std::max(scale_[g] * static_cast<T>(level_limit(this->kbits_[g]) / level_limit(k[g])),
                   scale_floor<T>);
  }
  quant_grid<T> frozen_grid(std::size_t g, const T* /*w*/) const {
    return make_grid(this->kbits_[g], scale_[g], opt_.grid == uniform_grid::full);
  }

  options opt_;
  std::vector<T> scale_, scale_grad_;
};

static_assert(quantizer<fixed_bits<float>>);
static_assert(quantizer<fixed_bits<double>>);

} // namespace bitgrad::quant
