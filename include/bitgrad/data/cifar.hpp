// CIFAR-10 binary files (data_batch_1.bin ... data_batch_5.bin, test_batch.bin).
//
// A file is a sequence of 3073-byte records, nothing else (no header):
//
//   +-------+------------------+------------------+------------------+
//   | label | red   32 x 32    | green 32 x 32    | blue  32 x 32    |
//   +-------+------------------+------------------+------------------+
//    1 byte   1024 bytes, row-major, one plane per channel (planar RGB)
//
// so each image is already in C x H x W order (3, 32, 32). Labels are 0..9. A file whose size
// is not a positive multiple of 3073 and a label above 9 are format_errors with the offset.
// gzip-compressed files are accepted too (detected by the magic 1f 8b; the offsets are then
// in the decompressed data). CIFAR-100 (two label bytes per record) is not read here.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/data/dataset.hpp>
#include <bitgrad/data/gzip.hpp>
#include <bitgrad/io/read_file.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace bitgrad {

inline constexpr std::size_t cifar10_image_bytes = 3 * 32 * 32;
inline constexpr std::size_t cifar10_record_bytes = 1 + cifar10_image_bytes;
inline constexpr std::size_t cifar10_classes = 10;

/// Appends the CIFAR-10 records in `bytes` to `out` (which must be empty or 3x32x32 with 10
/// classes). `name` is the file name used in error messages.
inline void append_cifar10(dataset& out, std::span<const std::uint8_t> bytes,
                           const std::string& name) {
  std::string where;
  std::vector<std::uint8_t> inflated;
  if (is_gzip(bytes)) {
    inflated = gunzip(bytes, name, std::size_t{1} << 31);
    bytes = inflated;
    where = " (offset in the decompressed data)";
  }
  const std::size_t size = bytes.size();
  if (size == 0) throw format_error(name, 0, "empty CIFAR-10 file: expected 3073-byte records");
  if (size % cifar10_record_bytes != 0) {
    const std::size_t last = size - size % cifar10_record_bytes;
    throw format_error(name, last,
                       "CIFAR-10 file size " + std::to_string(size) +
                           " is not a multiple of the 3073-byte record: the last record (" +
                           std::to_string(size % cifar10_record_bytes) + " bytes) is truncated" +
                           where);
  }
  const std::size_t records = size / cifar10_record_bytes;
  if (out.empty()) {
    out.channels = 3;
    out.height = 32;
    out.width = 32;
    out.classes = cifar10_classes;
    out.pixels.clear();
  } else if (out.channels != 3 || out.height != 32 || out.width != 32 ||
             out.classes != cifar10_classes) {
    throw config_error("append_cifar10: the dataset does not hold 3x32x32 images of 10 classes");
  }
  // Validate every label before changing `out`.
  for (std::size_t r = 0; r < records; ++r) {
    const std::uint8_t label = bytes[r * cifar10_record_bytes];
    if (label >= cifar10_classes) {
      throw format_error(name, r * cifar10_record_bytes,
                         "record " + std::to_string(r) + ": label " + std::to_string(label) +
                             " is out of range 0..9" + where);
    }
  }
  const std::size_t first = out.size();
  out.labels.resize(first + records);
  out.pixels.resize((first + records) * cifar10_image_bytes);
  for (std::size_t r = 0; r < records; ++r) {
    const std::uint8_t* record = bytes.data() + r * cifar10_record_bytes;
    out.labels[first + r] = record[0];
    std::copy_n(record + 1, cifar10_image_bytes,
                out.pixels.begin() +
                    static_cast<std::ptrdiff_t>((first + r) * cifar10_image_bytes));
  }
}

/// Reads one CIFAR-10 binary file.
inline dataset read_cifar10(const std::filesystem::path& path) {
  dataset data;
  append_cifar10(data, read_file_bytes(path, std::uint64_t{1} << 31), path.string());
  return data;
}

/// Reads several CIFAR-10 binary files (e.g. the five training batches) into one data set,
/// in the order given.
inline dataset read_cifar10_files(std::span<const std::filesystem::path> paths) {
  dataset data;
  for (const auto& path : paths)
    append_cifar10(data, read_file_bytes(path, std::uint64_t{1} << 31), path.string());
  return data;
}

} // namespace bitgrad
