// Reference direct convolution on u8 NHWC: the plain loop over taps, the oracle of
// kernels/packed/direct_conv.hpp (the packed engine's path for convs with few input channels).
//
// For output pixel r = (n, oh, ow) of a batch (r = (n OH + oh) OW + ow) and channel j:
//   acc(r, j) = sum_{a < kh, b < kw, c < C} (x(n, ih, iw, c) - z) w(j, (a kw + b) C + c)
//   ih = oh sh + a dh - ph,  iw = ow sw + b dw - pw
// where a tap outside the image is the zero point z (it adds 0); the weights' depth is in the
// engine's order (a, b, c) (packed_engine::depth_order). Rows [r0, r1) are handed to the
// output stage as out(r - r0, j, acc), as packed_gemm's rows of an im2row block.
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>

#include <cstddef>
#include <cstdint>

namespace bitgrad {

namespace ref {

/// acc(r, j) of the top of this header for r in [r0, r1), j < n_out, in int64 then narrowed
/// (exact: |acc| <= 255 * 128 * K), handed to out(r - r0, j, acc) in that order. x is image 0 of
/// the batch (u8 NHWC), codes[j * K + p] the weights (K = g.filter_size(), depth order (a, b, c)).
template <class Out>
void direct_conv(const conv2d_geometry& g, const std::uint8_t* x, std::uint8_t z,
                 const std::int8_t* codes, std::size_t n_out, std::size_t r0, std::size_t r1,
                 const Out& out) {
  const std::size_t K = g.filter_size(), plane = g.out_plane(), OW = g.out_w();
  for (std::size_t r = r0; r < r1; ++r) {
    const std::size_t n = r / plane, oh = r % plane / OW, ow = r % plane % OW;
    for (std::size_t j = 0; j < n_out; ++j) {
      std::int64_t acc = 0;
      for (std::size_t a = 0; a < g.kernel_h; ++a)
        for (std::size_t b = 0; b < g.kernel_w; ++b) {
          const long ih = long(oh * g.stride_h + a * g.dilation_h) - long(g.pad_h);
          const long iw = long(ow * g.stride_w + b * g.dilation_w) - long(g.pad_w);
          if (ih < 0 || iw < 0 || ih >= long(g.in_h) || iw >= long(g.in_w)) continue;
          for (std::size_t c = 0; c < g.in_channels; ++c) {
            const std::uint8_t v =
                x[((n * g.in_h + std::size_t(ih)) * g.in_w + std::size_t(iw)) * g.in_channels + c];
            acc += (std::int64_t(v) - std::int64_t(z)) *
                   std::int64_t(codes[j * K + (a * g.kernel_w + b) * g.in_channels + c]);
          }
        }
      out(r - r0, j, static_cast<std::int32_t>(acc));
    }
  }
}

} // namespace ref

} // namespace bitgrad
