// The loader: seeded shuffling, epochs, drop_last, state save/restore, normalisation,
// crop/flip augmentation and reuse of the caller's batch storage.
#include <bitgrad/data/loader.hpp>
#include <bitgrad/io/bytes.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace test_data_loader {

using bitgrad::loader;
using bitgrad::loader_options;
using bitgrad::tensor4;

namespace {

/// n images of channels x h x w; image i has label i and every pixel (i * 7 + c) mod 256.
bitgrad::dataset numbered(std::size_t n, std::size_t channels = 1, std::size_t h = 2,
                          std::size_t w = 3) {
  bitgrad::dataset d;
  d.channels = channels;
  d.height = h;
  d.width = w;
  d.classes = n;
  for (std::size_t i = 0; i < n; ++i) {
    d.labels.push_back(static_cast<std::int32_t>(i));
    for (std::size_t c = 0; c < channels; ++c)
      for (std::size_t j = 0; j < h * w; ++j)
        d.pixels.push_back(static_cast<std::uint8_t>(i * 7 + c));
  }
  return d;
}

/// The labels of every next() call until `calls` calls were made; an empty vector marks a
/// next() that returned false (end of epoch).
template <class T>
std::vector<std::vector<std::int32_t>> drain(loader<T>& l, int calls) {
  std::vector<std::vector<std::int32_t>> out;
  tensor4<T> x;
  std::vector<std::int32_t> y;
  for (int i = 0; i < calls; ++i) out.push_back(l.next(x, y) ? y : std::vector<std::int32_t>{});
  return out;
}

/// Everything next() produced, images included, for exact comparisons.
struct batch_record {
  bool ok;
  std::vector<std::int32_t> labels;
  std::vector<double> pixels;
  bool operator==(const batch_record&) const = default;
};

template <class T>
std::vector<batch_record> record(loader<T>& l, int calls) {
  std::vector<batch_record> out;
  tensor4<T> x;
  std::vector<std::int32_t> y;
  for (int i = 0; i < calls; ++i) {
    batch_record r{l.next(x, y), {}, {}};
    if (r.ok) {
      r.labels = y;
      r.pixels.assign(x.begin(), x.end());
    }
    out.push_back(std::move(r));
  }
  return out;
}

} // namespace

TEST_CASE("every image exactly once per epoch, in a seeded order") {
  bitgrad::dataset data = numbered(10);
  loader<float> l(data, {.batch_size = 3, .seed = 5});
  CHECK(l.batches_per_epoch() == 4);
  tensor4<float> x;
  std::vector<std::int32_t> y;
  std::vector<std::vector<std::int32_t>> orders;
  for (int epoch = 0; epoch < 3; ++epoch) {
    CHECK(l.epoch() == static_cast<std::size_t>(epoch));
    std::vector<std::int32_t> seen;
    std::vector<std::size_t> sizes;
    while (l.next(x, y)) {
      sizes.push_back(y.size());
      CHECK(x.shape()[0] == y.size());
      for (std::size_t k = 0; k < y.size(); ++k) // pixels follow their labels
        CHECK(x(k, 0, 1, 2) == doctest::Approx(float(y[k] * 7 % 256) / 255.f));
      seen.insert(seen.end(), y.begin(), y.end());
    }
    CHECK(sizes == std::vector<std::size_t>{3, 3, 3, 1});
    orders.push_back(seen);
    std::sort(seen.begin(), seen.end());
    std::vector<std::int32_t> all(10);
    std::iota(all.begin(), all.end(), 0);
    CHECK(seen == all);
  }
  CHECK(orders[0] != orders[1]); // a new permutation each epoch
  CHECK(orders[1] != orders[2]);

  loader<float> same(data, {.batch_size = 3, .seed = 5});
  loader<float> again(data, {.batch_size = 3, .seed = 5});
  loader<float> other(data, {.batch_size = 3, .seed = 6});
  auto a = drain(same, 15);
  CHECK(a == drain(again, 15));
  CHECK(a != drain(other, 15));
}

TEST_CASE("drop_last and shuffle off") {
  bitgrad::dataset data = numbered(10);
  loader<double> l(data, {.batch_size = 3, .shuffle = false, .drop_last = true});
  CHECK(l.batches_per_epoch() == 3);
  auto calls = drain(l, 8);
  using v = std::vector<std::int32_t>;
  CHECK(calls ==
        std::vector<v>{{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {}, {0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {}});
  // With shuffling, drop_last drops a different image each epoch but never repeats one.
  loader<double> s(data, {.batch_size = 4, .drop_last = true, .seed = 1});
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::set<std::int32_t> seen;
    auto batches = drain(s, 3);
    CHECK(batches[2].empty());
    for (int b = 0; b < 2; ++b) seen.insert(batches[b].begin(), batches[b].end());
    CHECK(seen.size() == 8);
  }
}

TEST_CASE("state save and restore reproduce the remaining batches") {
  bitgrad::dataset data = numbered(37, 2, 4, 4);
  const loader_options options{.batch_size = 5,
                               .seed = 99,
                               .mean = {0.5, 0.25},
                               .stddev = {0.5, 2.0},
                               .crop_padding = 1,
                               .horizontal_flip = true};
  for (int skip : {0, 3, 8, 9, 20}) { // 8 batches + 1 end marker per epoch
    CAPTURE(skip);
    loader<float> a(data, options);
    (void)record(a, skip);
    const bitgrad::loader_state saved = a.state();
    const std::string text = to_string(saved);
    auto expected = record(a, 25);

    loader<float> b(data, options);
    (void)record(b, 2); // wherever it is, restore moves it
    b.restore(bitgrad::parse_loader_state(text));
    CHECK(b.state() == saved);
    CHECK(b.epoch() == saved.epoch);
    CHECK(b.position() == saved.position);
    CHECK(record(b, 25) == expected);
  }

  loader<float> a(data, options);
  bitgrad::dataset smaller = numbered(36, 2, 4, 4);
  loader<float> c(smaller, options);
  CHECK_THROWS_AS(c.restore(a.state()), bitgrad::config_error);
  bitgrad::loader_state broken = a.state();
  broken.rng = "not a generator";
  CHECK_THROWS_AS(a.restore(broken), bitgrad::config_error);
  CHECK_THROWS_AS((void)bitgrad::parse_loader_state("bitgrad-loader-state 2\n"),
                  bitgrad::format_error);
  CHECK_THROWS_AS((void)bitgrad::parse_loader_state("bitgrad-loader-state 1\nx 1 2\na\nb\n"),
                  bitgrad::format_error);
}

TEST_CASE("the loader state's binary form round-trips and restores the same batches") {
  bitgrad::dataset data = numbered(37, 2, 4, 4);
  const loader_options options{.batch_size = 5, .seed = 7, .crop_padding = 1};
  loader<float> a(data, options);
  (void)record(a, 11); // into the second epoch
  const bitgrad::loader_state saved = a.state();
  bitgrad::io::byte_writer w;
  saved.save(w);
  // u32 version, three u64 counters, two strings (u64 length + text)
  CHECK(w.size() == 4 + 3 * 8 + 8 + saved.epoch_rng.size() + 8 + saved.rng.size());
  bitgrad::loader_state back;
  bitgrad::io::byte_reader r(w.bytes(), "checkpoint.bin", 100);
  back.load(r);
  CHECK(r.at_end());
  CHECK(back == saved);
  const auto expected = record(a, 20);
  loader<float> b(data, options);
  b.restore(back);
  CHECK(record(b, 20) == expected);

  // Malformed binary states: format_error at the field's offset, the state unchanged.
  auto load_error = [&](const std::string& bytes) -> std::pair<std::string, std::uint64_t> {
    bitgrad::loader_state s = saved;
    bitgrad::io::byte_reader in(bytes, "checkpoint.bin", 100);
    try {
      s.load(in);
    } catch (const bitgrad::format_error& e) {
      CHECK(s == saved);
      return {e.what(), e.offset()};
    }
    return {"no error", 0};
  };
  const std::string good = w.bytes();
  std::string version = good;
  version[0] = 2;
  CHECK(load_error(version).first.find("unknown loader state version 2") != std::string::npos);
  CHECK(load_error(version).second == 100);
  std::string position = good;
  position[4 + 8 + 7] = 0x7F; // position 2^63 and more, past the dataset
  CHECK(load_error(position).first.find("past the dataset size 37") != std::string::npos);
  std::string sign = good;
  sign[4 + 3 * 8 + 8] = '-'; // the first generator text starts with '-'
  const auto [message, offset] = load_error(sign);
  CHECK(message.find("not a list of unsigned numbers") != std::string::npos);
  CHECK(offset == 100 + 4 + 3 * 8);
  CHECK(load_error(good.substr(0, good.size() - 1)).first.find("truncated") != std::string::npos);
}

TEST_CASE("the loader state's text form is parsed strictly") {
  bitgrad::dataset data = numbered(9, 1, 2, 2);
  loader<float> a(data, {.batch_size = 2, .seed = 5});
  const std::string rng = a.state().rng;
  auto text = [&](const std::string& counters, const std::string& r1, const std::string& r2) {
    return "bitgrad-loader-state 1\n" + counters + "\n" + r1 + "\n" + r2 + "\n";
  };
  const bitgrad::loader_state ok = bitgrad::parse_loader_state(text("2 4 9", rng, rng));
  CHECK(ok.epoch == 2);
  CHECK(ok.position == 4);
  CHECK(ok.dataset_size == 9);
  CHECK(ok.rng == rng);
  // istream >> read "-1" as 2^64 - 1 and accepted "+1", tabs and doubled spaces.
  for (const std::string counters :
       {"-1 0 9", "1 -1 9", "+1 0 9", "1  0 9", " 1 0 9", "1 0 9 ", "1\t0 9", "1 0", "1 0 9 4",
        "1 0 99999999999999999999", "1 0 0x9"}) {
    CAPTURE(counters);
    CHECK_THROWS_WITH_AS((void)bitgrad::parse_loader_state(text(counters, rng, rng)),
                         doctest::Contains("<epoch> <position> <dataset_size>"),
                         bitgrad::format_error);
  }
  const std::string negative = "-" + rng;
  CHECK_THROWS_WITH_AS((void)bitgrad::parse_loader_state(text("1 0 9", rng, negative)),
                       doctest::Contains("line 4"), bitgrad::format_error);
  // restore() refuses a signed generator text as well (operator>> would wrap it).
  bitgrad::loader_state s = a.state();
  s.rng = negative;
  CHECK_THROWS_AS(a.restore(s), bitgrad::config_error);
}

TEST_CASE_TEMPLATE("normalisation: (pixel / 255 - mean[c]) / stddev[c]", T, float, double) {
  bitgrad::dataset data;
  data.channels = 3;
  data.height = 1;
  data.width = 4;
  data.classes = 2;
  data.labels = {1};
  data.pixels = {0, 51, 255, 128, 0, 51, 255, 128, 0, 51, 255, 128};
  loader<T> l(data, {.batch_size = 4, .mean = {0.1, 0.2, 0.3}, .stddev = {1.0, 2.0, 4.0}});
  tensor4<T> x;
  std::vector<std::int32_t> y;
  REQUIRE(l.next(x, y));
  CHECK(y == std::vector<std::int32_t>{1});
  CHECK(x.shape()[0] == 1);
  const double mean[3] = {0.1, 0.2, 0.3}, stddev[3] = {1.0, 2.0, 4.0};
  const int pixel[4] = {0, 51, 255, 128};
  for (std::size_t c = 0; c < 3; ++c)
    for (std::size_t j = 0; j < 4; ++j)
      CHECK(x(0, c, 0, j) == static_cast<T>((pixel[j] / 255.0 - mean[c]) / stddev[c]));
  CHECK(x(0, 1, 0, 1) == doctest::Approx((0.2 - 0.2) / 2.0));
  CHECK(x(0, 2, 0, 2) == doctest::Approx((1.0 - 0.3) / 4.0));

  // One value broadcasts to every channel.
  loader<T> one(data, {.batch_size = 1, .mean = {0.5}, .stddev = {0.25}});
  REQUIRE(one.next(x, y));
  CHECK(x(0, 2, 0, 2) == static_cast<T>((1.0 - 0.5) / 0.25));
  CHECK(x(0, 0, 0, 0) == static_cast<T>(-2.0));
}

TEST_CASE("crop_and_flip on a tiny image") {
  // 1 x 3 x 3 image 1..9 and a second channel 11..19.
  std::vector<std::uint8_t> src{1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19};
  std::vector<std::uint8_t> dst(18);
  using v = std::vector<std::uint8_t>;
  auto run = [&](std::size_t dy, std::size_t dx, bool flip) {
    bitgrad::crop_and_flip(src.data(), 2, 3, 3, 1, dy, dx, flip, dst.data());
    return dst;
  };
  // The centred window is the image itself, or its mirror.
  CHECK(run(1, 1, false) == src);
  CHECK(run(1, 1, true) == v{3, 2, 1, 6, 5, 4, 9, 8, 7, 13, 12, 11, 16, 15, 14, 19, 18, 17});
  // Top-left window: one row and one column of zero padding.
  CHECK(run(0, 0, false) == v{0, 0, 0, 0, 1, 2, 0, 4, 5, 0, 0, 0, 0, 11, 12, 0, 14, 15});
  // Bottom-right window.
  CHECK(run(2, 2, false) == v{5, 6, 0, 8, 9, 0, 0, 0, 0, 15, 16, 0, 18, 19, 0, 0, 0, 0});
  // Crop then flip: the top-left window mirrored.
  CHECK(run(0, 0, true) == v{0, 0, 0, 2, 1, 0, 5, 4, 0, 0, 0, 0, 12, 11, 0, 15, 14, 0});
  // Padding 0: only the flip.
  bitgrad::crop_and_flip(src.data(), 1, 3, 3, 0, 0, 0, true, dst.data());
  CHECK(v(dst.begin(), dst.begin() + 9) == v{3, 2, 1, 6, 5, 4, 9, 8, 7});
}

TEST_CASE("augmentation draws every crop offset and both flips") {
  bitgrad::dataset data;
  data.channels = 1;
  data.height = 3;
  data.width = 3;
  data.classes = 1;
  data.labels = {0};
  data.pixels = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  // All 9 offsets x 2 flips; they are 18 different images.
  std::set<std::vector<std::uint8_t>> candidates;
  std::vector<std::uint8_t> out(9);
  for (std::size_t dy = 0; dy < 3; ++dy)
    for (std::size_t dx = 0; dx < 3; ++dx)
      for (bool flip : {false, true}) {
        bitgrad::crop_and_flip(data.pixels.data(), 1, 3, 3, 1, dy, dx, flip, out.data());
        candidates.insert(out);
      }
  REQUIRE(candidates.size() == 18);

  loader<float> l(data, {.batch_size = 1, .crop_padding = 1, .horizontal_flip = true});
  tensor4<float> x;
  std::vector<std::int32_t> y;
  std::map<std::vector<std::uint8_t>, int> counts;
  for (int i = 0; i < 900; ++i) {
    if (!l.next(x, y)) continue;
    std::vector<std::uint8_t> image;
    for (float value : x) image.push_back(static_cast<std::uint8_t>(std::lround(value * 255.f)));
    CHECK(candidates.count(image) == 1);
    ++counts[image];
  }
  CHECK(counts.size() == 18);
  for (const auto& [image, n] : counts) CHECK(n > 5); // ~25 each

  // Flip only: the image or its mirror, about half each.
  loader<float> f(data, {.batch_size = 1, .seed = 3, .horizontal_flip = true});
  int flipped = 0, total = 0;
  for (int i = 0; i < 2000; ++i) {
    if (!f.next(x, y)) continue;
    ++total;
    const bool mirror = std::lround(x(0, 0, 0, 0) * 255.f) == 3;
    CHECK(std::lround(x(0, 0, 0, mirror ? 2 : 0) * 255.f) == 1);
    flipped += mirror;
  }
  CHECK(total == 1000);
  CHECK(flipped > 430);
  CHECK(flipped < 570);
}

TEST_CASE("the caller's batch storage is reused") {
  bitgrad::dataset data = numbered(10, 1, 4, 4);
  loader<float> l(data, {.batch_size = 4, .seed = 2});
  tensor4<float> x;
  std::vector<std::int32_t> y;
  REQUIRE(l.next(x, y));
  CHECK(x.shape()[0] == 4);
  CHECK(x.shape()[1] == 1);
  CHECK(x.shape()[2] == 4);
  CHECK(x.shape()[3] == 4);
  const float* storage = x.data();
  const std::int32_t* label_storage = y.data();
  REQUIRE(l.next(x, y));
  CHECK(x.data() == storage);
  CHECK(y.data() == label_storage);
  REQUIRE(l.next(x, y)); // the partial last batch (2 images)
  CHECK(x.shape()[0] == 2);
  CHECK(y.size() == 2);
  CHECK(y.data() == label_storage); // shrinking a vector keeps its storage
  CHECK_FALSE(l.next(x, y));
  CHECK(x.shape()[0] == 2); // untouched at the end of the epoch
}

TEST_CASE("configuration errors") {
  bitgrad::dataset data = numbered(4);
  CHECK_THROWS_AS(loader<float>(data, {.batch_size = 0}), bitgrad::config_error);
  CHECK_THROWS_AS(loader<float>(data, {.batch_size = 5, .drop_last = true}), bitgrad::config_error);
  CHECK_THROWS_AS(loader<float>(data, {.mean = {0.1, 0.2}}), bitgrad::config_error);
  CHECK_THROWS_AS(loader<float>(data, {.stddev = {0.0}}), bitgrad::config_error);
  CHECK_THROWS_AS(loader<float>(data, {.stddev = {-1.0}}), bitgrad::config_error);
  bitgrad::dataset empty = numbered(0);
  CHECK_THROWS_AS(loader<float>(empty, {}), bitgrad::config_error);
  bitgrad::dataset bad_label = numbered(4);
  bad_label.labels[2] = 4; // classes == 4
  CHECK_THROWS_AS(loader<float>(bad_label, {}), bitgrad::config_error);
  bitgrad::dataset short_pixels = numbered(4);
  short_pixels.pixels.pop_back();
  CHECK_THROWS_AS(loader<float>(short_pixels, {}), bitgrad::config_error);
  CHECK_NOTHROW(loader<float>(data, {.batch_size = 100}));
}

} // namespace test_data_loader
