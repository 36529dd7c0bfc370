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
// A rank with an empty slice (N_r = 0) must still call both (they are collectives): it
// contributes zeros and gets zeros back for its (absent) dx.
#pragma once

#include <bitgrad/dist/communicator.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

namespace bitgrad::dist {

/// Per-channel mean and biased variance of the global batch, and M.
struct channel_moments {
  std::vector<double> mean, var;
  double count = 0; ///< M: values per channel over all ranks
};

/// This rank's sums for channel_moments: [S_0..S_{C-1}, Q_0..Q_{C-1}, batch * plane].
/// shift: C values, or nullptr for k = 0.
template <class T>
std::vector<double> channel_shifted_sums(std::size_t batch, std::size_t channels, std::size_t plane,
                                         const T* x, const T* shift) {
  std::vector<double> sums(2 * channels + 1, 0.0);
  for (std::size_t i = 0; i < batch; ++i)
    for (std::size_t c = 0; c < channels; ++c) {
      const double k = shift ? static_cast<double>(shift[c]) : 0.0;
      const T* row = x + (i * channels + c) * plane;
      double s = 0, q = 0;
      for (std::size_t j = 0; j < plane; ++j) {
        const double d = static_cast<double>(row[j]) - k;
        s += d;
        q += d * d;
      }
      sums[c] += s;
      sums[channels + c] += q;
    }
  sums[2 * channels] = static_cast<double>(batch * plane);
  return sums;
}

/// Moments from summed channel_shifted_sums (see the top of this header).
template <class T>
channel_moments moments_from_sums(std::span<const double> sums, std::size_t channels,
                                  const T* shift) {
  channel_moments m;
  m.count = sums[2 * channels];
  m.mean.resize(channels);
  m.var.resize(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    const double k = shift ? static_cast<double>(shift[c]) : 0.0;
    const double s = m.count > 0 ? sums[c] / m.count : 0.0;
    m.mean[c] = k + s;
    m.var[c] = m.count > 0 ? std::max(0.0, sums[channels + c] / m.count - s * s) : 0.0;
  }
  return m;
}

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
/// and its weight w_r = N_r / N. Collective.
template <class T>
channel_grad_sums sync_batch_norm_grad_sums(const communicator& comm, std::size_t batch,
                                            std::size_t channels, std::size_t plane, const T* dy,
                                            const T* xhat, double weight) {
  std::vector<double> sums(2 * channels, 0.0);
  for (std::size_t i = 0; i < batch; ++i)
    for (std::size_t c = 0; c < channels; ++c) {
      const std::size_t off = (i * channels + c) * plane;
      double s = 0, sh = 0;
      for (std::size_t j = 0; j < plane; ++j) {
        s += static_cast<double>(dy[off + j]);
        sh += static_cast<double>(dy[off + j]) * static_cast<double>(xhat[off + j]);
      }
      sums[c] += weight * s;
      sums[channels + c] += weight * sh;
    }
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
