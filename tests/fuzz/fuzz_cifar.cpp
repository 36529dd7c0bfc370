// libFuzzer target: append_cifar10 (the in-memory CIFAR-10 reader behind read_cifar10) on
// arbitrary bytes, raw or gzip. Every input must either parse or throw format_error; a parsed
// data set must be consistent (validate() passes, one label per 3073-byte record).
#include <bitgrad/core/error.hpp>
#include <bitgrad/data/cifar.hpp>
#include <bitgrad/data/dataset.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    bitgrad::dataset d;
    bitgrad::append_cifar10(d, std::span<const std::uint8_t>(data, size), "fuzz.bin");
    bitgrad::validate(d, "fuzz");
    if (d.empty() || d.channels != 3 || d.height != 32 || d.width != 32 || d.classes != 10)
      std::abort();
    if (!bitgrad::is_gzip(std::span<const std::uint8_t>(data, size)) &&
        d.size() * bitgrad::cifar10_record_bytes != size)
      std::abort();
  } catch (const bitgrad::format_error&) {
  }
  return 0;
}
