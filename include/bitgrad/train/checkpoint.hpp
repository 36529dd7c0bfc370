// Training checkpoints: everything needed to continue a run exactly where it stopped.
//
// File layout (little-endian; integers unsigned unless noted; "string" = u64 length + bytes):
//   offset 0   magic "BGCKPT\r\n" (8 bytes)
//          8   u32 format version (1)
//         12   u32 bytes per parameter value (4: float, 8: double)
//         16   string  metadata, "key=value" lines (phase, epoch, fp32 accuracy, ...)
//              u32     parameter count, then per parameter:
//                        string name, u8 kind (param_kind), u64 count, count values
//              u32     quantizer count, then per quantizer:
//                        string name, u8 frozen, u32 groups, groups x i32 frozen bitwidths
//              string  optimizer state (optimizer::save)
//              string  loader state (to_string(loader_state))
//   end - 4    u32 CRC-32 (zlib) of every byte before it
// Parameters and quantizers are stored in the network's visitation order and must match the
// network on load name by name and size by size: a checkpoint of another architecture is
// rejected with the first parameter that differs. Parameter values must be finite, bitwidth
// parameters inside [1, 16], scale parameters > 0, and frozen group counts those of the
// network's quantizers.
//
// Metadata values are text; meta_field / meta_unsigned / meta_real read one field and throw
// format_error naming the file, the field, what was expected and what was found
// ("checkpoint.bin: at offset 16: metadata field 'epoch': expected an unsigned integer, got
// 'abc'"; 16 is where the metadata starts). Numbers are parsed whole (std::from_chars): no
// sign on unsigned fields, no leading or trailing characters; reals may be nan or inf.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/read_file.hpp>

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>
#include <zlib.h>

namespace bitgrad::train {

static_assert(std::endian::native == std::endian::little,
              "bitgrad checkpoints are written little-endian; big-endian hosts are unsupported");

/// What a checkpoint holds besides the network.
struct checkpoint_data {
  std::map<std::string, std::string> meta; ///< phase, epoch, ...
  std::string optimizer_state;
  std::string loader_state;
  std::string file; ///< the file it was read from (named in messages); empty before saving
};

namespace detail {

inline constexpr char checkpoint_magic[8] = {'B', 'G', 'C', 'K', 'P', 'T', '\r', '\n'};
inline constexpr std::uint32_t checkpoint_version = 1;
/// Offset of the metadata string in the file (named by metadata errors).
inline constexpr std::uint64_t checkpoint_metadata_offset = 16;

/// `text` as a whole unsigned decimal integer, or nullopt.
inline std::optional<std::uint64_t> parse_unsigned(std::string_view text) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return v;
}

/// `text` as a whole real number (nan and inf included), or nullopt.
inline std::optional<double> parse_real(std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return v;
}

/// "'abc'" for messages, cut to 40 characters.
inline std::string quoted_value(std::string_view text) {
  return "'" + std::string(text.substr(0, 40)) + (text.size() > 40 ? "...'" : "'");
}

} // namespace detail

/// The metadata field `key`; format_error naming the file and the field when it is missing.
inline const std::string& meta_field(const checkpoint_data& data, const std::string& key) {
  const auto it = data.meta.find(key);
  if (it == data.meta.end())
    throw format_error(data.file, detail::checkpoint_metadata_offset,
                       "metadata field '" + key + "' is missing");
  return it->second;
}

/// The metadata field `key` as an unsigned integer; format_error naming the file, the field and
/// the text found otherwise.
inline std::uint64_t meta_unsigned(const checkpoint_data& data, const std::string& key) {
  const std::string& text = meta_field(data, key);
  const auto v = detail::parse_unsigned(text);
  if (!v)
    throw format_error(data.file, detail::checkpoint_metadata_offset,
                       "metadata field '" + key + "': expected an unsigned integer, got " +
                           detail::quoted_value(text));
  return *v;
}

/// The metadata field `key` as a real number (nan and inf accepted); format_error naming the
/// file, the field and the text found otherwise.
inline double meta_real(const checkpoint_data& data, const std::string& key) {
  const std::string& text = meta_field(data, key);
  const auto v = detail::parse_real(text);
  if (!v)
    throw format_error(data.file, detail::checkpoint_metadata_offset,
                       "metadata field '" + key + "': expected a number, got " +
                           detail::quoted_value(text));
  return *v;
}

namespace detail {

class byte_writer {
public:
  template <class U>
  void put(U v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    bytes_.append(p, sizeof(U));
  }
  void put_bytes(const void* p, std::size_t n) { bytes_.append(static_cast<const char*>(p), n); }
  void put_string(std::string_view s) {
    put<std::uint64_t>(s.size());
    bytes_.append(s);
  }
  std::string& bytes() { return bytes_; }

private:
  std::string bytes_;
};

class byte_reader {
public:
  byte_reader(std::string file, std::span<const std::uint8_t> bytes, std::size_t end)
      : file_(std::move(file)), bytes_(bytes), end_(end) {}
  [[noreturn]] void fail(const std::string& reason) const {
    throw format_error(file_, at_, reason);
  }
  void need(std::uint64_t n, const char* what) const {
    if (n > end_ - at_)
      fail(std::string("truncated: expected ") + std::to_string(n) + " bytes of " + what +
           ", only " + std::to_string(end_ - at_) + " left");
  }
  template <class U>
  U get(const char* what) {
    need(sizeof(U), what);
    U v;
    std::memcpy(&v, bytes_.data() + at_, sizeof(U));
    at_ += sizeof(U);
    return v;
  }
  void get_bytes(void* out, std::uint64_t n, const char* what) {
    need(n, what);
    std::memcpy(out, bytes_.data() + at_, n);
    at_ += n;
  }
  std::string get_string(const char* what) {
    const auto n = get<std::uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), n);
    at_ += n;
    return s;
  }
  std::size_t offset() const { return at_; }

private:
  std::string file_;
  std::span<const std::uint8_t> bytes_;
  std::size_t end_;
  std::size_t at_ = 0;
};

inline std::uint32_t crc32_of(const void* data, std::size_t n) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) { // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    crc = ::crc32(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(crc);
}

} // namespace detail

/// Writes net's parameters, its quantizers' frozen state and `data` to `path` atomically.
template <class Net>
void save_checkpoint(const std::filesystem::path& path, Net& net, const checkpoint_data& data) {
  using T = typename Net::value_type;
  detail::byte_writer w;
  w.put_bytes(detail::checkpoint_magic, sizeof detail::checkpoint_magic);
  w.put<std::uint32_t>(detail::checkpoint_version);
  w.put<std::uint32_t>(sizeof(T));
  std::string meta;
  for (const auto& [key, value] : data.meta) meta += key + "=" + value + "\n";
  w.put_string(meta);

  std::vector<param_ref<T>> params;
  net.visit_parameters([&](param_ref<T>& p) { params.push_back(p); });
  w.put<std::uint32_t>(static_cast<std::uint32_t>(params.size()));
  for (const auto& p : params) {
    w.put_string(p.name);
    w.put<std::uint8_t>(static_cast<std::uint8_t>(p.kind));
    w.put<std::uint64_t>(p.size);
    w.put_bytes(p.value, p.size * sizeof(T));
  }

  std::uint32_t quantizers = 0;
  net.visit_quantizers([&](std::string_view, const auto&) { ++quantizers; });
  w.put<std::uint32_t>(quantizers);
  net.visit_quantizers([&]<class Q>(std::string_view name, const Q& q) {
    w.put_string(name);
    std::vector<int> bits;
    if constexpr (!Q::is_identity)
      if (q.frozen()) bits = q.frozen_bits();
    w.put<std::uint8_t>(bits.empty() ? 0 : 1);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(bits.size()));
    for (int b : bits) w.put<std::int32_t>(b);
  });
  w.put_string(data.optimizer_state);
  w.put_string(data.loader_state);
  const std::uint32_t crc = detail::crc32_of(w.bytes().data(), w.bytes().size());
  w.put<std::uint32_t>(crc);
  write_file_atomically(path, std::string_view(w.bytes()));
}

/// Parses the checkpoint `bytes` (the whole file, held in memory) into net and returns the
/// rest; `file` names it in error messages. The in-memory entry of load_checkpoint (and the
/// fuzzing entry): any input either loads or throws format_error / config_error.
/// Throws format_error (file, offset, reason) for a malformed file or another architecture;
/// `net` is only modified once the whole file has been validated.
template <class Net>
checkpoint_data parse_checkpoint(std::span<const std::uint8_t> bytes, const std::string& file,
                                 Net& net) {
  using T = typename Net::value_type;
  if (bytes.size() < sizeof detail::checkpoint_magic + 12)
    throw format_error(file, 0,
                       "too short for a checkpoint (" + std::to_string(bytes.size()) + " bytes)");
  const std::size_t body = bytes.size() - 4;
  std::uint32_t stored_crc;
  std::memcpy(&stored_crc, bytes.data() + body, 4);
  detail::byte_reader r(file, bytes, body);
  char magic[8];
  r.get_bytes(magic, 8, "magic");
  if (std::memcmp(magic, detail::checkpoint_magic, 8) != 0)
    throw format_error(file, 0, "not a bitgrad checkpoint (bad magic)");
  if (detail::crc32_of(bytes.data(), body) != stored_crc)
    throw format_error(file, body, "checksum mismatch: the file is corrupted");
  const auto version = r.get<std::uint32_t>("version");
  if (version != detail::checkpoint_version)
    r.fail("unsupported checkpoint version " + std::to_string(version) + " (this build reads " +
           std::to_string(detail::checkpoint_version) + ")");
  const auto value_size = r.get<std::uint32_t>("value size");
  if (value_size != sizeof(T))
    r.fail("parameters stored with " + std::to_string(value_size) +
           "-byte values, the network uses " + std::to_string(sizeof(T)));
  checkpoint_data data;
  data.file = file;
  {
    std::istringstream lines(r.get_string("metadata"));
    for (std::string line; std::getline(lines, line);) {
      const auto eq = line.find('=');
      if (eq == std::string::npos) r.fail("metadata line without '=': " + line);
      data.meta[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }

  std::vector<param_ref<T>> params;
  net.visit_parameters([&](param_ref<T>& p) { params.push_back(p); });
  const auto count = r.get<std::uint32_t>("parameter count");
  if (count != params.size())
    r.fail("checkpoint of another architecture: " + std::to_string(count) +
           " parameters, the network has " + std::to_string(params.size()));
  std::vector<std::vector<T>> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t at = r.offset();
    const std::string name = r.get_string("parameter name");
    const auto kind = r.get<std::uint8_t>("parameter kind");
    const auto size = r.get<std::uint64_t>("parameter size");
    if (name != params[i].name || size != params[i].size ||
        kind != static_cast<std::uint8_t>(params[i].kind))
      throw format_error(file, at,
                         "checkpoint of another architecture: parameter " + std::to_string(i) +
                             " is '" + name + "' (" + std::to_string(size) +
                             " values), the network expects '" + params[i].name + "' (" +
                             std::to_string(params[i].size) + " values)");
    r.need(size * sizeof(T), "parameter values");
    const std::size_t first = r.offset();
    values[i].resize(size);
    r.get_bytes(values[i].data(), size * sizeof(T), "parameter values");
    // A run never saves non-finite values (the trainer stops on a non-finite gradient), and
    // quantizers project their parameters after every step: bitwidths stay inside [1, 16]
    // (they become integer grids) and scales stay positive (weights are divided by them).
    const bool is_bits = kind == static_cast<std::uint8_t>(param_kind::bitwidth);
    const bool is_scale = kind == static_cast<std::uint8_t>(param_kind::scale);
    for (std::size_t j = 0; j < size; ++j) {
      const T v = values[i][j];
      const char* bad = !std::isfinite(v)                       ? ", not finite"
                        : is_bits && !(v >= T(1) && v <= T(16)) ? ", not a bitwidth in [1, 16]"
                        : is_scale && !(v > T(0))               ? ", not a positive scale"
                                                                : nullptr;
      if (bad != nullptr)
        throw format_error(file, first + j * sizeof(T),
                           "parameter '" + name + "' value " + std::to_string(j) + " is " +
                               std::to_string(v) + bad);
    }
  }

  std::vector<std::string> qnames;
  std::vector<std::size_t> qgroups; // integer bitwidths each quantizer can take (0: none)
  net.visit_quantizers([&]<class Q>(std::string_view name, const Q& q) {
    qnames.emplace_back(name);
    qgroups.push_back(Q::is_identity ? 0 : q.groups());
  });
  const auto qcount = r.get<std::uint32_t>("quantizer count");
  if (qcount != qnames.size())
    r.fail("checkpoint of another architecture: " + std::to_string(qcount) +
           " quantizers, the network has " + std::to_string(qnames.size()));
  std::vector<std::vector<int>> frozen(qcount);
  for (std::size_t i = 0; i < qcount; ++i) {
    const std::string name = r.get_string("quantizer name");
    if (name != qnames[i])
      r.fail("checkpoint of another architecture: quantizer '" + name + "', expected '" +
             qnames[i] + "'");
    const auto is_frozen = r.get<std::uint8_t>("frozen flag");
    const auto groups = r.get<std::uint32_t>("group count");
    if (is_frozen > 1 || (is_frozen == 0 && groups != 0))
      r.fail("bad frozen state for quantizer '" + name + "'");
    if (is_frozen == 1 && groups != qgroups[i])
      r.fail("checkpoint of another architecture: quantizer '" + name + "' has " +
             std::to_string(groups) + " frozen groups, the network's has " +
             std::to_string(qgroups[i]));
    r.need(std::uint64_t{groups} * 4, "frozen bitwidths");
    for (std::uint32_t g = 0; g < groups; ++g) {
      const auto b = r.get<std::int32_t>("frozen bitwidth");
      if (b < 1 || b > 16) r.fail("frozen bitwidth " + std::to_string(b) + " outside [1, 16]");
      frozen[i].push_back(b);
    }
  }
  data.optimizer_state = r.get_string("optimizer state");
  data.loader_state = r.get_string("loader state");
  if (r.offset() != body) r.fail("unexpected bytes after the loader state");

  // Validated: now modify the network.
  for (std::size_t i = 0; i < count; ++i)
    std::copy(values[i].begin(), values[i].end(), params[i].value);
  std::size_t qi = 0;
  net.visit_quantizers([&]<class Q>(std::string_view, Q& q) {
    const auto& bits = frozen[qi++];
    if constexpr (!Q::is_identity) {
      if (!bits.empty()) q.freeze_to(bits); // group count checked above
    }
  });
  return data;
}

/// Reads `path` into net (parameters, frozen bitwidths) and returns the rest; see
/// parse_checkpoint.
template <class Net>
checkpoint_data load_checkpoint(const std::filesystem::path& path, Net& net) {
  const std::vector<std::uint8_t> bytes = read_file_bytes(path, std::uint64_t{1} << 36);
  return parse_checkpoint(bytes, path.string(), net);
}

} // namespace bitgrad::train
