// The shape of a 2-D convolution, shared by the optimised and the reference kernels.
//
// Terminology and layout (all tensors contiguous, row-major):
//   x  : activations NCHW   (batch, in_channels,  in_h,  in_w)
//   w  : weights     OIHW   (out_channels, in_channels / groups, kernel_h, kernel_w)
//   y  : outputs     NCHW   (batch, out_channels, out_h, out_w)
//   group g (0 <= g < groups) connects input channels  [g*Cin/G,  (g+1)*Cin/G)
//                                  to output channels [g*Cout/G, (g+1)*Cout/G).
//   Depthwise is groups == in_channels.
//
//   y[n][o][oh][ow] = bias[o] + sum_{c, i, j} w[o][c][i][j] * x[n][g*Cin/G + c][ih][iw]
//     with ih = oh*stride_h - pad_h + i*dilation_h, iw = ow*stride_w - pad_w + j*dilation_w,
//     x outside the image read as 0 (zero padding).
//   out = (in + 2*pad - dilation*(kernel-1) - 1) / stride + 1   (floor division)
#pragma once

#include <bitgrad/core/error.hpp>

#include <cstddef>
#include <string>

namespace bitgrad {

struct conv2d_geometry {
  std::size_t batch = 1, in_channels = 1, in_h = 1, in_w = 1, out_channels = 1;
  std::size_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  std::size_t dilation_h = 1, dilation_w = 1, groups = 1;

  /// Kernel extent once dilated: dilation*(kernel-1) + 1.
  std::size_t extent_h() const { return dilation_h * (kernel_h - 1) + 1; }
  std::size_t extent_w() const { return dilation_w * (kernel_w - 1) + 1; }
  std::size_t out_h() const { return (in_h + 2 * pad_h - extent_h()) / stride_h + 1; }
  std::size_t out_w() const { return (in_w + 2 * pad_w - extent_w()) / stride_w + 1; }
  std::size_t in_plane() const { return in_h * in_w; }
  std::size_t out_plane() const { return out_h() * out_w(); }
  std::size_t in_channels_per_group() const { return in_channels / groups; }
  std::size_t out_channels_per_group() const { return out_channels / groups; }
  /// Length of one output channel's filter: in_channels/groups * kernel_h * kernel_w
  /// (the K of the im2col GEMM).
  std::size_t filter_size() const { return in_channels_per_group() * kernel_h * kernel_w; }
  std::size_t weight_count() const { return out_channels * filter_size(); }
  std::size_t input_count() const { return batch * in_channels * in_plane(); }
  std::size_t output_count() const { return batch * out_channels * out_plane(); }
  /// Multiply-adds of one forward pass (all images).
  double macs() const {
    return double(batch) * double(out_channels) * double(out_plane()) * double(filter_size());
  }

  /// Throws config_error naming the first problem found.
  void validate() const {
    auto fail = [](const std::string& what) { throw config_error("conv2d geometry: " + what); };
    auto positive = [&](std::size_t v, const char* name) {
      if (v == 0) fail(std::string(name) + " must be >= 1, got 0");
    };
    positive(batch, "batch");
    positive(in_channels, "in_channels");
    positive(out_channels, "out_channels");
    positive(in_h, "in_h");
    positive(in_w, "in_w");
    positive(kernel_h, "kernel_h");
    positive(kernel_w, "kernel_w");
    positive(stride_h, "stride_h");
    positive(stride_w, "stride_w");
    positive(dilation_h, "dilation_h");
    positive(dilation_w, "dilation_w");
    positive(groups, "groups");
    if (in_channels % groups != 0)
      fail("in_channels (" + std::to_string(in_channels) + ") is not divisible by groups (" +
           std::to_string(groups) + ")");
    if (out_channels % groups != 0)
      fail("out_channels (" + std::to_string(out_channels) + ") is not divisible by groups (" +
           std::to_string(groups) + ")");
    if (extent_h() > in_h + 2 * pad_h)
      fail("dilated kernel height " + std::to_string(extent_h()) +
           " is larger than the padded input height " + std::to_string(in_h + 2 * pad_h));
    if (extent_w() > in_w + 2 * pad_w)
      fail("dilated kernel width " + std::to_string(extent_w()) +
           " is larger than the padded input width " + std::to_string(in_w + 2 * pad_w));
  }
};

} // namespace bitgrad
