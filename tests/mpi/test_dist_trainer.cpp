// The trainer data-parallel (train::trainer::set_gradient_sync with dist::data_parallel) on the
// committed Fashion-MNIST sample, LeNet-5 with frac_bits: 20 steps through all three phases
// (pretrain, search with the size penalty and the bitwidth projection, budget-aware freezing,
// finetune) on p ranks at a global batch of 64 (64/p each) against one process at 64.
//
// Tolerance (the same as test_dist_step's, stated in docs/distributed.md): per parameter
// tensor, max |w_p - w_1| <= 1e-5 * max |w_1|. The reduction order is fixed (the ranks'
// contributions are added in rank order), so every rank holds bit-identical parameters and the
// same run repeats bit for bit; but one process sums the 64 images inside its GEMMs while p
// ranks sum their slices first, so the two differ in the last bits and Adam carries that on.
// The accuracies, the frozen bitwidths and the model size must be equal.
#include "../unit/fashion_sample.hpp"

#include <bitgrad/bitgrad.hpp>
#include <bitgrad/dist/data_parallel.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace test_dist_trainer {

namespace fs = std::filesystem;
using namespace bitgrad;
using bitgrad::testing::sample_test;
using bitgrad::testing::sample_train;

namespace {

/// A folder named after rank 0's process id (the same path on every rank), removed at the end.
struct shared_dir {
  fs::path path;
  bool owner;
  shared_dir(const dist::communicator& comm, const std::string& name) : owner(comm.rank() == 0) {
    const long pid = comm.broadcast_value(static_cast<long>(::getpid()), 0);
    path = fs::temp_directory_path() / (name + "-" + std::to_string(pid));
    if (owner) fs::remove_all(path);
    comm.barrier();
  }
  ~shared_dir() {
    std::error_code ec;
    if (owner) fs::remove_all(path, ec);
  }
};

/// 4 epochs of 5 steps: pretrain 1, search 2, finetune 1 (20 steps), global batch 64.
train::trainer_options twenty_steps(const fs::path& out = {}) {
  train::trainer_options o;
  o.batch_size = 64;
  o.pretrain = {.epochs = 1, .lr = 2e-3};
  o.search = {.epochs = 2, .lr = 5e-4, .bits_lr = 0.1};
  o.finetune = {.epochs = 1, .lr = 2e-4};
  o.max_steps_per_epoch = 5;
  o.target_average_bits = 3.0;
  o.seed = 7;
  o.out_dir = out;
  o.log = nullptr;
  return o;
}

auto make_fp32() {
  return nn::lenet5<float>({.seed = 3});
}
auto make_quant() {
  return nn::lenet5<float, quant::frac_bits>({.seed = 3});
}
using quant_net = decltype(make_quant());

std::vector<std::vector<float>> parameters(quant_net& net) {
  std::vector<std::vector<float>> v;
  net.visit_parameters([&](param_ref<float>& p) { v.emplace_back(p.value, p.value + p.size); });
  return v;
}

/// The largest per-tensor difference relative to the tensor's largest magnitude.
template <class T>
double largest_relative_difference(const std::vector<std::vector<T>>& a,
                                   const std::vector<std::vector<T>>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t j = 0; j < a.size(); ++j) {
    REQUIRE(a[j].size() == b[j].size());
    double scale = 0, diff = 0;
    for (std::size_t i = 0; i < a[j].size(); ++i) {
      scale = std::max(scale, std::abs(static_cast<double>(b[j][i])));
      diff = std::max(diff, std::abs(static_cast<double>(a[j][i]) - b[j][i]));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

struct single_run {
  train::run_result result;
  std::vector<std::vector<float>> params;
};

/// The one-process reference (computed on every rank, no files).
const single_run& reference() {
  static const single_run r = [] {
    auto fp32 = make_fp32();
    auto q = make_quant();
    train::trainer t(fp32, q, sample_train(), sample_test(), twenty_steps());
    single_run s;
    s.result = t.run();
    s.params = parameters(q);
    return s;
  }();
  return r;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Counts every observer call.
struct counting_observer : train::observer {
  int calls = 0;
  void on_out_dir(const fs::path&, const std::vector<epoch_record>&) override { ++calls; }
  void on_epoch_begin(const train::epoch_begin_event&) override { ++calls; }
  void on_step(const train::step_event&) override { ++calls; }
  void on_epoch_end(const train::epoch_end_event&) override { ++calls; }
  void on_run_end(const run_summary&, const std::vector<epoch_record>&) override { ++calls; }
};

} // namespace

TEST_CASE("the trainer on p ranks x 64/p images follows one process at 64 for 20 steps") {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  const single_run& one = reference();
  REQUIRE(one.result.finished);

  shared_dir dir(comm, "bitgrad-dist-trainer");
  // Rank 0 writes into the shared folder; every other rank is given a folder of its own, which
  // must stay empty (out_dir is not one of the settings that must agree).
  const fs::path mine = r == 0 ? dir.path / "run" : dir.path / ("rank" + std::to_string(r));
  std::ostringstream log;
  auto fp32 = make_fp32();
  auto q = make_quant();
  auto options = twenty_steps(mine);
  options.log = &log;
  options.terminal = false;
  dist::data_parallel<float> dp(comm);
  train::trainer t(fp32, q, sample_train(), sample_test(), options);
  t.set_gradient_sync(dp);
  counting_observer seen;
  t.add_observer(seen);
  const train::run_result got = t.run();
  REQUIRE(got.finished);

  // Every rank holds the same parameters, bit for bit (the trainer checks this at the end of
  // the run too; here from the outside, by checksum).
  auto params = [&](auto&& f) { q.visit_parameters(f); };
  const std::uint32_t crc = dist::parameter_checksum<float>(params);
  const std::vector<std::uint32_t> crcs = comm.all_gather(crc);
  for (const std::uint32_t c : crcs) CHECK(c == crcs[0]);

  const double diff = largest_relative_difference(parameters(q), one.params);
  if (r == 0)
    std::printf("trainer, p = %d, 20 steps: largest per-tensor relative difference %.3g\n", p,
                diff);
  CHECK(diff <= 1e-5);

  // The summary: accuracies, bits and size as one process's.
  CHECK(got.summary.fp32_accuracy == one.result.summary.fp32_accuracy);
  CHECK(got.summary.quant_accuracy == one.result.summary.quant_accuracy);
  CHECK(got.summary.average_bits == one.result.summary.average_bits);
  CHECK(got.summary.size_bytes == one.result.summary.size_bytes);
  REQUIRE(got.history.size() == one.result.history.size());
  for (std::size_t e = 0; e < got.history.size(); ++e) {
    CAPTURE(e);
    CHECK(got.history[e].test_accuracy == one.result.history[e].test_accuracy);
    CHECK(got.history[e].train_accuracy == one.result.history[e].train_accuracy);
    CHECK(got.history[e].size_bytes == one.result.history[e].size_bytes);
    CHECK(std::abs(got.history[e].loss - one.result.history[e].loss) <=
          1e-5 * std::abs(one.result.history[e].loss));
  }

  // Only rank 0 printed, wrote files and called observers.
  if (r == 0) {
    CHECK(seen.calls > 0);
    CHECK(log.str().find("froze bitwidths") != std::string::npos);
    for (const char* f : {"log.csv", "summary.json", "checkpoint.bin", "report.html"})
      CHECK(fs::exists(mine / f));
    // One row per epoch (a second writer would have added rows) plus the header.
    const std::string csv = read_text(mine / "log.csv");
    CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + 4);
  } else {
    CHECK(seen.calls == 0);
    CHECK(log.str().empty());
    CHECK(!fs::exists(mine));
  }
  comm.barrier();

  // With overlap (buckets started from nn::sequential::backward's hook during backward) the
  // fixed reduction order gives the same bits.
  auto fp32_overlap = make_fp32();
  auto q_overlap = make_quant();
  dist::data_parallel<float> overlapping(comm, {.bucket_bytes = 16 << 10, .overlap = true});
  train::trainer t2(fp32_overlap, q_overlap, sample_train(), sample_test(), twenty_steps());
  t2.set_gradient_sync(overlapping);
  REQUIRE(t2.run().finished);
  CHECK(overlapping.current_reducer().buckets().size() > 1);
  CHECK(overlapping.current_reducer().started_early() > 0);
  CHECK(parameters(q_overlap) == parameters(q));
}

TEST_CASE("a checkpoint written by p ranks mid-epoch resumes on 1 rank as an uninterrupted run") {
  dist::communicator comm;
  const int r = comm.rank();
  const single_run& one = reference();
  shared_dir dir(comm, "bitgrad-dist-resume");
  {
    auto fp32 = make_fp32();
    auto q = make_quant();
    auto options = twenty_steps(dir.path);
    options.stop_after_steps = 8; // search epoch 1, step 3 (pretrain has 5)
    dist::data_parallel<float> dp(comm);
    train::trainer t(fp32, q, sample_train(), sample_test(), options);
    t.set_gradient_sync(dp);
    const train::run_result stopped = t.run();
    CHECK(!stopped.finished);
  }
  comm.barrier();
  if (r == 0) { // one process goes on from the p-rank checkpoint
    REQUIRE(fs::exists(dir.path / "checkpoint.bin"));
    auto fp32 = make_fp32();
    auto q = make_quant();
    auto options = twenty_steps(dir.path);
    options.resume = true;
    train::trainer t(fp32, q, sample_train(), sample_test(), options);
    const train::run_result resumed = t.run();
    REQUIRE(resumed.finished);
    const double diff = largest_relative_difference(parameters(q), one.params);
    std::printf("checkpoint of %d ranks resumed on 1: largest per-tensor relative difference to "
                "an uninterrupted run %.3g\n",
                comm.size(), diff);
    CHECK(diff <= 1e-5);
    CHECK(resumed.summary.quant_accuracy == one.result.summary.quant_accuracy);
    CHECK(resumed.summary.size_bytes == one.result.summary.size_bytes);
    CHECK(resumed.summary.average_bits == one.result.summary.average_bits);
    REQUIRE(resumed.history.size() == one.result.history.size());
    CHECK(resumed.history[0].test_accuracy == one.result.history[0].test_accuracy);
  }
  comm.barrier();
}

TEST_CASE("bad use: more ranks than the batch, options or data that differ between ranks") {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  dist::data_parallel<float> dp(comm);
  auto fp32 = make_fp32();
  auto q = make_quant();

  SUBCASE("a batch smaller than the rank count") {
    auto options = twenty_steps();
    options.batch_size = static_cast<std::size_t>(p) - 1;
    train::trainer t(fp32, q, sample_train(), sample_test(), options);
    t.set_gradient_sync(dp);
    CHECK_THROWS_WITH_AS(t.run(),
                         doctest::Contains(("batch size " + std::to_string(p - 1) +
                                            " is smaller than the rank count " + std::to_string(p))
                                               .c_str()),
                         config_error);
  }
  SUBCASE("a setting that differs (every rank throws, naming both values)") {
    auto options = twenty_steps();
    if (r == p - 1) options.seed = 8;
    options.search.bits_lr = 0.1;
    train::trainer t(fp32, q, sample_train(), sample_test(), options);
    t.set_gradient_sync(dp);
    CHECK_THROWS_WITH_AS(t.run(),
                         doctest::Contains(("the trainer's settings differ between ranks: rank 0 "
                                            "has \"seed=7\", rank " +
                                            std::to_string(p - 1) + " has \"seed=8\"")
                                               .c_str()),
                         config_error);
  }
  SUBCASE("a cost budget that differs (issue #22's targets are settings too)") {
    auto options = twenty_steps();
    if (r == p - 1) options.target_bops = 2e6;
    train::trainer t(fp32, q, sample_train(), sample_test(), options);
    t.set_gradient_sync(dp);
    CHECK_THROWS_WITH_AS(t.run(),
                         doctest::Contains(("rank 0 has \"target_bops=none\", rank " +
                                            std::to_string(p - 1) + " has \"target_bops=")
                                               .c_str()),
                         config_error);
  }
  SUBCASE("a training set that differs") {
    dataset train_set = sample_train();
    if (r == p - 1) train_set.labels[0] = (train_set.labels[0] + 1) % 10;
    train::trainer t(fp32, q, train_set, sample_test(), twenty_steps());
    t.set_gradient_sync(dp);
    CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("the training set differs between ranks"),
                         config_error);
  }
  SUBCASE("initial weights that differ (another seed on one rank)") {
    auto other = nn::lenet5<float>({.seed = r == p - 1 ? 4u : 3u});
    train::trainer t(other, q, sample_train(), sample_test(), twenty_steps());
    t.set_gradient_sync(dp);
    CHECK_THROWS_WITH_AS(t.run(),
                         doctest::Contains("parameters differ between ranks after the start of "
                                           "a phase: conv1.weight"),
                         dist::divergence_error);
  }
}

// Synchronised batch norm (trainer_options::sync_batch_norm): a ResNet-20 of width 4 with
// frac_bits, in double, 6 steps at a global batch of 16, on p ranks against one process. With
// the option the ranks normalise with the global batch's statistics and follow one process
// (measured 2.2e-13 per-tensor relative with 2 ranks); without it each rank normalises with its
// slice's own statistics and the run is another one (measured 2.5). Double, because in float
// the last-bit differences (statistics summed in double across ranks, in float by one process)
// reach 0.44 of a tensor's scale after 6 Adam steps: Adam moves an element whose gradient is
// near zero by about lr whatever its sign, and batch norm's beta starts at 0 (docs/distributed.md).
TEST_CASE("sync_batch_norm: the trainer with batch norm follows one process; per-rank does not") {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  auto options = [] {
    train::trainer_options o = twenty_steps();
    o.batch_size = 16;
    o.max_steps_per_epoch = 2;
    o.search.epochs = 1;
    return o;
  };
  auto make_fp32_res = [] {
    return nn::resnet20<double>({.seed = 5, .in_channels = 1, .in_size = 28, .width = 4});
  };
  auto make_quant_res = [] {
    return nn::resnet20<double, quant::frac_bits>(
        {.seed = 5, .in_channels = 1, .in_size = 28, .width = 4});
  };
  auto params_of = [](auto& net) {
    std::vector<std::vector<double>> v;
    net.visit_parameters([&](param_ref<double>& q) { v.emplace_back(q.value, q.value + q.size); });
    return v;
  };
  auto fp32_one = make_fp32_res();
  auto q_one = make_quant_res();
  train::trainer t1(fp32_one, q_one, sample_train(), sample_test(), options());
  REQUIRE(t1.run().finished);
  const auto expect = params_of(q_one);

  double diff[2] = {0, 0};
  for (const bool sync_bn : {true, false}) {
    auto fp32 = make_fp32_res();
    auto q = make_quant_res();
    auto o = options();
    o.sync_batch_norm = sync_bn;
    dist::data_parallel<double> dp(comm);
    train::trainer t(fp32, q, sample_train(), sample_test(), o);
    t.set_gradient_sync(dp);
    REQUIRE(t.run().finished);
    diff[sync_bn ? 0 : 1] = largest_relative_difference(params_of(q), expect);
    // The layers are per-rank again after the run.
    bool any = false;
    auto check = [&](const std::string&, auto& leaf) {
      if constexpr (requires { leaf.synchronised(); }) any = any || leaf.synchronised();
    };
    nn::visit_layers(q, check);
    CHECK(!any);
  }
  if (r == 0)
    std::printf("ResNet-20 (width 4), p = %d, 6 steps: largest per-tensor relative difference "
                "to one process %.3g with sync_batch_norm, %.3g without\n",
                p, diff[0], diff[1]);
  CHECK(diff[0] <= 1e-10);
  CHECK(diff[1] > 1e-3);
}

TEST_CASE("sync_batch_norm refuses a last batch with fewer images than ranks") {
  dist::communicator comm;
  const int p = comm.size();
  if (p < 2) return;
  dist::data_parallel<float> dp(comm);
  auto fp32 = make_fp32();
  auto q = make_quant();
  auto o = twenty_steps();
  o.sync_batch_norm = true;
  o.max_steps_per_epoch = 0;
  // A batch size leaving 1 image in the last batch.
  const std::size_t n = sample_train().size();
  std::size_t b = 64;
  while (n % b != 1) ++b;
  o.batch_size = b;
  train::trainer t(fp32, q, sample_train(), sample_test(), o);
  t.set_gradient_sync(dp);
  CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("sync_batch_norm: the last batch of every epoch"),
                       config_error);
}

} // namespace test_dist_trainer
