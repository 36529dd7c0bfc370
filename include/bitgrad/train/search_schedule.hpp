// The search phase's penalty schedule (issue #24): a size target that tightens over the search
// and a penalty weight that warms up, so the task loss, not only the penalty, shapes where the
// bits go. Without either, the target is the final one from the first step and the penalty
// drives the average bitwidth to it within a few hundred steps.
//
// With s = 0, 1, ..., T - 1 the step within the search phase (T = its steps), S0 the weights'
// size when the search starts, S* the final target and lambda the penalty weight:
//   budget anneal  (fraction a of the search, 0 < a <= 1)
//       f(s) = min(1, (s + 1) / (a T))
//       S*(s) = S*_0 + (S* - S*_0) f(s),   S*_0 = max(S0, S*)
//     the target falls linearly from where the model starts to the final target, which it
//     reaches after the first a T steps and keeps to the end (never below S*; a model that
//     starts within the target has S*(s) = S* throughout);
//   penalty warm-up (fraction w of the search, 0 < w <= 1)
//       lambda(s) = lambda min(1, (s + 1) / (w T)).
// a = 0 / w = 0 switches each off. The schedule depends on the step counter and S0 only, so a
// resumed run (S0 kept in its checkpoint) takes the same penalty at every step. Freezing always
// uses the final target S*.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/quant/penalty.hpp>

#include <algorithm>
#include <cstddef>
#include <string>

namespace bitgrad::train {

struct search_schedule {
  double budget_anneal = 0;  ///< a: fraction of the search over which the target falls; 0 = off
  double penalty_warmup = 0; ///< w: fraction of the search over which lambda grows; 0 = off

  bool active() const { return budget_anneal > 0 || penalty_warmup > 0; }

  /// Throws config_error naming the option when a fraction is outside [0, 1].
  void check() const {
    auto in_unit = [](const char* name, double v) {
      if (!(v >= 0 && v <= 1))
        throw config_error(std::string("trainer: ") + name +
                           " is a fraction of the search phase: expected a value in [0, 1], got " +
                           std::to_string(v));
    };
    in_unit("budget_anneal", budget_anneal);
    in_unit("penalty_warmup", penalty_warmup);
  }

  /// The penalty of step `step` (0-based) of a search of `steps` steps; `final_penalty` holds
  /// S* and lambda; `start_bits` is S0.
  quant::size_penalty at(const quant::size_penalty& final_penalty, double start_bits,
                         std::size_t step, std::size_t steps) const {
    quant::size_penalty p = final_penalty;
    const double t = static_cast<double>(step + 1);
    const double n = static_cast<double>(std::max<std::size_t>(steps, 1));
    if (budget_anneal > 0) {
      const double f = std::min(1.0, t / (budget_anneal * n));
      const double from = std::max(start_bits, final_penalty.target_bits);
      p.target_bits = from + (final_penalty.target_bits - from) * f;
    }
    if (penalty_warmup > 0)
      p.lambda = final_penalty.lambda * std::min(1.0, t / (penalty_warmup * n));
    return p;
  }
};

} // namespace bitgrad::train
