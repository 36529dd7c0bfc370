// Data reading: IDX (raw and gzip), the strict error reporting of damaged files, datasets
// (load_mnist_format, subset, split), CIFAR-10 binary files, and the committed Fashion-MNIST
// sample.
#include "test_data_common.hpp"

#include <bitgrad/data/cifar.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/gzip.hpp>
#include <bitgrad/data/idx.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <set>
#include <string>
#include <vector>

namespace test_data {

using namespace bitgrad_test;
using bitgrad::format_error;

namespace {

/// 5 images of 3 x 4 and their 5 labels.
struct idx_pair {
  bytes pixels = random_bytes(5 * 3 * 4, 1);
  bytes labels{3, 1, 4, 1, 5};
  bytes image_file() const { return make_idx(0x08, {5, 3, 4}, pixels); }
  bytes label_file() const { return make_idx(0x08, {5}, labels); }
};

} // namespace

TEST_CASE("IDX round trip, raw and gzip") {
  temp_dir dir;
  idx_pair pair;
  for (bool compressed : {false, true}) {
    CAPTURE(compressed);
    auto images_path = dir / (compressed ? "images.gz" : "images");
    auto labels_path = dir / (compressed ? "labels.gz" : "labels");
    write_bytes(images_path, compressed ? gzip(pair.image_file()) : pair.image_file());
    write_bytes(labels_path, compressed ? gzip(pair.label_file()) : pair.label_file());

    bitgrad::idx_array a = bitgrad::read_idx(images_path);
    CHECK(a.dims == std::vector<std::size_t>{5, 3, 4});
    CHECK(a.data == pair.pixels);

    bitgrad::idx_array images = bitgrad::read_idx_images(images_path);
    CHECK(images.dims == std::vector<std::size_t>{5, 1, 3, 4});
    CHECK(bitgrad::read_idx_labels(labels_path) == std::vector<std::int32_t>{3, 1, 4, 1, 5});

    bitgrad::dataset data = bitgrad::load_mnist_format(images_path, labels_path);
    CHECK(data.size() == 5);
    CHECK(data.channels == 1);
    CHECK(data.height == 3);
    CHECK(data.width == 4);
    CHECK(data.classes == 10);
    CHECK(data.pixels == pair.pixels);
    CHECK(data.labels == std::vector<std::int32_t>{3, 1, 4, 1, 5});
    auto third = data.image(2);
    CHECK(std::equal(third.begin(), third.end(), pair.pixels.begin() + 24));
  }
}

TEST_CASE("IDX: rank-4 images, empty arrays, concatenated gzip members") {
  bytes payload = random_bytes(2 * 3 * 2 * 2, 2);
  bitgrad::idx_array a = bitgrad::parse_idx(make_idx(0x08, {2, 3, 2, 2}, payload), "x");
  CHECK(a.rank() == 4);
  CHECK(a.data == payload);

  bitgrad::idx_array empty = bitgrad::parse_idx(make_idx(0x08, {0, 28, 28}, {}), "empty");
  CHECK(empty.size() == 0);
  CHECK(empty.dims == std::vector<std::size_t>{0, 28, 28});

  // `cat a.gz b.gz`: the file is the concatenation of the two decompressed parts.
  bytes whole = make_idx(0x08, {6}, {10, 11, 12, 13, 14, 15});
  bytes first(whole.begin(), whole.begin() + 7), second(whole.begin() + 7, whole.end());
  bytes joined = gzip(first), tail = gzip(second);
  joined.insert(joined.end(), tail.begin(), tail.end());
  CHECK(bitgrad::parse_idx(joined, "joined").data == bytes{10, 11, 12, 13, 14, 15});
}

TEST_CASE("IDX: damaged headers are format_errors naming the file and offset") {
  temp_dir dir;
  idx_pair pair;
  auto path = dir / "images-idx3-ubyte";
  const std::string name = path.string();
  auto read = [&] { (void)bitgrad::read_idx(path); };

  bytes file = pair.image_file();
  file[1] = 0x01;
  write_bytes(path, file);
  check_format_error(read, name, 0, "magic");

  file = pair.image_file();
  file[2] = 0x0D;
  write_bytes(path, file);
  check_format_error(read, name, 2, "float32");
  file[2] = 0x07;
  write_bytes(path, file);
  check_format_error(read, name, 2, "unknown IDX element type 0x07");

  file = pair.image_file();
  file[3] = 0;
  write_bytes(path, file);
  check_format_error(read, name, 3, "rank is 0");

  write_bytes(path, bytes{0, 0});
  check_format_error(read, name, 2, "truncated IDX header");
  write_bytes(path, bytes{0, 0, 8, 3, 0, 0, 0, 5, 0, 0}); // rank 3 needs 16 header bytes
  check_format_error(read, name, 10, "needs 16 header bytes");

  // The same check inside a gzip file reports the offset in the decompressed data.
  file = pair.image_file();
  file[0] = 0x42;
  write_bytes(path, gzip(file));
  check_format_error(read, name, 0, "decompressed");

  // A rank-2 image file and a rank-3 label file are rejected by the typed readers.
  write_bytes(path, make_idx(0x08, {2, 2}, {1, 2, 3, 4}));
  check_format_error([&] { (void)bitgrad::read_idx_images(path); }, name, 3, "rank 2");
  check_format_error([&] { (void)bitgrad::read_idx_labels(path); }, name, 3, "rank 2");
}

TEST_CASE("IDX: payload must match the dimensions exactly") {
  temp_dir dir;
  idx_pair pair;
  auto path = dir / "images";
  const std::string name = path.string();
  auto read = [&] { (void)bitgrad::read_idx(path); };

  // Too short, raw: the error is where the data ends and names the expected byte count.
  bytes file = pair.image_file();
  file.resize(file.size() - 5);
  write_bytes(path, file);
  check_format_error(read, name, file.size(), "need 60 bytes");

  // Too short inside a valid gzip stream.
  write_bytes(path, gzip(file));
  check_format_error(read, name, file.size(), "need 60 bytes");

  // Trailing garbage after the payload, raw and gzip.
  file = pair.image_file();
  file.insert(file.end(), {1, 2, 3});
  write_bytes(path, file);
  check_format_error(read, name, 16 + 60, "3 trailing bytes");
  write_bytes(path, gzip(file));
  check_format_error(read, name, 16 + 60, "3 trailing bytes");

  // A caller-chosen payload limit.
  check_format_error([&] { (void)bitgrad::parse_idx(pair.image_file(), "small", 59); }, "small", 12,
                     "limit of 59"); // 5 * 3 * 4 > 59 at dimension 2 (offset 12)
}

TEST_CASE("IDX: a damaged rank byte is named, not reported as trailing bytes") {
  // Issue #17: a Fashion-MNIST image file whose rank byte became 0x99 was reported as
  // "47039400 trailing bytes after the IDX payload of 0 bytes". The header then reads its 153
  // dimensions from the images, whose first rows are black (zeros): an empty array, and the
  // whole payload left over.
  temp_dir dir;
  bytes pixels(1000 * 28 * 28, 0);
  for (std::size_t i = 5000; i < pixels.size(); ++i) pixels[i] = static_cast<std::uint8_t>(i * 7);
  bytes file = make_idx(0x08, {1000, 28, 28}, pixels);
  file[3] = 0x99;
  const auto path = dir / "train-images-idx3-ubyte";
  write_bytes(path, file);
  const std::string name = path.string();
  // The typed reader (and load_mnist_format through it) checks the rank first.
  check_format_error([&] { (void)bitgrad::read_idx_images(path); }, name, 3,
                     "an IDX image file has rank 3 (N, H, W) or 4 (N, C, H, W), found rank 153 "
                     "(byte 0x99)");
  check_format_error([&] { (void)bitgrad::read_idx_labels(path); }, name, 3,
                     "an IDX label file has rank 1 (N), found rank 153");
  // The generic reader cannot know the rank is wrong, but says what the header declared.
  check_format_error([&] { (void)bitgrad::read_idx(path); }, name, 4 + 4 * 153,
                     "the header (rank 153, dimensions 1000 x 28 x 28 x 0 x 0");
  // A payload one byte short names the header too.
  file = make_idx(0x08, {5, 3, 4}, bytes(59, 1));
  write_bytes(path, file);
  check_format_error([&] { (void)bitgrad::read_idx(path); }, name, 16 + 59,
                     "(rank 3, dimensions 5 x 3 x 4; ending at offset 76), found 59");
}

TEST_CASE("IDX: absurd dimensions are rejected before any allocation") {
  // 65535^3 elements: over the 1 GiB cap at the second dimension (offset 8).
  bytes file = make_idx(0x08, {65535, 65535, 65535}, {1, 2, 3});
  check_format_error([&] { (void)bitgrad::parse_idx(file, "huge"); }, "huge", 8, "limit");
  // 2^32-1 in every one of 255 dimensions would overflow 64 bits many times over.
  std::vector<std::uint32_t> dims(255, 0xFFFFFFFFu);
  check_format_error([&] { (void)bitgrad::parse_idx(make_idx(0x08, dims, {}), "wide"); }, "wide", 4,
                     "dimension 0 is 4294967295");
  // ... but a zero anywhere makes the array empty, whatever the other dimensions.
  dims[100] = 0;
  CHECK(bitgrad::parse_idx(make_idx(0x08, dims, {}), "zero").size() == 0);
}

TEST_CASE("gzip: truncated, corrupt and padded streams are format_errors") {
  temp_dir dir;
  idx_pair pair;
  auto path = dir / "images.gz";
  const std::string name = path.string();
  auto read = [&] { (void)bitgrad::read_idx(path); };
  const bytes compressed = gzip(pair.image_file());

  // Cut off in the middle and cut off just before the trailer's last bytes.
  for (std::size_t keep : {compressed.size() / 2, compressed.size() - 4, std::size_t{10}}) {
    CAPTURE(keep);
    bytes cut(compressed.begin(), compressed.begin() + static_cast<std::ptrdiff_t>(keep));
    write_bytes(path, cut);
    check_format_error(read, name, keep, "gzip stream truncated");
  }
  // A wrong CRC in the trailer (bytes -8..-5).
  bytes bad_crc = compressed;
  bad_crc[bad_crc.size() - 8] ^= 0xFF;
  write_bytes(path, bad_crc);
  CHECK_THROWS_WITH_AS(read(), doctest::Contains("corrupt gzip stream"), format_error);
  // A wrong length in the trailer (bytes -4..-1).
  bytes bad_length = compressed;
  bad_length.back() ^= 0x01;
  write_bytes(path, bad_length);
  CHECK_THROWS_WITH_AS(read(), doctest::Contains("corrupt gzip stream"), format_error);
  // Garbage after the gzip stream.
  bytes padded = compressed;
  padded.insert(padded.end(), {0, 0, 0});
  write_bytes(path, padded);
  check_format_error(read, name, compressed.size(), "3 bytes of trailing data");
  // A decompression bomb stops at the limit.
  bytes zeros(1 << 20, 0);
  CHECK_THROWS_WITH_AS((void)bitgrad::gunzip(gzip(zeros), "bomb", 1000),
                       doctest::Contains("more than the limit of 1000"), format_error);
  CHECK(bitgrad::gunzip(gzip(zeros), "fits", 1 << 20) == zeros);
}

TEST_CASE("IDX: random corruption ends in a format_error or a valid array, never anything else") {
  idx_pair pair;
  const bytes raw = pair.image_file();
  const bytes compressed = gzip(raw);
  std::mt19937_64 rng(7);
  int errors = 0, parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    bytes input = trial % 2 == 0 ? raw : compressed;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 3) {
      case 0:
        input[rng() % input.size()] = static_cast<std::uint8_t>(rng());
        break;
      case 1:
        input.resize(rng() % (input.size() + 1));
        break;
      default:
        input.push_back(static_cast<std::uint8_t>(rng()));
        break;
      }
      if (input.empty()) input.push_back(0);
    }
    try {
      bitgrad::idx_array a = bitgrad::parse_idx(input, "fuzz", 1 << 16);
      std::size_t product = 1;
      for (auto d : a.dims) product *= d;
      CHECK(product == a.size());
      ++parsed;
    } catch (const format_error& e) {
      CHECK(std::string(e.what()).rfind("fuzz: at offset ", 0) == 0);
      ++errors;
    }
  }
  CHECK(errors > 2000); // almost every edit breaks the file
  CHECK(parsed > 0);    // e.g. a changed pixel or label byte
}

TEST_CASE("load_mnist_format: mismatched counts and out-of-range labels") {
  temp_dir dir;
  idx_pair pair;
  auto images_path = dir / "imgs";
  auto labels_path = dir / "lbls";
  write_bytes(images_path, pair.image_file());
  write_bytes(labels_path, make_idx(0x08, {4}, {1, 2, 3, 4}));
  try {
    (void)bitgrad::load_mnist_format(images_path, labels_path);
    FAIL("no exception");
  } catch (const format_error& e) {
    std::string msg = e.what();
    CHECK(e.offset() == 4);
    CHECK(msg.find(images_path.string()) != std::string::npos);
    CHECK(msg.find(labels_path.string()) != std::string::npos);
    CHECK(msg.find("label count 4") != std::string::npos);
    CHECK(msg.find("image count 5") != std::string::npos);
  }

  write_bytes(labels_path, make_idx(0x08, {5}, {1, 2, 3, 10, 4}));
  check_format_error([&] { (void)bitgrad::load_mnist_format(images_path, labels_path); },
                     labels_path.string(), 8 + 3, "label 10");
  // The same labels are fine with more classes.
  CHECK(bitgrad::load_mnist_format(images_path, labels_path, 11).labels[3] == 10);

  CHECK_THROWS_AS((void)bitgrad::load_mnist_format(dir / "missing", labels_path),
                  bitgrad::io_error);
}

TEST_CASE("subset and split") {
  bitgrad::dataset data;
  data.channels = 1;
  data.height = 2;
  data.width = 1;
  data.classes = 100;
  for (std::int32_t i = 0; i < 100; ++i) {
    data.labels.push_back(i);
    data.pixels.push_back(static_cast<std::uint8_t>(i));
    data.pixels.push_back(static_cast<std::uint8_t>(200 - i));
  }
  bitgrad::validate(data);

  std::vector<std::size_t> picks{7, 3, 7};
  bitgrad::dataset s = bitgrad::subset(data, picks);
  CHECK(s.labels == std::vector<std::int32_t>{7, 3, 7});
  CHECK(s.pixels == bytes{7, 193, 3, 197, 7, 193});
  std::vector<std::size_t> bad{1, 100};
  CHECK_THROWS_AS((void)bitgrad::subset(data, bad), bitgrad::config_error);

  auto a = bitgrad::split(data, 0.2, 42);
  auto b = bitgrad::split(data, 0.2, 42);
  auto c = bitgrad::split(data, 0.2, 43);
  CHECK(a.train.size() == 80);
  CHECK(a.validation.size() == 20);
  CHECK(a.validation.labels == b.validation.labels);
  CHECK(a.validation.labels != c.validation.labels);
  // Disjoint, complete, in original order, pixels following their labels.
  std::vector<std::int32_t> all = a.train.labels;
  all.insert(all.end(), a.validation.labels.begin(), a.validation.labels.end());
  std::sort(all.begin(), all.end());
  std::vector<std::int32_t> expected(100);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(all == expected);
  CHECK(std::is_sorted(a.train.labels.begin(), a.train.labels.end()));
  for (std::size_t i = 0; i < a.validation.size(); ++i)
    CHECK(a.validation.image(i)[0] == a.validation.labels[i]);

  CHECK(bitgrad::split(data, 0.0, 1).validation.size() == 0);
  CHECK(bitgrad::split(data, 1.0, 1).train.size() == 0);
  CHECK_THROWS_AS((void)bitgrad::split(data, 1.5, 1), bitgrad::config_error);
  CHECK_THROWS_AS((void)bitgrad::split(data, -0.1, 1), bitgrad::config_error);
}

namespace {

/// CIFAR-10 records with the given labels; pixel (c, y, x) of record r = r + 3c + y + x.
bytes make_cifar(const std::vector<std::uint8_t>& labels) {
  bytes out;
  for (std::size_t r = 0; r < labels.size(); ++r) {
    out.push_back(labels[r]);
    for (std::size_t c = 0; c < 3; ++c)
      for (std::size_t y = 0; y < 32; ++y)
        for (std::size_t x = 0; x < 32; ++x)
          out.push_back(static_cast<std::uint8_t>(r + 3 * c + y + x));
  }
  return out;
}

} // namespace

TEST_CASE("CIFAR-10 binary files") {
  temp_dir dir;
  auto path = dir / "data_batch_1.bin";
  const std::string name = path.string();
  write_bytes(path, make_cifar({0, 9, 4}));
  bitgrad::dataset data = bitgrad::read_cifar10(path);
  CHECK(data.size() == 3);
  CHECK(data.channels == 3);
  CHECK(data.height == 32);
  CHECK(data.width == 32);
  CHECK(data.classes == 10);
  CHECK(data.labels == std::vector<std::int32_t>{0, 9, 4});
  auto img = data.image(2); // planar: channel 1, row 5, column 7 at 1024 + 5 * 32 + 7
  CHECK(img[1024 + 5 * 32 + 7] == 2 + 3 + 5 + 7);
  CHECK(img[2 * 1024 + 31 * 32 + 31] == 2 + 6 + 62);

  // Several files in order; gzip accepted.
  auto second = dir / "data_batch_2.bin.gz";
  write_bytes(second, gzip(make_cifar({5})));
  std::vector<std::filesystem::path> both{path, second};
  bitgrad::dataset joined = bitgrad::read_cifar10_files(both);
  CHECK(joined.labels == std::vector<std::int32_t>{0, 9, 4, 5});
  CHECK(joined.image(3)[0] == 0); // record 0 of the second file

  bytes file = make_cifar({1, 2, 3});
  file.resize(file.size() - 100);
  write_bytes(path, file);
  check_format_error([&] { (void)bitgrad::read_cifar10(path); }, name, 2 * 3073,
                     "not a multiple of the 3073-byte record");

  write_bytes(path, make_cifar({1, 2, 10, 3}));
  check_format_error([&] { (void)bitgrad::read_cifar10(path); }, name, 2 * 3073,
                     "record 2: label 10");

  write_bytes(path, {});
  check_format_error([&] { (void)bitgrad::read_cifar10(path); }, name, 0, "empty");
}

TEST_CASE("the committed Fashion-MNIST sample") {
  const std::string dir = BITGRAD_TEST_DATA_DIR "/fashion-sample/";
  bitgrad::dataset train = bitgrad::load_mnist_format(dir + "train-images-idx3-ubyte.gz",
                                                      dir + "train-labels-idx1-ubyte.gz");
  bitgrad::dataset test = bitgrad::load_mnist_format(dir + "t10k-images-idx3-ubyte.gz",
                                                     dir + "t10k-labels-idx1-ubyte.gz");
  CHECK(train.size() == 1200);
  CHECK(test.size() == 400);
  for (const auto* d : {&train, &test}) {
    CHECK(d->channels == 1);
    CHECK(d->height == 28);
    CHECK(d->width == 28);
    CHECK(d->classes == 10);
  }
  // The first labels are those of the original files (the sample is their first records).
  CHECK(std::vector<std::int32_t>(train.labels.begin(), train.labels.begin() + 10) ==
        std::vector<std::int32_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
  CHECK(std::vector<std::int32_t>(test.labels.begin(), test.labels.begin() + 10) ==
        std::vector<std::int32_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7});
  auto histogram = [](const bitgrad::dataset& d) {
    std::array<int, 10> h{};
    for (auto l : d.labels) ++h[static_cast<std::size_t>(l)];
    return h;
  };
  CHECK(histogram(train) == std::array<int, 10>{123, 128, 110, 114, 111, 116, 121, 134, 121, 122});
  CHECK(histogram(test) == std::array<int, 10>{42, 44, 54, 36, 43, 32, 39, 40, 34, 36});
  // Pixel checksums (computed with Python from the same files).
  auto sum = [](auto span) {
    std::uint64_t s = 0;
    for (auto p : span) s += p;
    return s;
  };
  CHECK(sum(train.image(0)) == 76247);
  CHECK(sum(train.pixels) == 67993178);
  CHECK(sum(test.image(0)) == 33456);
  CHECK(sum(test.pixels) == 23533672);
  auto row = train.image(0).subspan(14 * 28, 28); // the middle row of the first ankle boot
  CHECK(row[12] == 237);
  CHECK(row[25] == 255);
  CHECK(row[27] == 0);
}

} // namespace test_data
