// 2-D convolution kernels: fprop, fprop fused with ReLU, dgrad, wgrad.
//
// Layout and formula: see kernels/conv2d_geometry.hpp (x, y NCHW; w OIHW; groups).
// Reference twins with the same signatures: kernels/ref/conv2d.hpp.
//
// Two algorithms, per image n and group g (K = Cin/G * kh * kw, P = out_h * out_w):
//  * im2col + gemm (kernels/im2col.hpp):
//      fprop : y_g (Cout/G x P)  = W_g (Cout/G x K) * col (K x P),  bias/ReLU fused as the
//              gemm epilogue (bias_rows / bias_rows_relu: rows are output channels)
//      dgrad : col (K x P)       = W_g^T * dy_g,  then dx_g = col2im(col)
//      wgrad : dW_g (Cout/G x K) += dy_g * col^T  (gemm with beta = 1)
//    A 1x1, stride-1, unpadded convolution skips the lowering: col is x_g itself and dgrad
//    writes W_g^T * dy_g straight into dx_g.
//  * direct (stride 1 only): the input group is copied into a zero-padded buffer xp
//    (Cin/G x Hp x Wp, Hp = in_h + 2 pad_h, Wp = in_w + 2 pad_w). Seen as flat rows of pitch Wp,
//    every tap (c, i, j) is one long contiguous axpy
//      yw[q] += w[o][c][i][j] * xp_c[q + i*dilation_h*Wp + j*dilation_w],  q < (OH-1)*Wp + OW,
//    where yw is the output with row pitch Wp (columns ow >= OW are junk and dropped).
//    dgrad runs the same axpys the other way round (with a dy copy whose junk columns are 0),
//    wgrad takes the dot products. No K x P matrix, so it wins when K is small (first layers,
//    depthwise); conv2d_algo::automatic picks it there (see conv2d_choose_algo, measured with
//    benchmarks/bench_conv2d.cpp).
//
// Threads: images are split across OpenMP threads (kernels/parallel.hpp); the gemm inside runs
// on the calling thread. wgrad gives every thread its own dW partial, summed in thread order
// at the end (deterministic for a given thread count).
//
// `scratch` belongs to the caller; it is grown when too small and otherwise reused as is.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/epilogue.hpp>
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/im2col.hpp>
#include <bitgrad/kernels/parallel.hpp>
#include <bitgrad/kernels/vec.hpp>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace bitgrad {

/// Which lowering a convolution uses. `direct` needs stride 1 (config_error otherwise).
enum class conv2d_algo { automatic, im2col, direct };

/// The algorithm conv2d_algo::automatic runs for g.
inline conv2d_algo conv2d_choose_algo(const conv2d_geometry& g) {
  const bool stride1 = g.stride_h == 1 && g.stride_w == 1;
  const bool pointwise =
      g.kernel_h == 1 && g.kernel_w == 1 && stride1 && g.pad_h == 0 && g.pad_w == 0;
  if (!stride1 || pointwise) return conv2d_algo::im2col;
  // Direct when the gemm would be thin in both K and M: LeNet conv1 (K 25, M 6) and depthwise
  // 3x3 (K 9, M 1) ran faster direct in bench_conv2d; LeNet conv2 (K 150) and VGG conv1
  // (K 9 but M 32) ran faster through im2col + gemm.
  if (g.filter_size() <= 32 && g.out_channels_per_group() <= 8) return conv2d_algo::direct;
  return conv2d_algo::im2col;
}

namespace detail {

/// Epilogue: C = max(0, value) (fprop_relu without bias; NaN kept, as epilogue::detail's
/// relu_scalar / relu_lanes, which clamp with select: GCC 12 warns (-Wmaybe-uninitialized)
/// inside _mm512_max_ps).
struct relu_only {
  template <class T>
  T operator()(T value, std::size_t, std::size_t) const {
    return epilogue::detail::relu_scalar(value);
  }
  template <class B>
  B apply(B value, std::size_t, std::size_t) const {
    return epilogue::detail::relu_lanes(value);
  }
};

/// Epilogue: C = max(0, value + bias[row]) (NaN kept). The same as epilogue::bias_rows_relu.
template <class T>
struct bias_rows_relu_select {
  const T* bias;
  T operator()(T value, std::size_t row, std::size_t) const {
    return epilogue::detail::relu_scalar(value + bias[row]);
  }
  template <class B>
  B apply(B value, std::size_t row, std::size_t) const {
    return epilogue::detail::relu_lanes(value + B(bias[row]));
  }
};

inline bool conv2d_is_pointwise(const conv2d_geometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
         g.pad_w == 0;
}

inline conv2d_algo conv2d_resolve(conv2d_algo algo, const conv2d_geometry& g) {
  g.validate();
  if (algo == conv2d_algo::automatic) return conv2d_choose_algo(g);
  if (algo == conv2d_algo::direct && (g.stride_h != 1 || g.stride_w != 1))
    throw config_error("conv2d: the direct algorithm needs stride 1, got stride (" +
                       std::to_string(g.stride_h) + ", " + std::to_string(g.stride_w) + ")");
  return algo;
}

/// Scratch elements one thread needs (without wgrad's dW partial).
inline std::size_t conv2d_scratch_per_thread(conv2d_algo algo, const conv2d_geometry& g) {
  if (algo == conv2d_algo::direct) {
    const std::size_t wp = g.in_w + 2 * g.pad_w;
    return g.in_channels_per_group() * (g.in_h + 2 * g.pad_h) * wp + g.out_h() * wp;
  }
  return conv2d_is_pointwise(g) ? 0 : g.filter_size() * g.out_plane();
}

template <class T>
T* conv2d_grow(std::vector<T>& scratch, std::size_t need) {
  if (scratch.size() < need) scratch.resize(need);
  return scratch.data();
}

// ---- direct (stride 1) --------------------------------------------------------------------

/// Copies `channels` planes of x into the zero-padded buffer xp (channels x Hp x Wp).
template <class T>
void conv2d_pad_copy(const conv2d_geometry& g, std::size_t channels, const T* x, T* xp) {
  const std::size_t hp = g.in_h + 2 * g.pad_h, wp = g.in_w + 2 * g.pad_w;
  std::fill_n(xp, channels * hp * wp, T(0));
  for (std::size_t c = 0; c < channels; ++c)
    for (std::size_t h = 0; h < g.in_h; ++h)
      std::copy_n(x + (c * g.in_h + h) * g.in_w, g.in_w,
                  xp + (c * hp + h + g.pad_h) * wp + g.pad_w);
}

template <class T>
void conv2d_direct_fprop_group(const conv2d_geometry& g, const T* x, const T* w, const T* bias,
                               T* y, bool relu, T* buf) {
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  const std::size_t hp = g.in_h + 2 * g.pad_h, wp = g.in_w + 2 * g.pad_w;
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w(), span = (oh_n - 1) * wp + ow_n;
  T* xp = buf;
  T* yw = buf + cin * hp * wp;
  conv2d_pad_copy(g, cin, x, xp);
  for (std::size_t o = 0; o < cout; ++o) {
    std::fill_n(yw, span, T(0));
    const T* wo = w + o * g.filter_size();
    for (std::size_t c = 0; c < cin; ++c)
      for (std::size_t i = 0; i < g.kernel_h; ++i)
        for (std::size_t j = 0; j < g.kernel_w; ++j)
          axpy(span, wo[(c * g.kernel_h + i) * g.kernel_w + j],
               xp + c * hp * wp + i * g.dilation_h * wp + j * g.dilation_w, yw);
    const T b = bias ? bias[o] : T(0);
    T* yo = y + o * oh_n * ow_n;
    for (std::size_t oh = 0; oh < oh_n; ++oh)
      for (std::size_t ow = 0; ow < ow_n; ++ow) {
        const T v = yw[oh * wp + ow] + b;
        yo[oh * ow_n + ow] = relu ? epilogue::detail::relu_scalar(v) : v;
      }
  }
}

/// dyw (OH x Wp): dy's plane with row pitch Wp and zero junk columns.
template <class T>
void conv2d_widen(const conv2d_geometry& g, const T* dy, T* dyw) {
  const std::size_t wp = g.in_w + 2 * g.pad_w, oh_n = g.out_h(), ow_n = g.out_w();
  for (std::size_t oh = 0; oh < oh_n; ++oh) {
    std::copy_n(dy + oh * ow_n, ow_n, dyw + oh * wp);
    std::fill(dyw + oh * wp + ow_n, dyw + (oh + 1) * wp, T(0));
  }
}

template <class T>
void conv2d_direct_dgrad_group(const conv2d_geometry& g, const T* dy, const T* w, T* dx, T* buf) {
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  const std::size_t hp = g.in_h + 2 * g.pad_h, wp = g.in_w + 2 * g.pad_w;
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w(), span = (oh_n - 1) * wp + ow_n;
  T* dxp = buf;
  T* dyw = buf + cin * hp * wp;
  std::fill_n(dxp, cin * hp * wp, T(0));
  for (std::size_t o = 0; o < cout; ++o) {
    conv2d_widen(g, dy + o * oh_n * ow_n, dyw);
    const T* wo = w + o * g.filter_size();
    for (std::size_t c = 0; c < cin; ++c)
      for (std::size_t i = 0; i < g.kernel_h; ++i)
        for (std::size_t j = 0; j < g.kernel_w; ++j)
          axpy(span, wo[(c * g.kernel_h + i) * g.kernel_w + j], dyw,
               dxp + c * hp * wp + i * g.dilation_h * wp + j * g.dilation_w);
  }
  for (std::size_t c = 0; c < cin; ++c)
    for (std::size_t h = 0; h < g.in_h; ++h)
      std::copy_n(dxp + (c * hp + h + g.pad_h) * wp + g.pad_w, g.in_w,
                  dx + (c * g.in_h + h) * g.in_w);
}

template <class T>
void conv2d_direct_wgrad_group(const conv2d_geometry& g, const T* x, const T* dy, T* dw, T* buf) {
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  const std::size_t hp = g.in_h + 2 * g.pad_h, wp = g.in_w + 2 * g.pad_w;
  const std::size_t oh_n = g.out_h(), ow_n = g.out_w(), span = (oh_n - 1) * wp + ow_n;
  T* xp = buf;
  T* dyw = buf + cin * hp * wp;
  conv2d_pad_copy(g, cin, x, xp);
  for (std::size_t o = 0; o < cout; ++o) {
    conv2d_widen(g, dy + o * oh_n * ow_n, dyw);
    T* dwo = dw + o * g.filter_size();
    for (std::size_t c = 0; c < cin; ++c)
      for (std::size_t i = 0; i < g.kernel_h; ++i)
        for (std::size_t j = 0; j < g.kernel_w; ++j)
          dwo[(c * g.kernel_h + i) * g.kernel_w + j] +=
              dot(span, dyw, xp + c * hp * wp + i * g.dilation_h * wp + j * g.dilation_w);
  }
}

// ---- im2col + gemm ------------------------------------------------------------------------

template <class T>
void conv2d_gemm_fprop_group(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                             bool relu, T* col_buf) {
  const std::size_t k = g.filter_size(), p = g.out_plane(), m = g.out_channels_per_group();
  const T* col = x;
  if (!conv2d_is_pointwise(g)) {
    im2col(g, g.in_channels_per_group(), x, col_buf);
    col = col_buf;
  }
  auto run = [&](const auto& ep) {
    gemm(transpose::no, transpose::no, m, p, k, T(1), w, k, col, p, T(0), y, p, ep);
  };
  if (bias && relu)
    run(bias_rows_relu_select<T>{bias});
  else if (bias)
    run(epilogue::bias_rows<T>{bias});
  else if (relu)
    run(relu_only{});
  else
    run(epilogue::identity{});
}

template <class T>
void conv2d_gemm_dgrad_group(const conv2d_geometry& g, const T* dy, const T* w, T* dx, T* col_buf) {
  const std::size_t k = g.filter_size(), p = g.out_plane(), m = g.out_channels_per_group();
  if (conv2d_is_pointwise(g)) {
    gemm(transpose::yes, transpose::no, k, p, m, T(1), w, k, dy, p, T(0), dx, p);
    return;
  }
  gemm(transpose::yes, transpose::no, k, p, m, T(1), w, k, dy, p, T(0), col_buf, p);
  std::fill_n(dx, g.in_channels_per_group() * g.in_plane(), T(0));
  col2im_add(g, g.in_channels_per_group(), col_buf, dx);
}

template <class T>
void conv2d_gemm_wgrad_group(const conv2d_geometry& g, const T* x, const T* dy, T* dw, T* col_buf) {
  const std::size_t k = g.filter_size(), p = g.out_plane(), m = g.out_channels_per_group();
  const T* col = x;
  if (!conv2d_is_pointwise(g)) {
    im2col(g, g.in_channels_per_group(), x, col_buf);
    col = col_buf;
  }
  gemm(transpose::no, transpose::yes, m, k, p, T(1), dy, p, col, p, T(1), dw, k);
}

} // namespace detail

/// conv2d_fprop / conv2d_fprop_relu with an explicit algorithm (benchmarks, tests).
template <class T>
void conv2d_fprop_using(conv2d_algo algo, const conv2d_geometry& g, const T* x, const T* w,
                        const T* bias, T* y, std::vector<T>& scratch, bool relu = false) {
  algo = detail::conv2d_resolve(algo, g);
  const std::size_t per = detail::conv2d_scratch_per_thread(algo, g);
  const std::size_t threads = detail::batch_threads(g.batch);
  T* buf0 = detail::conv2d_grow(scratch, threads * per);
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  detail::parallel_chunks(threads, g.batch, [&](std::size_t t, std::size_t b, std::size_t e) {
    T* buf = buf0 + t * per;
    for (std::size_t n = b; n < e; ++n)
      for (std::size_t gi = 0; gi < g.groups; ++gi) {
        const T* xg = x + (n * g.in_channels + gi * cin) * g.in_plane();
        const T* wg = w + gi * cout * g.filter_size();
        const T* bg = bias ? bias + gi * cout : nullptr;
        T* yg = y + (n * g.out_channels + gi * cout) * g.out_plane();
        if (algo == conv2d_algo::direct)
          detail::conv2d_direct_fprop_group(g, xg, wg, bg, yg, relu, buf);
        else
          detail::conv2d_gemm_fprop_group(g, xg, wg, bg, yg, relu, buf);
      }
  });
}

/// conv2d_dgrad with an explicit algorithm.
template <class T>
void conv2d_dgrad_using(conv2d_algo algo, const conv2d_geometry& g, const T* dy, const T* w, T* dx,
                        std::vector<T>& scratch) {
  algo = detail::conv2d_resolve(algo, g);
  const std::size_t per = detail::conv2d_scratch_per_thread(algo, g);
  const std::size_t threads = detail::batch_threads(g.batch);
  T* buf0 = detail::conv2d_grow(scratch, threads * per);
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  detail::parallel_chunks(threads, g.batch, [&](std::size_t t, std::size_t b, std::size_t e) {
    T* buf = buf0 + t * per;
    for (std::size_t n = b; n < e; ++n)
      for (std::size_t gi = 0; gi < g.groups; ++gi) {
        const T* dyg = dy + (n * g.out_channels + gi * cout) * g.out_plane();
        const T* wg = w + gi * cout * g.filter_size();
        T* dxg = dx + (n * g.in_channels + gi * cin) * g.in_plane();
        if (algo == conv2d_algo::direct)
          detail::conv2d_direct_dgrad_group(g, dyg, wg, dxg, buf);
        else
          detail::conv2d_gemm_dgrad_group(g, dyg, wg, dxg, buf);
      }
  });
}

/// conv2d_wgrad with an explicit algorithm.
template <class T>
void conv2d_wgrad_using(conv2d_algo algo, const conv2d_geometry& g, const T* x, const T* dy, T* dw,
                        T* dbias, std::vector<T>& scratch) {
  algo = detail::conv2d_resolve(algo, g);
  const std::size_t threads = detail::batch_threads(g.batch);
  const std::size_t wc = g.weight_count();
  // Each thread: its algorithm buffer, then (with more than one thread) its own dW partial.
  const std::size_t per = detail::conv2d_scratch_per_thread(algo, g) + (threads > 1 ? wc : 0);
  T* buf0 = detail::conv2d_grow(scratch, threads * per);
  if (threads > 1)
    for (std::size_t t = 0; t < threads; ++t) std::fill_n(buf0 + t * per + per - wc, wc, T(0));
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  detail::parallel_chunks(threads, g.batch, [&](std::size_t t, std::size_t b, std::size_t e) {
    T* buf = buf0 + t * per;
    T* target = threads > 1 ? buf + per - wc : dw;
    for (std::size_t n = b; n < e; ++n)
      for (std::size_t gi = 0; gi < g.groups; ++gi) {
        const T* xg = x + (n * g.in_channels + gi * cin) * g.in_plane();
        const T* dyg = dy + (n * g.out_channels + gi * cout) * g.out_plane();
        T* dwg = target + gi * cout * g.filter_size();
        if (algo == conv2d_algo::direct)
          detail::conv2d_direct_wgrad_group(g, xg, dyg, dwg, buf);
        else
          detail::conv2d_gemm_wgrad_group(g, xg, dyg, dwg, buf);
      }
  });
  if (threads > 1)
    for (std::size_t t = 0; t < threads; ++t) detail::axpy(wc, T(1), buf0 + t * per + per - wc, dw);
  if (dbias) {
    const std::size_t p = g.out_plane();
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t o = 0; o < g.out_channels; ++o)
        dbias[o] += detail::sum(p, dy + (n * g.out_channels + o) * p);
  }
}

/// y = conv(x, w) + bias (bias nullable); y overwritten.
template <class T>
void conv2d_fprop(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                  std::vector<T>& scratch) {
  conv2d_fprop_using(conv2d_algo::automatic, g, x, w, bias, y, scratch, false);
}

/// y = max(0, conv(x, w) + bias), the ReLU fused into the gemm epilogue; y overwritten.
template <class T>
void conv2d_fprop_relu(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                       std::vector<T>& scratch) {
  conv2d_fprop_using(conv2d_algo::automatic, g, x, w, bias, y, scratch, true);
}

/// dx = transposed convolution of dy with w; dx overwritten.
template <class T>
void conv2d_dgrad(const conv2d_geometry& g, const T* dy, const T* w, T* dx,
                  std::vector<T>& scratch) {
  conv2d_dgrad_using(conv2d_algo::automatic, g, dy, w, dx, scratch);
}

/// dw += d<dy, conv(x, w)>/dw; dbias += sum of dy per output channel (dbias nullable).
template <class T>
void conv2d_wgrad(const conv2d_geometry& g, const T* x, const T* dy, T* dw, T* dbias,
                  std::vector<T>& scratch) {
  conv2d_wgrad_using(conv2d_algo::automatic, g, x, dy, dw, dbias, scratch);
}

} // namespace bitgrad
