// Checks that every rank runs the same job, and keeps the parameters the same on every rank.
//
//   check_same_text(comm, what, text)       every rank passes the same text, or every rank
//                                           throws config_error naming the first rank that
//                                           differs from rank 0 and both ranks' first differing
//                                           line: used for the settings ("key=value" lines)
//   check_same_dataset(comm, data, what)    the same dataset on every rank: image count, shape,
//                                           classes, and CRC-32 of the pixels and of the labels
//   check_same_parameters(comm, params, when)
//                                           CRC-32 of every parameter tensor's bytes agree; or
//                                           every rank throws divergence_error naming the first
//                                           differing parameter, the two ranks, their CRCs and
//                                           the largest absolute difference
//   broadcast_parameters(comm, params, root) every rank's parameters := root's (initial weights)
//
// `params` is a parameter visitor in bitgrad's usual form: a callable taking a callable f and
// calling f(param_ref<T>&) for every parameter, e.g. [&](auto&& f) { net.visit_parameters(f); }.
//
// How agreement is tested cheaply: each rank reduces the pair (h, ~h) of its 64-bit key h with
// MPI_MIN in one all-reduce; all ranks agree iff min(h) == ~min(~h) (= max(h)). Only when they
// do not are the full values gathered to name the ranks: in the common case the cost is one
// small all-reduce, independent of the rank count.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/parameter.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/dist/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>
#include <zlib.h>

namespace bitgrad::dist {

/// The parameters differ between ranks (they must stay identical in data-parallel training).
struct divergence_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// CRC-32 (zlib's, the gzip polynomial) of `bytes`, continuing from `crc` (0 to start).
inline std::uint32_t crc32_of(const void* bytes, std::size_t n, std::uint32_t crc = 0) {
  auto* p = static_cast<const Bytef*>(bytes);
  uLong c = crc;
  while (n > 0) { // zlib takes uInt lengths
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(c);
}

namespace detail {

/// True if every rank passed the same `key` (one all-reduce of two integers).
inline bool all_equal(const communicator& comm, std::uint64_t key) {
  std::uint64_t pair[2] = {key, ~key};
  comm.all_reduce_min(std::span<std::uint64_t>(pair, 2));
  return pair[0] == ~pair[1];
}

/// The same for a vector of keys (same length on every rank): one all-reduce of 2n integers.
inline bool all_equal(const communicator& comm, std::span<const std::uint64_t> keys) {
  std::vector<std::uint64_t> v(2 * keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    v[2 * i] = keys[i];
    v[2 * i + 1] = ~keys[i];
  }
  comm.all_reduce_min(std::span<std::uint64_t>(v));
  for (std::size_t i = 0; i < keys.size(); ++i)
    if (v[2 * i] != ~v[2 * i + 1]) return false;
  return true;
}

/// 64-bit key of a text: its length and its CRC-32.
inline std::uint64_t text_key(std::string_view text) {
  return (static_cast<std::uint64_t>(text.size()) << 32) | crc32_of(text.data(), text.size());
}

inline std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) {
      if (start < text.size()) lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", static_cast<unsigned>(v));
  return buf;
}

} // namespace detail

/// Every rank must pass the same `text`; otherwise every rank throws config_error:
///   "<what> differ between ranks: rank 0 has \"lr=0.1\", rank 2 has \"lr=0.2\" (line 3)"
/// (the first rank that differs from rank 0, and the first line where they differ).
inline void check_same_text(const communicator& comm, std::string_view what,
                            const std::string& text) {
  if (detail::all_equal(comm, detail::text_key(text))) return;
  const std::vector<std::string> all = comm.all_gather_strings(text);
  std::size_t r = 1;
  while (r < all.size() && all[r] == all[0]) ++r;
  if (r == all.size()) return; // equal texts despite a key mismatch cannot happen; be safe
  const std::vector<std::string_view> a = detail::split_lines(all[0]),
                                      b = detail::split_lines(all[r]);
  std::size_t line = 0;
  while (line < a.size() && line < b.size() && a[line] == b[line]) ++line;
  auto at = [](const std::vector<std::string_view>& lines, std::size_t i) {
    return i < lines.size() ? "\"" + std::string(lines[i]) + "\"" : std::string("nothing");
  };
  throw config_error(std::string(what) + " differ between ranks: rank 0 has " + at(a, line) +
                     ", rank " + std::to_string(r) + " has " + at(b, line) + " (line " +
                     std::to_string(line + 1) + ")");
}

/// One line describing a dataset for the agreement check: count, shape, classes and CRC-32s.
inline std::string dataset_fingerprint(const dataset& data) {
  return std::to_string(data.size()) + " images of " + std::to_string(data.channels) + "x" +
         std::to_string(data.height) + "x" + std::to_string(data.width) + ", " +
         std::to_string(data.classes) + " classes, pixels crc32 " +
         detail::hex32(crc32_of(data.pixels.data(), data.pixels.size())) + ", labels crc32 " +
         detail::hex32(crc32_of(data.labels.data(), data.labels.size() * sizeof(std::int32_t)));
}

/// Every rank must hold the same dataset (e.g. what = "the training set"); otherwise every
/// rank throws config_error naming both ranks' fingerprints.
inline void check_same_dataset(const communicator& comm, const dataset& data,
                               std::string_view what = "the training set") {
  const std::string mine = dataset_fingerprint(data);
  if (detail::all_equal(comm, detail::text_key(mine))) return;
  const std::vector<std::string> all = comm.all_gather_strings(mine);
  std::size_t r = 1;
  while (r < all.size() && all[r] == all[0]) ++r;
  if (r == all.size()) return;
  throw config_error(std::string(what) + " differs between ranks: rank 0 has " + all[0] +
                     "; rank " + std::to_string(r) + " has " + all[r]);
}

/// CRC-32 of each parameter tensor's values (bytes), in visitation order.
template <class T, class Params>
std::vector<std::uint32_t> parameter_checksums(Params&& params) {
  std::vector<std::uint32_t> out;
  params([&](param_ref<T>& p) { out.push_back(crc32_of(p.value, p.size * sizeof(T))); });
  return out;
}

/// CRC-32 of all parameter values, tensor after tensor (one number for a log line).
template <class T, class Params>
std::uint32_t parameter_checksum(Params&& params) {
  std::uint32_t crc = 0;
  params([&](param_ref<T>& p) { crc = crc32_of(p.value, p.size * sizeof(T), crc); });
  return crc;
}

/// Every rank's parameters must be bit-identical; otherwise every rank throws divergence_error:
///   "parameters differ between ranks after <when>: fc1.bits has crc32 0x... on rank 0 and
///    0x... on rank 1 (largest |difference| 1.5e-07)"
/// Cost when they agree: one all-reduce of 2 x (parameter tensor count) 64-bit integers.
template <class T, class Params>
void check_same_parameters(const communicator& comm, Params&& params, std::string_view when) {
  std::vector<std::string> names;
  std::vector<std::uint64_t> keys;
  params([&](param_ref<T>& p) {
    names.push_back(p.name);
    keys.push_back((static_cast<std::uint64_t>(p.size) << 32) |
                   crc32_of(p.value, p.size * sizeof(T)));
  });
  // The tensor count first: a different count would make the vector all-reduce mismatch.
  if (!detail::all_equal(comm, keys.size()))
    throw divergence_error("parameters differ between ranks after " + std::string(when) +
                           ": the ranks have different numbers of parameter tensors");
  if (detail::all_equal(comm, std::span<const std::uint64_t>(keys))) return;
  const std::vector<std::uint64_t> all = comm.all_gather(std::span<const std::uint64_t>(keys));
  const std::size_t n = keys.size();
  std::size_t first = n, rank = 0;
  for (std::size_t r = 1; r < static_cast<std::size_t>(comm.size()) && first == n; ++r)
    for (std::size_t j = 0; j < n; ++j)
      if (all[r * n + j] != all[j]) {
        first = j;
        rank = r;
        break;
      }
  if (first == n) // cannot happen (some key differs from rank 0's); be safe
    throw divergence_error("parameters differ between ranks after " + std::string(when));
  // The largest difference to rank 0 over the ranks, for that tensor (sizes permitting).
  double largest = -1;
  std::size_t index = 0;
  params([&](param_ref<T>& p) {
    if (index++ != first) return;
    if (!detail::all_equal(comm, p.size)) return; // sizes differ: no element comparison
    std::vector<T> root(p.value, p.value + p.size);
    comm.broadcast(std::span<T>(root), 0);
    double d = 0;
    for (std::size_t i = 0; i < p.size; ++i)
      d = std::max(d, std::abs(static_cast<double>(p.value[i]) - static_cast<double>(root[i])));
    comm.all_reduce_max(std::span<double>(&d, 1));
    largest = d;
  });
  std::ostringstream msg;
  msg << "parameters differ between ranks after " << when << ": " << names[first] << " has crc32 "
      << detail::hex32(static_cast<std::uint32_t>(all[first])) << " on rank 0 and "
      << detail::hex32(static_cast<std::uint32_t>(all[rank * n + first])) << " on rank " << rank;
  if ((all[first] >> 32) != (all[rank * n + first] >> 32))
    msg << " (sizes " << (all[first] >> 32) << " and " << (all[rank * n + first] >> 32) << ")";
  else
    msg << " (largest |difference| " << largest << ")";
  throw divergence_error(msg.str());
}

/// Every rank's parameter values := root's (call once after building the network, so all
/// ranks start from the same weights whatever their seeds). Sizes must agree (checked: every
/// rank throws config_error otherwise).
template <class T, class Params>
void broadcast_parameters(const communicator& comm, Params&& params, int root = 0) {
  std::vector<std::uint64_t> sizes;
  params([&](param_ref<T>& p) { sizes.push_back(p.size); });
  const auto count = static_cast<std::uint64_t>(sizes.size());
  if (!detail::all_equal(comm, count) ||
      !detail::all_equal(comm, std::span<const std::uint64_t>(sizes)))
    throw config_error("broadcast_parameters: the ranks' networks have different parameter "
                       "shapes");
  params([&](param_ref<T>& p) { comm.broadcast(std::span<T>(p.value, p.size), root); });
}

} // namespace bitgrad::dist
