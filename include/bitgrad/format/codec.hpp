// The bytes of a model file: the writer (encode, to_bytes, write_model_file) and the reader
// (from_bytes, read_model_file) of the layout specified in docs/model-format.md, through the
// byte codec of io/bytes.hpp.
//
//   model_file m = format::read_model_file("model.bgm");        // or from_bytes(span)
//   std::vector<std::uint8_t> b = format::to_bytes(m);          // checks by reading it back
//   format::write_model_file("model.bgm", m);                   // atomic (temp + rename)
//
// Anything malformed throws bitgrad::format_error(file, offset, reason); the reader never reads
// outside the span it was given (fuzzed: tests/fuzz/fuzz_model_file.cpp).
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/format/bitpack.hpp>
#include <bitgrad/format/model.hpp>
#include <bitgrad/format/validate.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bitgrad::format {

inline constexpr char file_magic[8] = {'B', 'G', 'M', 'O', 'D', 'E', 'L', '\n'};
/// The newest version written and read; a model is written as the oldest version that holds
/// it: 1 (byte for byte what version 1's writer wrote), 2 with act_quant operations, 3 with a
/// full-grid tensor (codes down to -2^(k-1)).
inline constexpr std::uint32_t file_version = 3;
/// A quantized tensor's flags (the tensor header's 16-bit field, reserved = 0 before version 3).
inline constexpr std::uint16_t tensor_flag_full_grid = 1;
inline constexpr std::uint32_t oldest_file_version = 1;
inline constexpr std::uint32_t max_act_groups = 1u << 24;
inline constexpr std::size_t header_bytes = 32;
inline constexpr std::size_t section_entry_bytes = 16;
inline constexpr std::uint32_t max_sections = 65536;
inline constexpr std::uint32_t max_operations = 4096;
inline constexpr std::size_t max_name_bytes = 255;
inline constexpr std::uint64_t max_file_bytes = (std::uint64_t(1) << 32) - 1;
/// Fuzzing builds (libFuzzer's FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION) skip the CRC checks so
/// that mutated inputs reach the parsers behind them; every other build checks them.
#if defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
inline constexpr bool check_checksums = false;
#else
inline constexpr bool check_checksums = true;
#endif
inline constexpr std::uint32_t tag_graph = 0x48505247u;  // "GRPH"
inline constexpr std::uint32_t tag_tensor = 0x52534E54u; // "TNSR"

namespace detail {

inline void put_shape(io::byte_writer& o, const shape& s) {
  o.put<std::uint8_t>(s.rank);
  for (auto d : s.dims) o.put<std::uint32_t>(d);
}

/// A shape: rank 1 or 3, used extents in 1..2^24, unused extents 1, at most 2^28 elements.
inline shape get_shape(io::byte_reader& in, const char* what) {
  const std::uint64_t at = in.offset();
  shape s;
  s.rank = in.get<std::uint8_t>(what);
  for (auto& d : s.dims) d = in.get<std::uint32_t>(what);
  if (s.rank != 1 && s.rank != 3)
    in.fail_at(at, std::string(what) + ": rank must be 1 or 3, got " + std::to_string(s.rank));
  for (std::size_t i = 0; i < 3; ++i) {
    const bool used = i == 0 || s.rank == 3;
    if (used ? (s.dims[i] == 0 || s.dims[i] > max_extent) : s.dims[i] != 1)
      in.fail_at(at, std::string(what) + ": extent " + std::to_string(s.dims[i]) + " out of range");
  }
  if (s.elements() > max_elements) in.fail_at(at, std::string(what) + ": more than 2^28 elements");
  return s;
}

inline void write_graph(io::byte_writer& o, const model_file& m) {
  put_shape(o, m.input);
  o.put<std::uint32_t>(static_cast<std::uint32_t>(m.mean.size()));
  for (double v : m.mean) o.put<double>(v);
  for (std::size_t i = 0; i < m.mean.size(); ++i)
    o.put<double>(i < m.stddev.size() ? m.stddev[i] : 0.0);
  o.put<std::uint32_t>(static_cast<std::uint32_t>(m.ops.size()));
  auto u16 = [&](std::uint32_t v) {
    o.put<std::uint16_t>(static_cast<std::uint16_t>(std::min<std::uint32_t>(v, 0xFFFF)));
  };
  for (const operation& op : m.ops) {
    o.put<std::uint8_t>(static_cast<std::uint8_t>(op.kind));
    const std::size_t len = std::min(op.name.size(), max_name_bytes);
    o.put<std::uint8_t>(static_cast<std::uint8_t>(len));
    o.put_bytes(op.name.data(), len);
    o.put<std::uint32_t>(op.input);
    if (op.kind == op_kind::add) o.put<std::uint32_t>(op.input_b);
    switch (op.kind) {
    case op_kind::conv2d: {
      const conv_attrs& c = op.conv;
      o.put<std::uint32_t>(c.in_channels);
      o.put<std::uint32_t>(c.out_channels);
      o.put<std::uint32_t>(c.groups);
      for (std::uint32_t v : {c.kernel_h, c.kernel_w, c.stride_h, c.stride_w, c.pad_h, c.pad_w,
                              c.dilation_h, c.dilation_w})
        u16(v);
      [[fallthrough]];
    }
    case op_kind::linear:
      if (op.kind == op_kind::linear) {
        o.put<std::uint32_t>(op.fc.in_features);
        o.put<std::uint32_t>(op.fc.out_features);
      }
      o.put<std::uint32_t>(op.weight);
      o.put<std::uint32_t>(op.bias);
      o.put<std::uint32_t>(op.channel_scale);
      o.put<float>(op.input_range);
      break;
    case op_kind::max_pool2d:
    case op_kind::avg_pool2d: {
      const pool_attrs& p = op.pool;
      for (std::uint32_t v : {p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w})
        u16(v);
      break;
    }
    case op_kind::act_quant: {
      const act_quant_attrs& a = op.act;
      o.put<std::uint8_t>(a.is_signed ? 1 : 0);
      o.put<std::uint32_t>(a.group_size);
      o.put<std::uint32_t>(static_cast<std::uint32_t>(a.bits.size()));
      o.put_bytes(a.bits.data(), a.bits.size());
      for (std::size_t g = 0; g < a.bits.size(); ++g)
        o.put<float>(g < a.ranges.size() ? a.ranges[g] : 0.0f);
      break;
    }
    default:
      break;
    }
  }
}

/// The version m is written as: 3 when it holds a full-grid tensor, else 2 when it holds an
/// act_quant operation, else 1.
inline std::uint32_t version_for(const model_file& m) {
  for (const tensor_data& t : m.tensors)
    if (t.kind == tensor_kind::quantized && t.full_grid) return 3;
  for (const operation& op : m.ops)
    if (op.kind == op_kind::act_quant) return 2;
  return 1;
}

inline void write_tensor(io::byte_writer& o, const tensor_data& t) {
  o.put<std::uint8_t>(static_cast<std::uint8_t>(t.kind));
  o.put<std::uint8_t>(static_cast<std::uint8_t>(t.extents.size()));
  const bool full = t.kind == tensor_kind::quantized && t.full_grid;
  o.put<std::uint16_t>(full ? tensor_flag_full_grid : 0);
  for (auto e : t.extents) o.put<std::uint32_t>(e);
  if (t.kind == tensor_kind::float32) {
    o.put_array(t.values);
    return;
  }
  const std::size_t start = o.size() - 4 - 4 * t.extents.size();
  o.put<std::uint32_t>(t.group_size);
  o.put<std::uint32_t>(static_cast<std::uint32_t>(t.bits.size()));
  o.put_bytes(t.bits.data(), t.bits.size());
  while ((o.size() - start) % 4) o.put<std::uint8_t>(0);
  o.put_array(t.scales);
  o.put<std::uint64_t>(t.code_bits());
  o.put_bytes(t.packed.data(), t.packed.size());
}

/// Operation `index` of a file of format `version`.
inline operation read_operation(io::byte_reader& in, std::uint32_t version = file_version,
                                std::size_t index = 0) {
  operation op;
  const std::uint64_t at = in.offset();
  const auto kind = in.get<std::uint8_t>("operation kind");
  if (kind < 1 || kind > 10) in.fail_at(at, "unknown operation kind " + std::to_string(kind));
  if (kind == 10 && version < 2)
    in.fail_at(at, "operation kind 10 (act_quant) needs format version 2, the file is version " +
                       std::to_string(version));
  op.kind = static_cast<op_kind>(kind);
  const auto len = in.get<std::uint8_t>("name length");
  const auto name = in.take(len, "operation name");
  op.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
  const std::string who = "operation " + std::to_string(index) + " (" + op.name + "): ";
  op.input = in.get<std::uint32_t>("input");
  if (op.kind == op_kind::add) op.input_b = in.get<std::uint32_t>("second input");
  auto u16 = [&](const char* what) { return std::uint32_t(in.get<std::uint16_t>(what)); };
  switch (op.kind) {
  case op_kind::conv2d: {
    conv_attrs& c = op.conv;
    c.in_channels = in.get<std::uint32_t>("conv2d attributes");
    c.out_channels = in.get<std::uint32_t>("conv2d attributes");
    c.groups = in.get<std::uint32_t>("conv2d attributes");
    for (std::uint32_t* v : {&c.kernel_h, &c.kernel_w, &c.stride_h, &c.stride_w, &c.pad_h, &c.pad_w,
                             &c.dilation_h, &c.dilation_w})
      *v = u16("conv2d attributes");
    [[fallthrough]];
  }
  case op_kind::linear:
    if (op.kind == op_kind::linear) {
      op.fc.in_features = in.get<std::uint32_t>("linear attributes");
      op.fc.out_features = in.get<std::uint32_t>("linear attributes");
    }
    op.weight = in.get<std::uint32_t>("weight tensor");
    op.bias = in.get<std::uint32_t>("bias tensor");
    op.channel_scale = in.get<std::uint32_t>("channel-scale tensor");
    op.input_range = in.get<float>("input range");
    break;
  case op_kind::max_pool2d:
  case op_kind::avg_pool2d: {
    pool_attrs& p = op.pool;
    for (std::uint32_t* v :
         {&p.kernel_h, &p.kernel_w, &p.stride_h, &p.stride_w, &p.pad_h, &p.pad_w})
      *v = u16("pool attributes");
    break;
  }
  case op_kind::act_quant: {
    act_quant_attrs& a = op.act;
    const std::uint64_t flag_at = in.offset();
    const auto flag = in.get<std::uint8_t>("act_quant signed flag");
    if (flag > 1)
      in.fail_at(flag_at,
                 who + "act_quant signed flag must be 0 or 1, got " + std::to_string(flag));
    a.is_signed = flag == 1;
    a.group_size = in.get<std::uint32_t>("act_quant group size");
    const std::uint64_t groups_at = in.offset();
    const auto groups = in.get<std::uint32_t>("act_quant group count");
    if (groups < 1 || groups > max_act_groups)
      in.fail_at(groups_at,
                 who + "act_quant group count " + std::to_string(groups) + " outside 1..2^24");
    in.need(std::uint64_t(groups) * 5, "act_quant bitwidths and ranges");
    const int lowest = a.is_signed ? 2 : 1;
    for (std::uint32_t g = 0; g < groups; ++g) {
      const std::uint64_t b_at = in.offset();
      const auto k = in.get<std::uint8_t>("act_quant bitwidth");
      if (k < lowest || k > max_code_bits)
        in.fail_at(b_at, who + "act_quant group " + std::to_string(g) + ": bitwidth " +
                             std::to_string(k) + " outside " + std::to_string(lowest) + "..16 (" +
                             (a.is_signed ? "signed" : "unsigned") + " grid)");
      a.bits.push_back(k);
    }
    for (std::uint32_t g = 0; g < groups; ++g) {
      const std::uint64_t r_at = in.offset();
      const auto r = in.get<float>("act_quant range");
      if (!std::isfinite(r) || !(r > 0))
        in.fail_at(r_at, who + "act_quant group " + std::to_string(g) + ": range " +
                             std::to_string(r) + " is not finite and > 0");
      a.ranges.push_back(r);
    }
    break;
  }
  default:
    break;
  }
  return op;
}

/// For each of `count` tensors, the words naming it in messages: "operation i (name): bias
/// tensor t" for the first operation that reads it, "tensor t (read by no operation)" else.
inline std::vector<std::string> tensor_readers(const std::vector<operation>& ops,
                                               std::size_t count) {
  std::vector<std::string> who(count);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const operation& op = ops[i];
    if (op.kind != op_kind::conv2d && op.kind != op_kind::linear) continue;
    const std::pair<std::uint32_t, const char*> refs[] = {
        {op.weight, "weight"}, {op.bias, "bias"}, {op.channel_scale, "channel-scale"}};
    for (const auto& [t, field] : refs)
      if (t < count && who[t].empty())
        who[t] = "operation " + std::to_string(i) + " (" + op.name + "): " + field + " tensor " +
                 std::to_string(t);
  }
  for (std::size_t t = 0; t < count; ++t)
    if (who[t].empty()) who[t] = "tensor " + std::to_string(t) + " (read by no operation)";
  return who;
}

/// Index of the first value of v that is NaN or infinite, or v.size().
inline std::size_t first_non_finite(const std::vector<float>& v) {
  std::size_t i = 0;
  while (i < v.size() && std::isfinite(v[i])) ++i;
  return i;
}

/// Reads one tensor section of a file of format `version`; `who` names the tensor in the
/// messages of value checks.
inline tensor_data read_tensor(io::byte_reader& in, std::uint64_t section_begin,
                               const std::string& who, std::uint32_t version = file_version) {
  tensor_data t;
  const std::uint64_t at = in.offset();
  const auto kind = in.get<std::uint8_t>("tensor kind");
  if (kind != 1 && kind != 2) in.fail_at(at, "unknown tensor kind " + std::to_string(kind));
  t.kind = static_cast<tensor_kind>(kind);
  const auto rank = in.get<std::uint8_t>("tensor rank");
  if (rank < 1 || rank > 4)
    in.fail_at(at + 1, "tensor rank must be 1..4, got " + std::to_string(rank));
  const auto flags = in.get<std::uint16_t>("tensor flags");
  if (version < 3 && flags != 0)
    in.fail_at(at + 2, "reserved field is not 0 (tensor flags need format version 3, the file is "
                       "version " +
                           std::to_string(version) + ")");
  if (flags != 0 && (flags != tensor_flag_full_grid || t.kind != tensor_kind::quantized))
    in.fail_at(at + 2, "unknown tensor flags " + std::to_string(flags) +
                           (t.kind == tensor_kind::quantized ? "" : " on a float32 tensor"));
  t.full_grid = flags == tensor_flag_full_grid;
  std::uint64_t count = 1;
  for (int i = 0; i < rank; ++i) {
    const std::uint64_t eat = in.offset();
    const auto e = in.get<std::uint32_t>("tensor extent");
    if (e == 0 || e > max_extent)
      in.fail_at(eat, "tensor extent " + std::to_string(e) + " out of range");
    count *= e;
    if (count > max_elements) in.fail_at(eat, "tensor larger than 2^28 elements");
    t.extents.push_back(e);
  }
  if (t.kind == tensor_kind::float32) {
    if (in.remaining() != count * 4)
      in.fail("float32 tensor of " + std::to_string(count) + " values needs " +
              std::to_string(count * 4) + " bytes, section has " + std::to_string(in.remaining()));
    t.values.resize(count);
    const std::uint64_t vat = in.offset();
    in.get_array(t.values.data(), t.values.size(), "float32 values");
    // A NaN or infinite weight, bias or channel scale would make every output garbage.
    if (const std::size_t j = first_non_finite(t.values); j < count)
      in.fail_at(vat + 4 * j, who + ": value " + std::to_string(j) + " of " +
                                  std::to_string(count) + " is not finite (" +
                                  value_str(t.values[j]) + ")");
    return t;
  }
  const std::uint64_t gat = in.offset();
  t.group_size = in.get<std::uint32_t>("group size");
  const auto groups = in.get<std::uint32_t>("group count");
  const std::size_t channels = t.extents[0];
  if (t.group_size == 0 || t.group_size > channels)
    in.fail_at(gat, "group size " + std::to_string(t.group_size) + " outside 1.." +
                        std::to_string(channels));
  if (groups != (channels + t.group_size - 1) / t.group_size)
    in.fail_at(gat + 4, "group count " + std::to_string(groups) + " but " +
                            std::to_string(channels) + " channels in groups of " +
                            std::to_string(t.group_size));
  const std::uint64_t bat = in.offset();
  const auto bits = in.take(groups, "bitwidths");
  t.bits.assign(bits.begin(), bits.end());
  for (std::size_t g = 0; g < groups; ++g)
    if (t.bits[g] < min_code_bits || t.bits[g] > max_code_bits)
      in.fail_at(bat + g, "bitwidth " + std::to_string(t.bits[g]) + " of group " +
                              std::to_string(g) + " outside 1..16");
  while ((in.offset() - section_begin) % 4) {
    if (in.get<std::uint8_t>("padding") != 0) in.fail_at(in.offset() - 1, "padding byte is not 0");
  }
  const std::uint64_t sat = in.offset();
  t.scales.resize(groups);
  in.get_array(t.scales.data(), groups, "scales");
  for (std::size_t g = 0; g < groups; ++g)
    if (!(std::isfinite(t.scales[g]) && t.scales[g] > 0))
      in.fail_at(sat + 4 * g, who + ": scale of group " + std::to_string(g) +
                                  " is not finite and positive (" + value_str(t.scales[g]) + ")");
  const std::uint64_t cat = in.offset();
  const auto code_bits = in.get<std::uint64_t>("code bit count");
  if (code_bits != t.code_bits())
    in.fail_at(cat, "code bit count " + std::to_string(code_bits) + " but the groups need " +
                        std::to_string(t.code_bits()));
  const std::size_t nbytes = packed_bytes(code_bits);
  if (in.remaining() != nbytes)
    in.fail("packed codes need " + std::to_string(nbytes) + " bytes, section has " +
            std::to_string(in.remaining()));
  const std::uint64_t pat = in.offset();
  const auto packed = in.take(nbytes, "packed codes");
  t.packed.assign(packed.begin(), packed.end());
  if (code_bits % 8 && (t.packed.back() >> (code_bits % 8)) != 0)
    in.fail_at(pat + nbytes - 1, "unused bits of the last code byte are not 0");
  // No code outside its range (only -2^(k-1) can be, for k >= 2, and it is in the full grid's).
  std::vector<std::int32_t> buf;
  std::uint64_t bit = 0;
  for (std::size_t g = 0; g < groups; ++g) {
    const std::size_t n = t.group_weights(g);
    buf.resize(n);
    unpack_codes(t.bits[g], t.packed.data(), bit, n, buf.data());
    for (std::size_t i = 0; i < n; ++i)
      if (!code_in_range(buf[i], t.bits[g], t.full_grid))
        in.fail_at(pat + (bit + std::uint64_t(i) * t.bits[g]) / 8,
                   "code " + std::to_string(buf[i]) + " outside the " +
                       std::to_string(int(t.bits[g])) + "-bit " +
                       (t.full_grid ? "full" : "symmetric") + " range in group " +
                       std::to_string(g));
    bit += std::uint64_t(n) * t.bits[g];
  }
  return t;
}

} // namespace detail

/// Parses and checks a model file held in memory. `file` names it in error messages.
inline model_file from_bytes(std::span<const std::uint8_t> bytes,
                             const std::string& file = "<memory>") {
  const std::size_t size = bytes.size();
  io::byte_reader head(bytes, file);
  const auto magic = head.take(8, "magic");
  if (std::memcmp(magic.data(), file_magic, 8) != 0)
    head.fail_at(0, "not a bitgrad model file (bad magic)");
  const auto version = head.get<std::uint32_t>("version");
  if (version < oldest_file_version || version > file_version)
    head.fail_at(8, "format version " + std::to_string(version) +
                        " is not supported (this reader: " + std::to_string(oldest_file_version) +
                        ".." + std::to_string(file_version) + ")");
  const auto sections = head.get<std::uint32_t>("section count");
  if (sections < 1 || sections > max_sections)
    head.fail_at(12, "section count " + std::to_string(sections) + " outside 1..65536");
  const auto recorded = head.get<std::uint64_t>("file size");
  if (recorded != size)
    head.fail_at(16, "header records " + std::to_string(recorded) + " bytes, file has " +
                         std::to_string(size));
  const auto header_crc = head.get<std::uint32_t>("header CRC");
  if (head.get<std::uint32_t>("reserved") != 0) head.fail_at(28, "reserved header field is not 0");
  const std::uint64_t table_bytes = std::uint64_t(sections) * section_entry_bytes;
  head.need(table_bytes, "section table");
  std::uint32_t crc = io::crc32(bytes.data(), 24);
  crc = io::crc32(bytes.data() + header_bytes, table_bytes, crc);
  if (check_checksums && crc != header_crc)
    head.fail_at(24, "header CRC mismatch (header or section table corrupted)");

  struct entry {
    std::uint32_t tag, crc;
    std::uint32_t offset, size;
  };
  std::vector<entry> table(sections);
  std::uint64_t expect = header_bytes + table_bytes;
  for (std::uint32_t s = 0; s < sections; ++s) {
    const std::uint64_t at = head.offset();
    entry& e = table[s];
    e.tag = head.get<std::uint32_t>("section tag");
    e.crc = head.get<std::uint32_t>("section CRC");
    e.offset = head.get<std::uint32_t>("section offset");
    e.size = head.get<std::uint32_t>("section size");
    const std::uint32_t want = s == 0 ? tag_graph : tag_tensor;
    if (e.tag != want)
      head.fail_at(at, "section " + std::to_string(s) + " has tag " + std::to_string(e.tag) +
                           ", expected " + (s == 0 ? "GRPH" : "TNSR"));
    if (e.offset != expect)
      head.fail_at(at + 8, "section " + std::to_string(s) + " starts at " +
                               std::to_string(e.offset) + ", expected " + std::to_string(expect));
    if (e.size > size - e.offset)
      head.fail_at(at + 12, "section " + std::to_string(s) + " of " + std::to_string(e.size) +
                                " bytes runs past the end of the file");
    expect = e.offset + e.size;
  }
  if (expect != size)
    head.fail_at(expect, std::to_string(size - expect) + " bytes after the last section");
  for (std::uint32_t s = 0; s < sections; ++s) {
    const entry& e = table[s];
    if (check_checksums &&
        io::crc32(bytes.data() + e.offset, static_cast<std::size_t>(e.size)) != e.crc)
      head.fail_at(e.offset, "CRC mismatch in section " + std::to_string(s) +
                                 (s == 0 ? " (graph)" : " (tensor " + std::to_string(s - 1) + ")"));
  }

  model_file m;
  // Graph.
  io::byte_reader g(bytes.subspan(table[0].offset, table[0].size), file, table[0].offset);
  m.input = detail::get_shape(g, "input shape");
  const std::uint64_t norm_at = g.offset();
  const auto norm = g.get<std::uint32_t>("normalisation count");
  if (norm != 0 && norm != 1 && norm != m.input.dims[0])
    g.fail_at(norm_at, "normalisation count " + std::to_string(norm) + " is neither 0, 1 nor the " +
                           std::to_string(m.input.dims[0]) + " input channels");
  for (std::uint32_t i = 0; i < 2 * norm; ++i) {
    const std::uint64_t at = g.offset();
    const auto v = g.get<double>("normalisation");
    if (!std::isfinite(v) || (i >= norm && !(v > 0)))
      g.fail_at(at, "normalisation mean must be finite and stddev finite and > 0");
    (i < norm ? m.mean : m.stddev).push_back(v);
  }
  const std::uint64_t count_at = g.offset();
  const auto nops = g.get<std::uint32_t>("operation count");
  if (nops < 1 || nops > max_operations)
    g.fail_at(count_at, "operation count " + std::to_string(nops) + " outside 1..4096");
  std::vector<std::uint64_t> op_offsets;
  for (std::uint32_t i = 0; i < nops; ++i) {
    op_offsets.push_back(g.offset());
    m.ops.push_back(detail::read_operation(g, version, i));
  }
  if (g.remaining() != 0)
    g.fail(std::to_string(g.remaining()) + " unexpected bytes after the operations");
  // Tensors, named by the operation that reads them.
  const std::vector<std::string> readers = detail::tensor_readers(m.ops, sections - 1);
  for (std::uint32_t s = 1; s < sections; ++s) {
    io::byte_reader t(bytes.subspan(table[s].offset, table[s].size), file, table[s].offset);
    m.tensors.push_back(detail::read_tensor(t, table[s].offset, readers[s - 1], version));
  }
  // Shapes and references.
  detail::check_graph(m, [&](std::size_t i, const std::string& reason) {
    throw format_error(file, op_offsets[i], reason);
  });
  return m;
}

/// The bytes of m, laid out and checksummed but NOT checked for consistency (tests and fuzz
/// seeds use it to make malformed files; everyone else calls to_bytes).
inline std::vector<std::uint8_t> encode(const model_file& m) {
  std::vector<std::string> sections;
  {
    io::byte_writer graph;
    detail::write_graph(graph, m);
    sections.push_back(graph.take());
  }
  for (const tensor_data& t : m.tensors) {
    io::byte_writer o;
    detail::write_tensor(o, t);
    sections.push_back(o.take());
  }
  io::byte_writer out;
  const std::uint64_t table = sections.size() * section_entry_bytes;
  std::uint64_t total = header_bytes + table;
  for (const auto& s : sections) total += s.size();
  if (total >= max_file_bytes) throw config_error("to_bytes: model larger than 4 GiB");
  out.put_bytes(file_magic, 8);
  out.put<std::uint32_t>(detail::version_for(m));
  out.put<std::uint32_t>(static_cast<std::uint32_t>(sections.size()));
  out.put<std::uint64_t>(total);
  out.put<std::uint32_t>(0); // header CRC, patched below
  out.put<std::uint32_t>(0);
  std::uint64_t offset = header_bytes + table;
  for (std::size_t s = 0; s < sections.size(); ++s) {
    out.put<std::uint32_t>(s == 0 ? tag_graph : tag_tensor);
    out.put<std::uint32_t>(io::crc32(sections[s].data(), sections[s].size()));
    out.put<std::uint32_t>(static_cast<std::uint32_t>(offset));
    out.put<std::uint32_t>(static_cast<std::uint32_t>(sections[s].size()));
    offset += sections[s].size();
  }
  std::uint32_t crc = io::crc32(out.bytes().data(), 24);
  crc = io::crc32(out.bytes().data() + header_bytes, table, crc);
  out.patch<std::uint32_t>(24, crc);
  for (const auto& s : sections) out.put_bytes(s.data(), s.size());
  const std::string& b = out.bytes();
  return std::vector<std::uint8_t>(b.begin(), b.end());
}

/// The bytes of m (docs/model-format.md). Throws config_error when m is not a valid model
/// (the bytes are read back with from_bytes before being returned).
inline std::vector<std::uint8_t> to_bytes(const model_file& m) {
  std::vector<std::uint8_t> bytes = encode(m);
  try {
    (void)from_bytes(bytes, "<model being written>");
  } catch (const format_error& e) {
    throw config_error(std::string("to_bytes: the model is not valid: ") + e.what());
  }
  return bytes;
}

/// Reads and checks a model file (at most 4 GiB).
inline model_file read_model_file(const std::filesystem::path& path) {
  const std::vector<std::uint8_t> bytes = read_file_bytes(path, max_file_bytes);
  return from_bytes(bytes, path.string());
}

/// Writes m to path atomically (temporary file + rename). Returns the bytes written.
inline std::size_t write_model_file(const std::filesystem::path& path, const model_file& m) {
  const std::vector<std::uint8_t> bytes = to_bytes(m);
  write_file_atomically(
      path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  return bytes.size();
}

} // namespace bitgrad::format
