// libFuzzer target: parse_idx on arbitrary bytes (raw IDX, and gzip since parse_idx detects the
// gzip magic and inflates first). Every input must either parse or throw format_error.
// The payload cap is 1 MiB so that a header promising a huge array cannot exhaust memory.
#include <bitgrad/core/error.hpp>
#include <bitgrad/data/idx.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::uint64_t max_payload = std::uint64_t{1} << 20;
  try {
    const bitgrad::idx_array a =
        bitgrad::parse_idx(std::span<const std::uint8_t>(data, size), "fuzz.idx", max_payload);
    // What the reader promises of an array it returns.
    std::uint64_t elements = 1;
    for (std::size_t d : a.dims) elements *= d;
    if (a.rank() == 0 || elements != a.size() || a.size() > max_payload) std::abort();
  } catch (const bitgrad::format_error&) {
  }
  return 0;
}
