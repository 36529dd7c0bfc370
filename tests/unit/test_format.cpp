// The model file: bit packing, writer/reader round trip, size accounting, malformed files,
// .npz export.
#include "reseal.hpp"

#include <bitgrad/format/bitpack.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/export.hpp>
#include <bitgrad/train/model_info.hpp>
#include <bitgrad/train/npz_export.hpp>
#include <bitgrad/train/trainer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace test_format {

namespace fs = std::filesystem;
using namespace bitgrad;
using bitgrad::testing::reseal;

namespace {

std::vector<std::int32_t> random_codes(int k, std::size_t n, std::mt19937& rng) {
  std::vector<std::int32_t> c(n);
  const std::int32_t lim = format::code_limit(k);
  std::uniform_int_distribution<std::int32_t> d(-lim, lim);
  for (auto& v : c) {
    v = d(rng);
    if (k == 1) v = v >= 0 ? 1 : -1;
  }
  return c;
}

/// A small valid model: conv (quantized, mixed bits, grouped by 2) -> relu -> max pool ->
/// flatten -> linear (float32 weights, bias) -> residual-style add of a relu with itself.
format::model_file small_model(std::uint32_t seed = 1) {
  std::mt19937 rng(seed);
  format::model_file m;
  m.input = format::shape::image(1, 6, 6);
  m.mean = {0.25};
  m.stddev = {0.5};
  // conv weight: 3 channels of 1x3x3, group size 2 -> 2 groups at 3 and 1 bits.
  std::vector<std::int32_t> codes = random_codes(3, 18, rng);
  for (std::size_t i = 18; i < 27; ++i) codes.push_back(i % 2 ? 1 : -1);
  m.tensors.push_back(
      format::tensor_data::from_codes({3, 1, 3, 3}, 2, {3, 1}, {0.5f, 0.125f}, codes));
  m.tensors.push_back(format::tensor_data::from_floats({3}, {0.1f, -0.2f, 0.3f}));
  std::vector<float> fc(4 * 12);
  for (std::size_t i = 0; i < fc.size(); ++i) fc[i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
  m.tensors.push_back(format::tensor_data::from_floats({4, 12}, fc));
  format::operation conv;
  conv.kind = format::op_kind::conv2d;
  conv.name = "conv1";
  conv.conv = {1, 3, 3, 3, 1, 1, 0, 0, 1, 1, 1};
  conv.weight = 0;
  conv.bias = 1;
  conv.input_range = 2.5f;
  conv.input = 0;
  m.ops.push_back(conv);
  format::operation relu;
  relu.kind = format::op_kind::relu;
  relu.name = "relu1";
  relu.input = 1;
  m.ops.push_back(relu);
  format::operation pool;
  pool.kind = format::op_kind::max_pool2d;
  pool.name = "pool1";
  pool.input = 2;
  m.ops.push_back(pool);
  format::operation flat;
  flat.kind = format::op_kind::flatten;
  flat.name = "flatten";
  flat.input = 3;
  m.ops.push_back(flat);
  format::operation lin;
  lin.kind = format::op_kind::linear;
  lin.name = "fc";
  lin.fc = {12, 4};
  lin.weight = 2;
  lin.input_range = 1.5f;
  lin.input = 4;
  m.ops.push_back(lin);
  format::operation add;
  add.kind = format::op_kind::add;
  add.name = "add";
  add.input = 5;
  add.input_b = 5;
  m.ops.push_back(add);
  format::infer_shapes(m);
  return m;
}

std::uint64_t section_offset(const std::vector<std::uint8_t>& b, std::size_t s) {
  std::uint32_t off;
  std::memcpy(&off, b.data() + 32 + 16 * s + 8, 4);
  return off;
}

/// The format_error from parsing b (fails the test if it parses).
format_error parse_error(const std::vector<std::uint8_t>& b) {
  try {
    (void)format::from_bytes(b, "test.bgm");
  } catch (const format_error& e) {
    return e;
  }
  FAIL("a malformed file was accepted");
  return format_error("", 0, "");
}

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name)
      : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
};

} // namespace

TEST_CASE(
    "bitpack: every width 1..16 matches the bit-by-bit reference on odd lengths and offsets") {
  std::mt19937 rng(7);
  for (int k = 1; k <= 16; ++k) {
    for (std::size_t n : {0u, 1u, 3u, 7u, 13u, 61u, 257u}) {
      for (std::uint64_t offset : {0u, 1u, 5u, 7u, 19u}) {
        CAPTURE(k);
        CAPTURE(n);
        CAPTURE(offset);
        const auto codes = random_codes(k, n, rng);
        const std::size_t bytes = format::packed_bytes(offset + n * std::uint64_t(k));
        // The bits before `offset` hold a pattern both must keep.
        std::vector<std::uint8_t> fast(bytes + 1, 0), slow(bytes + 1, 0);
        if (offset) {
          const std::vector<std::int32_t> head = random_codes(1, offset, rng);
          format::ref::pack_codes(1, head.data(), offset, fast.data(), 0);
          format::ref::pack_codes(1, head.data(), offset, slow.data(), 0);
        }
        format::pack_codes(k, codes.data(), n, fast.data(), offset);
        format::ref::pack_codes(k, codes.data(), n, slow.data(), offset);
        CHECK(fast == slow);
        CHECK(fast[bytes] == 0); // nothing written past the last needed byte
        std::vector<std::int32_t> a(n, 99), b(n, 99);
        format::unpack_codes(k, fast.data(), offset, n, a.data());
        format::ref::unpack_codes(k, fast.data(), offset, n, b.data());
        CHECK(a == codes);
        CHECK(b == codes);
      }
    }
  }
}

TEST_CASE("bitpack: documented example and sign codes") {
  const std::int32_t codes[] = {1, -1, 0};
  std::uint8_t out[2] = {0, 0};
  format::pack_codes(3, codes, 3, out, 0);
  CHECK(out[0] == 0x39);
  CHECK(out[1] == 0x00);
  const std::int32_t signs[] = {1, -1, -1, 1, 1, 1, -1, 1, -1};
  std::uint8_t s[2] = {0, 0};
  format::pack_codes(1, signs, 9, s, 0);
  CHECK(s[0] == 0xB9); // 1 0 0 1 1 1 0 1 LSB-first
  CHECK(s[1] == 0x00);
  CHECK(format::code_in_range(-7, 4));
  CHECK_FALSE(format::code_in_range(-8, 4));
  CHECK_FALSE(format::code_in_range(0, 1));
}

TEST_CASE("model file: writer/reader round trip") {
  const format::model_file m = small_model();
  const std::vector<std::uint8_t> bytes = format::to_bytes(m);
  const format::model_file r = format::from_bytes(bytes);
  CHECK(r.input == m.input);
  CHECK(r.mean == m.mean);
  CHECK(r.stddev == m.stddev);
  REQUIRE(r.ops.size() == m.ops.size());
  for (std::size_t i = 0; i < m.ops.size(); ++i) {
    CHECK(r.ops[i].kind == m.ops[i].kind);
    CHECK(r.ops[i].name == m.ops[i].name);
    CHECK(r.ops[i].input == m.ops[i].input);
    CHECK(r.ops[i].input_b == m.ops[i].input_b);
    CHECK(r.ops[i].output == m.ops[i].output);
    CHECK(r.ops[i].input_range == m.ops[i].input_range);
  }
  CHECK(r.ops[0].output == format::shape::image(3, 4, 4));
  CHECK(r.ops[3].output == format::shape::features(12));
  CHECK(r.ops[0].conv.kernel_h == 3);
  CHECK(r.ops[4].fc.in_features == 12);
  REQUIRE(r.tensors.size() == 3);
  CHECK(r.tensors[0].codes() == m.tensors[0].codes());
  CHECK(r.tensors[0].bits == std::vector<std::uint8_t>{3, 1});
  CHECK(r.tensors[0].scales == m.tensors[0].scales);
  CHECK(r.tensors[2].values == m.tensors[2].values);
  CHECK(format::to_bytes(r) == bytes); // byte-exact re-encoding
  std::vector<float> w(27);
  r.tensors[0].dequantize(w.data());
  const auto c = r.tensors[0].codes();
  CHECK(w[0] == static_cast<float>(c[0]) * 0.5f);
  CHECK(w[20] == static_cast<float>(c[20]) * 0.125f);
}

TEST_CASE("model file: atomic write and read from a path") {
  temp_dir dir("bitgrad-format");
  const fs::path p = dir.path / "m.bgm";
  const std::size_t n = format::write_model_file(p, small_model());
  CHECK(fs::file_size(p) == n);
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}) ==
        1); // no temporary left
  const format::model_file r = format::read_model_file(p);
  CHECK(r.ops.size() == 6);
  // An invalid model is refused before anything is written.
  format::model_file bad = small_model();
  bad.ops[4].fc.in_features = 13;
  CHECK_THROWS_AS(format::write_model_file(dir.path / "bad.bgm", bad), config_error);
  CHECK_FALSE(fs::exists(dir.path / "bad.bgm"));
}

TEST_CASE("model file: a full-grid tensor (codes down to -2^(k-1)) is version 3 and costs no "
          "byte; symmetric headers still refuse such codes") {
  auto version = [](const std::vector<std::uint8_t>& b) {
    std::uint32_t v;
    std::memcpy(&v, b.data() + 8, 4);
    return v;
  };
  format::model_file m = small_model();
  const std::vector<std::uint8_t> symmetric = format::to_bytes(m);
  CHECK(version(symmetric) == 1); // no act_quant, no full grid: version 1, as before
  // conv1's groups: 3 bits (codes -4..3 on the full grid) and 1 bit (the sign grid).
  std::vector<std::int32_t> codes;
  for (int i = 0; i < 18; ++i) codes.push_back(i % 8 - 4);
  for (int i = 18; i < 27; ++i) codes.push_back(i % 2 ? 1 : -1);
  CHECK_THROWS_AS(format::tensor_data::from_codes({3, 1, 3, 3}, 2, {3, 1}, {0.5f, 0.125f}, codes),
                  config_error); // -4 is outside the symmetric 3-bit grid
  m.tensors[0] =
      format::tensor_data::from_codes({3, 1, 3, 3}, 2, {3, 1}, {0.5f, 0.125f}, codes, true);
  const std::vector<std::uint8_t> full = format::to_bytes(m);
  CHECK(version(full) == 3);
  CHECK(full.size() == symmetric.size()); // the grid is a flag in the tensor header
  const format::model_file back = format::from_bytes(full);
  CHECK(back.tensors[0].full_grid);
  CHECK_FALSE(back.tensors[1].full_grid);
  CHECK(back.tensors[0].codes() == codes);
  std::vector<float> w(27);
  back.tensors[0].dequantize(w.data());
  CHECK(w[0] == -4 * 0.5f);
  // The flag of tensor 0 is the 16-bit field at byte 2 of its section.
  const std::size_t flags = section_offset(full, 1) + 2;
  CHECK(full[flags] == 1);
  SUBCASE("the same codes under a symmetric header are refused, naming the grid") {
    auto b = full;
    b[flags] = 0;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(contains(e.what(), "code -4 outside the 3-bit symmetric range"));
  }
  SUBCASE("a tensor flag in an older version is refused") {
    auto b = full;
    b[8] = 2;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(e.offset() == flags);
    CHECK(contains(e.what(), "need format version 3"));
  }
  SUBCASE("unknown flags, or the grid flag on a float32 tensor, are refused") {
    auto b = full;
    b[flags] = 3;
    reseal(b);
    CHECK(contains(parse_error(b).what(), "unknown tensor flags 3"));
    b = full;
    b[section_offset(full, 2) + 2] = 1; // tensor 1: the float32 bias
    reseal(b);
    CHECK(contains(parse_error(b).what(), "on a float32 tensor"));
  }
  SUBCASE("old files (versions 1 and 2) still load") {
    CHECK_FALSE(format::from_bytes(symmetric).tensors[0].full_grid);
  }
}

TEST_CASE("model file: malformed files throw format_error with the offset") {
  const std::vector<std::uint8_t> good = format::to_bytes(small_model());

  SUBCASE("bad magic") {
    auto b = good;
    b[3] ^= 0x20;
    const auto e = parse_error(b);
    CHECK(e.offset() == 0);
    CHECK(contains(e.what(), "magic"));
    CHECK(contains(e.what(), "test.bgm"));
  }
  SUBCASE("unsupported version") {
    auto b = good;
    b[8] = 4;
    reseal(b);
    const auto e = parse_error(b);
    CHECK(e.offset() == 8);
    CHECK(contains(e.what(), "version 4"));
  }
  SUBCASE("truncated at every length") {
    for (std::size_t n = 0; n < good.size(); ++n) {
      const std::vector<std::uint8_t> b(good.begin(), good.begin() + std::ptrdiff_t(n));
      CHECK_THROWS_AS(format::from_bytes(b), format_error);
    }
    const auto e = parse_error(std::vector<std::uint8_t>(good.begin(), good.begin() + 100));
    CHECK(e.offset() == 16); // the recorded file size disagrees
  }
  SUBCASE("a byte appended") {
    auto b = good;
    b.push_back(0);
    CHECK(parse_error(b).offset() == 16);
  }
  SUBCASE("bad CRC in every section") {
    for (std::size_t s = 0; s < 4; ++s) {
      auto b = good;
      const std::uint64_t off = section_offset(b, s);
      b[off + 2] ^= 0x01;
      const auto e = parse_error(b);
      CHECK(e.offset() == off);
      CHECK(contains(e.what(), "CRC mismatch in section " + std::to_string(s)));
    }
    auto b = good;
    b[40] ^= 0x10; // inside the section table
    const auto e = parse_error(b);
    CHECK(e.offset() == 24);
    CHECK(contains(e.what(), "header CRC"));
  }
  SUBCASE("inconsistent shapes between operations") {
    format::model_file m = small_model();
    m.ops[4].fc.in_features = 11; // flatten gives 12
    auto b = format::encode(m);
    const auto e = parse_error(b);
    CHECK(contains(e.what(), "operation 4 (fc)"));
    CHECK(contains(e.what(), "12 features"));
    CHECK(e.offset() > section_offset(b, 0));
    CHECK(e.offset() < section_offset(b, 1));
    format::model_file m2 = small_model();
    m2.ops[0].conv.in_channels = 2; // the input has 1 channel
    m2.ops[0].conv.out_channels = 4;
    const auto e2 = parse_error(format::encode(m2));
    CHECK(contains(e2.what(), "input has 1 channels, conv2d expects 2"));
    format::model_file m5 = small_model();
    m5.ops[5].input_b = 3; // add of (3, 2, 2) and (4)
    CHECK(contains(parse_error(format::encode(m5)).what(), "add of different shapes"));
    format::model_file m3 = small_model();
    m3.ops[2].input = 7; // a value computed later
    CHECK(contains(parse_error(format::encode(m3)).what(), "not computed before"));
    format::model_file m4 = small_model();
    m4.ops[4].weight = 0; // a conv weight of the wrong shape
    CHECK(contains(parse_error(format::encode(m4)).what(), "weight tensor 0 has shape"));
  }
  SUBCASE("bitwidth out of range") {
    for (std::uint8_t bad : {std::uint8_t(0), std::uint8_t(17), std::uint8_t(255)}) {
      auto b = good;
      const std::uint64_t bits_at =
          section_offset(b, 1) + 4 + 4 * 4 + 8; // kind..extents, group size, groups
      REQUIRE(b[bits_at] == 3);
      b[bits_at] = bad;
      reseal(b);
      const auto e = parse_error(b);
      CHECK(e.offset() == bits_at);
      CHECK(contains(e.what(), "outside 1..16"));
    }
  }
  SUBCASE("scales, group counts, reserved fields, code ranges") {
    auto b = good;
    const std::uint64_t t = section_offset(b, 1);
    b[t + 4 + 16 + 8 + 4] = 0xFF; // first scale byte pattern -> still finite? use NaN below
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(b.data() + t + 4 + 16 + 8 + 4, &nan, 4); // bits (2 bytes) + pad (2) then scales
    reseal(b);
    CHECK(
        contains(parse_error(b).what(), "operation 0 (conv1): weight tensor 0: scale of group 0"));
    auto c = good;
    c[t + 4 + 16 + 4] = 3; // group count 3 for 3 channels in groups of 2
    reseal(c);
    CHECK(parse_error(c).offset() == t + 4 + 16 + 4);
    auto d = good;
    d[29] = 1; // reserved header field
    CHECK(parse_error(d).offset() == 28);
    // A 3-bit code of -4 (bits 001 LSB-first... i.e. value 0b100) is out of range.
    format::model_file m = small_model();
    m.tensors[0].packed[0] = static_cast<std::uint8_t>((m.tensors[0].packed[0] & ~0x7) | 0x4);
    CHECK(contains(parse_error(format::encode(m)).what(), "outside the 3-bit symmetric range"));
  }
}

TEST_CASE("model file: a NaN or infinite float parameter is rejected, naming the layer") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  // Tensor t's value j: after kind, rank, reserved (4 bytes) and the extents.
  auto value_offset = [](const std::vector<std::uint8_t>& b, const format::model_file& m,
                         std::size_t t, std::size_t j) {
    return section_offset(b, t + 1) + 4 + 4 * m.tensors[t].extents.size() + 4 * j;
  };
  SUBCASE("a NaN bias with a valid CRC") {
    format::model_file m = small_model();
    m.tensors[1].values[2] = nan; // conv1's bias
    const auto b = format::encode(m);
    const auto e = parse_error(b);
    CHECK(e.offset() == value_offset(b, m, 1, 2));
    CHECK(contains(e.what(), "test.bgm"));
    CHECK(contains(e.what(), "operation 0 (conv1): bias tensor 1: value 2 of 3 is not finite"));
  }
  SUBCASE("an infinite float32 weight") {
    format::model_file m = small_model();
    m.tensors[2].values[13] = -inf; // fc's weight
    const auto b = format::encode(m);
    const auto e = parse_error(b);
    CHECK(e.offset() == value_offset(b, m, 2, 13));
    CHECK(contains(e.what(), "operation 4 (fc): weight tensor 2: value 13 of 48 is not finite"));
  }
  SUBCASE("a channel scale and a tensor no operation reads") {
    format::model_file m = small_model();
    m.tensors.push_back(format::tensor_data::from_floats({3}, {1.0f, inf, 1.0f}));
    m.ops[0].channel_scale = 3;
    CHECK(contains(parse_error(format::encode(m)).what(),
                   "operation 0 (conv1): channel-scale tensor 3: value 1 of 3"));
    m.ops[0].channel_scale = format::no_index;
    CHECK(contains(parse_error(format::encode(m)).what(),
                   "tensor 3 (read by no operation): value 1 of 3 is not finite"));
  }
  SUBCASE("writing one is refused too") {
    format::model_file m = small_model();
    m.tensors[1].values[0] = nan;
    try {
      (void)format::to_bytes(m);
      FAIL("a NaN bias was written");
    } catch (const config_error& e) {
      CHECK(contains(e.what(), "operation 0 (conv1): bias tensor 1"));
    }
  }
  SUBCASE("an input range of inf") {
    format::model_file m = small_model();
    m.ops[4].input_range = inf;
    const auto e = parse_error(format::encode(m));
    CHECK(contains(e.what(), "operation 4 (fc): input range must be finite and >= 0, got inf"));
    CHECK_THROWS_WITH_AS(format::infer_shapes(m),
                         doctest::Contains("input range must be finite and >= 0"), config_error);
    m.ops[4].input_range = -1;
    CHECK(contains(parse_error(format::encode(m)).what(), "input range must be finite and >= 0"));
  }
}

TEST_CASE("export: a NaN or infinite weight, scale or bias is refused, naming the layer") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto export_error = [](auto& net) {
    try {
      (void)train::to_model_file(net, format::shape::image(1, 28, 28));
    } catch (const config_error& e) {
      return std::string(e.what());
    }
    FAIL("the network was exported");
    return std::string();
  };
  auto frozen_lenet = [] {
    auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
    net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
    return net;
  };
  SUBCASE("a NaN weight (it has no code: the old message was 'code -2147483648 ...')") {
    auto net = frozen_lenet();
    net.get<7>().weight()(3, 5) = nan; // fc1
    const std::string e = export_error(net);
    CHECK(contains(e, "export: layer fc1: weight " + std::to_string(3 * 256 + 5) +
                          " of 30720 "
                          "is not finite"));
  }
  SUBCASE("a NaN bias") {
    auto net = frozen_lenet();
    net.get<9>().bias()(1) = std::numeric_limits<float>::infinity(); // fc2
    CHECK(contains(export_error(net), "export: layer fc2: bias 1 of 84 is not finite (inf)"));
  }
  SUBCASE("a NaN learned scale") {
    auto net = nn::lenet5<float, quant::fixed_bits>({.seed = 1, .quant = {.bits = 4}});
    net.visit_parameters([&](const param_ref<float>& p) {
      if (p.kind == param_kind::scale && contains(p.name, "conv2")) p.value[1] = nan;
    });
    CHECK(contains(export_error(net), "export: layer conv2: scale of group 1 is not finite"));
  }
  SUBCASE("a batch norm that folds to a NaN channel scale") {
    auto net = nn::sequential(
        nn::conv2d<float, quant::fixed_bits>(
            {.in_channels = 1, .out_channels = 2, .kernel = 3, .name = "c"}, {.bits = 4}),
        nn::batch_norm<float, 4>({.features = 2, .name = "bn"}), nn::flatten<float>("flat"),
        nn::linear<float>({.in_features = 2 * 26 * 26, .out_features = 3, .name = "fc"}));
    net.get<1>().running_var()(1) = -1; // sqrt(-1 + eps)
    CHECK(contains(
        export_error(net),
        "export: layer c: channel scale 1 of 2 is not finite (nan; batch norm bn folded in)"));
  }
}

TEST_CASE("export: operations of a nested network carry the full layer names, as the summary") {
  auto net = nn::resnet20<float, quant::fixed_bits>({.in_channels = 1, .in_size = 8, .width = 2});
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  std::vector<std::string> leaves; // conv2d / linear leaves, as nn::visit_layers names them
  auto collect = [&](const std::string& name, auto& layer) {
    if (layer.describe().starts_with("conv2d") || layer.describe().starts_with("linear"))
      leaves.push_back(name);
  };
  nn::visit_layers(net, collect);
  const format::model_file m = train::to_model_file(net, format::shape::image(1, 8, 8));
  std::vector<std::string> weighted, adds;
  for (const auto& op : m.ops) {
    if (op.kind == format::op_kind::conv2d || op.kind == format::op_kind::linear)
      weighted.push_back(op.name);
    if (op.kind == format::op_kind::add) adds.push_back(op.name);
  }
  CHECK(weighted == leaves);
  REQUIRE(weighted.size() == 22); // 19 convs of the stem and blocks, 2 projections, fc
  CHECK(weighted[1] == "layer1.0.conv1");
  CHECK(std::find(weighted.begin(), weighted.end(), "layer2.0.shortcut.conv") != weighted.end());
  REQUIRE(adds.size() == 9);
  CHECK(adds.front() == "layer1.0.add");
  CHECK(adds.back() == "layer3.2.add");
  // Every operation's name is unique (error messages and ONNX node names rely on it).
  std::vector<std::string> names;
  for (const auto& op : m.ops) names.push_back(op.name);
  std::sort(names.begin(), names.end());
  CHECK(std::adjacent_find(names.begin(), names.end()) == names.end());
}

TEST_CASE("export: from a trainer, with the trainer's normalisation and training set") {
  const fs::path sample = fs::path(BITGRAD_TEST_DATA_DIR) / "fashion-sample";
  const dataset train_set = load_mnist_format(sample / "train-images-idx3-ubyte.gz",
                                              sample / "train-labels-idx1-ubyte.gz");
  const dataset test_set =
      load_mnist_format(sample / "t10k-images-idx3-ubyte.gz", sample / "t10k-labels-idx1-ubyte.gz");
  auto fp32 = nn::lenet5<float>({.seed = 1});
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  train::trainer tr(
      fp32, net, train_set, test_set,
      {.target_average_bits = 16, .normalise = {.mean = {0.5}, .stddev = {0.25}}, .log = nullptr});
  const temp_dir dir("bitgrad-export-trainer");
  const std::size_t bytes = train::export_model(tr, dir.path / "from_trainer.bgm", 64);
  // The same as the explicit call with the trainer's data and normalisation.
  const std::size_t bytes2 = train::export_model(net, dir.path / "explicit.bgm", train_set,
                                                 {.mean = {0.5}, .stddev = {0.25}}, 64);
  CHECK(bytes == bytes2);
  CHECK(read_file_bytes(dir.path / "from_trainer.bgm", 1 << 24) ==
        read_file_bytes(dir.path / "explicit.bgm", 1 << 24));
  const format::model_file m = format::read_model_file(dir.path / "from_trainer.bgm");
  CHECK(m.mean == std::vector<double>{0.5});
  CHECK(m.stddev == std::vector<double>{0.25});
  CHECK(m.input == format::shape::image(1, 28, 28));
  for (const auto& op : m.ops)
    if (op.kind == format::op_kind::conv2d || op.kind == format::op_kind::linear)
      CHECK(op.input_range > 0); // calibrated on the training set
  // A different normalisation changes the file: the trainer's was used, not a default.
  train::export_model(net, dir.path / "other.bgm", train_set, {.mean = {0.2}, .stddev = {0.3}}, 64);
  CHECK(read_file_bytes(dir.path / "other.bgm", 1 << 24) !=
        read_file_bytes(dir.path / "explicit.bgm", 1 << 24));
}

TEST_CASE("model file: written size matches the trainer's size accounting") {
  std::mt19937 rng(3);
  auto check = [&](auto& net, const char* what) {
    CAPTURE(what);
    const format::model_file m = train::to_model_file(net, format::shape::image(1, 28, 28));
    const double bytes = static_cast<double>(format::to_bytes(m).size());
    const double trainer = train::measure_size(net).bytes();
    MESSAGE(std::string(what) << ": file " << bytes << " bytes, trainer " << trainer << " bytes");
    CHECK(bytes >= trainer);
    CHECK(bytes - trainer < 1024);
  };
  nn::model_options<float, quant::frac_bits> lo{.seed = 1};
  lo.quant.b_min = 1;
  auto lenet = nn::lenet5<float, quant::frac_bits>(lo);
  lenet.visit_quantizers([&](std::string_view, auto& q) {
    std::vector<int> bits(q.groups());
    for (auto& b : bits) b = 1 + int(rng() % 8);
    q.freeze_to(bits);
  });
  check(lenet, "lenet5 frac_bits, random 1..8 bits per channel");
  nn::model_options<float, quant::frac_bits> vo{.seed = 2};
  vo.quant.group_size = 4;
  auto vgg = nn::vgg_small<float, quant::frac_bits>(vo);
  vgg.visit_quantizers([&](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  check(vgg, "vgg_small frac_bits, group 4");
  auto fp32 = nn::lenet5<float>({.seed = 3});
  check(fp32, "lenet5 fp32");
  auto wide = nn::lenet5<float, quant::fixed_bits>({.seed = 4, .quant = {.bits = 16}});
  check(wide, "lenet5 16-bit codes");
  // The 16-bit codes are stored as 16-bit codes.
  const format::model_file m = train::to_model_file(wide, format::shape::image(1, 28, 28));
  CHECK(m.tensors[m.ops[0].weight].bits[0] == 16); // model_options::quant reaches conv1 too
  CHECK(m.tensors[m.ops[3].weight].bits[0] == 16);
}

namespace {
// Layer types of a user's own: the ReLU's arithmetic under new names. user_relu describes
// itself for export through a specialisation of train::export_rule; user_unexported does not.
struct user_relu : nn::relu<float, 4> {
  using nn::relu<float, 4>::pointwise;
};
struct user_unexported : nn::relu<float, 4> {
  using nn::relu<float, 4>::pointwise;
};
} // namespace
} // namespace test_format

// Outside namespace test_format: a specialization must be declared in a namespace enclosing
// bitgrad::train.
template <>
struct bitgrad::train::export_rule<test_format::user_relu> {
  static void emit(train::exporter& e, test_format::user_relu& l) {
    format::operation op;
    op.kind = format::op_kind::relu;
    op.name = l.name();
    e.push(std::move(op));
  }
};

namespace test_format {

TEST_CASE("export: a layer type of the user's joins through export_rule, without it is refused") {
  auto make = [](auto act) {
    return nn::sequential(
        nn::conv2d<float>({.in_channels = 1, .out_channels = 2, .kernel = 3, .name = "c"}),
        std::move(act), nn::flatten<float>("flat"),
        nn::linear<float>({.in_features = 2 * 6 * 6, .out_features = 3, .name = "fc"}));
  };
  auto net = make(user_relu("mine"));
  const format::model_file m = train::to_model_file(net, format::shape::image(1, 8, 8));
  REQUIRE(m.ops.size() == 4);
  CHECK(m.ops[0].kind == format::op_kind::conv2d);
  CHECK(m.ops[1].kind == format::op_kind::relu);
  CHECK(m.ops[1].name == "mine");
  CHECK(m.ops[1].input == 1);
  CHECK(m.ops[2].kind == format::op_kind::flatten);
  CHECK(m.ops[3].kind == format::op_kind::linear);
  auto other = make(user_unexported("theirs"));
  CHECK_THROWS_WITH_AS((void)train::to_model_file(other, format::shape::image(1, 8, 8)),
                       "export: layer theirs (relu) has no model-file operation", config_error);
}

TEST_CASE("export: an unfrozen quantizer is refused") {
  auto net = nn::lenet5<float, quant::frac_bits>({.seed = 1});
  CHECK_THROWS_AS(train::to_model_file(net, format::shape::image(1, 28, 28)), config_error);
}

TEST_CASE("npz export: a stored ZIP of .npy arrays") {
  const format::model_file m = small_model();
  const std::string zip = train::zip_npy_entries(train::npz_entries(m));
  // Walk the local headers: names and contents.
  std::vector<std::string> names;
  std::size_t at = 0;
  auto u16 = [&](std::size_t p) {
    return std::uint32_t(std::uint8_t(zip[p])) | std::uint32_t(std::uint8_t(zip[p + 1])) << 8;
  };
  auto u32 = [&](std::size_t p) { return u16(p) | u16(p + 2) << 16; };
  std::string conv_weight;
  while (u32(at) == 0x04034b50u) {
    const std::uint32_t size = u32(at + 18), name_len = u16(at + 26);
    const std::string name = zip.substr(at + 30, name_len);
    const std::string data = zip.substr(at + 30 + name_len, size);
    CHECK(u32(at + 14) ==
          io::crc32(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
    if (name == "conv1.weight.npy") conv_weight = data;
    names.push_back(name);
    at += 30 + name_len + size;
  }
  CHECK(names == std::vector<std::string>{"conv1.weight.npy", "conv1.bits.npy", "conv1.scale.npy",
                                          "conv1.bias.npy", "fc.weight.npy"});
  CHECK(u32(zip.size() - 22) == 0x06054b50u);
  REQUIRE_FALSE(conv_weight.empty());
  std::istringstream in(conv_weight);
  const auto w = xt::load_npy<float>(in);
  REQUIRE(w.shape().size() == 4);
  CHECK(w.shape()[0] == 3);
  std::vector<float> expect(27);
  m.tensors[0].dequantize(expect.data());
  for (std::size_t i = 0; i < 27; ++i) CHECK(w.data()[i] == expect[i]);
}

TEST_CASE("fuzz seed corpus: valid seeds parse, truncated seeds are rejected") {
  const fs::path dir = fs::path(BITGRAD_TEST_DATA_DIR) / ".." / "fuzz" / "corpus" / "model_file";
  if (const char* out = std::getenv("BITGRAD_WRITE_FUZZ_CORPUS")) {
    // Regenerates the committed corpus: BITGRAD_WRITE_FUZZ_CORPUS=1 ./test_format
    (void)out;
    fs::create_directories(dir);
    const auto a = format::to_bytes(small_model(1));
    auto write = [&](const std::string& name, const std::vector<std::uint8_t>& b) {
      std::ofstream f(dir / name, std::ios::binary);
      f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    };
    write("valid-small.bgm", a);
    nn::model_options<float, quant::frac_bits> o{.seed = 5};
    o.quant.group_size = 2;
    o.quant.b_min = 1;
    o.in_size = 16;
    o.num_classes = 3;
    auto lenet = nn::lenet5<float, quant::frac_bits>(o);
    lenet.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
    write("valid-lenet16.bgm",
          format::to_bytes(train::to_model_file(lenet, format::shape::image(1, 16, 16))));
    write("truncated-header.bgm", std::vector<std::uint8_t>(a.begin(), a.begin() + 20));
    write("truncated-graph.bgm", std::vector<std::uint8_t>(a.begin(), a.begin() + 150));
    write("truncated-tensor.bgm",
          std::vector<std::uint8_t>(a.end() - 40 - (a.size() - 40) / 2, a.end()));
  }
  if (!fs::exists(dir)) return;
  std::size_t total = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);
    const std::vector<std::uint8_t> b((std::istreambuf_iterator<char>(f)),
                                      std::istreambuf_iterator<char>());
    total += b.size();
    CAPTURE(e.path().string());
    if (e.path().filename().string().rfind("valid", 0) == 0)
      CHECK_NOTHROW(format::from_bytes(b));
    else
      CHECK_THROWS_AS(format::from_bytes(b), format_error);
  }
  CHECK(total < 100 * 1024);
}

} // namespace test_format
