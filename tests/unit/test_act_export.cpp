// Activation quantizers in the model file (format version 2, issue #22): export through
// export_rule, the float runtime's fake-quant equal to the eval forward, version 1 files still
// written and read, malformed act_quant operations named by file, offset and layer.
#include "reseal.hpp"

#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/io/bytes.hpp>
#include <bitgrad/io/read_file.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/export.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace test_act_export {

namespace fs = std::filesystem;
using namespace bitgrad;
using bitgrad::testing::reseal;

namespace {

tensor4<float> random_batch(std::size_t n, std::uint64_t seed) {
  tensor4<float> x = tensor4<float>::from_shape({n, 1, 28, 28});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  for (float& v : x) v = d(rng);
  return x;
}

/// LeNet-5 with activation quantizers (frac_bits weights), calibrated on a batch and frozen
/// at mixed integer bitwidths.
auto frozen_act_lenet() {
  nn::act_model_options<float, quant::frac_bits> o{.seed = 9};
  o.quant.group_size = 2;
  o.act_quant.group_size = 3; // several groups where there are channels
  auto net = nn::lenet5(o);
  net.train(false);
  (void)net.forward(random_batch(16, 1)); // calibrates the ranges
  int k = 2;
  nn::visit_activation_quantizers(net, [&](std::string_view, auto& q) {
    q.freeze_to(std::vector<int>(q.groups(), k++)); // 2, 3, 4, 5 bits
  });
  int w = 0;
  net.visit_quantizers([&](std::string_view, auto& q) {
    std::vector<int> bits(q.groups());
    for (int& b : bits) b = 2 + (w++ % 6);
    q.freeze_to(bits);
  });
  return net;
}

/// Offset of the first byte after the operation name `name` (the u32 input follows).
std::size_t after_name(const std::vector<std::uint8_t>& b, const std::string& name) {
  const auto it = std::search(b.begin(), b.end(), name.begin(), name.end());
  REQUIRE(it != b.end());
  return static_cast<std::size_t>(it - b.begin()) + name.size();
}

format_error parse_error(const std::vector<std::uint8_t>& b) {
  try {
    (void)format::from_bytes(b, "act.bgm");
  } catch (const format_error& e) {
    return e;
  }
  FAIL("expected a format_error");
  return format_error("", 0, "");
}

} // namespace

TEST_CASE("export: activation quantizers become act_quant operations (version 2) and the float "
          "runtime's outputs equal the eval forward") {
  {
    const bool is_signed = false;
    auto net = frozen_act_lenet();
    const format::model_file m = train::to_model_file(net, format::shape::image(1, 28, 28));
    const std::vector<std::uint8_t> bytes = format::to_bytes(m);
    std::uint32_t version;
    std::memcpy(&version, bytes.data() + 8, 4);
    CHECK(version == 2);
    const format::model_file back = format::from_bytes(bytes);
    std::vector<const format::operation*> acts;
    for (const auto& op : back.ops)
      if (op.kind == format::op_kind::act_quant) acts.push_back(&op);
    REQUIRE(acts.size() == 4);
    std::size_t i = 0;
    nn::visit_activation_quantizers(net, [&](std::string_view name, auto& q) {
      const format::operation& op = *acts[i++];
      CHECK(op.name == name);
      CHECK(op.act.is_signed == is_signed);
      CHECK(op.act.group_size == 3);
      REQUIRE(op.act.bits.size() == q.groups());
      for (std::size_t g = 0; g < q.groups(); ++g) {
        CHECK(op.act.bits[g] == q.frozen_bits()[g]);
        CHECK(op.act.ranges[g] == q.group_ranges()[g]);
      }
    });

    const tensor4<float> x = random_batch(8, 2);
    const tensor2<float> want = net.forward(x);
    deploy::runtime rt(back);
    const tensor2<float> got = rt.run(x);
    REQUIRE(got.size() == want.size());
    double worst = 0, scale = 0;
    for (std::size_t k = 0; k < got.size(); ++k) {
      worst = std::max(worst, std::abs(double(got.data()[k]) - double(want.data()[k])));
      scale = std::max(scale, std::abs(double(want.data()[k])));
    }
    MESSAGE("max |runtime - eval forward| = " << worst << " (outputs up to " << scale << ")");
    CHECK(worst <= 1e-4 * std::max(1.0, scale));
    // Without the act_quant operations the outputs differ: the grid matters.
    format::model_file plain = back;
    std::erase_if(plain.ops, [](const format::operation& op) {
      return op.kind == format::op_kind::act_quant;
    });
    for (std::size_t o = 0; o < plain.ops.size(); ++o) plain.ops[o].input = std::uint32_t(o);
    const tensor2<float> unq = deploy::runtime(format::from_bytes(format::to_bytes(plain))).run(x);
    double diff = 0;
    for (std::size_t k = 0; k < got.size(); ++k)
      diff = std::max(diff, std::abs(double(unq.data()[k]) - double(want.data()[k])));
    CHECK(diff > 100 * worst);
  }
}

TEST_CASE("runtime: a signed act_quant grid equals the signed activation quantizer's forward") {
  // (N, 4, 3, 3) -> act_quant (signed, groups of 3 channels: 2 groups at 3 and 5 bits) -> flatten
  quant::act_quantizer<float> q({.group_size = 3, .is_signed = true});
  q.bind(4);
  const std::size_t n = 5, inner = 9;
  std::vector<float> x(n * 4 * inner), want(x.size());
  std::mt19937_64 rng(3);
  std::normal_distribution<float> d(0.f, 2.f);
  for (float& v : x) v = d(rng);
  q.forward(x.data(), want.data(), n, inner, false); // calibrates
  q.freeze_to({3, 5});
  q.forward(x.data(), want.data(), n, inner, false);
  format::model_file m;
  m.input = format::shape::image(4, 3, 3);
  format::operation a;
  a.kind = format::op_kind::act_quant;
  a.name = "aq";
  a.act = {.is_signed = true, .group_size = 3, .bits = {3, 5}, .ranges = {}};
  for (float r : q.group_ranges()) a.act.ranges.push_back(r);
  format::operation f;
  f.kind = format::op_kind::flatten;
  f.name = "flat";
  f.input = 1;
  m.ops = {a, f};
  const deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  const tensor2<float> got = rt.run(x.data(), n);
  REQUIRE(got.size() == want.size());
  std::size_t negative = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    CHECK(got.data()[i] == want[i]);
    negative += want[i] < 0;
  }
  CHECK(negative > 0); // the signed grid kept negative values
}

TEST_CASE("export: an unfrozen activation quantizer is refused, naming the layer") {
  auto net = nn::lenet5(nn::act_model_options<float, quant::frac_bits>{.seed = 1});
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  CHECK_THROWS_WITH_AS((void)train::to_model_file(net, format::shape::image(1, 28, 28)),
                       doctest::Contains("relu1_quant': the activation quantizer is not frozen"),
                       config_error);
}

TEST_CASE("model file: a model without act_quant is still written as version 1; version 1 files "
          "load") {
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 3});
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  const auto bytes = format::to_bytes(train::to_model_file(net, format::shape::image(1, 28, 28)));
  std::uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  CHECK(version == 1);
  // The committed file of commit fdc34a8 (format version 1) loads.
  const auto old = read_file_bytes(fs::path(BITGRAD_TEST_DATA_DIR) / "compat" / "v1-model.bgm",
                                   std::uint64_t{1} << 20);
  CHECK(old[8] == 1);
  const format::model_file m = format::from_bytes(old, "v1-model.bgm");
  CHECK(m.ops.size() > 5);
}

TEST_CASE("model file: a malformed act_quant operation names the file, the offset and the layer") {
  auto net = frozen_act_lenet();
  const auto good = format::to_bytes(train::to_model_file(net, format::shape::image(1, 28, 28)));
  // relu2_quant: name, u32 input, u8 signed, u32 group size, u32 groups (16 / 3 -> 6), bits...
  const std::size_t attrs = after_name(good, "relu2_quant") + 4;
  const std::size_t bits = attrs + 9, ranges = bits + 6;
  SUBCASE("bitwidth out of range") {
    auto b = good;
    b[bits + 1] = 17;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(e.offset() == bits + 1);
    CHECK(std::string(e.what()).find("act.bgm") != std::string::npos);
    CHECK(std::string(e.what()).find("(relu2_quant): act_quant group 1: bitwidth 17") !=
          std::string::npos);
  }
  SUBCASE("range not finite") {
    auto b = good;
    const float nan = std::nanf("");
    std::memcpy(b.data() + ranges + 4 * 2, &nan, 4);
    reseal(b);
    const auto e = parse_error(b);
    CHECK(e.offset() == ranges + 8);
    CHECK(std::string(e.what()).find("(relu2_quant): act_quant group 2: range") !=
          std::string::npos);
  }
  SUBCASE("signed flag") {
    auto b = good;
    b[attrs] = 7;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(e.offset() == attrs);
    CHECK(std::string(e.what()).find("signed flag must be 0 or 1, got 7") != std::string::npos);
  }
  SUBCASE("group count that does not fit the channels") {
    auto b = good;
    // group size 3 -> 4: 16 channels need 4 groups, the file has 6
    b[attrs + 1] = 4;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(std::string(e.what()).find("(relu2_quant): act_quant has 6 groups, expected 4") !=
          std::string::npos);
  }
  SUBCASE("an act_quant operation in a version 1 file") {
    auto b = good;
    b[8] = 1;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(std::string(e.what()).find("act_quant) needs format version 2, the file is version 1") !=
          std::string::npos);
  }
}

} // namespace test_act_export
