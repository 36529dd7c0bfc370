// noise_bits: learned bitwidths through additive quantization noise. While training, a group is
// not rounded at all: its weights receive the noise a uniform quantizer of step Delta(b) would
// add, so the loss sees the *cost* of b bits smoothly and b learns through the noise amplitude
// (in the spirit of Defossez et al. 2021, "Differentiable Model Compression via Pseudo
// Quantization Noise"). At evaluation and once frozen, it is the true symmetric quantizer.
//
// Parameters: one logit l per group; the bitwidth is
//   b = b_min + (b_max - b_min) sigmoid(l)          (always inside [b_min, b_max])
// Training forward (forward(w, wq, true), not frozen):
//   wq_i = w_i + Delta(b) u_i,   Delta(b) = range_g / (2^b - 1),   range_g = 2 max|w_g|
//   u_i the counter-based noise of kernels/ref/noise.hpp: uniform in (-1/2, 1/2) (variance
//   1/12, so wq - w has the variance Delta^2 / 12 of rounding to a grid of step Delta), or
//   approximately Gaussian with standard deviation 1/2 (options::noise). range_g spans the
//   symmetric codes [-max|w|, max|w|]; it is recomputed each forward and, like frac_bits'
//   max_abs scale, treated as a constant (no gradient through the max). At an integer b = k,
//   Delta(k) = 2 max|w| / (2^k - 1) is slightly below the step max|w| / (2^(k-1) - 1) of the
//   frozen grid (2^k - 1 intervals over the range instead of 2^k - 2).
// Gradients (backward after a training forward): exact for the noisy forward with u fixed,
//   dQ/dw = 1                                   (weights pass through unchanged)
//   dL/dl = sum_i dL/dQ_i u_i  dDelta/db  db/dl
//   dDelta/db = -range ln2 2^b / (2^b - 1)^2,   db/dl = (b_max - b_min) s (1 - s), s = sigmoid(l)
// Evaluation forward (training = false) and frozen: the true quantization at the integer
//   bitwidth k (frozen: the frozen k; not frozen: b rounded half up into
//   [ceil(b_min), floor(b_max)]): codes in [-(2^(k-1)-1), 2^(k-1)-1], scale max|w| / (2^(k-1)-1)
//   (k = 1: the sign grid with scale mean|w|), exactly what frac_bits computes at an integer
//   bitwidth, so export (frozen_bits, group_scales, codes) works the same. Backward after
//   such a forward: straight-through dQ/dw = [|w/s| <= L], and no bitwidth gradient.
//
// Noise stream: u depends on (stream seed, noise step, element index in the tensor). The
// stream seed is options::seed mixed with the bound shape (channels, per_channel), so layers of
// different shapes built from the same options draw different noise. The noise step starts at
// 0 (bind() resets it) and advances by one after every training forward (not while
// hold_noise(true)); a backward uses the step of its forward. Nothing else is random and nothing
// depends on the thread count. The noise step is part of the quantizer's state (save / load), so a
// checkpoint resumes the stream bit-identically.
//
// State (save / load): the core's state (quant/group_quantizer.hpp: u8 frozen, u32 groups,
// groups x i32 frozen bitwidths), then u64 noise step. (Checkpoints before version 3 held the
// step in the metadata field "noise_step.<quantizer name>": train/checkpoint.hpp.)
//
// Parameters visited: "logit" (kind bitwidth, one per group). After freeze the logits are
// ignored and receive no gradient. project() clamps them to [-logit_limit, logit_limit].
// Size: size_bits = sum_g n_g b_g + 40 groups; d size / d l_g = n_g db/dl.
// Freeze: nearest = round half up, up = ceil, budget_aware = the greedy of quant/budget.hpp on
// this tensor alone with its own current (real) size as the target; integer bitwidths are
// clamped to [ceil(b_min), floor(b_max)].
#pragma once

#include <bitgrad/core/parameter.hpp>
#include <bitgrad/kernels/noise.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/quant/group_quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::quant {

template <class T>
class noise_bits : public group_quantizer<noise_bits<T>, T> {
  using core = group_quantizer<noise_bits<T>, T>;
  friend core;

public:
  static constexpr const char* policy_name = "noise_bits";
  static constexpr int lowest_bits = 1; ///< the sign grid
  /// project() keeps every logit in [-logit_limit, logit_limit] (sigmoid(10) = 1 - 4.5e-5).
  static constexpr double logit_limit = bitwidth_logit_limit;

  struct options {
    /// Channels per group: 1 = per channel, per_tensor = one group; must be <= channels.
    std::size_t group_size = 1;
    double b_min = 2;
    double b_max = 8;
    /// Initial bitwidth of every group; unset = b_max - 0.5. The logit starts at
    /// logit((b_init - b_min) / (b_max - b_min)), clamped to +-logit_limit.
    std::optional<double> b_init{};
    noise_kind noise = noise_kind::uniform;
    std::uint64_t seed = 0; ///< the noise stream (mixed with the bound shape)
  };

  noise_bits() : noise_bits(options{}) {}
  explicit noise_bits(const options& opt) : core(opt.b_min, opt.b_max), opt_(opt) {
    detail::check_bit_range(policy_name, opt.b_min, opt.b_max, detail::initial_bits(opt));
  }

  const options& opts() const { return opt_; }

  void bind(std::size_t channels, std::size_t per_channel, const T* /*w*/) {
    const std::size_t n = this->core_bind(channels, per_channel, opt_.group_size);
    logit_.assign(n, static_cast<T>(initial_logit()));
    logit_grad_.assign(n, T(0));
    last_.assign(n, group_state{});
    step_ = 0;
    stream_ = opt_.seed ^ splitmix64((static_cast<std::uint64_t>(channels) << 32) ^
                                     static_cast<std::uint64_t>(per_channel));
  }

  void forward(const T* w, T* wq, bool training) {
    this->check_bound();
    const bool noisy = training && !this->frozen_;
    if (noisy) {
      last_key_ = make_noise_key(stream_, step_);
      if (!hold_) ++step_;
    }
    for (std::size_t g = 0; g < this->groups(); ++g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      const abs_stats<T> st = bitgrad::quant_abs_stats(n, w + off);
      group_state& s = last_[g];
      s.noisy = noisy;
      if (noisy) {
        const T range = std::max(T(2) * st.max_abs, scale_floor<T>);
        const T sig = sigmoid(logit_[g]);
        const T span = static_cast<T>(opt_.b_max - opt_.b_min);
        const T b = static_cast<T>(opt_.b_min) + span * sig;
        const T p = std::exp2(b);
        s.delta = range / (p - T(1));
        const T ddelta_db = -range * std::numbers::ln2_v<T> * p / ((p - T(1)) * (p - T(1)));
        s.ddelta_dl = ddelta_db * span * sig * (T(1) - sig);
        bitgrad::noise_fprop(n, w + off, wq + off, s.delta, last_key_, off, opt_.noise);
      } else {
        s.grid = max_abs_grid(this->frozen_ ? this->kbits_[g] : rounded_bits(g), st, n);
        bitgrad::quant_fprop(n, w + off, wq + off, s.grid);
      }
    }
  }

  void backward(const T* w, const T* grad_wq, T* grad_w) {
    for (std::size_t g = 0; g < this->groups(); ++g) {
      const std::size_t off = this->layout_.offset(g), n = this->layout_.count(g);
      const group_state& s = last_[g];
      if (!s.noisy) {
        (void)bitgrad::quant_bprop(n, w + off, grad_wq + off, grad_w + off, s.grid);
        continue;
      }
      const T du = bitgrad::noise_bprop(n, grad_wq + off, grad_w + off, last_key_, off, opt_.noise);
      if (!this->frozen_) logit_grad_[g] += du * s.ddelta_dl;
    }
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> p{"logit", logit_.data(), logit_grad_.data(), logit_.size(), param_kind::bitwidth};
    f(p);
  }

  /// logit_grad_g += dL/dsize * n_g * db/dl (nothing once frozen).
  void add_size_gradient(T dloss_dsize) {
    if (this->frozen_) return;
    const T span = static_cast<T>(opt_.b_max - opt_.b_min);
    for (std::size_t g = 0; g < this->groups(); ++g) {
      const T sig = sigmoid(logit_[g]);
      logit_grad_[g] +=
          dloss_dsize * static_cast<T>(this->layout_.count(g)) * span * sig * (T(1) - sig);
    }
  }

  void project() {
    const T lim = static_cast<T>(logit_limit);
    for (T& l : logit_) l = std::clamp(l, -lim, lim);
  }

  // ---- state: the core's, then the noise step -------------------------------------------
  void save(io::byte_writer& w) const {
    core::save(w);
    w.put(step_);
  }
  /// Reads what save() wrote; `who` names the quantizer in messages.
  void load(io::byte_reader& r, std::string_view who = policy_name) {
    core::load(r, who);
    step_ = r.get<std::uint64_t>("noise step");
  }

  // ---- the noise stream -----------------------------------------------------------------
  /// The step the next training forward uses.
  std::uint64_t noise_step() const { return step_; }
  void set_noise_step(std::uint64_t step) { step_ = step; }
  /// While on, training forwards reuse the current step (gradient checks hold the noise).
  void hold_noise(bool on) { hold_ = on; }

private:
  struct group_state {
    bool noisy = false;
    T delta = 0;
    T ddelta_dl = 0;
    quant_grid<T> grid{T(1), T(1), false};
  };

  // ---- the core's hooks -----------------------------------------------------------------
  /// b = b_min + (b_max - b_min) sigmoid(l).
  double real_bits(std::size_t g) const {
    const double l = static_cast<double>(logit_[g]);
    return opt_.b_min + (opt_.b_max - opt_.b_min) / (1.0 + std::exp(-l));
  }
  void freezing(const std::vector<int>&) {
    std::fill(logit_grad_.begin(), logit_grad_.end(), T(0));
  }
  quant_grid<T> frozen_grid(std::size_t g, const T* w) const {
    const std::size_t n = this->layout_.count(g);
    return max_abs_grid(this->kbits_[g], bitgrad::quant_abs_stats(n, w + this->layout_.offset(g)),
                        n);
  }

  static T sigmoid(T l) { return T(1) / (T(1) + std::exp(-l)); }

  double initial_logit() const {
    const double span = opt_.b_max - opt_.b_min;
    if (!(span > 0)) return 0.0;
    const double s = (detail::initial_bits(opt_) - opt_.b_min) / span;
    if (s <= 0) return -logit_limit;
    if (s >= 1) return logit_limit;
    return std::clamp(std::log(s / (1 - s)), -logit_limit, logit_limit);
  }

  /// b rounded half up into [ceil(b_min), floor(b_max)] (the evaluation bitwidth).
  int rounded_bits(std::size_t g) const {
    const double v = std::floor(real_bits(g) + 0.5);
    if (!std::isfinite(v)) // the cast below would be undefined
      detail::check_finite_bits(policy_name, this->group_bits());
    return std::clamp(static_cast<int>(v), static_cast<int>(std::ceil(opt_.b_min)),
                      static_cast<int>(std::floor(opt_.b_max)));
  }

  options opt_;
  std::vector<T> logit_, logit_grad_;
  std::vector<group_state> last_;
  bool hold_ = false;
  std::uint64_t stream_ = 0;
  std::uint64_t step_ = 0;
  noise_key last_key_{0, 0};
};

static_assert(quantizer<noise_bits<float>>);
static_assert(quantizer<noise_bits<double>>);

} // namespace bitgrad::quant
