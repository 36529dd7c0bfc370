// What every quantizer policy shares: the group layout of a weight tensor, the per-group
// storage overhead, the scale modes and the checks on options (words: quant/quantizer.hpp).
//
//   channels C, per_channel P, group size G:
//   w : | ch 0 | ch 1 | ... | ch G-1 | ch G | ... | ch C-1 |     (each ch = P contiguous values)
//       |<-------- group 0 -------->|<-- group 1 ... -->|       last group: C - (groups-1) G ch
#pragma once

#include <bitgrad/core/error.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace bitgrad::quant {

/// Bits each group costs beside its codes: the scale as float32 (32) and the bitwidth (8).
inline constexpr double group_overhead_bits = 40.0;

/// group_size value meaning "one group for the whole tensor" (clamped to the channel count).
inline constexpr std::size_t per_tensor = std::numeric_limits<std::size_t>::max();

/// Where a group's scale comes from.
enum class scale_mode {
  max_abs, ///< derived from the weights each forward: s_k = max|w_g| / L_k (no gradient)
  learned  ///< a trained per-group parameter (LSQ-style straight-through gradient)
};

/// Bitwidths a group may take, in bits.
inline constexpr int min_bitwidth = 1;
inline constexpr int max_bitwidth = 16;

/// Smallest scale (step) any policy uses, so that 1 / s and w * (1 / s) stay finite (an all-zero
/// group).
template <class T>
inline constexpr T scale_floor = T(1e-20);

/// The channel-to-group layout of one bound weight tensor.
class group_layout {
public:
  group_layout() = default;

  /// Throws config_error for group_size 0 or group_size > channels (per_tensor excepted).
  group_layout(const char* who, std::size_t channels, std::size_t per_channel,
               std::size_t group_size)
      : channels_(channels), per_channel_(per_channel) {
    if (channels == 0 || per_channel == 0)
      throw config_error(std::string(who) + ": expected a weight tensor with channels >= 1 and " +
                         "per_channel >= 1, got channels = " + std::to_string(channels) +
                         ", per_channel = " + std::to_string(per_channel));
    if (group_size == 0)
      throw config_error(std::string(who) + ": expected group_size >= 1 (or per_tensor), got 0");
    if (group_size != per_tensor && group_size > channels)
      throw config_error(std::string(who) + ": expected group_size <= channels (" +
                         std::to_string(channels) + ") or per_tensor, got " +
                         std::to_string(group_size));
    group_size_ = group_size == per_tensor ? channels : group_size;
    groups_ = (channels + group_size_ - 1) / group_size_;
  }

  std::size_t channels() const { return channels_; }
  std::size_t per_channel() const { return per_channel_; }
  std::size_t group_size() const { return group_size_; }
  std::size_t groups() const { return groups_; }
  std::size_t weight_count() const { return channels_ * per_channel_; }
  /// First weight of group g.
  std::size_t offset(std::size_t g) const { return g * group_size_ * per_channel_; }
  /// Weights in group g (the last group may be smaller).
  std::size_t count(std::size_t g) const {
    const std::size_t first = g * group_size_;
    const std::size_t last = first + group_size_ < channels_ ? first + group_size_ : channels_;
    return (last - first) * per_channel_;
  }

private:
  std::size_t channels_ = 0;
  std::size_t per_channel_ = 0;
  std::size_t group_size_ = 0;
  std::size_t groups_ = 0;
};

namespace detail {

/// Throws config_error unless min_bitwidth <= b_min <= b_init <= b_max <= max_bitwidth.
inline void check_bit_range(const char* who, double b_min, double b_max, double b_init) {
  auto fmt = [](double v) {
    std::string s = std::to_string(v);
    while (s.size() > 1 && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  };
  if (!(b_min >= min_bitwidth && b_max <= max_bitwidth))
    throw config_error(std::string(who) + ": expected bitwidth bounds inside [1, 16], got [" +
                       fmt(b_min) + ", " + fmt(b_max) + "]");
  if (!(b_min <= b_max))
    throw config_error(std::string(who) + ": expected b_min <= b_max, got b_min = " + fmt(b_min) +
                       " > b_max = " + fmt(b_max));
  if (!(b_init >= b_min && b_init <= b_max))
    throw config_error(std::string(who) + ": expected b_init inside [b_min, b_max] = [" +
                       fmt(b_min) + ", " + fmt(b_max) + "], got " + fmt(b_init));
}

/// The initial bitwidth of a learned policy's options: b_init, or b_max - 0.5 when unset.
template <class Options>
double initial_bits(const Options& o) {
  return o.b_init ? *o.b_init : o.b_max - 0.5;
}

inline void check_integer_bits(const char* who, int k) {
  if (k < min_bitwidth || k > max_bitwidth)
    throw config_error(std::string(who) + ": expected an integer bitwidth in [1, 16], got " +
                       std::to_string(k));
}

/// Throws config_error unless every real bitwidth in `bits` is finite (a NaN would be cast to
/// int when freezing: undefined behaviour). `who` names the quantizer or the layer.
inline void check_finite_bits(const std::string& who, const std::vector<double>& bits) {
  for (std::size_t g = 0; g < bits.size(); ++g)
    if (!std::isfinite(bits[g]))
      throw config_error(who + ": group " + std::to_string(g) + " of " +
                         std::to_string(bits.size()) + " has a non-finite bitwidth (" +
                         std::to_string(bits[g]) +
                         "): training diverged; stop at the first non-finite loss or gradient "
                         "(optim::grad_is_finite) instead of stepping with it");
}

inline void check_frozen(const char* who, bool frozen, const char* what) {
  if (!frozen)
    throw config_error(std::string(who) + ": " + what +
                       " needs integer bitwidths; call freeze() or freeze_to() first");
}

inline void check_count(const char* who, const char* what, std::size_t expected, std::size_t got) {
  if (expected != got)
    throw config_error(std::string(who) + ": expected " + std::to_string(expected) + " " + what +
                       ", got " + std::to_string(got));
}

inline void check_bound(const char* who, std::size_t weight_count) {
  if (weight_count == 0) throw config_error(std::string(who) + ": used before bind()");
}

} // namespace detail
} // namespace bitgrad::quant
