// Batches from a dataset: seeded shuffling, normalisation, optional augmentation, and a state
// that can be saved in a checkpoint and restored to continue with exactly the same batches.
//
// Words:
//   epoch     one pass over the data set; every image appears exactly once (minus the last
//             partial batch when drop_last is set), in an order drawn at the start of the epoch.
//   position  how many images of the current epoch have been handed out.
//   batch     (B, C, H, W) tensor of T plus B int32 labels; B = batch_size except possibly the
//             last batch of an epoch.
//
// For each image, in this order:
//   1. augmentation (if enabled) on the raw bytes: random crop with zero padding p (pad the
//      image with p zero pixels on every side, cut an H x W window at a uniformly drawn offset
//      (dy, dx) in [0, 2p]^2), then a horizontal flip with probability 1/2. Padding is pixel
//      value 0, as torchvision's RandomCrop(padding=p) pads before normalising.
//   2. normalisation per channel c: x = (pixel / 255 - mean[c]) / stddev[c]
//      (mean and stddev hold one value for all channels or one per channel).
//
// Randomness: one std::mt19937_64 seeded with `seed` draws the permutation at the start of
// every epoch (Fisher-Yates, detail::uniform_below, identical on every standard library) and
// then, per image, dy, dx (if p > 0) and the flip (if enabled). state() records the epoch,
// the position, the generator as it was at the start of the epoch (to redraw the permutation)
// and the generator now; restore() on a loader built with the same dataset and options
// continues with identical batches.
//
// Usage:
//   bitgrad::loader<float> train(data, {.batch_size = 128, .seed = 1});
//   bitgrad::tensor4<float> x;  std::vector<std::int32_t> y;
//   for (int epoch = 0; epoch < epochs; ++epoch)
//     while (train.next(x, y)) { ... }   // next() returns false once at the end of each epoch
//
// The loader keeps a pointer to the dataset, which must outlive it. next() resizes x and y
// only when the batch shape changes (in steady state: never within an epoch except for a
// last partial batch), so their storage is reused.
//
// Sharding (data-parallel training, bitgrad/dist/): with shard_count = p > 1 and shard_index
// = r, every process runs a loader with the same dataset, seed and options, so all of them
// draw the same permutation; of each global batch of b images (b = batch_size, or the partial
// last batch) the loader hands out only the contiguous slice shard_slice(b, r, p):
//   [floor(r * b / p), floor((r + 1) * b / p))     (sizes floor(b/p) or ceil(b/p))
// The slices of the p processes are disjoint and their union, in rank order, is the batch a
// single process gets. Augmentation draws happen for every image of the global batch on every
// process (the slice only decides which images are decoded), so the generators, state() and
// position() are the same on all processes: a state saved with p processes restores with any
// other count. A global batch smaller than p (only possible for the last partial batch; a
// batch_size below p is rejected) gives some processes an empty slice: next() then returns
// true with a batch of 0 images. The gradient of the mean loss over the global batch is
// sum_r (n_r / b) * g_r, where g_r is the mean-loss gradient of process r's n_r images.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/tensor.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/io/bytes.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <locale>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace bitgrad {

/// How a loader batches, normalises and augments.
struct loader_options {
  std::size_t batch_size = 64;
  bool shuffle = true;             ///< false: images in dataset order every epoch
  bool drop_last = false;          ///< true: drop the last batch of an epoch if it is partial
  std::uint64_t seed = 0;          ///< seeds the shuffle and the augmentation
  std::vector<double> mean{0.0};   ///< per channel, or one value for all channels
  std::vector<double> stddev{1.0}; ///< per channel, or one value for all channels; > 0
  std::size_t crop_padding = 0;    ///< p of the random crop; 0 disables it
  bool horizontal_flip = false;    ///< flip each image with probability 1/2
  std::size_t shard_count = 1;     ///< processes sharing every batch (see the top); >= 1
  std::size_t shard_index = 0;     ///< this process's slice of every batch; < shard_count
};

/// The half-open range [begin, end) of a batch's positions that one shard takes.
struct shard_range {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t size() const noexcept { return end - begin; }
  bool operator==(const shard_range&) const = default;
};

/// Slice `index` of `count` of a batch of `batch` images: [floor(index * batch / count),
/// floor((index + 1) * batch / count)). Requires index < count.
constexpr shard_range shard_slice(std::size_t batch, std::size_t index, std::size_t count) {
  return {index * batch / count, (index + 1) * batch / count};
}

namespace detail {

/// True when `text` can be a std::mt19937_64's text form: unsigned decimal numbers separated
/// by single spaces (no sign, no other character). Checked before the text reaches
/// operator>>, which would read "-1" as 2^64 - 1.
inline bool is_engine_text(std::string_view text) {
  if (text.empty() || text.front() == ' ' || text.back() == ' ') return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' ? text[i - 1] == ' ' : (c < '0' || c > '9')) return false;
  }
  return true;
}

/// `text` as a whole unsigned decimal integer (no sign, nothing around it), or false.
inline bool parse_count(std::string_view text, std::uint64_t& v) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return !text.empty() && ec == std::errc{} && end == text.data() + text.size();
}

} // namespace detail

/// Where a loader is; see loader::state(). Binary form (save / load, in checkpoints):
///   u32 version (1), u64 epoch, u64 position, u64 dataset_size, string epoch_rng, string rng
/// (io/bytes.hpp: little-endian, a string is a u64 length and the bytes). Text form (version 1
/// checkpoints): to_string / parse_loader_state.
struct loader_state {
  std::uint64_t epoch = 0;
  std::uint64_t position = 0;
  std::uint64_t dataset_size = 0; ///< checked by restore()
  std::string epoch_rng;          ///< generator at the start of the epoch (std::mt19937_64 text)
  std::string rng;                ///< generator now

  bool operator==(const loader_state&) const = default;

  static constexpr std::uint32_t version = 1;
  /// Longest generator text load() accepts (std::mt19937_64's is about 6.6 KB).
  static constexpr std::uint64_t max_engine_text = 1 << 16;

  void save(io::byte_writer& w) const {
    w.put(version);
    w.put(epoch);
    w.put(position);
    w.put(dataset_size);
    w.put_string(epoch_rng);
    w.put_string(rng);
  }

  /// Reads what save() wrote: format_error (naming the reader's source, the offset and the
  /// field) for an unknown version, a position past the dataset or a generator text that is
  /// not unsigned numbers; *this is unchanged then.
  void load(io::byte_reader& r) {
    const std::uint64_t at = r.offset();
    const auto v = r.get<std::uint32_t>("loader state version");
    if (v != version)
      r.fail_at(at, "unknown loader state version " + std::to_string(v) +
                        " (this reader: " + std::to_string(version) + ")");
    loader_state s;
    s.epoch = r.get<std::uint64_t>("loader epoch");
    s.position = r.get<std::uint64_t>("loader position");
    s.dataset_size = r.get<std::uint64_t>("loader dataset size");
    if (s.position > s.dataset_size)
      r.fail("loader position " + std::to_string(s.position) + " is past the dataset size " +
             std::to_string(s.dataset_size));
    for (std::string* text : {&s.epoch_rng, &s.rng}) {
      const std::uint64_t text_at = r.offset();
      *text = r.get_string("loader generator state", max_engine_text);
      if (!detail::is_engine_text(*text))
        r.fail_at(text_at, "loader generator state is not a list of unsigned numbers");
    }
    *this = std::move(s);
  }
};

/// "bitgrad-loader-state 1\n<epoch> <position> <dataset_size>\n<epoch_rng>\n<rng>\n"
inline std::string to_string(const loader_state& state) {
  return "bitgrad-loader-state 1\n" + std::to_string(state.epoch) + " " +
         std::to_string(state.position) + " " + std::to_string(state.dataset_size) + "\n" +
         state.epoch_rng + "\n" + state.rng + "\n";
}

/// Parses the text of to_string(loader_state), strictly: the counters are unsigned decimal
/// numbers separated by single spaces (no sign, no other character), the generators unsigned
/// numbers. Throws format_error naming `source` and the offset (`base_offset` + the offset in
/// the text) if it is malformed.
inline loader_state parse_loader_state(std::string_view text,
                                       const std::string& source = "loader state",
                                       std::uint64_t base_offset = 0) {
  auto fail = [&](std::size_t offset, const std::string& reason) {
    return format_error(source, base_offset + offset, reason);
  };
  const std::string_view magic = "bitgrad-loader-state 1\n";
  if (text.substr(0, magic.size()) != magic)
    throw fail(0, "expected the header \"bitgrad-loader-state 1\"");
  std::vector<std::string_view> lines;
  std::vector<std::size_t> starts;
  std::size_t start = magic.size();
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) throw fail(start, "missing final newline");
    lines.push_back(text.substr(start, end - start));
    starts.push_back(start);
    start = end + 1;
  }
  if (lines.size() != 3) {
    throw fail(magic.size(),
               "expected 3 lines after the header, found " + std::to_string(lines.size()));
  }
  loader_state state;
  // The counters: exactly three fields separated by single spaces.
  std::vector<std::string_view> fields;
  for (std::size_t from = 0;;) {
    const std::size_t space = lines[0].find(' ', from);
    fields.push_back(lines[0].substr(from, space - from));
    if (space == std::string_view::npos) break;
    from = space + 1;
  }
  if (fields.size() != 3 || !detail::parse_count(fields[0], state.epoch) ||
      !detail::parse_count(fields[1], state.position) ||
      !detail::parse_count(fields[2], state.dataset_size))
    throw fail(magic.size(), "expected \"<epoch> <position> <dataset_size>\" (unsigned decimal "
                             "numbers), got '" +
                                 std::string(lines[0].substr(0, 80)) + "'");
  for (std::size_t i = 1; i < 3; ++i)
    if (!detail::is_engine_text(lines[i]))
      throw fail(starts[i], "line " + std::to_string(i + 2) +
                                ": a generator state is unsigned numbers separated by spaces");
  state.epoch_rng = std::string(lines[1]);
  state.rng = std::string(lines[2]);
  return state;
}

/// Crops and flips one C x H x W image of bytes: dst(c, y, x) = padded(c, y + dy, x' + dx)
/// with x' = W - 1 - x if `flip` else x, where padded is `src` surrounded by `padding` zero
/// pixels on every side; dy, dx in [0, 2 * padding]. `dst` holds C * H * W bytes.
inline void crop_and_flip(const std::uint8_t* src, std::size_t channels, std::size_t height,
                          std::size_t width, std::size_t padding, std::size_t dy, std::size_t dx,
                          bool flip, std::uint8_t* dst) {
  // Source row/column = y + dy - padding (may be outside the image: then zero).
  const auto h = static_cast<std::ptrdiff_t>(height);
  const auto w = static_cast<std::ptrdiff_t>(width);
  const auto oy = static_cast<std::ptrdiff_t>(dy) - static_cast<std::ptrdiff_t>(padding);
  const auto ox = static_cast<std::ptrdiff_t>(dx) - static_cast<std::ptrdiff_t>(padding);
  for (std::size_t c = 0; c < channels; ++c) {
    const std::uint8_t* plane = src + c * height * width;
    std::uint8_t* out = dst + c * height * width;
    for (std::ptrdiff_t y = 0; y < h; ++y) {
      const std::ptrdiff_t sy = y + oy;
      for (std::ptrdiff_t x = 0; x < w; ++x) {
        const std::ptrdiff_t sx = (flip ? w - 1 - x : x) + ox;
        const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
        out[y * w + x] = inside ? plane[sy * w + sx] : std::uint8_t{0};
      }
    }
  }
}

/// Hands out batches of a dataset; see the top of this header.
/// T: the element type of the image batches (float or double).
template <class T>
requires std::floating_point<T>
class loader {
public:
  /// Throws config_error for batch size 0, an empty or inconsistent dataset, drop_last with a
  /// batch larger than the dataset, wrong mean/stddev counts or a non-positive stddev, a shard
  /// index not below the shard count, or a batch size smaller than the shard count.
  loader(const dataset& data, loader_options options)
      : data_(&data), options_(std::move(options)), rng_(options_.seed) {
    if (options_.batch_size == 0) throw config_error("loader: batch size must be at least 1");
    if (options_.shard_count == 0) throw config_error("loader: shard count must be at least 1");
    if (options_.shard_index >= options_.shard_count) {
      throw config_error("loader: shard index " + std::to_string(options_.shard_index) +
                         " is not below the shard count " + std::to_string(options_.shard_count));
    }
    if (options_.batch_size < options_.shard_count) {
      throw config_error("loader: the global batch size " + std::to_string(options_.batch_size) +
                         " is smaller than the shard (process) count " +
                         std::to_string(options_.shard_count) +
                         ": every process needs at least one image of every full batch");
    }
    if (data.empty()) throw config_error("loader: the dataset is empty");
    validate(data, "loader");
    if (options_.drop_last && options_.batch_size > data.size()) {
      throw config_error("loader: drop_last with batch size " +
                         std::to_string(options_.batch_size) + " > dataset size " +
                         std::to_string(data.size()) + " gives no batches");
    }
    if (options_.crop_padding > (std::size_t{1} << 20))
      throw config_error("loader: crop padding " + std::to_string(options_.crop_padding) +
                         " is absurdly large");
    build_lut();
    if (augmenting()) scratch_.resize(data.image_size());
    start_epoch(0);
  }
  /// The loader keeps a pointer to the dataset: a temporary would dangle.
  loader(const dataset&& data, loader_options options) = delete;

  /// Fills the next batch of the current epoch into `images` (B, C, H, W) and `labels` (B)
  /// and returns true; at the end of the epoch returns false (leaving both untouched) and
  /// moves on to the next epoch. With sharding, B is this shard's slice of the global batch
  /// (possibly 0 for a last partial batch smaller than the shard count).
  bool next(tensor4<T>& images, std::vector<std::int32_t>& labels) {
    const std::size_t n = data_->size();
    const std::size_t b = std::min<std::size_t>(options_.batch_size, n - position_);
    if (b == 0 || (options_.drop_last && b < options_.batch_size)) {
      start_epoch(epoch_ + 1);
      return false;
    }
    const shard_range mine = shard_slice(b, options_.shard_index, options_.shard_count);
    const std::size_t channels = data_->channels, plane = data_->height * data_->width;
    const std::array<std::size_t, 4> shape{mine.size(), channels, data_->height, data_->width};
    if (!std::equal(shape.begin(), shape.end(), images.shape().begin())) images.resize(shape);
    labels.resize(mine.size());

    T* out = images.data();
    for (std::size_t k = 0; k < b; ++k) {
      // Every shard draws the augmentation of every image (same generator on all shards);
      // only its own slice is decoded.
      const augmentation a = augmenting() ? draw_augmentation() : augmentation{};
      if (k < mine.begin || k >= mine.end) continue;
      const std::size_t i = order_[position_ + k];
      labels[k - mine.begin] = data_->labels[i];
      const std::uint8_t* src = data_->pixels.data() + i * data_->image_size();
      if (augmenting()) {
        crop_and_flip(src, data_->channels, data_->height, data_->width, options_.crop_padding,
                      a.dy, a.dx, a.flip, scratch_.data());
        src = scratch_.data();
      }
      for (std::size_t c = 0; c < channels; ++c) {
        const T* lut = lut_.data() + c * 256;
        const std::uint8_t* in = src + c * plane;
        for (std::size_t j = 0; j < plane; ++j) out[j] = lut[in[j]];
        out += plane;
      }
    }
    position_ += b;
    last_global_batch_ = b;
    return true;
  }

  /// The global size b of the batch the last successful next() handed out (this shard got
  /// shard_slice(b, shard_index, shard_count) of it); 0 before the first batch. Its share of
  /// the global mean-loss gradient is labels.size() / b.
  std::size_t last_global_batch_size() const noexcept { return last_global_batch_; }

  /// Batches per epoch: ceil(N / B), or floor(N / B) with drop_last.
  std::size_t batches_per_epoch() const noexcept {
    const std::size_t n = data_->size(), b = options_.batch_size;
    return options_.drop_last ? n / b : (n + b - 1) / b;
  }
  std::size_t epoch() const noexcept { return static_cast<std::size_t>(epoch_); }
  std::size_t position() const noexcept { return static_cast<std::size_t>(position_); }
  std::size_t dataset_size() const noexcept { return data_->size(); }
  const loader_options& options() const noexcept { return options_; }

  /// Where the loader is, for a checkpoint.
  loader_state state() const {
    loader_state s;
    s.epoch = epoch_;
    s.position = position_;
    s.dataset_size = data_->size();
    s.epoch_rng = engine_text(epoch_rng_);
    s.rng = engine_text(rng_);
    return s;
  }

  /// Continues from `s` (taken from a loader with the same dataset and options). Throws
  /// config_error if the dataset size differs or the state is inconsistent; the loader is
  /// unchanged then.
  void restore(const loader_state& s) {
    if (s.dataset_size != data_->size()) {
      throw config_error("loader::restore: the state is for a dataset of " +
                         std::to_string(s.dataset_size) + " images, this one has " +
                         std::to_string(data_->size()));
    }
    if (s.position > data_->size()) {
      throw config_error("loader::restore: position " + std::to_string(s.position) +
                         " is beyond the dataset size " + std::to_string(data_->size()));
    }
    std::mt19937_64 at_start = parse_engine(s.epoch_rng, "epoch_rng");
    std::mt19937_64 now = parse_engine(s.rng, "rng");
    rng_ = at_start;
    start_epoch(s.epoch);
    rng_ = now;
    position_ = s.position;
  }

private:
  bool augmenting() const noexcept { return options_.crop_padding > 0 || options_.horizontal_flip; }

  void build_lut() {
    const std::size_t channels = data_->channels;
    auto per_channel = [&](const std::vector<double>& v, const char* what) {
      if (v.size() != 1 && v.size() != channels) {
        throw config_error(std::string("loader: ") + what + " has " + std::to_string(v.size()) +
                           " values; expected 1 or " + std::to_string(channels) +
                           " (one per channel)");
      }
      std::vector<double> out(channels);
      for (std::size_t c = 0; c < channels; ++c) out[c] = v.size() == 1 ? v[0] : v[c];
      return out;
    };
    const std::vector<double> mean = per_channel(options_.mean, "mean");
    const std::vector<double> stddev = per_channel(options_.stddev, "stddev");
    lut_.resize(channels * 256);
    for (std::size_t c = 0; c < channels; ++c) {
      if (!(stddev[c] > 0.0) || !std::isfinite(stddev[c]) || !std::isfinite(mean[c])) {
        throw config_error("loader: channel " + std::to_string(c) +
                           " needs a finite mean and a "
                           "finite stddev > 0, got mean " +
                           std::to_string(mean[c]) + ", stddev " + std::to_string(stddev[c]));
      }
      for (std::size_t p = 0; p < 256; ++p)
        lut_[c * 256 + p] = static_cast<T>((static_cast<double>(p) / 255.0 - mean[c]) / stddev[c]);
    }
  }

  void start_epoch(std::uint64_t epoch) {
    epoch_ = epoch;
    position_ = 0;
    epoch_rng_ = rng_;
    order_.resize(data_->size());
    std::iota(order_.begin(), order_.end(), std::size_t{0});
    if (options_.shuffle) detail::shuffle(order_, rng_);
  }

  struct augmentation {
    std::size_t dy = 0, dx = 0;
    bool flip = false;
  };

  /// The crop offset and flip of the next image, drawn from rng_ (dy, dx if p > 0, then the
  /// flip if enabled).
  augmentation draw_augmentation() {
    const std::size_t p = options_.crop_padding;
    augmentation a{p, p, false}; // p, p: the uncropped window
    if (p > 0) {
      a.dy = static_cast<std::size_t>(detail::uniform_below(rng_, 2 * p + 1));
      a.dx = static_cast<std::size_t>(detail::uniform_below(rng_, 2 * p + 1));
    }
    a.flip = options_.horizontal_flip && detail::uniform_below(rng_, 2) == 1;
    return a;
  }

  static std::string engine_text(const std::mt19937_64& engine) {
    std::ostringstream out;
    out.imbue(std::locale::classic());
    out << engine;
    return out.str();
  }

  static std::mt19937_64 parse_engine(const std::string& text, const char* what) {
    std::istringstream in(text);
    in.imbue(std::locale::classic());
    std::mt19937_64 engine;
    std::string rest;
    if (!detail::is_engine_text(text) || !(in >> engine) || (in >> rest))
      throw config_error(std::string("loader::restore: malformed generator state ") + what);
    return engine;
  }

  const dataset* data_;
  loader_options options_;
  std::mt19937_64 rng_;
  std::mt19937_64 epoch_rng_;
  std::uint64_t epoch_ = 0;
  std::uint64_t position_ = 0;
  std::size_t last_global_batch_ = 0;
  std::vector<std::size_t> order_;
  std::vector<T> lut_;                // 256 normalised values per channel
  std::vector<std::uint8_t> scratch_; // one augmented image
};

} // namespace bitgrad
