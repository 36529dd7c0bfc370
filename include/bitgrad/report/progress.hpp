// What a run prints while it trains.
//
// On a terminal, progress_bar redraws one line in place ('\r') while an epoch runs, at most
// ten times a second (and always for the last batch):
//
//   search  epoch  3/10  batch 120/469 [#####...............]  loss 0.4123  acc 85.21%
//     2410 img/s  ETA 0:07          (one line on the terminal; wrapped here)
//
// When stdout is not a terminal (a log file, CI), progress_bar prints nothing per batch and the
// trainer prints one format_epoch_line() per epoch instead:
//
//   search  epoch  3/10  loss 0.4123  train 85.21%  test 84.90%  bits 3.12  size 12.3 KB
//     x10.3  12.4 s                 (one line; wrapped here)
#pragma once

#include <bitgrad/report/format.hpp>
#include <bitgrad/report/records.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>
#include <unistd.h>
#include <utility>

namespace bitgrad {

/// True when the process's stdout is a terminal.
inline bool stdout_is_terminal() {
  return ::isatty(::fileno(stdout)) != 0;
}

namespace detail::progress {

inline std::string printf_string(const char* format, auto... args) {
  char buffer[256];
  int n = std::snprintf(buffer, sizeof buffer, format, args...);
  if (n < 0) return {};
  return std::string(buffer, std::min<std::size_t>(std::size_t(n), sizeof buffer - 1));
}

inline int digits(std::size_t n) {
  int d = 1;
  while (n >= 10) n /= 10, ++d;
  return d;
}

// "epoch  3/10" (index right-aligned to the width of the total), "epoch 3" without a total.
inline std::string counter(std::string_view word, std::size_t i, std::size_t n) {
  if (n == 0) return std::string(word) + " " + std::to_string(i);
  return printf_string("%.*s %*zu/%zu", int(word.size()), word.data(), digits(n), i, n);
}

inline std::string percent(double fraction) {
  return std::isfinite(fraction) ? printf_string("%.2f%%", 100 * fraction) : "n/a";
}

} // namespace detail::progress

/// "1:05", "12:00:07"; "--:--" when unknown.
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  auto s = static_cast<long long>(std::llround(seconds));
  if (s >= 3600)
    return detail::progress::printf_string("%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  return detail::progress::printf_string("%lld:%02lld", s / 60, s % 60);
}

/// The one-line summary of a finished epoch; `epochs` is the number of epochs of the phase
/// (0 when unknown: "epoch 3"). Accuracies as percentages, size in decimal units.
inline std::string format_epoch_line(const epoch_record& e, std::size_t epochs = 0) {
  namespace p = detail::progress;
  std::string line = e.phase + "  " + p::counter("epoch", e.epoch, epochs);
  line += "  loss " + format_fixed(e.loss, 4);
  line += "  train " + p::percent(e.train_accuracy);
  line += "  test " + p::percent(e.test_accuracy);
  line += "  bits " + format_fixed(e.average_bits, 2);
  line += "  size " + format_bytes(e.size_bytes);
  line += "  x" + format_fixed(e.compression, 1);
  line += "  " + format_fixed(e.seconds, 1) + " s";
  if (std::isfinite(e.bops)) line += "  BOPs " + p::printf_string("%.3g", e.bops);
  if (std::isfinite(e.activation_bytes)) line += "  act " + format_bytes(e.activation_bytes);
  return line;
}

/// The text of the in-place progress line (no '\r', no padding). `bar_width` characters of
/// bar, filled in proportion to batch / batches.
inline std::string format_progress_line(std::string_view phase, std::size_t epoch,
                                        std::size_t epochs, std::size_t batch, std::size_t batches,
                                        double loss, double accuracy, double images_per_second,
                                        double eta_seconds, std::size_t bar_width = 20) {
  namespace p = detail::progress;
  std::string line = std::string(phase) + "  " + p::counter("epoch", epoch, epochs) + "  " +
                     p::counter("batch", batch, batches) + " [";
  std::size_t filled = batches == 0 ? 0 : std::min(bar_width, batch * bar_width / batches);
  line.append(filled, '#');
  line.append(bar_width - filled, '.');
  line += "]  loss " + format_fixed(loss, 4) + "  acc " + p::percent(accuracy);
  line += "  " + (std::isfinite(images_per_second) ? format_fixed(images_per_second, 0) : "-") +
          " img/s  ETA " + format_duration(eta_seconds);
  return line;
}

/// Draws the in-place progress line of the running epoch on a terminal; silent otherwise.
///   progress_bar bar(std::cout);
///   bar.begin_epoch("search", 3, 10, batches);
///   for each batch j: ...; bar.update(j + 1, images_so_far, running_loss, running_accuracy);
///   bar.end_epoch();                           // erases the line
///   std::cout << format_epoch_line(record, 10) << '\n';
class progress_bar {
public:
  using clock = std::chrono::steady_clock;
  /// Where the time comes from (tests pass a fake clock).
  using now_function = std::function<clock::time_point()>;

  /// Minimum time between two redraws.
  static constexpr std::chrono::milliseconds redraw_interval{100};

  explicit progress_bar(
      std::ostream& out, bool terminal = stdout_is_terminal(),
      now_function now = [] { return clock::now(); })
      : out_(out), terminal_(terminal), now_(std::move(now)) {}

  bool terminal() const noexcept { return terminal_; }
  /// How many times the line was drawn (for tests and curiosity).
  std::size_t redraws() const noexcept { return redraws_; }

  /// Starts timing an epoch of `batches` batches.
  void begin_epoch(std::string_view phase, std::size_t epoch, std::size_t epochs,
                   std::size_t batches) {
    phase_ = phase;
    epoch_ = epoch;
    epochs_ = epochs;
    batches_ = batches;
    start_ = now_();
    drawn_ = false;
  }

  /// `batch` batches and `images` images of this epoch are done; loss and accuracy are the
  /// running means so far. Redraws when 100 ms have passed since the last redraw, on the first
  /// call and on the last batch.
  void update(std::size_t batch, std::size_t images, double loss, double accuracy) {
    if (!terminal_) return;
    clock::time_point now = now_();
    bool last = batch >= batches_;
    if (drawn_ && !last && now - last_draw_ < redraw_interval) return;
    double elapsed = std::chrono::duration<double>(now - start_).count();
    double rate = elapsed > 0 ? double(images) / elapsed : std::nan("");
    double eta = batch > 0 && elapsed > 0
                     ? elapsed / double(batch) * double(batches_ > batch ? batches_ - batch : 0)
                     : std::nan("");
    std::string line =
        format_progress_line(phase_, epoch_, epochs_, batch, batches_, loss, accuracy, rate, eta);
    std::size_t length = line.size();
    if (length < width_) line.append(width_ - length, ' '); // cover a longer previous line
    out_ << '\r' << line << std::flush;
    width_ = length;
    last_draw_ = now;
    drawn_ = true;
    ++redraws_;
  }

  /// Erases the progress line so the epoch summary can be printed in its place.
  void end_epoch() {
    if (!terminal_ || width_ == 0) return;
    out_ << '\r' << std::string(width_, ' ') << '\r' << std::flush;
    width_ = 0;
  }

private:
  std::ostream& out_;
  bool terminal_;
  now_function now_;
  std::string phase_;
  std::size_t epoch_ = 0, epochs_ = 0, batches_ = 0;
  clock::time_point start_{}, last_draw_{};
  bool drawn_ = false;
  std::size_t width_ = 0;
  std::size_t redraws_ = 0;
};

} // namespace bitgrad
