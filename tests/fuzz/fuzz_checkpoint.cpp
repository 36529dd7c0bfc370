// libFuzzer target: the checkpoint reader (train::parse_checkpoint, behind load_checkpoint)
// and what a resuming trainer does with the rest (loader::restore of the loader state,
// adam::load of the optimizer state), on a small network (checkpoint_net.hpp). Seeds of both
// checkpoint versions (1 and 2) are in corpus/checkpoint/.
//
// Each input is tried twice: as it is, and with its last 4 bytes replaced by the right CRC-32
// of the rest, so that mutations get past the checksum and reach the structure behind it.
// Every input must either load or throw format_error / config_error; a network is only
// changed by a load that succeeds, and a loaded network runs a forward pass.
#include "checkpoint_net.hpp"

#include <bitgrad/core/error.hpp>
#include <bitgrad/data/loader.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/train/checkpoint.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

namespace {

std::vector<float> parameters_of(auto& net) {
  std::vector<float> v;
  net.visit_parameters(
      [&](bitgrad::param_ref<float>& p) { v.insert(v.end(), p.value, p.value + p.size); });
  return v;
}

void load(std::span<const std::uint8_t> bytes) {
  auto net = bitgrad_fuzz::checkpoint_net();
  const std::vector<float> before = parameters_of(net);
  bitgrad::train::checkpoint_data data;
  try {
    data = bitgrad::train::parse_checkpoint(bytes, "fuzz.ckpt", net);
  } catch (const bitgrad::format_error&) {
    if (parameters_of(net) != before) std::abort(); // a failed load must not half-load
    return;
  } catch (const bitgrad::config_error&) {
    return;
  }
  // A loaded network must run, whatever values the file held (NaN, infinities, denormals).
  net.train(false);
  bitgrad::tensor4<float> x = bitgrad::tensor4<float>::from_shape({1, 1, 4, 4});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(i) / 8.0f - 1.0f;
  const auto& y = net.forward(x);
  if (y.shape()[0] != 1 || y.shape()[1] != 2) std::abort();
  try {
    bitgrad::loader<float> batches(bitgrad_fuzz::checkpoint_data_set(), {.batch_size = 2});
    batches.restore(data.saved_loader());
  } catch (const bitgrad::format_error&) {
  } catch (const bitgrad::config_error&) {
  }
  try {
    bitgrad::optim::adam<float> adam({.lr = 1e-3});
    bitgrad::io::byte_reader state = data.optimizer_reader();
    adam.load(state);
  } catch (const bitgrad::format_error&) {
  } catch (const bitgrad::config_error&) {
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  load(std::span<const std::uint8_t>(data, size));
  if (size >= 4) {
    std::vector<std::uint8_t> fixed(data, data + size);
    const std::uint32_t crc = bitgrad::io::crc32(fixed.data(), size - 4);
    std::memcpy(fixed.data() + size - 4, &crc, 4);
    if (std::memcmp(fixed.data() + size - 4, data + size - 4, 4) != 0) load(fixed);
  }
  return 0;
}
