// The size penalty that pushes bitwidths down towards a target model size.
//
// With S = total_size_bits (quant/size.hpp), the target S* in bits and lambda >= 0:
//   hinge      P = lambda max(0, S / S* - 1)                 dP/dS = lambda / S*           (S > S*)
//   quadratic  P = lambda max(0, (S - S*) / u)^2             dP/dS = 2 lambda (S - S*) / u^2
//   absolute   P = lambda |S - S*| / u                       dP/dS = lambda sign(S - S*) / u
// u (unit_bits) normalises sizes so lambda stays in a sane range: by default u = 8192 bits
// (one KiB), i.e. the quadratic penalty is lambda * (KiB over target)^2 as in Uhlich et al.
// The hinge is already relative (unitless). At S = S* the derivative taken is 0.
//
// Targets: size_penalty::target_bits; helpers convert from bytes or from an average bitwidth
// per weight (target_bits_for_average(visit, 4.0) = 4 * total_weights).
//
// apply_size_penalty(visit, p) returns P and calls q.add_size_gradient(dP/dS) on every
// quantizer `visit` reaches (the gradient of S with respect to each quantizer's size is 1).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/quant/size.hpp>

#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>

namespace bitgrad::quant {

enum class penalty_form { hinge, quadratic, absolute };

struct size_penalty {
  penalty_form form = penalty_form::hinge;
  double lambda = 1.0;
  double target_bits = 0;    ///< S*, must be > 0
  double unit_bits = 8192.0; ///< u: 1 KiB
};

/// Target in bits for a size in bytes.
inline double target_bits_from_bytes(double bytes) {
  return 8.0 * bytes;
}

/// Target in bits for an average of `bits_per_weight` over every weight `visit` reaches.
template <class Visit>
double target_bits_for_average(Visit&& visit, double bits_per_weight) {
  return bits_per_weight * static_cast<double>(total_weights(visit));
}

/// {P, dP/dS} at size S.
struct penalty_value {
  double value;
  double dsize;
};

inline penalty_value evaluate_penalty(const size_penalty& p, double size_bits) {
  if (!(p.target_bits > 0))
    throw config_error("size_penalty: expected target_bits > 0, got " +
                       std::to_string(p.target_bits));
  if (!(p.unit_bits > 0))
    throw config_error("size_penalty: expected unit_bits > 0, got " + std::to_string(p.unit_bits));
  const double over = size_bits - p.target_bits;
  switch (p.form) {
  case penalty_form::hinge:
    if (over <= 0) return {0.0, 0.0};
    return {p.lambda * (size_bits / p.target_bits - 1.0), p.lambda / p.target_bits};
  case penalty_form::quadratic:
    if (over <= 0) return {0.0, 0.0};
    return {p.lambda * (over / p.unit_bits) * (over / p.unit_bits),
            2.0 * p.lambda * over / (p.unit_bits * p.unit_bits)};
  case penalty_form::absolute:
    return {p.lambda * std::abs(over) / p.unit_bits,
            over == 0 ? 0.0 : (over > 0 ? p.lambda : -p.lambda) / p.unit_bits};
  }
  return {0.0, 0.0};
}

/// Returns the penalty and accumulates its gradient into every quantizer's parameters.
template <class Visit>
double apply_size_penalty(Visit&& visit, const size_penalty& p) {
  const penalty_value v = evaluate_penalty(p, total_size_bits(visit));
  if (v.dsize != 0)
    visit([&]<class Q>(std::string_view, Q& q) {
      q.add_size_gradient(static_cast<typename Q::value_type>(v.dsize));
    });
  return v.value;
}

} // namespace bitgrad::quant
