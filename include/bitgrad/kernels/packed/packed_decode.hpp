// What every path of the packed kernels shares: the traits each ISA header specialises, the
// activation quad load, and the scalar decoder of the packed weight formats
// (kernels/packed/packed_weights.hpp): every path uses it for what its SIMD decoder does not take,
// the tail quad of a full tile and every quad of a ragged tile (compact k-bit streams), and it
// writes the same transient panel:
//
//   panel (one tile, quads q_begin..q_end-1):   T = int8_t (dot paths) or int16_t (pmaddwd
//                                                paths), 64 values per quad, zero where a
//   [q - q_begin][c][p']  = code(c, 4 q + p')    channel c >= r or an input 4 q + p' >= K
//
// sums (nullable): sums[c] += every code of channel c decoded here (for the zero-point
// correction of packed_gemm.hpp).
#pragma once

#include <bitgrad/kernels/packed/packed_weights.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace bitgrad::detail {

/// Per path (specialised in its header):
///   using panel = std::int8_t or std::int16_t;   the transient panel's element type
///   static constexpr std::int32_t activation_shift; the kernel multiplies x - shift, not x
///                                                   (neon_dot: 128, so u8 becomes s8)
template <class Arch>
struct packed_isa_traits;

/// x(i, 4q..4q+3) as one int32 (little-endian bytes), from memory that may hold only `n` (1..4)
/// of them (the tail quad: the bytes after the row are never read).
inline std::int32_t packed_load_quad(const std::uint8_t* x) {
  std::int32_t v;
  std::memcpy(&v, x, 4);
  return v;
}
inline std::int32_t packed_load_quad(const std::uint8_t* x, std::size_t n) {
  std::uint32_t v = x[0];
  if (n > 1) v |= std::uint32_t(x[1]) << 8;
  if (n > 2) v |= std::uint32_t(x[2]) << 16;
  if (n > 3) v |= std::uint32_t(x[3]) << 24;
  return static_cast<std::int32_t>(v);
}

/// Reads consecutive k-bit fields of an LSB-first stream, touching only the bytes that hold
/// them (the last stream of a tensor ends at the end of its buffer).
class packed_field_reader {
public:
  packed_field_reader(const std::uint8_t* stream, std::size_t first_field, int k)
      : p_(stream + first_field * std::size_t(k) / 8), k_(k), mask_((1u << k) - 1u) {
    const unsigned skip = static_cast<unsigned>(first_field * std::size_t(k) % 8);
    if (skip) {
      buf_ = std::uint32_t(*p_++) >> skip;
      have_ = 8 - skip;
    }
  }
  std::int32_t next() {
    while (have_ < unsigned(k_)) {
      buf_ |= std::uint32_t(*p_++) << have_;
      have_ += 8;
    }
    const std::uint32_t u = buf_ & mask_;
    buf_ >>= k_;
    have_ -= unsigned(k_);
    return packed_code(u, k_);
  }

private:
  const std::uint8_t* p_;
  int k_;
  std::uint32_t mask_, buf_ = 0;
  unsigned have_ = 0;
};

/// out[i] = the code of field first + i of a K-bit LSB-first stream, i < count (what
/// packed_field_reader(s, first, K).next() returns count times), touching only the bytes that
/// hold them. K divides 8 and the first field starts a byte: whole bytes, 8 / K fields each
/// (field f of a byte b is (b >> K f) & (2^K - 1)); else the reader's bit buffer.
template <int K, class T>
void packed_unpack_fields(const std::uint8_t* s, std::size_t first, std::size_t count, T* out) {
  constexpr std::uint32_t mask = (1u << K) - 1u;
  std::size_t i = 0;
  if constexpr (8 % K == 0) {
    constexpr std::size_t per_byte = 8 / K;
    if (first % per_byte == 0) {
      const std::uint8_t* p = s + first / per_byte;
      for (; i + per_byte <= count; i += per_byte, ++p) {
        const std::uint32_t b = *p;
        for (std::size_t f = 0; f < per_byte; ++f)
          out[i + f] = static_cast<T>(packed_code((b >> (K * f)) & mask, K));
      }
    }
  }
  if (i == count) return;
  first += i;
  const std::uint8_t* p = s + first * K / 8;
  std::uint32_t buf = 0;
  unsigned have = 0;
  if (const unsigned skip = static_cast<unsigned>(first * K % 8)) {
    buf = std::uint32_t(*p++) >> skip;
    have = 8 - skip;
  }
  for (; i < count; ++i) {
    if (have < unsigned(K)) { // K <= 8: one byte refills the buffer
      buf |= std::uint32_t(*p++) << have;
      have += 8;
    }
    out[i] = static_cast<T>(packed_code(buf & mask, K));
    buf >>= K;
    have -= unsigned(K);
  }
}

/// packed_unpack_fields with the bitwidth k (1..8) known at run time.
template <class T>
void packed_unpack_fields(const std::uint8_t* s, std::size_t first, std::size_t count, int k,
                          T* out) {
  switch (k) {
  case 1:
    return packed_unpack_fields<1>(s, first, count, out);
  case 2:
    return packed_unpack_fields<2>(s, first, count, out);
  case 3:
    return packed_unpack_fields<3>(s, first, count, out);
  case 4:
    return packed_unpack_fields<4>(s, first, count, out);
  case 5:
    return packed_unpack_fields<5>(s, first, count, out);
  case 6:
    return packed_unpack_fields<6>(s, first, count, out);
  case 7:
    return packed_unpack_fields<7>(s, first, count, out);
  default:
    return packed_unpack_fields<8>(s, first, count, out);
  }
}

/// Decodes quads [q_begin, q_end) of tile `tile` of class k into `panel` (see the top), with the
/// plain scalar loop, whatever the tile's shape. Full-tile quads below K div 4 go through the
/// plane rules of packed_weights::code_at; the others stream. A ragged tile's quad is r x 4
/// fields in the panel's own order (c, p'), so it is one run of 4 r fields into the quad's
/// first 4 r values (packed_unpack_fields).
template <class T>
void packed_decode_generic(const packed_weights& w, int k, std::size_t tile, std::size_t q_begin,
                           std::size_t q_end, T* panel, std::int32_t* sums) {
  const std::size_t r = w.tile_channels(k, tile);
  const std::size_t depth = w.depth(), full_quads = depth / packed_quad, t = depth % packed_quad;
  const std::size_t v0 = tile * packed_tile;
  for (std::size_t i = 0; i < (q_end - q_begin) * packed_quad_codes; ++i) panel[i] = T(0);
  auto put = [&](std::size_t q, std::size_t c, std::size_t p, std::int32_t code) {
    panel[(q - q_begin) * packed_quad_codes + c * packed_quad + p] = static_cast<T>(code);
    if (sums) sums[c] += code;
  };
  const std::uint8_t* base = w.tile_data(k, tile);
  if (w.tile_full_layout(k, tile)) {
    const std::size_t plane_end = std::min(q_end, full_quads);
    for (std::size_t q = q_begin; q < plane_end; ++q)
      for (std::size_t c = 0; c < r; ++c)
        for (std::size_t p = 0; p < packed_quad; ++p)
          put(q, c, p, w.code_at(k, v0 + c, q * packed_quad + p));
    if (q_end > full_quads && t) {
      packed_field_reader in(base + full_quads * packed_layout_of(k).quad_bytes, 0, k);
      for (std::size_t c = 0; c < r; ++c)
        for (std::size_t p = 0; p < t; ++p) put(full_quads, c, p, in.next());
    }
    return;
  }
  const std::size_t plane_end = std::min(q_end, full_quads), run = packed_quad * r;
  for (std::size_t q = q_begin; q < plane_end; ++q) {
    T* quad = panel + (q - q_begin) * packed_quad_codes;
    packed_unpack_fields(base, q * run, run, k, quad);
    if (sums)
      for (std::size_t c = 0; c < r; ++c)
        for (std::size_t p = 0; p < packed_quad; ++p) sums[c] += quad[c * packed_quad + p];
  }
  if (q_end > full_quads && t) {
    packed_field_reader in(base, full_quads * packed_quad * r, k);
    for (std::size_t c = 0; c < r; ++c)
      for (std::size_t p = 0; p < t; ++p) put(full_quads, c, p, in.next());
  }
}

} // namespace bitgrad::detail
