// The per-group core every quantizing policy is built on (words: quant/quantizer.hpp).
//
// A policy supplies only its relaxation: how a real bitwidth quantizes while training (forward,
// backward), its own parameters, and four hooks; the core does everything that is the same
// for every policy once it has integer bitwidths:
//
//   core (this file)                          policy (frac_bits.hpp, noise_bits.hpp, ...)
//   ------------------------------------      -----------------------------------------------
//   group layout, groups(), weight_count()    bind(): core_bind(...), then its parameters
//   integer bitwidths k_g, frozen()           double real_bits(g)      b_g while training
//   freeze(rounding): nearest / up / budget   void freezing(k)         before k_g := k (hook)
//   freeze_to(k): checks, then k_g := k       quant_grid frozen_grid(g, w)  the grid at k_g
//   size_bits(), compression_ratio()          forward, backward, visit_parameters
//   frozen_bits(), group_scales(w), codes()   static lowest_bits: smallest k its grids allow
//   save(byte_writer) / load(byte_reader)
//   zero_grad, add_size_gradient, project over the visited parameters (below); noise_bits,
//   whose bitwidth parameter is a logit, hides the last two with its own.
//
//   group_bits()[g] = frozen ? k_g : policy.real_bits(g)
//   size_bits()     = sum_g n_g group_bits()[g] + 40 groups        (groups.hpp: the overhead)
//   add_size_gradient: grad(b_g) += dL/dsize n_g for each parameter of kind bitwidth
//   project()       b_g := clamp(b_g, b_min, b_max) (k_g once frozen); s := max(s, scale_floor)
//   freeze(nearest) k_g = clamp(floor(b_g + 0.5), ceil(b_min), floor(b_max))   (round half up)
//   freeze(up)      k_g = clamp(ceil(b_g), ceil(b_min), floor(b_max))
//   freeze(budget_aware)  the greedy of budget.hpp on this tensor alone, with its own current
//                   (real) code size as the target.
//   codes(w)[i] * group_scales(w)[g] == forward(w)[i] exactly once frozen (both from
//                   frozen_grid(g, w): kernels/quantize.hpp quant_codes / quant_fprop).
//
// State (save / load, io/bytes.hpp, little-endian): u8 frozen (0 / 1), u32 group count (0 unless
// frozen), that many i32 frozen bitwidths in [1, 16]. This is the quantizer record of the
// checkpoint (train/checkpoint.hpp), which a policy with state of its own extends after these
// bytes (noise_bits: the u64 noise step); the core's bytes are unchanged from the time the
// checkpoint wrote them itself (versions 1 and 2). Real-valued parameters (bitwidths, scales,
// logits) are not in it: they are parameters (visit_parameters) and travel with the network's
// parameters. load() applies the bitwidths through the policy's freeze_to, as a freeze would.
//
// The core is a CRTP base (Policy derives from group_quantizer<Policy, T>) rather than a member:
// the policy holds the core's state and the core calls the policy's hooks without virtual
// calls, and the policy needs no forwarding accessors (which would be copies again). A policy
// may hide a member of the core with its own (fixed_bits: freeze() does nothing; noise_bits:
// project(), add_size_gradient(), and save() / load(), which add its noise step).
//
// Threads: for_each_group runs a policy's per-group forward / backward passes on the threads
// (kernels/parallel.hpp: contiguous runs of groups) when the tensor has at least
// group_parallel_min() weights. A group's pass touches only its own weights and its own
// parameter gradients, in the same order on any thread, so the results are the same bits on any
// number of threads.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/quantize.hpp>
#include <bitgrad/quant/budget.hpp>
#include <bitgrad/quant/groups.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::quant {

namespace detail {

/// Writes a quantizer's state: u8 frozen, u32 n, n x i32 bitwidths (empty unless frozen).
inline void save_frozen_state(io::byte_writer& w, const std::vector<int>& frozen_bits) {
  w.put<std::uint8_t>(frozen_bits.empty() ? 0 : 1);
  w.put(static_cast<std::uint32_t>(frozen_bits.size()));
  for (int k : frozen_bits) w.put(static_cast<std::int32_t>(k));
}

/// Reads what save_frozen_state wrote for a quantizer `who` with `groups` integer groups;
/// returns the bitwidths (empty: not frozen). Fails, naming `who`, on a flag other than 0 / 1,
/// a group count other than `groups`, or a bitwidth outside [1, 16].
inline std::vector<int> load_frozen_state(io::byte_reader& r, std::size_t groups,
                                          std::string_view who) {
  const auto is_frozen = r.get<std::uint8_t>("frozen flag");
  const auto n = r.get<std::uint32_t>("group count");
  if (is_frozen > 1 || (is_frozen == 0 && n != 0))
    r.fail("bad frozen state for quantizer '" + std::string(who) + "'");
  if (is_frozen == 1 && n != groups)
    r.fail("checkpoint of another architecture: quantizer '" + std::string(who) + "' has " +
           std::to_string(n) + " frozen groups, the network's has " + std::to_string(groups));
  r.need_values(n, 4, "frozen bitwidths");
  std::vector<int> bits;
  for (std::uint32_t g = 0; g < n; ++g) {
    const auto b = r.get<std::int32_t>("frozen bitwidth");
    if (b < min_bitwidth || b > max_bitwidth)
      r.fail("frozen bitwidth " + std::to_string(b) + " outside [1, 16]");
    bits.push_back(b);
  }
  return bits;
}

/// Below this many weights a quantizer's per-group passes run on the calling thread. The
/// optimizer's crossovers (kernels/optim_update.hpp: Adam, ~20 bytes touched per element) taken
/// over: forward + backward touch 24-28 bytes per weight. benchmarks/bench_quantize.cpp at 1
/// and 2 threads checks the sizes above it (benchmarks/README.md, "Fused ReLU epilogues,
/// quantizer passes on the threads"); the crossover itself is not measured yet.
inline std::size_t group_parallel_min() {
  return std::size_t(1) << (bitgrad::detail::omp_threads_sleep() ? 19 : 17);
}

} // namespace detail

/// The grid of scale_mode::max_abs at integer bitwidth k for a group of n weights with
/// statistics st: s = max|w| / L_k, and for k = 1 the L2-optimal sign scale s = mean|w|.
template <class T>
quant_grid<T> max_abs_grid(int k, const abs_stats<T>& st, std::size_t n) {
  const T s = k == 1 ? st.sum_abs / static_cast<T>(n) : st.max_abs / static_cast<T>(level_limit(k));
  return make_grid(k, std::max(s, scale_floor<T>));
}

/// The shared per-group core (see the top of this file). Policy must provide
/// `static constexpr const char* policy_name`, `static constexpr int lowest_bits`,
/// `double real_bits(std::size_t g) const`, `void freezing(const std::vector<int>& k)` and
/// `quant_grid<T> frozen_grid(std::size_t g, const T* w) const`.
template <class Policy, class T>
class group_quantizer {
public:
  using value_type = T;
  static constexpr bool is_identity = false;

  // ---- layout ---------------------------------------------------------------------------
  std::size_t groups() const { return layout_.groups(); }
  std::size_t group_size() const { return layout_.group_size(); }
  std::size_t weight_count() const { return layout_.weight_count(); }
  std::size_t group_weight_count(std::size_t g) const { return layout_.count(g); }
  const group_layout& layout() const { return layout_; }

  // ---- bitwidths ------------------------------------------------------------------------
  double b_min() const { return b_min_; }
  double b_max() const { return b_max_; }
  bool frozen() const { return frozen_; }

  /// The current bitwidth per group: real while training, the integer k_g once frozen.
  std::vector<double> group_bits() const {
    std::vector<double> b(layout_.groups());
    for (std::size_t g = 0; g < b.size(); ++g)
      b[g] = frozen_ ? static_cast<double>(kbits_[g]) : self().real_bits(g);
    return b;
  }

  /// sum_g n_g group_bits()[g] + 40 groups.
  double size_bits() const {
    double total = 0;
    const auto b = group_bits();
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      total += static_cast<double>(layout_.count(g)) * b[g] + group_overhead_bits;
    return total;
  }

  /// 32 * weights / size_bits.
  double compression_ratio() const {
    return 32.0 * static_cast<double>(weight_count()) / size_bits();
  }

  // ---- the policy's parameters, generically (a policy may hide these with its own) --------
  /// Every visited parameter's gradient to zero.
  void zero_grad() {
    self().visit_parameters([](param_ref<T>& p) { std::fill(p.grad, p.grad + p.size, T(0)); });
  }

  /// For a parameter of kind bitwidth that holds b_g itself: grad_g += dL/dsize * n_g
  /// (d size / d b_g = n_g); nothing once frozen.
  void add_size_gradient(T dloss_dsize) {
    if (frozen_) return;
    self().visit_parameters([&](param_ref<T>& p) {
      if (p.kind != param_kind::bitwidth) return;
      for (std::size_t g = 0; g < p.size; ++g)
        p.grad[g] += dloss_dsize * static_cast<T>(layout_.count(g));
    });
  }

  /// Bitwidths b_g: clamped to [b_min, b_max], or k_g once frozen (frozen bitwidths do not
  /// train); scales: at least scale_floor.
  void project() {
    self().visit_parameters([&](param_ref<T>& p) {
      for (std::size_t g = 0; g < p.size; ++g) {
        T& v = p.value[g];
        if (p.kind == param_kind::bitwidth)
          v = frozen_ ? static_cast<T>(kbits_[g])
                      : std::clamp(v, static_cast<T>(b_min_), static_cast<T>(b_max_));
        else if (p.kind == param_kind::scale)
          v = std::max(v, scale_floor<T>);
      }
    });
  }

  // ---- freezing -------------------------------------------------------------------------
  void freeze(rounding r) {
    detail::check_bound(Policy::policy_name, layout_.weight_count());
    const auto b = group_bits();
    detail::check_finite_bits(Policy::policy_name, b);
    std::vector<int> k(layout_.groups());
    if (r == rounding::budget_aware) {
      std::vector<budget_item> items;
      detail::append_items(self(), items);
      k = round_to_budget(items, size_bits() - group_overhead_bits * static_cast<double>(k.size()));
    } else {
      const int lo = static_cast<int>(std::ceil(b_min_));
      const int hi = static_cast<int>(std::floor(b_max_));
      for (std::size_t g = 0; g < k.size(); ++g) {
        const double v = r == rounding::up ? std::ceil(b[g]) : std::floor(b[g] + 0.5);
        k[g] = std::clamp(static_cast<int>(v), lo, hi);
      }
    }
    self().freeze_to(k);
  }

  /// Freezes at explicit integer bitwidths, one per group, each in [lowest_bits, 16]; throws
  /// config_error (the quantizer unchanged) otherwise.
  void freeze_to(const std::vector<int>& bits) {
    detail::check_bound(Policy::policy_name, layout_.weight_count());
    detail::check_count(Policy::policy_name, "bitwidths (one per group)", layout_.groups(),
                        bits.size());
    for (int k : bits) {
      detail::check_integer_bits(Policy::policy_name, k);
      if (k < Policy::lowest_bits)
        throw config_error(std::string(Policy::policy_name) + ": expected bitwidths >= " +
                           std::to_string(Policy::lowest_bits) + ", got " + std::to_string(k));
    }
    self().freezing(bits);
    kbits_ = bits;
    frozen_ = true;
  }

  // ---- export (after freeze) ------------------------------------------------------------
  std::vector<int> frozen_bits() const {
    detail::check_frozen(Policy::policy_name, frozen_, "frozen_bits()");
    return kbits_;
  }

  /// The step of each group's grid for weights w (w-derived scales: see the policy).
  std::vector<T> group_scales(const T* w) const {
    detail::check_frozen(Policy::policy_name, frozen_, "group_scales()");
    std::vector<T> s(layout_.groups());
    for (std::size_t g = 0; g < s.size(); ++g) s[g] = self().frozen_grid(g, w).scale;
    return s;
  }

  /// Integer codes: code * group_scales(w)[g] == forward(w) exactly, element by element.
  void codes(const T* w, std::int32_t* out) const {
    detail::check_frozen(Policy::policy_name, frozen_, "codes()");
    for (std::size_t g = 0; g < layout_.groups(); ++g)
      bitgrad::quant_codes(layout_.count(g), w + layout_.offset(g), out + layout_.offset(g),
                           self().frozen_grid(g, w));
  }

  // ---- state ----------------------------------------------------------------------------
  void save(io::byte_writer& w) const {
    detail::save_frozen_state(w, frozen_ ? kbits_ : std::vector<int>{});
  }
  /// Reads what save() wrote and applies it (freeze_to when frozen); `who` names the
  /// quantizer in messages (default: the policy's name).
  void load(io::byte_reader& r, std::string_view who = Policy::policy_name) {
    const std::vector<int> bits = detail::load_frozen_state(r, layout_.groups(), who);
    if (!bits.empty()) self().freeze_to(bits);
  }

protected:
  group_quantizer(double b_min, double b_max) : b_min_(b_min), b_max_(b_max) {}

  /// Fixes the layout and thaws the quantizer; returns the group count, for the policy to
  /// size its parameters.
  std::size_t core_bind(std::size_t channels, std::size_t per_channel, std::size_t group_size) {
    layout_ = group_layout(Policy::policy_name, channels, per_channel, group_size);
    kbits_.clear();
    frozen_ = false;
    return layout_.groups();
  }
  void check_bound() const { detail::check_bound(Policy::policy_name, layout_.weight_count()); }

  /// f(g) for every group g, on the threads for a large tensor (see the top). f must not throw
  /// (an exception cannot leave a thread): check what can fail before.
  template <class F>
  void for_each_group(F&& f) const {
    const std::size_t groups = layout_.groups();
    const std::size_t threads = layout_.weight_count() >= detail::group_parallel_min()
                                    ? bitgrad::detail::batch_threads(groups)
                                    : 1;
    bitgrad::detail::parallel_chunks(threads, groups,
                                     [&](std::size_t, std::size_t begin, std::size_t end) {
                                       for (std::size_t g = begin; g < end; ++g) f(g);
                                     });
  }

  group_layout layout_;
  std::vector<int> kbits_; ///< k_g once frozen (empty before)
  bool frozen_ = false;

private:
  const Policy& self() const { return static_cast<const Policy&>(*this); }
  Policy& self() { return static_cast<Policy&>(*this); }

  double b_min_, b_max_;
};

} // namespace bitgrad::quant
