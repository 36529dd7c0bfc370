// Files written by older bitgrad still load: tests/data/compat/ holds a model file and a
// checkpoint written at commit fdc34a8 (both format version 1) by tests/compat/
// make_compat_files.cpp, with the values that code computed from them (v1-expected.txt).
// Today's readers must load them with every value intact, and the model file writer must still
// produce the same bytes.
#include "../compat/compat_values.hpp"

#include <bitgrad/data/loader.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/train/checkpoint.hpp>
#include <bitgrad/train/trainer.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

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
    CAPTURE(deploy::to_string(p));
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

  // History: two records.
  const std::vector<epoch_record> h =
      train::detail::decode_history(train::meta_field(data, "history"), data.file);
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
  {
    std::istringstream in(data.optimizer_state);
    adam.load(in);
  }
  std::ostringstream out;
  adam.save(out);
  CHECK(out.str() == data.optimizer_state);

  // Loader state: where a loader one batch into its first epoch is.
  loader<float> fresh(bitgrad_fuzz::checkpoint_data_set(), bitgrad_compat::loader_settings());
  tensor4<float> x;
  std::vector<std::int32_t> y;
  fresh.next(x, y);
  CHECK(parse_loader_state(data.loader_state) == fresh.state());
}
