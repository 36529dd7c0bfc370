// The resident weight formats of the packed low-bit kernels: a weight tensor's codes kept at
// (about) their file size, laid out so that SIMD registers unpack them in the order the dot
// product instructions want.
//
// Words (as in docs/model-format.md)
//   channel      an output channel, one row of the weight matrix W (channels x depth).
//   depth        K, the inputs per channel (in for linear, in/groups x kh x kw for conv2d).
//   group        group_size consecutive channels sharing one bitwidth k (1..8 here) and scale.
//   code         signed integer, k >= 2: in [-2^(k-1), 2^(k-1)-1] (the symmetric grid's codes
//                and the full grid's -2^(k-1), field 0); k = 1: -1 or +1.
//   field        the unsigned value stored for a code: u = code + 2^(k-1) (k >= 2), u = (code+1)/2
//                (k = 1); decoded as code = u - 2^(k-1), resp. 2u - 1.
//   bit class k  every channel whose group has k bits, in channel order (a tensor whose groups
//                mix bitwidths has up to 8 classes; each is stored and run on its own).
//   tile         16 consecutive channels of one class; the last tile of a class is "ragged"
//                when the class does not fill it (r = n_k mod 16 channels).
//   quad         4 consecutive inputs p = 4q..4q+3; tail: the last K mod 4 inputs (t of them).
//   dot order    for one quad of one tile, the 64 codes as the int8 dot instructions consume
//                them: element e = 4 c + p' (channel c of the tile, input p' of the quad), so one
//                32-bit lane holds one channel's 4 products (vpdpbusd, sdot):
//
//                  byte  0  1  2  3 | 4  5  6  7 | ... | 60 61 62 63
//                  code c0p0 .. c0p3| c1p0 .. c1p3| ... | c15p0 .. c15p3
//
// Full-tile quad: 64 codes in dot order, stored as "planes". A plane of field width f in
// {1, 2, 4} is B = 8 f bytes; element e sits in byte (e mod B) at bits f (e div B) .. +f-1.
// So one 16-byte (f = 2) or 8-byte (f = 1) load, shifted right by 0, f, 2f, ... and masked,
// gives the elements 0..B-1, B..2B-1, ... in order: no byte shuffle is needed on any ISA, and a
// 512-bit register gets its four (f = 2) or eight (f = 1) sub-lanes with one variable shift.
//
//   f = 2, B = 16:   byte j = [ e(j+48) | e(j+32) | e(j+16) | e(j) ]    bits 7-6, 5-4, 3-2, 1-0
//   f = 4, B = 32:   byte j = [ e(j+32) | e(j) ]                        bits 7-4, 3-0
//   f = 1, B = 8:    byte j bit b = e(j + 8 b)
//
// The format table (one row per bitwidth; "bytes/quad" is per full-tile quad of 64 codes):
//
//   k | planes (low bits first)  | bytes/quad | resident / file | decode of one field u
//   1 | 1                        |  8         | 1               | code = 2u - 1
//   2 | 2                        | 16         | 1               | code = u - 2
//   3 | 2 + 1 (bit 2)            | 24         | 1               | code = (p2 | p1 << 2) - 4
//   4 | 4                        | 32         | 1               | code = u - 8
//   5 | 4 + 1 (bit 4)            | 40         | 1               | code = (p4 | p1 << 4) - 16
//   6 | 4 + 2 (bits 4-5)         | 48         | 1               | code = (p4 | p2 << 4) - 32
//   7 | one signed byte per code | 64         | 8/7 = 1.14      | code = (int8) byte
//   8 | one signed byte per code | 64         | 1               | code = (int8) byte
//
// Tails and ragged tiles are not padded (padding a K = 9 conv to 12 would cost 33%): the tail of
// a full tile (16 channels x t inputs, in order c, p) and every quad of a ragged tile (r x 4
// codes in order c, p; then its tail r x t) are a compact stream of k-bit fields, LSB-first like
// the file (bit j of a stream is bit j mod 8 of byte j / 8). Kernels decode those with the plain
// scalar loop, decode_tile_generic below.
//
// Storage of one class (k): its full tiles back to back, then the ragged tile; classes follow
// each other for k = 1..8. A full tile is Q quads (Q = K div 4) of quad_bytes(k), then the tail
// stream of 2 t k bytes; a ragged tile is ceil(r K k / 8) bytes. Every code is stored once, at k
// bits (k = 7: 8 bits in full-tile quads), so resident codes are at most 8/7 of the file's plus
// one byte of rounding per ragged tile; bitwidths (1 byte) and scales (4 bytes) per group are
// kept as in the file. resident_bytes() counts all of it; payload_bytes() is the file's count.
//
// Padding (decided at construction): the compact ragged tile is decoded by the scalar loop, so
// a class whose ragged tile can be stored as a full tile (16 - r channels of zero bytes, the
// SIMD layout) without the tensor passing 1.25x the file's payload is stored that way: LeNet's
// 120- and 84-channel layers are, a 10-channel classifier is not. ragged_padded(k) says which.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bitgrad {

/// Channels per tile.
inline constexpr std::size_t packed_tile = 16;
/// Inputs per quad (one 32-bit lane of a dot product instruction).
inline constexpr std::size_t packed_quad = 4;
/// Codes in one full-tile quad (one 512-bit register of int8).
inline constexpr std::size_t packed_quad_codes = packed_tile * packed_quad;
/// Widest code the integer kernels take.
inline constexpr int packed_max_bits = 8;
/// Longest depth K: sum_p |(x - z) w| <= 255 * 128 * K stays below 2^31 (|w| <= 128: the
/// full grid's -2^(k-1) at k = 8).
inline constexpr std::size_t packed_max_depth = 65536;
static_assert(std::uint64_t(255) * 128 * packed_max_depth < (std::uint64_t(1) << 31));

/// One plane of a full-tile quad: field width f and where its bits go in the field u.
struct packed_plane {
  int width = 0;
  int shift = 0;
};

/// The layout of a full-tile quad at k bits (the table at the top of this header).
struct packed_layout {
  int bits = 0;
  bool raw_bytes = false; ///< k = 7, 8: one signed byte per code, no planes
  int planes = 0;
  std::array<packed_plane, 2> plane{};
  std::size_t quad_bytes = 0;
};

constexpr packed_layout packed_layout_of(int k) {
  packed_layout l;
  l.bits = k;
  switch (k) {
  case 1:
    l.planes = 1, l.plane[0] = {1, 0};
    break;
  case 2:
    l.planes = 1, l.plane[0] = {2, 0};
    break;
  case 3:
    l.planes = 2, l.plane[0] = {2, 0}, l.plane[1] = {1, 2};
    break;
  case 4:
    l.planes = 1, l.plane[0] = {4, 0};
    break;
  case 5:
    l.planes = 2, l.plane[0] = {4, 0}, l.plane[1] = {1, 4};
    break;
  case 6:
    l.planes = 2, l.plane[0] = {4, 0}, l.plane[1] = {2, 4};
    break;
  default:
    l.raw_bytes = true;
    break; // 7, 8
  }
  l.quad_bytes = l.raw_bytes ? packed_quad_codes : packed_quad_codes * std::size_t(k) / 8;
  return l;
}

/// Largest code magnitude at k bits (1 for k = 1).
constexpr std::int32_t packed_code_limit(int k) {
  return k <= 1 ? 1 : (std::int32_t(1) << (k - 1)) - 1;
}

/// The stored field of a code at k bits.
constexpr std::uint32_t packed_field(std::int32_t code, int k) {
  return k == 1 ? (code > 0 ? 1u : 0u) : static_cast<std::uint32_t>(code + (1 << (k - 1)));
}

/// The code of a stored field at k bits.
constexpr std::int32_t packed_code(std::uint32_t u, int k) {
  return k == 1 ? 2 * std::int32_t(u) - 1 : std::int32_t(u) - (1 << (k - 1));
}

namespace detail {

/// Width bits of the LSB-first stream `s` starting at stream bit `bit`.
inline std::uint32_t packed_read_bits(const std::uint8_t* s, std::size_t bit, int width) {
  std::uint32_t v = 0;
  for (int b = 0; b < width; ++b, ++bit) v |= std::uint32_t((s[bit >> 3] >> (bit & 7)) & 1u) << b;
  return v;
}

inline void packed_write_bits(std::uint8_t* s, std::size_t bit, int width, std::uint32_t v) {
  for (int b = 0; b < width; ++b, ++bit) {
    const auto mask = static_cast<std::uint8_t>(1u << (bit & 7));
    if ((v >> b) & 1u)
      s[bit >> 3] = static_cast<std::uint8_t>(s[bit >> 3] | mask);
    else
      s[bit >> 3] = static_cast<std::uint8_t>(s[bit >> 3] & ~mask);
  }
}

} // namespace detail

/// A weight tensor (channels x depth codes, per-group bitwidths 1..8 and scales) in the resident
/// formats of the top of this header. Immutable after construction; safe to share across threads.
class packed_weights {
public:
  packed_weights() = default;

  /// Packs `codes` (channels x depth, channel-major). `bits` and `scales` have one entry per
  /// group of group_size channels (the last group may be smaller). Throws std::invalid_argument
  /// naming the problem for a bitwidth outside 1..8, a code outside its bitwidth's range, a depth
  /// outside 1..packed_max_depth or inconsistent sizes.
  packed_weights(std::size_t channels, std::size_t depth, std::size_t group_size,
                 const std::uint8_t* bits, const float* scales, const std::int32_t* codes)
      : channels_(channels), depth_(depth), group_size_(group_size) {
    if (channels == 0 || channels > (std::size_t(1) << 24))
      throw std::invalid_argument("packed_weights: channels " + std::to_string(channels) +
                                  " outside 1..2^24");
    if (depth == 0 || depth > packed_max_depth)
      throw std::invalid_argument("packed_weights: depth " + std::to_string(depth) +
                                  " outside 1.." + std::to_string(packed_max_depth));
    if (group_size == 0 || group_size > channels)
      throw std::invalid_argument("packed_weights: group size " + std::to_string(group_size) +
                                  " outside 1..channels (" + std::to_string(channels) + ")");
    const std::size_t groups = (channels + group_size - 1) / group_size;
    bits_.assign(bits, bits + groups);
    scales_.assign(scales, scales + groups);
    for (std::size_t g = 0; g < groups; ++g) {
      if (bits_[g] < 1 || bits_[g] > packed_max_bits)
        throw std::invalid_argument("packed_weights: group " + std::to_string(g) + " has " +
                                    std::to_string(bits_[g]) +
                                    " bits; the integer kernels take "
                                    "1..8");
    }
    for (std::size_t g = 0; g < groups; ++g) {
      if (!std::isfinite(scales_[g]) || !(scales_[g] > 0.0f))
        throw std::invalid_argument("packed_weights: group " + std::to_string(g) + " has scale " +
                                    std::to_string(scales_[g]) + "; it must be finite and > 0");
    }
    for (std::size_t j = 0; j < channels; ++j) ++class_channels_[channel_bits(j)];
    // Ragged tiles: compact, then padded to the full-tile layout class by class while the
    // tensor stays within 1.25x of the file's payload (see "Padding" at the top).
    std::size_t compact = 0;
    for (int k = 1; k <= packed_max_bits; ++k) compact += class_bytes(k);
    const std::size_t budget = payload_bytes() + payload_bytes() / 4 - 5 * groups;
    for (int k = 1; k <= packed_max_bits; ++k) {
      const std::size_t r = class_channels_[k] % packed_tile;
      if (r == 0) continue;
      const std::size_t extra = full_tile_bytes(k) - ragged_tile_bytes(k, r);
      if (compact + extra <= budget) {
        padded_[k] = true;
        compact += extra;
      }
    }
    std::size_t offset = 0, begin = 0;
    for (int k = 1; k <= packed_max_bits; ++k) {
      class_offset_[k] = offset;
      class_begin_[k] = begin;
      offset += class_bytes(k);
      begin += class_channels_[k];
    }
    class_offset_[packed_max_bits + 1] = offset;
    data_.assign(offset, 0);

    std::size_t next[packed_max_bits + 1] = {};
    for (std::size_t j = 0; j < channels; ++j) {
      const int k = channel_bits(j);
      const std::size_t v = next[k]++;
      for (std::size_t p = 0; p < depth; ++p) {
        const std::int32_t code = codes[j * depth + p];
        // k >= 2: any k-bit two's complement code (the full grid's -2^(k-1) included).
        const bool ok = k == 1
                            ? (code == 1 || code == -1)
                            : (code >= -packed_code_limit(k) - 1 && code <= packed_code_limit(k));
        if (!ok)
          throw std::invalid_argument("packed_weights: code " + std::to_string(code) +
                                      " at channel " + std::to_string(j) + ", input " +
                                      std::to_string(p) + " is outside the range of " +
                                      std::to_string(k) + " bits");
        set_code(k, v, p, code);
      }
    }
  }

  std::size_t channels() const { return channels_; }
  std::size_t depth() const { return depth_; }
  std::size_t group_size() const { return group_size_; }
  std::size_t groups() const { return bits_.size(); }
  int bits(std::size_t group) const { return bits_[group]; }
  float scale(std::size_t group) const { return scales_[group]; }
  int channel_bits(std::size_t channel) const { return bits_[channel / group_size_]; }
  float channel_scale(std::size_t channel) const { return scales_[channel / group_size_]; }

  /// Channels of bit class k, and where the class starts in channel_order().
  std::size_t class_channels(int k) const { return class_channels_[k]; }
  std::size_t class_begin(int k) const { return class_begin_[k]; }
  std::size_t class_tiles(int k) const {
    return (class_channels_[k] + packed_tile - 1) / packed_tile;
  }

  /// Bytes of a full tile of class k: Q quads, then the tail stream (2 t k bytes).
  std::size_t full_tile_bytes(int k) const {
    return depth_ / packed_quad * packed_layout_of(k).quad_bytes +
           packed_tile * (depth_ % packed_quad) * std::size_t(k) / 8;
  }
  /// Bytes of a ragged tile of r channels of class k (a compact stream).
  std::size_t ragged_tile_bytes(int k, std::size_t r) const {
    return (r * depth_ * std::size_t(k) + 7) / 8;
  }
  /// Channels in tile `tile` of class k (16, or r for the ragged last tile).
  std::size_t tile_channels(int k, std::size_t tile) const {
    return std::min(packed_tile, class_channels_[k] - tile * packed_tile);
  }
  /// True when class k's ragged tile is stored padded to the full-tile layout.
  bool ragged_padded(int k) const { return padded_[k]; }
  /// True when tile `tile` of class k is in the full-tile layout (planes + tail stream).
  bool tile_full_layout(int k, std::size_t tile) const {
    return padded_[k] || tile_channels(k, tile) == packed_tile;
  }
  /// Bytes of class k as stored.
  std::size_t class_bytes(int k) const {
    const std::size_t n = class_channels_[k], r = n % packed_tile;
    return n / packed_tile * full_tile_bytes(k) + (r == 0       ? 0
                                                   : padded_[k] ? full_tile_bytes(k)
                                                                : ragged_tile_bytes(k, r));
  }
  /// First byte of tile `tile` of class k.
  const std::uint8_t* tile_data(int k, std::size_t tile) const {
    return data_.data() + class_offset_[k] + tile * full_tile_bytes(k);
  }

  /// Writes the original channel index of every class member, class 1 first, channel order
  /// inside a class: order[class_begin(k) + v] is the channel of member v of class k.
  void channel_order(std::uint32_t* order) const {
    if (class_channels_[channel_bits(0)] == channels_) { // one class (one bitwidth): identity
      for (std::size_t j = 0; j < channels_; ++j) order[j] = static_cast<std::uint32_t>(j);
      return;
    }
    std::size_t next[packed_max_bits + 1] = {};
    for (std::size_t j = 0; j < channels_; ++j) {
      const int k = channel_bits(j);
      order[class_begin_[k] + next[k]++] = static_cast<std::uint32_t>(j);
    }
  }

  /// Code of input p of member v of class k, read with the plain layout rules (the oracle's
  /// accessor; kernels decode whole quads instead).
  std::int32_t code_at(int k, std::size_t v, std::size_t p) const {
    const std::size_t tile = v / packed_tile, c = v % packed_tile;
    const std::uint8_t* base = tile_data(k, tile);
    const std::size_t r = tile_channels(k, tile);
    const bool full = tile_full_layout(k, tile);
    const std::size_t full_quads = depth_ / packed_quad, t = depth_ % packed_quad;
    const std::size_t q = p / packed_quad, pp = p % packed_quad;
    const packed_layout l = packed_layout_of(k);
    if (full && q < full_quads) {
      const std::uint8_t* quad = base + q * l.quad_bytes;
      const std::size_t e = c * packed_quad + pp;
      if (l.raw_bytes) return static_cast<std::int8_t>(quad[e]);
      std::uint32_t u = 0;
      for (int i = 0; i < l.planes; ++i) {
        const std::size_t b = 8 * std::size_t(l.plane[i].width);
        u |= detail::packed_read_bits(quad, (e % b) * 8 + l.plane[i].width * (e / b),
                                      l.plane[i].width)
             << l.plane[i].shift;
        quad += b;
      }
      return packed_code(u, k);
    }
    const std::uint8_t* stream = base;
    std::size_t index;
    if (full) {
      stream += full_quads * l.quad_bytes;
      index = c * t + pp;
    } else {
      index = q < full_quads ? q * packed_quad * r + c * packed_quad + pp
                             : full_quads * packed_quad * r + c * t + pp;
    }
    return packed_code(detail::packed_read_bits(stream, index * std::size_t(k), k), k);
  }

  /// Code of channel j, input p (slow: finds j's place in its class; for tests).
  std::int32_t code(std::size_t j, std::size_t p) const {
    const int k = channel_bits(j);
    std::size_t v = 0;
    for (std::size_t i = 0; i < j; ++i) v += channel_bits(i) == k;
    return code_at(k, v, p);
  }

  /// Bytes this object keeps on the heap: the codes, one bitwidth byte and one float scale per
  /// group (allocated capacity, so nothing is hidden). The fixed-size descriptor itself,
  /// sizeof(packed_weights), is per tensor like the file's section header and is not counted.
  std::size_t resident_bytes() const {
    return data_.capacity() + bits_.capacity() + scales_.capacity() * sizeof(float);
  }

  /// What the model file stores for this tensor's weights: ceil(sum_g n_g K k_g / 8) bytes of
  /// codes plus 5 bytes (bitwidth + scale) per group (docs/model-format.md, "Size").
  std::size_t payload_bytes() const {
    std::size_t bits = 0;
    for (std::size_t j = 0; j < channels_; ++j) bits += depth_ * std::size_t(channel_bits(j));
    return (bits + 7) / 8 + 5 * bits_.size();
  }

private:
  void set_code(int k, std::size_t v, std::size_t p, std::int32_t code) {
    const std::size_t tile = v / packed_tile, c = v % packed_tile;
    std::uint8_t* base = data_.data() + class_offset_[k] + tile * full_tile_bytes(k);
    const std::size_t r = tile_channels(k, tile);
    const bool full = tile_full_layout(k, tile);
    const std::size_t full_quads = depth_ / packed_quad, t = depth_ % packed_quad;
    const std::size_t q = p / packed_quad, pp = p % packed_quad;
    const packed_layout l = packed_layout_of(k);
    if (full && q < full_quads) {
      std::uint8_t* quad = base + q * l.quad_bytes;
      const std::size_t e = c * packed_quad + pp;
      if (l.raw_bytes) {
        quad[e] = static_cast<std::uint8_t>(static_cast<std::int8_t>(code));
        return;
      }
      const std::uint32_t u = packed_field(code, k);
      for (int i = 0; i < l.planes; ++i) {
        const int w = l.plane[i].width;
        const std::size_t b = 8 * std::size_t(w);
        detail::packed_write_bits(quad, (e % b) * 8 + w * (e / b), w,
                                  (u >> l.plane[i].shift) & ((1u << w) - 1u));
        quad += b;
      }
      return;
    }
    std::size_t index;
    if (full) {
      base += full_quads * l.quad_bytes;
      index = c * t + pp;
    } else {
      index = q < full_quads ? q * packed_quad * r + c * packed_quad + pp
                             : full_quads * packed_quad * r + c * t + pp;
    }
    detail::packed_write_bits(base, index * std::size_t(k), k, packed_field(code, k));
  }

  std::size_t channels_ = 0, depth_ = 0, group_size_ = 1;
  std::vector<std::uint8_t> bits_;
  std::vector<float> scales_;
  std::vector<std::uint8_t> data_;
  std::array<std::size_t, packed_max_bits + 1> class_channels_{};
  std::array<std::size_t, packed_max_bits + 1> class_begin_{};
  std::array<std::size_t, packed_max_bits + 2> class_offset_{};
  std::array<bool, packed_max_bits + 1> padded_{};
};

} // namespace bitgrad
