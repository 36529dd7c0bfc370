// Bit packing of quantization codes at 1..16 bits, the storage of docs/model-format.md.
//
// Words (as in quant/quantizer.hpp)
//   code         a signed integer; for k >= 2 in [-(2^(k-1)-1), 2^(k-1)-1] (the symmetric grid)
//                or [-2^(k-1), 2^(k-1)-1] (the full grid: a tensor flagged full_grid, format
//                version 3), for k = 1 the sign (-1 or +1).
//   bit stream   bytes read LSB-first: bit j of the stream is bit (j mod 8) of byte j / 8.
//   packed code  a code of k bits occupies the next k bits of the stream, its least significant
//                bit first; k >= 2: two's complement; k = 1: bit 1 = +1, bit 0 = -1.
//
//   byte:    | b7 b6 b5 b4 b3 b2 b1 b0 |  byte 0 holds stream bits 0..7 (b0 = bit 0)
//   k = 3:   codes c0 c1 c2 ... -> stream bits [c0.0 c0.1 c0.2 c1.0 c1.1 c1.2 c2.0 ...]
//
// pack_bits<K> / unpack_bits<K> are specialised per bit width K (the masks, the sign extension
// and the refill loop are compile-time); pack_codes / unpack_codes dispatch on a run-time k.
// Both start at any bit offset, so the groups of a tensor follow each other without padding.
// ref::pack_codes / ref::unpack_codes are the bit-by-bit twins the tests hold them against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace bitgrad::format {

/// Bitwidths the format stores.
inline constexpr int min_code_bits = 1;
inline constexpr int max_code_bits = 16;

/// Largest code magnitude at k bits: 2^(k-1) - 1 for k >= 2, 1 for k = 1.
constexpr std::int32_t code_limit(int k) {
  return k <= 1 ? 1 : (std::int32_t(1) << (k - 1)) - 1;
}

/// True when `code` is a valid k-bit code on the symmetric grid, or on the full grid (every
/// k-bit two's complement value, down to -2^(k-1)) when `full_grid`.
constexpr bool code_in_range(std::int32_t code, int k, bool full_grid = false) {
  if (k <= 1) return code == 1 || code == -1;
  return code >= -code_limit(k) - (full_grid ? 1 : 0) && code <= code_limit(k);
}

/// Bytes needed for `bits` bits.
constexpr std::size_t packed_bytes(std::uint64_t bits) {
  return static_cast<std::size_t>((bits + 7) / 8);
}

/// Writes n K-bit codes into dst starting at stream bit `bit_offset`. Bits of dst below
/// bit_offset in the first byte are kept; the bytes after must be zero (a fresh buffer).
/// Codes must be in range (code_in_range); only their low K bits are stored.
template <int K>
void pack_bits(const std::int32_t* codes, std::size_t n, std::uint8_t* dst,
               std::uint64_t bit_offset) {
  static_assert(K >= min_code_bits && K <= max_code_bits);
  constexpr std::uint64_t mask = (std::uint64_t(1) << K) - 1;
  std::uint8_t* p = dst + (bit_offset >> 3);
  unsigned have = static_cast<unsigned>(bit_offset & 7);
  std::uint64_t buf = have ? (*p & ((1u << have) - 1u)) : 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t v;
    if constexpr (K == 1)
      v = codes[i] > 0 ? 1 : 0;
    else
      v = static_cast<std::uint64_t>(static_cast<std::uint32_t>(codes[i])) & mask;
    buf |= v << have;
    have += K;
    while (have >= 8) {
      *p++ = static_cast<std::uint8_t>(buf);
      buf >>= 8;
      have -= 8;
    }
  }
  if (have) *p = static_cast<std::uint8_t>(buf);
}

/// Reads n K-bit codes from src starting at stream bit `bit_offset` into out (sign-extended;
/// K = 1 gives -1 / +1). Reads exactly the bytes that hold those bits, no more.
template <int K>
void unpack_bits(const std::uint8_t* src, std::uint64_t bit_offset, std::size_t n,
                 std::int32_t* out) {
  static_assert(K >= min_code_bits && K <= max_code_bits);
  constexpr std::uint64_t mask = (std::uint64_t(1) << K) - 1;
  const std::uint8_t* p = src + (bit_offset >> 3);
  const unsigned shift = static_cast<unsigned>(bit_offset & 7);
  std::uint64_t buf = 0;
  unsigned have = 0;
  if (shift && n) {
    buf = static_cast<std::uint64_t>(*p++) >> shift;
    have = 8 - shift;
  }
  for (std::size_t i = 0; i < n; ++i) {
    while (have < K) {
      buf |= static_cast<std::uint64_t>(*p++) << have;
      have += 8;
    }
    const auto v = static_cast<std::uint32_t>(buf & mask);
    buf >>= K;
    have -= K;
    if constexpr (K == 1) {
      out[i] = v ? 1 : -1;
    } else {
      // Sign extension of a K-bit two's complement value.
      constexpr std::uint32_t sign = std::uint32_t(1) << (K - 1);
      out[i] = static_cast<std::int32_t>(v ^ sign) - static_cast<std::int32_t>(sign);
    }
  }
}

namespace detail {
template <class F, int... K>
void dispatch_bits(int k, F&& f, std::integer_sequence<int, K...>) {
  (void)((k == K + 1 ? (f(std::integral_constant<int, K + 1>{}), true) : false) || ...);
}
template <class F>
void dispatch_bits(int k, F&& f) {
  dispatch_bits(k, std::forward<F>(f), std::make_integer_sequence<int, max_code_bits>{});
}
} // namespace detail

/// pack_bits<k> for a run-time k in 1..16 (other k: nothing is written).
inline void pack_codes(int k, const std::int32_t* codes, std::size_t n, std::uint8_t* dst,
                       std::uint64_t bit_offset) {
  detail::dispatch_bits(
      k, [&](auto kc) { pack_bits<decltype(kc)::value>(codes, n, dst, bit_offset); });
}

/// unpack_bits<k> for a run-time k in 1..16 (other k: nothing is read).
inline void unpack_codes(int k, const std::uint8_t* src, std::uint64_t bit_offset, std::size_t n,
                         std::int32_t* out) {
  detail::dispatch_bits(
      k, [&](auto kc) { unpack_bits<decltype(kc)::value>(src, bit_offset, n, out); });
}

namespace ref {

/// Bit-by-bit twin of format::pack_codes.
inline void pack_codes(int k, const std::int32_t* codes, std::size_t n, std::uint8_t* dst,
                       std::uint64_t bit_offset) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t v =
        k == 1 ? (codes[i] > 0 ? 1u : 0u) : static_cast<std::uint32_t>(codes[i]);
    for (int b = 0; b < k; ++b) {
      const std::uint64_t bit =
          bit_offset + i * static_cast<std::uint64_t>(k) + static_cast<std::uint64_t>(b);
      const auto byte = static_cast<std::size_t>(bit / 8);
      const auto mask = static_cast<std::uint8_t>(1u << (bit % 8));
      if ((v >> b) & 1u)
        dst[byte] = static_cast<std::uint8_t>(dst[byte] | mask);
      else
        dst[byte] = static_cast<std::uint8_t>(dst[byte] & ~mask);
    }
  }
}

/// Bit-by-bit twin of format::unpack_codes.
inline void unpack_codes(int k, const std::uint8_t* src, std::uint64_t bit_offset, std::size_t n,
                         std::int32_t* out) {
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t v = 0;
    for (int b = 0; b < k; ++b) {
      const std::uint64_t bit =
          bit_offset + i * static_cast<std::uint64_t>(k) + static_cast<std::uint64_t>(b);
      if ((src[bit / 8] >> (bit % 8)) & 1u) v |= std::int64_t(1) << b;
    }
    if (k == 1)
      out[i] = v ? 1 : -1;
    else
      out[i] = static_cast<std::int32_t>(
          v >= (std::int64_t(1) << (k - 1)) ? v - (std::int64_t(1) << k) : v);
  }
}

} // namespace ref

} // namespace bitgrad::format
