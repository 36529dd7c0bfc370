// The one little-endian byte codec and the one CRC of bitgrad: the model file, the checkpoint,
// the optimizer state and every component that saves itself write through byte_writer and read
// through byte_reader.
//
// Words
//   value    an arithmetic or enum value of sizeof(U) bytes, stored little-endian (an enum as
//            its underlying type, a float / double as its IEEE-754 bits, a bool as one byte).
//   string   u64 length, then that many bytes (no terminator).
//   array    n values one after the other, without a count (the caller stores the count).
//   source   what a reader reads, named in every message: a file name or a description such as
//            "checkpoint optimizer state".
//   offset   absolute: the reader's base offset (where its bytes start inside the source) plus
//            the bytes consumed so far.
//
//   io::byte_writer w;                       io::byte_reader r(bytes, "model.bgm");
//   w.put<std::uint32_t>(7);                 auto n = r.get<std::uint32_t>("operation count");
//   w.put_string("conv1");                   std::string name = r.get_string("layer name");
//   w.put_array(std::span<const float>(v));  r.get_array(v.data(), v.size(), "weights");
//
// Every reader failure is a format_error(source, offset, message) naming the field; the reader
// never reads outside the span it was given. Components serialize themselves with two members,
// `void save(io::byte_writer&) const` and `void load(io::byte_reader&)`.
#pragma once

#include <bitgrad/core/error.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>
#include <zlib.h>

namespace bitgrad::io {

/// CRC-32 (zlib / IEEE 802.3) of n bytes, continuing from `crc` (0 to start):
/// crc32(ab) == crc32(b, crc32(a)).
inline std::uint32_t crc32(const void* data, std::size_t n, std::uint32_t crc = 0) {
  uLong c = crc;
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) { // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<std::size_t>(n, std::size_t{1} << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(c);
}

/// The types byte_writer::put and byte_reader::get accept.
template <class U>
concept byte_value = std::is_arithmetic_v<U> || std::is_enum_v<U>;

namespace detail {

/// The unsigned integer of U's size (U's storage in the byte stream).
template <class U>
using bits_of = std::conditional_t<
    sizeof(U) == 1, std::uint8_t,
    std::conditional_t<sizeof(U) == 2, std::uint16_t,
                       std::conditional_t<sizeof(U) == 4, std::uint32_t, std::uint64_t>>>;

/// Copies n values of U from `from` to `to` (possibly unaligned), reversing the bytes of each
/// value on a big-endian host: the stream is little-endian on every host.
template <class U>
void copy_little_endian(void* to, const void* from, std::size_t n) {
  if (n == 0) return; // memcpy's pointers must not be null, even for 0 bytes
  if constexpr (sizeof(U) == 1 || std::endian::native == std::endian::little) {
    std::memcpy(to, from, n * sizeof(U));
  } else {
    auto* out = static_cast<unsigned char*>(to);
    const auto* in = static_cast<const unsigned char*>(from);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t b = 0; b < sizeof(U); ++b)
        out[i * sizeof(U) + b] = in[i * sizeof(U) + sizeof(U) - 1 - b];
  }
}

} // namespace detail

/// Appends little-endian values to a growing byte string.
class byte_writer {
public:
  /// Appends v (arithmetic or enum) as sizeof(U) little-endian bytes.
  template <byte_value U>
  void put(U v) {
    static_assert(sizeof(U) == 1 || sizeof(U) == 2 || sizeof(U) == 4 || sizeof(U) == 8,
                  "byte_writer::put: values of 1, 2, 4 or 8 bytes");
    char b[sizeof(U)];
    detail::copy_little_endian<U>(b, &v, 1);
    bytes_.append(b, sizeof(U));
  }
  /// Appends n raw bytes.
  void put_bytes(const void* p, std::size_t n) {
    if (n > 0) bytes_.append(static_cast<const char*>(p), n);
  }
  /// Appends a string: u64 length, then the bytes.
  void put_string(std::string_view s) {
    put<std::uint64_t>(s.size());
    put_bytes(s.data(), s.size());
  }
  /// Appends the values of v, little-endian, without their count.
  template <byte_value U>
  void put_array(std::span<const U> v) {
    const std::size_t at = bytes_.size();
    bytes_.resize(at + v.size_bytes());
    detail::copy_little_endian<U>(bytes_.data() + at, v.data(), v.size());
  }
  /// put_array of a vector (a vector does not convert to span<const U> by deduction).
  template <byte_value U>
  void put_array(const std::vector<U>& v) {
    put_array(std::span<const U>(v));
  }
  /// Overwrites the sizeof(U) bytes at `at` (already written) with v: for a length or a CRC
  /// known only once what follows is written.
  template <byte_value U>
  void patch(std::size_t at, U v) {
    if (at > bytes_.size() || sizeof(U) > bytes_.size() - at)
      throw config_error("byte_writer::patch: offset " + std::to_string(at) + " + " +
                         std::to_string(sizeof(U)) + " bytes past the " +
                         std::to_string(bytes_.size()) + " bytes written");
    detail::copy_little_endian<U>(bytes_.data() + at, &v, 1);
  }

  /// Number of bytes written.
  std::size_t size() const { return bytes_.size(); }
  /// The bytes written.
  const std::string& bytes() const { return bytes_; }
  /// The bytes written, moved out (the writer is left empty).
  std::string take() { return std::exchange(bytes_, std::string()); }

private:
  std::string bytes_;
};

/// Reads little-endian values with bounds checks. Every failure is a format_error naming the
/// source, the absolute offset and the field.
class byte_reader {
public:
  /// No limit on a string's length other than the bytes left.
  static constexpr std::uint64_t no_limit = std::numeric_limits<std::uint64_t>::max();

  /// Reads `bytes`, which start at `base_offset` inside `source` (messages name the absolute
  /// offset). The bytes are not copied: they must outlive the reader.
  byte_reader(std::span<const std::uint8_t> bytes, std::string source,
              std::uint64_t base_offset = 0)
      : bytes_(bytes), source_(std::move(source)), base_(base_offset) {}
  /// The same over the bytes of a string (an optimizer state held in a checkpoint, ...).
  byte_reader(std::string_view bytes, std::string source, std::uint64_t base_offset = 0)
      : byte_reader(std::span<const std::uint8_t>(
                        reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()),
                    std::move(source), base_offset) {}

  /// Reads a value of U (arithmetic or enum) written by byte_writer::put; a bool must be 0 or 1.
  template <byte_value U>
  U get(std::string_view field) {
    need(sizeof(U), field);
    if constexpr (std::is_same_v<U, bool>) {
      const std::uint8_t b = bytes_[at_];
      if (b > 1) fail(std::string(field) + ": expected 0 or 1, got " + std::to_string(b));
      ++at_;
      return b == 1;
    } else {
      U v;
      detail::copy_little_endian<U>(&v, bytes_.data() + at_, 1);
      at_ += sizeof(U);
      return v;
    }
  }
  /// Reads a string written by put_string; fails when its length exceeds max_length.
  std::string get_string(std::string_view field, std::uint64_t max_length = no_limit) {
    const std::uint64_t length_at = offset();
    const auto n = get<std::uint64_t>(field);
    if (n > max_length)
      fail_at(length_at, std::string(field) + ": length " + std::to_string(n) +
                             " exceeds the limit of " + std::to_string(max_length));
    need(n, field);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), static_cast<std::size_t>(n));
    at_ += static_cast<std::size_t>(n);
    return s;
  }
  /// Reads n values of U written by put_array into out[0..n).
  template <byte_value U>
  void get_array(U* out, std::size_t n, std::string_view field) {
    need_values(n, sizeof(U), field);
    detail::copy_little_endian<U>(out, bytes_.data() + at_, n);
    at_ += n * sizeof(U);
  }
  /// Reads n raw bytes into out.
  void get_bytes(void* out, std::size_t n, std::string_view field) {
    need(n, field);
    if (n > 0) std::memcpy(out, bytes_.data() + at_, n);
    at_ += n;
  }
  /// The next n bytes, without copying them (valid as long as the reader's bytes).
  std::span<const std::uint8_t> take(std::size_t n, std::string_view field) {
    need(n, field);
    const std::span<const std::uint8_t> s = bytes_.subspan(at_, n);
    at_ += n;
    return s;
  }
  /// Fails (naming the field) unless n more bytes are left.
  void need(std::uint64_t n, std::string_view field) const {
    if (n > remaining())
      fail("truncated: " + std::string(field) + " needs " + std::to_string(n) + " bytes, " +
           std::to_string(remaining()) + " left");
  }
  /// Fails unless n values of `value_bytes` bytes each are left (no overflow in n * size).
  void need_values(std::uint64_t n, std::size_t value_bytes, std::string_view field) const {
    if (n > remaining() / value_bytes)
      fail("truncated: " + std::string(field) + " needs " + std::to_string(n) + " values of " +
           std::to_string(value_bytes) + " bytes, " + std::to_string(remaining()) + " bytes left");
  }

  /// Moves to the absolute offset `at` (for formats read out of order, such as ZIP's
  /// directories); fails, naming the field, when `at` lies outside the reader's bytes.
  void seek(std::uint64_t at, std::string_view field) {
    if (at < base_ || at - base_ > bytes_.size())
      throw format_error(source_, at,
                         "truncated: " + std::string(field) + " at offset " + std::to_string(at) +
                             " lies outside the " + std::to_string(bytes_.size()) +
                             " bytes that start at offset " + std::to_string(base_));
    at_ = static_cast<std::size_t>(at - base_);
  }

  /// Absolute offset of the next byte.
  std::uint64_t offset() const { return base_ + at_; }
  /// Bytes not yet read.
  std::size_t remaining() const { return bytes_.size() - at_; }
  bool at_end() const { return at_ == bytes_.size(); }
  /// The source named in messages.
  const std::string& source() const { return source_; }

  /// Throws format_error(source, offset(), message).
  [[noreturn]] void fail(const std::string& message) const {
    throw format_error(source_, offset(), message);
  }
  /// Throws format_error(source, absolute offset `at`, message): for a field already read.
  [[noreturn]] void fail_at(std::uint64_t at, const std::string& message) const {
    throw format_error(source_, at, message);
  }

private:
  std::span<const std::uint8_t> bytes_;
  std::string source_;
  std::uint64_t base_;
  std::size_t at_ = 0;
};

} // namespace bitgrad::io
