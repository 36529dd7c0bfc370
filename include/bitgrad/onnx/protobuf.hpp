// The protocol-buffers wire format, encoder side only: just what the ONNX messages of
// onnx/onnx_proto.hpp need (docs/onnx.md says why bitgrad writes it itself).
//
// Words (as in the protobuf encoding documentation)
//   field number  the number a .proto file gives a field ("optional string name = 1;").
//   wire type     how the value is laid out: 0 varint, 1 fixed 64 bits, 2 length-delimited
//                 (strings, bytes, sub-messages, packed arrays), 5 fixed 32 bits.
//   tag           varint (field number << 3 | wire type), written before every value.
//   varint        an unsigned integer in groups of 7 bits, least significant group first; the top
//                 bit of each byte says "more bytes follow". 300 = 0b10'0101100 -> AC 02.
//                 Negative int64 / int32 values are their 64-bit two's complement: 10 bytes.
//
// A message is its fields' (tag, value) pairs back to back, in any order; an absent optional
// field writes nothing. A repeated field writes one pair per element (the proto2 default,
// which ONNX's .proto uses; parsers also accept the packed form, which this writer never emits).
//
//   pb::message m;
//   m.int64(1, 7);            // ir_version = 7
//   m.string(2, "bitgrad");   // producer_name
//   m.submessage(7, graph);   // a sub-message, itself a pb::message
//   std::string bytes = m.bytes();
#pragma once

#include <bitgrad/io/bytes.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace bitgrad::onnx::pb {

enum class wire_type : std::uint8_t { varint = 0, fixed64 = 1, length_delimited = 2, fixed32 = 5 };

/// The bytes of one message under construction.
class message {
public:
  /// An unsigned integer field (uint64, enum, bool) as a varint.
  void uint64(std::uint32_t field, std::uint64_t v) {
    tag(field, wire_type::varint);
    varint(v);
  }
  /// A signed int64 / int32 field: varint of its two's complement (negative: 10 bytes).
  void int64(std::uint32_t field, std::int64_t v) { uint64(field, static_cast<std::uint64_t>(v)); }
  /// A float field: 4 bytes, little-endian IEEE-754.
  void float32(std::uint32_t field, float v) {
    tag(field, wire_type::fixed32);
    out_.put(v);
  }
  /// A string or bytes field: its length as a varint, then the bytes.
  void bytes(std::uint32_t field, std::string_view v) {
    tag(field, wire_type::length_delimited);
    varint(v.size());
    out_.put_bytes(v.data(), v.size());
  }
  void string(std::uint32_t field, std::string_view v) { bytes(field, v); }
  /// A sub-message field: length-delimited, like bytes.
  void submessage(std::uint32_t field, const message& m) { bytes(field, m.bytes()); }

  const std::string& bytes() const { return out_.bytes(); }
  std::string take() { return out_.take(); }
  std::size_t size() const { return out_.size(); }

  /// The varint encoding of v (for tests and for sizes).
  static std::string varint_bytes(std::uint64_t v) {
    message m;
    m.varint(v);
    return m.take();
  }

private:
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      out_.put(static_cast<std::uint8_t>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.put(static_cast<std::uint8_t>(v));
  }
  void tag(std::uint32_t field, wire_type w) {
    varint((std::uint64_t(field) << 3) | static_cast<std::uint64_t>(w));
  }

  io::byte_writer out_;
};

} // namespace bitgrad::onnx::pb
