// Budget-aware freezing against several budgets at once (issue #22): the weight size, BOPs and
// peak activation memory (quant/costs.hpp), each optional. Every learnable group of the weight
// quantizers and of the activation quantizers gets one integer bitwidth k so that every active
// budget is met whenever lowering bitwidths can meet it.
//
// Words
//   budget j    a cost C_j(k) with a target C*_j: size = fixed + sum_g n_g k_g (the weight
//               quantizers' stored bits, as freeze_to_budget counts them), BOPs (bilinear in
//               k_w, k_a), peak activation memory (a maximum over tensors).
//   excess      E_j(k) = max(0, C_j - C*_j) for size and BOPs; for the memory
//               E(k) = sum_t max(0, mem_t - C*), so every tensor above the target counts (with
//               the maximum alone, lowering one of two tensors tied at the peak would show no
//               progress). Budget j is met iff E_j = 0.
//   proxy       the loss a step down is taken to cost: p_i = b_i - (k_i - 1), how far the new
//               integer lies below the learned real bitwidth b_i (the learned bits already carry
//               each group's sensitivity: the search traded them against the same penalties).
//
// Algorithm (greedy on a combined score, deterministic):
//   1. k_i = ceil(b_i), clamped to [lo_i, hi_i] (lo: ceil(b_min), and 1 or 2 for activations;
//      hi: floor(b_max)): the learned bits rounded up, the most any budget may need to cut from.
//   2. While some budget is violated: take the most violated one, j = argmax C_j / C*_j; among
//      the groups whose step down lowers E_j, lower the one of least
//        score_i = p_i / (dE_j,i / C*_j),   dE_j,i = E_j(k) - E_j(k - e_i),
//      i.e. the least loss proxy per unit of the budget's relative excess removed (ties: the
//      first group in visiting order, weights before activations). A budget no step can lower
//      is infeasible: it is reported unmet and left out of the choice.
//   3. Bits not left unspent: while some group below its cap can step up with no budget's
//      excess growing, raise the one furthest below its learned bitwidth (largest b_i - k_i;
//      ties: visiting order). The cap is hi_i for a group that counts in an active budget
//      (weights: size or BOPs; activations: BOPs or memory) and ceil(b_i) for one that counts
//      in none, which no budget limits. So the result is maximal: no group that a budget
//      limits can take one more bit without breaking a budget (issue #24: capping every group
//      at ceil(b_i) left budget unspent, e.g. when a layer sat on b_min).
// With no budget violated at step 1, the groups no budget limits end at ceil(b); the others
// take the budgets' slack, largest b_i - k_i first.
//
// Usage:
//   quant::budgets b{.size_bits = weight_budget, .bops = &costs.bops, .bops_target = 2e6};
//   auto r = quant::freeze_to_budgets([&](auto&& f) { net.visit_quantizers(f); },
//                                     [&](auto&& f) { nn::visit_activation_quantizers(net, f); },
//                                     b);
// The costs must have been built over the same quantizers (bits_source::owner() names them);
// quantizers already frozen count at their frozen bitwidths.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/quant/costs.hpp>
#include <bitgrad/quant/groups.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::quant {

/// The active budgets; an unset size / a null cost is not a budget.
struct budgets {
  /// The weight quantizers' stored bits (codes and per-group overhead; no biases).
  std::optional<double> size_bits{};
  const bops_cost* bops = nullptr;
  double bops_target = 0; ///< BOPs per image
  const activation_memory_cost* memory = nullptr;
  double memory_target_bits = 0; ///< peak activation bits per image
};

/// One budget after freezing.
struct budget_check {
  std::string name; ///< "size", "bops" or "activation_memory"
  double value = 0; ///< the cost at the frozen bitwidths (bits or BOPs)
  double target = 0;
  bool met = false;
};

struct budgets_result {
  std::vector<budget_check> checks;
  bool all_met = true;
};

namespace detail {

/// The flattened problem: groups, their integer bitwidths and every budget's cost in them.
class joint_budget_problem {
public:
  struct item {
    double b;       ///< learned real bitwidth
    int lo, hi;     ///< allowed integer range
    double weights; ///< weights in the group (0 for an activation group)
  };

  std::vector<item> items;
  std::map<const void*, std::size_t> first; ///< quantizer -> index of its first group
  double fixed_size = 0;                    ///< overhead and frozen quantizers' bits
  const budgets* limits = nullptr;

  /// A bits source resolved once: the items it reads, or its constant bits.
  struct source {
    std::size_t first = npos;
    std::vector<double> constant;
    std::size_t groups = 0;
  };
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
  struct layer {
    source w, a;
    const std::vector<double>* macs;
  };
  struct tensor {
    source bits;
    std::vector<double> elements; ///< per group
  };
  std::vector<layer> layers;
  std::vector<tensor> tensors;

  source resolve(const bits_source& s) const {
    source r;
    r.groups = s.groups();
    const auto it = s.owner() ? first.find(s.owner()) : first.end();
    if (it != first.end())
      r.first = it->second;
    else
      r.constant = s.bits();
    return r;
  }
  void build_costs() {
    if (limits->bops)
      for (std::size_t l = 0; l < limits->bops->layers(); ++l)
        layers.push_back({resolve(limits->bops->layer(l).weight),
                          resolve(limits->bops->layer(l).input), &limits->bops->group_macs(l)});
    if (limits->memory)
      for (std::size_t t = 0; t < limits->memory->tensors(); ++t) {
        const activation_tensor& a = limits->memory->tensor(t);
        tensor x{resolve(a.bits), {}};
        for (std::size_t h = 0; h < a.bits.groups(); ++h)
          x.elements.push_back(
              static_cast<double>(a.bits.group_channels(h) * a.elements_per_channel));
        tensors.push_back(std::move(x));
      }
  }
  static double bits(const source& s, const std::vector<int>& k, std::size_t g) {
    return s.first == npos ? s.constant[g] : static_cast<double>(k[s.first + g]);
  }

  double size(const std::vector<int>& k) const {
    double s = fixed_size;
    for (std::size_t i = 0; i < items.size(); ++i) s += items[i].weights * k[i];
    return s;
  }
  double bops(const std::vector<int>& k) const {
    double s = 0;
    for (const layer& l : layers)
      for (std::size_t g = 0; g < l.w.groups; ++g)
        for (std::size_t h = 0; h < l.a.groups; ++h)
          s += (*l.macs)[g * l.a.groups + h] * bits(l.w, k, g) * bits(l.a, k, h);
    return s;
  }
  double tensor_bits(const tensor& t, const std::vector<int>& k) const {
    double s = 0;
    for (std::size_t h = 0; h < t.elements.size(); ++h) s += t.elements[h] * bits(t.bits, k, h);
    return s;
  }
  double peak(const std::vector<int>& k) const {
    double m = 0;
    for (const tensor& t : tensors) m = std::max(m, tensor_bits(t, k));
    return m;
  }

  // Budgets: 0 size, 1 BOPs, 2 memory.
  bool active(int j) const {
    return j == 0   ? limits->size_bits.has_value()
           : j == 1 ? limits->bops != nullptr
                    : limits->memory != nullptr;
  }
  double target(int j) const {
    return j == 0 ? *limits->size_bits : j == 1 ? limits->bops_target : limits->memory_target_bits;
  }
  double value(int j, const std::vector<int>& k) const {
    return j == 0 ? size(k) : j == 1 ? bops(k) : peak(k);
  }
  double excess(int j, const std::vector<int>& k) const {
    if (j < 2) return std::max(0.0, value(j, k) - target(j));
    double e = 0;
    for (const tensor& t : tensors) e += std::max(0.0, tensor_bits(t, k) - target(2));
    return e;
  }
};

inline const char* budget_name(int j) {
  return j == 0 ? "size" : j == 1 ? "bops" : "activation_memory";
}

} // namespace detail

/// Freezes every trainable quantizer `weights` and `acts` reach (f(name, q) visitors, the same
/// quantizers in the same order on every call) against every active budget (see the top of the
/// file). Throws config_error, before freezing anything, when a target is not a positive number
/// or a learned bitwidth is not finite (naming the layer).
template <class VisitW, class VisitA>
budgets_result freeze_to_budgets(VisitW&& weights, VisitA&& acts, const budgets& limits) {
  detail::joint_budget_problem p;
  p.limits = &limits;
  for (int j = 0; j < 3; ++j)
    if (p.active(j) && !(p.target(j) > 0))
      throw config_error(std::string("freeze_to_budgets: the ") + detail::budget_name(j) +
                         " target must be > 0, got " + std::to_string(p.target(j)));
  // Weight groups count n_g bits per bit of width; activation groups none (no size).
  auto add = [&]<bool Weight>(std::string_view name, const auto& q, int lowest) {
    if (q.frozen()) {
      if constexpr (Weight) p.fixed_size += q.size_bits();
      return;
    }
    const auto b = q.group_bits();
    for (std::size_t g = 0; g < b.size(); ++g)
      if (!std::isfinite(b[g]))
        throw config_error("freeze_to_budgets: layer '" + std::string(name) + "' group " +
                           std::to_string(g) + " has a non-finite bitwidth");
    p.first[static_cast<const void*>(&q)] = p.items.size();
    const int lo = std::max(lowest, static_cast<int>(std::ceil(q.b_min())));
    const int hi = static_cast<int>(std::floor(q.b_max()));
    for (std::size_t g = 0; g < b.size(); ++g) {
      double n = 0;
      if constexpr (Weight) n = static_cast<double>(q.group_weight_count(g));
      p.items.push_back({b[g], lo, hi, n});
    }
    if constexpr (Weight) p.fixed_size += group_overhead_bits * static_cast<double>(b.size());
  };
  weights([&](std::string_view name, auto& q) { add.template operator()<true>(name, q, 1); });
  acts([&](std::string_view name, auto& q) {
    if constexpr (requires { q.lowest_bits(); })
      add.template operator()<false>(name, q, q.lowest_bits());
    else
      add.template operator()<false>(name, q, 1);
  });
  p.build_costs();

  const std::size_t n = p.items.size();
  std::vector<int> k(n);
  for (std::size_t i = 0; i < n; ++i)
    k[i] = std::clamp(static_cast<int>(std::ceil(p.items[i].b)), p.items[i].lo, p.items[i].hi);

  // 2. lower, most violated budget first
  bool infeasible[3] = {false, false, false};
  for (;;) {
    int j = -1;
    double worst = 0;
    for (int c = 0; c < 3; ++c) {
      if (!p.active(c) || infeasible[c] || p.excess(c, k) <= 0) continue;
      const double r = p.value(c, k) / p.target(c);
      if (j < 0 || r > worst) {
        j = c;
        worst = r;
      }
    }
    if (j < 0) break;
    const double e0 = p.excess(j, k);
    std::size_t best = n;
    double best_score = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (k[i] <= p.items[i].lo) continue;
      --k[i];
      const double gain = (e0 - p.excess(j, k)) / p.target(j);
      ++k[i];
      if (!(gain > 0)) continue;
      const double score = (p.items[i].b - (k[i] - 1)) / gain;
      if (best == n || score < best_score) {
        best = i;
        best_score = score;
      }
    }
    if (best == n)
      infeasible[j] = true;
    else
      --k[best];
  }

  // 3. raise what fits, furthest below its learned bitwidth first; a group no active budget
  // counts stops at ceil(b)
  std::vector<char> limited(n, 0);
  auto mark = [&](const detail::joint_budget_problem::source& src) {
    if (src.first == detail::joint_budget_problem::npos) return;
    for (std::size_t g = 0; g < src.groups; ++g) limited[src.first + g] = 1;
  };
  if (p.active(0))
    for (std::size_t i = 0; i < n; ++i)
      if (p.items[i].weights > 0) limited[i] = 1;
  if (p.active(1))
    for (const auto& l : p.layers) {
      mark(l.w);
      mark(l.a);
    }
  if (p.active(2))
    for (const auto& t : p.tensors) mark(t.bits);
  for (;;) {
    double e[3];
    for (int c = 0; c < 3; ++c) e[c] = p.active(c) ? p.excess(c, k) : 0;
    std::size_t best = n;
    for (std::size_t i = 0; i < n; ++i) {
      const int cap = limited[i]
                          ? p.items[i].hi
                          : std::min(p.items[i].hi, static_cast<int>(std::ceil(p.items[i].b)));
      if (k[i] >= cap) continue;
      if (best != n && p.items[i].b - k[i] <= p.items[best].b - k[best]) continue;
      ++k[i];
      bool fits = true;
      for (int c = 0; c < 3 && fits; ++c)
        if (p.active(c) && p.excess(c, k) > e[c]) fits = false;
      --k[i];
      if (fits) best = i;
    }
    if (best == n) break;
    ++k[best];
  }

  budgets_result r;
  for (int c = 0; c < 3; ++c) {
    if (!p.active(c)) continue;
    const bool met = p.excess(c, k) <= 0;
    r.checks.push_back({detail::budget_name(c), p.value(c, k), p.target(c), met});
    r.all_met = r.all_met && met;
  }
  auto freeze = [&](std::string_view, auto& q) {
    if (q.frozen()) return;
    const std::size_t f = p.first.at(static_cast<const void*>(&q));
    q.freeze_to(std::vector<int>(k.begin() + static_cast<std::ptrdiff_t>(f),
                                 k.begin() + static_cast<std::ptrdiff_t>(f + q.groups())));
  };
  weights(freeze);
  acts(freeze);
  return r;
}

} // namespace bitgrad::quant
