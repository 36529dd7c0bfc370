// Budget-aware freezing: choose an integer bitwidth per group so the frozen model stays within
// a size target.
//
// Algorithm (greedy, deterministic): every trainable group starts at k = floor(b) (clamped to
// its policy's [ceil(b_min), floor(b_max)]); then, in order of decreasing fractional part
// b - floor(b) (ties: visiting order), a group is rounded up to k + 1 whenever the total still
// fits the target, otherwise it is skipped and the next, possibly smaller, group is tried.
// So if the all-floor model fits, the result never exceeds the target; groups whose real
// bitwidth was closest to the next integer get it first.
// When even the all-floor model exceeds the target, groups are rounded DOWN one bit at a time,
// in order of increasing fractional part (the groups furthest from their floor's claim first;
// ties: visiting order), pass after pass, until the total fits or every group is at its lowest
// allowed bitwidth. So the result is within the target whenever the all-minimum model is.
// Then the bits left are spent (issue #24): rounding toward ceil(b) alone leaves budget unused
// when the groups still below their ceiling are too big for the remainder, or when groups sit
// on an integer (a layer pinned at b_min has b - floor(b) = 0 and never asked for more). With
// the deficit d_i = b_i - k_i (how far the group's integer lies below its learned bitwidth;
// for the groups rounded down it is the fractional part, as in the pass above), repeatedly
//   raise k_i by 1 for the group of largest d_i among those with k_i < hi_i and
//   n_i <= target - used (ties: visiting order),
// until no +1 fits. The round-up pass above is this rule's first sweep (the groups with
// d_i > 0, in the same order); after it, groups the search left at or above an integer get the
// remainder, the ones with the highest learned bits first. The result never exceeds the
// target and is maximal: no group below hi can take one more bit.
//
// Usage over a model:
//   auto visit = [&](auto&& f) { net.visit_quantizers(f); };   // f(name, q) for each quantizer
//   budget_result r = freeze_to_budget(visit, target_bits);
// Quantizers that are already frozen, or cannot learn bitwidths (no_quant, fixed_bits: always
// frozen), count with their current size_bits() and are left as they are. `visit` must visit the
// same quantizers in the same order on every call.
#pragma once

#include <bitgrad/quant/groups.hpp>
#include <bitgrad/quant/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bitgrad::quant {

/// One group as the budget sees it.
struct budget_item {
  double bits;    ///< real bitwidth while training
  double weights; ///< weights in the group (bits per unit of bitwidth)
  int lo;         ///< smallest integer bitwidth allowed
  int hi;         ///< largest integer bitwidth allowed
};

namespace detail {
/// The spending rule at the top of the file: while some group below its `hi` fits one more
/// bit, raise the one of largest deficit bits - k (ties: visiting order). A max-heap on
/// (deficit, -index); a group that does not fit is dropped for good, as the remainder only
/// shrinks. `used` is updated.
inline void spend_remainder(std::span<const budget_item> items, std::vector<int>& k, double& used,
                            double code_budget) {
  struct entry {
    double deficit;
    std::size_t index;
  };
  auto lower = [](const entry& a, const entry& b) {
    return a.deficit < b.deficit || (a.deficit == b.deficit && a.index > b.index);
  };
  std::vector<entry> heap;
  for (std::size_t i = 0; i < items.size(); ++i)
    if (k[i] < items[i].hi) heap.push_back({items[i].bits - k[i], i});
  std::make_heap(heap.begin(), heap.end(), lower);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower);
    const std::size_t i = heap.back().index;
    heap.pop_back();
    if (used + items[i].weights > code_budget) continue;
    ++k[i];
    used += items[i].weights;
    if (k[i] < items[i].hi) {
      heap.push_back({items[i].bits - k[i], i});
      std::push_heap(heap.begin(), heap.end(), lower);
    }
  }
}
} // namespace detail

/// The greedy rounding above, on a flat list of groups; `code_budget` is the bits available for
/// the codes (overhead already subtracted). Returns one integer bitwidth per item.
/// Throws config_error when a bitwidth or the budget is not finite.
inline std::vector<int> round_to_budget(std::span<const budget_item> items, double code_budget) {
  if (std::isnan(code_budget))
    throw config_error("round_to_budget: the code budget is not a number");
  for (std::size_t i = 0; i < items.size(); ++i)
    if (!std::isfinite(items[i].bits))
      throw config_error("round_to_budget: group " + std::to_string(i) +
                         " has a non-finite bitwidth (" + std::to_string(items[i].bits) + ")");
  std::vector<int> k(items.size());
  double used = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    k[i] = std::clamp(static_cast<int>(std::floor(items[i].bits)), items[i].lo, items[i].hi);
    used += items[i].weights * k[i];
  }
  std::vector<std::size_t> order(items.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto frac = [&](std::size_t i) { return items[i].bits - std::floor(items[i].bits); };
  if (used > code_budget) {
    std::vector<std::size_t> down = order;
    std::stable_sort(down.begin(), down.end(),
                     [&](std::size_t x, std::size_t y) { return frac(x) < frac(y); });
    bool lowered = true;
    while (used > code_budget && lowered) {
      lowered = false;
      for (std::size_t i : down) {
        if (used <= code_budget) break;
        if (k[i] > items[i].lo) {
          --k[i];
          used -= items[i].weights;
          lowered = true;
        }
      }
    }
    if (used <= code_budget) detail::spend_remainder(items, k, used, code_budget);
    return k;
  }
  detail::spend_remainder(items, k, used, code_budget);
  return k;
}

struct budget_result {
  double size_bits;   ///< total size after freezing, overhead included
  double target_bits; ///< the target asked for
  bool within_target; ///< size_bits <= target_bits (false only when even all-minimum exceeds it)
};

namespace detail {
template <class Q>
void append_items(const Q& q, std::vector<budget_item>& items) {
  const auto bits = q.group_bits();
  const int lo = static_cast<int>(std::ceil(q.b_min()));
  const int hi = static_cast<int>(std::floor(q.b_max()));
  for (std::size_t g = 0; g < bits.size(); ++g)
    items.push_back({bits[g], static_cast<double>(q.group_weight_count(g)), lo, hi});
}
} // namespace detail

/// Freezes every trainable quantizer `visit` reaches so the model's size stays <= target_bits
/// whenever that is possible (see the top of this file). Throws config_error, before freezing
/// anything, when target_bits is not a positive number or a bitwidth is not finite (naming
/// the layer and the group).
template <class Visit>
budget_result freeze_to_budget(Visit&& visit, double target_bits) {
  if (!(target_bits > 0))
    throw config_error("freeze_to_budget: the target must be > 0 bits, got " +
                       std::to_string(target_bits));
  std::vector<budget_item> items;
  double fixed = 0;
  visit([&](std::string_view name, auto& q) {
    if (!q.frozen()) {
      detail::check_finite_bits("freeze_to_budget: layer '" + std::string(name) + "'",
                                q.group_bits());
      detail::append_items(q, items);
      fixed += group_overhead_bits * static_cast<double>(q.groups());
      return;
    }
    fixed += q.size_bits();
  });
  const std::vector<int> k = round_to_budget(items, target_bits - fixed);
  std::size_t next = 0;
  visit([&](std::string_view, auto& q) {
    if (!q.frozen()) {
      std::vector<int> mine(k.begin() + static_cast<std::ptrdiff_t>(next),
                            k.begin() + static_cast<std::ptrdiff_t>(next + q.groups()));
      next += q.groups();
      q.freeze_to(mine);
    }
  });
  double total = 0;
  visit([&](std::string_view, const auto& q) { total += q.size_bits(); });
  return {total, target_bits, total <= target_bits};
}

} // namespace bitgrad::quant
