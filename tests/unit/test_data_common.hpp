// Helpers shared by the data tests: a temporary directory, file writing, gzip, IDX building,
// and a check that a format_error names the file and the offset.
#pragma once

#include <bitgrad/core/error.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>
#include <zlib.h>

namespace bitgrad_test {

using bytes = std::vector<std::uint8_t>;

/// A fresh directory under the system temp directory, removed with everything in it.
class temp_dir {
public:
  temp_dir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("bitgrad-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& path, const bytes& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// gzip-compresses `data` (one gzip member) with zlib.
inline bytes gzip(const bytes& data) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  bytes out(deflateBound(&zs, static_cast<uLong>(data.size())) + 64);
  zs.next_in = const_cast<Bytef*>(data.data());
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

/// An IDX file: magic 00 00 type rank, big-endian dims, payload.
inline bytes make_idx(std::uint8_t type, const std::vector<std::uint32_t>& dims,
                      const bytes& payload) {
  bytes out{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims) {
    out.push_back(static_cast<std::uint8_t>(d >> 24));
    out.push_back(static_cast<std::uint8_t>(d >> 16));
    out.push_back(static_cast<std::uint8_t>(d >> 8));
    out.push_back(static_cast<std::uint8_t>(d));
  }
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

inline bytes random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  bytes out(n);
  for (auto& b : out) b = static_cast<std::uint8_t>(rng() >> 56);
  return out;
}

/// Runs `fn`, requires a format_error at `offset` whose message names `file`, contains
/// "at offset <offset>" and contains `reason_part`.
inline void check_format_error(const std::function<void()>& fn, const std::string& file,
                               std::uint64_t offset, const std::string& reason_part) {
  try {
    fn();
    FAIL("no exception; expected a format_error at offset " << offset);
  } catch (const bitgrad::format_error& e) {
    std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(e.offset() == offset);
    CHECK(msg.find(file) != std::string::npos);
    CHECK(msg.find("at offset " + std::to_string(offset)) != std::string::npos);
    CHECK(msg.find(reason_part) != std::string::npos);
  }
}

} // namespace bitgrad_test
