// Sharding under real ranks: rank r's loader (shard_index r of p) hands out slices whose union,
// gathered in rank order, is the batch one unsharded loader hands out, for several (dataset
// size, batch, last batch, drop_last, augmentation) combinations; the loader state is the same
// on every rank; a global batch smaller than the rank count is an error on every rank.
#include <bitgrad/data/loader.hpp>
#include <bitgrad/dist/agreement.hpp>
#include <bitgrad/dist/communicator.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace test_dist_shard {

using namespace bitgrad;

namespace {

dataset random_images(std::size_t n, std::uint64_t seed) {
  dataset d;
  d.channels = 3;
  d.height = 6;
  d.width = 5;
  d.classes = n;
  std::mt19937_64 rng(seed);
  d.pixels.resize(n * d.image_size());
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
  for (std::size_t i = 0; i < n; ++i) d.labels.push_back(static_cast<std::int32_t>(i));
  return d;
}

/// A batch as bytes: its labels, then its pixels (exact comparison of floats).
std::string as_bytes(const std::vector<std::int32_t>& y, const tensor4<float>& x) {
  std::string s(y.size() * sizeof(std::int32_t) + x.size() * sizeof(float), '\0');
  if (!y.empty()) std::memcpy(s.data(), y.data(), y.size() * sizeof(std::int32_t));
  if (x.size() > 0)
    std::memcpy(s.data() + y.size() * sizeof(std::int32_t), x.data(), x.size() * sizeof(float));
  return s;
}

} // namespace

TEST_CASE("the ranks' slices, joined in rank order, are the single-process batches") {
  dist::communicator comm;
  const auto p = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  struct combo {
    std::size_t n, batch;
    bool drop_last, augment;
  };
  // Global batch divisible by p or not, a last batch that divides or not, a last batch smaller
  // than p (empty slices: 64 % 21 = 1, 61 % 20 = 1), drop_last, augmentation on and off.
  const std::vector<combo> combos = {{96, 32, false, false}, {100, 32, false, true},
                                     {64, 21, false, true},  {61, 20, false, false},
                                     {61, 20, true, true},   {45, 9, false, true}};
  for (const combo& c : combos) {
    CAPTURE(c.n);
    CAPTURE(c.batch);
    CAPTURE(c.drop_last);
    CAPTURE(c.augment);
    const dataset data = random_images(c.n, c.n);
    dist::check_same_dataset(comm, data);
    loader_options o{.batch_size = c.batch, .drop_last = c.drop_last, .seed = 77};
    if (c.augment) {
      o.crop_padding = 1;
      o.horizontal_flip = true;
    }
    loader<float> single(data, o);
    o.shard_count = p;
    o.shard_index = r;
    loader<float> mine(data, o);
    tensor4<float> xs, xm;
    std::vector<std::int32_t> ys, ym;
    const std::size_t calls = 2 * (single.batches_per_epoch() + 1); // two epochs
    std::size_t matched = 0;
    for (std::size_t call = 0; call < calls; ++call) {
      const bool ok_single = single.next(xs, ys);
      const bool ok_mine = mine.next(xm, ym);
      REQUIRE(ok_mine == ok_single);
      if (!ok_single) continue;
      CHECK(ym.size() == shard_slice(ys.size(), r, p).size());
      const std::vector<std::string> parts = comm.all_gather_strings(as_bytes(ym, xm));
      // Labels of all ranks first, then pixels: rebuild (labels..., pixels...) of the union.
      std::string labels, pixels;
      for (std::size_t k = 0; k < p; ++k) {
        const std::size_t nk = shard_slice(ys.size(), k, p).size();
        labels += parts[k].substr(0, nk * sizeof(std::int32_t));
        pixels += parts[k].substr(nk * sizeof(std::int32_t));
      }
      if (labels + pixels == as_bytes(ys, xs)) ++matched;
      CHECK(mine.state() == single.state());
    }
    CHECK(matched == 2 * single.batches_per_epoch());
  }
}

TEST_CASE("a global batch smaller than the rank count: an error on every rank") {
  dist::communicator comm;
  const dataset data = random_images(10, 1);
  const auto p = static_cast<std::size_t>(comm.size());
  loader_options o{
      .batch_size = p - 1, .shard_count = p, .shard_index = static_cast<std::size_t>(comm.rank())};
  CHECK_THROWS_WITH_AS(loader<float>(data, o),
                       ("loader: the global batch size " + std::to_string(p - 1) +
                        " is smaller than the shard (process) count " + std::to_string(p) +
                        ": every process needs at least one image of every full batch")
                           .c_str(),
                       config_error);
}

} // namespace test_dist_shard
