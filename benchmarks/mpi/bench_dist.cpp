// Data-parallel training step under MPI: what the gradient all-reduce costs and whether
// starting it during backward (overlap) pays. Run under mpirun; rank 0 prints.
//
//   cmake --preset bench && cmake --build --preset bench --target bench_dist
//   OMP_NUM_THREADS=1 mpirun -np 2 build/bench/benchmarks/mpi/bench_dist --model lenet5 --batch 64
//   (scripts/bench-mpi.sh runs the whole comparison; make bench-mpi)
//
// One step, as bench_train's (benchmarks/bench_train.cpp) quantised step: zero_grad, forward,
// softmax cross-entropy, backward, [gradient all-reduce], size penalty, Adam, projection; the
// first layer skips dL/dx. Each rank trains on its slice of the global batch (--batch): random
// N(0,1) images 1x28x28, labels uniform in [0, 10). Modes, timed in alternation (each round
// times --steps steps of every mode, so a change of load hits all of them alike; the median
// over the rounds is reported, and the median and quartiles of the paired per-round difference
// overlap - reduce, the number that says whether overlap pays):
//   local      no communication (each rank trains alone: the compute time of a step)
//   reduce     the step with reducer.finish() after backward (all buckets start after it)
//   overlap    the step with the backward hook: buckets start while backward runs
//   allreduce  the all-reduce alone (begin_step + finish on the gradients), no compute
// Time of a mode = the slowest rank's (max over ranks), per step. Output: one JSON object per
// line on stdout (rank 0).
//
// Options: --model lenet5|vgg_small|resnet20, --batch B (global), --steps N per round and mode
// (1), --rounds R (20), --bucket-kb K (bucket size, 1024), --order fixed|mpi.
// --compare-orders 1: instead, one backward per rank, then the gradients averaged in the fixed
// order and in MPI's order; prints how many elements differ (bit-level) between the two.
#include <bitgrad/dist/dist.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/quant/penalty.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace {

using namespace bitgrad;

struct settings {
  std::string model = "lenet5";
  std::size_t batch = 64;
  int steps = 1, rounds = 20;
  std::size_t bucket_kb = 1024;
  dist::reduction_order order = dist::reduction_order::fixed;
  bool compare_orders = false;
};

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--model")
      s.model = value;
    else if (key == "--batch")
      s.batch = std::stoul(value);
    else if (key == "--steps")
      s.steps = std::stoi(value);
    else if (key == "--rounds")
      s.rounds = std::stoi(value);
    else if (key == "--bucket-kb")
      s.bucket_kb = std::stoul(value);
    else if (key == "--compare-orders")
      s.compare_orders = value != "0";
    else if (key == "--order")
      s.order = value == "mpi" ? dist::reduction_order::mpi : dist::reduction_order::fixed;
    else
      throw config_error("bench_dist: unknown option " + std::string(key));
  }
  return s;
}

enum class mode { local, reduce, overlap, allreduce };
const char* name_of(mode m) {
  switch (m) {
  case mode::local:
    return "local";
  case mode::reduce:
    return "reduce";
  case mode::overlap:
    return "overlap";
  case mode::allreduce:
    return "allreduce";
  }
  return "?";
}

template <class Net>
class runner {
public:
  runner(Net& net, const dist::communicator& comm, const settings& s)
      : net_(net), comm_(comm), adam_({.lr = 1e-3}),
        reducer_(comm, params(), {.bucket_bytes = s.bucket_kb << 10, .order = s.order}),
        late_(comm, params(),
              {.bucket_bytes = s.bucket_kb << 10, .order = s.order, .overlap = false}) {
    adam_.set_group(param_kind::bitwidth, {.lr = 0.05, .weight_decay = 0});
    penalty_ = {.form = quant::penalty_form::hinge,
                .lambda = 5.0,
                .target_bits = quant::target_bits_for_average(quants(), 3.0)};
    const auto p = static_cast<std::size_t>(comm.size());
    const std::size_t mine = shard_slice(s.batch, static_cast<std::size_t>(comm.rank()), p).size();
    weight_ = static_cast<double>(mine) / static_cast<double>(s.batch);
    std::mt19937_64 rng(12345 + static_cast<std::uint64_t>(comm.rank()));
    std::normal_distribution<float> pixel(0.0f, 1.0f);
    std::uniform_int_distribution<std::int32_t> label(0, 9);
    for (auto& b : data_) {
      b.x = tensor4<float>::from_shape({mine, 1, 28, 28});
      for (auto& v : b.x) v = pixel(rng);
      b.y.resize(mine);
      for (auto& v : b.y) v = label(rng);
    }
  }

  auto params() {
    return [this](auto&& f) { net_.visit_parameters(f); };
  }
  auto quants() {
    return [this](auto&& f) { net_.visit_quantizers(f); };
  }
  const dist::gradient_reducer<float>& reducer() const { return reducer_; }

  /// One backward on this rank's slice; then the gradients averaged in the fixed order and in
  /// MPI's order: the number of elements whose results differ, and the total.
  std::pair<std::size_t, std::size_t> compare_orders(const settings& s) {
    const auto& b = data_[0];
    net_.zero_grad();
    loss_.forward(net_.forward(b.x), b.y);
    net_.backward(loss_.backward());
    std::vector<float> local, fixed;
    net_.visit_parameters(
        [&](param_ref<float>& p) { local.insert(local.end(), p.grad, p.grad + p.size); });
    auto restore = [&] {
      std::size_t k = 0;
      net_.visit_parameters([&](param_ref<float>& p) {
        std::copy_n(local.begin() + static_cast<std::ptrdiff_t>(k), p.size, p.grad);
        k += p.size;
      });
    };
    dist::gradient_reducer<float> in_mpi_order(
        comm_, params(), {.bucket_bytes = s.bucket_kb << 10, .order = dist::reduction_order::mpi});
    reducer_.begin_step(params(), weight_);
    reducer_.finish(); // reducer_ uses s.order; run with the default --order fixed
    net_.visit_parameters(
        [&](param_ref<float>& p) { fixed.insert(fixed.end(), p.grad, p.grad + p.size); });
    restore();
    in_mpi_order.begin_step(params(), weight_);
    in_mpi_order.finish();
    std::size_t differ = 0, k = 0;
    net_.visit_parameters([&](param_ref<float>& p) {
      for (std::size_t i = 0; i < p.size; ++i) differ += p.grad[i] != fixed[k++];
    });
    return {differ, k};
  }

  void step(mode m) {
    const auto& b = data_[i_++ % data_.size()];
    if (m == mode::allreduce) {
      reducer_.begin_step(params(), weight_);
      reducer_.finish();
      return;
    }
    net_.zero_grad();
    const auto& logits = net_.forward(b.x);
    loss_.forward(logits, b.y);
    if (m == mode::local) {
      net_.backward(loss_.backward());
    } else if (m == mode::reduce) {
      late_.begin_step(params(), weight_);
      net_.backward(loss_.backward());
      late_.finish();
    } else {
      reducer_.begin_step(params(), weight_);
      dist::backward_with_hook(net_, loss_.backward(), reducer_.hook());
      reducer_.finish();
    }
    quant::apply_size_penalty(quants(), penalty_);
    adam_.step(params());
    net_.visit_quantizers([](std::string_view, auto& q) { q.project(); });
  }

private:
  struct batch {
    tensor4<float> x;
    std::vector<std::int32_t> y;
  };
  Net& net_;
  const dist::communicator& comm_;
  optim::adam<float> adam_;
  nn::softmax_cross_entropy<float> loss_;
  quant::size_penalty penalty_{};
  dist::gradient_reducer<float> reducer_, late_;
  std::vector<batch> data_ = std::vector<batch>(4);
  std::size_t i_ = 0;
  double weight_ = 1;
};

/// The q-quantile of v (0.5: the median), linear between order statistics.
double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double at = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(at);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - static_cast<double>(lo)) * (v[hi] - v[lo]);
}
double median(const std::vector<double>& v) {
  return quantile(v, 0.5);
}

template <class Net>
void run(Net net, const dist::communicator& comm, const settings& s) {
  net.train(true);
  net.template get<0>().set_input_grad(false);
  runner<Net> r(net, comm, s);
  if (s.compare_orders) {
    const auto [differ, total] = r.compare_orders(s);
    if (comm.rank() == 0)
      std::printf("{\"model\": \"%s\", \"ranks\": %d, \"elements\": %zu, "
                  "\"differ_fixed_vs_mpi_order\": %zu}\n",
                  s.model.c_str(), comm.size(), total, differ);
    return;
  }
  const std::vector<mode> modes = {mode::local, mode::reduce, mode::overlap, mode::allreduce};
  for (mode m : modes)
    for (int w = 0; w < 3; ++w) r.step(m); // warm-up
  std::map<mode, std::vector<double>> seconds;
  std::size_t early = 0;
  for (int round = 0; round < s.rounds; ++round)
    for (mode m : modes) {
      comm.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < s.steps; ++k) r.step(m);
      double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      comm.all_reduce_max(std::span<double>(&t, 1));
      seconds[m].push_back(t / s.steps);
      if (m == mode::overlap) early = r.reducer().started_early();
    }
  if (comm.rank() != 0) return;
  int threads = 1;
#if defined(BITGRAD_WITH_OPENMP)
  threads = omp_get_max_threads();
#endif
  std::printf("{\"model\": \"%s\", \"ranks\": %d, \"threads\": %d, \"batch\": %zu, "
              "\"bytes\": %zu, \"buckets\": %zu, \"bucket_kb\": %zu, \"order\": \"%s\", "
              "\"buckets_started_in_backward\": %zu",
              s.model.c_str(), comm.size(), threads, s.batch, r.reducer().bytes_per_step(),
              r.reducer().buckets().size(), s.bucket_kb,
              s.order == dist::reduction_order::fixed ? "fixed" : "mpi", early);
  for (mode m : modes) {
    const double t = median(seconds[m]);
    std::printf(", \"%s_ms\": %.3f", name_of(m), 1e3 * t);
    if (m != mode::allreduce)
      std::printf(", \"%s_images_per_s\": %.1f", name_of(m), static_cast<double>(s.batch) / t);
  }
  std::vector<double> gain;
  for (std::size_t k = 0; k < seconds[mode::overlap].size(); ++k)
    gain.push_back(1e3 * (seconds[mode::overlap][k] - seconds[mode::reduce][k]));
  std::printf(", \"overlap_minus_reduce_ms\": [%.3f, %.3f, %.3f], \"rounds\": %d}\n",
              quantile(gain, 0.25), quantile(gain, 0.5), quantile(gain, 0.75), s.rounds);
  std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv) {
  bitgrad::dist::session mpi(argc, argv);
  return bitgrad::dist::run_or_abort([&] {
    const settings s = parse(argc, argv);
    bitgrad::dist::communicator comm;
    if (s.model == "lenet5")
      run(nn::lenet5<float, quant::frac_bits>({.seed = 1}), comm, s);
    else if (s.model == "vgg_small")
      run(nn::vgg_small<float, quant::frac_bits>({.seed = 1}), comm, s);
    else if (s.model == "resnet20")
      run(nn::resnet20<float, quant::frac_bits>({.seed = 1, .in_channels = 1, .in_size = 28}), comm,
          s);
    else
      throw config_error("bench_dist: unknown model " + s.model);
    return 0;
  });
}
