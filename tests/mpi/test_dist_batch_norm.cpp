// Synchronised batch-norm math on arrays (double): each rank holds a slice of a global batch;
// the synchronised moments equal the statistics over the union, and the output and dL/dx
// built from the synchronised sums with nn::batch_norm's own formulas equal what
// nn::batch_norm<double, 4> computes on the whole batch in one process (the reference), as
// do the gamma and beta gradients after the reducer's weighting. Unequal slices (7 images on
// 2 or 3 ranks) and a large channel mean (the shift at work) included.
#include <bitgrad/data/loader.hpp>
#include <bitgrad/dist/sync_batch_norm.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/sequential.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace test_dist_batch_norm {

using namespace bitgrad;

namespace {

constexpr std::size_t C = 3, H = 4, W = 5, plane = H * W;

/// Global batch (N, C, H, W): channel c ~ offset[c] + spread * normal.
tensor4<double> global_input(std::size_t n, double offset_scale, std::uint64_t seed) {
  tensor4<double> x = tensor4<double>::from_shape({n, C, H, W});
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t k = 0; k < plane; ++k)
        x.data()[(i * C + c) * plane + k] =
            offset_scale * static_cast<double>(c + 1) + 0.5 * static_cast<double>(c + 1) * g(rng);
  return x;
}

/// Two-pass reference moments over the whole batch, in long double.
void reference_moments(const tensor4<double>& x, std::vector<double>& mean,
                       std::vector<double>& var) {
  const std::size_t n = x.shape(0);
  mean.assign(C, 0);
  var.assign(C, 0);
  for (std::size_t c = 0; c < C; ++c) {
    long double s = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < plane; ++k) s += x.data()[(i * C + c) * plane + k];
    const long double m = s / static_cast<long double>(n * plane);
    long double q = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < plane; ++k) {
        const long double d = x.data()[(i * C + c) * plane + k] - m;
        q += d * d;
      }
    mean[c] = static_cast<double>(m);
    var[c] = static_cast<double>(q / static_cast<long double>(n * plane));
  }
}

/// A loss weight per value: `a` (N, C, H, W) uniform in [-1, 1) from seed; the global loss is
/// the mean over the batch of sum(a * y), so dL/dy = a / n.
tensor4<double> loss_weights(std::size_t n, std::uint64_t seed) {
  tensor4<double> a = tensor4<double>::from_shape({n, C, H, W});
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  for (auto& v : a) v = u(rng);
  return a;
}

/// Rank r's slice of the global batch x and its own loss's gradient (the mean over its n_r
/// images: a / n_r); w = n_r / n weights its gradients in the reducer's sum.
struct rank_slice {
  std::size_t offset; ///< of the slice's first value in x
  double w;
  tensor4<double> x, dy;
};

rank_slice slice_of(const tensor4<double>& x, const tensor4<double>& a, std::size_t r,
                    std::size_t p) {
  const std::size_t n = x.shape(0);
  const shard_range s = shard_slice(n, r, p);
  const std::size_t nr = s.size();
  rank_slice out{s.begin * C * plane, static_cast<double>(nr) / static_cast<double>(n),
                 tensor4<double>::from_shape({nr, C, H, W}),
                 tensor4<double>::from_shape({nr, C, H, W})};
  for (std::size_t j = 0; j < out.x.size(); ++j) {
    out.x.data()[j] = x.data()[out.offset + j];
    out.dy.data()[j] = a.data()[out.offset + j] / static_cast<double>(nr);
  }
  return out;
}

/// The ranks' parameter gradients of `mine`, weighted by w and summed over the ranks (what the
/// reducer does), equal those of `whole` (one process on the union).
template <class Mine, class Whole>
void check_reduced_gradients(dist::communicator& comm, Mine& mine, Whole& whole, double w) {
  std::vector<double> got(2 * C), want(2 * C);
  std::size_t i = 0;
  mine.visit_parameters([&](param_ref<double>& q) {
    for (std::size_t c = 0; c < C; ++c) got[i * C + c] = w * q.grad[c];
    ++i;
  });
  i = 0;
  whole.visit_parameters([&](param_ref<double>& q) {
    for (std::size_t c = 0; c < C; ++c) want[i * C + c] = q.grad[c];
    ++i;
  });
  comm.all_reduce_sum(std::span<double>(got));
  for (std::size_t k = 0; k < got.size(); ++k)
    CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-12));
}

} // namespace

TEST_CASE("synchronised moments equal the statistics over the union of the slices") {
  dist::communicator comm;
  const auto p = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  for (const std::size_t n : {std::size_t{8}, std::size_t{7}, std::size_t{12}})
    for (const double offset : {0.0, 1e4}) {
      CAPTURE(n);
      CAPTURE(offset);
      const tensor4<double> x = global_input(n, offset, 99);
      std::vector<double> mean, var;
      reference_moments(x, mean, var);
      const shard_range s = shard_slice(n, r, p);
      const double* mine = x.data() + s.begin * C * plane;
      // The shift: something near the mean, the same on every rank (as a running mean is).
      const std::vector<double> shift = {offset * 1.001, offset * 1.998, offset * 3.01};
      const dist::channel_moments m =
          dist::sync_channel_moments(comm, s.size(), C, plane, mine, shift.data());
      CHECK(m.count == static_cast<double>(n * plane));
      for (std::size_t c = 0; c < C; ++c) {
        CHECK(m.mean[c] == doctest::Approx(mean[c]).epsilon(1e-13));
        CHECK(m.var[c] == doctest::Approx(var[c]).epsilon(1e-9));
      }
      if (offset == 0.0) { // no shift needed without an offset
        const dist::channel_moments plain =
            dist::sync_channel_moments<double>(comm, s.size(), C, plane, mine, nullptr);
        for (std::size_t c = 0; c < C; ++c)
          CHECK(plain.var[c] == doctest::Approx(var[c]).epsilon(1e-12));
      }
    }
}

TEST_CASE("forward and backward from the synchronised sums equal nn::batch_norm on the union") {
  dist::communicator comm;
  const auto p = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  const double eps = 1e-5;
  for (const std::size_t n : {std::size_t{8}, std::size_t{7}}) {
    CAPTURE(n);
    const tensor4<double> x = global_input(n, 0.3, 5);
    const tensor4<double> a = loss_weights(n, 6);

    // Reference: one process, the whole batch.
    nn::batch_norm<double, 4> bn({.features = C, .eps = eps});
    for (std::size_t c = 0; c < C; ++c) {
      bn.gamma()[c] = 0.5 + 0.25 * static_cast<double>(c);
      bn.beta()[c] = -0.1 * static_cast<double>(c);
    }
    const tensor4<double> y_ref = bn.forward(x);
    tensor4<double> dy_ref = a / static_cast<double>(n);
    const tensor4<double> dx_ref = bn.backward(dy_ref);
    std::vector<double> grad_gamma(C), grad_beta(C);
    bn.visit_parameters([&](param_ref<double>& q) {
      std::copy(q.grad, q.grad + q.size,
                q.name == "bn.gamma" ? grad_gamma.begin() : grad_beta.begin());
    });

    // This rank: slice [s.begin, s.end), its own loss is the mean over its n_r images.
    const shard_range s = shard_slice(n, r, p);
    const std::size_t nr = s.size(), off = s.begin * C * plane;
    const double w = static_cast<double>(nr) / static_cast<double>(n);
    const dist::channel_moments m =
        dist::sync_channel_moments(comm, nr, C, plane, x.data() + off, bn.running_mean().data());
    std::vector<double> xhat(nr * C * plane), dy(nr * C * plane);
    for (std::size_t i = 0; i < nr; ++i)
      for (std::size_t c = 0; c < C; ++c)
        for (std::size_t k = 0; k < plane; ++k) {
          const std::size_t j = (i * C + c) * plane + k;
          xhat[j] = (x.data()[off + j] - m.mean[c]) / std::sqrt(m.var[c] + eps);
          dy[j] = a.data()[off + j] / static_cast<double>(nr);
          const double y = bn.gamma()[c] * xhat[j] + bn.beta()[c];
          CHECK(y == doctest::Approx(y_ref.data()[off + j]).epsilon(1e-12));
        }
    const dist::channel_grad_sums g =
        dist::sync_batch_norm_grad_sums(comm, nr, C, plane, dy.data(), xhat.data(), w);
    std::vector<double> local_gamma(C, 0), local_beta(C, 0);
    for (std::size_t i = 0; i < nr; ++i)
      for (std::size_t c = 0; c < C; ++c) {
        const double gs = bn.gamma()[c] / std::sqrt(m.var[c] + eps);
        for (std::size_t k = 0; k < plane; ++k) {
          const std::size_t j = (i * C + c) * plane + k;
          // nn::batch_norm's formula with count = M, sum_dy = G1 / w, sum_dy_xhat = G2 / w.
          const double dx =
              gs / m.count * (m.count * dy[j] - g.sum_dy[c] - xhat[j] * g.sum_dy_xhat[c]);
          // In the global loss's scale (what the reference computed): times w.
          CHECK(w * dx == doctest::Approx(dx_ref.data()[off + j]).epsilon(1e-10));
          local_gamma[c] += dy[j] * xhat[j];
          local_beta[c] += dy[j];
        }
      }
    // The reducer's weighted sum of the local parameter gradients gives the global ones.
    for (std::size_t c = 0; c < C; ++c) {
      local_gamma[c] *= w;
      local_beta[c] *= w;
    }
    comm.all_reduce_sum(std::span<double>(local_gamma));
    comm.all_reduce_sum(std::span<double>(local_beta));
    for (std::size_t c = 0; c < C; ++c) {
      CHECK(local_gamma[c] == doctest::Approx(grad_gamma[c]).epsilon(1e-12));
      CHECK(local_beta[c] == doctest::Approx(grad_beta[c]).epsilon(1e-12));
    }
  }
}

// The layer itself in synchronised mode (nn::batch_norm::set_sync with the communicator's sum):
// each rank forwards and backwards its slice; outputs, running statistics, dL/dx (in the rank's
// loss scale) and the reducer-weighted gamma and beta gradients equal one process on the union.
TEST_CASE("nn::batch_norm with set_sync on slices equals nn::batch_norm on the union") {
  dist::communicator comm;
  const auto p = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  for (const std::size_t n : {std::size_t{8}, std::size_t{7}}) {
    CAPTURE(n);
    const tensor4<double> x = global_input(n, 20.0, 9); // a large mean: the shift at work
    const tensor4<double> a = loss_weights(n, 10);
    auto make = [] {
      nn::batch_norm<double, 4> bn({.features = C});
      for (std::size_t c = 0; c < C; ++c) {
        bn.gamma()[c] = 0.5 + 0.25 * static_cast<double>(c);
        bn.beta()[c] = -0.1 * static_cast<double>(c);
        bn.running_mean()[c] = 19.0 * static_cast<double>(c + 1);
      }
      return bn;
    };
    nn::batch_norm<double, 4> whole = make();
    const tensor4<double> y_ref = whole.forward(x);
    const tensor4<double> dx_ref = whole.backward(tensor4<double>(a / static_cast<double>(n)));

    auto [off, w, xs, dys] = slice_of(x, a, r, p);
    nn::batch_norm<double, 4> mine = make();
    mine.set_sync([&](std::span<double> v) { comm.all_reduce_sum(v); });
    CHECK(mine.synchronised());
    const tensor4<double>& y = mine.forward(xs);
    for (std::size_t j = 0; j < y.size(); ++j)
      CHECK(y.data()[j] == doctest::Approx(y_ref.data()[off + j]).epsilon(1e-12));
    for (std::size_t c = 0; c < C; ++c) {
      CHECK(mine.running_mean()[c] == doctest::Approx(whole.running_mean()[c]).epsilon(1e-12));
      CHECK(mine.running_var()[c] == doctest::Approx(whole.running_var()[c]).epsilon(1e-12));
    }
    const tensor4<double>& dx = mine.backward(dys);
    for (std::size_t j = 0; j < dx.size(); ++j)
      CHECK(w * dx.data()[j] == doctest::Approx(dx_ref.data()[off + j]).epsilon(1e-10));
    check_reduced_gradients(comm, mine, whole, w);
    // Without sync: the slice's own statistics (differs from the union's when p > 1).
    nn::batch_norm<double, 4> local = make();
    const tensor4<double>& yl = local.forward(xs);
    if (p > 1) CHECK(std::abs(yl.data()[0] - y_ref.data()[off]) > 1e-6);
  }
}

// batch_norm + relu fused by nn::sequential (forward_relu: the ReLU mask folded into the
// synchronised backward's sums and dx) on slices equals batch_norm then relu, one layer at a
// time, on the union.
TEST_CASE("fused batch_norm + relu with set_sync on slices equals bn then relu on the union") {
  dist::communicator comm;
  const auto p = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  const std::size_t n = 7;
  const tensor4<double> x = global_input(n, 1.0, 11);
  const tensor4<double> a = loss_weights(n, 12);
  auto make = [] {
    nn::batch_norm<double, 4> bn({.features = C});
    for (std::size_t c = 0; c < C; ++c) {
      bn.gamma()[c] = 0.5 + 0.25 * static_cast<double>(c) - (c == 1 ? 1.5 : 0.0);
      bn.beta()[c] = 0.2 - 0.15 * static_cast<double>(c);
    }
    return nn::sequential(std::move(bn), nn::relu<double, 4>());
  };
  auto whole = make(); // layer by layer: not fused
  const tensor4<double> y_ref = whole.get<1>().forward(whole.get<0>().forward(x));
  const tensor4<double> dx_ref =
      whole.get<0>().backward(whole.get<1>().backward(tensor4<double>(a / static_cast<double>(n))));

  auto [off, w, xs, dys] = slice_of(x, a, r, p);
  auto mine = make();
  mine.get<0>().set_sync([&](std::span<double> v) { comm.all_reduce_sum(v); });
  const tensor4<double>& y = mine.forward(xs); // fused
  CHECK(&mine.get<1>().backward(dys) == &dys); // the relu hands dy on: the pair ran fused
  std::size_t zeros = 0;
  for (std::size_t j = 0; j < y.size(); ++j) {
    zeros += y.data()[j] == 0.0;
    CHECK(y.data()[j] == doctest::Approx(y_ref.data()[off + j]).epsilon(1e-12));
  }
  CHECK(zeros > 0);
  mine.zero_grad();
  const tensor4<double>& dx = mine.backward(dys);
  for (std::size_t j = 0; j < dx.size(); ++j)
    CHECK(w * dx.data()[j] == doctest::Approx(dx_ref.data()[off + j]).epsilon(1e-10));
  check_reduced_gradients(comm, mine, whole, w);
}

} // namespace test_dist_batch_norm
