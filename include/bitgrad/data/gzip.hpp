// gzip decompression of an in-memory buffer (zlib inflate), strict about damaged input:
// a stream that ends early, a corrupt block, a bad CRC or length trailer, or bytes after the
// last gzip member are all format_errors. Several concatenated gzip members (what `cat a.gz
// b.gz` produces) decompress to the concatenation, as gzip(1) does.
//
// Offsets in error messages are positions in the compressed input.
#pragma once

#include <bitgrad/core/error.hpp>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>
#include <zlib.h>

namespace bitgrad {

/// True if `bytes` starts with the gzip magic 1f 8b.
inline bool is_gzip(std::span<const std::uint8_t> bytes) noexcept {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

/// Decompresses the gzip data `in`; `name` is used in error messages. Throws format_error if
/// the data is damaged or decompresses to more than `max_out` bytes.
inline std::vector<std::uint8_t> gunzip(std::span<const std::uint8_t> in, const std::string& name,
                                        std::size_t max_out) {
  z_stream zs{};
  // 16 + MAX_WBITS: expect a gzip header and trailer (CRC-32 and length are checked).
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
    throw io_error(name + ": cannot initialise zlib inflate");
  struct guard {
    z_stream* zs;
    ~guard() { inflateEnd(zs); }
  } end_inflate{&zs};

  std::vector<std::uint8_t> out;
  std::size_t fed = 0;     // input bytes handed to zlib so far
  std::size_t written = 0; // output bytes produced so far
  auto consumed = [&] { return fed - zs.avail_in; };

  for (;;) {
    if (zs.avail_in == 0 && fed < in.size()) {
      std::size_t n = std::min<std::size_t>(in.size() - fed, UINT_MAX);
      zs.next_in = const_cast<Bytef*>(in.data() + fed); // zlib does not write through next_in
      zs.avail_in = static_cast<uInt>(n);
      fed += n;
    }
    if (written == out.size()) {
      if (out.size() > max_out) {
        throw format_error(name, consumed(),
                           "gzip data decompresses to more than the limit of " +
                               std::to_string(max_out) + " bytes");
      }
      // Grow geometrically; one byte beyond the limit is enough to detect an overrun.
      std::size_t want = std::max<std::size_t>({out.size() * 2, in.size() * 4, 1 << 16});
      want = std::min<std::size_t>(want, max_out + 1);
      want = std::min<std::size_t>(want, out.size() + UINT_MAX);
      out.resize(want);
    }
    zs.next_out = out.data() + written;
    zs.avail_out = static_cast<uInt>(std::min<std::size_t>(out.size() - written, UINT_MAX));
    const uInt avail_out_before = zs.avail_out;

    int ret = inflate(&zs, Z_NO_FLUSH);
    written += avail_out_before - zs.avail_out;

    if (ret == Z_STREAM_END) {
      std::size_t end = consumed();
      if (end == in.size()) break;
      if (is_gzip(in.subspan(end))) { // another gzip member follows
        if (inflateReset(&zs) != Z_OK) throw io_error(name + ": zlib inflateReset failed");
        continue;
      }
      throw format_error(name, end,
                         std::to_string(in.size() - end) +
                             " bytes of trailing data after the end of the gzip stream");
    }
    if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT || ret == Z_STREAM_ERROR) {
      std::string why = zs.msg != nullptr ? zs.msg : "invalid data";
      throw format_error(name, consumed(), "corrupt gzip stream: " + why);
    }
    if (ret == Z_MEM_ERROR) throw io_error(name + ": zlib ran out of memory");
    // Z_OK or Z_BUF_ERROR: zlib wants more input or more output space.
    if (zs.avail_in == 0 && fed == in.size() && zs.avail_out > 0) {
      throw format_error(name, in.size(),
                         "gzip stream truncated: the compressed data ends after " +
                             std::to_string(in.size()) +
                             " bytes without the end-of-stream "
                             "marker and trailer (" +
                             std::to_string(written) + " bytes decompressed so far)");
    }
  }
  if (written > max_out) {
    throw format_error(name, consumed(),
                       "gzip data decompresses to more than the limit of " +
                           std::to_string(max_out) + " bytes");
  }
  out.resize(written);
  out.shrink_to_fit();
  return out;
}

} // namespace bitgrad
