// ONNX export: the protobuf encoder's bytes, the graph each form builds from a model file, the
// unsupported-operation error, atomic writes, and export from a trained network. The official
// ONNX checker and ONNX Runtime check the files themselves (tests/interop/).
#include "test_data_common.hpp"

#include <bitgrad/data/dataset.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/onnx/export.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/onnx_export.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace test_onnx {

namespace fs = std::filesystem;
using namespace bitgrad;
using bitgrad_test::temp_dir;

namespace {

std::string hex(const std::string& s) {
  static const char* digits = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (!out.empty()) out += ' ';
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

/// conv (3 channels, groups of 2 at 3 and 1 bits, folded batch norm, bias, calibrated) ->
/// relu6 -> flatten -> linear (float32 weights, no bias, uncalibrated when `calibrate_fc` is
/// false).
format::model_file small_model(bool calibrate_fc = true) {
  format::model_file m;
  m.input = format::shape::image(1, 4, 4);
  m.mean = {0.25};
  m.stddev = {0.5};
  std::vector<std::int32_t> codes(27);
  for (std::size_t i = 0; i < 18; ++i) codes[i] = static_cast<std::int32_t>(i % 7) - 3;
  for (std::size_t i = 18; i < 27; ++i) codes[i] = i % 2 ? 1 : -1;
  m.tensors.push_back(
      format::tensor_data::from_codes({3, 1, 3, 3}, 2, {3, 1}, {0.5f, 0.125f}, codes));
  m.tensors.push_back(format::tensor_data::from_floats({3}, {0.1f, -0.2f, 0.3f})); // bias
  m.tensors.push_back(format::tensor_data::from_floats({3}, {1.5f, 0.75f, 2.0f})); // ch. scale
  std::vector<float> fc(2 * 12);
  for (std::size_t i = 0; i < fc.size(); ++i) fc[i] = static_cast<float>(i % 5) * 0.25f - 0.5f;
  m.tensors.push_back(format::tensor_data::from_floats({2, 12}, fc));
  format::operation conv;
  conv.kind = format::op_kind::conv2d;
  conv.name = "conv";
  conv.conv = {1, 3, 3, 3, 1, 1, 0, 0, 1, 1, 1};
  conv.weight = 0;
  conv.bias = 1;
  conv.channel_scale = 2;
  conv.input_range = 2.54f;
  format::operation act;
  act.kind = format::op_kind::relu6;
  act.name = "act";
  act.input = 1;
  format::operation flat;
  flat.kind = format::op_kind::flatten;
  flat.name = "flat";
  flat.input = 2;
  format::operation lin;
  lin.kind = format::op_kind::linear;
  lin.name = "fc";
  lin.input = 3;
  lin.fc = {12, 2};
  lin.weight = 3;
  lin.input_range = calibrate_fc ? 6.0f : 0.0f;
  m.ops = {conv, act, flat, lin};
  format::infer_shapes(m);
  return m;
}

const onnx::tensor_proto& initializer(const onnx::model_proto& p, const std::string& name) {
  for (const auto& t : p.graph.initializer)
    if (t.name == name) return t;
  FAIL("no initializer " << name);
  return p.graph.initializer.front();
}

template <class U>
std::vector<U> values(const onnx::tensor_proto& t) {
  std::vector<U> v(t.raw_data.size() / sizeof(U));
  std::memcpy(v.data(), t.raw_data.data(), v.size() * sizeof(U));
  return v;
}

std::vector<std::string> op_types(const onnx::model_proto& p) {
  std::vector<std::string> out;
  for (const auto& n : p.graph.node) out.push_back(n.op_type);
  return out;
}

} // namespace

TEST_CASE("protobuf: varints, fixed32, length-delimited fields") {
  using onnx::pb::message;
  CHECK(hex(message::varint_bytes(0)) == "00");
  CHECK(hex(message::varint_bytes(1)) == "01");
  CHECK(hex(message::varint_bytes(127)) == "7F");
  CHECK(hex(message::varint_bytes(128)) == "80 01");
  CHECK(hex(message::varint_bytes(300)) == "AC 02");
  CHECK(hex(message::varint_bytes(~std::uint64_t(0))) == "FF FF FF FF FF FF FF FF FF 01");
  message m;
  m.int64(1, 7); // tag (1 << 3 | 0) = 08
  CHECK(hex(m.bytes()) == "08 07");
  message neg;
  neg.int64(3, -1); // two's complement as a 10-byte varint
  CHECK(hex(neg.bytes()) == "18 FF FF FF FF FF FF FF FF FF 01");
  message f;
  f.float32(2, 1.0f); // tag (2 << 3 | 5) = 15, then 1.0f little-endian
  CHECK(hex(f.bytes()) == "15 00 00 80 3F");
  message s;
  s.string(2, "ab"); // tag (2 << 3 | 2) = 12, length 2
  CHECK(hex(s.bytes()) == "12 02 61 62");
  message outer;
  outer.submessage(20, m); // tag 20 << 3 | 2 = 162 -> A2 01, then the length and the bytes
  CHECK(hex(outer.bytes()) == "A2 01 02 08 07");
  // OperatorSetIdProto {domain "", version 13}: the field bytes by hand.
  onnx::model_proto p;
  p.opset_import = {{"", 13}};
  p.graph.name = "g";
  CHECK(hex(onnx::serialize(p)) == "08 07 3A 03 12 01 67 42 04 0A 00 10 0D");
}

TEST_CASE("onnx export: float32 form decodes every weight as the runtime does") {
  const format::model_file m = small_model();
  const onnx::model_proto p = onnx::to_onnx(m);
  CHECK(p.ir_version == 7);
  REQUIRE(p.opset_import.size() == 1);
  CHECK(p.opset_import[0].version == 13);
  CHECK(op_types(p) == std::vector<std::string>{"Conv", "Clip", "Flatten", "Gemm"});
  // Conv attributes.
  const onnx::node_proto& conv = p.graph.node[0];
  CHECK(conv.name == "conv");
  CHECK(conv.input == std::vector<std::string>{"input", "conv.weight", "conv.bias"});
  std::map<std::string, std::vector<std::int64_t>> attrs;
  for (const auto& a : conv.attribute)
    attrs[a.name] = a.type == onnx::attribute_type::ints ? a.ints : std::vector<std::int64_t>{a.i};
  CHECK(attrs["kernel_shape"] == std::vector<std::int64_t>{3, 3});
  CHECK(attrs["pads"] == std::vector<std::int64_t>{0, 0, 0, 0});
  CHECK(attrs["group"] == std::vector<std::int64_t>{1});
  // Weights: code * group scale * channel scale, in float, as deploy::runtime computes them.
  const auto w = values<float>(initializer(p, "conv.weight"));
  const auto codes = m.tensors[0].codes();
  const float cs[3] = {1.5f, 0.75f, 2.0f}, gs[3] = {0.5f, 0.5f, 0.125f};
  REQUIRE(w.size() == 27);
  for (std::size_t k = 0; k < 27; ++k)
    CHECK(w[k] == static_cast<float>(codes[k]) * gs[k / 9] * cs[k / 9]);
  CHECK(values<float>(initializer(p, "conv.bias")) == std::vector<float>{0.1f, -0.2f, 0.3f});
  // relu6 = Clip(x, 0, 6); the linear layer has no bias: Gemm(x, W) with transB.
  CHECK(values<float>(initializer(p, p.graph.node[1].input[1])) == std::vector<float>{0});
  CHECK(values<float>(initializer(p, p.graph.node[1].input[2])) == std::vector<float>{6});
  const onnx::node_proto& gemm = p.graph.node[3];
  CHECK(gemm.input.size() == 2);
  CHECK(gemm.output == std::vector<std::string>{"output"});
  REQUIRE(gemm.attribute.size() == 1);
  CHECK(gemm.attribute[0].name == "transB");
  CHECK(gemm.attribute[0].i == 1);
  // Input and output: a symbolic batch, the model's shapes.
  REQUIRE(p.graph.input.size() == 1);
  CHECK(p.graph.input[0].shape.size() == 4);
  CHECK(p.graph.input[0].shape[0].param == "batch");
  CHECK(p.graph.input[0].shape[3].value == 4);
  CHECK(p.graph.output[0].shape[1].value == 2);
  // The input contract.
  std::map<std::string, std::string> meta(p.metadata_props.begin(), p.metadata_props.end());
  CHECK(meta["bitgrad.mean"] == "[0.25]");
  CHECK(meta["bitgrad.stddev"] == "[0.5]");
  CHECK(meta["bitgrad.form"] == "float32");
}

TEST_CASE("onnx export: QDQ form stores codes and per-channel scales") {
  const format::model_file m = small_model();
  const onnx::model_proto p = onnx::to_onnx(m, {.form = onnx::form::qdq});
  CHECK(op_types(p) == std::vector<std::string>{"QuantizeLinear", "DequantizeLinear",
                                                "DequantizeLinear", "Conv", "Add", "Clip",
                                                "Flatten", "QuantizeLinear", "DequantizeLinear",
                                                "DequantizeLinear", "Gemm"});
  // The bias is added after the Conv, shaped to broadcast over (N, C, H, W).
  CHECK(p.graph.node[3].input.size() == 2);
  CHECK(p.graph.node[4].input == std::vector<std::string>{p.graph.node[3].output[0], "conv.bias"});
  CHECK(p.graph.node[4].output == std::vector<std::string>{"conv"});
  CHECK(initializer(p, "conv.bias").dims == std::vector<std::int64_t>{3, 1, 1});
  CHECK(values<float>(initializer(p, "conv.bias")) == std::vector<float>{0.1f, -0.2f, 0.3f});
  // conv weight: the codes in int8, scale[o] = group scale * channel scale (the group scale
  // repeated for both channels of group 0), zero points 0, axis 0.
  const auto& wq = initializer(p, "conv.weight_quantized");
  CHECK(wq.type == onnx::data_type::int8);
  CHECK(wq.dims == std::vector<std::int64_t>{3, 1, 3, 3});
  const auto q = values<std::int8_t>(wq);
  const auto codes = m.tensors[0].codes();
  for (std::size_t k = 0; k < 27; ++k) CHECK(q[k] == codes[k]);
  CHECK(values<float>(initializer(p, "conv.weight_scale")) ==
        std::vector<float>{0.5f * 1.5f, 0.5f * 0.75f, 0.125f * 2.0f});
  CHECK(values<std::int8_t>(initializer(p, "conv.weight_zero_point")) ==
        std::vector<std::int8_t>{0, 0, 0});
  const onnx::node_proto& dq = p.graph.node[2];
  CHECK(dq.input[0] == "conv.weight_quantized");
  REQUIRE(dq.attribute.size() == 1);
  CHECK(dq.attribute[0].name == "axis");
  CHECK(dq.attribute[0].i == 0);
  // The activation: per-tensor int8 with scale = range / 127, zero point 0.
  CHECK(values<float>(initializer(p, "conv.input_scale")) == std::vector<float>{2.54f / 127.0f});
  CHECK(initializer(p, "conv.input_zero_point").type == onnx::data_type::int8);
  CHECK(initializer(p, "conv.input_scale").dims.empty());
  // The float32 linear weights are requantized per channel to max|w| / 127, as the runtime's
  // int8 path does.
  const auto fq = values<std::int8_t>(initializer(p, "fc.weight_quantized"));
  const auto fs = values<float>(initializer(p, "fc.weight_scale"));
  const auto& fw = m.tensors[3].values;
  for (std::size_t o = 0; o < 2; ++o) {
    float amax = 0;
    for (std::size_t k = 0; k < 12; ++k) amax = std::max(amax, std::fabs(fw[o * 12 + k]));
    CHECK(fs[o] == amax / 127.0f);
    for (std::size_t k = 0; k < 12; ++k)
      CHECK(std::fabs(fq[o * 12 + k] * fs[o] - fw[o * 12 + k]) <= fs[o] / 2);
  }
}

TEST_CASE("onnx export: an uncalibrated layer gets no activation quantization") {
  const onnx::model_proto p = onnx::to_onnx(small_model(false), {.form = onnx::form::qdq});
  CHECK(op_types(p) == std::vector<std::string>{"QuantizeLinear", "DequantizeLinear",
                                                "DequantizeLinear", "Conv", "Add", "Clip",
                                                "Flatten", "DequantizeLinear", "Gemm"});
  std::map<std::string, std::string> meta(p.metadata_props.begin(), p.metadata_props.end());
  CHECK(meta["bitgrad.activation_quantization"].find("off") != std::string::npos);
}

TEST_CASE("onnx export: int4 form packs groups of at most 4 bits two per byte") {
  CHECK(onnx::detail::pack_int4({1, -1, 7, -8, 3}) == std::string("\xF1\x87\x03", 3));
  const format::model_file m = small_model();
  const onnx::model_proto p = onnx::to_onnx(m, {.form = onnx::form::qdq_int4});
  CHECK(p.ir_version == 10);
  CHECK(p.opset_import[0].version == 21);
  const auto& wq = initializer(p, "conv.weight_quantized"); // 3 and 1 bits: int4
  CHECK(wq.type == onnx::data_type::int4);
  CHECK(wq.raw_data.size() == 14); // 27 codes
  const auto codes = m.tensors[0].codes();
  for (std::size_t k = 0; k < 27; ++k) {
    const auto byte = static_cast<unsigned char>(wq.raw_data[k / 2]);
    const int nibble = k % 2 ? byte >> 4 : byte & 15;
    CHECK((nibble >= 8 ? nibble - 16 : nibble) == codes[k]);
  }
  CHECK(initializer(p, "conv.weight_zero_point").type == onnx::data_type::int4);
  // float32 weights are requantized to 8 bits: they stay int8.
  CHECK(initializer(p, "fc.weight_quantized").type == onnx::data_type::int8);
}

TEST_CASE("onnx export: every operation kind has its ONNX operators") {
  format::model_file m;
  m.input = format::shape::image(2, 8, 8);
  m.tensors.push_back(format::tensor_data::from_floats({2, 1, 3, 3}, std::vector<float>(18, 0.1f)));
  auto op = [&](format::op_kind k, std::uint32_t in) {
    format::operation o;
    o.kind = k;
    o.input = in;
    o.name = "same"; // every operation named alike: names must still come out unique
    return o;
  };
  auto conv = op(format::op_kind::conv2d, 0);
  conv.conv = {2, 2, 3, 3, 2, 2, 2, 2, 2, 2, 2}; // stride, pad, dilation 2, 2 groups -> (2,4,4)
  conv.weight = 0;
  auto maxp = op(format::op_kind::max_pool2d, 1);
  maxp.pool = {2, 2, 1, 1, 1, 1}; // (2, 5, 5)
  auto avgp = op(format::op_kind::avg_pool2d, 2);
  avgp.pool = {3, 3, 1, 1, 1, 1}; // (2, 5, 5)
  auto add = op(format::op_kind::add, 3);
  add.input_b = 2;
  m.ops = {conv,
           maxp,
           avgp,
           add,
           op(format::op_kind::relu, 4),
           op(format::op_kind::relu6, 5),
           op(format::op_kind::global_avg_pool, 6),
           op(format::op_kind::flatten, 5)};
  // Last operation: flatten of value 5 (the relu output); the gap output is unused.
  format::infer_shapes(m);
  const onnx::model_proto p = onnx::to_onnx(m);
  CHECK(op_types(p) == std::vector<std::string>{"Conv", "MaxPool", "AveragePool", "Add", "Relu",
                                                "Clip", "GlobalAveragePool", "Flatten", "Flatten"});
  std::set<std::string> outputs, nodes;
  for (const auto& n : p.graph.node) {
    for (const auto& o : n.output) CHECK(outputs.insert(o).second);
    CHECK(nodes.insert(n.name).second);
  }
  for (const auto& t : p.graph.initializer) CHECK(outputs.insert(t.name).second);
  const auto& conv_node = p.graph.node[0];
  for (const auto& a : conv_node.attribute) {
    if (a.name == "dilations" || a.name == "strides")
      CHECK(a.ints == std::vector<std::int64_t>{2, 2});
    if (a.name == "pads") CHECK(a.ints == std::vector<std::int64_t>{2, 2, 2, 2});
    if (a.name == "group") CHECK(a.i == 2);
  }
  bool count_include_pad = false;
  for (const auto& a : p.graph.node[2].attribute)
    count_include_pad |= a.name == "count_include_pad" && a.i == 1;
  CHECK(count_include_pad);
  CHECK(p.graph.node[3].input[1] == p.graph.node[1].output[0]); // add reads the max pool
  CHECK(p.graph.node[8].input[0] == p.graph.node[4].output[0]); // flatten reads the relu
  CHECK(p.graph.node.back().output[0] == "output");
  CHECK(p.graph.output[0].shape[1].value == 50);
}

TEST_CASE("onnx export: an operation it does not support is named in the error") {
  format::model_file m = small_model();
  m.ops[1].kind = static_cast<format::op_kind>(42); // a kind from a future format version
  m.ops[1].name = "mystery";
  try {
    (void)onnx::to_onnx(m);
    FAIL("no error");
  } catch (const config_error& e) {
    const std::string what = e.what();
    CHECK(what.find("operation 1 (mystery)") != std::string::npos);
    CHECK(what.find("kind 42") != std::string::npos);
    CHECK(what.find("does not support") != std::string::npos);
  }
  // An inconsistent model is refused too (bad tensor reference).
  format::model_file bad = small_model();
  bad.ops[0].weight = 17;
  CHECK_THROWS_AS((void)onnx::to_onnx(bad), config_error);
}

TEST_CASE("onnx export: writes are atomic") {
  temp_dir dir;
  const format::model_file m = small_model();
  // A folder that does not exist: io_error, nothing written.
  CHECK_THROWS_AS(onnx::write_onnx_file(dir / "missing" / "m.onnx", m), io_error);
  CHECK_FALSE(fs::exists(dir / "missing"));
  // A failed export leaves an existing file as it was and no temporary behind.
  const fs::path out = dir / "m.onnx";
  const std::size_t bytes = onnx::write_onnx_file(out, m);
  CHECK(fs::file_size(out) == bytes);
  const std::string before = bitgrad_test::read_text(out);
  CHECK(before == onnx::to_onnx_bytes(m));
  format::model_file bad = m;
  bad.ops[2].kind = static_cast<format::op_kind>(99);
  CHECK_THROWS_AS(onnx::write_onnx_file(out, bad), config_error);
  CHECK(bitgrad_test::read_text(out) == before);
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++files;
  CHECK(files == 1);
}

TEST_CASE("onnx export: a trained network exports as its .bgm converts") {
  auto net = nn::lenet5<float, quant::fixed_bits>({.seed = 3, .quant = {.bits = 3}});
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  dataset data;
  data.channels = 1;
  data.height = data.width = 28;
  data.classes = 10;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> byte(0, 255);
  for (std::size_t i = 0; i < 40; ++i) {
    for (std::size_t k = 0; k < 784; ++k)
      data.pixels.push_back(static_cast<std::uint8_t>(byte(rng)));
    data.labels.push_back(static_cast<std::int32_t>(i % 10));
  }
  const loader_options normalise{.mean = {0.286}, .stddev = {0.353}};
  temp_dir dir;
  train::export_model(net, dir / "m.bgm", data, normalise);
  for (onnx::form f : {onnx::form::float32, onnx::form::qdq, onnx::form::qdq_int4}) {
    train::export_onnx(net, dir / "direct.onnx", data, normalise, {.form = f});
    const std::string converted =
        onnx::to_onnx_bytes(format::read_model_file(dir / "m.bgm"), {.form = f});
    CHECK(bitgrad_test::read_text(dir / "direct.onnx") == converted);
  }
  const onnx::model_proto p =
      onnx::to_onnx(train::calibrated_model_file(net, data, normalise), {.form = onnx::form::qdq});
  std::size_t quantize = 0;
  for (const auto& n : p.graph.node) quantize += n.op_type == "QuantizeLinear";
  CHECK(quantize == 5); // every conv / linear input, calibrated
}

TEST_CASE("onnx export: form names") {
  CHECK(onnx::parse_form("float32") == onnx::form::float32);
  CHECK(onnx::parse_form("qdq") == onnx::form::qdq);
  CHECK(onnx::parse_form("qdq-int4") == onnx::form::qdq_int4);
  CHECK_THROWS_AS(onnx::parse_form("int3"), config_error);
}

TEST_CASE("onnx export: act_quant becomes QuantizeLinear / DequantizeLinear on the learned grid") {
  // small_model with an act_quant between relu6 and flatten: 3 channels in groups of 2.
  auto with_act = [](format::act_quant_attrs a) {
    format::model_file m = small_model();
    format::operation q;
    q.kind = format::op_kind::act_quant;
    q.name = "aq";
    q.input = 2;
    q.act = std::move(a);
    m.ops.insert(m.ops.begin() + 2, q);
    m.ops[3].input = 3, m.ops[4].input = 4;
    format::infer_shapes(m);
    return m;
  };
  SUBCASE("two unsigned groups at 2 and 4 bits: per-channel scales, clamped to the grid") {
    const auto p = onnx::to_onnx(with_act({.group_size = 2, .bits = {2, 4}, .ranges = {3, 1.5f}}));
    CHECK(op_types(p) == std::vector<std::string>{"Conv", "Clip", "Max", "Min", "QuantizeLinear",
                                                  "DequantizeLinear", "Flatten", "Gemm"});
    const onnx::node_proto& q = p.graph.node[4];
    const onnx::node_proto& dq = p.graph.node[5];
    CHECK(dq.name == "aq");
    CHECK(dq.output[0] == "aq");
    CHECK(p.graph.node[6].input[0] == "aq");
    REQUIRE(q.attribute.size() == 1);
    CHECK(q.attribute[0].name == "axis");
    CHECK(q.attribute[0].i == 1);
    // s = range / L: 3 / 3 for channels 0 and 1, 1.5 / 15 for channel 2.
    CHECK(values<float>(initializer(p, q.input[1])) == std::vector<float>{1.0f, 1.0f, 0.1f});
    CHECK(initializer(p, q.input[2]).type == onnx::data_type::uint8);
    CHECK(values<std::uint8_t>(initializer(p, q.input[2])) == std::vector<std::uint8_t>{0, 0, 0});
    CHECK(initializer(p, p.graph.node[2].input[1]).dims == std::vector<std::int64_t>{3, 1, 1});
    CHECK(values<float>(initializer(p, p.graph.node[2].input[1])) == std::vector<float>{0, 0, 0});
    CHECK(values<float>(initializer(p, p.graph.node[3].input[1])) ==
          std::vector<float>{3, 3, 15 * 0.1f});
    CHECK(dq.input[0] == q.output[0]);
    CHECK(dq.input[1] == q.input[1]);
  }
  SUBCASE("one unsigned group at 8 bits: per-tensor, uint8 is the grid (no clamp)") {
    const auto p = onnx::to_onnx(with_act({.group_size = 3, .bits = {8}, .ranges = {5.1f}}));
    CHECK(op_types(p) == std::vector<std::string>{"Conv", "Clip", "QuantizeLinear",
                                                  "DequantizeLinear", "Flatten", "Gemm"});
    CHECK(p.graph.node[2].attribute.empty());
    CHECK(initializer(p, p.graph.node[2].input[1]).dims.empty());
    CHECK(values<float>(initializer(p, p.graph.node[2].input[1])) ==
          std::vector<float>{5.1f / 255.0f});
  }
  SUBCASE("signed at 8 bits: int8, clamped to -127..127 (int8 holds -128)") {
    const auto p = onnx::to_onnx(
        with_act({.is_signed = true, .group_size = 3, .bits = {8}, .ranges = {1.27f}}));
    CHECK(op_types(p)[2] == "Max");
    const onnx::node_proto& q = p.graph.node[4];
    CHECK(initializer(p, q.input[2]).type == onnx::data_type::int8);
    const float s = 1.27f / 127.0f;
    CHECK(values<float>(initializer(p, p.graph.node[2].input[1])) == std::vector<float>{-127 * s});
    CHECK(values<float>(initializer(p, p.graph.node[3].input[1])) == std::vector<float>{127 * s});
  }
  SUBCASE("more than 8 bits is refused, naming the operation") {
    CHECK_THROWS_WITH_AS(
        (void)onnx::to_onnx(with_act({.group_size = 2, .bits = {4, 9}, .ranges = {1, 1}})),
        "onnx export: operation 2 (aq): act_quant group 1 has 9 bits; QuantizeLinear (opset 13) "
        "holds at most 8",
        config_error);
  }
}

} // namespace test_onnx
