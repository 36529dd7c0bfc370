// Reference pooling kernels: the definitions as loops, oracles for bitgrad::*_pool2d_*.
// Layout: see kernels/pool2d_geometry.hpp.
//   max pool:  y = max over the window's real inputs (padding never wins; NaN is larger than
//              any number); argmax = ih*in_w + iw of the first maximum in row-major window
//              order; bprop scatters dy to argmax.
//   avg pool:  y = (sum over the window's real inputs) / (kernel_h*kernel_w): padding counts as
//              zeros in the sum and in the divisor (PyTorch's count_include_pad = true).
//   global average pool: y[n][c] = mean over the plane of x[n][c].
#pragma once

#include <bitgrad/kernels/pool2d_geometry.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace bitgrad::ref {

template <class T>
void max_pool2d_fprop(const pool2d_geometry& g, const T* x, T* y, std::uint32_t* argmax) {
  g.validate();
  const std::size_t planes = g.batch * g.channels, oh_n = g.out_h(), ow_n = g.out_w();
  for (std::size_t p = 0; p < planes; ++p) {
    const T* xp = x + p * g.in_plane();
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        bool found = false;
        T best = T(0);
        std::uint32_t at = 0;
        for (std::size_t i = 0; i < g.kernel_h; ++i)
          for (std::size_t j = 0; j < g.kernel_w; ++j) {
            const std::ptrdiff_t ih = std::ptrdiff_t(oh * g.stride_h + i) - std::ptrdiff_t(g.pad_h);
            const std::ptrdiff_t iw = std::ptrdiff_t(ow * g.stride_w + j) - std::ptrdiff_t(g.pad_w);
            if (ih < 0 || iw < 0 || ih >= std::ptrdiff_t(g.in_h) || iw >= std::ptrdiff_t(g.in_w))
              continue;
            const std::size_t idx = std::size_t(ih) * g.in_w + std::size_t(iw);
            const bool beats = std::isnan(xp[idx]) ? !std::isnan(best) : xp[idx] > best;
            if (!found || beats) {
              best = xp[idx];
              at = std::uint32_t(idx);
              found = true;
            }
          }
        const std::size_t out = p * oh_n * ow_n + oh * ow_n + ow;
        y[out] = best;
        if (argmax) argmax[out] = at;
      }
  }
}

template <class T>
void max_pool2d_bprop(const pool2d_geometry& g, const T* dy, const std::uint32_t* argmax, T* dx) {
  g.validate();
  std::fill_n(dx, g.input_count(), T(0));
  const std::size_t planes = g.batch * g.channels, ohw = g.out_plane();
  for (std::size_t p = 0; p < planes; ++p)
    for (std::size_t k = 0; k < ohw; ++k)
      dx[p * g.in_plane() + argmax[p * ohw + k]] += dy[p * ohw + k];
}

template <class T>
void avg_pool2d_fprop(const pool2d_geometry& g, const T* x, T* y) {
  g.validate();
  const std::size_t planes = g.batch * g.channels, oh_n = g.out_h(), ow_n = g.out_w();
  const T inv = T(1) / T(g.kernel_h * g.kernel_w);
  for (std::size_t p = 0; p < planes; ++p)
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        T sum = 0;
        for (std::size_t i = 0; i < g.kernel_h; ++i)
          for (std::size_t j = 0; j < g.kernel_w; ++j) {
            const std::ptrdiff_t ih = std::ptrdiff_t(oh * g.stride_h + i) - std::ptrdiff_t(g.pad_h);
            const std::ptrdiff_t iw = std::ptrdiff_t(ow * g.stride_w + j) - std::ptrdiff_t(g.pad_w);
            if (ih < 0 || iw < 0 || ih >= std::ptrdiff_t(g.in_h) || iw >= std::ptrdiff_t(g.in_w))
              continue;
            sum += x[p * g.in_plane() + std::size_t(ih) * g.in_w + std::size_t(iw)];
          }
        y[p * oh_n * ow_n + oh * ow_n + ow] = sum * inv;
      }
}

template <class T>
void avg_pool2d_bprop(const pool2d_geometry& g, const T* dy, T* dx) {
  g.validate();
  std::fill_n(dx, g.input_count(), T(0));
  const std::size_t planes = g.batch * g.channels, oh_n = g.out_h(), ow_n = g.out_w();
  const T inv = T(1) / T(g.kernel_h * g.kernel_w);
  for (std::size_t p = 0; p < planes; ++p)
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        const T d = dy[p * oh_n * ow_n + oh * ow_n + ow] * inv;
        for (std::size_t i = 0; i < g.kernel_h; ++i)
          for (std::size_t j = 0; j < g.kernel_w; ++j) {
            const std::ptrdiff_t ih = std::ptrdiff_t(oh * g.stride_h + i) - std::ptrdiff_t(g.pad_h);
            const std::ptrdiff_t iw = std::ptrdiff_t(ow * g.stride_w + j) - std::ptrdiff_t(g.pad_w);
            if (ih < 0 || iw < 0 || ih >= std::ptrdiff_t(g.in_h) || iw >= std::ptrdiff_t(g.in_w))
              continue;
            dx[p * g.in_plane() + std::size_t(ih) * g.in_w + std::size_t(iw)] += d;
          }
      }
}

template <class T>
void global_avg_pool_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                           T* y) {
  for (std::size_t p = 0; p < batch * channels; ++p) {
    T sum = 0;
    for (std::size_t k = 0; k < plane; ++k) sum += x[p * plane + k];
    y[p] = sum / T(plane);
  }
}

template <class T>
void global_avg_pool_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           T* dx) {
  for (std::size_t p = 0; p < batch * channels; ++p)
    for (std::size_t k = 0; k < plane; ++k) dx[p * plane + k] = dy[p] / T(plane);
}

} // namespace bitgrad::ref
