// act_quantizer: learned-bitwidth fake quantization of activations (issue #22), the math of
// the nn::activation_quant layer (nn/activation_quant.hpp). Words as in quant/quantizer.hpp,
// with these differences for activations:
//   channel   dimension 1 of an activation tensor (N, C, ...): channel c of sample i owns the
//             `inner` = H * W (or 1) contiguous values at (i * C + c) * inner.
//   group     g consecutive channels sharing one bitwidth and one range (per_tensor: one
//             group, the default; the last group may be smaller).
//   range     a_g > 0, learned (PACT / LSQ): the largest level of the group's grid.
//   grid      unsigned (after ReLU, the default): s {0, 1, ..., 2^k - 1}, zero exact, and
//             negative inputs map to 0, so the unsigned quantizer is itself a (clipped) ReLU;
//             signed: s {-L, ..., L}, L = 2^(k-1) - 1. s = a / L (kernels/ref/act_quantize.hpp).
//
// Relaxations (options::relaxation). Both use the parameterisation (bits b, range a): the range
// sets the clipping, the bitwidth how finely [lower, a] is cut, so freezing b keeps a; and both
// are the same integer grid s = a / L_k once frozen (or at an integer b).
//   frac (default): frac_bits' interpolation between the grids of floor(b) and floor(b) + 1,
//         s_k = a / L_k. dL/db = sum dy (Q_hi - Q_lo) is exact for the relaxation: b sees the
//         rounding error itself. The default for that reason.
//   step: step_bits' rule (Uhlich et al. 2020) on one grid of real step d = a / L(b) with
//         L(b) = 2^b - 1 (unsigned) or 2^(b-1) - 1 (signed): Q = d round(clamp(x, lower, a) / d).
//         Uhlich's (b, q_max) parameterisation rather than step_bits' (b, d): with (b, d) the
//         bitwidth would reach the loss only through the clipping point q_max = d L(b), and for
//         activations the clipping is the range's job. Here dL/db flows through d, a
//         straight-through estimate (round held): dQ/dd = round(v) - v, v = clamp(x) / d,
//         dd/db = -a ln2 (L(b) + 1) / L(b)^2; dQ/da = dQ/dd / L(b) + [x > a] - [x < -a] (signed).
//         One grid per element instead of two: cheaper, but b's gradient is an estimate.
// noise_bits is not offered: its amplitude needs a range per forward (max |x| of a batch,
// which couples the samples of a batch) and its training forward is not the deployed one.
//
// The frac relaxation in full:
//   k_lo = floor(b), k_hi = k_lo + 1, f = b - k_lo
//   Q_b(x) = (1 - f) Q_klo(x) + f Q_khi(x),   Q_k(x) = s_k clamp(round(x / s_k), lower, L_k)
// Gradients (kernels/ref/act_quantize.hpp): dL/dx = dy ((1-f)[inside_lo] + f[inside_hi]) (STE,
// zero outside [lower, a]); dL/db = sum dy (Q_hi - Q_lo) (at an integer b the right
// derivative, as frac_bits); dL/da = sum dy ((1-f) dQ_lo/ds_lo / L_lo + f dQ_hi/ds_hi / L_hi)
// with the LSQ dQ/ds: inside, round(v) - v; above the range, L (PACT's dQ/da = 1); below, the
// lower code (0 unsigned). No LSQ gradient rescaling (as frac_bits' learned scales).
//
// Parameters visited, fixed order: "bits" (kind bitwidth, one per group), "range" (kind
// scale, one per group). Bounds (project): b in [b_min, b_max] (k once frozen), a >= scale_floor.
// Range initialisation: options::range_init, or, unset, calibration on the first forward (in
// either mode): a_g = max over the batch of x (unsigned) or |x| (signed) in group g, at least
// scale_floor. Training and evaluation compute the same (the relaxation is deterministic, as
// frac_bits'); train(on) only says what the layer reports.
// Freeze: nearest (round half up) or up (ceil), clamped to [max(ceil(b_min), lowest),
// floor(b_max)]; then Q = Q_k exactly, only a trains. (budget_aware is a config_error: an
// activation bitwidth has no size of its own; costs are frozen against their budgets by the
// caller.) Bounds of b: [1, 16] unsigned (1 bit: {0, a}), [2, 16] signed (1 bit would leave only
// zero).
//
// State (save / load, io/bytes.hpp, little-endian):
//   u8 version (1), u8 signed (0 / 1), u32 groups, u8 calibrated (0 / 1), u8 relaxation
//   (0 frac, 1 step), then the frozen state
//   of quant/group_quantizer.hpp (u8 frozen, u32 n, n x i32 bitwidths).
// Unknown versions, another signedness or group count, and bad flags are format_errors naming
// the quantizer. The real-valued bits and ranges are parameters (they travel with the
// network's parameters, as every quantizer's).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/kernels/act_quantize.hpp>
#include <bitgrad/quant/group_quantizer.hpp>
#include <bitgrad/quant/groups.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::quant {

/// The activation quantizer contract (A with element type T = A::value_type):
///   void bind(size_t channels)                   sizes the per-group parameters; thaws
///   void forward(const T* x, T* y, size_t batch, size_t inner, bool training)
///                                                y = Q(x) over (batch, channels, inner)
///   void backward(const T* x, const T* dy, T* dx, size_t batch, size_t inner)
///                                                dx = dL/dx (written); accumulates dL/db, dL/da
///   visit_parameters(f), zero_grad(), project(), freeze(rounding), freeze_to(k), frozen(),
///   group_bits(), groups(), group_size(), channels(), b_min(), b_max(), save / load
/// with the meanings of quant/quantizer.hpp; costs (quant/costs.hpp) read group_bits() and
/// push gradients into the parameters of kind bitwidth.
template <class A>
concept activation_quantizer = requires(A& a, const A& ca, typename A::value_type* p,
                                        const typename A::value_type* cp, std::size_t n, bool on,
                                        rounding r, const std::vector<int>& k, io::byte_writer& out,
                                        io::byte_reader& in) {
  typename A::value_type;
  typename A::options;
  a.bind(n);
  a.forward(cp, p, n, n, on);
  a.backward(cp, cp, p, n, n);
  a.visit_parameters(any_param_visitor<typename A::value_type>{});
  a.zero_grad();
  a.project();
  a.freeze(r);
  a.freeze_to(k);
  { ca.frozen() } -> std::convertible_to<bool>;
  { ca.group_bits() } -> std::convertible_to<std::vector<double>>;
  { ca.groups() } -> std::convertible_to<std::size_t>;
  { ca.group_size() } -> std::convertible_to<std::size_t>;
  { ca.channels() } -> std::convertible_to<std::size_t>;
  { ca.b_min() } -> std::convertible_to<double>;
  { ca.b_max() } -> std::convertible_to<double>;
  ca.save(out);
  a.load(in);
};

/// How a real bitwidth quantizes while training (both share the parameters (bits, range) and
/// the frozen grid; see the top of this file).
enum class act_relaxation : std::uint8_t {
  frac = 0, ///< (1 - f) Q_floor(b) + f Q_floor(b)+1, exact dL/db (default)
  step = 1  ///< one grid of real step d = a / L(b), straight-through dL/db (Uhlich et al.)
};

template <class T>
class act_quantizer {
public:
  using value_type = T;
  static constexpr const char* policy_name = "act_frac_bits";
  static constexpr std::uint8_t state_version = 1;

  struct options {
    /// Channels per group: per_tensor (default) = one bitwidth for the layer; 1 = per channel.
    std::size_t group_size = per_tensor;
    bool is_signed = false; ///< false: unsigned grid (after ReLU), zero exact
    double b_min = 2;
    double b_max = 8;
    /// Initial bitwidth of every group; unset = b_max - 0.5 (both grids active).
    std::optional<double> b_init{};
    /// Initial range of every group; unset = calibrated on the first forward.
    std::optional<double> range_init{};
    act_relaxation relaxation = act_relaxation::frac;
  };

  act_quantizer() : act_quantizer(options{}) {}
  explicit act_quantizer(const options& opt) : opt_(opt) {
    detail::check_bit_range(policy_name, opt.b_min, opt.b_max, detail::initial_bits(opt));
    if (opt.b_min < lowest_bits())
      throw config_error(std::string(policy_name) +
                         ": a signed activation grid needs b_min >= 2 (1 bit leaves only zero), "
                         "got " +
                         std::to_string(opt.b_min));
    if (opt.range_init && !(*opt.range_init > 0 && std::isfinite(*opt.range_init)))
      throw config_error(std::string(policy_name) + ": expected range_init > 0, got " +
                         std::to_string(*opt.range_init));
  }

  const options& opts() const { return opt_; }
  bool is_signed() const { return opt_.is_signed; }
  /// "act_frac_bits" or "act_step_bits" (descriptions, reports).
  const char* relaxation_name() const {
    return opt_.relaxation == act_relaxation::step ? "act_step_bits" : policy_name;
  }
  /// The smallest integer bitwidth: 1 unsigned ({0, a}), 2 signed.
  int lowest_bits() const { return opt_.is_signed ? 2 : 1; }

  /// Fixes the channel count and sizes the parameters; thaws.
  void bind(std::size_t channels) {
    if (channels == 0)
      throw config_error(std::string(policy_name) +
                         ": expected an activation with channels >= 1, got 0");
    layout_ = group_layout(policy_name, channels, 1, opt_.group_size);
    const std::size_t n = layout_.groups();
    bits_.assign(n, static_cast<T>(detail::initial_bits(opt_)));
    bits_grad_.assign(n, T(0));
    range_.assign(n, static_cast<T>(opt_.range_init.value_or(0.0)));
    range_grad_.assign(n, T(0));
    last_.assign(n, group_state{});
    calibrated_ = opt_.range_init.has_value();
    kbits_.clear();
    frozen_ = false;
  }

  /// y = Q(x) for `batch` samples of channels() x inner values each (layout at the top).
  void forward(const T* x, T* y, std::size_t batch, std::size_t inner, bool /*training*/) {
    detail::check_bound(policy_name, layout_.weight_count());
    if (!calibrated_) calibrate(x, batch, inner);
    for (std::size_t g = 0; g < groups(); ++g) last_[g] = state(g);
    for_each_block(batch, inner, [&](std::size_t g, std::size_t off, std::size_t n) {
      const group_state& s = last_[g];
      if (s.step > T(0))
        bitgrad::act_step_fprop(n, x + off, y + off, s.step, s.lower, s.upper);
      else
        bitgrad::act_quant_fprop(n, x + off, y + off, s.lo, s.hi, s.f);
    });
  }

  /// dx = dL/dx for the last forward (written, not accumulated); accumulates dL/db, dL/da.
  void backward(const T* x, const T* dy, T* dx, std::size_t batch, std::size_t inner) {
    for_each_block(batch, inner, [&](std::size_t g, std::size_t off, std::size_t n) {
      const group_state& s = last_[g];
      if (s.step > T(0)) {
        const auto t =
            bitgrad::act_step_bprop(n, x + off, dy + off, dx + off, s.step, s.lower, s.upper);
        // d = a / L(b): dd/da = 1 / L, dd/db = -a L'(b) / L^2; the ends are a and -a (or 0).
        bits_grad_[g] += t.d_step * s.dstep_db;
        range_grad_[g] += t.d_step / s.levels + t.d_above - (opt_.is_signed ? t.d_below : T(0));
        return;
      }
      const auto sums = bitgrad::act_quant_bprop(n, x + off, dy + off, dx + off, s.lo, s.hi, s.f);
      if (!frozen_) bits_grad_[g] += sums.d_frac;
      range_grad_[g] += sums.d_range;
    });
  }

  template <class F>
  void visit_parameters(F&& f) {
    param_ref<T> b{"bits", bits_.data(), bits_grad_.data(), bits_.size(), param_kind::bitwidth};
    f(b);
    param_ref<T> a{"range", range_.data(), range_grad_.data(), range_.size(), param_kind::scale};
    f(a);
  }

  void zero_grad() {
    std::fill(bits_grad_.begin(), bits_grad_.end(), T(0));
    std::fill(range_grad_.begin(), range_grad_.end(), T(0));
  }

  /// b_g into [b_min, b_max] (k_g once frozen); a_g >= scale_floor.
  void project() {
    for (std::size_t g = 0; g < bits_.size(); ++g)
      bits_[g] = frozen_
                     ? static_cast<T>(kbits_[g])
                     : std::clamp(bits_[g], static_cast<T>(opt_.b_min), static_cast<T>(opt_.b_max));
    for (T& a : range_) a = std::max(a, scale_floor<T>);
  }

  // ---- layout and bitwidths (the words of quant/quantizer.hpp) ---------------------------
  std::size_t channels() const { return layout_.channels(); }
  std::size_t groups() const { return layout_.groups(); }
  std::size_t group_size() const { return layout_.group_size(); }
  /// Channels in group g (the last group may be smaller).
  std::size_t group_channels(std::size_t g) const { return layout_.count(g); }
  double b_min() const { return opt_.b_min; }
  double b_max() const { return opt_.b_max; }
  bool frozen() const { return frozen_; }
  bool calibrated() const { return calibrated_; }
  /// Real b_g while training, the integer k_g once frozen.
  std::vector<double> group_bits() const {
    std::vector<double> b(groups());
    for (std::size_t g = 0; g < b.size(); ++g)
      b[g] = frozen_ ? static_cast<double>(kbits_[g]) : static_cast<double>(bits_[g]);
    return b;
  }
  /// The learned ranges a_g.
  std::vector<T> group_ranges() const { return range_; }

  // ---- freezing -------------------------------------------------------------------------
  void freeze(rounding r) {
    detail::check_bound(policy_name, layout_.weight_count());
    if (r == rounding::budget_aware)
      throw config_error(std::string(policy_name) +
                         ": budget_aware freezing is for weight quantizers; freeze activation "
                         "bitwidths with nearest, up or freeze_to");
    const auto b = group_bits();
    detail::check_finite_bits(policy_name, b);
    const int lo = std::max(static_cast<int>(std::ceil(opt_.b_min)), lowest_bits());
    const int hi = static_cast<int>(std::floor(opt_.b_max));
    std::vector<int> k(b.size());
    for (std::size_t g = 0; g < k.size(); ++g) {
      const double v = r == rounding::up ? std::ceil(b[g]) : std::floor(b[g] + 0.5);
      k[g] = std::clamp(static_cast<int>(v), lo, hi);
    }
    freeze_to(k);
  }

  /// Freezes at explicit bitwidths, one per group, each in [lowest_bits(), 16]; config_error
  /// (nothing changed) otherwise.
  void freeze_to(const std::vector<int>& k) {
    detail::check_bound(policy_name, layout_.weight_count());
    detail::check_count(policy_name, "bitwidths (one per group)", groups(), k.size());
    for (int v : k) {
      detail::check_integer_bits(policy_name, v);
      if (v < lowest_bits())
        throw config_error(std::string(policy_name) +
                           ": expected bitwidths >= " + std::to_string(lowest_bits()) +
                           " (signed grid), got " + std::to_string(v));
    }
    for (std::size_t g = 0; g < k.size(); ++g) bits_[g] = static_cast<T>(k[g]);
    std::fill(bits_grad_.begin(), bits_grad_.end(), T(0));
    kbits_ = k;
    frozen_ = true;
  }
  std::vector<int> frozen_bits() const {
    detail::check_frozen(policy_name, frozen_, "frozen_bits()");
    return kbits_;
  }
  /// The step s_g = a_g / L_k of each group's frozen grid.
  std::vector<T> group_scales() const {
    detail::check_frozen(policy_name, frozen_, "group_scales()");
    std::vector<T> s(groups());
    for (std::size_t g = 0; g < s.size(); ++g) s[g] = grid(g, kbits_[g]).scale;
    return s;
  }

  // ---- state ----------------------------------------------------------------------------
  void save(io::byte_writer& w) const {
    w.put<std::uint8_t>(state_version);
    w.put<std::uint8_t>(opt_.is_signed ? 1 : 0);
    w.put(static_cast<std::uint32_t>(groups()));
    w.put<std::uint8_t>(calibrated_ ? 1 : 0);
    w.put(opt_.relaxation);
    detail::save_frozen_state(w, frozen_ ? kbits_ : std::vector<int>{});
  }
  /// Reads what save() wrote into a quantizer bound to the same channels and groups; `who`
  /// names it in messages. Nothing changes when it fails.
  void load(io::byte_reader& r, std::string_view who = policy_name) {
    const std::string name(who);
    const auto version = r.get<std::uint8_t>("activation quantizer version");
    if (version != state_version)
      r.fail("activation quantizer '" + name + "': unknown state version " +
             std::to_string(version) + " (this build reads version " +
             std::to_string(state_version) + ")");
    const auto sign = r.get<std::uint8_t>("signed flag");
    if (sign > 1) r.fail("activation quantizer '" + name + "': bad signed flag");
    if ((sign == 1) != opt_.is_signed)
      r.fail("activation quantizer '" + name + "': the state is of a " +
             (sign == 1 ? "signed" : "unsigned") + " grid, the network's is " +
             (opt_.is_signed ? "signed" : "unsigned"));
    const auto n = r.get<std::uint32_t>("group count");
    if (n != groups())
      r.fail("activation quantizer '" + name + "': the state has " + std::to_string(n) +
             " groups, the network's has " + std::to_string(groups()));
    const auto cal = r.get<std::uint8_t>("calibrated flag");
    if (cal > 1) r.fail("activation quantizer '" + name + "': bad calibrated flag");
    const auto rel = r.get<std::uint8_t>("relaxation");
    if (rel != static_cast<std::uint8_t>(opt_.relaxation))
      r.fail("activation quantizer '" + name + "': the state is of relaxation " +
             std::to_string(rel) + ", the network's is " +
             std::to_string(static_cast<int>(opt_.relaxation)) + " (0 frac, 1 step)");
    const std::vector<int> bits = detail::load_frozen_state(r, groups(), who);
    for (int k : bits)
      if (k < lowest_bits())
        r.fail("activation quantizer '" + name + "': frozen bitwidth " + std::to_string(k) +
               " below " + std::to_string(lowest_bits()) + " on a signed grid");
    calibrated_ = cal == 1;
    if (bits.empty()) {
      kbits_.clear();
      frozen_ = false;
    } else {
      freeze_to(bits);
    }
  }

private:
  struct group_state {
    act_grid<T> lo{T(1), T(1), T(0)};
    act_grid<T> hi{T(1), T(1), T(0)};
    T f = 0;
    // the step relaxation (step > 0 while training with act_relaxation::step)
    T step = 0;     ///< d = a / L(b)
    T lower = 0;    ///< -a (signed) or 0
    T upper = 0;    ///< a
    T levels = 1;   ///< L(b), real
    T dstep_db = 0; ///< -a L'(b) / L(b)^2
  };

  act_grid<T> grid(std::size_t g, int k) const {
    return make_act_grid(k, range_[g], opt_.is_signed, scale_floor<T>);
  }

  group_state state(std::size_t g) const {
    group_state s;
    if (frozen_) {
      s.lo = s.hi = grid(g, kbits_[g]);
      return s;
    }
    if (!std::isfinite(bits_[g])) detail::check_finite_bits(policy_name, group_bits());
    // b as project() leaves it: a loop that steps without projecting gets the grids of the
    // nearest bound instead of a grid of 0 or 20 bits.
    const T b = std::clamp(bits_[g], static_cast<T>(opt_.b_min), static_cast<T>(opt_.b_max));
    if (opt_.relaxation == act_relaxation::step) {
      // L(b) = 2^b - 1 (unsigned) or 2^(b-1) - 1 (signed), L'(b) = ln2 (L(b) + 1).
      const T p = opt_.is_signed ? std::exp2(b - T(1)) : std::exp2(b);
      const T a = std::max(range_[g], scale_floor<T>);
      s.levels = p - T(1);
      s.upper = a;
      s.step = std::max(a / s.levels, scale_floor<T>);
      s.lower = opt_.is_signed ? -a : T(0);
      s.dstep_db = -a * std::numbers::ln2_v<T> * p / (s.levels * s.levels);
      return s;
    }
    const T k_lo = std::floor(b);
    s.f = b - k_lo;
    s.lo = grid(g, static_cast<int>(k_lo));
    s.hi = grid(g, std::min(static_cast<int>(k_lo) + 1, max_bitwidth));
    return s;
  }

  /// body(group, offset, count) for each sample's contiguous block of each group.
  template <class Body>
  void for_each_block(std::size_t batch, std::size_t inner, Body&& body) const {
    const std::size_t c = channels();
    for (std::size_t i = 0; i < batch; ++i)
      for (std::size_t g = 0; g < groups(); ++g)
        body(g, (i * c + g * layout_.group_size()) * inner, layout_.count(g) * inner);
  }

  void calibrate(const T* x, std::size_t batch, std::size_t inner) {
    std::fill(range_.begin(), range_.end(), T(0));
    for_each_block(batch, inner, [&](std::size_t g, std::size_t off, std::size_t n) {
      range_[g] = std::max(range_[g], bitgrad::act_range_stat(n, x + off, opt_.is_signed));
    });
    for (T& a : range_) a = std::max(a, scale_floor<T>);
    calibrated_ = true;
  }

  options opt_;
  group_layout layout_;
  std::vector<T> bits_, bits_grad_, range_, range_grad_;
  std::vector<group_state> last_;
  std::vector<int> kbits_;
  bool frozen_ = false;
  bool calibrated_ = false;
};

static_assert(activation_quantizer<act_quantizer<float>>);
static_assert(activation_quantizer<act_quantizer<double>>);

} // namespace bitgrad::quant
