// Batch-norm statistics over the global batch (the union of every rank's slice), as PyTorch's
// SyncBatchNorm: what nn::batch_norm calls in training mode when synchronisation is on.
// Without it each rank normalises with the statistics of its own slice (cheaper, but the
// result then depends on the rank count; with per-rank slices of >= 16-32 images the two
// usually train alike).
//
// Notation: x is (N_r, C, plane) on rank r (plane = H*W, 1 for (N, F)); M = sum_r N_r * plane,
// the values per channel in the global batch; k_c a shift, the same on every rank (the
// layer's running mean is a good one: it is identical on all ranks and close to the mean).
//
// Forward (one all-reduce of 2C + 1 doubles):
//   S_c = sum_r sum (x - k_c),  Q_c = sum_r sum (x - k_c)^2     (double; per rank, then summed)
//   mean_c = k_c + S_c / M,     var_c = Q_c / M - (S_c / M)^2   (biased; clamped at 0)
// The shift keeps Q_c / M - (S_c / M)^2 from cancelling when |mean| >> stddev.
// running_var takes var * M / (M - 1), with the global M.
//
// Backward (one all-reduce of 2C doubles). Rank r's loss is the mean over its own N_r images
// and its share of the global loss is w_r = N_r / N (the gradient reducer's weight). With
// xhat = (x - mean) / sqrt(var + eps) and dy the gradient of rank r's own loss:
//   G1_c = sum_r w_r sum dy,    G2_c = sum_r w_r sum dy * xhat
// and the rank continues the backward pass, in its own loss scale, with
//   dx = gamma_c inv_std_c / M * (M dy - G1_c / w_r - xhat * G2_c / w_r)
// which is exactly nn::batch_norm's formula with count := M, sum_dy := G1_c / w_r and
// sum_dy_xhat := G2_c / w_r (what sync_batch_norm_grad_sums returns). The parameter gradients
// stay local sums (grad_gamma += sum dy * xhat, grad_beta += sum dy over the rank's slice):
// the gradient reducer's weighted sum makes them global.
//
// The moments' math is nn/batch_norm_sync.hpp's (MPI-free: the layer's own synchronised mode,
// nn::batch_norm::set_sync, uses it with any "sum over processes" function); the per-rank sums
// of dy and dy * xhat are kernels/batch_norm.hpp's batch_norm_grad_sums.
//
// A rank with an empty slice (N_r = 0) must still call both (they are collectives): it
// contributes zeros and gets zeros back for its (absent) dx.
#pragma once

#include <bitgrad/dist/communicator.hpp>
#include <bitgrad/kernels/batch_norm.hpp>
#include <bitgrad/nn/batch_norm_sync.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

namespace bitgrad::dist {

using nn::channel_moments;
using nn::channel_shifted_sums;
using nn::moments_from_sums;

/// The global batch's per-channel moments from this rank's x (batch, channels, plane).
/// Collective. shift: C values identical on every rank, or nullptr.
template <class T>
channel_moments sync_channel_moments(const communicator& comm, std::size_t batch,
                                     std::size_t channels, std::size_t plane, const T* x,
                                     const T* shift = nullptr) {
  std::vector<double> sums = channel_shifted_sums(batch, channels, plane, x, shift);
  comm.all_reduce_sum(std::span<double>(sums));
  return moments_from_sums(std::span<const double>(sums), channels, shift);
}

/// What batch-norm backward needs from the global batch, in this rank's loss scale.
struct channel_grad_sums {
  std::vector<double> sum_dy;      ///< G1_c / w_r (0 when w_r = 0)
  std::vector<double> sum_dy_xhat; ///< G2_c / w_r
};

/// G1, G2 of the top of this header, from this rank's dy and xhat (batch, channels, plane)
/// and its weight w_r = N_r / N. Collective. relu_y: for a batch norm fused with a following
/// ReLU (kernels/batch_norm.hpp: batch_norm_relu_*), its output, so that dy is masked by
/// relu_y > 0 first; nullptr for none.
template <class T>
channel_grad_sums sync_batch_norm_grad_sums(const communicator& comm, std::size_t batch,
                                            std::size_t channels, std::size_t plane, const T* dy,
                                            const T* xhat, double weight,
                                            const T* relu_y = nullptr) {
  std::vector<T> local(2 * channels);
  if (relu_y != nullptr)
    batch_norm_relu_grad_sums(batch, channels, plane, dy, xhat, relu_y, local.data(),
                              local.data() + channels);
  else
    batch_norm_grad_sums(batch, channels, plane, dy, xhat, local.data(), local.data() + channels);
  std::vector<double> sums(2 * channels);
  for (std::size_t i = 0; i < sums.size(); ++i) sums[i] = weight * static_cast<double>(local[i]);
  comm.all_reduce_sum(std::span<double>(sums));
  channel_grad_sums out;
  out.sum_dy.assign(sums.begin(), sums.begin() + static_cast<std::ptrdiff_t>(channels));
  out.sum_dy_xhat.assign(sums.begin() + static_cast<std::ptrdiff_t>(channels), sums.end());
  for (std::size_t c = 0; c < channels; ++c) {
    out.sum_dy[c] = weight > 0 ? out.sum_dy[c] / weight : 0.0;
    out.sum_dy_xhat[c] = weight > 0 ? out.sum_dy_xhat[c] / weight : 0.0;
  }
  return out;
}

} // namespace bitgrad::dist
