// Synchronised batch-norm statistics (SyncBatchNorm), the MPI-free part: the per-channel sums a
// process contributes and the global batch's moments from their sum over the processes. The
// layer (nn/batch_norm.hpp: set_sync) passes its own "sum over processes" function;
// dist/sync_batch_norm.hpp wraps the same math around an MPI communicator.
//
// Notation: x is (N_r, C, plane) on process r (plane = H*W, 1 for (N, F)); M = sum_r N_r plane,
// the values per channel in the global batch; k_c a shift, the same on every process (the
// layer's running mean: identical everywhere and close to the mean).
//   S_c = sum_r sum (x - k_c),  Q_c = sum_r sum (x - k_c)^2     (double; per process, then summed)
//   mean_c = k_c + S_c / M,     var_c = Q_c / M - (S_c / M)^2   (biased; clamped at 0)
// The shift keeps Q_c / M - (S_c / M)^2 from cancelling when |mean| >> stddev.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

namespace bitgrad::nn {

/// Per-channel mean and biased variance of the global batch, and M.
struct channel_moments {
  std::vector<double> mean, var;
  double count = 0; ///< M: values per channel over all processes
};

/// This process's sums for channel_moments: [S_0..S_{C-1}, Q_0..Q_{C-1}, batch * plane].
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

} // namespace bitgrad::nn
