// The options of the benchmarks' own side-by-side modes (bench_conv2d --compare, bench_optim
// --compare; bench_inference's --deploy-run / --deploy-callgrind numbers), read strictly: an
// unknown option, a missing value or a value that is not a whole number in range stops the program
// with a message naming it, instead of being ignored or aborting in std::stoul.
// tests/scripts/bench_options.py runs every option (make bench-build).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace bitgrad::bench {

/// A bad command line; what() names the option and the text given.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The whole number `text` gives for `option`, at least `lo` (and at most `hi`, if given).
inline std::size_t whole_number(const std::string& option, const std::string& text, std::size_t lo,
                                std::size_t hi = 999999999999999999) {
  const bool digits = !text.empty() && text.size() <= 18 &&
                      text.find_first_not_of("0123456789") == std::string::npos;
  const std::size_t value = digits ? std::stoull(text) : 0;
  if (!digits || value < lo || value > hi)
    throw usage_error(option + " expects a whole number >= " + std::to_string(lo) +
                      (hi < 999999999999999999 ? " and <= " + std::to_string(hi) : "") + ", got '" +
                      text + "'");
  return value;
}

/// The arguments argv[first], argv[first + 1], ... one option at a time:
///   for (compare_args args(argc, argv, 2); args.next();)
///     if (args.option() == "--rounds") rounds = whole_number("--rounds", args.value(), 1);
class compare_args {
public:
  compare_args(int argc, char** argv, int first) : argc_(argc), argv_(argv), i_(first - 1) {}

  /// Moves to the next option; false after the last.
  bool next() { return ++i_ < argc_; }

  /// The current option's name.
  std::string option() const { return argv_[i_]; }

  /// The current option's value (the next argument), consumed.
  std::string value() {
    if (i_ + 1 >= argc_) throw usage_error(option() + " needs a value");
    return argv_[++i_];
  }

private:
  int argc_;
  char** argv_;
  int i_;
};

} // namespace bitgrad::bench
