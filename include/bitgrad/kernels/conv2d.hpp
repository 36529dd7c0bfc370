// 2-D convolution kernels: fprop, fprop fused with ReLU, dgrad, wgrad.
//
// Layout and formula: see kernels/conv2d_geometry.hpp (x, y NCHW; w OIHW; groups).
// Reference twins with the same signatures: kernels/ref/conv2d.hpp.
//
// Four algorithms, per image n and group g (K = Cin/G * kh * kw, P = out_h * out_w):
//  * implicit GEMM (kernels/conv2d_implicit.hpp): the GEMMs below with the column matrix never
//    stored; the GEMM packs its micro-panels straight from the image. fprop and wgrad for any
//    geometry; dgrad as the convolution of dy with the flipped weights when the stride is 1
//    (otherwise an `implicit` dgrad runs im2col + col2im).
//  * im2col + gemm (kernels/im2col.hpp):
//      fprop : y_g (Cout/G x P)  = W_g (Cout/G x K) * col (K x P),  bias/ReLU fused as the
//              gemm epilogue (bias_rows / bias_rows_relu: rows are output channels)
//      dgrad : col (K x P)       = W_g^T * dy_g,  then dx_g = col2im(col)
//      wgrad : dW_g (Cout/G x K) += dy_g * col^T  (gemm with beta = 1)
//    A 1x1, stride-1, unpadded convolution skips the lowering: col is x_g itself and dgrad
//    writes W_g^T * dy_g straight into dx_g.
//  * direct (stride 1 only): the input group is copied into a zero-padded buffer xp
//    (Cin/G x Hp x Wp, Hp = in_h + 2 pad_h, Wp = in_w + 2 pad_w). Seen as flat rows of pitch Wp,
//    every tap (c, i, j) reads one contiguous run
//      yw[o][q] += w[o][c][i][j] * xp_c[q + i*dilation_h*Wp + j*dilation_w],  q < (OH-1)*Wp + OW,
//    where yw is the output with row pitch Wp (columns ow >= OW are junk and dropped).
//    fprop is register-blocked (kernels/conv2d_direct.hpp: 4 output channels x up to 6 registers
//    of q per tile, nothing packed but the weights); dgrad is the same kernel on dy with the
//    flipped weights when it is a convolution into >= 3 channels (conv2d_dgrad_runs_blocked),
//    else the axpys the other way round (with a dy copy whose junk columns are 0); wgrad takes the
//    dot products of dy (junk columns 0) with the shifted planes, register-blocked too
//    (kernels/conv2d_direct_wgrad.hpp: 3 output channels x 9 taps per tile on AVX-512, 3 x 3
//    with 16 registers, each slice's images summed in the registers). No K x P matrix and no
//    packed B panels.
//  * Winograd F(2x2, 3x3) (kernels/conv2d_winograd.hpp; 3x3, stride 1, dilation 1, one group):
//    fprop and dgrad (on dy with the flipped, transposed weights) as weight, input and output
//    transforms around 16 gemms of Cout x Cin by Cin x tiles; no wgrad of its own.
// conv2d_algo::automatic picks one per pass (conv2d_choose_algo, measured with
// benchmarks/bench_conv2d.cpp).
//
// Threads (kernels/parallel.hpp): fprop and dgrad give each thread whole images (with fewer
// images than threads, implicit GEMM also splits an image's pixels, in whole register tiles);
// the gemm inside runs on the calling thread. wgrad sums the batch in slices fixed by the batch
// size and weight count (conv2d_wgrad_slices): each slice's dW partial is formed on one thread,
// then the partials are added to dW in slice order (the slices, the sum and dbias: one parallel
// region, phases split by a barrier, parallel_phases). Every output element sees the same
// operations in the same order whatever the thread count, so results are bitwise reproducible
// across thread counts.
//
// `scratch` belongs to the caller; it is grown when too small and otherwise reused as is.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/kernels/conv2d_direct.hpp>
#include <bitgrad/kernels/conv2d_direct_wgrad.hpp>
#include <bitgrad/kernels/conv2d_geometry.hpp>
#include <bitgrad/kernels/conv2d_implicit.hpp>
#include <bitgrad/kernels/conv2d_winograd.hpp>
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
/// `winograd` (F(2x2, 3x3), kernels/conv2d_winograd.hpp) needs a 3x3 kernel, stride 1, dilation 1
/// and one group (config_error otherwise); it runs a dgrad padded by more than 2 through im2col
/// and wgrad as `automatic` does (it has no wgrad of its own).
/// `implicit` runs a strided dgrad (or one padded by more than dilation * (kernel - 1)) through
/// im2col + col2im, and everything through im2col where SIMD is off (BITGRAD_NO_SIMD: the gemm
/// is the reference loop then).
enum class conv2d_algo { automatic, im2col, direct, implicit, winograd };

/// The three passes of a convolution, which may use different algorithms.
enum class conv2d_pass { fprop, dgrad, wgrad };

namespace detail {
/// Whether conv2d_algo::direct runs g's dgrad as the register-blocked kernel on dy with flipped
/// weights (conv2d_direct.hpp), else as the axpys: it must be a convolution of dy, into >= 3
/// channels per group (into one, the tiles of one channel are load bound: 0.57-0.69x im2col).
inline bool conv2d_dgrad_runs_blocked(const conv2d_geometry& g) {
  return conv2d_dgrad_is_convolution(g) && g.in_channels_per_group() >= 3;
}
} // namespace detail

/// The algorithm conv2d_algo::automatic runs for g in `pass`.
inline conv2d_algo conv2d_choose_algo(const conv2d_geometry& g,
                                      conv2d_pass pass = conv2d_pass::fprop) {
  const bool stride1 = g.stride_h == 1 && g.stride_w == 1;
  const bool pointwise =
      g.kernel_h == 1 && g.kernel_w == 1 && stride1 && g.pad_h == 0 && g.pad_w == 0;
  // Direct when the gemm would be thin in both K and M: the dgrad and wgrad of LeNet conv1
  // (K 25, M 6) and all of depthwise 3x3 (K 9, M 1) ran faster direct in bench_conv2d; LeNet
  // conv2 (K 150) and VGG conv1 (K 9 but M 32) ran faster through a gemm, and so did LeNet
  // conv1's fprop through implicit GEMM (0.75x the instructions of direct, --callgrind).
  const std::size_t m = g.out_channels_per_group();
  if (stride1 && !pointwise && g.filter_size() <= 32 && m <= 8 &&
      (pass != conv2d_pass::fprop || m <= 2))
    return conv2d_algo::direct;
  // Winograd F(2x2, 3x3) (conv2d_winograd.hpp) does 16 multiplies per 2x2 output tile and
  // (Cout, Cin) pair where the others do 36, and pays for it with transforms of cost ~ Cin + Cout
  // per tile and 1 junk tile per tile row. Measured side by side with AVX-512 (bench_conv2d
  // --compare --cpu, batch 128, 1 thread, benchmarks/README.md "Winograd F(2x2, 3x3)"), median
  // ratio fastest other / winograd: 1.11-1.26x on VGG conv2-4 (32-64 channels, 28x28 / 14x14),
  // 1.15-1.21x on ResNet-20 stages 2-3 (32 / 64 channels) at 14x14, 16x16 and 8x8, fprop and
  // dgrad; 1.00-1.01x at 7x7 (a third of the tiles cropped or junk) and 0.76-0.97x with 16
  // channels (stage 1: the transforms outweigh the GEMMs), where direct stays. Small batches
  // lose: the 16 GEMMs get too few columns (tiles) to pay for their packing. Wall clock, 1 thread,
  // 7-9 rounds, fastest other / winograd on VGG conv2-4 and resnet28.layer2: 0.40-0.80x at batch
  // 1, 0.63-0.99x at 2, 0.81-0.98x at 4 (840 tiles on 28x28, 224 on 14x14), 0.98-1.16x at 8
  // (1,680 / 448), 1.00-1.18x at 16 (896 on 14x14), 1.03-1.16x at 32; so Winograd needs
  // batch x tiles per image >= 1,024 (the batch, not the thread count, decides, so that results
  // do not depend on the number of threads).
  const std::size_t winograd_tiles =
      g.batch * detail::conv2d_winograd_layout::of<float>(g).image_tiles();
  if (detail::conv2d_winograd_preferred && pass != conv2d_pass::wgrad &&
      detail::conv2d_winograd_fits(g) && std::min(g.in_channels, g.out_channels) >= 32 &&
      g.out_h() >= detail::conv2d_winograd_min_side &&
      g.out_w() >= detail::conv2d_winograd_min_side && winograd_tiles >= 1024 &&
      (pass == conv2d_pass::fprop || detail::conv2d_dgrad_is_convolution(g)))
    return conv2d_algo::winograd;
  // The register-blocked direct fprop / dgrad (conv2d_direct.hpp) packs no B panels, where
  // implicit GEMM packs every element of col once per Cout/G rows; it multiplies the junk columns
  // and the rounding of its tiles instead (AVX-512 float: 6-31 % more FMAs, 32x32 .. 7x7).
  // Measured side by side with AVX-512 (bench_conv2d --compare, benchmarks/README.md "Direct
  // convolution, register-blocked"): 1.00-1.50x (mostly 1.05-1.2x) implicit GEMM on the 3x3
  // stride-1 layers of VGG and ResNet-20 with K >= 144, fprop and dgrad (not with AVX2:
  // conv2d_direct_preferred); a first layer with K = 9 loses (0.68-0.86x: 9 taps per tile do not
  // pay for the copies), and a dgrad into one channel loses to im2col (0.57-0.69x: tiles of one
  // channel are load bound); into 3 (resnet32.conv1) it beats im2col 1.4-1.9x.
  if (detail::conv2d_direct_preferred && stride1 && !pointwise) {
    const std::size_t taps = g.kernel_h * g.kernel_w;
    if (pass == conv2d_pass::fprop && g.filter_size() >= 25) return conv2d_algo::direct;
    if (pass == conv2d_pass::dgrad && detail::conv2d_dgrad_runs_blocked(g) && m * taps >= 25)
      return conv2d_algo::direct;
    // wgrad (conv2d_direct_wgrad.hpp) sums each tile's lanes once per slice and rounds the flat
    // span up to whole registers, so it needs planes of >= 14 x 14: measured (bench_conv2d, CPU
    // time, batch 128, benchmarks/README.md "Direct wgrad") 1.09-1.34x implicit GEMM on the
    // 28x28 / 32x32 layers, 1.16x on 14x14 / 16x16 with Cout 32, 1.35-1.9x im2col / implicit on
    // the first layers (Cin 1 or 3); 0.95-0.98x on 14x14 with Cout 64 and 0.75-0.78x on 7x7 / 8x8
    // (span 61 in 64 lanes for 49 pixels), 1.00x on LeNet conv2 (8x8, 5x5).
    if (pass == conv2d_pass::wgrad && g.out_plane() >= 196 && m <= 32) return conv2d_algo::direct;
  }
  // AVX2 (16 registers: direct tiles of 4 channels x 3 registers), measured on the Zen 3 host
  // (bench_conv2d --compare --cpu, batch 128, 1 thread, 5-7 rounds; README "ResNet-20 on the Zen 3
  // AVX2 host ... (h23-r20z)"), implicit / direct: 1.27-1.37x fprop, 1.11-1.35x dgrad on the
  // 16-channel 28x28 / 32x32 stage of ResNet-20; LeNet conv1's fprop (6 out, 24x24) 1.41x. With
  // 32 or 64 channels on >= 14x14 direct ran 0.77-1.18x fprop / dgrad (Winograd beat it there);
  // on 7x7 / 8x8 planes 0.81-1.02x: those stay with implicit GEMM or Winograd. wgrad, with the
  // 3 x 3 tile (README "ResNet-20 training on AVX2: the direct wgrad tile ... (h23-wgrad)", CPU
  // time, medians of 9 paired rounds), implicit / direct: 1.36-1.6x on ResNet-20's 16-channel
  // stage (5 rounds), 1.10x on VGG conv2 (32 channels, 28x28), 1.02x / 1.04x on the 32-channel
  // 14x14 / 16x16 stages; 0.85x / 0.89x with 64 out on 14x14 (VGG conv3 / 4), 0.79x on 7x7
  // (ResNet-20 stage 3); VGG conv1 (1 -> 32 on 28x28) 1.11x im2col; the first layers of
  // ResNet-20 (Cin 1 or 3, 16 out) ran 1.2x im2col, 1.65x implicit with the 1 x 9 tile before.
  if (detail::conv2d_direct_preferred_narrow && stride1 && !pointwise && g.out_plane() >= 196) {
    const std::size_t in = g.in_channels_per_group();
    const std::size_t taps = g.kernel_h * g.kernel_w;
    if (pass == conv2d_pass::wgrad && m <= 32 && in <= 32) return conv2d_algo::direct;
    if (pass == conv2d_pass::fprop && m <= 16 && in <= 16 && g.filter_size() >= 25)
      return conv2d_algo::direct;
    if (pass == conv2d_pass::dgrad && m <= 16 && in <= 16 && detail::conv2d_dgrad_runs_blocked(g) &&
        m * taps >= 25)
      return conv2d_algo::direct;
  }
  // A 1x1 kernel: unstrided and unpadded it is a plain gemm on x (nothing to lower); strided (a
  // ResNet projection shortcut) it lowers to one strided copy of x either way, and its gemm is
  // short (K = Cin/G): im2col ran 0.8-1.0x the instructions of implicit GEMM there
  // (bench_conv2d --callgrind).
  if ((g.kernel_h == 1 && g.kernel_w == 1) || !BITGRAD_HAS_SIMD) return conv2d_algo::im2col;
  switch (pass) {
  case conv2d_pass::fprop:
    return conv2d_algo::implicit;
  case conv2d_pass::dgrad: {
    // As a convolution of dy, dgrad packs Cout/G * kh * kw rows of in_h * in_w pixels per image,
    // where im2col's gemm writes Cin/G * kh * kw rows of out_h * out_w that col2im reads back
    // and scatters. Implicit when it moves at most twice as much: 3x3 pad 1 with Cout <= 2 Cin,
    // not a first layer (Cin 1) nor a valid 5x5 (LeNet conv2).
    const bool cheap =
        g.out_channels_per_group() * g.in_plane() <= 2 * g.in_channels_per_group() * g.out_plane();
    return detail::conv2d_dgrad_is_convolution(g) && cheap ? conv2d_algo::implicit
                                                           : conv2d_algo::im2col;
  }
  case conv2d_pass::wgrad:
    // Few taps over many pixels (a first layer on one channel): the inner products of
    // gemm_dot.hpp on the stored col rows beat NR-wide tiles that leave most lanes idle. Measured
    // on a quiet machine: K = 9 (VGG / ResNet-20 conv1 on 28x28x1) ran 0.78-0.93x as fast through
    // implicit GEMM, K = 27 (ResNet-20 conv1 on 32x32x3) 1.28x.
    return g.filter_size() <= 16 && g.out_plane() >= 256 ? conv2d_algo::im2col
                                                         : conv2d_algo::implicit;
  }
  return conv2d_algo::im2col;
}

namespace detail {

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

inline conv2d_algo conv2d_resolve(conv2d_algo algo, const conv2d_geometry& g, conv2d_pass pass) {
  g.validate();
  if (algo == conv2d_algo::automatic) return conv2d_choose_algo(g, pass);
  if (algo == conv2d_algo::direct && (g.stride_h != 1 || g.stride_w != 1))
    throw config_error("conv2d: the direct algorithm needs stride 1, got stride (" +
                       std::to_string(g.stride_h) + ", " + std::to_string(g.stride_w) + ")");
  if (algo == conv2d_algo::winograd) {
    if (!conv2d_winograd_fits(g))
      throw config_error("conv2d: the winograd algorithm needs a 3x3 kernel, stride 1, dilation 1 "
                         "and one group");
    if (pass == conv2d_pass::wgrad) return conv2d_choose_algo(g, pass);
    if (pass == conv2d_pass::dgrad && !conv2d_dgrad_is_convolution(g)) return conv2d_algo::im2col;
    return algo;
  }
  if (algo == conv2d_algo::implicit &&
      (!BITGRAD_HAS_SIMD || (pass == conv2d_pass::dgrad && !conv2d_dgrad_is_convolution(g))))
    return conv2d_algo::im2col;
  return algo;
}

/// Scratch elements one thread of the direct or im2col algorithm needs (without wgrad's dW
/// partials; implicit GEMM: see conv2d_implicit_images and conv2d_implicit_wgrad_scratch).
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

/// The register-blocked direct convolution (conv2d_direct.hpp) of every image and group of `in`
/// into `out` with geometry t: the weights packed once in front of scratch (pack(gi, packed):
/// group gi's packed weights), then the images over the threads.
template <class T, class Pack>
void conv2d_direct_run(const conv2d_geometry& t, const T* in, const T* bias, T* out, bool relu,
                       std::vector<T>& scratch, Pack&& pack) {
  const conv2d_direct_layout l = conv2d_direct_layout::of<T>(t);
  const std::vector<std::size_t> off = conv2d_direct_offsets(t, l);
  const std::size_t cin = t.in_channels_per_group(), cout = t.out_channels_per_group();
  const std::size_t a_size = conv2d_direct_packed_size<T>(cout, t.filter_size());
  const std::size_t threads = batch_threads(t.batch), per = l.scratch();
  T* const packed = conv2d_grow(scratch, t.groups * a_size + threads * per);
  for (std::size_t gi = 0; gi < t.groups; ++gi) pack(gi, packed + gi * a_size);
  T* const buf0 = packed + t.groups * a_size;
  parallel_chunks(threads, t.batch, [&](std::size_t th, std::size_t b, std::size_t e) {
    for (std::size_t n = b; n < e; ++n)
      for (std::size_t gi = 0; gi < t.groups; ++gi)
        conv2d_direct_fprop_image(
            t, l, off.data(), in + (n * t.in_channels + gi * cin) * t.in_plane(),
            packed + gi * a_size, bias ? bias + gi * cout : nullptr,
            out + (n * t.out_channels + gi * cout) * t.out_plane(), relu, buf0 + th * per);
  });
}

/// Register-blocked direct fprop of every image and group.
template <class T>
void conv2d_direct_fprop(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                         bool relu, std::vector<T>& scratch) {
  const std::size_t group_weights = g.out_channels_per_group() * g.filter_size();
  conv2d_direct_run(g, x, bias, y, relu, scratch, [&](std::size_t gi, T* packed) {
    conv2d_direct_pack_weights(g, w + gi * group_weights, packed);
  });
}

/// Stride-1 dgrad as the register-blocked direct convolution of dy with the flipped weights
/// (conv2d_transposed_geometry; needs conv2d_dgrad_is_convolution(g)).
template <class T>
void conv2d_direct_dgrad(const conv2d_geometry& g, const T* dy, const T* w, T* dx,
                         std::vector<T>& scratch) {
  const std::size_t group_weights = g.out_channels_per_group() * g.filter_size();
  conv2d_direct_run(conv2d_transposed_geometry(g), dy, static_cast<const T*>(nullptr), dx, false,
                    scratch, [&](std::size_t gi, T* packed) {
                      conv2d_direct_pack_weights_flipped(g, w + gi * group_weights, packed);
                    });
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

/// dgrad by axpys, for a padding wider than dilation * (kernel - 1) (no convolution of dy).
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
    run(epilogue::relu{});
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

// ---- implicit gemm -----------------------------------------------------------------------

/// How fprop / dgrad share the work: `parts` pixel ranges per image (more than one only when
/// there are fewer images than threads and a part is still worth a thread: gemm.hpp's
/// gemm_parallel_min_flops), `threads` threads over the batch * parts items.
struct conv2d_split {
  std::size_t threads, parts;
};

inline conv2d_split conv2d_image_split(std::size_t batch, std::size_t col_tiles,
                                       double flops_per_image) {
  const std::size_t available = available_threads();
  if (available <= 1) return {1, 1};
  if (batch >= available) return {available, 1};
  const auto by_work = std::size_t(flops_per_image / double(gemm_parallel_min_flops()));
  const std::size_t parts =
      std::clamp<std::size_t>(std::min((available + batch - 1) / batch, by_work), 1, col_tiles);
  return {std::min(available, batch * parts), parts};
}

/// y_g = ep_g(A_g * col(x_g)) for every image and group g, A_g packed by conv2d_pack_weights
/// (or _flipped) at a + g * conv2d_packed_a_size; with_epilogue(g, run) calls run(ep) with the
/// epilogue of group g. `scratch` past `used` elements holds the threads' phase images.
template <class T, class WithEpilogue>
void conv2d_implicit_images(const conv2d_geometry& g, const T* x, std::vector<T>& scratch,
                            std::size_t used, T* y, WithEpilogue&& with_epilogue) {
  using tile = gemm_tile<T>;
  const std::size_t m = g.out_channels_per_group(), cin = g.in_channels_per_group();
  const std::size_t k = g.filter_size(), p = g.out_plane();
  const std::size_t a_size = conv2d_packed_a_size<T>(m, k), m_pad = a_size / k;
  const conv2d_phase_image layout(g);
  const std::vector<std::size_t> taps = layout.tap_offsets(g);
  const std::size_t col_tiles = (p + tile::nr - 1) / tile::nr;
  const conv2d_split split =
      conv2d_image_split(g.batch, col_tiles, 2.0 * g.macs() / double(g.batch));
  const std::size_t per = layout.size<T>();
  conv2d_grow(scratch, used + split.threads * per);
  const T* const a = scratch.data();
  T* const xs0 = scratch.data() + used;
  parallel_chunks(
      split.threads, g.batch * split.parts, [&](std::size_t t, std::size_t b, std::size_t e) {
        T* const xs = xs0 + t * per;
        for (std::size_t item = b; item < e; ++item) {
          const std::size_t n = item / split.parts, part = item % split.parts;
          const std::size_t c0 = std::min(p, col_tiles * part / split.parts * tile::nr);
          const std::size_t c1 = std::min(p, col_tiles * (part + 1) / split.parts * tile::nr);
          if (c0 == c1) continue;
          for (std::size_t gi = 0; gi < g.groups; ++gi) {
            layout.fill(g, x + (n * g.in_channels + gi * cin) * g.in_plane(), xs);
            const T* const ag = a + gi * a_size;
            T* const yg = y + (n * g.out_channels + gi * m) * p;
            auto pack_a = [&](std::size_t pc, std::size_t) { return ag + pc * m_pad; };
            auto pack_b = [&](std::size_t pc, std::size_t kc, std::size_t jc, std::size_t nc,
                              T* dst) {
              conv2d_pack_col<tile::nr>(taps.data(), g.out_w(), layout.cols, xs, pc, kc, jc, nc,
                                        dst);
            };
            with_epilogue(gi, [&](const auto& ep) {
              conv2d_implicit_gemm<T>(m, c0, c1, k, pack_a, pack_b, T(0), yg, p, ep);
            });
          }
        }
      });
}

template <class T>
void conv2d_implicit_fprop(const conv2d_geometry& g, const T* x, const T* w, const T* bias, T* y,
                           bool relu, std::vector<T>& scratch) {
  const std::size_t m = g.out_channels_per_group(), k = g.filter_size();
  const std::size_t a_size = conv2d_packed_a_size<T>(m, k);
  T* const a = conv2d_grow(scratch, g.groups * a_size);
  for (std::size_t gi = 0; gi < g.groups; ++gi)
    conv2d_pack_weights(w + gi * m * k, k, m, k, a + gi * a_size);
  conv2d_implicit_images(g, x, scratch, g.groups * a_size, y, [&](std::size_t gi, const auto& run) {
    const T* const bg = bias ? bias + gi * m : nullptr;
    if (bg && relu)
      run(bias_rows_relu_select<T>{bg});
    else if (bg)
      run(epilogue::bias_rows<T>{bg});
    else if (relu)
      run(epilogue::relu{});
    else
      run(epilogue::identity{});
  });
}

/// Stride-1 dgrad as the convolution of dy (conv2d_implicit.hpp).
template <class T>
void conv2d_implicit_dgrad(const conv2d_geometry& g, const T* dy, const T* w, T* dx,
                           std::vector<T>& scratch) {
  const conv2d_geometry t = conv2d_transposed_geometry(g);
  const std::size_t a_size = conv2d_packed_a_size<T>(t.out_channels_per_group(), t.filter_size());
  T* const a = conv2d_grow(scratch, g.groups * a_size);
  for (std::size_t gi = 0; gi < g.groups; ++gi)
    conv2d_pack_weights_flipped(g, w + gi * g.out_channels_per_group() * g.filter_size(),
                                a + gi * a_size);
  conv2d_implicit_images(t, dy, scratch, g.groups * a_size, dx,
                         [](std::size_t, const auto& run) { run(epilogue::identity{}); });
}

/// Scratch elements one thread needs for the implicit wgrad of a slice of `images` images: their
/// phase images and the staging block.
template <class T>
std::size_t conv2d_implicit_wgrad_scratch(const conv2d_geometry& g, std::size_t images) {
  return images * conv2d_phase_image(g).size<T>() + conv2d_stage_size<T>();
}

/// partial = sum over images [n0, n0 + count) of dy_g * col(x_g)^T, every group: one gemm per
/// group whose k runs over the pixels of all the images (conv2d_implicit.hpp). `buf` holds
/// conv2d_implicit_wgrad_scratch(g, count) elements.
template <class T>
void conv2d_implicit_wgrad_slice(const conv2d_geometry& g, const conv2d_phase_image& layout,
                                 const std::size_t* taps, const T* x, const T* dy, std::size_t n0,
                                 std::size_t count, T* partial, T* buf) {
  using tile = gemm_tile<T>;
  constexpr std::size_t align = std::max<std::size_t>(64, simd_arch::alignment());
  const std::size_t m = g.out_channels_per_group(), cin = g.in_channels_per_group();
  const std::size_t k = g.filter_size(), p = g.out_plane(), pixels = count * p;
  const std::size_t kc_block = gemm_even_block(pixels, gemm_blocking<T>::kc, 1);
  const std::size_t m_pad = (m + tile::mr - 1) / tile::mr * tile::mr;
  const std::size_t xs_image = layout.size<T>();
  T* const a_buf = gemm_thread_buffer<T, align>(0).reserve(m_pad * kc_block);
  T* const stage = buf + count * xs_image;
  for (std::size_t gi = 0; gi < g.groups; ++gi) {
    for (std::size_t n = 0; n < count; ++n)
      layout.fill(g, x + ((n0 + n) * g.in_channels + gi * cin) * g.in_plane(), buf + n * xs_image);
    const T* const dyg = dy + (n0 * g.out_channels + gi * m) * p;
    auto pack_a = [&](std::size_t pc, std::size_t kc) -> const T* {
      conv2d_pack_rows_run<tile::mr>(dyg, g.out_channels * p, p, m, pc, kc, a_buf);
      return a_buf;
    };
    auto pack_b = [&](std::size_t pc, std::size_t kc, std::size_t jc, std::size_t nc, T* dst) {
      conv2d_pack_col_transposed<tile::nr>(taps, g.out_w(), layout.cols, p, buf, xs_image, pc, kc,
                                           jc, nc, stage, dst);
    };
    conv2d_implicit_gemm<T>(m, 0, k, pixels, pack_a, pack_b, T(0), partial + gi * m * k, k,
                            epilogue::identity{});
  }
}

/// Most slices wgrad cuts a batch into (see conv2d_wgrad_slices).
inline constexpr std::size_t conv2d_wgrad_max_slices = 16;

/// Elements the slices' dW partials may take together before wgrad uses fewer slices (down to
/// two): 32 MiB of floats.
inline constexpr std::size_t conv2d_wgrad_partials_budget = std::size_t(1) << 23;

/// wgrad's slices: `count` runs of `size` consecutive images (the last one shorter), set by the
/// batch size and the weight count alone, so that the sums do not depend on the thread count.
/// At most conv2d_wgrad_max_slices (fewer for layers with many weights): that many dW partials,
/// and that many threads at most.
struct conv2d_slices {
  std::size_t size, count;
};

inline conv2d_slices conv2d_wgrad_slices(std::size_t batch, std::size_t weights) {
  const std::size_t most = std::clamp<std::size_t>(
      conv2d_wgrad_partials_budget / std::max<std::size_t>(1, weights), 2, conv2d_wgrad_max_slices);
  const std::size_t size = (batch + most - 1) / most;
  return {size, (batch + size - 1) / size};
}

} // namespace detail

/// conv2d_fprop / conv2d_fprop_relu with an explicit algorithm (benchmarks, tests).
template <class T>
void conv2d_fprop_using(conv2d_algo algo, const conv2d_geometry& g, const T* x, const T* w,
                        const T* bias, T* y, std::vector<T>& scratch, bool relu = false) {
  algo = detail::conv2d_resolve(algo, g, conv2d_pass::fprop);
  if (algo == conv2d_algo::winograd) {
    detail::conv2d_winograd_fprop(g, x, w, bias, y, relu, scratch);
    return;
  }
  if (algo == conv2d_algo::implicit) {
    detail::conv2d_implicit_fprop(g, x, w, bias, y, relu, scratch);
    return;
  }
  if (algo == conv2d_algo::direct) {
    detail::conv2d_direct_fprop(g, x, w, bias, y, relu, scratch);
    return;
  }
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
        detail::conv2d_gemm_fprop_group(g, xg, wg, bg, yg, relu, buf);
      }
  });
}

/// conv2d_dgrad with an explicit algorithm.
template <class T>
void conv2d_dgrad_using(conv2d_algo algo, const conv2d_geometry& g, const T* dy, const T* w, T* dx,
                        std::vector<T>& scratch) {
  algo = detail::conv2d_resolve(algo, g, conv2d_pass::dgrad);
  if (algo == conv2d_algo::winograd) {
    detail::conv2d_winograd_dgrad(g, detail::conv2d_transposed_geometry(g), dy, w, dx, scratch);
    return;
  }
  if (algo == conv2d_algo::implicit) {
    detail::conv2d_implicit_dgrad(g, dy, w, dx, scratch);
    return;
  }
  if (algo == conv2d_algo::direct && detail::conv2d_dgrad_runs_blocked(g)) {
    detail::conv2d_direct_dgrad(g, dy, w, dx, scratch);
    return;
  }
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
  algo = detail::conv2d_resolve(algo, g, conv2d_pass::wgrad);
  const std::size_t wc = g.weight_count();
  const detail::conv2d_slices slices = detail::conv2d_wgrad_slices(g.batch, g.weight_count());
  const std::size_t threads = detail::batch_threads(slices.count);
  // The slices' dW partials, then each thread's algorithm buffer.
  const bool implicit = algo == conv2d_algo::implicit, direct = algo == conv2d_algo::direct;
  const detail::conv2d_wgrad_layout flat = detail::conv2d_wgrad_layout::of<T>(g, slices.size);
  const std::size_t per = implicit ? detail::conv2d_implicit_wgrad_scratch<T>(g, slices.size)
                          : direct ? flat.scratch()
                                   : detail::conv2d_scratch_per_thread(algo, g);
  T* const partials = detail::conv2d_grow(scratch, slices.count * wc + threads * per);
  T* const buf0 = partials + slices.count * wc;
  const detail::conv2d_phase_image layout(g);
  const std::vector<std::size_t> taps = implicit ? layout.tap_offsets(g)
                                        : direct ? detail::conv2d_wgrad_offsets(g, flat)
                                                 : std::vector<std::size_t>();
  const std::size_t cin = g.in_channels_per_group(), cout = g.out_channels_per_group();
  // The slices [b, e) into their partials, with thread t's buffer.
  auto slices_into_partials = [&](std::size_t t, std::size_t b, std::size_t e) {
    T* const buf = buf0 + t * per;
    for (std::size_t s = b; s < e; ++s) {
      const std::size_t n0 = s * slices.size, count = std::min(slices.size, g.batch - n0);
      T* const partial = partials + s * wc;
      if (implicit) {
        detail::conv2d_implicit_wgrad_slice(g, layout, taps.data(), x, dy, n0, count, partial, buf);
        continue;
      }
      if (direct) {
        detail::conv2d_direct_wgrad_slice(g, flat, taps.data(), x, dy, n0, count, partial, buf);
        continue;
      }
      std::fill_n(partial, wc, T(0));
      for (std::size_t n = n0; n < n0 + count; ++n)
        for (std::size_t gi = 0; gi < g.groups; ++gi) {
          const T* xg = x + (n * g.in_channels + gi * cin) * g.in_plane();
          const T* dyg = dy + (n * g.out_channels + gi * cout) * g.out_plane();
          T* dwg = partial + gi * cout * g.filter_size();
          detail::conv2d_gemm_wgrad_group(g, xg, dyg, dwg, buf);
        }
    }
  };
  // dw[i] += partial_0[i] + partial_1[i] + ..., in slice order, for the weights [b, e).
  auto sum_partials = [&](std::size_t b, std::size_t e) {
    for (std::size_t s = 0; s < slices.count; ++s)
      detail::axpy(e - b, T(1), partials + s * wc + b, dw + b);
  };
  // dbias[o] += sum over images of the sum of dy's plane o (images in order), for o in [b, e).
  auto bias_sums = [&](std::size_t b, std::size_t e) {
    const std::size_t p = g.out_plane();
    for (std::size_t o = b; o < e; ++o)
      for (std::size_t n = 0; n < g.batch; ++n)
        dbias[o] += detail::sum(p, dy + (n * g.out_channels + o) * p);
  };
  if (threads > 1) {
    // One fork / join for the three passes: the slices, a barrier (every partial complete), then
    // each thread's run of weights and of bias channels. Every element is summed in the same
    // order as on one thread, so the bits do not depend on the thread count.
    detail::parallel_phases(threads, [&](const detail::thread_team& team) {
      slices_into_partials(team.thread, team.begin(slices.count), team.end(slices.count));
      team.barrier();
      sum_partials(team.begin(wc), team.end(wc));
      if (dbias) bias_sums(team.begin(g.out_channels), team.end(g.out_channels));
    });
    return;
  }
  slices_into_partials(0, 0, slices.count);
  // One slice (a batch of one image) or one thread: the sums may still be worth the threads.
  const std::size_t sum_threads =
      slices.count * wc >= detail::elementwise_parallel_min ? detail::batch_threads(wc) : 1;
  detail::parallel_chunks(sum_threads, wc,
                          [&](std::size_t, std::size_t b, std::size_t e) { sum_partials(b, e); });
  if (dbias) {
    const std::size_t bias_threads = g.output_count() >= detail::elementwise_parallel_min
                                         ? detail::batch_threads(g.out_channels)
                                         : 1;
    detail::parallel_chunks(bias_threads, g.out_channels,
                            [&](std::size_t, std::size_t b, std::size_t e) { bias_sums(b, e); });
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
