// The communicator (broadcast, all-reduce, non-blocking all-reduce, all-gather), the session
// guard when MPI is initialised already, and the agreement checks: settings, dataset and
// parameters that differ between ranks give a clear error on every rank.
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/dist/agreement.hpp>
#include <bitgrad/dist/communicator.hpp>
#include <bitgrad/dist/session.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

namespace test_dist_comm {

using namespace bitgrad;

TEST_CASE("rank and size; a session inside an initialised MPI does not own it") {
  dist::session nested; // main() initialised MPI already
  CHECK_FALSE(nested.owner());
  CHECK(nested.thread_level() >= MPI_THREAD_FUNNELED);
  dist::communicator comm;
  int world_rank = -1, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  CHECK(comm.rank() == world_rank);
  CHECK(comm.size() == world_size);
  CHECK(comm.size() >= 2); // these tests run under mpirun -np 2 or more
  comm.barrier();
}

TEST_CASE_TEMPLATE("all-reduce sum of spans: every rank gets the sum", T, float, double) {
  dist::communicator comm;
  const int p = comm.size(), r = comm.rank();
  // Element i of rank r: r * 1000 + i (small integers: the float sum is exact).
  std::vector<T> v(1001);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<T>(r * 1000 + static_cast<int>(i));
  comm.all_reduce_sum(std::span<T>(v));
  bool all = true;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const T expect = static_cast<T>(1000 * p * (p - 1) / 2 + p * static_cast<int>(i));
    all = all && v[i] == expect;
  }
  CHECK(all);
  CHECK(v[7] == static_cast<T>(1000 * p * (p - 1) / 2 + 7 * p));
}

TEST_CASE("non-blocking all-reduce: the request completes with the sum") {
  dist::communicator comm;
  const int p = comm.size();
  std::vector<double> a(300, 1.0 + comm.rank()), b(5, 0.5);
  dist::request ra = comm.start_all_reduce_sum(std::span<double>(a));
  dist::request rb = comm.start_all_reduce_sum(std::span<double>(b));
  CHECK(ra.pending());
  while (!ra.test()) {
  }
  rb.wait();
  CHECK_FALSE(ra.pending());
  CHECK(a[0] == doctest::Approx(p * (p + 1) / 2.0));
  CHECK(a[299] == a[0]);
  CHECK(b[4] == 0.5 * p);
}

TEST_CASE("broadcast and all-gather") {
  dist::communicator comm;
  const int r = comm.rank();
  CHECK(comm.broadcast_value<std::uint64_t>(r == 0 ? 42u : 7u) == 42u);
  CHECK(comm.broadcast_string(r == 0 ? "from rank zero" : "x") == "from rank zero");
  std::vector<float> v(4, static_cast<float>(r));
  comm.broadcast(std::span<float>(v), comm.size() - 1);
  CHECK(v[3] == static_cast<float>(comm.size() - 1));
  const std::vector<int> ranks = comm.all_gather(r * 10);
  REQUIRE(ranks.size() == static_cast<std::size_t>(comm.size()));
  for (int k = 0; k < comm.size(); ++k) CHECK(ranks[static_cast<std::size_t>(k)] == 10 * k);
  const std::vector<std::string> texts = comm.all_gather_strings(
      std::string(static_cast<std::size_t>(r) + 1, 'a' + static_cast<char>(r)));
  CHECK(texts[0] == "a");
  CHECK(texts[1] == "bb");
}

TEST_CASE("settings that differ between ranks: every rank throws, naming both values") {
  dist::communicator comm;
  const std::string same = "batch_size=64\nlr=0.1\nseed=1\n";
  CHECK_NOTHROW(dist::check_same_text(comm, "the settings", same));
  const std::string mine = comm.rank() == 1 ? "batch_size=64\nlr=0.2\nseed=1\n" : same;
  CHECK_THROWS_WITH_AS(dist::check_same_text(comm, "the settings", mine),
                       "the settings differ between ranks: rank 0 has \"lr=0.1\", rank 1 has "
                       "\"lr=0.2\" (line 2)",
                       config_error);
  // A missing line on the last rank.
  const std::string shorter =
      comm.rank() == comm.size() - 1 ? std::string("batch_size=64\nlr=0.1\n") : same;
  CHECK_THROWS_WITH_AS(dist::check_same_text(comm, "the settings", shorter),
                       ("the settings differ between ranks: rank 0 has \"seed=1\", rank " +
                        std::to_string(comm.size() - 1) + " has nothing (line 3)")
                           .c_str(),
                       config_error);
}

TEST_CASE("a dataset that differs between ranks: every rank throws, naming both") {
  dist::communicator comm;
  dataset d;
  d.channels = 1;
  d.height = 2;
  d.width = 2;
  d.classes = 3;
  d.pixels = {1, 2, 3, 4, 5, 6, 7, 8};
  d.labels = {0, 2};
  CHECK_NOTHROW(dist::check_same_dataset(comm, d));
  const std::string fp0 = dist::dataset_fingerprint(d);
  dataset other = d;
  if (comm.rank() == 1) other.pixels[5] = 99; // one pixel differs on rank 1
  const std::string fp1 = dist::dataset_fingerprint(other);
  std::string expect = "the training set differs between ranks: rank 0 has " + fp0 +
                       "; rank 1 has " + dist::dataset_fingerprint([&] {
                         dataset t = d;
                         t.pixels[5] = 99;
                         return t;
                       }());
  CHECK_THROWS_WITH_AS(dist::check_same_dataset(comm, other), expect.c_str(), config_error);
  CHECK(fp0.find("2 images of 1x2x2, 3 classes, pixels crc32 0x") == 0);
  dataset fewer = d;
  if (comm.rank() == 1) {
    fewer.pixels.resize(4);
    fewer.labels.resize(1);
  }
  CHECK_THROWS_WITH_AS(dist::check_same_dataset(comm, fewer, "the validation set"),
                       doctest::Contains("rank 1 has 1 images of 1x2x2"), config_error);
}

TEST_CASE("parameters: checksum agreement, divergence named, broadcast from rank 0") {
  dist::communicator comm;
  const int r = comm.rank();
  std::vector<float> w(10, 0.25f), b(3, -1.0f), gw(10), gb(3);
  auto params = [&](auto&& f) {
    param_ref<float> pw{"fc.weight", w.data(), gw.data(), w.size(), param_kind::weight};
    param_ref<float> pb{"fc.bias", b.data(), gb.data(), b.size(), param_kind::bias};
    f(pw);
    f(pb);
  };
  CHECK_NOTHROW(dist::check_same_parameters<float>(comm, params, "epoch 1"));
  CHECK(dist::parameter_checksums<float>(params).size() == 2);
  if (r == 1) b[2] += 0x1p-20f; // a drift in the low bits, as a reduction-order bug causes
  CHECK_THROWS_WITH_AS(dist::check_same_parameters<float>(comm, params, "epoch 2"),
                       doctest::Contains("parameters differ between ranks after epoch 2: "
                                         "fc.bias has crc32 0x"),
                       dist::divergence_error);
  CHECK_THROWS_WITH_AS(dist::check_same_parameters<float>(comm, params, "epoch 2"),
                       doctest::Contains("on rank 1 (largest |difference| 9.53674e-07)"),
                       dist::divergence_error);
  // Different seeds per rank, then the broadcast: all equal to rank 0's.
  for (auto& v : w) v = static_cast<float>(r + 1);
  dist::broadcast_parameters<float>(comm, params, 0);
  CHECK(w[9] == 1.0f);
  CHECK(b[2] == -1.0f);
  CHECK_NOTHROW(dist::check_same_parameters<float>(comm, params, "the broadcast"));
  const std::uint32_t crc = dist::parameter_checksum<float>(params);
  CHECK(comm.broadcast_value(crc) == crc);
}

} // namespace test_dist_comm
