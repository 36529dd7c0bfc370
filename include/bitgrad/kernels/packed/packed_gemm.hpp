// Packed low-bit integer GEMM / GEMV: u8 activations times k-bit weight codes (k = 1..8, mixed
// per channel group) kept in the resident formats of packed_weights.hpp, exact int32 sums handed
// to an output stage (output_stage.hpp). Same contract as the reference twin
// bitgrad::ref::packed_gemm (kernels/ref/packed_gemm.hpp).
//
// Why kernels/packed/: kernels know nothing of layers or of the file; this folder holds the
// weight formats (packed_weights.hpp), the path-independent parts (isa.hpp: tags and CPU
// choice; packed_decode.hpp: scalar decode; output_stage.hpp), one header per instruction set
// and this driver. The runtime (deploy/) is to build packed_weights from a file's codes at load
// and call packed_gemm for conv2d (im2row rows) and linear layers (issue 19, phase 2).
//
//   activations A (m x K, u8)        weights W (n x K codes)        acc (m x n, int32)
//        K                              K
//   +-----------+ m rows           +-----------+ n channels     acc(i, j) = sum_p
//   | x(i, p)   | row i at         | w(j, p)   | in bit classes      (x(i, p) - z) w(j, p)
//   +-----------+ a + i * lda      +-----------+ and tiles of 16   then out(i, j, acc(i, j))
//
// z is the activations' zero point: u8 after a ReLU has z = 0; a signed int8 input s (first
// layer) is passed as x = s + 128 with z = 128. The kernels form sum_p x w exactly in int32 and
// correct with the code sums of each channel:
//   sum_p (x - z) w = sum_p (x - shift) w + (shift - z) sum_p w
// where shift is 0 on every path but neon_dot (128: sdot is s8 x s8). |acc| <= 255 * 127 * K
// stays in int32 for K <= packed_max_depth.
//
// Loop nest (one call; every loop runs on the calling thread: callers split the rows, batch or
// pixels, across threads by calling on sub-ranges of A; splitting the channels would need a
// tile-range parameter, which there is not yet):
//
//   for i0 in m step MC (64 rows)                  activation block: MC x K bytes, L2
//     for bit class k = 1..8, tile t of class k    16 channels, original indices from
//                                                  packed_weights::channel_order
//       for q0 in quads step KC (160 quads)        panel: KC x 64 codes, L1 (10 / 20 KiB)
//         decode tile t, quads q0.. -> panel       SIMD for full-tile quads, scalar for the
//                                                  tail quad and ragged tiles
//         micro-kernel: acc(MC x 16) += A(i0.., q0..) . panel   (per ISA, MR rows at a time)
//       out(i, channel, acc + correction) for the tile's rows and channels
//
// When the whole depth fits one panel (K <= 640, every conv layer of the nets here) the two
// outer loops swap: each tile is decoded once per call and all row blocks run against it. Else
// the decode is repeated per row block, (m / MC) n K code decodes against m n K multiply-adds;
// packed_gemv is the same nest at m = 1, where the decode is the main cost.
//
// Tile pairs (AVX-512 VNNI, packed_rows_pair): the tile loop takes tiles t, t + 1 of a class
// together, two panels and two accumulator blocks, so each activation broadcast feeds 32
// channels (a single tile needs one load per vpdpbusd and ran at 75-80 % of the peak). A tile
// that runs alone on the flat plane (flat_conv.hpp: 16-channel convs) takes two quads per
// broadcast instead (packed_rows_halves), its panel laid out by the panel_ready hook.
//
// Output: the stage sees each (i, j) once; a pipeline whose stages all have lane overloads
// (output_stage.hpp) is called once per row block of a tile with consecutive channels,
// out.rows(i0, mb, j0, acc, stride, count) (out.row(i, j0, acc, count) when it has no rows),
// else once per element, out(i, j, acc).
//
// Paths: packed_gemm(int_isa, ...) runs the given path (std::invalid_argument if this binary or
// CPU lacks it); packed_gemm(...) without one runs best_int_isa(). Scratch buffers are
// thread_local, so concurrent calls from several threads are safe.
#pragma once

#include <bitgrad/kernels/packed/isa.hpp>
#include <bitgrad/kernels/packed/output_stage.hpp>
#include <bitgrad/kernels/packed/packed_avx2.hpp>
#include <bitgrad/kernels/packed/packed_avx512_vnni.hpp>
#include <bitgrad/kernels/packed/packed_avx_vnni.hpp>
#include <bitgrad/kernels/packed/packed_decode.hpp>
#include <bitgrad/kernels/packed/packed_neon.hpp>
#include <bitgrad/kernels/packed/packed_sse2.hpp>
#include <bitgrad/kernels/packed/packed_weights.hpp>
#include <bitgrad/kernels/ref/packed_gemm.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace bitgrad {

namespace detail {

/// Rows per block (MC): the accumulator block is MC x 16 int32 = 4 KiB.
inline constexpr std::size_t packed_row_block = 64;
/// Quads per decoded panel (KC): 10 KiB of int8 (20 KiB for a tile pair) or 20 KiB of int16
/// codes. 160 (K <= 640) holds the 3 x 3 convs at 64 channels (K = 576) in one panel: at 128
/// they took the long-row nest, whose decode per 64-row block was 4.5 % of VGG-style's samples
/// at batch 256 with tile pairs (benchmarks/README, issue 19, h19-wide).
inline constexpr std::size_t packed_chunk_quads = 160;

/// packed_gemm_blocks without tile pairs (the default of its rows_pair).
struct no_tile_pairs {};

/// packed_gemm_blocks without a hook on single-tile panels (the default of its panel_ready).
struct no_panel_hook {
  template <class Panel>
  void operator()(int, std::size_t, std::size_t, const Panel*) const {}
};

template <class T>
std::vector<T>& packed_scratch() {
  thread_local std::vector<T> buffer;
  return buffer;
}

/// The loop nest of the top of this header on path Arch, with the activations given by
/// `rows`: rows(i0, mb, q0, q1, tail, k, panel, acc, accumulate) sets (accumulate: adds to)
/// acc(i, 0..15), i < mb, to the sum over quads [q0, q1) of x(i0 + i, quad) . panel(quad - q0)
/// (packed_rows' contract on a block of A; flat_conv.hpp reads the rows from a padded NHWC band).
/// Row i of the call is handed to out as row out_row0 + i.
///
/// Tile pairs: when rows_pair is given (a path with a two-tile micro-kernel, packed_rows_pair:
/// AVX-512 VNNI), consecutive tiles t, t + 1 of a bit class run together:
/// rows_pair(i0, mb, q0, q1, tail, k, panel, panel_stride, acc0, acc1, accumulate) is rows()
/// for both tiles at once, tile t's panel at panel and its sums in acc0, tile t + 1's at panel +
/// panel_stride and acc1 (each row i at + i * packed_tile); one activation load then feeds 32
/// channels. A class's odd last tile runs alone.
///
/// panel_ready(k, q0, q1, panel) is called after each decode of a tile that runs alone (quads
/// [q0, q1) of class k in panel), before the rows() calls on it: flat_conv.hpp lays the panel
/// out for its one-tile kernel there, once per decode instead of once per row block.
template <class Arch, class Rows, class Out, class RowsPair = no_tile_pairs,
          class PanelReady = no_panel_hook>
void packed_gemm_blocks(Arch arch, std::size_t m, const Rows& rows, std::size_t out_row0,
                        std::uint8_t a_zero, const packed_weights& w, const Out& out,
                        const RowsPair& rows_pair = {}, const PanelReady& panel_ready = {}) {
  constexpr bool pairs = !std::is_same_v<RowsPair, no_tile_pairs>;
  using panel_t = typename packed_isa_traits<Arch>::panel;
  const std::size_t n = w.channels(), depth = w.depth();
  if (m == 0 || n == 0) return;
  const std::size_t full_quads = depth / packed_quad;
  const std::size_t quads = (depth + packed_quad - 1) / packed_quad;
  const std::size_t tail = depth % packed_quad;

  std::vector<std::uint32_t>& order = packed_scratch<std::uint32_t>();
  order.resize(n);
  w.channel_order(order.data());
  std::vector<panel_t>& panel = packed_scratch<panel_t>();
  // Two tiles' panels and accumulators (the second half used by tile pairs only).
  panel.resize(2 * packed_chunk_quads * packed_quad_codes);
  std::vector<std::int32_t>& acc = packed_scratch<std::int32_t>();
  acc.resize(2 * packed_row_block * packed_tile);
  std::int32_t* const acc1 = acc.data() + packed_row_block * packed_tile;

  // sum (x - z) w = [sum (x - shift) w] + (shift - z) * [sum w]
  const std::int64_t correction =
      std::int64_t(packed_isa_traits<Arch>::activation_shift) - std::int64_t(a_zero);
  std::int32_t sums[2 * packed_tile]; // tile t's, then (pairs) tile t + 1's

  // Decodes quads [q0, q1) of tile t of class k into panel p, adding code sums to s.
  auto decode_into = [&](panel_t* p, int k, std::size_t t, std::size_t q0, std::size_t q1,
                         std::int32_t* s) {
    const std::uint8_t* src = w.tile_data(k, t);
    if (w.tile_full_layout(k, t)) {
      const std::size_t simd_end = std::min(q1, full_quads);
      if (q0 < simd_end)
        packed_decode_quads(arch, k, src + q0 * packed_layout_of(k).quad_bytes, simd_end - q0, p,
                            s);
      if (q1 > full_quads) // the tail quad
        packed_decode_generic(w, k, t, full_quads, q1, p + (full_quads - q0) * packed_quad_codes,
                              s);
    } else {
      packed_decode_generic(w, k, t, q0, q1, p, s);
    }
  };
  auto decode = [&](int k, std::size_t t, std::size_t q0, std::size_t q1, std::int32_t* s) {
    decode_into(panel.data(), k, t, q0, q1, s);
  };
  // The second tile of a pair: its panel panel_stride codes after the first, its sums after
  // the first's.
  const std::size_t panel_stride = packed_chunk_quads * packed_quad_codes;
  auto decode_second = [&](int k, std::size_t t, std::size_t q0, std::size_t q1) {
    decode_into(panel.data() + panel_stride, k, t, q0, q1,
                correction != 0 ? sums + packed_tile : nullptr);
  };
  // Hands rows i0 .. i0 + mb - 1 of tile t of class k (accumulators at tile_acc, code sums at
  // tile_sums) to the output.
  auto emit_from = [&](int k, std::size_t t, std::size_t block_row, std::size_t mb,
                       std::int32_t* tile_acc, const std::int32_t* tile_sums) {
    const std::size_t i0 = out_row0 + block_row;
    const std::size_t r = w.tile_channels(k, t);
    const std::uint32_t* chan = order.data() + w.class_begin(k) + t * packed_tile;
    // The tile's channels are consecutive unless its bit class interleaves with another.
    const bool consecutive = chan[r - 1] - chan[0] == r - 1;
    if (correction != 0) // exact: the corrected sum fits int32, the wrap-around cancels
      for (std::size_t i = 0; i < mb; ++i) {
        std::int32_t* row = tile_acc + i * packed_tile;
        for (std::size_t c = 0; c < r; ++c)
          row[c] = static_cast<std::int32_t>(static_cast<std::uint32_t>(row[c]) +
                                             static_cast<std::uint32_t>(correction * tile_sums[c]));
      }
    if constexpr (requires { out.rows(i0, mb, std::size_t(0), tile_acc, packed_tile, r); }) {
      if (consecutive) { // the block's rows in one call (the stages set up once)
        out.rows(i0, mb, chan[0], tile_acc, packed_tile, r);
        return;
      }
    }
    for (std::size_t i = 0; i < mb; ++i) {
      const std::int32_t* row = tile_acc + i * packed_tile;
      if constexpr (requires { out.row(i, std::size_t(0), row, r); }) {
        if (consecutive) {
          out.row(i0 + i, chan[0], row, r);
          continue;
        }
      }
      for (std::size_t c = 0; c < r; ++c) out(i0 + i, chan[c], row[c]);
    }
  };
  auto emit = [&](int k, std::size_t t, std::size_t block_row, std::size_t mb) {
    emit_from(k, t, block_row, mb, acc.data(), sums);
  };
  // Tiles t and t + 1 of class k (pairs), rows i0 .. i0 + mb - 1.
  auto emit_pair = [&](int k, std::size_t t, std::size_t block_row, std::size_t mb) {
    emit_from(k, t, block_row, mb, acc.data(), sums);
    emit_from(k, t + 1, block_row, mb, acc1, sums + packed_tile);
  };

  if (quads <= packed_chunk_quads) {
    // The panel holds the whole depth: each tile is decoded once per call.
    for (int k = 1; k <= packed_max_bits; ++k)
      for (std::size_t t = 0; t < w.class_tiles(k); ++t) {
        std::fill(sums, sums + 2 * packed_tile, 0);
        if constexpr (pairs) {
          if (t + 1 < w.class_tiles(k)) {
            decode(k, t, 0, quads, correction != 0 ? sums : nullptr);
            decode_second(k, t + 1, 0, quads);
            for (std::size_t i0 = 0; i0 < m; i0 += packed_row_block) {
              const std::size_t mb = std::min(packed_row_block, m - i0);
              rows_pair(i0, mb, std::size_t(0), quads, tail, k, panel.data(), panel_stride,
                        acc.data(), acc1, false);
              emit_pair(k, t, i0, mb);
            }
            ++t;
            continue;
          }
        }
        decode(k, t, 0, quads, correction != 0 ? sums : nullptr);
        panel_ready(k, std::size_t(0), quads, panel.data());
        for (std::size_t i0 = 0; i0 < m; i0 += packed_row_block) {
          const std::size_t mb = std::min(packed_row_block, m - i0);
          rows(i0, mb, std::size_t(0), quads, tail, k, panel.data(), acc.data(), false);
          emit(k, t, i0, mb);
        }
      }
    return;
  }
  // Long rows: per row block, each tile's panel is refilled chunk by chunk while the block's
  // accumulators stay in acc.
  for (std::size_t i0 = 0; i0 < m; i0 += packed_row_block) {
    const std::size_t mb = std::min(packed_row_block, m - i0);
    for (int k = 1; k <= packed_max_bits; ++k)
      for (std::size_t t = 0; t < w.class_tiles(k); ++t) {
        std::fill(sums, sums + 2 * packed_tile, 0);
        if constexpr (pairs) {
          if (t + 1 < w.class_tiles(k)) {
            for (std::size_t q0 = 0; q0 < quads; q0 += packed_chunk_quads) {
              const std::size_t q1 = std::min(quads, q0 + packed_chunk_quads);
              decode(k, t, q0, q1, correction != 0 ? sums : nullptr);
              decode_second(k, t + 1, q0, q1);
              rows_pair(i0, mb, q0, q1, q1 == quads ? tail : 0, k, panel.data(), panel_stride,
                        acc.data(), acc1, q0 > 0);
            }
            emit_pair(k, t, i0, mb);
            ++t;
            continue;
          }
        }
        for (std::size_t q0 = 0; q0 < quads; q0 += packed_chunk_quads) {
          const std::size_t q1 = std::min(quads, q0 + packed_chunk_quads);
          decode(k, t, q0, q1, correction != 0 ? sums : nullptr);
          panel_ready(k, q0, q1, panel.data());
          rows(i0, mb, q0, q1, q1 == quads ? tail : 0, k, panel.data(), acc.data(), q0 > 0);
        }
        emit(k, t, i0, mb);
      }
  }
}

/// packed_gemm_blocks on a dense A (row i at a + i * lda).
template <class Arch, class Out>
void packed_gemm_run(Arch arch, std::size_t m, const std::uint8_t* a, std::size_t lda,
                     std::uint8_t a_zero, const packed_weights& w, const Out& out) {
  using panel_t = typename packed_isa_traits<Arch>::panel;
  auto rows = [&](std::size_t i0, std::size_t mb, std::size_t q0, std::size_t q1, std::size_t tail,
                  int k, const panel_t* panel, std::int32_t* acc, bool accumulate) {
    packed_rows(arch, mb, a + i0 * lda + q0 * packed_quad, lda, q1 - q0, tail, k, panel, acc,
                accumulate);
  };
  const std::size_t zero = 0;
  if constexpr (requires(const std::size_t* s, const panel_t* p, std::int32_t* c) {
                  packed_rows_pair(arch, m, a, lda, s, s, m, m, p, m, c, c, true);
                }) {
    // Both tiles of a pair at once: one segment, quads [q0, q1) (the tail quad among them).
    auto rows_pair = [&](std::size_t i0, std::size_t mb, std::size_t q0, std::size_t q1,
                         std::size_t tail, int, const panel_t* panel, std::size_t panel_stride,
                         std::int32_t* acc0, std::int32_t* acc1, bool accumulate) {
      const std::size_t whole = tail ? q1 - q0 - 1 : q1 - q0;
      packed_rows_pair(arch, mb, a + i0 * lda + q0 * packed_quad, lda, &zero, &whole, 1, tail,
                       panel, panel_stride, acc0, acc1, accumulate);
    };
    packed_gemm_blocks(arch, m, rows, 0, a_zero, w, out, rows_pair);
  } else {
    packed_gemm_blocks(arch, m, rows, 0, a_zero, w, out);
  }
}

[[noreturn]] inline void packed_isa_unavailable(int_isa p) {
  throw std::invalid_argument(std::string("packed_gemm: path ") + int_isa_name(p) +
                              (int_isa_compiled(p) ? " is not supported by this CPU"
                                                   : " is not compiled into this binary"));
}

} // namespace detail

/// acc(i, j) = sum_p (a[i * lda + p] - a_zero) * w(j, p) for i < m, every channel j, exact in
/// int32, handed to out(i, j, acc) once per (i, j) (j in original channel order), on path p.
template <class Out>
void packed_gemm(int_isa p, std::size_t m, const std::uint8_t* a, std::size_t lda,
                 std::uint8_t a_zero, const packed_weights& w, const Out& out) {
  if (!int_isa_supported(p)) detail::packed_isa_unavailable(p);
  switch (p) {
  case int_isa::reference:
    ref::packed_gemm(m, a, lda, a_zero, w, out);
    return;
#if BITGRAD_PACKED_X86
  case int_isa::sse2:
    detail::packed_gemm_run(isa::sse2{}, m, a, lda, a_zero, w, out);
    return;
  case int_isa::avx2:
    detail::packed_gemm_run(isa::avx2{}, m, a, lda, a_zero, w, out);
    return;
#if BITGRAD_PACKED_HAS_AVX_VNNI
  case int_isa::avx_vnni:
    detail::packed_gemm_run(isa::avx_vnni{}, m, a, lda, a_zero, w, out);
    return;
#endif
  case int_isa::avx512_vnni:
    detail::packed_gemm_run(isa::avx512_vnni{}, m, a, lda, a_zero, w, out);
    return;
#endif
#if BITGRAD_PACKED_ARM64
  case int_isa::neon:
    detail::packed_gemm_run(isa::neon{}, m, a, lda, a_zero, w, out);
    return;
  case int_isa::neon_dot:
    detail::packed_gemm_run(isa::neon_dot{}, m, a, lda, a_zero, w, out);
    return;
#endif
  default:
    detail::packed_isa_unavailable(p);
  }
}

/// packed_gemm on the fastest path this binary and CPU have (best_int_isa()).
template <class Out>
void packed_gemm(std::size_t m, const std::uint8_t* a, std::size_t lda, std::uint8_t a_zero,
                 const packed_weights& w, const Out& out) {
  packed_gemm(best_int_isa(), m, a, lda, a_zero, w, out);
}

/// One activation row (batch 1 linear): acc(0, j) = sum_p (x[p] - x_zero) * w(j, p), handed to
/// out(0, j, acc). The loop nest of packed_gemm at m = 1 (1-row micro-kernels, L1-sized panels).
template <class Out>
void packed_gemv(int_isa p, const std::uint8_t* x, std::uint8_t x_zero, const packed_weights& w,
                 const Out& out) {
  packed_gemm(p, 1, x, w.depth(), x_zero, w, out);
}

template <class Out>
void packed_gemv(const std::uint8_t* x, std::uint8_t x_zero, const packed_weights& w,
                 const Out& out) {
  packed_gemv(best_int_isa(), x, x_zero, w, out);
}

} // namespace bitgrad
