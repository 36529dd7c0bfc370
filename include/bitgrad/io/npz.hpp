// Reading NumPy's .npz archives (numpy.savez / savez_compressed, torch state_dicts saved through
// NumPy, train/npz_export.hpp): the named arrays, their dtype, shape and raw bytes.
//
//   std::vector<npy_array> a = read_npz("weights.npz");
//   a[0].name == "conv1.weight", a[0].dtype == "<f4", a[0].shape == {6, 1, 5, 5}
//   std::vector<double> v = a[0].to_doubles();      // float32 / float64 only
//
// An .npz is a ZIP archive holding one `<name>.npy` file per array. Read here:
//   ZIP   the end-of-central-directory record (ZIP64 records and extra fields too, which numpy
//         writes: it opens every member with force_zip64), then each central-directory entry:
//         method 0 (stored) or 8 (deflate, inflated with zlib), CRC-32 checked, sizes checked.
//         Not: encryption, multi-disk archives, other compression methods.
//   .npy  magic "\x93NUMPY", version 1.x (u16 header length), 2.x / 3.x (u32), then a Python
//         dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 5, 5), }
//         padded with spaces, then the elements (row-major unless fortran_order is True).
// Anything malformed throws format_error(file, offset, reason) naming the member; the reader
// never reads outside the bytes it was given.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>
#include <zlib.h>

namespace bitgrad {

/// One array of an .npz.
struct npy_array {
  std::string name;               ///< the member name without ".npy"
  std::string dtype;              ///< NumPy's descr: "<f4", "<f8", "|u1", "<i8", ...
  bool fortran_order = false;     ///< column-major element order
  std::vector<std::size_t> shape; ///< () for a scalar
  std::string data;               ///< the elements' bytes

  std::size_t elements() const {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;
    return n;
  }
  std::string shape_string() const {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (i) s += ", ";
      s += std::to_string(shape[i]);
    }
    return s + (shape.size() == 1 ? ",)" : ")");
  }
  /// The elements of a little-endian float32 ("<f4") or float64 ("<f8") array, in row-major
  /// order; config_error for any other dtype or for fortran_order.
  std::vector<double> to_doubles() const {
    if (fortran_order && shape.size() > 1)
      throw config_error("npz: '" + name +
                         "' is stored in Fortran (column-major) order; save it C-contiguous");
    std::vector<double> out(elements());
    if (dtype == "<f4") {
      for (std::size_t i = 0; i < out.size(); ++i) {
        float v;
        std::memcpy(&v, data.data() + 4 * i, 4);
        out[i] = v;
      }
    } else if (dtype == "<f8") {
      std::memcpy(out.data(), data.data(), out.size() * 8);
    } else {
      throw config_error("npz: '" + name + "' has dtype '" + dtype +
                         "'; bitgrad takes float32 ('<f4') or float64 ('<f8'), little-endian");
    }
    return out;
  }
};

namespace detail {

/// Random access to the archive's little-endian fields through io::byte_reader: a ZIP is read
/// from its end (the directories) back to the members.
class npz_bytes {
public:
  npz_bytes(const std::string& file, std::span<const std::uint8_t> b) : r_(b, file) {}
  [[noreturn]] void fail(std::uint64_t at, const std::string& why) const { r_.fail_at(at, why); }
  void need(std::uint64_t at, std::uint64_t n, const char* what) {
    r_.seek(at, what);
    r_.need(n, what);
  }
  template <class U>
  U get(std::uint64_t at, const char* what) {
    r_.seek(at, what);
    return r_.get<U>(what);
  }
  /// The n bytes at `at` (checked).
  std::span<const std::uint8_t> bytes(std::uint64_t at, std::size_t n, const char* what) {
    r_.seek(at, what);
    return r_.take(n, what);
  }

private:
  io::byte_reader r_;
};

/// One ZIP64 extended-information extra field: replaces the 0xFFFFFFFF fields, in order.
inline void read_zip64_extra(npz_bytes& in, std::uint64_t at, std::uint64_t len,
                             std::uint64_t& size, std::uint64_t& csize, std::uint64_t& offset) {
  const std::uint64_t end = at + len;
  while (at + 4 <= end) {
    const auto id = in.get<std::uint16_t>(at, "extra field");
    const auto n = in.get<std::uint16_t>(at + 2, "extra field");
    std::uint64_t p = at + 4;
    if (p + n > end) in.fail(at, "extra field runs past its entry");
    if (id == 0x0001) {
      for (std::uint64_t* v : {&size, &csize, &offset})
        if (*v == 0xFFFFFFFFu) {
          if (p + 8 > at + 4 + n) in.fail(at, "ZIP64 extra field too short");
          *v = in.get<std::uint64_t>(p, "ZIP64 extra field");
          p += 8;
        }
    }
    at += 4 + std::uint64_t(n);
  }
}

/// The header dict of an .npy: value of 'key' as written (string without quotes, tuple text).
inline std::string npy_field(const std::string& header, const std::string& key,
                             const std::string& file, const std::string& member) {
  const std::string k = "'" + key + "'";
  const std::size_t at = header.find(k);
  if (at == std::string::npos)
    throw format_error(file, 0, member + ": .npy header has no " + k + " (header: " + header + ")");
  std::size_t p = header.find(':', at + k.size());
  if (p == std::string::npos)
    throw format_error(file, 0, member + ": .npy header malformed after " + k);
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  if (p >= header.size()) throw format_error(file, 0, member + ": .npy header ends after " + k);
  if (header[p] == '\'') {
    const std::size_t e = header.find('\'', p + 1);
    if (e == std::string::npos) throw format_error(file, 0, member + ": unterminated " + k);
    return header.substr(p + 1, e - p - 1);
  }
  if (header[p] == '(') {
    const std::size_t e = header.find(')', p);
    if (e == std::string::npos) throw format_error(file, 0, member + ": unterminated " + k);
    return header.substr(p, e - p + 1);
  }
  if (header[p] == '[')
    throw format_error(file, 0, member + ": structured dtypes are not supported (descr is a list)");
  std::size_t e = p;
  while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
  std::string v = header.substr(p, e - p);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

/// Bytes per element of a NumPy dtype descr ("<f4" -> 4); 0 when not a plain numeric type.
inline std::size_t npy_item_size(const std::string& descr) {
  if (descr.size() < 3 ||
      (descr[0] != '<' && descr[0] != '>' && descr[0] != '|' && descr[0] != '='))
    return 0;
  const char kind = descr[1];
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') return 0;
  std::size_t n = 0;
  for (std::size_t i = 2; i < descr.size(); ++i) {
    if (descr[i] < '0' || descr[i] > '9') return 0;
    n = n * 10 + std::size_t(descr[i] - '0');
    if (n > 16) return 0;
  }
  return n;
}

inline npy_array parse_npy(std::string_view npy, const std::string& name, const std::string& file) {
  const std::string member = "'" + name + ".npy'";
  static constexpr char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
  if (npy.size() < 10 || std::memcmp(npy.data(), magic, 6) != 0)
    throw format_error(file, 0, member + " is not a .npy file (bad magic)");
  const auto major = static_cast<unsigned char>(npy[6]);
  std::size_t header_len = 0, start = 0;
  // The header length: u16 (version 1) or u32 (versions 2, 3) at byte 8 of the member.
  io::byte_reader length(npy.substr(8), file);
  if (major == 1) {
    header_len = length.get<std::uint16_t>(member + " header length");
    start = 10;
  } else if (major == 2 || major == 3) {
    if (npy.size() < 12) throw format_error(file, 0, member + ": truncated .npy header");
    header_len = length.get<std::uint32_t>(member + " header length");
    start = 12;
  } else {
    throw format_error(file, 0,
                       member + ": .npy version " + std::to_string(major) +
                           " is not supported (1, 2 or 3)");
  }
  if (header_len > npy.size() - start)
    throw format_error(file, 0, member + ": .npy header runs past the end of the member");
  const std::string header(npy.substr(start, header_len));
  npy_array a;
  a.name = name;
  a.dtype = npy_field(header, "descr", file, member);
  const std::string order = npy_field(header, "fortran_order", file, member);
  if (order != "False" && order != "True")
    throw format_error(file, 0, member + ": fortran_order is '" + order + "'");
  a.fortran_order = order == "True";
  const std::string shape = npy_field(header, "shape", file, member);
  // "(6, 1, 5, 5)", "(3,)", "()"
  std::size_t count = 1;
  for (std::size_t p = 1; p + 1 < shape.size();) {
    while (p < shape.size() && (shape[p] == ' ' || shape[p] == ',')) ++p;
    if (p + 1 >= shape.size()) break;
    std::size_t v = 0, digits = 0;
    while (p < shape.size() && shape[p] >= '0' && shape[p] <= '9') {
      v = v * 10 + std::size_t(shape[p] - '0');
      if (++digits > 12) throw format_error(file, 0, member + ": shape extent too large");
      ++p;
    }
    if (digits == 0) throw format_error(file, 0, member + ": malformed shape " + shape);
    a.shape.push_back(v);
    if (v != 0 && count > std::numeric_limits<std::uint32_t>::max() / v)
      throw format_error(file, 0, member + ": shape " + shape + " is too large");
    count *= v;
  }
  const std::size_t item = npy_item_size(a.dtype);
  if (item == 0)
    throw format_error(file, 0, member + ": dtype '" + a.dtype + "' is not a numeric type");
  const std::size_t payload = npy.size() - start - header_len;
  if (payload != count * item)
    throw format_error(file, 0,
                       member + ": " + a.shape_string() + " of '" + a.dtype + "' needs " +
                           std::to_string(count * item) + " bytes, the member has " +
                           std::to_string(payload));
  a.data.assign(npy.substr(start + header_len));
  return a;
}

inline std::string inflate_raw(const std::uint8_t* src, std::size_t n, std::size_t out_size,
                               const std::string& file, std::uint64_t at,
                               const std::string& member) {
  std::string out(out_size, '\0');
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) throw io_error("npz: zlib inflateInit2 failed");
  z.next_in = const_cast<Bytef*>(src);
  z.avail_in = static_cast<uInt>(n);
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out_size);
  const int rc = inflate(&z, Z_FINISH);
  const std::size_t produced = z.total_out;
  inflateEnd(&z);
  if (rc != Z_STREAM_END || produced != out_size)
    throw format_error(file, at,
                       member + ": deflate data is corrupt or does not inflate to the recorded " +
                           std::to_string(out_size) + " bytes");
  return out;
}

} // namespace detail

/// The arrays of an .npz held in memory, in archive order. `file` names it in messages.
inline std::vector<npy_array> parse_npz(std::span<const std::uint8_t> bytes,
                                        const std::string& file = "<memory>") {
  detail::npz_bytes in(file, bytes);
  if (bytes.size() < 22) in.fail(0, "not a ZIP archive (too short for an .npz)");
  // End of central directory: the last "PK\5\6" within the final 64 KiB + 22 bytes.
  std::uint64_t eocd = bytes.size();
  const std::uint64_t lowest = bytes.size() > 65557 ? bytes.size() - 65557 : 0;
  for (std::uint64_t p = bytes.size() - 22 + 1; p-- > lowest;)
    if (in.get<std::uint32_t>(p, "end record") == 0x06054b50u) {
      eocd = p;
      break;
    }
  if (eocd == bytes.size()) in.fail(0, "not a ZIP archive (no end-of-central-directory record)");
  if (in.get<std::uint16_t>(eocd + 4, "disk") != 0 || in.get<std::uint16_t>(eocd + 6, "disk") != 0)
    in.fail(eocd, "multi-disk ZIP archives are not supported");
  std::uint64_t entries = in.get<std::uint16_t>(eocd + 10, "entry count");
  std::uint64_t cd_size = in.get<std::uint32_t>(eocd + 12, "central directory size");
  std::uint64_t cd_offset = in.get<std::uint32_t>(eocd + 16, "central directory offset");
  if (entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu) {
    // ZIP64 end-of-central-directory locator right before the end record.
    if (eocd < 20 || in.get<std::uint32_t>(eocd - 20, "ZIP64 locator") != 0x07064b50u)
      in.fail(eocd, "ZIP64 archive without a ZIP64 end-of-central-directory locator");
    const auto rec = in.get<std::uint64_t>(eocd - 12, "ZIP64 end record offset");
    if (in.get<std::uint32_t>(rec, "ZIP64 end record") != 0x06064b50u)
      in.fail(rec, "bad ZIP64 end-of-central-directory record");
    entries = in.get<std::uint64_t>(rec + 32, "ZIP64 entry count");
    cd_size = in.get<std::uint64_t>(rec + 40, "ZIP64 central directory size");
    cd_offset = in.get<std::uint64_t>(rec + 48, "ZIP64 central directory offset");
  }
  in.need(cd_offset, cd_size, "central directory");
  std::vector<npy_array> out;
  std::uint64_t at = cd_offset;
  for (std::uint64_t e = 0; e < entries; ++e) {
    if (in.get<std::uint32_t>(at, "central directory entry") != 0x02014b50u)
      in.fail(at, "bad central directory entry " + std::to_string(e));
    const auto flags = in.get<std::uint16_t>(at + 8, "flags");
    const auto method = in.get<std::uint16_t>(at + 10, "compression method");
    const auto crc = in.get<std::uint32_t>(at + 16, "CRC-32");
    std::uint64_t csize = in.get<std::uint32_t>(at + 20, "compressed size");
    std::uint64_t size = in.get<std::uint32_t>(at + 24, "size");
    const auto name_len = in.get<std::uint16_t>(at + 28, "name length");
    const auto extra_len = in.get<std::uint16_t>(at + 30, "extra length");
    const auto comment_len = in.get<std::uint16_t>(at + 32, "comment length");
    std::uint64_t local = in.get<std::uint32_t>(at + 42, "local header offset");
    in.need(at + 46, std::uint64_t(name_len) + extra_len + comment_len, "entry name");
    const auto name = in.bytes(at + 46, name_len, "entry name");
    const std::string member(reinterpret_cast<const char*>(name.data()), name.size());
    detail::read_zip64_extra(in, at + 46 + name_len, extra_len, size, csize, local);
    if (flags & 0x1) in.fail(at, "'" + member + "' is encrypted");
    if (method != 0 && method != 8)
      in.fail(at, "'" + member + "' uses compression method " + std::to_string(method) +
                      " (only stored and deflate are supported)");
    if (member.size() < 4 || member.compare(member.size() - 4, 4, ".npy") != 0)
      in.fail(at, "'" + member + "' is not an .npy member");
    if (size >= 0xFFFFFFFFu || csize >= 0xFFFFFFFFu)
      in.fail(at, "'" + member + "' is 4 GiB or larger (not supported)");
    // Local header: its own name and extra lengths decide where the data starts.
    if (in.get<std::uint32_t>(local, "local header") != 0x04034b50u)
      in.fail(local, "bad local header for '" + member + "'");
    const std::uint64_t data = local + 30 + in.get<std::uint16_t>(local + 26, "name length") +
                               in.get<std::uint16_t>(local + 28, "extra length");
    in.need(data, csize, "member data");
    const auto packed = in.bytes(data, static_cast<std::size_t>(csize), "member data");
    // Deflate expands at most ~1032:1; a larger recorded size is a corrupt (or hostile) entry,
    // refused before allocating it.
    if (method == 8 && size > csize * 1032 + 1024)
      in.fail(at, "'" + member + "' claims " + std::to_string(size) + " bytes from " +
                      std::to_string(csize) + " compressed bytes");
    std::string npy;
    if (method == 0) {
      if (csize != size) in.fail(at, "'" + member + "': stored member with two different sizes");
      npy.assign(reinterpret_cast<const char*>(packed.data()), packed.size());
    } else {
      npy = detail::inflate_raw(packed.data(), packed.size(), static_cast<std::size_t>(size), file,
                                data, "'" + member + "'");
    }
    if (io::crc32(npy.data(), npy.size()) != crc)
      in.fail(data, "CRC-32 mismatch in '" + member + "'");
    out.push_back(detail::parse_npy(npy, member.substr(0, member.size() - 4), file));
    at += 46 + std::uint64_t(name_len) + extra_len + comment_len;
  }
  return out;
}

/// The arrays of the .npz at path (at most 16 GiB, each array under 4 GiB).
inline std::vector<npy_array> read_npz(const std::filesystem::path& path) {
  const std::vector<std::uint8_t> bytes = read_file_bytes(path, std::uint64_t(1) << 34);
  return parse_npz(bytes, path.string());
}

} // namespace bitgrad
