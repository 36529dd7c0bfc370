// im2col / col2im: the lowering that turns a convolution into a GEMM.
//
// For one image and one group of `channels` input planes x (channels x in_h x in_w, contiguous)
// the column matrix is
//   col : (channels * kernel_h * kernel_w) x (out_h * out_w), row-major,
//   col[(c*kernel_h + i)*kernel_w + j][oh*out_w + ow] = x[c][ih][iw]   (0 outside the image)
//   with ih = oh*stride_h - pad_h + i*dilation_h, iw = ow*stride_w - pad_w + j*dilation_w,
// so that  y_group (Cout/G x OH*OW) = W_group (Cout/G x K) * col (K x OH*OW).
// col2im_add is its adjoint: every col entry is added back onto the x element it was copied from.
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>

#include <algorithm>
#include <cstddef>

namespace bitgrad {

namespace detail {
/// The outputs o in [lo, hi) of `count` whose input index o*stride + base lies in [0, limit).
struct valid_range {
  std::size_t lo, hi;
};
inline valid_range conv_valid_range(std::size_t count, std::size_t stride, std::ptrdiff_t base,
                                    std::size_t limit) {
  const auto s = std::ptrdiff_t(stride);
  const std::ptrdiff_t lo = base >= 0 ? 0 : (-base + s - 1) / s;
  const std::ptrdiff_t room = std::ptrdiff_t(limit) - base; // need o*s < room
  const std::ptrdiff_t hi = room <= 0 ? 0 : (room + s - 1) / s;
  const auto c = std::ptrdiff_t(count);
  const std::ptrdiff_t l = std::min(lo, c), h = std::clamp(hi, l, c);
  return {std::size_t(l), std::size_t(h)};
}
} // namespace detail

/// Fills col (see the header comment) from `channels` planes of x.
template <class T>
void im2col(const conv2d_geometry& g, std::size_t channels, const T* x, T* col) {
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w(), ohw = oh_n * ow_n;
  for (std::size_t c = 0; c < channels; ++c) {
    const T* xc = x + c * g.in_plane();
    for (std::size_t i = 0; i < g.kernel_h; ++i) {
      const auto rows = detail::conv_valid_range(
          oh_n, g.stride_h, std::ptrdiff_t(i * g.dilation_h) - std::ptrdiff_t(g.pad_h), g.in_h);
      for (std::size_t j = 0; j < g.kernel_w; ++j) {
        const std::ptrdiff_t base_w = std::ptrdiff_t(j * g.dilation_w) - std::ptrdiff_t(g.pad_w);
        const auto cols = detail::conv_valid_range(ow_n, g.stride_w, base_w, g.in_w);
        T* dst = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ohw;
        std::fill(dst, dst + rows.lo * ow_n, T(0));
        for (std::size_t oh = rows.lo; oh < rows.hi; ++oh) {
          const std::size_t ih = oh * g.stride_h + i * g.dilation_h - g.pad_h;
          const T* src = xc + ih * g.in_w;
          T* d = dst + oh * ow_n;
          std::fill(d, d + cols.lo, T(0));
          if (cols.lo < cols.hi) {
            const std::size_t iw0 = std::size_t(std::ptrdiff_t(cols.lo * g.stride_w) + base_w);
            if (g.stride_w == 1) {
              std::copy(src + iw0, src + iw0 + (cols.hi - cols.lo), d + cols.lo);
            } else {
              for (std::size_t ow = cols.lo, iw = iw0; ow < cols.hi; ++ow, iw += g.stride_w)
                d[ow] = src[iw];
            }
          }
          std::fill(d + cols.hi, d + ow_n, T(0));
        }
        std::fill(dst + rows.hi * ow_n, dst + ohw, T(0));
      }
    }
  }
}

/// x += col2im(col): the adjoint of im2col (x is not cleared).
template <class T>
void col2im_add(const conv2d_geometry& g, std::size_t channels, const T* col, T* x) {
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w(), ohw = oh_n * ow_n;
  for (std::size_t c = 0; c < channels; ++c) {
    T* xc = x + c * g.in_plane();
    for (std::size_t i = 0; i < g.kernel_h; ++i) {
      const auto rows = detail::conv_valid_range(
          oh_n, g.stride_h, std::ptrdiff_t(i * g.dilation_h) - std::ptrdiff_t(g.pad_h), g.in_h);
      for (std::size_t j = 0; j < g.kernel_w; ++j) {
        const std::ptrdiff_t base_w = std::ptrdiff_t(j * g.dilation_w) - std::ptrdiff_t(g.pad_w);
        const auto cols = detail::conv_valid_range(ow_n, g.stride_w, base_w, g.in_w);
        const T* src_row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ohw;
        for (std::size_t oh = rows.lo; oh < rows.hi; ++oh) {
          const std::size_t ih = oh * g.stride_h + i * g.dilation_h - g.pad_h;
          T* d = xc + ih * g.in_w;
          const T* s = src_row + oh * ow_n;
          if (cols.lo >= cols.hi) continue;
          const std::size_t iw0 = std::size_t(std::ptrdiff_t(cols.lo * g.stride_w) + base_w);
          for (std::size_t ow = cols.lo, iw = iw0; ow < cols.hi; ++ow, iw += g.stride_w)
            d[iw] += s[ow];
        }
      }
    }
  }
}

} // namespace bitgrad
