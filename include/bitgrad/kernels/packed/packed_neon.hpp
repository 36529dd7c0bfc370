// The aarch64 paths of the packed kernels.
//
// isa::neon (every aarch64 core): no u8 x s8 multiply-accumulate into int32, so, as on SSE2,
// the decode widens codes into an int16 panel and the micro-kernel runs
//   prod = vmulq_s16(x, w)      x = [x0 x1 x2 x3 x0 x1 x2 x3], |x w| <= 255 * 127 < 2^15: exact
//   acc  = vpadalq_s16(acc, prod)   adjacent int16 pairs added into int32 lanes
// giving [c: p0+p1, c: p2+p3, c+1: ..., c+1: ...] per register, folded by vpaddq_s32 at the end.
//
// isa::neon_dot (asimddp: Cortex-A55/A75 and later, Apple M1, Neoverse): sdot multiplies s8 by
// s8, so the kernel feeds x - 128 (x ^ 0x80 as s8) against the int8 panel and reports the shift
// (activation_shift = 128): sum (x - 128) w + 128 sum w = sum x w, the correction added with the
// code sums (packed_gemm.hpp). vdotq_laneq_s32 takes four quads of x from one 16-byte load.
//
// Decode of a quad into four registers of 16 codes (planes of packed_weights.hpp): f = 4: bytes
// 0-15 / 16-31, low then high nibbles; f = 2: one load shifted right by 0, 2, 4, 6; f = 1: one
// 8-byte load shifted by 2i and 2i+1, joined (vcombine). Then mask, OR, subtract 2^(k-1).
#pragma once

#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>

#include <cstddef>
#include <cstdint>

#if BITGRAD_PACKED_ARM64

#include <arm_neon.h>

namespace bitgrad::detail {

template <>
struct packed_isa_traits<isa::neon> {
  using panel = std::int16_t;
  static constexpr std::int32_t activation_shift = 0;
};

template <>
struct packed_isa_traits<isa::neon_dot> {
  using panel = std::int8_t;
  /// sdot multiplies x - 128 (see the top of this header).
  static constexpr std::int32_t activation_shift = 128;
};

/// Fields of plane width F for elements 16 i .. 16 i + 15.
template <int F>
inline uint8x16_t neon_plane(const std::uint8_t* src, int i) {
  const uint8x16_t m = vdupq_n_u8(static_cast<std::uint8_t>((1 << F) - 1));
  if constexpr (F == 1) {
    const uint8x8_t v = vld1_u8(src);
    const uint8x8_t a = vshl_u8(v, vdup_n_s8(static_cast<std::int8_t>(-2 * i)));
    const uint8x8_t b = vshl_u8(v, vdup_n_s8(static_cast<std::int8_t>(-2 * i - 1)));
    return vandq_u8(vcombine_u8(a, b), m);
  } else if constexpr (F == 2) {
    const uint8x16_t v = vld1q_u8(src);
    return vandq_u8(vshlq_u8(v, vdupq_n_s8(static_cast<std::int8_t>(-2 * i))), m);
  } else {
    const uint8x16_t v = vld1q_u8(src + 16 * (i & 1));
    return vandq_u8(vshlq_u8(v, vdupq_n_s8(static_cast<std::int8_t>(-4 * (i >> 1)))), m);
  }
}

/// Codes 16 i .. 16 i + 15 of one full-tile quad at K bits.
template <int K>
inline int8x16_t neon_decode(const std::uint8_t* src, int i) {
  constexpr packed_layout l = packed_layout_of(K);
  if constexpr (l.raw_bytes) {
    return vld1q_s8(reinterpret_cast<const std::int8_t*>(src) + 16 * i);
  } else {
    uint8x16_t u = neon_plane<l.plane[0].width>(src, i);
    if constexpr (l.planes == 2)
      u = vorrq_u8(u, vshlq_n_u8(neon_plane<l.plane[1].width>(src + 8 * l.plane[0].width, i),
                                 l.plane[1].shift));
    const int8x16_t s = vreinterpretq_s8_u8(u);
    if constexpr (K == 1) return vsubq_s8(vaddq_s8(s, s), vdupq_n_s8(1));
    return vsubq_s8(s, vdupq_n_s8(static_cast<std::int8_t>(1 << (K - 1))));
  }
}

// ---- isa::neon: int16 panel, vmulq_s16 + vpadalq_s16 -------------------------------------

/// Channel sums of 8 registers of pair partials (see the top), added to out or stored.
inline void neon_channel_sums(const int32x4_t (&acc)[8], std::int32_t* out, bool accumulate) {
  for (int u = 0; u < 4; ++u) {
    int32x4_t s = vpaddq_s32(acc[2 * u], acc[2 * u + 1]);
    if (accumulate) s = vaddq_s32(s, vld1q_s32(out + 4 * u));
    vst1q_s32(out + 4 * u, s);
  }
}

template <int K>
void neon_decode_quads(const std::uint8_t* src, std::size_t nq, std::int16_t* panel,
                       std::int32_t* sums) {
  constexpr std::size_t qb = packed_layout_of(K).quad_bytes;
  int32x4_t s[8];
  for (int v = 0; v < 8; ++v) s[v] = vdupq_n_s32(0);
  for (std::size_t q = 0; q < nq; ++q) {
    std::int16_t* out = panel + q * packed_quad_codes;
    for (int i = 0; i < 4; ++i) {
      const int8x16_t w = neon_decode<K>(src + q * qb, i);
      const int16x8_t lo = vmovl_s8(vget_low_s8(w)), hi = vmovl_high_s8(w);
      vst1q_s16(out + 16 * i, lo);
      vst1q_s16(out + 16 * i + 8, hi);
      if (sums) {
        s[2 * i] = vpadalq_s16(s[2 * i], lo);
        s[2 * i + 1] = vpadalq_s16(s[2 * i + 1], hi);
      }
    }
  }
  if (sums) {
    std::int32_t lanes[packed_tile];
    neon_channel_sums(s, lanes, false);
    for (std::size_t c = 0; c < packed_tile; ++c) sums[c] += lanes[c];
  }
}

/// Decodes nq full-tile quads of bit class k from src into panel (dot order, int16); adds each
/// channel's codes to sums when sums is not null.
inline void packed_decode_quads(isa::neon, int k, const std::uint8_t* src, std::size_t nq,
                                std::int16_t* panel, std::int32_t* sums) {
  switch (k) {
  case 1:
    neon_decode_quads<1>(src, nq, panel, sums);
    break;
  case 2:
    neon_decode_quads<2>(src, nq, panel, sums);
    break;
  case 3:
    neon_decode_quads<3>(src, nq, panel, sums);
    break;
  case 4:
    neon_decode_quads<4>(src, nq, panel, sums);
    break;
  case 5:
    neon_decode_quads<5>(src, nq, panel, sums);
    break;
  case 6:
    neon_decode_quads<6>(src, nq, panel, sums);
    break;
  case 7:
    neon_decode_quads<7>(src, nq, panel, sums);
    break;
  default:
    neon_decode_quads<8>(src, nq, panel, sums);
    break;
  }
}

/// [x0 x1 x2 x3 x0 x1 x2 x3] as int16 from one quad (4 bytes as an int32).
inline int16x8_t neon_widen_quad(std::int32_t x4) {
  return vreinterpretq_s16_u16(vmovl_u8(vreinterpret_u8_s32(vdup_n_s32(x4))));
}

template <std::size_t MR, bool Partial>
inline __attribute__((always_inline)) void neon_quad(int32x4_t (&acc)[MR][8], const std::uint8_t* x,
                                                     std::size_t lda, const std::int16_t* wq,
                                                     std::size_t n) {
  int16x8_t w[8];
  for (int v = 0; v < 8; ++v) w[v] = vld1q_s16(wq + 8 * v);
  for (std::size_t r = 0; r < MR; ++r) {
    const int16x8_t xr =
        neon_widen_quad(Partial ? packed_load_quad(x + r * lda, n) : packed_load_quad(x + r * lda));
    for (int v = 0; v < 8; ++v) acc[r][v] = vpadalq_s16(acc[r][v], vmulq_s16(xr, w[v]));
  }
}

template <std::size_t MR>
void neon_rows(const std::uint8_t* x, std::size_t lda, std::size_t nq, std::size_t tail,
               const std::int16_t* panel, std::int32_t* c, bool accumulate) {
  int32x4_t acc[MR][8];
  for (std::size_t r = 0; r < MR; ++r)
    for (int v = 0; v < 8; ++v) acc[r][v] = vdupq_n_s32(0);
  const std::size_t full = tail ? nq - 1 : nq;
  for (std::size_t q = 0; q < full; ++q)
    neon_quad<MR, false>(acc, x + q * packed_quad, lda, panel + q * packed_quad_codes, packed_quad);
  if (tail)
    neon_quad<MR, true>(acc, x + full * packed_quad, lda, panel + full * packed_quad_codes, tail);
  for (std::size_t r = 0; r < MR; ++r) neon_channel_sums(acc[r], c + r * packed_tile, accumulate);
}

/// c(i, 0..15) (+)= sum over quads q < nq of x(i, 4q..4q+3) . panel(q, c, 0..3) for rows
/// i < rows; the last quad holds only `tail` inputs when tail > 0.
inline void packed_rows(isa::neon, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                        std::size_t nq, std::size_t tail, int /*bits*/, const std::int16_t* panel,
                        std::int32_t* c, bool accumulate) {
  std::size_t i = 0;
  for (; i + 2 <= rows; i += 2)
    neon_rows<2>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
  if (i < rows) neon_rows<1>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
}

// ---- isa::neon_dot: int8 panel, sdot ------------------------------------------------------

template <int K>
BITGRAD_TARGET_NEON_DOT void neon_dot_decode_quads(const std::uint8_t* src, std::size_t nq,
                                                   std::int8_t* panel, std::int32_t* sums) {
  constexpr std::size_t qb = packed_layout_of(K).quad_bytes;
  const int8x16_t ones = vdupq_n_s8(1);
  int32x4_t s[4];
  for (int i = 0; i < 4; ++i) s[i] = vdupq_n_s32(0);
  for (std::size_t q = 0; q < nq; ++q) {
    for (int i = 0; i < 4; ++i) {
      const int8x16_t w = neon_decode<K>(src + q * qb, i);
      vst1q_s8(panel + q * packed_quad_codes + 16 * i, w);
      if (sums) s[i] = vdotq_s32(s[i], w, ones);
    }
  }
  if (sums)
    for (int i = 0; i < 4; ++i) vst1q_s32(sums + 4 * i, vaddq_s32(vld1q_s32(sums + 4 * i), s[i]));
}

/// Decodes nq full-tile quads of bit class k from src into panel (dot order, int8); adds each
/// channel's codes to sums when sums is not null.
inline void packed_decode_quads(isa::neon_dot, int k, const std::uint8_t* src, std::size_t nq,
                                std::int8_t* panel, std::int32_t* sums) {
  switch (k) {
  case 1:
    neon_dot_decode_quads<1>(src, nq, panel, sums);
    break;
  case 2:
    neon_dot_decode_quads<2>(src, nq, panel, sums);
    break;
  case 3:
    neon_dot_decode_quads<3>(src, nq, panel, sums);
    break;
  case 4:
    neon_dot_decode_quads<4>(src, nq, panel, sums);
    break;
  case 5:
    neon_dot_decode_quads<5>(src, nq, panel, sums);
    break;
  case 6:
    neon_dot_decode_quads<6>(src, nq, panel, sums);
    break;
  case 7:
    neon_dot_decode_quads<7>(src, nq, panel, sums);
    break;
  default:
    neon_dot_decode_quads<8>(src, nq, panel, sums);
    break;
  }
}

/// acc(r, i) += quad J of xs(r) . panel quad J register i, for the 4 quads of one 16-byte load.
template <std::size_t MR, int J>
BITGRAD_TARGET_NEON_DOT inline __attribute__((always_inline)) void
neon_dot_lane(int32x4_t (&acc)[MR][4], const int8x16_t (&xs)[MR], const std::int8_t* wq) {
  int8x16_t w[4];
  for (int i = 0; i < 4; ++i) w[i] = vld1q_s8(wq + J * packed_quad_codes + 16 * i);
  for (std::size_t r = 0; r < MR; ++r)
    for (int i = 0; i < 4; ++i) acc[r][i] = vdotq_laneq_s32(acc[r][i], w[i], xs[r], J);
}

template <std::size_t MR>
BITGRAD_TARGET_NEON_DOT void neon_dot_rows(const std::uint8_t* x, std::size_t lda, std::size_t nq,
                                           std::size_t tail, const std::int8_t* panel,
                                           std::int32_t* c, bool accumulate) {
  int32x4_t acc[MR][4];
  for (std::size_t r = 0; r < MR; ++r)
    for (int i = 0; i < 4; ++i)
      acc[r][i] = accumulate ? vld1q_s32(c + r * packed_tile + 4 * i) : vdupq_n_s32(0);
  const uint8x16_t flip = vdupq_n_u8(0x80);
  const std::size_t full = tail ? nq - 1 : nq;
  std::size_t q = 0;
  for (; q + 4 <= full; q += 4) {
    int8x16_t xs[MR];
    for (std::size_t r = 0; r < MR; ++r)
      xs[r] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x + r * lda + q * packed_quad), flip));
    const std::int8_t* wq = panel + q * packed_quad_codes;
    neon_dot_lane<MR, 0>(acc, xs, wq);
    neon_dot_lane<MR, 1>(acc, xs, wq);
    neon_dot_lane<MR, 2>(acc, xs, wq);
    neon_dot_lane<MR, 3>(acc, xs, wq);
  }
  for (; q < nq; ++q) {
    const std::size_t n = q < full ? packed_quad : tail;
    int8x16_t w[4];
    for (int i = 0; i < 4; ++i) w[i] = vld1q_s8(panel + q * packed_quad_codes + 16 * i);
    for (std::size_t r = 0; r < MR; ++r) {
      const uint8x16_t x4 =
          vreinterpretq_u8_s32(vdupq_n_s32(packed_load_quad(x + r * lda + q * packed_quad, n)));
      const int8x16_t xs = vreinterpretq_s8_u8(veorq_u8(x4, flip));
      for (int i = 0; i < 4; ++i) acc[r][i] = vdotq_s32(acc[r][i], w[i], xs);
    }
  }
  for (std::size_t r = 0; r < MR; ++r)
    for (int i = 0; i < 4; ++i) vst1q_s32(c + r * packed_tile + 4 * i, acc[r][i]);
}

/// c(i, 0..15) (+)= sum over quads q < nq of (x(i, 4q..4q+3) - 128) . panel(q, c, 0..3) for
/// rows i < rows; the last quad holds only `tail` inputs when tail > 0.
inline void packed_rows(isa::neon_dot, std::size_t rows, const std::uint8_t* x, std::size_t lda,
                        std::size_t nq, std::size_t tail, int /*bits*/, const std::int8_t* panel,
                        std::int32_t* c, bool accumulate) {
  std::size_t i = 0;
  for (; i + 4 <= rows; i += 4)
    neon_dot_rows<4>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
  if (i + 2 <= rows) {
    neon_dot_rows<2>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
    i += 2;
  }
  if (i < rows)
    neon_dot_rows<1>(x + i * lda, lda, nq, tail, panel, c + i * packed_tile, accumulate);
}

} // namespace bitgrad::detail

#endif // BITGRAD_PACKED_ARM64
