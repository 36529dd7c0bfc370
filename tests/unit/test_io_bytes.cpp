// io/bytes.hpp: round trips of every value type, strings and arrays through byte_writer and
// byte_reader; the little-endian layout; truncation and limit errors naming the source, the
// absolute offset and the field; the CRC against zlib's published check value.
#include <bitgrad/io/bytes.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace test_io_bytes {

using bitgrad::format_error;
using bitgrad::io::byte_reader;
using bitgrad::io::byte_writer;

namespace {

enum class colour : std::uint16_t { red = 1, blue = 0xBEEF };

/// The bytes written, as a vector (what a file reader hands to byte_reader).
std::vector<std::uint8_t> as_vector(const byte_writer& w) {
  return {w.bytes().begin(), w.bytes().end()};
}

/// The message and offset of the format_error f throws (fails the test if it throws nothing).
template <class F>
std::pair<std::string, std::uint64_t> error_of(F&& f) {
  try {
    f();
  } catch (const format_error& e) {
    return {e.what(), e.offset()};
  }
  FAIL("no format_error thrown");
  return {};
}

} // namespace

TEST_CASE_TEMPLATE("put/get round-trips the extremes of every integer type", U, std::int8_t,
                   std::uint8_t, std::int16_t, std::uint16_t, std::int32_t, std::uint32_t,
                   std::int64_t, std::uint64_t) {
  const U values[] = {std::numeric_limits<U>::min(), U(0), U(1), U(0x5A),
                      std::numeric_limits<U>::max()};
  byte_writer w;
  for (U v : values) w.put(v);
  CHECK(w.size() == 5 * sizeof(U));
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "ints");
  for (U v : values) CHECK(r.get<U>("value") == v);
  CHECK(r.at_end());
  CHECK(r.remaining() == 0);
}

TEST_CASE_TEMPLATE("put/get round-trips floats bit for bit", U, float, double) {
  const U values[] = {U(0),
                      -U(0),
                      U(1.5),
                      std::numeric_limits<U>::denorm_min(),
                      std::numeric_limits<U>::max(),
                      -std::numeric_limits<U>::infinity(),
                      std::numeric_limits<U>::quiet_NaN()};
  byte_writer w;
  for (U v : values) w.put(v);
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "reals");
  for (U v : values) {
    const U got = r.get<U>("value");
    CHECK(std::bit_cast<bitgrad::io::detail::bits_of<U>>(got) ==
          std::bit_cast<bitgrad::io::detail::bits_of<U>>(v));
  }
  CHECK(r.at_end());
}

TEST_CASE("values are stored little-endian, enums as their underlying type") {
  byte_writer w;
  w.put<std::uint32_t>(0x04030201u);
  w.put(colour::blue);
  w.put(1.0f); // 0x3F800000
  w.put(true);
  const std::vector<std::uint8_t> want = {1, 2, 3, 4, 0xEF, 0xBE, 0, 0, 0x80, 0x3F, 1};
  CHECK(as_vector(w) == want);
  byte_reader r(want, "layout");
  CHECK(r.get<std::uint32_t>("u32") == 0x04030201u);
  CHECK(r.get<colour>("colour") == colour::blue);
  CHECK(r.get<float>("f32") == 1.0f);
  CHECK(r.get<bool>("flag"));
}

TEST_CASE("a bool must be stored as 0 or 1") {
  const std::vector<std::uint8_t> bytes = {0, 2};
  byte_reader r(bytes, "flags.bin");
  CHECK_FALSE(r.get<bool>("first flag"));
  const auto [what, offset] = error_of([&] { (void)r.get<bool>("second flag"); });
  CHECK(offset == 1);
  CHECK(what.find("flags.bin") != std::string::npos);
  CHECK(what.find("second flag") != std::string::npos);
}

TEST_CASE("strings: u64 length then the bytes, embedded NULs and empty strings kept") {
  const std::string with_nul("a\0b", 3);
  byte_writer w;
  w.put_string("conv1");
  w.put_string("");
  w.put_string(with_nul);
  CHECK(w.size() == 8 + 5 + 8 + 8 + 3);
  CHECK(w.bytes().substr(0, 9) == std::string("\x05\0\0\0\0\0\0\0c", 9));
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "strings");
  CHECK(r.get_string("name") == "conv1");
  CHECK(r.get_string("empty").empty());
  CHECK(r.get_string("nul") == with_nul);
  CHECK(r.at_end());
}

TEST_CASE_TEMPLATE("arrays round-trip without a count", U, std::uint8_t, std::int16_t, std::int32_t,
                   float, double) {
  std::vector<U> v;
  for (int i = 0; i < 37; ++i) v.push_back(static_cast<U>(i * 3 - 50));
  byte_writer w;
  w.put_array(std::span<const U>(v));
  w.put_array(v); // the vector overload
  CHECK(w.size() == 2 * v.size() * sizeof(U));
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "arrays");
  std::vector<U> a(v.size()), b(v.size());
  r.get_array(a.data(), a.size(), "first");
  r.get_array(b.data(), b.size(), "second");
  CHECK(a == v);
  CHECK(b == v);
  CHECK(r.at_end());
  // An empty array reads and writes nothing.
  byte_writer e;
  e.put_array(std::span<const U>());
  CHECK(e.size() == 0);
}

TEST_CASE("raw bytes: put_bytes, get_bytes and take") {
  byte_writer w;
  w.put_bytes("MAGIC", 5);
  w.put_bytes(nullptr, 0);
  w.put<std::uint8_t>(9);
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "raw");
  char magic[5];
  r.get_bytes(magic, 5, "magic");
  CHECK(std::string(magic, 5) == "MAGIC");
  const auto rest = r.take(1, "rest");
  REQUIRE(rest.size() == 1);
  CHECK(rest[0] == 9);
  CHECK(rest.data() == bytes.data() + 5); // not a copy
}

TEST_CASE("patch overwrites bytes already written and rejects an offset past the end") {
  byte_writer w;
  w.put<std::uint32_t>(0);
  w.put<std::uint16_t>(7);
  w.patch<std::uint32_t>(0, 0xA1B2C3D4u);
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "patched");
  CHECK(r.get<std::uint32_t>("patched") == 0xA1B2C3D4u);
  CHECK(r.get<std::uint16_t>("kept") == 7);
  CHECK_THROWS_AS(w.patch<std::uint32_t>(3, 1u), bitgrad::config_error);
  CHECK_THROWS_AS(w.patch<std::uint8_t>(6, 1), bitgrad::config_error);
}

TEST_CASE("take() empties the writer") {
  byte_writer w;
  w.put<std::uint16_t>(0x0102);
  const std::string b = w.take();
  CHECK(b == std::string("\x02\x01", 2));
  CHECK(w.size() == 0);
  CHECK(w.bytes().empty());
}

TEST_CASE("a reader over a string reads its bytes") {
  byte_writer w;
  w.put<std::int32_t>(-5);
  w.put_string("adam");
  const std::string s = w.bytes();
  byte_reader r(std::string_view(s), "checkpoint optimizer state");
  CHECK(r.get<std::int32_t>("i32") == -5);
  CHECK(r.get_string("tag") == "adam");
  CHECK(r.source() == "checkpoint optimizer state");
}

TEST_CASE("truncation names the source, the absolute offset and the field") {
  byte_writer w;
  w.put<std::uint32_t>(1);
  w.put<std::uint16_t>(2); // a u32 is expected here: 2 bytes short
  const auto bytes = as_vector(w);
  // The reader's bytes start at offset 100 of the source.
  byte_reader r(bytes, "model.bgm", 100);
  CHECK(r.offset() == 100);
  CHECK(r.get<std::uint32_t>("version") == 1);
  CHECK(r.offset() == 104);
  const auto [what, offset] = error_of([&] { (void)r.get<std::uint32_t>("section count"); });
  CHECK(offset == 104);
  CHECK(what.find("model.bgm") == 0);
  CHECK(what.find("offset 104") != std::string::npos);
  CHECK(what.find("section count") != std::string::npos);
  CHECK(what.find("truncated") != std::string::npos);
  // A failed read consumes nothing.
  CHECK(r.offset() == 104);
  CHECK(r.get<std::uint16_t>("the u16") == 2);
}

TEST_CASE("a truncated string or array names its field; huge counts do not overflow") {
  byte_writer w;
  w.put<std::uint64_t>(10); // a string of 10 bytes, only 3 follow
  w.put_bytes("abc", 3);
  const auto bytes = as_vector(w);
  {
    byte_reader r(bytes, "ckpt.bin");
    const auto [what, offset] = error_of([&] { (void)r.get_string("parameter name"); });
    CHECK(offset == 8); // after the length
    CHECK(what.find("parameter name") != std::string::npos);
    CHECK(what.find("needs 10 bytes, 3 left") != std::string::npos);
  }
  {
    byte_reader r(bytes, "ckpt.bin");
    const auto [what, offset] = error_of([&] {
      std::vector<double> out(2);
      r.get_array(out.data(), 2, "moments"); // 16 bytes, 11 there
    });
    CHECK(offset == 0);
    CHECK(what.find("moments") != std::string::npos);
  }
  {
    // n * sizeof(U) would wrap around: still a clean error, nothing written to out.
    byte_reader r(bytes, "ckpt.bin");
    float out = 0;
    // (a run-time count: GCC rejects a constant one at compile time)
    const std::size_t huge = std::numeric_limits<std::size_t>::max() / 16 * bytes.size();
    const auto [what, offset] = error_of([&] { r.get_array(&out, huge, "weights"); });
    CHECK(what.find("weights") != std::string::npos);
    CHECK(out == 0);
  }
  {
    byte_reader r(bytes, "ckpt.bin");
    CHECK_THROWS_AS((void)r.take(12, "tail"), format_error);
    char c[12];
    CHECK_THROWS_AS(r.get_bytes(c, 12, "tail"), format_error);
    CHECK(r.offset() == 0);
  }
}

TEST_CASE("get_string enforces its length limit at the length field") {
  byte_writer w;
  w.put<std::uint8_t>(0);
  w.put_string("a long layer name");
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "names", 50);
  (void)r.get<std::uint8_t>("pad");
  const auto [what, offset] = error_of([&] { (void)r.get_string("layer name", 8); });
  CHECK(offset == 51);
  CHECK(what.find("layer name") != std::string::npos);
  CHECK(what.find("17") != std::string::npos);
  byte_reader ok(bytes, "names");
  (void)ok.get<std::uint8_t>("pad");
  CHECK(ok.get_string("layer name", 17) == "a long layer name");
}

TEST_CASE("fail and fail_at throw format_error at the offset they name") {
  const std::vector<std::uint8_t> bytes = {1, 2, 3, 4};
  byte_reader r(bytes, "x.bin", 10);
  (void)r.get<std::uint16_t>("a");
  auto [what, offset] = error_of([&] { r.fail("bad value"); });
  CHECK(offset == 12);
  CHECK(what == "x.bin: at offset 12: bad value");
  std::tie(what, offset) = error_of([&] { r.fail_at(10, "bad first field"); });
  CHECK(offset == 10);
  CHECK(what == "x.bin: at offset 10: bad first field");
}

TEST_CASE("crc32 is zlib's CRC-32: check value, empty input, continuation") {
  const std::string check = "123456789";
  CHECK(bitgrad::io::crc32(check.data(), check.size()) == 0xCBF43926u);
  CHECK(bitgrad::io::crc32(check.data(), 0) == 0u);
  CHECK(bitgrad::io::crc32(nullptr, 0, 0x1234u) == 0x1234u);
  const std::uint32_t head = bitgrad::io::crc32(check.data(), 4);
  CHECK(bitgrad::io::crc32(check.data() + 4, 5, head) == 0xCBF43926u);
  // "The quick brown fox jumps over the lazy dog": 0x414FA339 (the IEEE 802.3 CRC-32).
  const std::string fox = "The quick brown fox jumps over the lazy dog";
  CHECK(bitgrad::io::crc32(fox.data(), fox.size()) == 0x414FA339u);
}

TEST_CASE("seek moves to an absolute offset inside the reader's bytes and no further") {
  byte_writer w;
  w.put<std::uint16_t>(0x1111);
  w.put<std::uint32_t>(0x22222222u);
  const auto bytes = as_vector(w);
  byte_reader r(bytes, "archive.npz", 1000);
  r.seek(1002, "entry");
  CHECK(r.get<std::uint32_t>("entry") == 0x22222222u);
  r.seek(1000, "entry");
  CHECK(r.get<std::uint16_t>("entry") == 0x1111);
  r.seek(1006, "end"); // the end itself is a position
  CHECK(r.at_end());
  auto [what, offset] = error_of([&] { r.seek(1007, "central directory"); });
  CHECK(offset == 1007);
  CHECK(what.find("central directory") != std::string::npos);
  std::tie(what, offset) = error_of([&] { r.seek(999, "local header"); });
  CHECK(offset == 999);
  CHECK(what.find("local header") != std::string::npos);
  CHECK(r.offset() == 1006); // a failed seek does not move
}

} // namespace test_io_bytes
