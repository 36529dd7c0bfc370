// Reading a whole file into memory, with a size limit so that a wrong path (a device, a huge
// file) fails with a message instead of exhausting memory.
#pragma once

#include <bitgrad/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

namespace bitgrad {

/// The bytes of `path`. Throws io_error if it cannot be opened or read, format_error (at offset
/// `max_bytes`) if it is longer than `max_bytes`.
inline std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path,
                                                 std::uint64_t max_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw io_error("cannot read " + path.string() + ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error("cannot open " + path.string() + " for reading");
  std::vector<std::uint8_t> bytes;
  // Read in chunks rather than trusting a size query: works for pipes and growing files too.
  constexpr std::size_t chunk = std::size_t{1} << 20;
  for (;;) {
    std::size_t old = bytes.size();
    bytes.resize(old + chunk);
    in.read(reinterpret_cast<char*>(bytes.data() + old), static_cast<std::streamsize>(chunk));
    std::size_t got = static_cast<std::size_t>(in.gcount());
    bytes.resize(old + got);
    if (bytes.size() > max_bytes) {
      throw format_error(path.string(), max_bytes,
                         "file is larger than the limit of " + std::to_string(max_bytes) +
                             " bytes");
    }
    if (got < chunk) break;
  }
  if (in.bad()) throw io_error("error while reading " + path.string());
  bytes.shrink_to_fit();
  return bytes;
}

} // namespace bitgrad
