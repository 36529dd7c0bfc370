// Checked ranges for the command-line options of the examples (fashion_mnist, deploy,
// inspect_model) and of the studies (studies/pareto/ includes this header). Every numeric
// option takes one of these CLI11 validators, so a value the program cannot honour stops it
// before any work, with a message in the user's terms:
//
//   --pretrain-epochs: expected a whole number >= 0, got -1
//   --bits-lr: expected a finite number > 0, got nan
//   --threads: expected a whole number in [0, 2] (0 = OpenMP's default, 2 = the hardware
//              threads of this machine), got 1000
//
// instead of wrapping around (CLI11 2.1 reads "-1" into a size_t as 2^64 - 1), being read as
// unset (NaN compares false with everything) or echoed as an artefact (1.79e308).
//
// CLI11 runs validators on the text before converting it; whole_number() also rewrites the text
// into plain decimal, because CLI11 2.1 would read "010" as octal 8 and "0x10" as 16.
// Checks that involve two options (b_min <= b_max) or the data use reject(), which throws the
// same CLI::ValidationError, so app.exit() prints them the same way ("--b-min: ...").
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/quant/groups.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <system_error>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace bitgrad::cli {

/// A number as the messages print it: shortest form, no trailing zeros ("2.4", "0.001", "16").
inline std::string number_text(double v) {
  char buffer[32];
  const auto r = std::to_chars(buffer, buffer + sizeof buffer, v);
  return std::string(buffer, r.ptr);
}

/// A whole number in [lo, hi], written in decimal digits only. `note` is appended to the
/// expectation in the message, e.g. "(0 = whole epochs)".
inline CLI::Validator whole_number(std::uint64_t lo,
                                   std::uint64_t hi = std::numeric_limits<std::uint64_t>::max(),
                                   const std::string& note = {}) {
  const bool unbounded = hi == std::numeric_limits<std::uint64_t>::max();
  const std::string expected =
      "a whole number " +
      (unbounded ? ">= " + std::to_string(lo)
                 : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]") +
      (note.empty() ? "" : " " + note);
  const std::string description =
      unbounded ? ">= " + std::to_string(lo) : std::to_string(lo) + ".." + std::to_string(hi);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        const std::string failure = "expected " + expected + ", got " + text;
        if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
          return failure;
        std::uint64_t v = 0;
        const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
        if (r.ec != std::errc() || r.ptr != text.data() + text.size() || v < lo || v > hi)
          return failure;
        text = std::to_string(v); // "010" -> "10": CLI11 would read a leading 0 as octal
        return {};
      },
      description);
}

/// Whether the lower bound of real_number() is included.
enum class lower_bound { inclusive, exclusive };

/// A finite real number >= lo (or > lo) and <= hi. NaN and infinities are rejected.
inline CLI::Validator real_number(double lo, lower_bound kind,
                                  double hi = std::numeric_limits<double>::infinity(),
                                  const std::string& note = {}) {
  const std::string expected =
      "a finite number " +
      (std::isinf(hi) ? std::string(kind == lower_bound::inclusive ? ">= " : "> ") + number_text(lo)
                      : "in " + std::string(kind == lower_bound::inclusive ? "[" : "(") +
                            number_text(lo) + ", " + number_text(hi) + "]") +
      (note.empty() ? "" : " " + note);
  const std::string description =
      std::isinf(hi) ? std::string(kind == lower_bound::inclusive ? ">= " : "> ") + number_text(lo)
                     : (kind == lower_bound::inclusive ? "[" : "(") + number_text(lo) + ", " +
                           number_text(hi) + "]";
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        const std::string failure = "expected " + expected + ", got " + text;
        const char* first = text.data();
        const char* last = text.data() + text.size();
        if (first != last && *first == '+') ++first;
        double v = 0;
        const auto r = std::from_chars(first, last, v);
        if (r.ec != std::errc() || r.ptr != last || !std::isfinite(v)) return failure;
        const bool above = kind == lower_bound::inclusive ? v >= lo : v > lo;
        if (!above || v > hi) return failure;
        return {};
      },
      description);
}

/// A learning rate or another strictly positive real.
inline CLI::Validator positive_number() {
  return real_number(0.0, lower_bound::exclusive);
}

/// Channels per group: "channel" = 1, "layer" (or "tensor") = one group per layer, or a whole
/// number >= 1. Whether a layer has that many channels is checked when the network is built.
inline std::size_t parse_group(const std::string& text) {
  if (text == "layer" || text == "tensor") return quant::per_tensor;
  if (text == "channel") return 1;
  std::size_t v = 0;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos &&
      r.ec == std::errc() && r.ptr == text.data() + text.size() && v > 0)
    return v;
  throw config_error("expected a whole number >= 1 (channels per group), 'channel' or 'layer', "
                     "got " +
                     text);
}

/// parse_group() as a validator.
inline CLI::Validator group_size() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          (void)parse_group(text);
          return {};
        } catch (const config_error& e) {
          return e.what();
        }
      },
      "N|channel|layer");
}

/// The most threads --threads accepts: the machine's hardware threads (OpenMP's count of
/// processors), or 1 when built without OpenMP (the kernels then run on one thread).
inline unsigned max_threads() {
#if defined(BITGRAD_WITH_OPENMP)
  return static_cast<unsigned>(std::max(1, omp_get_num_procs()));
#else
  return 1;
#endif
}

/// --threads: 0 (OpenMP's default: OMP_NUM_THREADS, else every hardware thread) up to the
/// hardware threads; more only slow the kernels down (1000 threads on 2 cores ran 9x slower).
inline CLI::Validator thread_count() {
  const unsigned most = max_threads();
#if defined(BITGRAD_WITH_OPENMP)
  const std::string why = " = the hardware threads of this machine)";
#else
  const std::string why = ": this build has no OpenMP)";
#endif
  return whole_number(0, most, "(0 = OpenMP's default, " + std::to_string(most) + why);
}

/// Applies a --threads value (0 keeps OpenMP's default).
inline void use_threads(std::uint64_t threads) {
#if defined(BITGRAD_WITH_OPENMP)
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
#else
  (void)threads;
#endif
}

/// The threads the kernels will use (what the examples print): 1 without OpenMP.
inline int threads_in_use() {
#if defined(BITGRAD_WITH_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// A check of one option against another or against the data, reported like a validator:
/// "--b-min: expected b-min <= b-max (8), got 9".
[[noreturn]] inline void reject(const std::string& option, const std::string& problem) {
  throw CLI::ValidationError(option, problem);
}

} // namespace bitgrad::cli
