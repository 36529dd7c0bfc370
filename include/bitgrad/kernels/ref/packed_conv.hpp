// Reference conv2d on u8 NHWC with packed weights: im2row written out by plain loops, then the
// reference GEMM. The oracle of kernels/packed/packed_conv.hpp (implicit im2row).
//
// For output pixel r = (n OH + oh) OW + ow of a batch and channel j:
//   acc(r, j) = sum_{a < kh, b < kw, c < C} (x(n, ih, iw, c) - z) w(j, (a kw + b) C + c)
//   ih = oh sh + a dh - ph,  iw = ow sw + b dw - pw
// where a tap outside the image reads the zero point z (it adds 0). Rows [r0, r1) are handed
// to the output stage as out(r - r0, j, acc), as ref::packed_gemm's rows.
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/ref/packed_gemm.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::ref {

/// Rows [r0, r1) of im2row on u8 NHWC x (image 0 of the batch), depth order (a, b, c), taps
/// outside the image set to z: row r - r0 of the result at (r - r0) * K, K = g.filter_size().
inline std::vector<std::uint8_t> im2row_u8(const conv2d_geometry& g, const std::uint8_t* x,
                                           std::uint8_t z, std::size_t r0, std::size_t r1) {
  const std::size_t K = g.filter_size(), plane = g.out_plane(), OW = g.out_w();
  const std::size_t C = g.in_channels;
  std::vector<std::uint8_t> a((r1 - r0) * K, z);
  for (std::size_t r = r0; r < r1; ++r) {
    const std::size_t n = r / plane, oh = r % plane / OW, ow = r % plane % OW;
    for (std::size_t ka = 0; ka < g.kernel_h; ++ka)
      for (std::size_t kb = 0; kb < g.kernel_w; ++kb) {
        const long ih = long(oh * g.stride_h + ka * g.dilation_h) - long(g.pad_h);
        const long iw = long(ow * g.stride_w + kb * g.dilation_w) - long(g.pad_w);
        if (ih < 0 || iw < 0 || ih >= long(g.in_h) || iw >= long(g.in_w)) continue;
        for (std::size_t c = 0; c < C; ++c)
          a[(r - r0) * K + (ka * g.kernel_w + kb) * C + c] =
              x[((n * g.in_h + std::size_t(ih)) * g.in_w + std::size_t(iw)) * C + c];
      }
  }
  return a;
}

/// acc(r, j) of the top of this header for r in [r0, r1) and every channel j of w (depth
/// g.filter_size()), handed to out(r - r0, j, acc).
template <class Out>
void packed_conv(const conv2d_geometry& g, const std::uint8_t* x, std::uint8_t z,
                 const packed_weights& w, std::size_t r0, std::size_t r1, const Out& out) {
  if (r0 >= r1) return;
  const std::vector<std::uint8_t> a = im2row_u8(g, x, z, r0, r1);
  ref::packed_gemm(r1 - r0, a.data(), g.filter_size(), z, w, out);
}

} // namespace bitgrad::ref
