// Learning-rate schedules: plain value types mapping a step (or epoch: whatever the caller
// counts, starting at 0) to a factor of the base learning rate.
//
//   constant_schedule{}                        factor(s) = 1
//   step_schedule{.step_size = k, .gamma = g}  factor(s) = g^floor(s / k)                (StepLR)
//   cosine_schedule{.total_steps = T, .min_factor = m}
//       factor(s) = m + (1 - m) * (1 + cos(pi * s / T)) / 2 for s <= T, m afterwards
//       (CosineAnnealingLR with eta_min = m * base lr, held at eta_min after T)
//   warmup<S>{.warmup_steps = w, .inner = S{...}, .start_factor = f0}
//       factor(s) = (f0 + (1 - f0) * s / w) * inner.factor(0)   for s < w (linear ramp)
//       factor(s) = inner.factor(s - w)                          for s >= w
//       so the inner schedule starts, at its own step 0, when the warmup ends.
//
//   auto sched = optim::warmup<optim::cosine_schedule>{.warmup_steps = 500,
//                                                      .inner = {.total_steps = 10000}};
//   opt.set_lr(base_lr * sched.factor(step));     // or opt.set_lr(optim::scheduled_lr(...))
#pragma once

#include <bitgrad/core/error.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <numbers>
#include <string>

namespace bitgrad::optim {

/// A schedule: factor(step) is the multiplier of the base learning rate at that step.
template <class S>
concept lr_schedule = requires(const S& s, std::size_t step) {
  { s.factor(step) } -> std::convertible_to<double>;
};

/// The learning rate of `schedule` at `step` for base learning rate `base_lr`.
template <lr_schedule S>
double scheduled_lr(const S& schedule, double base_lr, std::size_t step) {
  return base_lr * schedule.factor(step);
}

/// factor 1 at every step (a warmup with nothing after it).
struct constant_schedule {
  double factor(std::size_t) const { return 1.0; }
};

/// Multiplies the lr by gamma every step_size steps.
struct step_schedule {
  std::size_t step_size = 1;
  double gamma = 0.1;

  double factor(std::size_t step) const {
    if (step_size == 0) throw config_error("step_schedule: step_size must be > 0");
    return std::pow(gamma, static_cast<double>(step / step_size));
  }
};

/// Cosine annealing from 1 to min_factor over total_steps steps, then min_factor.
struct cosine_schedule {
  std::size_t total_steps = 1;
  double min_factor = 0.0;

  double factor(std::size_t step) const {
    if (total_steps == 0) throw config_error("cosine_schedule: total_steps must be > 0");
    if (step >= total_steps) return min_factor;
    // pi * step / total_steps in this order: the trainer's learning rates (and so its runs,
    // bit for bit) have been computed this way since before it used this schedule.
    const double angle =
        std::numbers::pi * static_cast<double>(step) / static_cast<double>(total_steps);
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + std::cos(angle));
  }
};

/// Linear warmup for warmup_steps steps from start_factor up to the inner schedule, then the
/// inner schedule (shifted so that it starts at its step 0).
template <lr_schedule Inner>
struct warmup {
  std::size_t warmup_steps = 0;
  Inner inner{};
  double start_factor = 0.0;

  double factor(std::size_t step) const {
    if (step >= warmup_steps) return inner.factor(step - warmup_steps);
    const double ramp = static_cast<double>(step) / static_cast<double>(warmup_steps);
    return (start_factor + (1.0 - start_factor) * ramp) * inner.factor(0);
  }
};

} // namespace bitgrad::optim
