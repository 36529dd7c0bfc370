// Reference 2-D convolution: the definition written as loops, the oracle for bitgrad::conv2d_*.
// Layout and formula: see kernels/conv2d_geometry.hpp. `scratch` is unused here (kept so the
// signatures match the optimised kernels).
#pragma once

#include <bitgrad/kernels/conv2d_geometry.hpp>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace bitgrad::ref {

namespace detail {
/// Calls f(n, o, oh, ow, c_in, i, j, ih, iw) for every (output, tap) pair that reads a real input.
template <class F>
void conv2d_for_each_tap(const conv2d_geometry& g, F&& f) {
  const std::size_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w();
  for (std::size_t n = 0; n < g.batch; ++n)
    for (std::size_t o = 0; o < g.out_channels; ++o) {
      const std::size_t grp = o / cout_g;
      for (std::size_t oh = 0; oh < oh_n; ++oh)
        for (std::size_t ow = 0; ow < ow_n; ++ow)
          for (std::size_t c = 0; c < cin_g; ++c)
            for (std::size_t i = 0; i < g.kernel_h; ++i)
              for (std::size_t j = 0; j < g.kernel_w; ++j) {
                const std::ptrdiff_t ih =
                    std::ptrdiff_t(oh * g.stride_h + i * g.dilation_h) - std::ptrdiff_t(g.pad_h);
                const std::ptrdiff_t iw =
                    std::ptrdiff_t(ow * g.stride_w + j * g.dilation_w) - std::ptrdiff_t(g.pad_w);
                if (ih < 0 || iw < 0 || ih >= std::ptrdiff_t(g.in_h) ||
                    iw >= std::ptrdiff_t(g.in_w))
                  continue;
                f(n, o, oh, ow, grp * cin_g + c, c, i, j, std::size_t(ih), std::size_t(iw));
              }
    }
}
} // namespace detail

/// y = conv(x, w) + bias (bias nullable). y overwritten.
template <class T>
void conv2d_fprop(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                  std::vector<T>& /*scratch*/) {
  g.validate();
  const std::size_t ohw = g.out_plane(), cin_g = g.in_channels_per_group();
  for (std::size_t n = 0; n < g.batch; ++n)
    for (std::size_t o = 0; o < g.out_channels; ++o)
      std::fill_n(y + (n * g.out_channels + o) * ohw, ohw, bias ? bias[o] : T(0));
  detail::conv2d_for_each_tap(g, [&](std::size_t n, std::size_t o, std::size_t oh, std::size_t ow,
                                     std::size_t ci, std::size_t c, std::size_t i, std::size_t j,
                                     std::size_t ih, std::size_t iw) {
    y[((n * g.out_channels + o) * g.out_h() + oh) * g.out_w() + ow] +=
        w[((o * cin_g + c) * g.kernel_h + i) * g.kernel_w + j] *
        x[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw];
  });
}

/// y = max(0, conv(x, w) + bias); NaN stays NaN.
template <class T>
void conv2d_fprop_relu(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                       std::vector<T>& scratch) {
  ref::conv2d_fprop(g, x, w, bias, y, scratch);
  for (std::size_t k = 0, e = g.output_count(); k < e; ++k) y[k] = y[k] <= T(0) ? T(0) : y[k];
}

/// dx = d(<dy, conv(x, w)>)/dx: the transposed convolution of dy. dx overwritten.
template <class T>
void conv2d_dgrad(const conv2d_geometry& g, const T* dy, const T* w, T* dx,
                  std::vector<T>& /*scratch*/) {
  g.validate();
  std::fill_n(dx, g.input_count(), T(0));
  const std::size_t cin_g = g.in_channels_per_group();
  detail::conv2d_for_each_tap(g, [&](std::size_t n, std::size_t o, std::size_t oh, std::size_t ow,
                                     std::size_t ci, std::size_t c, std::size_t i, std::size_t j,
                                     std::size_t ih, std::size_t iw) {
    dx[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw] +=
        w[((o * cin_g + c) * g.kernel_h + i) * g.kernel_w + j] *
        dy[((n * g.out_channels + o) * g.out_h() + oh) * g.out_w() + ow];
  });
}

/// dw += d(<dy, conv(x, w)>)/dw, dbias += sum of dy over batch and plane (dbias nullable).
template <class T>
void conv2d_wgrad(const conv2d_geometry& g, const T* x, const T* dy, T* dw, T* dbias,
                  std::vector<T>& /*scratch*/) {
  g.validate();
  const std::size_t cin_g = g.in_channels_per_group();
  detail::conv2d_for_each_tap(g, [&](std::size_t n, std::size_t o, std::size_t oh, std::size_t ow,
                                     std::size_t ci, std::size_t c, std::size_t i, std::size_t j,
                                     std::size_t ih, std::size_t iw) {
    dw[((o * cin_g + c) * g.kernel_h + i) * g.kernel_w + j] +=
        x[((n * g.in_channels + ci) * g.in_h + ih) * g.in_w + iw] *
        dy[((n * g.out_channels + o) * g.out_h() + oh) * g.out_w() + ow];
  });
  if (dbias) {
    const std::size_t ohw = g.out_plane();
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t o = 0; o < g.out_channels; ++o)
        for (std::size_t k = 0; k < ohw; ++k) dbias[o] += dy[(n * g.out_channels + o) * ohw + k];
  }
}

} // namespace bitgrad::ref
