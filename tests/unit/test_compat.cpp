// Files written by older bitgrad still load: tests/data/compat/ holds a model file and a
// checkpoint written at commit fdc34a8 (both format version 1) by tests/compat/
// make_compat_files.cpp, with the values that code computed from them (v1-expected.txt).
// Today's readers must load them with every value intact, and the model file writer must still
// produce the same bytes.
#include "../compat/compat_values.hpp"

#include <bitgrad/data/loader.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/train/checkpoint.hpp>
#include <bitgrad/train/trainer.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace test_compat {

namespace fs = std::filesystem;
using namespace bitgrad;

namespace {

const fs::path compat_dir = fs::path(BITGRAD_TEST_DATA_DIR) / "compat";

std::vector<std::uint8_t> read_compat(const std::string& name) {
  return read_file_bytes(compat_dir / name, std::uint64_t{1} << 20);
}

/// The lines "<name> v v v ..." of v1-expected.txt.
std::map<std::string, std::vector<double>> expected_values() {
  std::ifstream in(compat_dir / "v1-expected.txt");
  REQUIRE(in);
  std::map<std::string, std::vector<double>> out;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string name;
    fields >> name;
    for (double v; fields >> v;) out[name].push_back(v);
  }
  return out;
}

/// a == b, NaN equal to NaN.
bool same(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

} // namespace

TEST_CASE("compat: a version-1 model file (fdc34a8) loads, runs and re-encodes to its bytes") {
  const auto bytes = read_compat("v1-model.bgm");
  const format::model_file m = format::from_bytes(bytes, "v1-model.bgm");
  CHECK(m.input == format::shape::image(1, 4, 4));
  CHECK(m.mean == std::vector<double>{0.125});
  CHECK(m.stddev == std::vector<double>{0.25});
  const std::vector<std::string> names = {"conv", "relu1", "flatten", "fc1", "relu2", "fc2"};
  const std::vector<format::op_kind> kinds = {format::op_kind::conv2d,  format::op_kind::relu,
                                              format::op_kind::flatten, format::op_kind::linear,
                                              format::op_kind::relu,    format::op_kind::linear};
  REQUIRE(m.ops.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    CAPTURE(i);
    CHECK(m.ops[i].name == names[i]);
    CHECK(m.ops[i].kind == kinds[i]);
  }
  CHECK(m.output() == format::shape::features(2));
  // The conv's frozen bitwidths, fc1's fixed 4 bits, fc2 in float32 with the formula values.
  const format::tensor_data& conv_w = m.tensors[m.ops[0].weight];
  CHECK(conv_w.kind == format::tensor_kind::quantized);
  CHECK(conv_w.bits == std::vector<std::uint8_t>{3, 6});
  const format::tensor_data& fc1_w = m.tensors[m.ops[3].weight];
  CHECK(fc1_w.bits == std::vector<std::uint8_t>{4, 4, 4});
  CHECK(m.ops[3].input_range > 0);
  auto net = bitgrad_compat::make_network();
  std::map<std::string, std::vector<float>> params;
  net.visit_parameters(
      [&](param_ref<float>& p) { params[p.name].assign(p.value, p.value + p.size); });
  const format::tensor_data& fc2_w = m.tensors[m.ops[5].weight];
  CHECK(fc2_w.kind == format::tensor_kind::float32);
  CHECK(fc2_w.values == params.at("fc2.weight"));
  CHECK(m.tensors[m.ops[5].bias].values == params.at("fc2.bias"));
  CHECK(m.tensors[m.ops[0].bias].values == params.at("conv.bias"));

  // The writer gives the same bytes back.
  const std::vector<std::uint8_t> again = format::to_bytes(m);
  CHECK(again == bytes);

  // The runtime computes what the old code computed.
  const auto expected = expected_values();
  const deploy::runtime rt(m);
  const dataset& images = bitgrad_fuzz::checkpoint_data_set();
  const std::vector<float> x = rt.normalise(images.pixels.data(), images.size());
  for (const auto p : {deploy::precision::float32, deploy::precision::int8}) {
    const std::string precision_name = deploy::to_string(p);
    CAPTURE(precision_name); // (a const char* would print as a pointer)
    const auto logits = rt.run(x.data(), images.size(), p);
    const std::vector<double>& want = expected.at(deploy::to_string(p));
    REQUIRE(logits.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i)
      CHECK(logits.data()[i] == doctest::Approx(want[i]).epsilon(1e-5));
  }
}

TEST_CASE("compat: a version-1 checkpoint (fdc34a8) loads with every value") {
  const auto bytes = read_compat("v1-checkpoint.bin");
  auto net = bitgrad_fuzz::checkpoint_net(7); // other initial values
  const train::checkpoint_data data = train::parse_checkpoint(bytes, "v1-checkpoint.bin", net);

  // Parameters: the formula values, exactly, except the conv's bitwidths: loading applies
  // the stored frozen bitwidths (freeze_to), which sets them to those integers.
  std::size_t i = 0;
  net.visit_parameters([&](param_ref<float>& p) {
    for (std::size_t j = 0; j < p.size; ++j) {
      CAPTURE(p.name);
      CAPTURE(j);
      const float want = p.name == "conv.bits" ? static_cast<float>(bitgrad_compat::conv_bits[j])
                                               : bitgrad_compat::parameter_value(i, j, p.kind);
      CHECK(p.value[j] == want);
    }
    ++i;
  });
  CHECK(i == 8);
  // Frozen bitwidths.
  CHECK(net.get<0>().quantizer().frozen());
  CHECK(net.get<0>().quantizer().frozen_bits() == bitgrad_compat::conv_bits);
  CHECK(net.get<3>().quantizer().frozen_bits() == std::vector<int>{4, 4, 4});

  // Metadata, as the trainer reads it.
  CHECK(train::meta_field(data, "phase") == "search");
  CHECK(train::meta_unsigned(data, "epoch") == 1);
  CHECK(train::meta_real(data, "fp32_accuracy") == 0.8125);
  CHECK(train::meta_real(data, "seconds") == 12.5);
  CHECK(train::meta_unsigned(data, "step") == 1);
  CHECK(train::meta_unsigned(data, "images") == 2);
  CHECK(train::meta_unsigned(data, "correct") == 1);
  CHECK(train::meta_unsigned(data, "skipped") == 0);
  CHECK(train::meta_real(data, "loss_sum") == 1.25);
  CHECK(train::meta_real(data, "epoch_seconds") == 0.1);

  // History: two records, out of the metadata.
  CHECK(data.meta.count("history") == 0);
  CHECK(data.meta.size() == 10);
  const std::vector<epoch_record>& h = data.history;
  REQUIRE(h.size() == 2);
  CHECK(h[0].phase == "pretrain");
  CHECK(h[0].epoch == 1);
  CHECK(h[0].loss == 0.6931471805599453);
  CHECK(h[0].train_accuracy == 0.5);
  CHECK(h[0].test_accuracy == 0.6);
  CHECK(h[0].average_bits == 32);
  CHECK(h[0].size_bytes == 1234);
  CHECK(h[0].compression == 1);
  CHECK(h[0].seconds == 0.25);
  CHECK(h[1].phase == "search");
  CHECK(h[1].epoch == 1);
  CHECK(std::isnan(h[1].loss));
  CHECK(same(h[1].train_accuracy, 0.1));
  CHECK(h[1].test_accuracy == 0.6);
  CHECK(h[1].average_bits == 4.375);
  CHECK(h[1].size_bytes == 98.5);
  CHECK(h[1].compression == 1234.0 / 98.5);
  CHECK(h[1].seconds == 1e-3);

  // Optimizer state: Adam reads it and writes the same bytes back; one step taken per
  // parameter, first moments (1 - beta1) * gradient.
  optim::adam<float> adam({.lr = 0.5});
  io::byte_reader in = data.optimizer_reader();
  adam.load(in);
  CHECK(in.at_end());
  CHECK(adam.lr() == 1e-3);
  REQUIRE(adam.state().size() == 8);
  for (const auto& slot : adam.state()) {
    CAPTURE(slot.name);
    CHECK(slot.steps == 1);
    REQUIRE(slot.buffers.size() == 2);
  }
  for (std::size_t j = 0; j < adam.state()[0].size; ++j) // m = (1 - beta1) g
    CHECK(adam.state()[0].buffers[0][j] ==
          doctest::Approx(0.1 * bitgrad_compat::gradient_value(0, j)).epsilon(1e-6));
  io::byte_writer out;
  adam.save(out);
  CHECK(out.bytes() == data.optimizer_state);

  // Loader state: where a loader one batch into its first epoch is.
  loader<float> fresh(bitgrad_fuzz::checkpoint_data_set(), bitgrad_compat::loader_settings());
  tensor4<float> x;
  std::vector<std::int32_t> y;
  fresh.next(x, y);
  REQUIRE(data.loader.has_value());
  CHECK(*data.loader == fresh.state());

  // Saved again (version 2) it reads back the same.
  const fs::path again = fs::temp_directory_path() / "bitgrad-test-compat-v2.ckpt";
  train::save_checkpoint(again, net, data);
  auto net2 = bitgrad_fuzz::checkpoint_net(9);
  const train::checkpoint_data data2 = train::load_checkpoint(again, net2);
  fs::remove(again);
  CHECK(data2.meta == data.meta);
  REQUIRE(data2.history.size() == 2);
  CHECK(data2.history[1].phase == "search");
  CHECK(std::isnan(data2.history[1].loss));
  CHECK(data2.history[1].compression == 1234.0 / 98.5);
  CHECK(data2.optimizer_state == data.optimizer_state);
  CHECK(data2.loader == data.loader);
  std::vector<float> a, b;
  net.visit_parameters([&](param_ref<float>& p) { a.insert(a.end(), p.value, p.value + p.size); });
  net2.visit_parameters([&](param_ref<float>& p) { b.insert(b.end(), p.value, p.value + p.size); });
  CHECK(a == b);
  CHECK(net2.get<0>().quantizer().frozen_bits() == bitgrad_compat::conv_bits);
}

namespace {

/// The version 1 checkpoint `bytes` with its metadata text replaced by `meta` (and the CRC
/// recomputed): the metadata string starts at offset 16 (u64 length, then the text).
std::vector<std::uint8_t> with_v1_metadata(const std::vector<std::uint8_t>& bytes,
                                           const std::string& meta) {
  std::uint64_t old_length = 0;
  std::memcpy(&old_length, bytes.data() + 16, 8);
  io::byte_writer w;
  w.put_bytes(bytes.data(), 16);
  w.put_string(meta);
  w.put_bytes(bytes.data() + 24 + old_length, bytes.size() - 24 - old_length - 4);
  w.put(io::crc32(w.bytes().data(), w.size()));
  return {w.bytes().begin(), w.bytes().end()};
}

/// The metadata text of a version 1 checkpoint.
std::string v1_metadata(const std::vector<std::uint8_t>& bytes) {
  std::uint64_t length = 0;
  std::memcpy(&length, bytes.data() + 16, 8);
  return std::string(reinterpret_cast<const char*>(bytes.data()) + 24, length);
}

} // namespace

TEST_CASE("compat: a malformed history in a version-1 checkpoint names the row and the column") {
  const auto bytes = read_compat("v1-checkpoint.bin");
  std::string meta = v1_metadata(bytes);
  const std::size_t at = meta.find("history=");
  REQUIRE(at != std::string::npos);
  const std::size_t end = meta.find('\n', at);
  struct bad_case {
    std::string history, message;
  };
  for (const bad_case& c : {
           bad_case{"pretrain,1,2.3;",
                    "metadata field 'history': row 1: expected 9 comma-separated values, got 3"},
           bad_case{"pretrain,1,2.3,0.1,0.2,32,177700,1,1.5;pretrain,two,1,1,1,1,1,1,1;",
                    "metadata field 'history': row 2: epoch: expected an unsigned integer, got "
                    "'two'"},
           bad_case{"pretrain,1,2.3,0.1,zero,32,177700,1,1.5;",
                    "row 1: test_accuracy: expected a number, got 'zero'"},
       }) {
    CAPTURE(c.history);
    std::string changed = meta;
    changed.replace(at, end - at, "history=" + c.history);
    auto net = bitgrad_fuzz::checkpoint_net(7);
    const auto before = net.get<3>().weight();
    try {
      (void)train::parse_checkpoint(with_v1_metadata(bytes, changed), "old.ckpt", net);
      FAIL("a malformed history loaded");
    } catch (const format_error& e) {
      const std::string message = e.what();
      CAPTURE(message);
      CHECK(e.offset() == 16); // where the metadata starts
      CHECK(message.find("old.ckpt") == 0);
      CHECK(message.find(c.message) != std::string::npos);
    }
    CHECK(net.get<3>().weight() == before); // nothing half-loaded
  }
  // The unchanged metadata loads through the same rewriting.
  auto net = bitgrad_fuzz::checkpoint_net(7);
  CHECK(train::parse_checkpoint(with_v1_metadata(bytes, meta), "old.ckpt", net).history.size() ==
        2);
}

TEST_CASE("compat: a version-1 loader state is parsed strictly") {
  // The loader state is the last string of a version 1 checkpoint: replace its counters line.
  const auto bytes = read_compat("v1-checkpoint.bin");
  auto net = bitgrad_fuzz::checkpoint_net(7);
  const train::checkpoint_data data = train::parse_checkpoint(bytes, "old.ckpt", net);
  const std::string text = to_string(*data.loader);
  const std::size_t text_at = bytes.size() - 4 - text.size();
  REQUIRE(std::string(reinterpret_cast<const char*>(bytes.data()) + text_at, text.size()) == text);
  std::string bad = text;
  const std::size_t counters = bad.find('\n') + 1;
  bad.replace(counters, bad.find('\n', counters) - counters, "-1 0 5");
  io::byte_writer w;
  w.put_bytes(bytes.data(), text_at - 8);
  w.put_string(bad);
  w.put(io::crc32(w.bytes().data(), w.size()));
  const std::vector<std::uint8_t> changed(w.bytes().begin(), w.bytes().end());
  try {
    (void)train::parse_checkpoint(changed, "old.ckpt", net);
    FAIL("a signed loader counter loaded");
  } catch (const format_error& e) {
    CHECK(std::string(e.what()).find("old.ckpt") == 0);
    CHECK(std::string(e.what()).find("<epoch> <position> <dataset_size>") != std::string::npos);
    CHECK(e.offset() == text_at + counters);
  }
}

} // namespace test_compat
