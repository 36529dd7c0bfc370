// fixed_bits: uniform quantization at an integer bitwidth with a learned step (LSQ, Esser et
// al., ICLR 2020). The bitwidth does not train; the per-group scale s does:
//
//   Q(w) = s clamp(round(w / s), -Qn, Qp),  Qn = Qp = L = 2^(k-1) - 1 (symmetric; k = 1: the
//          sign grid s sign(w))
//   dQ/dw = [|w / s| <= Qp]                                      (STE)
//   dQ/ds = round(w/s) - w/s inside, -Qn or Qp at the clip        (k = 1: sign(w))
//   grad_s is multiplied by 1 / sqrt(n_g Qp) (LSQ's gradient scale, n_g = weights in the
//   group) unless options::lsq_grad_scale is false.
// Initialisation at bind(): s = 2 mean|w_g| / sqrt(Qp) (LSQ); for k = 1, s = mean|w_g|.
// frozen() is always true (bitwidths are integers from the start); freeze() does nothing and
// freeze_to(bits) changes the bitwidths, rescaling s so that the range s * L is kept.
// Size: sum_g n_g k_g + 40 groups, constant (add_size_gradient does nothing).
// Parameters visited: "scale" (kind scale).
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/quant/groups.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::quant {

template <class T>
class fixed_bits {
public:
  using value_type = T;
  static constexpr bool is_identity = false;
  static constexpr const char* policy_name = "fixed_bits";

  struct options {
    /// Channels per group: 1 = per channel, per_tensor = one group; must be <= channels.
    std::size_t group_size = 1;
    /// The bitwidth of every group, in [1, 16].
    int bits = 4;
    /// Multiply grad_s by 1 / sqrt(n_g Qp) as LSQ does.
    bool lsq_grad_scale = true;
  };

  fixed_bits() : fixed_bits(options{}) {}
  explicit fixed_bits(const options& opt) : opt_(opt) {
    detail::check_integer_bits(policy_name, opt.bits);
  }

  const options& opts() const { return opt_; }

  void bind(std::size_t channels, std::size_t per_channel, const T* w) {
    layout_ = group_layout(policy_name, channels, per_channel, opt_.group_size);
    const std::size_t n = layout_.groups();
    kbits_.assign(n, opt_.bits);
    scale_.assign(n, T(0));
    scale_grad_.assign(n, T(0));
    const T qp = static_cast<T>(level_limit(opt_.bits));
    for (std::size_t g = 0; g < n; ++g) {
      const std::size_t cnt = layout_.count(g);
      const auto st = bitgrad::quant_abs_stats(cnt, w + layout_.offset(g));
      const T mean = st.sum_abs / static_cast<T>(cnt);
      const T s = opt_.bits == 1 ? mean : T(2) * mean / std::sqrt(qp);
      scale_[g] = std::max(s, scale_floor<T>);
    }
  }

  void forward(const T* w, T* wq, bool /*training*/) {
    detail::check_bound(policy_name, layout_.weight_count());
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      bitgrad::quant_fprop(layout_.count(g), w + layout_.offset(g), wq + layout_.offset(g),
                           grid(g));
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    for (std::size_t g = 0; g < layout_.groups(); ++g) {
      const std::size_t off = layout_.offset(g), n = layout_.count(g);
      const auto gr = grid(g);
      const T ds = bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, gr);
      scale_grad_[g] += opt_.lsq_grad_scale ? ds * grad_scale(g) : ds;
    }
  }

  /// LSQ's gradient scale for group g: 1 / sqrt(n_g Qp).
  T grad_scale(std::size_t g) const {
    return T(1) /
           std::sqrt(static_cast<T>(layout_.count(g)) * static_cast<T>(level_limit(kbits_[g])));
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> s{"scale", scale_.data(), scale_grad_.data(), scale_.size(), param_kind::scale};
    f(s);
  }

  void zero_grad() { std::fill(scale_grad_.begin(), scale_grad_.end(), T(0)); }

  double size_bits() const {
    double total = 0;
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      total += static_cast<double>(layout_.count(g)) * kbits_[g] + group_overhead_bits;
    return total;
  }
  void add_size_gradient(T) {}
  void project() {
    for (T& s : scale_) s = std::max(s, scale_floor<T>);
  }
  void freeze(rounding) {}

  /// New integer bitwidths, one per group in [1, 16]; s is rescaled to keep s * L.
  void freeze_to(const std::vector<int>& bits) {
    detail::check_bound(policy_name, layout_.weight_count());
    detail::check_count(policy_name, "bitwidths (one per group)", layout_.groups(), bits.size());
    for (int k : bits) detail::check_integer_bits(policy_name, k);
    for (std::size_t g = 0; g < bits.size(); ++g) {
      scale_[g] =
          std::max(scale_[g] * static_cast<T>(level_limit(kbits_[g]) / level_limit(bits[g])),
                   scale_floor<T>);
      kbits_[g] = bits[g];
    }
  }

  bool frozen() const { return true; }
  std::size_t groups() const { return layout_.groups(); }
  std::size_t group_size() const { return layout_.group_size(); }
  std::size_t weight_count() const { return layout_.weight_count(); }
  std::size_t group_weight_count(std::size_t g) const { return layout_.count(g); }
  const group_layout& layout() const { return layout_; }
  std::vector<double> group_bits() const { return {kbits_.begin(), kbits_.end()}; }
  double compression_ratio() const {
    return 32.0 * static_cast<double>(weight_count()) / size_bits();
  }

  // ---- export ---------------------------------------------------------------------------
  std::vector<int> frozen_bits() const { return kbits_; }
  std::vector<T> group_scales(const T* /*w*/) const { return scale_; }
  void codes(const T* w, std::int32_t* out) const {
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      bitgrad::quant_codes(layout_.count(g), w + layout_.offset(g), out + layout_.offset(g),
                           grid(g));
  }

private:
  quant_grid<T> grid(std::size_t g) const { return make_grid(kbits_[g], scale_[g]); }

  options opt_;
  group_layout layout_;
  std::vector<int> kbits_;
  std::vector<T> scale_, scale_grad_;
};

static_assert(quantizer<fixed_bits<float>>);
static_assert(quantizer<fixed_bits<double>>);

} // namespace bitgrad::quant
