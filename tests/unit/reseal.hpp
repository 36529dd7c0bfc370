// Recomputes the CRCs of a model file (docs/model-format.md) after a test patched its bytes:
// every section's CRC in the section table, then the header CRC over bytes [0, 24) and the
// table, so the reader gets past its checksums to the field the test corrupted.
#pragma once

#include <bitgrad/io/bytes.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace bitgrad::testing {

/// Header: u32 section count at offset 12, u32 header CRC at 24, the section table at 32
/// (16 bytes per section: tag, CRC at +4, offset at +8, size at +12).
inline void reseal(std::vector<std::uint8_t>& b) {
  std::uint32_t sections;
  std::memcpy(&sections, b.data() + 12, 4);
  for (std::uint32_t s = 0; s < sections; ++s) {
    std::uint8_t* e = b.data() + 32 + 16 * s;
    std::uint32_t off, size;
    std::memcpy(&off, e + 8, 4);
    std::memcpy(&size, e + 12, 4);
    const std::uint32_t crc = io::crc32(b.data() + off, size);
    std::memcpy(e + 4, &crc, 4);
  }
  std::uint32_t crc = io::crc32(b.data(), 24);
  crc = io::crc32(b.data() + 32, 16 * std::size_t(sections), crc);
  std::memcpy(b.data() + 24, &crc, 4);
}

} // namespace bitgrad::testing
