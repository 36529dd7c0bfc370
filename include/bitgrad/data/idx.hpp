// IDX files, the format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//
// Layout (all integers big-endian):
//
//   offset 0        1        2          3          4 ...               4 + 4*rank ...
//          +--------+--------+----------+----------+-------------------+----------------+
//          |  0x00  |  0x00  | type     | rank     | dim[0] .. dim[r-1]| payload        |
//          +--------+--------+----------+----------+-------------------+----------------+
//                                                    uint32 each         prod(dim) elements
//
//   type: 0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
//         0x0E float64. bitgrad reads 0x08 (what image and label files use) and rejects the
//         others with a message naming the type.
//   MNIST images: rank 3, dims (N, 28, 28), one byte per pixel, row-major.
//   MNIST labels: rank 1, dims (N), one byte per label.
//
// The reader is strict: the payload must be exactly prod(dim) bytes (a short file and
// trailing bytes are both errors, and their messages repeat the rank and the dimensions the
// header declared, since a damaged rank byte shows up as a payload of the wrong size), and
// prod(dim) must not exceed `max_payload` (1 GiB by default), computed without overflow. The
// typed readers (read_idx_images, read_idx_labels) check the rank byte against the ranks they
// accept before anything else is read. Any malformed input ends in a format_error naming the
// file and the offset; nothing is undefined for any input (parse_idx is the fuzzing entry).
// For gzip files, offsets into the IDX structure are offsets in the decompressed data.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/data/gzip.hpp>
#include <bitgrad/io/read_file.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad {

/// The default cap on an IDX payload: 1 GiB.
inline constexpr std::uint64_t idx_max_payload = std::uint64_t{1} << 30;

/// An IDX array: its dimensions and its elements (unsigned bytes, row-major).
struct idx_array {
  std::vector<std::size_t> dims;
  std::vector<std::uint8_t> data;

  /// Number of elements: the product of dims (data.size()).
  std::size_t size() const noexcept { return data.size(); }
  std::size_t rank() const noexcept { return dims.size(); }
};

namespace detail {

inline const char* idx_type_name(std::uint8_t type) {
  switch (type) {
  case 0x08:
    return "unsigned byte";
  case 0x09:
    return "signed byte";
  case 0x0B:
    return "int16";
  case 0x0C:
    return "int32";
  case 0x0D:
    return "float32";
  case 0x0E:
    return "float64";
  default:
    return nullptr;
  }
}

inline std::string hex_byte(std::uint8_t b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

inline std::uint32_t read_be32(const std::uint8_t* p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

/// The ranks a typed reader accepts, checked on the rank byte before the dimensions are read.
struct idx_rank_rule {
  std::size_t lo, hi; ///< accepted ranks: [lo, hi]
  const char* what;   ///< "an IDX image file has rank 3 (N, H, W) or 4 (N, C, H, W)"
};

/// "rank 3, dimensions 5 x 3 x 4" (at most 8 dimensions written out).
inline std::string idx_header_text(const std::vector<std::size_t>& dims) {
  std::string out = "rank " + std::to_string(dims.size()) + ", dimensions ";
  for (std::size_t i = 0; i < dims.size() && i < 8; ++i) {
    if (i) out += " x ";
    out += std::to_string(dims[i]);
  }
  if (dims.size() > 8) out += " x ...";
  return out;
}

/// Parses uncompressed IDX bytes. `where` is appended to offset-bearing reasons (it says
/// whether offsets are in the file or in the decompressed data); `rule`, when given, is the
/// rank the caller needs.
inline idx_array parse_idx_raw(std::span<const std::uint8_t> bytes, const std::string& name,
                               const std::string& where, std::uint64_t max_payload,
                               const idx_rank_rule* rule = nullptr) {
  const std::uint64_t size = bytes.size();
  auto fail = [&](std::uint64_t offset, const std::string& reason) -> format_error {
    return format_error(name, offset, reason + where);
  };
  if (size < 4) {
    throw fail(size, "truncated IDX header: expected 4 bytes (00 00 type rank), found " +
                         std::to_string(size));
  }
  if (bytes[0] != 0 || bytes[1] != 0) {
    throw fail(0, "not an IDX file: magic must start with 0x00 0x00, found " + hex_byte(bytes[0]) +
                      " " + hex_byte(bytes[1]));
  }
  const std::uint8_t type = bytes[2];
  if (type != 0x08) {
    const char* known = idx_type_name(type);
    throw fail(2, known != nullptr ? "IDX element type " + hex_byte(type) + " (" + known +
                                         ") is not supported; expected 0x08 (unsigned byte)"
                                   : "unknown IDX element type " + hex_byte(type) +
                                         "; expected 0x08 (unsigned byte)");
  }
  const std::size_t rank = bytes[3];
  if (rank == 0) throw fail(3, "IDX rank is 0; expected at least one dimension");
  if (rule != nullptr && (rank < rule->lo || rank > rule->hi))
    throw fail(3, std::string(rule->what) + ", found rank " + std::to_string(rank) + " (byte " +
                      hex_byte(bytes[3]) + ")");
  const std::uint64_t header = 4 + 4 * std::uint64_t{rank};
  if (size < header) {
    throw fail(size, "truncated IDX header: rank " + std::to_string(rank) + " needs " +
                         std::to_string(header) + " header bytes, found " + std::to_string(size));
  }

  idx_array result;
  result.dims.resize(rank);
  bool any_zero = false;
  for (std::size_t i = 0; i < rank; ++i) {
    result.dims[i] = read_be32(bytes.data() + 4 + 4 * i);
    any_zero = any_zero || result.dims[i] == 0;
  }
  std::uint64_t elements = 1;
  if (any_zero) {
    elements = 0;
  } else {
    for (std::size_t i = 0; i < rank; ++i) {
      const std::uint64_t d = result.dims[i];
      if (elements > max_payload / d) {
        throw fail(4 + 4 * i, "IDX dimensions multiply to more than the limit of " +
                                  std::to_string(max_payload) + " elements (dimension " +
                                  std::to_string(i) + " is " + std::to_string(d) + ")");
      }
      elements *= d;
    }
  }

  const std::uint64_t available = size - header;
  if (available < elements) {
    throw fail(size, "IDX payload truncated: the dimensions need " + std::to_string(elements) +
                         " bytes after the " + std::to_string(header) + "-byte header (" +
                         idx_header_text(result.dims) + "; ending at offset " +
                         std::to_string(header + elements) + "), found " +
                         std::to_string(available));
  }
  if (available > elements) {
    throw fail(header + elements, std::to_string(available - elements) +
                                      " trailing bytes after the IDX payload of " +
                                      std::to_string(elements) + " bytes that the header (" +
                                      idx_header_text(result.dims) + ") declares");
  }
  result.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return result;
}

} // namespace detail

namespace detail {
inline idx_array parse_idx_checked(std::span<const std::uint8_t> bytes, const std::string& name,
                                   std::uint64_t max_payload, const idx_rank_rule* rule) {
  if (is_gzip(bytes)) {
    // The largest valid IDX: 4 + 4*255 header bytes and max_payload payload bytes; anything
    // decompressing beyond that cannot be valid.
    const std::uint64_t max_out = 4 + 4 * 255 + max_payload;
    std::vector<std::uint8_t> raw = gunzip(bytes, name, static_cast<std::size_t>(max_out));
    return parse_idx_raw(raw, name, " (offset in the decompressed data)", max_payload, rule);
  }
  return parse_idx_raw(bytes, name, "", max_payload, rule);
}

inline idx_array read_idx_checked(const std::filesystem::path& path, std::uint64_t max_payload,
                                  const idx_rank_rule* rule) {
  // A gzip file is never larger than its payload by more than a small fraction, and a raw
  // file is the header plus the payload; twice the limit bounds both.
  std::vector<std::uint8_t> bytes = read_file_bytes(path, 2 * max_payload + (1 << 20));
  return parse_idx_checked(bytes, path.string(), max_payload, rule);
}
} // namespace detail

/// Parses an IDX file held in memory, raw or gzip-compressed (detected by the magic 1f 8b).
/// `name` is the file name used in error messages. Throws format_error on malformed input.
inline idx_array parse_idx(std::span<const std::uint8_t> bytes, std::string name,
                           std::uint64_t max_payload = idx_max_payload) {
  return detail::parse_idx_checked(bytes, name, max_payload, nullptr);
}

/// Reads an IDX file, raw or gzip-compressed. Throws io_error if it cannot be read and
/// format_error if it is malformed.
inline idx_array read_idx(const std::filesystem::path& path,
                          std::uint64_t max_payload = idx_max_payload) {
  return detail::read_idx_checked(path, max_payload, nullptr);
}

/// Reads an IDX image file: rank 3 (N, H, W) or rank 4 (N, C, H, W), unsigned bytes.
/// The returned array always has rank 4 (N, C, H, W), C = 1 for rank-3 files.
inline idx_array read_idx_images(const std::filesystem::path& path) {
  static constexpr detail::idx_rank_rule rule{
      3, 4, "an IDX image file has rank 3 (N, H, W) or 4 (N, C, H, W)"};
  idx_array images = detail::read_idx_checked(path, idx_max_payload, &rule);
  if (images.rank() == 3) images.dims.insert(images.dims.begin() + 1, 1);
  return images;
}

/// Reads an IDX label file: rank 1 (N), unsigned bytes. Returns the labels as int32.
inline std::vector<std::int32_t> read_idx_labels(const std::filesystem::path& path) {
  static constexpr detail::idx_rank_rule rule{1, 1, "an IDX label file has rank 1 (N)"};
  idx_array labels = detail::read_idx_checked(path, idx_max_payload, &rule);
  return std::vector<std::int32_t>(labels.data.begin(), labels.data.end());
}

} // namespace bitgrad
