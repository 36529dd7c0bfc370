// Reference conv2d on u8 NHWC with packed weights: im2row written out by plain loops, then the
// reference GEMM. The oracle of kernels/packed/packed_conv.hpp (implicit im2row).
//
// For output pixel r = (n OH + oh) OW + ow of a batch and channel j:
//   acc(r, j) = sum_{a < kh, b < kw, c < C} (x(n, ih, iw, c) - z) w(j, (a kw + b) C + c)
//   ih = oh sh + a dh - ph,  iw = ow sw + b dw - pw
// where a tap outside the image reads the zero point z (it adds 0). Rows [r0, r1) are handed
// to the output stage as out(r - r0, j, acc), as ref::packed_gemm's rows.
//
// Padded kernel rows: weights of depth kh R, R = packed_kernel_row(g) = kw C rounded up to a
// multiple of 4, hold kernel row a at [a R, a R + kw C) and zero codes at [a R + kw C, (a + 1) R)
// (flat_conv.hpp reads every kernel row as whole quads). Their im2row rows are laid out the same
// way, z in the padding; the sums are the same as on the unpadded weights (zero codes add 0).
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/ref/packed_gemm.hpp>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace bitgrad {

/// Bytes of one kernel row in whole quads: kw C rounded up to a multiple of 4.
inline std::size_t packed_kernel_row(const conv2d_geometry& g) {
  return (g.kernel_w * g.in_channels + 3) / 4 * 4;
}

/// The depth of conv g's weights with padded kernel rows: kh packed_kernel_row(g) (equal to
/// g.filter_size() when kw C is a multiple of 4).
inline std::size_t packed_padded_depth(const conv2d_geometry& g) {
  return g.kernel_h * packed_kernel_row(g);
}

/// codes (channels x g.filter_size(), depth order (a, b, c)) with each kernel row followed by
/// zero codes up to packed_kernel_row(g): channels x packed_padded_depth(g).
inline std::vector<std::int32_t> pad_kernel_rows(const conv2d_geometry& g, std::size_t channels,
                                                 const std::int32_t* codes) {
  const std::size_t row = g.kernel_w * g.in_channels, padded = packed_kernel_row(g);
  const std::size_t K = g.filter_size(), kh = g.kernel_h;
  std::vector<std::int32_t> out(channels * kh * padded, 0);
  for (std::size_t j = 0; j < channels; ++j)
    for (std::size_t a = 0; a < kh; ++a)
      for (std::size_t p = 0; p < row; ++p)
        out[(j * kh + a) * padded + p] = codes[j * K + a * row + p];
  return out;
}

} // namespace bitgrad

namespace bitgrad::ref {

/// Rows [r0, r1) of im2row on u8 NHWC x (image 0 of the batch), depth order (a, b, c), taps
/// outside the image set to z: row r - r0 of the result at (r - r0) * K, K = g.filter_size();
/// with padded_rows, kernel row a at a packed_kernel_row(g), z in its padding (the top of this
/// header), K = packed_padded_depth(g).
inline std::vector<std::uint8_t> im2row_u8(const conv2d_geometry& g, const std::uint8_t* x,
                                           std::uint8_t z, std::size_t r0, std::size_t r1,
                                           bool padded_rows = false) {
  const std::size_t K = padded_rows ? packed_padded_depth(g) : g.filter_size();
  const std::size_t pitch = padded_rows ? packed_kernel_row(g) : g.kernel_w * g.in_channels;
  const std::size_t plane = g.out_plane(), OW = g.out_w();
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
          a[(r - r0) * K + ka * pitch + kb * C + c] =
              x[((n * g.in_h + std::size_t(ih)) * g.in_w + std::size_t(iw)) * C + c];
      }
  }
  return a;
}

/// acc(r, j) of the top of this header for r in [r0, r1) and every channel j of w (depth
/// g.filter_size(), or packed_padded_depth(g): padded kernel rows), handed to
/// out(r - r0, j, acc). std::invalid_argument for another depth.
template <class Out>
void packed_conv(const conv2d_geometry& g, const std::uint8_t* x, std::uint8_t z,
                 const packed_weights& w, std::size_t r0, std::size_t r1, const Out& out) {
  const bool padded = w.depth() != g.filter_size();
  if (padded && w.depth() != packed_padded_depth(g))
    throw std::invalid_argument("ref::packed_conv: the weights' depth is neither the filter "
                                "size nor the padded kernel rows' depth");
  if (r0 >= r1) return;
  const std::vector<std::uint8_t> a = im2row_u8(g, x, z, r0, r1, padded);
  ref::packed_gemm(r1 - r0, a.data(), w.depth(), z, w, out);
}

} // namespace bitgrad::ref
