// Whole-model size accounting over a quantizer visitor.
//
//   auto visit = [&](auto&& f) { net.visit_quantizers(f); };   // f(name, q) for each quantizer
//   double bits = total_size_bits(visit);                       // codes + per-group overhead
//   double avg  = average_bits_per_weight(visit);               // bits / weights
// Every quantizer counts with its own size_bits() (no_quant: 32 bits per weight), so the
// totals are differentiable in the bitwidths exactly as the quantizers' sizes are.
#pragma once

#include <cstddef>
#include <string_view>

namespace bitgrad::quant {

/// Sum of size_bits() over the quantizers `visit` reaches.
template <class Visit>
double total_size_bits(Visit&& visit) {
  double total = 0;
  visit([&](std::string_view, const auto& q) { total += q.size_bits(); });
  return total;
}

/// Sum of weight_count() over the quantizers `visit` reaches.
template <class Visit>
std::size_t total_weights(Visit&& visit) {
  std::size_t total = 0;
  visit([&](std::string_view, const auto& q) { total += q.weight_count(); });
  return total;
}

/// total_size_bits / total_weights (overhead included); 0 for a model without weights.
template <class Visit>
double average_bits_per_weight(Visit&& visit) {
  const std::size_t n = total_weights(visit);
  return n == 0 ? 0.0 : total_size_bits(visit) / static_cast<double>(n);
}

/// 32 * total_weights / total_size_bits: how much smaller than float32 the model is.
template <class Visit>
double compression_ratio(Visit&& visit) {
  const double bits = total_size_bits(visit);
  return bits == 0 ? 0.0 : 32.0 * static_cast<double>(total_weights(visit)) / bits;
}

} // namespace bitgrad::quant
