// conv2d on u8 NHWC with packed weights at stride 1, without im2row: the micro-kernels of
// packed_gemm read each patch in a z-padded copy of the input rows, which they see as one flat
// matrix. Same contract as the reference twin bitgrad::ref::packed_conv
// (kernels/ref/packed_conv.hpp):
//
//   acc(r, j) = sum_{a, b, c} (x(n, oh + a - ph, ow + b - pw, c) - z) w(j, (a kw + b) C + c)
//
// for output pixels r = (n OH + oh) OW + ow in [r0, r1), handed to out(r - r0, j, acc) (or the
// row / rows overloads) as packed_gemm hands the rows of an im2row block.
//
// The flat plane: per image, the input rows the call's output rows read are copied once into a
// band of rows of Wp pixels, each row pw z pixels then the image row (rows above or below the
// image all z), and pw z pixels after the band. The right padding of a row is the left padding
// of the next: at stride 1 output pixel (oh, ow) reads band columns ow .. ow + kw - 1 <= W + 2 pw
// - 1, and a column c >= Wp = W + pw is column c - Wp < pw of the next band row, z. So Wp = W + pw
// whenever an output row fits in a band row (OW = W + 2 pw - kw + 1 <= Wp, i.e. pw < kw), else
// Wp = W + 2 pw with pw z pixels on both sides (flat_band_width). Pixel (oh, ow) of the band
// sits at flat index f = (oh - oh0) Wp + ow, and kernel row a of its patch is the kw C bytes at
// band + (f + a Wp) C: so for every flat pixel, real or not,
//
//   acc(f, :) = sum_{a < kh} [ A_a(f, :) . panel quads [a kq, (a + 1) kq) ],
//   A_a = the band read from a Wp C as a matrix with row stride C,  kq = kw C / 4,
//
// one packed_rows call per kernel row on the same 64-row block (accumulating after the first).
// The flat pixels with ow >= OW (Wp - OW of each row but the last: kw - 1 - pw when the
// padding is shared, one for 3 x 3 / pad 1) are computed and dropped by the output adapter:
// (Wp - OW) / Wp more work (3.4 % at 28 x 28 with a 3 x 3 / pad 1 kernel, 6.7 % at 14 x 14,
// 12.5 % at 7 x 7; 7 %, 13 %, 22 % with both padding columns) against im2row's copy of kh kw C
// bytes per pixel.
// Needs stride 1, dilation 1, one group, and a kernel row of whole quads of the panel: kw C % 4
// == 0 (packed_conv_flat_fits), or weights with padded kernel rows (ref/packed_conv.hpp: depth
// kh R, R = kw C rounded up to a multiple of 4, zero codes in each row's last R - kw C places;
// packed_conv_flat_padded_fits). A padded kernel row reads R bytes from the band: its last
// R - kw C are the next pixel's first channels (or, past the band's last pixel, R - kw C bytes
// of z kept after the band), times zero codes. LeNet-5's conv2 (6 channels, 5 x 5: kw C = 30,
// R = 32) is such a conv: 7 % more multiply-adds than its 150-deep rows. (A 1-bit channel has
// no zero code, +-1 only: its weights cannot be padded, so such a conv takes im2row.)
// Exact: the same int32 sums of the same products as packed_gemm on the im2row rows (padding
// reads z as im2row's does; the int32 sums are formed in another order, which does not change
// them; the wrap-around of the correction cancels as in packed_gemm; zero codes add 0 to the
// sums and to the code sums of the correction). Scratch is thread_local: concurrent calls from
// several threads are safe.
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/packed/packed_gemm.hpp>
#include <bitgrad/kernels/ref/packed_conv.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace bitgrad {

/// True when packed_conv_flat computes conv g on weights with padded kernel rows (depth
/// packed_padded_depth(g)): stride 1, dilation 1, one group.
inline bool packed_conv_flat_padded_fits(const conv2d_geometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 && g.dilation_w == 1 &&
         g.groups == 1;
}

/// True when packed_conv_flat computes conv g on its plain weights (depth g.filter_size()):
/// packed_conv_flat_padded_fits and a kernel row of whole quads (kw C % 4 == 0), whose padded
/// rows are the plain ones.
inline bool packed_conv_flat_fits(const conv2d_geometry& g) {
  return packed_conv_flat_padded_fits(g) && g.kernel_w * g.in_channels % packed_quad == 0;
}

/// The band width Wp of conv g's flat plane (the top of this header): W + pw, the right padding
/// of a band row being the left padding of the next, when an output row fits in it (pw <
/// kw); else W + 2 pw.
inline std::size_t flat_band_width(const conv2d_geometry& g) {
  return g.pad_w < g.kernel_w ? g.in_w + g.pad_w : g.in_w + 2 * g.pad_w;
}

/// The matrix rows of a flat call. band_pixels: every band pixel from the first output pixel
/// to the last, so the micro-kernels run whole blocks at one row stride, the (Wp - OW) padding
/// columns of each output row computed and dropped (the top of this header). output_pixels:
/// the output pixels only, the micro-kernels called once per output row's part of a block (no
/// dropped work; the row blocks' tails of MR rows when OW is not a multiple of MR, e.g. 8 on
/// AVX-512: LeNet-5's conv2, OW = 8, where band_pixels would compute 92 rows per 64 pixels).
enum class flat_layout { band_pixels, output_pixels };

namespace detail {

/// The output stage of one flat call: flat row i is band pixel p = f0 + i at (p / wp, p % wp);
/// a pixel with p % wp < ow_n is output row first + (p / wp) ow_n + p % wp - f0 (first: the
/// output row of band pixel f0, f0 < ow_n), the others are dropped.
template <class Out>
struct flat_conv_out {
  const Out& out;
  std::size_t f0, wp, ow_n, first;

  struct no_runs { // stands for a runs callable in the requires-expression of rows
    template <class F>
    void operator()(const F&) const {}
  };
  /// f(output row, flat row, count) for each run of real pixels among flat rows [i0, i0 + m).
  template <class F>
  BITGRAD_ALWAYS_INLINE void runs(std::size_t i0, std::size_t m, const F& f) const {
    std::size_t p = f0 + i0;
    const std::size_t end = p + m;
    std::size_t row = p / wp, col = p % wp;
    while (p < end) {
      const std::size_t n = std::min(end - p, wp - col);
      if (col < ow_n) f(first + row * ow_n + col - f0, p - f0, std::min(n, ow_n - col));
      p += n, ++row, col = 0;
    }
  }
  void operator()(std::size_t i, std::size_t j, std::int32_t acc) const {
    const std::size_t p = f0 + i, col = p % wp;
    if (col < ow_n) out(first + p / wp * ow_n + col - f0, j, acc);
  }
  BITGRAD_ALWAYS_INLINE void row(std::size_t i, std::size_t j0, const std::int32_t* acc,
                                 std::size_t count) const requires requires(const Out& o) {
    o.row(i, j0, acc, count);
  }
  {
    const std::size_t p = f0 + i, col = p % wp;
    if (col < ow_n) out.row(first + p / wp * ow_n + col - f0, j0, acc, count);
  }
  BITGRAD_ALWAYS_INLINE void rows(std::size_t i0, std::size_t m, std::size_t j0,
                                  const std::int32_t* acc, std::size_t stride,
                                  std::size_t count) const requires requires(const Out& o) {
    o.rows(i0, m, j0, acc, stride, count);
  }
  {
    if constexpr (requires { out.rows_in_runs(no_runs{}, j0, acc, stride, count); }) {
      // One call for the block (the stages set up once), acc row a = flat row i0 + a.
      out.rows_in_runs(
          [&](const auto& f) {
            runs(i0, m, [&](std::size_t r, std::size_t i, std::size_t n) { f(r, i - i0, n); });
          },
          j0, acc, stride, count);
    } else {
      runs(i0, m, [&](std::size_t r, std::size_t i, std::size_t n) {
        out.rows(r, n, j0, acc + (i - i0) * stride, stride, count);
      });
    }
  }
};

/// packed_conv_flat on path Arch (the top of this header); mode: which matrix rows the
/// micro-kernels run (flat_layout).
template <class Arch, class Out>
void packed_conv_flat_run(Arch arch, const conv2d_geometry& g, const std::uint8_t* x,
                          std::uint8_t z, const packed_weights& w, std::size_t r0, std::size_t r1,
                          flat_layout mode, const Out& out) {
  using panel_t = typename packed_isa_traits<Arch>::panel;
  const std::size_t C = g.in_channels, H = g.in_h, W = g.in_w, kh = g.kernel_h;
  const std::size_t ow_n = g.out_w(), plane = g.out_plane(), pw = g.pad_w;
  const std::size_t wp = flat_band_width(g), row_bytes = wp * C;
  const std::size_t right = wp - W - pw;                          // z pixels right of a row
  const std::size_t kq = packed_kernel_row(g) / packed_quad;      // quads per kernel row
  const std::size_t over = packed_kernel_row(g) - g.kernel_w * C; // read past the last pixel
  // After the band: the pw z pixels the last row's right padding reads (a next row's left
  // padding), and over bytes of z.
  const std::size_t after = pw * C + over;
  thread_local std::vector<std::uint8_t> band;
  for (std::size_t r = r0; r < r1;) {
    // Image n's part of the rows: output pixels (oh0, ow0) .. (oh1, ow1).
    const std::size_t n = r / plane, e = std::min(r1, (n + 1) * plane);
    const std::size_t oh0 = r % plane / ow_n, ow0 = r % plane % ow_n;
    const std::size_t oh1 = (e - 1) % plane / ow_n, ow1 = (e - 1) % plane % ow_n;
    // Band row i is padded row oh0 + i: image row oh0 + i - ph, or z outside the image.
    const std::size_t band_rows = oh1 - oh0 + kh;
    band.resize(band_rows * row_bytes + after);
    if (after > 0) std::memset(band.data() + band_rows * row_bytes, z, after);
    // The image rows the band holds, [inside0, inside1): without column padding one copy (NHWC rows
    // are consecutive), else row by row between z columns; the others all z.
    const std::ptrdiff_t top = std::ptrdiff_t(g.pad_h) - std::ptrdiff_t(oh0); // row of ih = 0
    const std::size_t inside0 =
        std::size_t(std::clamp<std::ptrdiff_t>(top, 0, std::ptrdiff_t(band_rows)));
    const std::size_t inside1 = std::size_t(std::clamp<std::ptrdiff_t>(
        top + std::ptrdiff_t(H), std::ptrdiff_t(inside0), std::ptrdiff_t(band_rows)));
    if (inside0 > 0) std::memset(band.data(), z, inside0 * row_bytes);
    if (inside1 < band_rows)
      std::memset(band.data() + inside1 * row_bytes, z, (band_rows - inside1) * row_bytes);
    if (inside0 < inside1) { // band row i in [inside0, inside1) holds image row i - top
      const std::uint8_t* image_row =
          x + (n * H + std::size_t(std::ptrdiff_t(inside0) - top)) * W * C;
      if (pw == 0) {
        std::memcpy(band.data() + inside0 * row_bytes, image_row, (inside1 - inside0) * row_bytes);
      } else {
        for (std::size_t i = inside0; i < inside1; ++i, image_row += W * C) {
          std::uint8_t* dst = band.data() + i * row_bytes;
          std::memset(dst, z, pw * C);
          std::memcpy(dst + pw * C, image_row, W * C);
          if (right > 0) std::memset(dst + (pw + W) * C, z, right * C);
        }
      }
    }
    // The one-tile kernel's halves panel (AVX-512 VNNI) of the panel at halves_of, built by
    // panel_ready after packed_gemm_blocks decodes a tile that runs alone; reset by a pair's
    // call (its decode reuses the panel, and a pair with too many kernel rows runs rows()).
    thread_local std::vector<std::int8_t> halves;
    const panel_t* halves_of = nullptr;
    auto panel_ready = [&](int, std::size_t q0, std::size_t q1, const panel_t* panel) {
      if constexpr (requires(std::vector<std::int8_t> & h, const std::size_t* s) {
                      packed_halves_panel(arch, panel, s, 1, h);
                    }) {
        constexpr std::size_t max_segments = 16; // dot's: more kernel rows build their own
        std::size_t nq[max_segments], segments = 0;
        halves_of = nullptr;
        for (std::size_t a = q0 / kq; a * kq < q1; ++a, ++segments) {
          if (segments == max_segments) return;
          nq[segments] = std::min(q1, (a + 1) * kq) - std::max(q0, a * kq);
        }
        packed_halves_panel(arch, panel, nq, segments, halves);
        halves_of = panel;
      }
    };
    // acc(i, :) for the matrix rows of the runs: for_runs(f) calls f(x0, i, count) for each
    // run of count rows i.. (row i + t at x0 + t C). Quads [q0, q1) as segments of kernel rows, row
    // a holding quads [a kq, (a + 1) kq) at x0 + a wp C, found once for all runs.
    auto dot = [&](const auto& for_runs, std::size_t q0, std::size_t q1, int k,
                   const panel_t* panel, std::int32_t* acc, bool accumulate) {
      constexpr std::size_t max_segments = 16;
      std::size_t off[max_segments], nq[max_segments], segments = 0;
      for (std::size_t a = q0 / kq; a * kq < q1; ++a) {
        const std::size_t qa0 = std::max(q0, a * kq), qa1 = std::min(q1, (a + 1) * kq);
        const std::size_t at = a * wp * C + (qa0 - a * kq) * packed_quad;
        if constexpr (requires {
                        packed_rows_segments(arch, q0, band.data(), C, off, nq, 1, panel, acc,
                                             accumulate);
                      }) {
          if (segments < max_segments) { // one kernel call per run for the whole range below
            off[segments] = at, nq[segments++] = qa1 - qa0;
            continue;
          }
        }
        for_runs([&](const std::uint8_t* x0, std::size_t i, std::size_t count) {
          packed_rows(arch, count, x0 + at, C, qa1 - qa0, 0, k,
                      panel + (qa0 - q0) * packed_quad_codes, acc + i * packed_tile, accumulate);
        });
        accumulate = true;
      }
      if constexpr (requires(std::vector<std::int8_t> & h) {
                      packed_halves_panel(arch, panel, nq, 1, h);
                      packed_rows_halves(arch, q0, band.data(), C, off, nq, 1, panel, h.data(), acc,
                                         accumulate);
                    }) {
        // One tile (AVX-512 VNNI): two quads per broadcast from the halves panel, built by
        // panel_ready once per decode (else here, for the block's runs).
        if (segments > 0) {
          if (panel != halves_of) {
            packed_halves_panel(arch, panel, nq, segments, halves);
            halves_of = nullptr;
          }
          for_runs([&](const std::uint8_t* x0, std::size_t i, std::size_t count) {
            packed_rows_halves(arch, count, x0, C, off, nq, segments, panel, halves.data(),
                               acc + i * packed_tile, accumulate);
          });
        }
      } else if constexpr (requires {
                             packed_rows_segments(arch, q0, band.data(), C, off, nq, 1, panel, acc,
                                                  accumulate);
                           }) {
        if (segments > 0)
          for_runs([&](const std::uint8_t* x0, std::size_t i, std::size_t count) {
            packed_rows_segments(arch, count, x0, C, off, nq, segments, panel,
                                 acc + i * packed_tile, accumulate);
          });
      }
    };
    if (mode == flat_layout::output_pixels) {
      // Matrix row i = output pixel r + i: runs of one output row each (consecutive band
      // pixels), pixel (oh, ow) at band pixel (oh - oh0) wp + ow.
      auto rows = [&](std::size_t i0, std::size_t mb, std::size_t q0, std::size_t q1,
                      std::size_t /*tail: 0, K = kh kq quads*/, int k, const panel_t* panel,
                      std::int32_t* acc, bool accumulate) {
        auto for_runs = [&](const auto& f) {
          std::size_t px = r % plane + i0;
          for (std::size_t i = 0; i < mb;) {
            const std::size_t oh = px / ow_n, ow = px % ow_n;
            const std::size_t run = std::min(mb - i, ow_n - ow);
            f(band.data() + ((oh - oh0) * wp + ow) * C, i, run);
            i += run, px += run;
          }
        };
        dot(for_runs, q0, q1, k, panel, acc, accumulate);
      };
      packed_gemm_blocks(arch, e - r, rows, r - r0, z, w, out, no_tile_pairs{}, panel_ready);
      r = e;
      continue;
    }
    // Flat rows: band pixels [ow0, (oh1 - oh0) wp + ow1], the last one real, so kernel row
    // kh - 1 of the last reads at most the band's rows and the `after` bytes past them.
    const std::size_t m = (oh1 - oh0) * wp + ow1 + 1 - ow0;
    const std::uint8_t* base = band.data() + ow0 * C;
    auto rows = [&](std::size_t i0, std::size_t mb, std::size_t q0, std::size_t q1,
                    std::size_t /*tail: 0, K = kh kq quads*/, int k, const panel_t* panel,
                    std::int32_t* acc, bool accumulate) {
      dot([&](const auto& f) { f(base + i0 * C, std::size_t(0), mb); }, q0, q1, k, panel, acc,
          accumulate);
    };
    const flat_conv_out<Out> flat{out, ow0, wp, ow_n, r - r0};
    if constexpr (requires(const std::size_t* s, const panel_t* p, std::int32_t* c) {
                    packed_rows_pair(arch, m, x, C, s, s, m, m, p, m, c, c, true);
                  }) {
      // Tile pairs (packed_gemm_blocks): both tiles' kernel rows as segments of one call; a
      // range of more kernel rows than max_segments runs rows() on each tile.
      auto rows_pair = [&](std::size_t i0, std::size_t mb, std::size_t q0, std::size_t q1,
                           std::size_t tail, int k, const panel_t* panel, std::size_t panel_stride,
                           std::int32_t* acc0, std::int32_t* acc1, bool accumulate) {
        halves_of = nullptr;
        constexpr std::size_t max_segments = 16;
        std::size_t off[max_segments], nq[max_segments], segments = 0;
        for (std::size_t a = q0 / kq; a * kq < q1; ++a, ++segments) {
          if (segments == max_segments) {
            rows(i0, mb, q0, q1, tail, k, panel, acc0, accumulate);
            rows(i0, mb, q0, q1, tail, k, panel + panel_stride, acc1, accumulate);
            return;
          }
          const std::size_t qa0 = std::max(q0, a * kq);
          off[segments] = a * wp * C + (qa0 - a * kq) * packed_quad;
          nq[segments] = std::min(q1, (a + 1) * kq) - qa0;
        }
        packed_rows_pair(arch, mb, base + i0 * C, C, off, nq, segments, 0, panel, panel_stride,
                         acc0, acc1, accumulate);
      };
      packed_gemm_blocks(arch, m, rows, 0, z, w, flat, rows_pair, panel_ready);
    } else {
      packed_gemm_blocks(arch, m, rows, 0, z, w, flat);
    }
    r = e;
  }
}

} // namespace detail

/// acc(r, j) of the top of this header for output pixels r in [r0, r1) of conv g on the batch
/// x (u8 NHWC, zero point z), every channel j of w (depth packed_padded_depth(g): kernel rows
/// padded to whole quads, ref/packed_conv.hpp; g.filter_size() when kw C % 4 == 0), handed to
/// out(r - r0, j, acc), on path p, the micro-kernels on mode's rows (flat_layout; the same
/// sums either way). std::invalid_argument unless packed_conv_flat_padded_fits(g) and w has
/// that depth.
template <class Out>
void packed_conv_flat(int_isa p, const conv2d_geometry& g, const std::uint8_t* x, std::uint8_t z,
                      const packed_weights& w, std::size_t r0, std::size_t r1, const Out& out,
                      flat_layout mode = flat_layout::band_pixels) {
  if (!packed_conv_flat_padded_fits(g))
    throw std::invalid_argument("packed_conv_flat: needs stride 1, dilation 1 and one group");
  if (w.depth() != packed_padded_depth(g))
    throw std::invalid_argument("packed_conv_flat: needs kernel rows of whole quads: weights of "
                                "depth kernel_h * (kernel_w * in_channels rounded up to 4)");
  if (!int_isa_supported(p)) detail::packed_isa_unavailable(p);
  if (r0 >= r1) return;
  switch (p) {
  case int_isa::reference:
    ref::packed_conv(g, x, z, w, r0, r1, out);
    return;
#if BITGRAD_PACKED_X86
  case int_isa::sse2:
    detail::packed_conv_flat_run(isa::sse2{}, g, x, z, w, r0, r1, mode, out);
    return;
  case int_isa::avx2:
    detail::packed_conv_flat_run(isa::avx2{}, g, x, z, w, r0, r1, mode, out);
    return;
#if BITGRAD_PACKED_HAS_AVX_VNNI
  case int_isa::avx_vnni:
    detail::packed_conv_flat_run(isa::avx_vnni{}, g, x, z, w, r0, r1, mode, out);
    return;
#endif
  case int_isa::avx512_vnni:
    detail::packed_conv_flat_run(isa::avx512_vnni{}, g, x, z, w, r0, r1, mode, out);
    return;
#endif
#if BITGRAD_PACKED_ARM64
  case int_isa::neon:
    detail::packed_conv_flat_run(isa::neon{}, g, x, z, w, r0, r1, mode, out);
    return;
  case int_isa::neon_dot:
    detail::packed_conv_flat_run(isa::neon_dot{}, g, x, z, w, r0, r1, mode, out);
    return;
#endif
  default:
    detail::packed_isa_unavailable(p);
  }
}

} // namespace bitgrad
