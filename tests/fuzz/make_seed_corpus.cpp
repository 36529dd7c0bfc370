// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): for each input
// format a few valid files and a few truncated or corrupted ones. Deterministic apart from the
// zlib version's choice of deflate blocks.
//
//   make_seed_corpus CORPUS_DIR [FASHION_SAMPLE_DIR]
//
// Regenerate the committed corpora (after a format change) with
//   cmake --preset release && cmake --build --preset release --target make_seed_corpus
//   build/release/tests/make_seed_corpus tests/fuzz/corpus tests/data/fashion-sample
// tests/unit/test_fuzz_corpus.cpp checks that the committed files still mean what their names
// say ("valid-*" parse, everything else is rejected). corpus/checkpoint/valid-v1-*.ckpt are
// version 1 checkpoints this generator wrote at commit fdc34a8, valid-v2-*.ckpt version 2 ones
// it wrote at 27cfbdd (keep them: the reader still reads versions 1 and 2).
#include "checkpoint_net.hpp"

#include <bitgrad/data/loader.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/train/checkpoint.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#include <zlib.h>

namespace fs = std::filesystem;
using bytes = std::vector<std::uint8_t>;

namespace {

void write(const fs::path& path, const bytes& data) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
  std::cout << path.string() << " (" << data.size() << " bytes)\n";
}

bytes gzip(const bytes& data) {
  z_stream zs{};
  if (deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2 failed");
  bytes out(deflateBound(&zs, static_cast<uLong>(data.size())) + 64);
  zs.next_in = const_cast<Bytef*>(data.data());
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  const int ret = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  if (ret != Z_STREAM_END) throw std::runtime_error("deflate failed");
  return out;
}

bytes truncated(bytes b, std::size_t keep) {
  b.resize(keep);
  return b;
}

/// An IDX file of unsigned bytes with dims `dims` and payload i * 7 mod 256.
bytes idx(const std::vector<std::uint32_t>& dims) {
  bytes b{0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  std::size_t n = 1;
  for (std::uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(d >> s));
    n *= d;
  }
  for (std::size_t i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(i * 7));
  return b;
}

void write_idx(const fs::path& dir, const fs::path& sample) {
  const bytes images = idx({3, 5, 4});
  const bytes labels = idx({6});
  write(dir / "valid-images-rank3.idx", images);
  write(dir / "valid-labels-rank1.idx", labels);
  write(dir / "valid-images-rank4.idx", idx({2, 3, 2, 2}));
  write(dir / "valid-zero-dim.idx", idx({0, 28, 28}));
  write(dir / "valid-images-rank3.idx.gz", gzip(images));
  write(dir / "valid-labels-rank1.idx.gz", gzip(labels));
  if (!sample.empty()) {
    write(dir / "valid-fashion-t10k-labels.idx.gz",
          bitgrad::read_file_bytes(sample / "t10k-labels-idx1-ubyte.gz", 1 << 20));
  }
  write(dir / "truncated-payload.idx", truncated(images, images.size() - 3));
  write(dir / "truncated-header.idx", truncated(images, 9));
  bytes trailing = labels;
  trailing.push_back(0xff);
  write(dir / "trailing-byte.idx", trailing);
  bytes float_type = images;
  float_type[2] = 0x0D;
  write(dir / "float-type.idx", float_type);
  bytes huge = idx({1});
  huge[4] = 0xff; // dimension 0xff000001: beyond any payload cap
  write(dir / "huge-dim.idx", huge);
  const bytes gz = gzip(images);
  write(dir / "truncated.idx.gz", truncated(gz, gz.size() - 6));
  bytes bad_crc = gz;
  bad_crc[bad_crc.size() - 5] ^= 0x01; // inside the CRC-32 trailer
  write(dir / "bad-crc.idx.gz", bad_crc);
  bytes two = gz;
  two.insert(two.end(), gz.begin(), gz.end()); // two members: decompress to twice the payload
  write(dir / "two-members.idx.gz", two);
}

bytes cifar(std::size_t records) {
  bytes b;
  for (std::size_t r = 0; r < records; ++r) {
    b.push_back(static_cast<std::uint8_t>(r % 10));
    for (std::size_t i = 0; i < 3 * 32 * 32; ++i)
      b.push_back(static_cast<std::uint8_t>((r * 31 + i) % 251));
  }
  return b;
}

void write_cifar(const fs::path& dir) {
  const bytes two = cifar(2);
  write(dir / "valid-2-records.bin", two);
  write(dir / "valid-3-records.bin.gz", gzip(cifar(3)));
  write(dir / "truncated-record.bin", truncated(two, 3073 + 100));
  bytes bad_label = two;
  bad_label[3073] = 10;
  write(dir / "label-10.bin", bad_label);
  const bytes gz = gzip(two);
  write(dir / "truncated.bin.gz", truncated(gz, gz.size() / 2));
  write(dir / "empty.bin", {});
}

bytes read_all(const fs::path& path) {
  return bitgrad::read_file_bytes(path, 1 << 20);
}

void write_checkpoints(const fs::path& dir) {
  using namespace bitgrad;
  const fs::path tmp = fs::temp_directory_path() / "bitgrad-make-seed-corpus.ckpt";

  auto net = bitgrad_fuzz::checkpoint_net(1);
  loader<float> batches(bitgrad_fuzz::checkpoint_data_set(), {.batch_size = 2, .seed = 3});
  tensor4<float> x;
  std::vector<std::int32_t> y;
  batches.next(x, y); // a loader state in the middle of an epoch
  // An optimizer state after one step; gradients set by hand (no forward) so the values do
  // not depend on the kernels' instruction set.
  optim::adam<float> adam({.lr = 1e-3});
  float g = 0.01f;
  net.visit_parameters([&](param_ref<float>& p) {
    for (std::size_t i = 0; i < p.size; ++i) p.grad[i] = (g += 0.01f);
  });
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  adam.step(params);

  train::checkpoint_data data;
  data.meta["phase"] = "search";
  data.meta["epoch"] = "1";
  data.history.push_back({.phase = "pretrain", .epoch = 1, .loss = 0.5, .train_accuracy = 0.75});
  io::byte_writer state;
  adam.save(state);
  data.optimizer_state = state.take();
  data.loader = batches.state();
  train::save_checkpoint(tmp, net, data);
  const bytes searching = read_all(tmp);
  write(dir / "valid-search.ckpt", searching);

  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  data.meta["phase"] = "finetune";
  data.optimizer_state.clear();
  train::save_checkpoint(tmp, net, data);
  const bytes frozen = read_all(tmp);
  write(dir / "valid-finetune-frozen.ckpt", frozen);
  fs::remove(tmp);

  write(dir / "truncated.ckpt", truncated(searching, searching.size() / 2));
  bytes flipped = frozen;
  flipped[flipped.size() / 2] ^= 0x20;
  write(dir / "bad-crc.ckpt", flipped);
  bytes version = frozen;
  // A version newer than this reader knows, with a CRC that matches it.
  version[8] = static_cast<std::uint8_t>(train::detail::checkpoint_version + 1);
  const std::uint32_t crc = io::crc32(version.data(), version.size() - 4);
  std::memcpy(version.data() + version.size() - 4, &crc, 4);
  write(dir / "version-future.ckpt", version);
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: make_seed_corpus CORPUS_DIR [FASHION_SAMPLE_DIR]\n";
    return 2;
  }
  try {
    const fs::path out = argv[1];
    const fs::path sample = argc == 3 ? fs::path(argv[2]) : fs::path();
    write_idx(out / "idx", sample);
    write_cifar(out / "cifar");
    write_checkpoints(out / "checkpoint");
  } catch (const std::exception& e) {
    std::cerr << "make_seed_corpus: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
