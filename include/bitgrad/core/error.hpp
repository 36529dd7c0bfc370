// Exceptions bitgrad throws. Each message names the problem: the layer or file, the offset,
// what was expected and what was found.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace bitgrad {

/// A tensor of the wrong shape reached a layer or kernel.
struct shape_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// An option or argument is out of range (group size 0, b_min > b_max, batch size 0, ...).
struct config_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A file is malformed: wrong magic, truncated, inconsistent lengths, bad checksum.
struct format_error : std::runtime_error {
  format_error(const std::string& file, std::uint64_t offset, const std::string& reason)
      : std::runtime_error(file + ": at offset " + std::to_string(offset) + ": " + reason),
        file_(file), offset_(offset) {}
  const std::string& file() const noexcept { return file_; }
  std::uint64_t offset() const noexcept { return offset_; }

private:
  std::string file_;
  std::uint64_t offset_;
};

/// An I/O operation failed (cannot open, cannot write, cannot rename).
struct io_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

} // namespace bitgrad
