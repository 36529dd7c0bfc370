// Batch normalisation kernels: the arithmetic of nn::batch_norm, per channel.
//
// Layout: x, xhat, y, dy, dx are (batch, channels, plane) row-major: NCHW with plane = H*W, or
// (N, F) with plane = 1. Per-channel arrays (mean, var, inv_std, gamma, beta, ...) have
// `channels` entries. m = batch * plane values per channel.
//   batch_norm_running_update: running_mean = (1 - momentum) running_mean + momentum mean
//                              running_var  = (1 - momentum) running_var + momentum var unbias
//                              (unbias = m / (m - 1) in training; the caller passes it)
//   batch_norm_fprop : inv_std = 1 / sqrt(var + eps)
//                      xhat = (x - mean) inv_std,   y = gamma xhat + beta
//                      (xhat may be null: not stored; the backward kernels then recompute it)
//   batch_norm_train_fprop: mean, var = channel_mean_var(x) (kernels/elementwise.hpp), then
//                      batch_norm_fprop, channel by channel (the channel still in cache)
//   batch_norm_bprop : sum_dy = sum dy,  sum_dy_xhat = sum dy xhat (over the channel's m values)
//                      dgamma += sum_dy_xhat,  dbeta += sum_dy             (ACCUMULATE)
//                      batch statistics: dx = gamma inv_std / m (m dy - sum_dy - xhat sum_dy_xhat)
//                      running statistics (eval): dx = gamma inv_std dy
//   batch_norm_grad_sums: the two sums of batch_norm_bprop alone (written, not accumulated)
//   batch_norm_dgrad   : dx of batch_norm_bprop from given sums and count m (synchronised
//                        batch norm passes the global batch's: nn/batch_norm_sync.hpp);
//                        batch_norm_bprop is batch_norm_grad_sums, then batch_norm_dgrad, bit
//                        for bit, run channel by channel while the channel is in cache
// Fused with a following ReLU (nn::batch_norm::forward_relu, nn/sequential.hpp):
//   batch_norm_relu_fprop    : as batch_norm_fprop, then y = (y <= 0 ? 0 : y) (relu_fprop's
//                              formula, kernels/elementwise.hpp) in the same pass
//   batch_norm_relu_train_fprop: as batch_norm_train_fprop, with the ReLU in the same way
//   batch_norm_add_relu_fprop, batch_norm_add_relu_train_fprop: y = max(0, bn(x) + skip), skip
//                              of x's layout (a residual block's last batch norm, the shortcut's
//                              sum and the ReLU after it: nn/residual.hpp); the backward is the
//                              plain one (the caller masks dy by y > 0 and passes it on to both
//                              branches). The same bits as bn, the addition, then relu.
//   batch_norm_relu_grad_sums, batch_norm_relu_dgrad, batch_norm_relu_bprop: as the unfused
//                              kernels with dy replaced by the ReLU's backward, (y > 0 ? dy : 0),
//                              y the fused output (relu_bprop's mask; the pre-ReLU value is
//                              > 0 exactly where y is). The same bits as bn, then relu.
// The backward kernels read xhat through a batch_norm_xhat<T>: the values the forward stored, or
// the forward's input x with its mean and inv_std, from which they recompute
// xhat = (x - mean) inv_std, the forward's formula and rounding, so the same bits as the stored
// xhat. nn::batch_norm does the latter: the forward then writes y alone, one store pass less
// over the activations (the backward reads x where it read xhat: the same traffic). The
// overloads taking `const T* xhat` are the stored case.
// The two sums of a channel are SIMD: lane l accumulates the plane positions k = l (mod lanes)
// of the images in order, a scalar the tail positions; the lanes are then summed in order and the
// tail added (batch_norm_grad_sums_group). So their bits depend on the SIMD width (the SSE2, AVX2
// and AVX-512 builds differ in the last bits, as channel_mean_var's), not on the thread count;
// the reference sums in index order (tests compare with a tolerance). dy xhat is an explicit
// fused multiply-add. The other elementwise passes are SIMD over simd_batch<T> with scalar tails
// and compute each element exactly as the scalar formula (no fused multiply-add). From
// batch_norm_parallel_min() values on, every kernel splits the channels into contiguous runs, one
// per OpenMP thread (kernels/parallel.hpp); a channel is always computed by one thread in the same
// order, so the result is the same bits on any number of threads. Reference twins:
// kernels/ref/batch_norm.hpp.
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/elementwise.hpp>
#include <bitgrad/kernels/parallel.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

namespace bitgrad {

namespace detail {
/// f(batch offset) over whole SIMD batches of [0, n), then fs(index) over the tail.
template <class T, class FV, class FS>
inline void batch_norm_plane_loop(std::size_t n, FV&& fv, FS&& fs) {
  std::size_t i = 0;
  if constexpr (BITGRAD_HAS_SIMD) {
    for (; i + simd_lanes<T> <= n; i += simd_lanes<T>) fv(i);
  }
  for (; i < n; ++i) fs(i);
}

/// m[k] = (y[k] > 0 ? dy[k] : 0) for k in [0, n): the ReLU's backward, relu_bprop's formula.
/// The fused dgrad masks a plane into a buffer (in cache) and then runs the unfused code on
/// it: a select inside dx's formula would let the compiler contract a * b + c differently
/// from the unfused kernel under -march=native (-ffp-contract=fast), changing the bits. (The
/// sums mask in their loop: their one product is an explicit fused multiply-add.)
template <class T>
inline void relu_mask_plane(std::size_t n, const T* dy, const T* y, T* m) {
  batch_norm_plane_loop<T>(
      n,
      [&](std::size_t k) {
        using B = simd_batch<T>;
        xsimd::select(B::load_unaligned(y + k) > B(T(0)), B::load_unaligned(dy + k), B(T(0)))
            .store_unaligned(m + k);
      },
      [&](std::size_t k) { m[k] = y[k] > T(0) ? dy[k] : T(0); });
}

/// xhat of channel c at offset `off` of the (batch, channels, plane) layout, read back (Stored)
/// or recomputed from x as the forward computed it: h = (x - mean) inv_std.
template <bool Stored, class T>
struct batch_norm_xhat_plane {
  const T* p; ///< xhat + off (Stored) or x + off
  T mean, inv_std;

  simd_batch<T> load(std::size_t k) const {
    using B = simd_batch<T>;
    if constexpr (Stored)
      return B::load_unaligned(p + k);
    else
      return (B::load_unaligned(p + k) - B(mean)) * B(inv_std);
  }
  T operator[](std::size_t k) const {
    if constexpr (Stored)
      return p[k];
    else
      return (p[k] - mean) * inv_std;
  }
};
} // namespace detail

/// Where the backward kernels find xhat (see the top): `xhat` if not null, else recomputed from
/// the forward's input `x`, `mean` and `inv_std` (batch_norm_fprop's operands and output).
template <class T>
struct batch_norm_xhat {
  const T* xhat = nullptr;
  const T* x = nullptr;
  const T* mean = nullptr;
  const T* inv_std = nullptr;
};

namespace detail {
template <bool Stored, class T>
inline batch_norm_xhat_plane<Stored, T> xhat_plane(const batch_norm_xhat<T>& src, std::size_t c,
                                                   std::size_t off) {
  if constexpr (Stored)
    return {src.xhat + off, T(0), T(0)};
  else
    return {src.x + off, src.mean[c], src.inv_std[c]};
}

/// One plane of the forward: h = (x - m) is, y = g h + b (then y + s with s the skip plane
/// sc if Add, then max(0, y) if Relu); h stored if StoreXhat.
template <bool Relu, bool StoreXhat, bool Add, class T>
inline void batch_norm_normalize_plane(std::size_t plane, const T* xc, T m, T is, T g, T b,
                                       const T* sc, T* hc, T* yc) {
  batch_norm_plane_loop<T>(
      plane,
      [&](std::size_t k) {
        using B = simd_batch<T>;
        const B h = (B::load_unaligned(xc + k) - B(m)) * B(is);
        if constexpr (StoreXhat) h.store_unaligned(hc + k);
        B v = B(g) * h + B(b);
        if constexpr (Add) v = v + B::load_unaligned(sc + k);
        if constexpr (Relu)
          xsimd::select(v <= B(T(0)), B(T(0)), v).store_unaligned(yc + k);
        else
          v.store_unaligned(yc + k);
      },
      [&](std::size_t k) {
        const T h = (xc[k] - m) * is;
        if constexpr (StoreXhat) hc[k] = h;
        T v = g * h + b;
        if constexpr (Add) v = v + sc[k];
        if constexpr (Relu)
          yc[k] = v <= T(0) ? T(0) : v;
        else
          yc[k] = v;
      });
}

template <bool Relu, bool StoreXhat, bool Add, class T>
void batch_norm_fprop_impl(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                           const T* skip, const T* mean, const T* var, T eps, const T* gamma,
                           const T* beta, T* inv_std, T* xhat, T* y) {
  for (std::size_t c = 0; c < channels; ++c) inv_std[c] = T(1) / std::sqrt(var[c] + eps);
  batch_norm_channel_runs(batch, channels, plane, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t off = (n * channels + c) * plane;
        batch_norm_normalize_plane<Relu, StoreXhat, Add>(
            plane, x + off, mean[c], inv_std[c], gamma[c], beta[c], Add ? skip + off : nullptr,
            StoreXhat ? xhat + off : nullptr, y + off);
      }
  });
}

/// channel_mean_var, then batch_norm_fprop, one channel at a time: the channel's statistics
/// passes leave its values in cache for the normalisation (a channel of the 16-channel ResNet-20
/// layers at batch 128 is 128 x 784 floats, 401 KB), where the two kernels one after the other
/// read all of x from memory once more. The same arithmetic per value, so the same bits.
template <bool Relu, bool StoreXhat, bool Add, class T>
void batch_norm_train_fprop_impl(std::size_t batch, std::size_t channels, std::size_t plane,
                                 const T* x, const T* skip, T eps, const T* gamma, const T* beta,
                                 T* mean, T* var, T* inv_std, T* xhat, T* y) {
  check_channel_count(batch, plane);
  batch_norm_channel_runs(batch, channels, plane, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      channel_mean_var_of(batch, channels, plane, x, c, mean[c], var[c]);
      inv_std[c] = T(1) / std::sqrt(var[c] + eps);
      for (std::size_t n = 0; n < batch; ++n) {
        const std::size_t off = (n * channels + c) * plane;
        batch_norm_normalize_plane<Relu, StoreXhat, Add>(
            plane, x + off, mean[c], inv_std[c], gamma[c], beta[c], Add ? skip + off : nullptr,
            StoreXhat ? xhat + off : nullptr, y + off);
      }
    }
  });
}

template <bool Relu, bool Add = false, class T>
void batch_norm_train_fprop_dispatch(std::size_t batch, std::size_t channels, std::size_t plane,
                                     const T* x, T eps, const T* gamma, const T* beta, T* mean,
                                     T* var, T* inv_std, T* xhat, T* y, const T* skip = nullptr) {
  if (xhat != nullptr)
    batch_norm_train_fprop_impl<Relu, true, Add>(batch, channels, plane, x, skip, eps, gamma, beta,
                                                 mean, var, inv_std, xhat, y);
  else
    batch_norm_train_fprop_impl<Relu, false, Add>(batch, channels, plane, x, skip, eps, gamma, beta,
                                                  mean, var, inv_std, xhat, y);
}

template <bool Relu, bool Add = false, class T>
void batch_norm_fprop_dispatch(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* x, const T* mean, const T* var, T eps, const T* gamma,
                               const T* beta, T* inv_std, T* xhat, T* y, const T* skip = nullptr) {
  if (xhat != nullptr)
    batch_norm_fprop_impl<Relu, true, Add>(batch, channels, plane, x, skip, mean, var, eps, gamma,
                                           beta, inv_std, xhat, y);
  else
    batch_norm_fprop_impl<Relu, false, Add>(batch, channels, plane, x, skip, mean, var, eps, gamma,
                                            beta, inv_std, xhat, y);
}

/// Sums of G (1..4) channels c..c+G-1 side by side (independent chains that hide the add
/// latency): sum_dy = sum d, sum_dy_xhat = sum d h with d = dy (Relu: y > 0 ? dy : 0) and h
/// the xhat, over n in order and k. SIMD lane l accumulates the plane positions k = l (mod
/// lanes) of every image in order, a scalar the tail positions; the result is the lanes summed
/// in order, plus the tail. The product is an explicit fused multiply-add (std::fma in the
/// tail), so no compiler contraction can make the fused-ReLU and the plain kernels differ.
template <bool Relu, bool Stored, std::size_t G, class T>
inline void batch_norm_grad_sums_group(std::size_t batch, std::size_t channels, std::size_t plane,
                                       std::size_t c, const T* dy, const batch_norm_xhat<T>& xhat,
                                       const T* y, T* sum_dy, T* sum_dy_xhat) {
  using B = simd_batch<T>;
  B vs[G], vsh[G];
  T s[G] = {}, sh[G] = {};
  for (std::size_t j = 0; j < G; ++j) vs[j] = vsh[j] = B(T(0));
  for (std::size_t n = 0; n < batch; ++n) {
    const std::size_t off = (n * channels + c) * plane;
    const T* d[G];
    const T* mask[G]; // the fused ReLU's output (Relu only)
    batch_norm_xhat_plane<Stored, T> h[G];
    for (std::size_t j = 0; j < G; ++j) {
      const std::size_t o = off + j * plane;
      d[j] = dy + o;
      mask[j] = Relu ? y + o : nullptr;
      h[j] = xhat_plane<Stored>(xhat, c + j, o);
    }
    std::size_t k = 0;
    if constexpr (BITGRAD_HAS_SIMD) {
      for (; k + B::size <= plane; k += B::size)
        for (std::size_t j = 0; j < G; ++j) {
          B dv = B::load_unaligned(d[j] + k);
          if constexpr (Relu)
            dv = xsimd::select(B::load_unaligned(mask[j] + k) > B(T(0)), dv, B(T(0)));
          vs[j] += dv;
          vsh[j] = xsimd::fma(dv, h[j].load(k), vsh[j]);
        }
    }
    for (; k < plane; ++k)
      for (std::size_t j = 0; j < G; ++j) {
        T dv = d[j][k];
        if constexpr (Relu) dv = mask[j][k] > T(0) ? dv : T(0);
        s[j] += dv;
        sh[j] = std::fma(dv, h[j][k], sh[j]);
      }
  }
  for (std::size_t j = 0; j < G; ++j) {
    if constexpr (BITGRAD_HAS_SIMD) {
      sum_dy[c + j] = lane_sum(vs[j]) + s[j];
      sum_dy_xhat[c + j] = lane_sum(vsh[j]) + sh[j];
    } else {
      sum_dy[c + j] = s[j];
      sum_dy_xhat[c + j] = sh[j];
    }
  }
}

template <bool Relu, bool Stored, class T>
void batch_norm_grad_sums_impl(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* dy, const batch_norm_xhat<T>& xhat, const T* y, T* sum_dy,
                               T* sum_dy_xhat) {
  batch_norm_channel_runs(batch, channels, plane, [&](std::size_t c0, std::size_t c1) {
    std::size_t c = c0;
    for (; c + 4 <= c1; c += 4)
      batch_norm_grad_sums_group<Relu, Stored, 4>(batch, channels, plane, c, dy, xhat, y, sum_dy,
                                                  sum_dy_xhat);
    for (; c < c1; ++c)
      batch_norm_grad_sums_group<Relu, Stored, 1>(batch, channels, plane, c, dy, xhat, y, sum_dy,
                                                  sum_dy_xhat);
  });
}

/// dx of channel c (batch_norm_dgrad's formula), image by image in order, or from the last
/// image to the first when Reverse: right after the channel's sums have read it, the end of the
/// channel is what the cache still holds (the same values either way; each element is computed
/// alone).
template <bool Relu, bool Stored, bool Reverse, class T>
inline void batch_norm_dgrad_channel(std::size_t batch, std::size_t channels, std::size_t plane,
                                     std::size_t c, const T* dy, const batch_norm_xhat<T>& xhat,
                                     const T* y, const T* gamma, const T* inv_std, T count,
                                     const T* sum_dy, const T* sum_dy_xhat, bool batch_stats,
                                     T* dx) {
  const T gs = gamma[c] * inv_std[c];
  const T scale = gs / count;
  const T s = sum_dy[c], sh = sum_dy_xhat[c];
  for (std::size_t i = 0; i < batch; ++i) {
    const std::size_t n = Reverse ? batch - 1 - i : i;
    const std::size_t off = (n * channels + c) * plane;
    const T* d = dy + off;
    const batch_norm_xhat_plane<Stored, T> h = xhat_plane<Stored>(xhat, c, off);
    T* o = dx + off;
    if constexpr (Relu) { // dx's plane holds the masked dy first (see relu_mask_plane)
      relu_mask_plane(plane, d, y + off, o);
      d = o;
    }
    using B = simd_batch<T>;
    if (batch_stats)
      batch_norm_plane_loop<T>(
          plane,
          [&](std::size_t k) {
            const B v = B(scale) * (B(count) * B::load_unaligned(d + k) - B(s) - h.load(k) * B(sh));
            v.store_unaligned(o + k);
          },
          [&](std::size_t k) { o[k] = scale * (count * d[k] - s - h[k] * sh); });
    else
      batch_norm_plane_loop<T>(
          plane, [&](std::size_t k) { (B(gs) * B::load_unaligned(d + k)).store_unaligned(o + k); },
          [&](std::size_t k) { o[k] = gs * d[k]; });
  }
}

template <bool Relu, bool Stored, class T>
void batch_norm_dgrad_impl(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const batch_norm_xhat<T>& xhat, const T* y, const T* gamma,
                           const T* inv_std, T count, const T* sum_dy, const T* sum_dy_xhat,
                           bool batch_stats, T* dx) {
  batch_norm_channel_runs(batch, channels, plane, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c)
      batch_norm_dgrad_channel<Relu, Stored, false>(batch, channels, plane, c, dy, xhat, y, gamma,
                                                    inv_std, count, sum_dy, sum_dy_xhat,
                                                    batch_stats, dx);
  });
}

/// Bytes of the backward's operands that one group of 4 channels may read before its dx pass
/// reads them again, for that pass to find them in cache: half of a 1 MiB L2 (the rest holds
/// what dx writes). Past it the backward goes one channel at a time.
inline constexpr std::size_t batch_norm_bprop_group_bytes = std::size_t(1) << 19;

/// batch_norm_grad_sums, then batch_norm_dgrad, channel by channel (4 channels at a time when
/// their operands fit batch_norm_bprop_group_bytes): the sums read a channel's dy and x (and y),
/// and dx reads them again at once, from the last image back (batch_norm_dgrad_channel), while
/// the cache still holds most of them; the two whole passes one after the other read all of
/// them from memory twice (at batch 128 a channel of ResNet-20's 16 x 28 x 28 layers is 401 KB
/// per array, the layer 6.4 MB). Each channel's sums are those of batch_norm_grad_sums (a group
/// of G channels sums each channel in its own accumulators) and each dx element is computed
/// alone, so the same bits as the two kernels.
template <bool Relu, bool Stored, class T>
void batch_norm_bprop_impl(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const batch_norm_xhat<T>& xhat, const T* y, const T* gamma,
                           const T* inv_std, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  std::vector<T> sums(2 * channels);
  T* sum_dy = sums.data();
  T* sum_dy_xhat = sums.data() + channels;
  const T count = T(batch * plane);
  const std::size_t arrays = Relu ? 3 : 2; // dy, x or xhat (, y)
  const bool groups = 4 * arrays * batch * plane * sizeof(T) <= batch_norm_bprop_group_bytes;
  batch_norm_channel_runs(batch, channels, plane, [&](std::size_t c0, std::size_t c1) {
    std::size_t c = c0;
    auto dgrad = [&](std::size_t first, std::size_t last) {
      for (std::size_t j = first; j < last; ++j)
        batch_norm_dgrad_channel<Relu, Stored, true>(batch, channels, plane, j, dy, xhat, y, gamma,
                                                     inv_std, count, sum_dy, sum_dy_xhat,
                                                     batch_stats, dx);
    };
    if (groups)
      for (; c + 4 <= c1; c += 4) {
        batch_norm_grad_sums_group<Relu, Stored, 4>(batch, channels, plane, c, dy, xhat, y, sum_dy,
                                                    sum_dy_xhat);
        dgrad(c, c + 4);
      }
    for (; c < c1; ++c) {
      batch_norm_grad_sums_group<Relu, Stored, 1>(batch, channels, plane, c, dy, xhat, y, sum_dy,
                                                  sum_dy_xhat);
      dgrad(c, c + 1);
    }
  });
  for (std::size_t c = 0; c < channels; ++c) {
    dgamma[c] += sum_dy_xhat[c];
    dbeta[c] += sum_dy[c];
  }
}

/// f.template operator()<Stored>(): the backward kernels instantiated for where xhat comes from.
template <class T, class F>
void with_xhat_source(const batch_norm_xhat<T>& xhat, F&& f) {
  if (xhat.xhat != nullptr)
    f.template operator()<true>();
  else
    f.template operator()<false>();
}
} // namespace detail

template <class T>
void batch_norm_running_update(std::size_t channels, T momentum, T unbias, const T* mean,
                               const T* var, T* running_mean, T* running_var) {
  for (std::size_t c = 0; c < channels; ++c) {
    running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = (T(1) - momentum) * running_var[c] + momentum * var[c] * unbias;
  }
}

/// xhat may be null (not stored: see the top).
template <class T>
void batch_norm_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                      const T* mean, const T* var, T eps, const T* gamma, const T* beta, T* inv_std,
                      T* xhat, T* y) {
  detail::batch_norm_fprop_dispatch<false>(batch, channels, plane, x, mean, var, eps, gamma, beta,
                                           inv_std, xhat, y);
}

/// batch_norm_fprop, then y = max(0, y) (relu_fprop's formula) in the same pass.
template <class T>
void batch_norm_relu_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                           const T* mean, const T* var, T eps, const T* gamma, const T* beta,
                           T* inv_std, T* xhat, T* y) {
  detail::batch_norm_fprop_dispatch<true>(batch, channels, plane, x, mean, var, eps, gamma, beta,
                                          inv_std, xhat, y);
}

/// The training forward: mean, var = channel_mean_var(x), then batch_norm_fprop with them, one
/// channel at a time while its values are in cache; the same bits as the two calls. xhat may
/// be null (not stored).
template <class T>
void batch_norm_train_fprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* x,
                            T eps, const T* gamma, const T* beta, T* mean, T* var, T* inv_std,
                            T* xhat, T* y) {
  detail::batch_norm_train_fprop_dispatch<false>(batch, channels, plane, x, eps, gamma, beta, mean,
                                                 var, inv_std, xhat, y);
}

/// batch_norm_train_fprop, then y = max(0, y): channel_mean_var, then batch_norm_relu_fprop.
template <class T>
void batch_norm_relu_train_fprop(std::size_t batch, std::size_t channels, std::size_t plane,
                                 const T* x, T eps, const T* gamma, const T* beta, T* mean, T* var,
                                 T* inv_std, T* xhat, T* y) {
  detail::batch_norm_train_fprop_dispatch<true>(batch, channels, plane, x, eps, gamma, beta, mean,
                                                var, inv_std, xhat, y);
}

/// batch_norm_fprop, then y = max(0, y + skip) in the same pass (skip has x's layout): the
/// last batch norm of a residual block, the shortcut's sum and the ReLU after it (nn/residual.hpp).
/// The same bits as batch_norm_fprop, then the addition, then relu_fprop.
template <class T>
void batch_norm_add_relu_fprop(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* x, const T* skip, const T* mean, const T* var, T eps,
                               const T* gamma, const T* beta, T* inv_std, T* xhat, T* y) {
  detail::batch_norm_fprop_dispatch<true, true>(batch, channels, plane, x, mean, var, eps, gamma,
                                                beta, inv_std, xhat, y, skip);
}

/// batch_norm_train_fprop, then y = max(0, y + skip) in the same pass (as
/// batch_norm_add_relu_fprop).
template <class T>
void batch_norm_add_relu_train_fprop(std::size_t batch, std::size_t channels, std::size_t plane,
                                     const T* x, const T* skip, T eps, const T* gamma,
                                     const T* beta, T* mean, T* var, T* inv_std, T* xhat, T* y) {
  detail::batch_norm_train_fprop_dispatch<true, true>(batch, channels, plane, x, eps, gamma, beta,
                                                      mean, var, inv_std, xhat, y, skip);
}

template <class T>
void batch_norm_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                          const batch_norm_xhat<T>& xhat, T* sum_dy, T* sum_dy_xhat) {
  detail::with_xhat_source(xhat, [&]<bool Stored>() {
    detail::batch_norm_grad_sums_impl<false, Stored>(
        batch, channels, plane, dy, xhat, static_cast<const T*>(nullptr), sum_dy, sum_dy_xhat);
  });
}

/// batch_norm_grad_sums of the masked dy (y > 0 ? dy : 0); y is batch_norm_relu_fprop's output.
template <class T>
void batch_norm_relu_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* dy, const batch_norm_xhat<T>& xhat, const T* y, T* sum_dy,
                               T* sum_dy_xhat) {
  detail::with_xhat_source(xhat, [&]<bool Stored>() {
    detail::batch_norm_grad_sums_impl<true, Stored>(batch, channels, plane, dy, xhat, y, sum_dy,
                                                    sum_dy_xhat);
  });
}

template <class T>
void batch_norm_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const batch_norm_xhat<T>& xhat, const T* gamma, const T* inv_std, T count,
                      const T* sum_dy, const T* sum_dy_xhat, bool batch_stats, T* dx) {
  detail::with_xhat_source(xhat, [&]<bool Stored>() {
    detail::batch_norm_dgrad_impl<false, Stored>(batch, channels, plane, dy, xhat,
                                                 static_cast<const T*>(nullptr), gamma, inv_std,
                                                 count, sum_dy, sum_dy_xhat, batch_stats, dx);
  });
}

/// batch_norm_dgrad of the masked dy (y > 0 ? dy : 0).
template <class T>
void batch_norm_relu_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const batch_norm_xhat<T>& xhat, const T* y, const T* gamma,
                           const T* inv_std, T count, const T* sum_dy, const T* sum_dy_xhat,
                           bool batch_stats, T* dx) {
  detail::with_xhat_source(xhat, [&]<bool Stored>() {
    detail::batch_norm_dgrad_impl<true, Stored>(batch, channels, plane, dy, xhat, y, gamma, inv_std,
                                                count, sum_dy, sum_dy_xhat, batch_stats, dx);
  });
}

template <class T>
void batch_norm_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const batch_norm_xhat<T>& xhat, const T* gamma, const T* inv_std,
                      bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  detail::with_xhat_source(xhat, [&]<bool Stored>() {
    detail::batch_norm_bprop_impl<false, Stored>(batch, channels, plane, dy, xhat,
                                                 static_cast<const T*>(nullptr), gamma, inv_std,
                                                 batch_stats, dx, dgamma, dbeta);
  });
}

/// batch_norm_bprop of the masked dy (y > 0 ? dy : 0); y is batch_norm_relu_fprop's output.
template <class T>
void batch_norm_relu_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const batch_norm_xhat<T>& xhat, const T* y, const T* gamma,
                           const T* inv_std, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  detail::with_xhat_source(xhat, [&]<bool Stored>() {
    detail::batch_norm_bprop_impl<true, Stored>(batch, channels, plane, dy, xhat, y, gamma, inv_std,
                                                batch_stats, dx, dgamma, dbeta);
  });
}

// The same kernels with the stored xhat (not null).
template <class T>
void batch_norm_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                          const T* xhat, T* sum_dy, T* sum_dy_xhat) {
  batch_norm_grad_sums(batch, channels, plane, dy, batch_norm_xhat<T>{xhat}, sum_dy, sum_dy_xhat);
}
template <class T>
void batch_norm_relu_grad_sums(std::size_t batch, std::size_t channels, std::size_t plane,
                               const T* dy, const T* xhat, const T* y, T* sum_dy, T* sum_dy_xhat) {
  batch_norm_relu_grad_sums(batch, channels, plane, dy, batch_norm_xhat<T>{xhat}, y, sum_dy,
                            sum_dy_xhat);
}
template <class T>
void batch_norm_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const T* xhat, const T* gamma, const T* inv_std, T count, const T* sum_dy,
                      const T* sum_dy_xhat, bool batch_stats, T* dx) {
  batch_norm_dgrad(batch, channels, plane, dy, batch_norm_xhat<T>{xhat}, gamma, inv_std, count,
                   sum_dy, sum_dy_xhat, batch_stats, dx);
}
template <class T>
void batch_norm_relu_dgrad(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const T* xhat, const T* y, const T* gamma, const T* inv_std, T count,
                           const T* sum_dy, const T* sum_dy_xhat, bool batch_stats, T* dx) {
  batch_norm_relu_dgrad(batch, channels, plane, dy, batch_norm_xhat<T>{xhat}, y, gamma, inv_std,
                        count, sum_dy, sum_dy_xhat, batch_stats, dx);
}
template <class T>
void batch_norm_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                      const T* xhat, const T* gamma, const T* inv_std, bool batch_stats, T* dx,
                      T* dgamma, T* dbeta) {
  batch_norm_bprop(batch, channels, plane, dy, batch_norm_xhat<T>{xhat}, gamma, inv_std,
                   batch_stats, dx, dgamma, dbeta);
}
template <class T>
void batch_norm_relu_bprop(std::size_t batch, std::size_t channels, std::size_t plane, const T* dy,
                           const T* xhat, const T* y, const T* gamma, const T* inv_std,
                           bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  batch_norm_relu_bprop(batch, channels, plane, dy, batch_norm_xhat<T>{xhat}, y, gamma, inv_std,
                        batch_stats, dx, dgamma, dbeta);
}

} // namespace bitgrad
