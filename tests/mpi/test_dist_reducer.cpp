// The bucketed gradient reducer on LeNet-5's real parameter set (nn::lenet5<float, frac_bits>:
// weights, biases, bitwidths, scales): the averaged gradients equal the serial weighted sum
// sum_r w_r g_r formed in rank order, bit for bit in the fixed order (any rank count) and in
// MPI's order with 2 ranks; for every bucket size, with and without overlap, whatever order
// the hooks come in. A test double of a backward pass checks when buckets start.
#include <bitgrad/data/loader.hpp>
#include <bitgrad/dist/backward_hook.hpp>
#include <bitgrad/dist/gradient_reducer.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/frac_bits.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace test_dist_reducer {

using namespace bitgrad;

namespace {

using lenet = decltype(nn::lenet5<float, quant::frac_bits>());

/// Rank r's gradient for parameter tensor j: uniform in [-1, 1) times 10^(j % 5 - 2), so the
/// tensors span several magnitudes; seeded by (r, j).
std::vector<float> gradient_of(int rank, std::size_t j, std::size_t size) {
  std::mt19937_64 rng(1000003u * static_cast<std::uint64_t>(rank) + j);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float scale = std::pow(10.0f, static_cast<float>(static_cast<int>(j % 5) - 2));
  std::vector<float> g(size);
  for (auto& v : g) v = u(rng) * scale;
  return g;
}

/// The weights w_r = n_r / b of a global batch of b images cut into p slices.
std::vector<double> weights_of(std::size_t b, int p) {
  std::vector<double> w;
  for (int r = 0; r < p; ++r)
    w.push_back(
        static_cast<double>(
            shard_slice(b, static_cast<std::size_t>(r), static_cast<std::size_t>(p)).size()) /
        static_cast<double>(b));
  return w;
}

/// Fills every gradient of `net` with this rank's values.
void fill_gradients(lenet& net, int rank) {
  std::size_t j = 0;
  net.visit_parameters([&](param_ref<float>& p) {
    const std::vector<float> g = gradient_of(rank, j++, p.size);
    std::copy(g.begin(), g.end(), p.grad);
  });
}

/// sum_r w_r g_r in rank order, in float, as the fixed order forms it; and, per element, the
/// sum of the terms' magnitudes sum_r |w_r g_r| (for the error bound of another order).
struct serial_result {
  std::vector<std::vector<float>> sum;
  std::vector<std::vector<double>> magnitude;
};
serial_result serial_sum(lenet& net, const std::vector<double>& w) {
  serial_result out;
  std::size_t j = 0;
  net.visit_parameters([&](param_ref<float>& p) {
    std::vector<float> s(p.size);
    std::vector<double> m(p.size, 0.0);
    for (std::size_t r = 0; r < w.size(); ++r) {
      const std::vector<float> g = gradient_of(static_cast<int>(r), j, p.size);
      const float wr = static_cast<float>(w[r]);
      for (std::size_t i = 0; i < p.size; ++i) {
        // The product rounded to float before the addition, as the reducer forms it (volatile:
        // no fused multiply-add under -ffp-contract=fast, the default of GNU C++ with FMA).
        volatile float product = wr * g[i];
        s[i] = r == 0 ? product : s[i] + product;
        m[i] += std::abs(static_cast<double>(product));
      }
    }
    out.sum.push_back(std::move(s));
    out.magnitude.push_back(std::move(m));
    ++j;
  });
  return out;
}

/// Counts of elements that differ from the serial sum (bit-exact), and that differ by more
/// than the rounding bound of two p-term float sums in different orders:
/// 2 (p - 1) u sum_r |w_r g_r|, u = 2^-24 (recursive summation's bound, per sum).
struct mismatch {
  std::size_t inexact = 0, beyond = 0;
};
mismatch compare(lenet& net, const serial_result& expect, int p) {
  mismatch m;
  std::size_t j = 0;
  const double u = std::ldexp(1.0, -24);
  net.visit_parameters([&](param_ref<float>& q) {
    for (std::size_t i = 0; i < q.size; ++i) {
      const double e = expect.sum[j][i], g = q.grad[i];
      if (g != e) ++m.inexact;
      if (std::abs(g - e) > 2.0 * (p - 1) * u * expect.magnitude[j][i]) ++m.beyond;
    }
    ++j;
  });
  return m;
}

auto params_of(lenet& net) {
  return [&net](auto&& f) { net.visit_parameters(f); };
}

/// A test double of a layer: two tensors; backward() writes the rank's gradients.
struct fake_layer {
  std::vector<float> w, b, gw, gb;
  std::string name;
  template <class F>
  void visit_parameters(F&& f) {
    param_ref<float> pw{name + ".weight", w.data(), gw.data(), w.size(), param_kind::weight};
    param_ref<float> pb{name + ".bias", b.data(), gb.data(), b.size(), param_kind::bias};
    f(pw);
    f(pb);
  }
  void backward(int rank) {
    for (std::size_t i = 0; i < gw.size(); ++i)
      gw[i] = static_cast<float>(rank + static_cast<int>(i));
    for (std::size_t i = 0; i < gb.size(); ++i) gb[i] = static_cast<float>(2 * rank);
  }
};

} // namespace

TEST_CASE("LeNet-5's gradients: the bucketed all-reduce equals the serial weighted sum") {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 3});
  // Equal slices (b = 64), unequal ones (b = 7), and a tail with an empty slice (b = 1).
  for (const std::size_t b : {std::size_t{64}, std::size_t{7}, std::size_t{1}}) {
    const std::vector<double> w = weights_of(b, p);
    const serial_result expect = serial_sum(net, w);
    for (const auto order : {dist::reduction_order::fixed, dist::reduction_order::mpi})
      for (const std::size_t bucket_bytes :
           {std::size_t{0}, std::size_t{4096}, std::size_t{64} << 10, std::size_t{16} << 20})
        for (const bool overlap : {true, false}) {
          CAPTURE(b);
          CAPTURE(static_cast<int>(order));
          CAPTURE(bucket_bytes);
          CAPTURE(overlap);
          dist::gradient_reducer<float> reducer(
              comm, params_of(net),
              {.bucket_bytes = bucket_bytes, .order = order, .overlap = overlap});
          CHECK(reducer.bytes_per_step() == nn::parameter_count(net) * sizeof(float));
          for (int step = 0; step < 2; ++step) { // the second step reuses the buffers
            fill_gradients(net, r);
            reducer.begin_step(params_of(net), w[static_cast<std::size_t>(r)]);
            if (w[static_cast<std::size_t>(r)] > 0) {
              // Report in reverse visitation order, as backward finishes them.
              std::vector<param_ref<float>> all;
              net.visit_parameters([&](param_ref<float>& q) { all.push_back(q); });
              for (auto it = all.rbegin(); it != all.rend(); ++it) reducer.gradient_ready(*it);
            }
            reducer.finish();
            const mismatch m = compare(net, expect, p);
            if (order == dist::reduction_order::fixed || p == 2)
              CHECK(m.inexact == 0); // bit-identical
            else
              CHECK(m.beyond == 0); // MPI's order, more than two ranks: within rounding
          }
        }
  }
}

TEST_CASE("buckets: reverse visitation order, about bucket_bytes each, tensors never split") {
  dist::communicator comm;
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 3});
  std::vector<std::string> names;
  std::vector<std::size_t> sizes;
  net.visit_parameters([&](param_ref<float>& q) {
    names.push_back(q.name);
    sizes.push_back(q.size);
  });
  std::reverse(names.begin(), names.end());
  std::reverse(sizes.begin(), sizes.end());
  const std::size_t cap = 16 << 10;
  dist::gradient_reducer<float> reducer(comm, params_of(net), {.bucket_bytes = cap});
  CHECK(reducer.names() == names);
  std::size_t next = 0;
  for (const auto& b : reducer.buckets()) {
    CHECK(b.first == next);
    std::size_t elements = 0;
    for (std::size_t i = b.first; i < b.first + b.count; ++i) elements += sizes[i];
    CHECK(b.elements == elements);
    // Closed at the first tensor that brings it to >= cap: without its last tensor it was
    // below the cap.
    CHECK((elements - sizes[b.first + b.count - 1]) * sizeof(float) < cap);
    next = b.first + b.count;
  }
  CHECK(next == names.size());
  CHECK(reducer.buckets().size() > 2);
  CHECK(reducer.buckets().front().first == 0);
  // The last layer (fc3) comes first.
  CHECK(names.front().find("fc3") == 0);
}

// A test double of a network's backward pass: four fake layers of two tensors each; the
// backward of layer k writes its gradients and reports them to the hook, last layer first.
TEST_CASE("the hook starts buckets while backward runs, strictly in bucket order") {
  dist::communicator comm;
  std::vector<fake_layer> layers;
  for (int k = 0; k < 4; ++k)
    layers.push_back({std::vector<float>(100), std::vector<float>(10), std::vector<float>(100),
                      std::vector<float>(10), "layer" + std::to_string(k)});
  auto params = [&](auto&& f) {
    for (auto& l : layers) l.visit_parameters(f);
  };
  const int p = comm.size(), r = comm.rank();
  // One bucket per layer: 100 + 10 floats = 440 bytes >= 400.
  dist::gradient_reducer<float> reducer(comm, params, {.bucket_bytes = 400});
  REQUIRE(reducer.buckets().size() == 4);
  const double w = 1.0 / p;

  SUBCASE("in backward order: bucket k starts as soon as layer 3-k is done") {
    reducer.begin_step(params, w);
    auto hook = reducer.hook();
    for (int k = 3; k >= 0; --k) {
      layers[static_cast<std::size_t>(k)].backward(r);
      layers[static_cast<std::size_t>(k)].visit_parameters(hook);
      CHECK(reducer.started_early() == static_cast<std::size_t>(4 - k));
    }
    reducer.finish();
  }
  SUBCASE("out of order: nothing starts before bucket 0 (the last layer) is complete") {
    reducer.begin_step(params, w);
    auto hook = reducer.hook();
    for (int k : {0, 1, 2}) {
      layers[static_cast<std::size_t>(k)].backward(r);
      layers[static_cast<std::size_t>(k)].visit_parameters(hook);
      CHECK(reducer.started_early() == 0);
    }
    layers[3].backward(r);
    layers[3].visit_parameters(hook);
    CHECK(reducer.started_early() == 4);
    reducer.finish();
  }
  SUBCASE("a partial report: finish() starts the rest") {
    reducer.begin_step(params, w);
    for (auto& l : layers) l.backward(r);
    auto hook = reducer.hook();
    layers[3].visit_parameters(hook);
    CHECK(reducer.started_early() == 1);
    reducer.finish();
  }
  SUBCASE("overlap off: hooks only record") {
    dist::gradient_reducer<float> late(comm, params, {.bucket_bytes = 400, .overlap = false});
    late.begin_step(params, w);
    auto hook = late.hook();
    for (int k = 3; k >= 0; --k) {
      layers[static_cast<std::size_t>(k)].backward(r);
      layers[static_cast<std::size_t>(k)].visit_parameters(hook);
    }
    CHECK(late.started_early() == 0);
    late.finish();
  }
  // Whatever the path: the mean over ranks of (rank + i) and of 2 * rank.
  const double mean_rank = (p - 1) / 2.0;
  for (const auto& l : layers) {
    CHECK(l.gw[0] == doctest::Approx(mean_rank));
    CHECK(l.gw[99] == doctest::Approx(mean_rank + 99));
    CHECK(l.gb[9] == doctest::Approx(2 * mean_rank));
  }
}

TEST_CASE("reducer misuse: unknown or repeated tensors, parameter lists that differ") {
  dist::communicator comm;
  std::vector<float> a(8), ga(8), b(4), gb(4), c(2), gc(2);
  auto params = [&](auto&& f) {
    param_ref<float> pa{"a", a.data(), ga.data(), a.size(), param_kind::weight};
    param_ref<float> pb{"b", b.data(), gb.data(), b.size(), param_kind::bias};
    f(pa);
    f(pb);
  };
  dist::gradient_reducer<float> reducer(comm, params);
  reducer.begin_step(params, 1.0 / comm.size());
  param_ref<float> stranger{"c", c.data(), gc.data(), c.size(), param_kind::weight};
  CHECK_THROWS_WITH_AS(reducer.gradient_ready(stranger),
                       "gradient_reducer: gradient_ready for 'c', which is not one of the "
                       "reducer's parameters",
                       config_error);
  param_ref<float> pa{"a", a.data(), ga.data(), a.size(), param_kind::weight};
  reducer.gradient_ready(pa);
  CHECK_THROWS_WITH_AS(reducer.gradient_ready(pa),
                       "gradient_reducer: 'a' was reported twice in one step", config_error);
  CHECK_THROWS_AS(reducer.begin_step(params, 1.0), config_error); // finish() first
  reducer.finish();

  // Rank 1 has one tensor more: every rank's constructor throws, naming the first difference.
  auto uneven = [&](auto&& f) {
    params(f);
    if (comm.rank() == 1) {
      param_ref<float> pc{"c", c.data(), gc.data(), c.size(), param_kind::scale};
      f(pc);
    }
  };
  CHECK_THROWS_WITH_AS(dist::gradient_reducer<float>(comm, uneven),
                       "the parameter lists differ between ranks: rank 0 has nothing, rank 1 "
                       "has \"c 2 scale\" (line 3)",
                       config_error);
}

} // namespace test_dist_reducer
