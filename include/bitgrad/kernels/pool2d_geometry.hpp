// The shape of a 2-D pooling window, shared by the optimised and the reference pool kernels.
//
// Layout: x is NCHW (batch, channels, in_h, in_w), y is NCHW (batch, channels, out_h, out_w),
// contiguous. Output (oh, ow) covers input rows  oh*stride_h - pad_h + [0, kernel_h) and columns
// ow*stride_w - pad_w + [0, kernel_w);  out = (in + 2*pad - kernel) / stride + 1 (floor).
// Padding may be at most half the kernel, so every window holds at least one real input.
#pragma once

#include <bitgrad/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

namespace bitgrad {

struct pool2d_geometry {
  std::size_t batch = 1, channels = 1, in_h = 1, in_w = 1, kernel_h = 2, kernel_w = 2, stride_h = 2,
              stride_w = 2, pad_h = 0, pad_w = 0;

  std::size_t out_h() const { return (in_h + 2 * pad_h - kernel_h) / stride_h + 1; }
  std::size_t out_w() const { return (in_w + 2 * pad_w - kernel_w) / stride_w + 1; }
  std::size_t in_plane() const { return in_h * in_w; }
  std::size_t out_plane() const { return out_h() * out_w(); }
  std::size_t input_count() const { return batch * channels * in_plane(); }
  std::size_t output_count() const { return batch * channels * out_plane(); }

  /// Throws config_error naming the first problem found.
  void validate() const {
    auto fail = [](const std::string& what) { throw config_error("pool2d geometry: " + what); };
    auto positive = [&](std::size_t v, const char* name) {
      if (v == 0) fail(std::string(name) + " must be >= 1, got 0");
    };
    positive(batch, "batch");
    positive(channels, "channels");
    positive(in_h, "in_h");
    positive(in_w, "in_w");
    positive(kernel_h, "kernel_h");
    positive(kernel_w, "kernel_w");
    positive(stride_h, "stride_h");
    positive(stride_w, "stride_w");
    if (2 * pad_h > kernel_h || 2 * pad_w > kernel_w)
      fail("padding (" + std::to_string(pad_h) + ", " + std::to_string(pad_w) +
           ") must be at most half the kernel (" + std::to_string(kernel_h) + ", " +
           std::to_string(kernel_w) + ")");
    if (kernel_h > in_h + 2 * pad_h)
      fail("kernel height " + std::to_string(kernel_h) +
           " is larger than the padded input height " + std::to_string(in_h + 2 * pad_h));
    if (kernel_w > in_w + 2 * pad_w)
      fail("kernel width " + std::to_string(kernel_w) + " is larger than the padded input width " +
           std::to_string(in_w + 2 * pad_w));
    if (in_plane() > std::size_t(UINT32_MAX))
      fail("input plane of " + std::to_string(in_plane()) +
           " elements does not fit the 32-bit argmax index");
  }
};

} // namespace bitgrad
