// Loader sharding (data-parallel training): p loaders with shard_index 0..p-1 hand out slices
// whose union, in rank order, is exactly the batch one unsharded loader hands out, epoch after
// epoch, augmentation included; the state is the same on every shard and restores with another
// shard count. (The same under real MPI ranks: tests/mpi/test_dist_shard.cpp.)
#include <bitgrad/data/loader.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace test_data_shard {

using bitgrad::loader;
using bitgrad::loader_options;
using bitgrad::tensor4;

namespace {

/// n random 2x5x4 images; image i has label i (classes = n), so labels name the images.
bitgrad::dataset random_images(std::size_t n, std::uint64_t seed) {
  bitgrad::dataset d;
  d.channels = 2;
  d.height = 5;
  d.width = 4;
  d.classes = n;
  std::mt19937_64 rng(seed);
  d.pixels.resize(n * d.image_size());
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
  for (std::size_t i = 0; i < n; ++i) d.labels.push_back(static_cast<std::int32_t>(i));
  return d;
}

struct batch {
  bool ok = false;
  std::vector<std::int32_t> labels;
  std::vector<float> pixels;
  bool operator==(const batch&) const = default;
};

batch next_of(loader<float>& l) {
  tensor4<float> x;
  std::vector<std::int32_t> y;
  batch b;
  b.ok = l.next(x, y);
  if (b.ok) {
    b.labels = y;
    b.pixels.assign(x.begin(), x.end());
    REQUIRE(x.shape(0) == y.size());
  }
  return b;
}

/// The p shards' batches of one next() call, joined in rank order.
batch next_joined(std::vector<loader<float>>& shards) {
  batch joined;
  joined.ok = true;
  for (std::size_t r = 0; r < shards.size(); ++r) {
    batch b = next_of(shards[r]);
    if (r == 0) joined.ok = b.ok;
    REQUIRE(b.ok == joined.ok); // every shard ends the epoch at the same call
    joined.labels.insert(joined.labels.end(), b.labels.begin(), b.labels.end());
    joined.pixels.insert(joined.pixels.end(), b.pixels.begin(), b.pixels.end());
  }
  if (!joined.ok) joined = batch{};
  return joined;
}

std::vector<loader<float>> make_shards(const bitgrad::dataset& data, loader_options o,
                                       std::size_t p) {
  std::vector<loader<float>> shards;
  for (std::size_t r = 0; r < p; ++r) {
    o.shard_count = p;
    o.shard_index = r;
    shards.emplace_back(data, o);
  }
  return shards;
}

} // namespace

TEST_CASE("shard_slice: contiguous, disjoint, covering, sizes floor or ceil of b/p") {
  for (std::size_t b = 0; b <= 37; ++b)
    for (std::size_t p = 1; p <= 9; ++p) {
      std::size_t expect_begin = 0;
      for (std::size_t r = 0; r < p; ++r) {
        const bitgrad::shard_range s = bitgrad::shard_slice(b, r, p);
        CHECK(s.begin == expect_begin);
        CHECK((s.size() == b / p || s.size() == (b + p - 1) / p));
        expect_begin = s.end;
      }
      CHECK(expect_begin == b);
    }
  CHECK(bitgrad::shard_slice(10, 1, 3) == bitgrad::shard_range{3, 6});
  CHECK(bitgrad::shard_slice(1, 0, 2).size() == 0); // the empty slice of a tail batch
  CHECK(bitgrad::shard_slice(1, 1, 2).size() == 1);
}

TEST_CASE("the union of the shards' batches is the single-process batch") {
  struct combo {
    std::size_t n, batch, ranks;
    bool drop_last, augment;
  };
  // Divisible and ragged batches, a last batch that divides, one that does not, one smaller
  // than the rank count (empty slices), drop_last, augmentation on and off.
  const std::vector<combo> combos = {
      {64, 16, 2, false, false}, {64, 16, 4, false, true}, {70, 16, 2, false, true},
      {70, 16, 3, false, false}, {67, 16, 4, false, true}, {65, 16, 2, false, true},
      {65, 16, 2, true, true},   {33, 7, 7, false, false}, {33, 7, 5, false, true},
      {10, 10, 3, false, false}, {10, 3, 2, true, false},  {5, 5, 5, false, true}};
  for (const combo& c : combos) {
    CAPTURE(c.n);
    CAPTURE(c.batch);
    CAPTURE(c.ranks);
    CAPTURE(c.drop_last);
    CAPTURE(c.augment);
    const bitgrad::dataset data = random_images(c.n, 7 + c.n);
    loader_options o{.batch_size = c.batch, .drop_last = c.drop_last, .seed = 42};
    o.mean = {0.5};
    o.stddev = {0.25};
    if (c.augment) {
      o.crop_padding = 2;
      o.horizontal_flip = true;
    }
    loader<float> single(data, o);
    std::vector<loader<float>> shards = make_shards(data, o, c.ranks);
    const std::size_t calls = 3 * (single.batches_per_epoch() + 1); // three epochs
    std::size_t empty_slices = 0;
    for (std::size_t call = 0; call < calls; ++call) {
      CAPTURE(call);
      const batch expect = next_of(single);
      const batch got = next_joined(shards);
      REQUIRE(got.ok == expect.ok);
      CHECK(got.labels == expect.labels);
      CHECK(got.pixels == expect.pixels); // bit-identical: the same draws, the same images
      for (std::size_t r = 0; r < c.ranks && expect.ok; ++r) {
        const std::size_t b = shards[r].last_global_batch_size();
        CHECK(b == expect.labels.size());
        if (bitgrad::shard_slice(b, r, c.ranks).size() == 0) ++empty_slices;
      }
      for (const auto& s : shards) CHECK(s.state() == single.state());
    }
    // A tail batch of n % batch < ranks images leaves some shards empty.
    const std::size_t tail = c.n % c.batch;
    if (!c.drop_last && tail != 0 && tail < c.ranks) CHECK(empty_slices > 0);
  }
}

TEST_CASE("a state saved with one shard count restores with another") {
  const bitgrad::dataset data = random_images(50, 3);
  loader_options o{.batch_size = 12, .seed = 9, .crop_padding = 1, .horizontal_flip = true};
  std::vector<loader<float>> three = make_shards(data, o, 3);
  for (int i = 0; i < 6; ++i) next_joined(three); // into the second epoch
  const bitgrad::loader_state saved = three[1].state();

  loader<float> single(data, o);
  single.restore(saved);
  std::vector<loader<float>> two = make_shards(data, o, 2);
  for (auto& s : two) s.restore(saved);
  for (int i = 0; i < 12; ++i) {
    CAPTURE(i);
    CHECK(next_joined(two) == next_of(single));
  }
}

TEST_CASE("sharding errors") {
  const bitgrad::dataset data = random_images(10, 1);
  CHECK_THROWS_WITH_AS(loader<float>(data, {.batch_size = 2, .shard_count = 3, .shard_index = 0}),
                       "loader: the global batch size 2 is smaller than the shard (process) "
                       "count 3: every process needs at least one image of every full batch",
                       bitgrad::config_error);
  CHECK_THROWS_WITH_AS(loader<float>(data, {.batch_size = 4, .shard_count = 2, .shard_index = 2}),
                       "loader: shard index 2 is not below the shard count 2",
                       bitgrad::config_error);
  CHECK_THROWS_AS(loader<float>(data, {.shard_count = 0}), bitgrad::config_error);
  CHECK_NOTHROW(loader<float>(data, {.batch_size = 3, .shard_count = 3, .shard_index = 2}));
}

} // namespace test_data_shard
