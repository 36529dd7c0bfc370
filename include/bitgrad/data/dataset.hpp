// An in-memory image classification data set: N images of C x H x W unsigned bytes (kept raw;
// the loader normalises when it builds a batch) and N int32 labels in [0, classes).
//
//   pixels: [ image 0: channel 0 rows..., channel 1 rows..., ... | image 1 ... ]   (N, C, H, W)
//   labels: [ label 0, label 1, ... ]                                             (N)
//
// load_mnist_format reads an IDX image file and an IDX label file (MNIST, Fashion-MNIST);
// split and subset make train/validation sets. Shuffles here and in the loader use their own
// Fisher-Yates on std::mt19937_64 (not std::shuffle, whose use of the generator differs
// between standard libraries), so a seed gives the same order everywhere.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/data/idx.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad {

/// N images (N, C, H, W) of unsigned bytes and their labels; see the top of this header.
struct dataset {
  std::size_t channels = 0;
  std::size_t height = 0;
  std::size_t width = 0;
  std::size_t classes = 0;
  std::vector<std::uint8_t> pixels; ///< size() * image_size() bytes, NCHW
  std::vector<std::int32_t> labels; ///< size() labels in [0, classes)

  /// Number of images.
  std::size_t size() const noexcept { return labels.size(); }
  bool empty() const noexcept { return labels.empty(); }
  /// Bytes per image: C * H * W.
  std::size_t image_size() const noexcept { return channels * height * width; }
  /// The pixels of image i (C * H * W bytes).
  std::span<const std::uint8_t> image(std::size_t i) const {
    return std::span<const std::uint8_t>(pixels).subspan(i * image_size(), image_size());
  }
};

/// Throws config_error unless `data` is consistent: pixels.size() == size() * image_size(),
/// and every label is in [0, classes). `who` prefixes the message.
inline void validate(const dataset& data, const std::string& who = "dataset") {
  if (data.pixels.size() != data.size() * data.image_size()) {
    throw config_error(who + ": " + std::to_string(data.pixels.size()) + " pixel bytes for " +
                       std::to_string(data.size()) + " images of " + std::to_string(data.channels) +
                       "x" + std::to_string(data.height) + "x" + std::to_string(data.width) +
                       " (expected " + std::to_string(data.size() * data.image_size()) + ")");
  }
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (data.labels[i] < 0 || static_cast<std::size_t>(data.labels[i]) >= data.classes) {
      throw config_error(who + ": label " + std::to_string(data.labels[i]) + " of image " +
                         std::to_string(i) + " is outside [0, " + std::to_string(data.classes) +
                         ")");
    }
  }
}

namespace detail {

/// A uniform integer in [0, n) from `rng`, n > 0; the same on every platform (rejection
/// sampling, unlike std::uniform_int_distribution whose algorithm is unspecified).
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n; // largest multiple of n, exclusive
  for (;;) {
    std::uint64_t x = rng();
    if (x < limit) return x % n;
  }
}

/// Shuffles `v` in place (Fisher-Yates) with `rng`.
template <class V>
void shuffle(V& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) {
    std::size_t j = static_cast<std::size_t>(uniform_below(rng, i));
    std::swap(v[i - 1], v[j]);
  }
}

} // namespace detail

/// Reads an IDX image file (rank 3 (N, H, W) or rank 4 (N, C, H, W)) and an IDX label file
/// (rank 1), raw or gzip. Throws format_error naming the file and offset if either is
/// malformed, if the counts differ (the message names both files and both counts), or if a
/// label is >= classes.
inline dataset load_mnist_format(const std::filesystem::path& images_path,
                                 const std::filesystem::path& labels_path,
                                 std::size_t classes = 10) {
  if (classes == 0) throw config_error("load_mnist_format: classes must be at least 1");
  idx_array images = read_idx_images(images_path);
  std::vector<std::int32_t> labels = read_idx_labels(labels_path);
  if (images.dims[0] != labels.size()) {
    throw format_error(labels_path.string(), 4,
                       "label count " + std::to_string(labels.size()) +
                           " does not match the image count " + std::to_string(images.dims[0]) +
                           " of " + images_path.string());
  }
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (static_cast<std::size_t>(labels[i]) >= classes) {
      throw format_error(labels_path.string(), 8 + i,
                         "label " + std::to_string(labels[i]) + " of record " + std::to_string(i) +
                             " is not below the class count " + std::to_string(classes));
    }
  }
  dataset data;
  data.channels = images.dims[1];
  data.height = images.dims[2];
  data.width = images.dims[3];
  data.classes = classes;
  data.pixels = std::move(images.data);
  data.labels = std::move(labels);
  return data;
}

/// The images `indices` of `data`, in that order (repeats allowed). Throws config_error if an
/// index is out of range.
inline dataset subset(const dataset& data, std::span<const std::size_t> indices) {
  dataset out;
  out.channels = data.channels;
  out.height = data.height;
  out.width = data.width;
  out.classes = data.classes;
  const std::size_t bytes = data.image_size();
  out.pixels.resize(indices.size() * bytes);
  out.labels.resize(indices.size());
  for (std::size_t k = 0; k < indices.size(); ++k) {
    const std::size_t i = indices[k];
    if (i >= data.size()) {
      throw config_error("subset: index " + std::to_string(i) + " at position " +
                         std::to_string(k) + " is out of range for " + std::to_string(data.size()) +
                         " images");
    }
    std::copy_n(data.pixels.begin() + static_cast<std::ptrdiff_t>(i * bytes), bytes,
                out.pixels.begin() + static_cast<std::ptrdiff_t>(k * bytes));
    out.labels[k] = data.labels[i];
  }
  return out;
}

/// A training set and a validation set.
struct dataset_split {
  dataset train;
  dataset validation;
};

/// Splits `data` at random (seeded, deterministic): round(N * validation_fraction) images go
/// to the validation set, the rest to the training set; both keep the original order.
/// validation_fraction must be in [0, 1].
inline dataset_split split(const dataset& data, double validation_fraction, std::uint64_t seed) {
  if (!(validation_fraction >= 0.0 && validation_fraction <= 1.0)) {
    throw config_error("split: validation fraction must be in [0, 1], got " +
                       std::to_string(validation_fraction));
  }
  const std::size_t n = data.size();
  const auto n_validation =
      static_cast<std::size_t>(std::llround(static_cast<double>(n) * validation_fraction));
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937_64 rng(seed);
  detail::shuffle(order, rng);
  std::vector<std::size_t> validation(order.begin(),
                                      order.begin() + static_cast<std::ptrdiff_t>(n_validation));
  std::vector<std::size_t> train(order.begin() + static_cast<std::ptrdiff_t>(n_validation),
                                 order.end());
  std::sort(validation.begin(), validation.end());
  std::sort(train.begin(), train.end());
  return {subset(data, train), subset(data, validation)};
}

} // namespace bitgrad
