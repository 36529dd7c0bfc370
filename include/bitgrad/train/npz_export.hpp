// Export of a model file's weights as NumPy .npz, so Python users can inspect them:
//
//   import numpy as np; z = np.load("model.npz"); z["conv1.weight"], z["conv1.bits"], ...
//
// Arrays, per conv2d / linear operation <name>:
//   <name>.weight         float32, the layer's shape: the dequantized weights code * scale
//                         (times the folded channel scale when a batch norm was folded)
//   <name>.bits           uint8 (groups,): the integer bitwidth of each group (quantized only)
//   <name>.scale          float32 (groups,): each group's scale (quantized only)
//   <name>.bias           float32 (out,) when present
//   <name>.channel_scale  float32 (out,) when a batch norm was folded
//
// xtensor 0.24 writes .npy (xt::dump_npy) but no .npz; an .npz is a ZIP archive of .npy files,
// written here as a minimal uncompressed ("stored") ZIP with zlib's CRC-32, atomically.
#pragma once

#include <bitgrad/core/error.hpp>
#include <bitgrad/core/xt.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/atomic_file.hpp>
#include <bitgrad/io/bytes.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace bitgrad::train {

/// One named array of an .npz: the bytes of its .npy file.
struct npy_entry {
  std::string name; ///< without ".npy"
  std::string npy;
};

/// The bytes of a stored (uncompressed) ZIP holding `<name>.npy` for every entry.
inline std::string zip_npy_entries(const std::vector<npy_entry>& entries) {
  io::byte_writer out, central;
  for (const npy_entry& e : entries) {
    const std::string name = e.name + ".npy";
    if (out.size() + e.npy.size() + name.size() + 64 > 0xFFFFFFFFull)
      throw config_error("npz: archive larger than 4 GiB (ZIP64 is not supported)");
    const std::uint32_t crc = io::crc32(e.npy.data(), e.npy.size());
    const auto size = static_cast<std::uint32_t>(e.npy.size());
    const auto offset = static_cast<std::uint32_t>(out.size());
    const auto name_length = static_cast<std::uint16_t>(name.size());
    // Local file header.
    out.put<std::uint32_t>(0x04034b50u);
    out.put<std::uint16_t>(20);   // version needed
    out.put<std::uint16_t>(0);    // flags
    out.put<std::uint16_t>(0);    // stored
    out.put<std::uint16_t>(0);    // time
    out.put<std::uint16_t>(0x21); // date 1980-01-01
    out.put<std::uint32_t>(crc);
    out.put<std::uint32_t>(size);
    out.put<std::uint32_t>(size);
    out.put<std::uint16_t>(name_length);
    out.put<std::uint16_t>(0);
    out.put_bytes(name.data(), name.size());
    out.put_bytes(e.npy.data(), e.npy.size());
    // Central directory entry.
    central.put<std::uint32_t>(0x02014b50u);
    central.put<std::uint16_t>(20); // made by
    central.put<std::uint16_t>(20); // needed
    central.put<std::uint16_t>(0);
    central.put<std::uint16_t>(0);
    central.put<std::uint16_t>(0);
    central.put<std::uint16_t>(0x21);
    central.put<std::uint32_t>(crc);
    central.put<std::uint32_t>(size);
    central.put<std::uint32_t>(size);
    central.put<std::uint16_t>(name_length);
    central.put<std::uint16_t>(0); // extra
    central.put<std::uint16_t>(0); // comment
    central.put<std::uint16_t>(0); // disk
    central.put<std::uint16_t>(0); // internal attributes
    central.put<std::uint32_t>(0); // external attributes
    central.put<std::uint32_t>(offset);
    central.put_bytes(name.data(), name.size());
  }
  const auto cd_offset = static_cast<std::uint32_t>(out.size());
  const auto cd_size = static_cast<std::uint32_t>(central.size());
  out.put_bytes(central.bytes().data(), central.size());
  out.put<std::uint32_t>(0x06054b50u);
  out.put<std::uint16_t>(0);
  out.put<std::uint16_t>(0);
  out.put<std::uint16_t>(static_cast<std::uint16_t>(entries.size()));
  out.put<std::uint16_t>(static_cast<std::uint16_t>(entries.size()));
  out.put<std::uint32_t>(cd_size);
  out.put<std::uint32_t>(cd_offset);
  out.put<std::uint16_t>(0);
  return out.take();
}

/// The arrays of m described at the top of this header.
inline std::vector<npy_entry> npz_entries(const format::model_file& m) {
  std::vector<npy_entry> entries;
  auto floats = [&](const std::string& name, const std::vector<float>& v,
                    const std::vector<std::uint32_t>& ext) {
    std::vector<std::size_t> shape(ext.begin(), ext.end());
    xt::xarray<float> a = xt::adapt(v, shape);
    entries.push_back({name, xt::dump_npy(a)});
  };
  for (std::size_t i = 0; i < m.ops.size(); ++i) {
    const format::operation& op = m.ops[i];
    if (op.kind != format::op_kind::conv2d && op.kind != format::op_kind::linear) continue;
    const std::string base = op.name.empty() ? "op" + std::to_string(i) : op.name;
    const format::tensor_data& w = m.tensors[op.weight];
    std::vector<float> values(w.element_count());
    w.dequantize(values.data());
    if (op.channel_scale != format::no_index) {
      const auto& cs = m.tensors[op.channel_scale].values;
      const std::size_t per = w.per_channel();
      for (std::size_t k = 0; k < values.size(); ++k) values[k] *= cs[k / per];
      floats(base + ".channel_scale", cs, {static_cast<std::uint32_t>(cs.size())});
    }
    floats(base + ".weight", values, w.extents);
    if (w.kind == format::tensor_kind::quantized) {
      xt::xtensor<std::uint8_t, 1> bits = xt::adapt(w.bits, {w.bits.size()});
      entries.push_back({base + ".bits", xt::dump_npy(bits)});
      floats(base + ".scale", w.scales, {static_cast<std::uint32_t>(w.scales.size())});
    }
    if (op.bias != format::no_index) {
      const auto& b = m.tensors[op.bias].values;
      floats(base + ".bias", b, {static_cast<std::uint32_t>(b.size())});
    }
  }
  return entries;
}

/// Writes m's weights, bitwidths and scales to `path` (.npz) atomically.
inline void write_npz(const std::filesystem::path& path, const format::model_file& m) {
  write_file_atomically(path, zip_npy_entries(npz_entries(m)));
}

} // namespace bitgrad::train
