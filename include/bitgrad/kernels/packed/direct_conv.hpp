// Direct convolution for layers with few input channels (a network's first conv: C = 1 for
// Fashion-MNIST), the packed engine's path where im2row + packed_gemm wastes its lanes (K = C kh
// kw padded to quads, 6 of 16 channel lanes, im2row copying runs of kw C bytes per pixel).
// Same contract as the reference twin bitgrad::ref::direct_conv (kernels/ref/direct_conv.hpp):
//
//   acc(r, j) = sum_{a, b, c} (x(n, oh sh + a dh - ph, ow sw + b dw - pw, c) - z) w(j, (a kw + b) C
//   + c)
//
// for output pixels r = (n OH + oh) OW + ow in [r0, r1), handed to the same output stages as
// packed_gemm (out.row(r - r0, 0, acc, n_out) per pixel, channels consecutive; out(i, j, acc)
// for a pipeline without lane overloads).
//
// The rule (direct_conv_fits): one group, C <= 4 and K <= 512. Lanes are output pixels when the
// channels do not fill a register (n_out < L, L = simd_lanes<float>: 4 SSE2 / NEON, 8 AVX2,
// 16 AVX-512; LeNet's 6), else channels (VGG's 16, 32), and the pipeline takes rows:
//
//   lines     every input row the call needs, per channel c and column phase f < sw, as float
//             x - z: line(ih, c, f)[t] = x(ih, f + t sw - pw, c) - z, 0 outside the image (the
//             padding is z). Tap (a, b, c) of output pixel ow of row oh is then
//             line(oh sh + a dh - ph, c, (b dw) mod sw)[ow + (b dw) div sw]: for consecutive
//             pixels, consecutive floats.
//   pixels    tile of JB <= 6 channels x PB <= 2 registers of L pixels: per tap p, PB loads, JB
//             weight broadcasts, JB PB multiply-adds; the sums to int32 (cvttps2dq), then per
//             channel the row's pixels in lanes through the output stage (out.column,
//             output_stage.hpp "Columns"), or per pixel (out.row) when a stage has no column
//             form (the residual adds).
//   pooled    pixel lanes into a last stage of 2 x 2 / stride-2 max-pool windows (out.pool_pairs
//             of a row: LeNet's conv1): rows oh, oh + 1 of a window both summed, then per
//             channel out.column_pairs (output_stage.hpp "Pooled columns"), one store per
//             pooled pixel instead of a max per output pixel. Where every channel's stages
//             are monotone, the width is even and the store takes u8 blocks (the engine's
//             fused_store: LeNet), every channel of the row pair at once
//             (out.column_pairs_block): the codes interleaved into NHWC and stored as one
//             run, not a byte store per pooled pixel and channel. Row pairs take these forms
//             whatever the channels (LeNet's 6 fill two of SSE2's 4 lanes): the stages run once
//             per pooled pixel. In a build narrower than AVX2 (plain -O2: SSE2), a path with
//             AVX2 (avx2, avx_vnni, avx512_vnni) runs the blocks in AVX2 registers of 8 pooled
//             pixels (out.column_pairs_block_avx2, output_stage.hpp "AVX2 blocks").
//   vnni      path int_isa::avx512_vnni, C = 1, sw = dw = 1 and pixel lanes (n_out < 16 or a
//             stage without rows: LeNet's conv1), rows padded to 16 pixels: integer dot
//             products instead of float FMAs. Each kernel row's kw taps in quads u (taps
//             4u .. 4u + 3, zero weights past kw), and per input row a quad line, quads[t] =
//             bytes x(ih, t - pw) .. x(ih, t + 3 - pw) (z outside the image; two masked loads
//             and a byte shuffle per 16 quads: quad_line), so quad (a, u) of pixel ow is
//             quads(row a)[ow + 4u]: a plain load per 16 pixels, one vpdpbusd (u8 x s8, 4
//             products into each int32 lane) per channel, kh ceil(kw / 4) of them instead of
//             kh kw FMAs (LeNet: 10, not 25). The codes multiply x itself, not x - z:
//             acc = sum x w - z sum w, both exact in int32 (|sum| <= 255 * 128 * (K + 3 kh)).
//   madd      path int_isa::avx2 or avx_vnni (no 256-bit vpdpbusd tiles of its own), the same
//             cases with n_out < 8 (or no rows), quad lines and weight quads as vnni, 8 pixels
//             a register: per quad and channel one vpmaddubsw (u8 x s8, the two byte pairs of
//             each quad into int16 lanes) and one vpaddw; per group of G quads one vpmaddwd by
//             ones (the pairs into the quad's int32 lane) and one vpaddd. A pair's
//             |x0 w0 + x1 w1| <= 255 (|w0| + |w1|), so the int16 sums are exact while every
//             channel's |w| over a group's pair lane sum to <= 128 (madd_group_quads: the
//             largest such G; LeNet's 4-bit 5 x 5 kernels: one group of all 10 quads, <= 15
//             codes of |w| <= 8 per lane). Weights where no G fits (a byte pair with
//             |w0| + |w1| > 128) take the float lines. kh ceil(kw / 4) multiplies per 8 pixels
//             instead of kh kw FMAs (LeNet: 10, not 25).
//   channels  tile of PX pixels x 2 registers of L channels, PX = 8 at AVX-512 (16 of its 32
//             registers), else 4 (weights transposed once per call, zero-padded to whole
//             registers): per tap, 2 weight loads, PX broadcasts of line values, 2 PX
//             multiply-adds; the sums are then the pixels' rows, one out.rows call per
//             output row (out.row per pixel for a stage without rows), with no transpose. In a
//             build narrower than AVX2 (plain -O2: SSE2) a path with AVX2 runs these tiles in
//             AVX2 registers of 8 channels (direct_tiles_channels_avx2, VGG's first conv).
//
// Exact: every product (x - z) w is an integer of magnitude <= 255 * 128 and every partial sum
// one of magnitude <= 255 * 128 * 512 < 2^24, so float holds each exactly and a multiply-add
// (fused or not) rounds nothing: the int32 sums equal the integer ones bit for bit. The weights
// are the int8 codes (n_out x K, depth order (a, b, c)), widened to float once per call. Lines
// are built once per call and image (each input row once, shared by the kh output rows that
// read it), so the call's rows may be any range: whole images or bands of output rows.
//
// The path is chosen at run time: direct_conv(int_isa p, ...) as packed_gemm (isa.hpp; the
// overload without p takes best_int_isa()). The quad tiles are compiled on every x86-64 build
// with the target attributes of isa.hpp (BITGRAD_TARGET_AVX2, _AVX512_VNNI), whatever the -m
// flags, and run only on a path int_isa_supported allows; the float lines use the build's own
// register (xsimd's default architecture: L = 4 at plain -O2, SSE2). The row padding owp is
// whole registers of both the float lines and the chosen quad tiles, so the output stage's
// lane batches (L) stay whole on every path.
//
// Scratch is thread_local: concurrent calls from several threads are safe. Without SIMD
// (BITGRAD_NO_SIMD) the reference twin runs on every path.
#pragma once

#include <bitgrad/core/simd.hpp> // immintrin.h, with GCC 12's intrinsic warnings silenced
#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/output_stage.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>
#include <bitgrad/kernels/ref/direct_conv.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace bitgrad {

/// Most input channels of a conv the direct path takes.
inline constexpr std::size_t direct_conv_max_channels = 4;
/// Longest depth K = C kh kw: 255 * 128 * K < 2^24 (|w| <= 128 on the full grid), so the float
/// sums are exact.
inline constexpr std::size_t direct_conv_max_depth = 512;
static_assert(255 * 128 * direct_conv_max_depth < (std::size_t(1) << 24));

/// True when the direct path takes a conv of geometry g (the rule at the top).
inline bool direct_conv_fits(const conv2d_geometry& g) {
  return g.groups == 1 && g.in_channels >= 1 && g.in_channels <= direct_conv_max_channels &&
         g.filter_size() >= 1 && g.filter_size() <= direct_conv_max_depth && g.stride_h >= 1 &&
         g.stride_w >= 1 && g.dilation_h >= 1 && g.dilation_w >= 1;
}

/// Every code of w as int8, codes[j * K + p] (channel j in original order, K = w.depth()): the
/// weights of direct_conv. Full-tile quads are read plane by plane (packed_weights.hpp: element
/// e = 4 c + p' of a quad sits in byte e mod B of each plane, at bit f (e div B)); the tail and
/// ragged tiles with the streaming scalar decoder of packed_decode.hpp.
inline void packed_codes(const packed_weights& w, std::int8_t* codes) {
  const std::size_t n = w.channels(), K = w.depth();
  const std::size_t quads = (K + packed_quad - 1) / packed_quad, full_quads = K / packed_quad;
  thread_local std::vector<std::uint32_t> order;
  thread_local std::vector<std::int8_t> panel;
  order.resize(n);
  w.channel_order(order.data());
  for (int k = 1; k <= packed_max_bits; ++k) {
    const packed_layout l = packed_layout_of(k);
    for (std::size_t t = 0; t < w.class_tiles(k); ++t) {
      const std::uint32_t* chan = order.data() + w.class_begin(k) + t * packed_tile;
      const std::size_t r = w.tile_channels(k, t);
      std::size_t q0 = 0; // quads below q0 are decoded here, the rest by the scalar decoder
      if (w.tile_full_layout(k, t)) {
        const std::uint8_t* base = w.tile_data(k, t);
        for (std::size_t q = 0; q < full_quads; ++q, base += l.quad_bytes)
          for (std::size_t e = 0; e < packed_quad_codes; ++e) {
            std::int32_t code;
            if (l.raw_bytes) {
              code = static_cast<std::int8_t>(base[e]);
            } else {
              std::uint32_t u = 0;
              const std::uint8_t* plane = base;
              for (int i = 0; i < l.planes; ++i) {
                const int f = l.plane[i].width;
                const std::size_t B = 8 * std::size_t(f);
                u |=
                    ((std::uint32_t(plane[e % B]) >> (std::size_t(f) * (e / B))) & ((1u << f) - 1u))
                    << l.plane[i].shift;
                plane += B;
              }
              code = packed_code(u, k);
            }
            const std::size_t c = e / packed_quad;
            if (c < r)
              codes[chan[c] * K + q * packed_quad + e % packed_quad] =
                  static_cast<std::int8_t>(code);
          }
        q0 = full_quads;
      }
      if (q0 == quads) continue;
      // panel[q - q0][c][p'] = code(c, 4 q + p') (packed_decode.hpp)
      panel.resize((quads - q0) * packed_quad_codes);
      detail::packed_decode_generic(w, k, t, q0, quads, panel.data(), nullptr);
      for (std::size_t c = 0; c < r; ++c)
        for (std::size_t p = q0 * packed_quad; p < K; ++p)
          codes[chan[c] * K + p] =
              panel[(p / packed_quad - q0) * packed_quad_codes + c * packed_quad + p % packed_quad];
    }
  }
}

namespace detail {

struct direct_conv_scratch {
  std::vector<float> lines, weights, weights_t;
  std::vector<std::int32_t> acc, row;
  std::vector<std::uint32_t> offsets;
  std::vector<int> directions;
  std::vector<std::uint32_t> quads; // quad lines (the VNNI path)
  std::vector<std::int32_t> weight_quads, zero_sums;
  std::vector<std::uint8_t> padded_row; // the AVX2 quad lines' padded input row
};

inline direct_conv_scratch& direct_scratch() {
  thread_local direct_conv_scratch s;
  return s;
}

/// dst[t] = x[t] - z as float for t < count, in blocks of 8 and a last block that overlaps the
/// one before (count >= 8). A plain loop was vectorised 32 values at a time on AVX-512, so a
/// 28-value line (LeNet) ran its scalar epilogue only; __restrict: the float stores may
/// otherwise alias the u8 input.
inline void widen_minus_zero(const std::uint8_t* __restrict x, std::size_t count, std::int32_t z,
                             float* __restrict dst) {
  constexpr std::size_t block = 8;
  auto widen = [&](std::size_t t) {
    for (std::size_t i = 0; i < block; ++i)
      dst[t + i] = static_cast<float>(std::int32_t(x[t + i]) - z);
  };
  if (count < block) {
    for (std::size_t t = 0; t < count; ++t) dst[t] = static_cast<float>(std::int32_t(x[t]) - z);
    return;
  }
  for (std::size_t t = 0; t + block < count; t += block) widen(t);
  widen(count - block);
}

/// Largest number of weight quads G (a divisor-free group: quads [g G, g G + G)) whose byte-pair
/// sums fit int16 in the AVX2 path ("madd" at the top), 0 when not even one quad does: a pair
/// x0 w0 + x1 w1 of u8 x has |pair| <= 255 (|w0| + |w1|), so a group's int16 lane (pair h of
/// every quad in it) stays within 255 S <= 32767 when S = sum over the group's quads of
/// |w(4u + 2h)| + |w(4u + 2h + 1)| <= 128, for every channel and h = 0, 1. Neither vpmaddubsw's
/// saturation nor vpaddw's wrap is then reached. wq: n_out x Kq quads as in direct_conv. Plain C++:
/// the choice of path, not a kernel.
inline std::size_t madd_group_quads(const std::int32_t* wq, std::size_t n_out, std::size_t Kq) {
  constexpr int bound = 32767 / 255; // 128
  // prefix[(j * 2 + h) * (Kq + 1) + p]: the sum of half h's |w| over channel j's quads below p.
  thread_local std::vector<int> prefix;
  prefix.assign(n_out * 2 * (Kq + 1), 0);
  for (std::size_t j = 0; j < n_out; ++j)
    for (int h = 0; h < 2; ++h) {
      int* pre = prefix.data() + (j * 2 + std::size_t(h)) * (Kq + 1);
      for (std::size_t p = 0; p < Kq; ++p) {
        const std::uint32_t quad = static_cast<std::uint32_t>(wq[j * Kq + p]);
        const auto b0 = static_cast<std::int8_t>(quad >> (16 * h));
        const auto b1 = static_cast<std::int8_t>(quad >> (16 * h + 8));
        pre[p + 1] = pre[p] + std::abs(int(b0)) + std::abs(int(b1));
      }
    }
  for (std::size_t G = Kq; G >= 1; --G) {
    bool fits = true;
    for (std::size_t jh = 0; jh < 2 * n_out && fits; ++jh) {
      const int* pre = prefix.data() + jh * (Kq + 1);
      for (std::size_t p0 = 0; p0 < Kq && fits; p0 += G)
        fits = pre[std::min(Kq, p0 + G)] - pre[p0] <= bound;
    }
    if (fits) return G;
  }
  return 0;
}

#if BITGRAD_HAS_SIMD
/// One tile: channels j0 .. j0 + JB - 1 (weights w, K apart) of PB registers of pixels read at
/// src + off[p] (+ q L); the int32 sums to acc + jb * acc_stride + q L.
template <class B, std::size_t JB, std::size_t PB>
BITGRAD_ALWAYS_INLINE void direct_tile(const float* src, const std::uint32_t* off, std::size_t K,
                                       const float* w, std::int32_t* acc, std::size_t acc_stride) {
  constexpr std::size_t L = B::size;
  B s[JB][PB];
  for (std::size_t jb = 0; jb < JB; ++jb)
    for (std::size_t q = 0; q < PB; ++q) s[jb][q] = B(0.0f);
  for (std::size_t p = 0; p < K; ++p) {
    const float* in = src + off[p];
    B xv[PB];
    for (std::size_t q = 0; q < PB; ++q) xv[q] = B::load_unaligned(in + q * L);
    for (std::size_t jb = 0; jb < JB; ++jb) {
      const B wv(w[jb * K + p]);
      for (std::size_t q = 0; q < PB; ++q) s[jb][q] = xsimd::fma(wv, xv[q], s[jb][q]);
    }
  }
  for (std::size_t jb = 0; jb < JB; ++jb)
    for (std::size_t q = 0; q < PB; ++q)
      xsimd::to_int(s[jb][q]).store_unaligned(acc + jb * acc_stride + q * L);
}

/// Lanes over channels (when they fill registers): pixels px < PX of one row (line values at
/// src + off[p] + px) x JV registers of channels (weights wt[p * npad ..]); the int32 sums to
/// acc[px * npad + v L].
template <class B, std::size_t PX, std::size_t JV>
BITGRAD_ALWAYS_INLINE void direct_tile_channels(const float* src, const std::uint32_t* off,
                                                std::size_t K, const float* wt, std::size_t npad,
                                                std::int32_t* acc) {
  constexpr std::size_t L = B::size;
  B s[PX][JV];
  for (std::size_t px = 0; px < PX; ++px)
    for (std::size_t v = 0; v < JV; ++v) s[px][v] = B(0.0f);
  for (std::size_t p = 0; p < K; ++p) {
    const float* in = src + off[p];
    B wv[JV];
    for (std::size_t v = 0; v < JV; ++v) wv[v] = B::load_unaligned(wt + p * npad + v * L);
    for (std::size_t px = 0; px < PX; ++px) {
      const B x(in[px]);
      for (std::size_t v = 0; v < JV; ++v) s[px][v] = xsimd::fma(x, wv[v], s[px][v]);
    }
  }
  for (std::size_t px = 0; px < PX; ++px)
    for (std::size_t v = 0; v < JV; ++v)
      xsimd::to_int(s[px][v]).store_unaligned(acc + px * npad + v * L);
}

/// Pixels [0, count) of a row (line values from src) x every channel register, in tiles of 8
/// (AVX-512) or 4 pixels x 2 registers.
template <class B>
void direct_tiles_channels(const float* src, const std::uint32_t* off, std::size_t K,
                           const float* wt, std::size_t npad, std::int32_t* acc,
                           std::size_t count) {
  constexpr std::size_t L = B::size;
  const std::size_t regs = npad / L;
  auto run = [&]<std::size_t PX>(std::size_t px0) {
    std::size_t v = 0;
    for (; v + 2 <= regs; v += 2)
      direct_tile_channels<B, PX, 2>(src + px0, off, K, wt + v * L, npad, acc + px0 * npad + v * L);
    if (v < regs)
      direct_tile_channels<B, PX, 1>(src + px0, off, K, wt + v * L, npad, acc + px0 * npad + v * L);
  };
  std::size_t px = 0;
  // 8 pixels x 2 registers (16 accumulators) where 32 registers hold them (AVX-512), else 4.
  if constexpr (L >= 16)
    for (; px + 8 <= count; px += 8) run.template operator()<8>(px);
  for (; px + 4 <= count; px += 4) run.template operator()<4>(px);
  for (; px < count; ++px) run.template operator()<1>(px);
}

#if BITGRAD_PACKED_X86
// The quad paths ("vnni" and "madd" at the top), compiled on every x86-64 build with the target
// attributes of isa.hpp and run only where int_isa_supported says the CPU has them.
#define BITGRAD_DIRECT_CONV_QUADS 1
/// One tile of the VNNI path (see "vnni" at the top): channels j0 .. j0 + JB - 1 (weight quads
/// wq, Kq apart) of PB registers of 16 pixels, quad lines read at src + off[p] (+ 16 q);
/// acc = sum_p dpbusd(quads, weight quad) - zsum[jb] to acc + jb * acc_stride + 16 q.
template <std::size_t JB, std::size_t PB>
BITGRAD_TARGET_AVX512_VNNI BITGRAD_ALWAYS_INLINE void
direct_tile_vnni(const std::uint32_t* src, const std::uint32_t* off, std::size_t Kq,
                 const std::int32_t* wq, const std::int32_t* zsum, std::int32_t* acc,
                 std::size_t acc_stride) {
  __m512i s[JB][PB];
  for (std::size_t jb = 0; jb < JB; ++jb)
    for (std::size_t q = 0; q < PB; ++q) s[jb][q] = _mm512_setzero_si512();
  for (std::size_t p = 0; p < Kq; ++p) {
    const std::uint32_t* in = src + off[p];
    __m512i xv[PB];
    for (std::size_t q = 0; q < PB; ++q) xv[q] = _mm512_loadu_si512(in + q * 16);
    for (std::size_t jb = 0; jb < JB; ++jb) {
      const __m512i wv = _mm512_set1_epi32(wq[jb * Kq + p]);
      for (std::size_t q = 0; q < PB; ++q) s[jb][q] = _mm512_dpbusd_epi32(s[jb][q], xv[q], wv);
    }
  }
  for (std::size_t jb = 0; jb < JB; ++jb)
    for (std::size_t q = 0; q < PB; ++q)
      _mm512_storeu_si512(acc + jb * acc_stride + q * 16,
                          _mm512_sub_epi32(s[jb][q], _mm512_set1_epi32(zsum[jb])));
}

/// Bytes s .. s + 15 of a padded row (quad_line): columns s - pw + e inside [0, W) loaded, the
/// rest z (zv: z in every byte); every byte z for a null row.
BITGRAD_TARGET_AVX512_VNNI BITGRAD_ALWAYS_INLINE __m128i padded_bytes16(const std::uint8_t* row,
                                                                        std::size_t W,
                                                                        std::size_t pw, __m128i zv,
                                                                        std::size_t s) {
  if (!row) return zv;
  const std::ptrdiff_t first = std::ptrdiff_t(s) - std::ptrdiff_t(pw);
  const std::ptrdiff_t lo = std::clamp<std::ptrdiff_t>(-first, 0, 16);
  const std::ptrdiff_t hi = std::clamp<std::ptrdiff_t>(std::ptrdiff_t(W) - first, 0, 16);
  if (lo >= hi) return zv;
  const auto m = static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
  // The address of column `first` (before the row when first < 0: only masked-off bytes are
  // there), formed as an integer.
  const auto at = reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(row) +
                                                static_cast<std::uintptr_t>(first));
  return _mm_mask_loadu_epi8(zv, m, at);
}

/// Quad line of one input row: q[t] = bytes t .. t + 3 of the padded row (byte p = row[p - pw],
/// z outside [0, W) and for every byte when row is null: a padding row) as the int32 they form
/// in memory (x86: little-endian), t < count (a multiple of 16). Per 16 quads, padded bytes
/// 16 s .. 16 s + 15 and 16 s + 8 .. 16 s + 23, each one masked load (z in the masked-off
/// bytes; they do not fault), in the register's 128-bit lanes 0, 1 and 2, 3; then one in-lane
/// byte shuffle (vpshufb) puts quad 4 k + e of lane k at its bytes 4 (k mod 2) + e .. + 3. A
/// loop of shifts that the compiler vectorised at 256 bits spent ~4 instructions per quad on
/// the widening, and read a row buffer just written byte-wise (a store-forwarding stall).
BITGRAD_TARGET_AVX512_VNNI inline void quad_line(const std::uint8_t* row, std::size_t W,
                                                 std::size_t pw, std::uint8_t z, std::size_t count,
                                                 std::uint32_t* q) {
  const __m512i pick =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6));
  const __m512i index = _mm512_add_epi8(
      pick, _mm512_set_epi32(0x04040404, 0x04040404, 0x04040404, 0x04040404, 0, 0, 0, 0, 0x04040404,
                             0x04040404, 0x04040404, 0x04040404, 0, 0, 0, 0));
  const __m128i zv = _mm_set1_epi8(static_cast<char>(z));
  for (std::size_t t = 0; t < count; t += 16) {
    const __m128i low = padded_bytes16(row, W, pw, zv, t);
    const __m128i high = padded_bytes16(row, W, pw, zv, t + 8);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(low)),
                                         _mm256_broadcastsi128_si256(high), 1);
    _mm512_storeu_si512(q + t, _mm512_shuffle_epi8(v, index));
  }
}

/// JB channels over the padded row of owp pixels (a multiple of 16), VNNI path.
template <std::size_t JB>
BITGRAD_TARGET_AVX512_VNNI void direct_tiles_vnni(const std::uint32_t* src,
                                                  const std::uint32_t* off, std::size_t Kq,
                                                  const std::int32_t* wq, const std::int32_t* zsum,
                                                  std::int32_t* acc, std::size_t owp) {
  std::size_t ow = 0;
  for (; ow + 32 <= owp; ow += 32)
    direct_tile_vnni<JB, 2>(src + ow, off, Kq, wq, zsum, acc + ow, owp);
  for (; ow < owp; ow += 16) direct_tile_vnni<JB, 1>(src + ow, off, Kq, wq, zsum, acc + ow, owp);
}

/// One tile of the AVX2 path ("madd" at the top): channels j0 .. j0 + JB - 1 (weight quads wq,
/// Kq apart) of 8 pixels, quad lines read at src + off[p]. Per group of G quads the byte pairs
/// summed in int16 (vpmaddubsw, vpaddw), then the pairs of each quad added into int32
/// (vpmaddwd by ones); acc = sum - zsum[jb] to acc + jb * acc_stride.
template <std::size_t JB>
BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE void
direct_tile_madd(const std::uint32_t* src, const std::uint32_t* off, std::size_t Kq, std::size_t G,
                 const std::int32_t* wq, const std::int32_t* zsum, std::int32_t* acc,
                 std::size_t acc_stride) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s[JB];
  for (std::size_t jb = 0; jb < JB; ++jb) s[jb] = _mm256_setzero_si256();
  for (std::size_t p0 = 0; p0 < Kq; p0 += G) {
    const std::size_t p1 = std::min(Kq, p0 + G);
    __m256i h[JB];
    for (std::size_t jb = 0; jb < JB; ++jb) h[jb] = _mm256_setzero_si256();
    for (std::size_t p = p0; p < p1; ++p) {
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + off[p])); // 8 quads
      for (std::size_t jb = 0; jb < JB; ++jb)
        h[jb] =
            _mm256_add_epi16(h[jb], _mm256_maddubs_epi16(xv, _mm256_set1_epi32(wq[jb * Kq + p])));
    }
    for (std::size_t jb = 0; jb < JB; ++jb)
      s[jb] = _mm256_add_epi32(s[jb], _mm256_madd_epi16(h[jb], ones));
  }
  for (std::size_t jb = 0; jb < JB; ++jb)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + jb * acc_stride),
                        _mm256_sub_epi32(s[jb], _mm256_set1_epi32(zsum[jb])));
}

/// Quad line of one input row, AVX2 (the VNNI path's quad_line): q[t] = bytes t .. t + 3 of the
/// padded row (byte p = row[p - pw], z outside [0, W), every byte z for a null row), t < count
/// (a multiple of 8). The padded row is built first in pad (count + 16 bytes); then per 8 quads
/// one 16-byte load into both 128-bit lanes and one in-lane vpshufb (lane k: quads 4k .. 4k + 3
/// from bytes 4k .. 4k + 6).
BITGRAD_TARGET_AVX2 inline void quad_line_avx2(const std::uint8_t* row, std::size_t W,
                                               std::size_t pw, std::uint8_t z, std::size_t count,
                                               std::uint8_t* pad, std::uint32_t* q) {
  std::memset(pad, z, count + 16);
  if (row && pw < count + 16) std::memcpy(pad + pw, row, std::min(W, count + 16 - pw));
  const __m256i index = _mm256_setr_epi8(0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6, //
                                         4, 5, 6, 7, 5, 6, 7, 8, 6, 7, 8, 9, 7, 8, 9, 10);
  for (std::size_t t = 0; t < count; t += 8) {
    const __m256i v =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pad + t)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + t), _mm256_shuffle_epi8(v, index));
  }
}

/// h += vpmaddubsw(x (u8), broadcast of the 4 bytes at w (s8)): one asm statement, so that GCC
/// neither hoists the broadcasts above the adds nor copies the sums between registers each quad
/// (as with intrinsics; avx2_quad_int16 in packed_avx2.hpp has the same form).
BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE void madd_step(__m256i& h, __m256i x,
                                                         const std::int32_t* w) {
  __m256i wb;
  // AT&T order: vpmaddubsw wb, x, wb = vpmaddubsw(x (u8), wb (s8)).
  asm("vpbroadcastd %[w], %[wb]\n\t"
      "vpmaddubsw %[wb], %[x], %[wb]\n\t"
      "vpaddw %[wb], %[h], %[h]"
      : [h] "+x"(h), [wb] "=&x"(wb)
      : [x] "x"(x), [w] "m"(*reinterpret_cast<const std::int32_t(*)[1]>(w)));
}

/// Two pixel registers: h0 += vpmaddubsw(x0, wb), h1 += vpmaddubsw(x1, wb), wb the broadcast of
/// the 4 bytes at w, one scratch register for the products.
BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE void madd_step2(__m256i& h0, __m256i& h1, __m256i x0,
                                                          __m256i x1, const std::int32_t* w) {
  __m256i wb, product;
  asm("vpbroadcastd %[w], %[wb]\n\t"
      "vpmaddubsw %[wb], %[x0], %[p]\n\t"
      "vpaddw %[p], %[h0], %[h0]\n\t"
      "vpmaddubsw %[wb], %[x1], %[p]\n\t"
      "vpaddw %[p], %[h1], %[h1]"
      : [h0] "+x"(h0), [h1] "+x"(h1), [wb] "=&x"(wb), [p] "=&x"(product)
      : [x0] "x"(x0), [x1] "x"(x1), [w] "m"(*reinterpret_cast<const std::int32_t(*)[1]>(w)));
}

/// direct_tile_madd when one group holds all Kq quads (G >= Kq: LeNet's conv1), 6 channels x PB
/// registers of 8 pixels: the int16 sums widened once at the end, no int32 sums in the loop.
/// At PB = 2 the 12 sums, 2 quad registers, the weight and the product fill the 16 registers;
/// each weight broadcast serves 16 pixels. The sums are named variables: as an array (h[6],
/// with the asm step on its elements) GCC kept them on the stack, loaded and stored around every
/// step.
template <std::size_t PB>
BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE void
direct_tile_madd_one6(const std::uint32_t* src, const std::uint32_t* off, std::size_t Kq,
                      const std::int32_t* wq, const std::int32_t* zsum, std::int32_t* acc,
                      std::size_t acc_stride) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
  __m256i b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0;
  for (std::size_t p = 0; p < Kq; ++p) {
    const std::uint32_t* in = src + off[p];
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in));
    if constexpr (PB == 2) {
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 8));
      madd_step2(a0, b0, x0, x1, wq + p);
      madd_step2(a1, b1, x0, x1, wq + Kq + p);
      madd_step2(a2, b2, x0, x1, wq + 2 * Kq + p);
      madd_step2(a3, b3, x0, x1, wq + 3 * Kq + p);
      madd_step2(a4, b4, x0, x1, wq + 4 * Kq + p);
      madd_step2(a5, b5, x0, x1, wq + 5 * Kq + p);
    } else {
      madd_step(a0, x0, wq + p);
      madd_step(a1, x0, wq + Kq + p);
      madd_step(a2, x0, wq + 2 * Kq + p);
      madd_step(a3, x0, wq + 3 * Kq + p);
      madd_step(a4, x0, wq + 4 * Kq + p);
      madd_step(a5, x0, wq + 5 * Kq + p);
    }
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i a[6] = {a0, a1, a2, a3, a4, a5}, b[6] = {b0, b1, b2, b3, b4, b5};
  for (std::size_t jb = 0; jb < 6; ++jb) {
    const __m256i z = _mm256_set1_epi32(zsum[jb]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + jb * acc_stride),
                        _mm256_sub_epi32(_mm256_madd_epi16(a[jb], ones), z));
    if constexpr (PB == 2)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + jb * acc_stride + 8),
                          _mm256_sub_epi32(_mm256_madd_epi16(b[jb], ones), z));
  }
}

/// JB channels over the padded row of owp pixels (a multiple of 8), AVX2 path: one group in
/// pairs of registers, then one; several groups one register at a time.
template <std::size_t JB>
BITGRAD_TARGET_AVX2 void direct_tiles_madd(const std::uint32_t* src, const std::uint32_t* off,
                                           std::size_t Kq, std::size_t G, const std::int32_t* wq,
                                           const std::int32_t* zsum, std::int32_t* acc,
                                           std::size_t owp) {
  std::size_t ow = 0;
  if (JB == 6 && G >= Kq) {
    for (; ow + 16 <= owp; ow += 16)
      direct_tile_madd_one6<2>(src + ow, off, Kq, wq, zsum, acc + ow, owp);
    for (; ow < owp; ow += 8) direct_tile_madd_one6<1>(src + ow, off, Kq, wq, zsum, acc + ow, owp);
    return;
  }
  for (; ow < owp; ow += 8) direct_tile_madd<JB>(src + ow, off, Kq, G, wq, zsum, acc + ow, owp);
}

/// direct_tile_channels in AVX2 registers of 8 channels ("channels" at the top: the float
/// lines of a build narrower than AVX2, on a path with AVX2): PX pixels x JV registers, FMAs
/// (exact: every partial sum is an integer below 2^24), the sums truncated to int32 as
/// xsimd::to_int.
template <std::size_t PX, std::size_t JV>
BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE void
direct_tile_channels_avx2(const float* src, const std::uint32_t* off, std::size_t K,
                          const float* wt, std::size_t npad, std::int32_t* acc) {
  __m256 s[PX][JV];
  for (std::size_t px = 0; px < PX; ++px)
    for (std::size_t v = 0; v < JV; ++v) s[px][v] = _mm256_setzero_ps();
  for (std::size_t p = 0; p < K; ++p) {
    const float* in = src + off[p];
    __m256 wv[JV];
    for (std::size_t v = 0; v < JV; ++v) wv[v] = _mm256_loadu_ps(wt + p * npad + v * 8);
    for (std::size_t px = 0; px < PX; ++px) {
      const __m256 x = _mm256_set1_ps(in[px]);
      for (std::size_t v = 0; v < JV; ++v) s[px][v] = _mm256_fmadd_ps(x, wv[v], s[px][v]);
    }
  }
  for (std::size_t px = 0; px < PX; ++px)
    for (std::size_t v = 0; v < JV; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + px * npad + v * 8),
                          _mm256_cvttps_epi32(s[px][v]));
}

/// Every channel register (npad a multiple of 8) of pixel px0's PX pixels, AVX2.
template <std::size_t PX>
BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE void
direct_pixels_channels_avx2(const float* src, const std::uint32_t* off, std::size_t K,
                            const float* wt, std::size_t npad, std::int32_t* acc) {
  const std::size_t regs = npad / 8;
  std::size_t v = 0;
  for (; v + 2 <= regs; v += 2)
    direct_tile_channels_avx2<PX, 2>(src, off, K, wt + v * 8, npad, acc + v * 8);
  if (v < regs) direct_tile_channels_avx2<PX, 1>(src, off, K, wt + v * 8, npad, acc + v * 8);
}

/// direct_tiles_channels in AVX2 registers: pixels [0, count) in tiles of 4 pixels x 2
/// registers of 8 channels (npad a multiple of 8).
BITGRAD_TARGET_AVX2 inline void direct_tiles_channels_avx2(const float* src,
                                                           const std::uint32_t* off, std::size_t K,
                                                           const float* wt, std::size_t npad,
                                                           std::int32_t* acc, std::size_t count) {
  std::size_t px = 0;
  for (; px + 4 <= count; px += 4)
    direct_pixels_channels_avx2<4>(src + px, off, K, wt, npad, acc + px * npad);
  for (; px < count; ++px)
    direct_pixels_channels_avx2<1>(src + px, off, K, wt, npad, acc + px * npad);
}
#endif // BITGRAD_PACKED_X86

/// JB channels over the padded row of owp pixels: pairs of registers, then one.
template <class B, std::size_t JB>
void direct_tiles(const float* src, const std::uint32_t* off, std::size_t K, const float* w,
                  std::int32_t* acc, std::size_t owp) {
  constexpr std::size_t L = B::size;
  std::size_t ow = 0;
  for (; ow + 2 * L <= owp; ow += 2 * L) direct_tile<B, JB, 2>(src + ow, off, K, w, acc + ow, owp);
  for (; ow < owp; ow += L) direct_tile<B, JB, 1>(src + ow, off, K, w, acc + ow, owp);
}
#endif

/// Calls tile.template operator()<JB>() with JB = jb, the channels of one tile of the loops
/// below (6, 4, 3, 2 or 1): their one switch from a run-time width to a kernel instance.
template <class Tile>
BITGRAD_ALWAYS_INLINE void with_tile_channels(std::size_t jb, Tile&& tile) {
  switch (jb) {
  case 6:
    tile.template operator()<6>();
    break;
  case 4:
    tile.template operator()<4>();
    break;
  case 3:
    tile.template operator()<3>();
    break;
  case 2:
    tile.template operator()<2>();
    break;
  default:
    tile.template operator()<1>();
    break;
  }
}

} // namespace detail

namespace detail {
template <class Out>
concept has_row_stage = requires(const Out& out, const std::int32_t* acc) {
  out.row(std::size_t(0), std::size_t(0), acc, std::size_t(1));
};

/// The integer quad kernel a path runs where the conv allows one (C = 1, sw = dw = 1, pixel
/// lanes): vnni on avx512_vnni, madd on avx2 and avx_vnni (AVX-VNNI has no tiles of its own
/// here), none (the float lines) on the others.
enum class direct_quads { none, madd, vnni };
inline direct_quads direct_quads_of(int_isa p) {
#ifdef BITGRAD_DIRECT_CONV_QUADS
  if (p == int_isa::avx512_vnni) return direct_quads::vnni;
  if (p == int_isa::avx2 || p == int_isa::avx_vnni) return direct_quads::madd;
#endif
  (void)p;
  return direct_quads::none;
}
} // namespace detail

/// acc(r, j) of the top of this header for r in [r0, r1), j < n_out, exact, handed to the
/// output stage out for rows r - r0, on path p (std::invalid_argument if this binary or CPU
/// lacks it): reference runs ref::direct_conv, avx512_vnni the vnni tiles, avx2 and avx_vnni
/// the madd tiles, the others (and those where the conv or its weights do not allow quads) the
/// float lines. x is image 0 of the batch (u8 NHWC), z its zero point, codes[j * K + p] the
/// weights in depth order (a, b, c). direct_conv_fits(g) must hold.
template <class Out>
void direct_conv(int_isa p, const conv2d_geometry& g, const std::uint8_t* x, std::uint8_t z,
                 const std::int8_t* codes, std::size_t n_out, std::size_t r0, std::size_t r1,
                 const Out& out) {
  if (!int_isa_supported(p))
    throw std::invalid_argument(std::string("direct_conv: path ") + int_isa_name(p) +
                                (int_isa_compiled(p) ? " is not supported by this CPU"
                                                     : " is not compiled into this binary"));
#if BITGRAD_HAS_SIMD
  if (p == int_isa::reference)
#endif
  {
    ref::direct_conv(g, x, z, codes, n_out, r0, r1, out);
    return;
  }
#if BITGRAD_HAS_SIMD
  using B = simd_batch<float>;
  constexpr std::size_t L = B::size; // the float lines' register: the build's (xsimd default)
  if (r0 >= r1 || n_out == 0) return;
  const std::size_t C = g.in_channels, H = g.in_h, W = g.in_w, K = g.filter_size();
  const std::size_t plane = g.out_plane(), OW = g.out_w(), sh = g.stride_h, sw = g.stride_w;
  const std::size_t kh = g.kernel_h, kw = g.kernel_w, dh = g.dilation_h, dw = g.dilation_w;
  detail::direct_conv_scratch& sc = detail::direct_scratch();
  const std::int32_t zi = z;
  // The quad paths (see "vnni" and "madd" at the top): one channel, stride and dilation 1 along
  // rows, pixel lanes (fewer channels than quads a register, or a stage without rows); the
  // madd one also needs the weights' pair sums to fit int16 (madd_group_quads). quad_regs:
  // quads (pixels) per register of the path, 16 vnni, 8 madd.
  const detail::direct_quads quads = detail::direct_quads_of(p);
  const std::size_t quad_regs = quads == detail::direct_quads::vnni ? 16 : 8;
  const std::size_t row_quads = (kw + 3) / 4, Kq = kh * row_quads;
  bool quad_path = quads != detail::direct_quads::none && C == 1 && sw == 1 && dw == 1 &&
                   (!detail::has_row_stage<Out> || n_out < quad_regs);
  [[maybe_unused]] std::size_t group = Kq; // the madd path's int16 group of quads
  if (quad_path) {
    // weight_quads[j * Kq + a row_quads + u] = codes (j, a, 4u .. 4u + 3), 0 past kw, as the
    // 4 bytes of an int32; zero_sums[j] = z sum_p w(j, p).
    sc.weight_quads.assign(n_out * Kq, 0);
    sc.zero_sums.resize(n_out);
    for (std::size_t j = 0; j < n_out; ++j) {
      std::int32_t sum = 0;
      for (std::size_t a = 0; a < kh; ++a)
        for (std::size_t u = 0; u < row_quads; ++u) {
          std::uint8_t four[4] = {};
          for (std::size_t e = 0; e < 4 && 4 * u + e < kw; ++e) {
            const std::int8_t wv = codes[j * K + a * kw + 4 * u + e];
            four[e] = static_cast<std::uint8_t>(wv);
            sum += wv;
          }
          std::memcpy(&sc.weight_quads[j * Kq + a * row_quads + u], four, 4);
        }
      sc.zero_sums[j] = zi * sum;
    }
    if (quads == detail::direct_quads::madd) {
      group = detail::madd_group_quads(sc.weight_quads.data(), n_out, Kq);
      quad_path = group > 0;
    }
  }
  // Pooled blocks in AVX2 registers (output_stage.hpp, "AVX2 blocks") where the build's own
  // lanes are narrower (SSE2 at plain -O2) and path p runs AVX2.
#if BITGRAD_OUTPUT_AVX2
  constexpr bool avx2_blocks = requires {
    requires Out::avx2_blocks;
  };
#else
  constexpr bool avx2_blocks = false;
#endif
  const bool wide_blocks = avx2_blocks && int_isa_has_avx2(p);
  // The row padded to whole registers: of the float lines (L), on a quad path also of its
  // tiles (quad_regs), and of the AVX2 blocks' 8 lanes (all powers of 2), so that owp % L == 0
  // holds for the output stage's lane batches on every path.
  const std::size_t reg =
      std::max({quad_path ? quad_regs : L, L, wide_blocks ? std::size_t(8) : std::size_t(1)});
  const std::size_t owp = (OW + reg - 1) / reg * reg;
  const std::size_t T = owp + (kw - 1) * dw / sw; // line length: every tap's loads fit
  const std::size_t line_set = C * sw * T;        // floats per input row
  sc.weights.resize(n_out * K);
  for (std::size_t i = 0; i < n_out * K; ++i) sc.weights[i] = static_cast<float>(codes[i]);
  sc.offsets.resize(std::max(K, Kq));
  for (std::size_t a = 0; a < kh; ++a)
    for (std::size_t b = 0; b < kw; ++b)
      for (std::size_t c = 0; c < C; ++c)
        sc.offsets[(a * kw + b) * C + c] =
            static_cast<std::uint32_t>(((a * dh * C + c) * sw + b * dw % sw) * T + b * dw / sw);
  sc.acc.resize(n_out * owp);
  sc.row.resize(n_out);
  const float* w = sc.weights.data();
  const std::uint32_t* off = sc.offsets.data();
  std::int32_t* acc = sc.acc.data();
  std::int32_t* row = sc.row.data();
  // Lanes over channels when they fill a register and the stage takes rows (VGG's 16, 32),
  // else over pixels (LeNet's 6).
  const bool channel_lanes = !quad_path && detail::has_row_stage<Out> && n_out >= L;
  // Their tiles in AVX2 registers of 8 channels where the build's are narrower (SSE2 at plain
  // -O2) and path p runs AVX2 (direct_tiles_channels_avx2); npad: whole registers of the tiles.
#ifdef BITGRAD_DIRECT_CONV_QUADS
  const bool wide_lines = channel_lanes && L < 8 && int_isa_has_avx2(p);
#else
  const bool wide_lines = false;
#endif
  const std::size_t channel_reg = wide_lines ? std::max<std::size_t>(L, 8) : L;
  const std::size_t npad = (n_out + channel_reg - 1) / channel_reg * channel_reg;
  if (channel_lanes) {
    sc.weights_t.assign(K * npad, 0.0f); // wt[p * npad + j] = w(j, p)
    for (std::size_t j = 0; j < n_out; ++j)
      for (std::size_t q = 0; q < K; ++q) sc.weights_t[q * npad + j] = sc.weights[j * K + q];
    sc.acc.resize(std::max(n_out * owp, OW * npad));
    acc = sc.acc.data();
  }
  constexpr bool by_column = requires {
    out.column(std::size_t(0), std::size_t(0), acc, n_out);
  };
  constexpr bool has_row = requires {
    out.row(std::size_t(0), std::size_t(0), row, n_out);
  };
  constexpr bool pairs = requires {
    out.column_pairs(std::size_t(0), std::size_t(0), acc, acc, n_out);
    { out.direction(std::size_t(0)) } -> std::same_as<int>;
    { out.pool_pairs(std::size_t(0), std::size_t(0)) } -> std::same_as<bool>;
  };
  // Quad line length, rounded up to whole registers of 16 quads (quad_line writes them).
  const std::size_t T4 = (owp + 4 * (row_quads - 1) + 15) / 16 * 16;
  if (quad_path) {
    sc.offsets.resize(std::max(K, Kq));
    for (std::size_t a = 0; a < kh; ++a)
      for (std::size_t u = 0; u < row_quads; ++u)
        sc.offsets[a * row_quads + u] = static_cast<std::uint32_t>(a * dh * T4 + 4 * u);
    off = sc.offsets.data();
  }
  // Pooled blocks: a row pair's channels through the stages at once, stored interleaved
  // (output_stage.hpp, column_pairs_block), where every channel's stages are monotone.
  constexpr bool blocks = pairs && requires {
    out.column_pairs_block(std::size_t(0), acc, acc, std::size_t(0), std::size_t(0), std::size_t(0),
                           static_cast<const int*>(nullptr));
    { out.pool_block(std::size_t(0), std::size_t(0), std::size_t(0)) } -> std::same_as<bool>;
  };
  bool monotone = false;
  if constexpr (pairs) {
    sc.acc.resize(std::max(sc.acc.size(), 2 * n_out * owp));
    sc.directions.resize(n_out); // each channel's stage direction, once per call
    monotone = true;
    for (std::size_t j = 0; j < n_out; ++j) {
      sc.directions[j] = out.direction(j);
      monotone = monotone && sc.directions[j] != 0;
    }
  }
  // Any number of channels: column_pairs_block runs them one register of pixels at a time
  // (LeNet's 6 at SSE2's 4 lanes too, where they fill more than a register).
  const bool block_pairs = blocks && monotone && OW % 2 == 0;
  acc = sc.acc.data();

  for (std::size_t r = r0; r < r1;) {
    // The call's pixels of image n: output rows oh_a .. oh_b.
    const std::size_t n = r / plane, e = std::min(r1, (n + 1) * plane);
    const std::size_t oh_a = (r - n * plane) / OW, oh_b = (e - 1 - n * plane) / OW;
    const std::ptrdiff_t ih_a = std::ptrdiff_t(oh_a * sh) - std::ptrdiff_t(g.pad_h);
    const std::size_t rows_in = (oh_b - oh_a) * sh + (kh - 1) * dh + 1;
    sc.lines.resize(rows_in * line_set);
    const std::uint8_t* img = x + n * H * W * C;
#ifdef BITGRAD_DIRECT_CONV_QUADS
    if (quad_path) {
      const bool vnni = quads == detail::direct_quads::vnni;
      // Quad lines: quads(i)[t] = the 4 bytes at t .. t + 3 of input row ih_a + i, padded with
      // z (bytes[t] = x(ih, t - pw), z outside the image), so tap quad (a, u) of pixel ow is
      // quads(oh sh + a dh - ih_a)[ow + 4 u].
      sc.quads.resize(rows_in * T4);
      if (!vnni) sc.padded_row.resize(T4 + 16);
      for (std::size_t i = 0; i < rows_in; ++i) {
        const std::ptrdiff_t ih = ih_a + std::ptrdiff_t(i);
        const bool inside = ih >= 0 && ih < std::ptrdiff_t(H);
        const std::uint8_t* in_row = inside ? img + std::size_t(ih) * W : nullptr;
        if (vnni)
          detail::quad_line(in_row, W, g.pad_w, z, T4, sc.quads.data() + i * T4);
        else
          detail::quad_line_avx2(in_row, W, g.pad_w, z, T4, sc.padded_row.data(),
                                 sc.quads.data() + i * T4);
      }
    } else
#endif
      for (std::size_t i = 0; i < rows_in; ++i) {
        float* set = sc.lines.data() + i * line_set;
        const std::ptrdiff_t ih = ih_a + std::ptrdiff_t(i);
        if (ih < 0 || ih >= std::ptrdiff_t(H)) {
          std::fill(set, set + line_set, 0.0f);
          continue;
        }
        const std::uint8_t* src = img + std::size_t(ih) * W * C;
        for (std::size_t c = 0; c < C; ++c)
          for (std::size_t f = 0; f < sw; ++f) {
            float* line = set + (c * sw + f) * T;
            // iw = f + t sw - pw is inside [0, W) for t in [t_lo, t_hi).
            const std::ptrdiff_t s = std::ptrdiff_t(sw),
                                 lo = std::ptrdiff_t(g.pad_w) - std::ptrdiff_t(f),
                                 hi = std::ptrdiff_t(W + g.pad_w) - std::ptrdiff_t(f);
            const std::size_t t_hi = hi > 0 ? std::min(T, std::size_t((hi + s - 1) / s)) : 0;
            const std::size_t t_lo = std::min(t_hi, lo > 0 ? std::size_t((lo + s - 1) / s) : 0);
            std::fill(line, line + t_lo, 0.0f);
            if (t_lo < t_hi) {
              const std::uint8_t* col = src + (f + t_lo * sw - g.pad_w) * C + c;
              const std::size_t step = sw * C, count = t_hi - t_lo;
              float* dst = line + t_lo;
              if (step == 1) // C = 1, stride 1: contiguous bytes
                detail::widen_minus_zero(col, count, zi, dst);
              else
                for (std::size_t t = 0; t < count; ++t)
                  dst[t] = static_cast<float>(std::int32_t(col[t * step]) - zi);
            }
            std::fill(line + t_hi, line + T, 0.0f);
          }
      }
    // The sums of output row oh (lines from src), channel j's pixels at acc_row + j owp.
    // (input row i = oh sh - ih_a: the first the output row reads).
    auto row_sums = [&](std::size_t i, std::int32_t* acc_row) {
#ifdef BITGRAD_DIRECT_CONV_QUADS
      if (quad_path) {
        const std::uint32_t* qsrc = sc.quads.data() + i * T4;
        const std::int32_t* wq = sc.weight_quads.data();
        const std::int32_t* zs = sc.zero_sums.data();
        for (std::size_t j0 = 0, jb = 0; j0 < n_out; j0 += jb) {
          jb = n_out - j0 >= 6 ? 6 : std::min<std::size_t>(4, n_out - j0);
          const std::int32_t* wj = wq + j0 * Kq;
          std::int32_t* aj = acc_row + j0 * owp;
          if (quads == detail::direct_quads::vnni)
            detail::with_tile_channels(jb, [&]<std::size_t JB>() {
              detail::direct_tiles_vnni<JB>(qsrc, off, Kq, wj, zs + j0, aj, owp);
            });
          else
            detail::with_tile_channels(jb, [&]<std::size_t JB>() {
              detail::direct_tiles_madd<JB>(qsrc, off, Kq, group, wj, zs + j0, aj, owp);
            });
        }
        return;
      }
#endif
      const float* src = sc.lines.data() + i * line_set;
      // Tiles of 6 channels while 6 are left (LeNet's 6: one tile; 6 x 2 sums + 2 inputs + 1
      // weight fill 15 of SSE2's and AVX2's 16 registers), then of 4 or fewer.
      for (std::size_t j0 = 0, jb = 0; j0 < n_out; j0 += jb) {
        jb = n_out - j0 >= 6 ? 6 : std::min<std::size_t>(4, n_out - j0);
        const float* wj = w + j0 * K;
        std::int32_t* aj = acc_row + j0 * owp;
        detail::with_tile_channels(
            jb, [&]<std::size_t JB>() { detail::direct_tiles<B, JB>(src, off, K, wj, aj, owp); });
      }
    };
    for (std::size_t oh = oh_a; oh <= oh_b; ++oh) {
      const std::size_t line = (oh - oh_a) * sh; // the row's first input row of the call
      const float* src = sc.lines.data() + line * line_set;
      const std::size_t first = n * plane + oh * OW;
      const std::size_t ow_a = std::max(r, first) - first, ow_b = std::min(e, first + OW) - first;
      const std::size_t i_a = first + ow_a - r0;
      if constexpr (detail::has_row_stage<Out>)
        if (channel_lanes) { // the call's pixels of the row only, sums as rows
#ifdef BITGRAD_DIRECT_CONV_QUADS
          if (wide_lines)
            detail::direct_tiles_channels_avx2(src + ow_a, off, K, sc.weights_t.data(), npad, acc,
                                               ow_b - ow_a);
          else
#endif
            detail::direct_tiles_channels<B>(src + ow_a, off, K, sc.weights_t.data(), npad, acc,
                                             ow_b - ow_a);
          // The row's pixels in one call where the stage takes rows (prepared lanes:
          // output_stage.hpp), else a call per pixel.
          if constexpr (requires { out.rows(i_a, ow_b - ow_a, std::size_t(0), acc, npad, n_out); })
            out.rows(i_a, ow_b - ow_a, std::size_t(0), acc, npad, n_out);
          else
            for (std::size_t ow = ow_a; ow < ow_b; ++ow)
              out.row(i_a + (ow - ow_a), 0, acc + (ow - ow_a) * npad, n_out);
          continue;
        }
      // The row's pixels inside [r, e): per channel in lanes of pixels (out.column) when the
      // channels do not fill a register (LeNet: 6 at AVX2), else per pixel with its n_out
      // channels (out.row: contiguous stores), or per value. Pooled row pairs take the column
      // forms whatever the channels (LeNet's 6 at SSE2's 4 lanes): their stages run once per
      // pooled pixel, where the per-pixel form runs them on all four pixels of a window.
      if constexpr (by_column) {
        // Rows oh, oh + 1 both whole in the call and pooled in 2 x 2 windows (LeNet): both
        // rows' sums, then per channel the pooled pixels (out.column_pairs), one store each, or
        // every channel at once (out.column_pairs_block).
        if constexpr (pairs) {
          const bool whole = ow_a == 0 && ow_b == OW && oh < oh_b && first + 2 * OW <= e;
          bool block = false; // pool_block implies pool_pairs
          if constexpr (blocks) block = whole && block_pairs && out.pool_block(i_a, OW, n_out);
          if (block || (whole && out.pool_pairs(i_a, OW))) {
            std::int32_t* below = acc + n_out * owp;
            row_sums(line, acc);
            row_sums(line + sh, below);
            if constexpr (blocks)
              if (block) {
#if BITGRAD_OUTPUT_AVX2
                if constexpr (avx2_blocks)
                  if (wide_blocks) {
                    out.column_pairs_block_avx2(i_a, acc, below, owp, OW, n_out,
                                                sc.directions.data());
                    ++oh;
                    continue;
                  }
#endif
                out.column_pairs_block(i_a, acc, below, owp, OW, n_out, sc.directions.data());
                ++oh;
                continue;
              }
            for (std::size_t j = 0; j < n_out; ++j) // rows of owp sums: whole lanes
              out.column_pairs(i_a, j, acc + j * owp, below + j * owp, OW, owp % L == 0,
                               sc.directions[j]);
            ++oh;
            continue;
          }
        }
        if (!has_row || n_out < simd_lanes<std::int32_t>) {
          row_sums(line, acc);
          for (std::size_t j = 0; j < n_out; ++j)
            out.column(i_a, j, acc + j * owp + ow_a, ow_b - ow_a);
          continue;
        }
      }
      row_sums(line, acc);
      for (std::size_t ow = ow_a; ow < ow_b; ++ow) {
        for (std::size_t j = 0; j < n_out; ++j) row[j] = acc[j * owp + ow];
        const std::size_t i = first + ow - r0;
        if constexpr (has_row)
          out.row(i, 0, row, n_out);
        else
          for (std::size_t j = 0; j < n_out; ++j) out(i, j, row[j]);
      }
    }
    r = e;
  }
#endif
}

/// direct_conv on the fastest path this binary and CPU have (best_int_isa()).
template <class Out>
void direct_conv(const conv2d_geometry& g, const std::uint8_t* x, std::uint8_t z,
                 const std::int8_t* codes, std::size_t n_out, std::size_t r0, std::size_t r1,
                 const Out& out) {
  direct_conv(best_int_isa(), g, x, z, codes, n_out, r0, r1, out);
}

} // namespace bitgrad
