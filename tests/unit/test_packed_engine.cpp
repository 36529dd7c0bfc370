// The packed integer engine of the deploy runtime: weights stay packed (resident <= 1.25x the
// file's payload), the engine equals its plain reference twin exactly on every ISA path this
// binary and CPU run, and its top-1 agrees with the float path. Models: LeNet-5 and the
// VGG-style net of nn/models.hpp with random weights, re-coded with random bitwidths 1..8 per
// group of 4 channels, calibrated on synthetic images.
#include <bitgrad/deploy/packed_engine.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/train/export.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace test_packed_engine {

using namespace bitgrad;

namespace {

/// Every conv2d / linear weight of m replaced by random codes at random bitwidths 1..8 per
/// group of 4 channels, scaled like He initialisation (std sqrt(2 / depth)).
void recode_mixed(format::model_file& m, std::uint32_t seed) {
  std::mt19937 rng(seed);
  for (auto& op : m.ops) {
    if (op.kind != format::op_kind::conv2d && op.kind != format::op_kind::linear) continue;
    format::tensor_data& t = m.tensors[op.weight];
    const std::size_t channels = t.channels(), depth = t.per_channel(), g = 4;
    const std::size_t groups = (channels + g - 1) / g;
    std::vector<std::uint8_t> bits(groups);
    std::vector<float> scales(groups);
    std::vector<std::int32_t> codes(t.element_count());
    for (std::size_t i = 0; i < groups; ++i) {
      bits[i] = static_cast<std::uint8_t>(1 + rng() % 8);
      const int lim = bits[i] == 1 ? 1 : (1 << (bits[i] - 1)) - 1;
      const double sd = bits[i] == 1 ? 1.0 : double(lim) / std::sqrt(3.0);
      scales[i] = static_cast<float>(std::sqrt(2.0 / double(depth)) / sd);
      for (std::size_t j = i * g; j < std::min(channels, (i + 1) * g); ++j)
        for (std::size_t p = 0; p < depth; ++p) {
          std::int32_t c = std::int32_t(rng() % std::uint32_t(2 * lim + 1)) - lim;
          if (bits[i] == 1) c = (rng() & 1u) ? 1 : -1;
          codes[j * depth + p] = c;
        }
    }
    t = format::tensor_data::from_codes(t.extents, g, bits, scales, codes);
  }
}

/// Synthetic images: smooth random blobs plus noise, as 8-bit pixels.
std::vector<std::uint8_t> synthetic_pixels(std::size_t n, std::size_t side, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<std::uint8_t> px(n * side * side);
  for (std::size_t i = 0; i < n; ++i) {
    const double cx = u(rng) * side, cy = u(rng) * side, r = 3 + u(rng) * side / 2;
    const double fx = 0.2 + u(rng), fy = 0.2 + u(rng);
    for (std::size_t y = 0; y < side; ++y)
      for (std::size_t x = 0; x < side; ++x) {
        const double d = std::hypot(double(x) - cx, double(y) - cy);
        double v = 255 * std::exp(-d * d / (r * r)) * (0.6 + 0.4 * std::sin(fx * x + fy * y));
        v += 30 * u(rng);
        px[(i * side + y) * side + x] = static_cast<std::uint8_t>(std::clamp(v, 0.0, 255.0));
      }
  }
  return px;
}

/// An exported, re-coded, calibrated model of `net` and synthetic inputs for it.
struct fixture {
  format::model_file m;
  std::vector<float> x;
  std::size_t batch = 0;
};

template <class Net>
fixture make_fixture(Net& net, std::uint32_t seed, std::size_t batch) {
  fixture f;
  net.train(false);
  f.m = train::to_model_file(net, format::shape::image(1, 28, 28), {0.2860}, {0.3530});
  recode_mixed(f.m, seed);
  f.batch = batch;
  const deploy::runtime rt(f.m);
  const std::vector<std::uint8_t> px = synthetic_pixels(batch + 64, 28, seed + 1);
  // Calibrate on 64 other images (as an export does on training images).
  const std::vector<float> cal = rt.normalise(px.data() + batch * 784, 64);
  const std::vector<float> r = rt.input_ranges(cal.data(), 64);
  for (std::size_t i = 0; i < f.m.ops.size(); ++i)
    if (r[i] > 0) f.m.ops[i].input_range = r[i];
  f.x = rt.normalise(px.data(), batch);
  return f;
}

const fixture& lenet() {
  static const fixture f = [] {
    auto net = nn::lenet5<float>({.seed = 4});
    return make_fixture(net, 21, 300);
  }();
  return f;
}
const fixture& vgg() {
  static const fixture f = [] {
    auto net = nn::vgg_small<float>({.seed = 5, .width = 16, .hidden = 64});
    return make_fixture(net, 22, 100);
  }();
  return f;
}

std::size_t agree(const tensor2<float>& a, const tensor2<float>& b) {
  const auto ta = deploy::runtime::top1(a), tb = deploy::runtime::top1(b);
  std::size_t n = 0;
  for (std::size_t i = 0; i < ta.size(); ++i) n += ta[i] == tb[i];
  return n;
}

void check_model(const char* name, const fixture& f) {
  CAPTURE(std::string(name));
  deploy::runtime rt(format::from_bytes(format::to_bytes(f.m)));
  REQUIRE(rt.packed_ready());
  const tensor2<float> want = deploy::ref::run_integer(f.m, f.x.data(), f.batch);
  std::string paths;
  for (int_isa p : all_int_isas) {
    if (!int_isa_supported(p)) continue;
    paths += std::string(" ") + int_isa_name(p);
    CAPTURE(std::string(int_isa_name(p)));
    // Every layer split across the threads (bands of rows at batch 1 and 7), and the default.
    rt.set_engine_parallel_min(p == int_isa::reference ? deploy::engine_parallel_threshold() : 0);
    // Batch 1 (every image alone), an odd batch and the whole batch.
    for (std::size_t b : {std::size_t(1), std::size_t(7), f.batch}) {
      CAPTURE(b);
      const std::size_t n = b == 1 ? 5 : b;
      for (std::size_t at = 0; at + b <= n; at += b) {
        const tensor2<float> got =
            rt.run(f.x.data() + at * rt.input_size(), b, deploy::precision::packed, p);
        REQUIRE(got.shape()[0] == b);
        bool same = true;
        for (std::size_t i = 0; i < got.size(); ++i)
          same = same && got.data()[i] == want.data()[at * rt.output_size() + i];
        CHECK(same);
      }
    }
  }
  MESSAGE(std::string(name) << ": packed engine == reference twin on paths:" << paths);
  const double ratio = double(rt.resident_weight_bytes()) / double(rt.weight_payload_bytes());
  MESSAGE(std::string(name) << ": resident weight bytes " << rt.resident_weight_bytes()
                            << ", payload " << rt.weight_payload_bytes() << ", ratio " << ratio);
  CHECK(ratio <= 1.25);
  // Top-1 agreement with the float path.
  const tensor2<float> fl = rt.run(f.x.data(), f.batch);
  const double agreement = double(agree(fl, want)) / double(f.batch);
  MESSAGE(std::string(name) << ": top-1 agreement with the float path " << agreement);
  CHECK(agreement >= 0.99);
  // The float run decoded the weights once more, which the resident count now shows.
  CHECK(rt.resident_weight_bytes() > rt.weight_payload_bytes() * 4);
}

} // namespace

TEST_CASE("packed engine: LeNet-5, mixed 1..8 bits, exact against the reference on every path") {
  check_model("LeNet-5", lenet());
}

TEST_CASE("packed engine: VGG-style, mixed 1..8 bits, exact against the reference on every path") {
  check_model("VGG-style", vgg());
}

TEST_CASE("packed engine: the plan fuses relu, max-pool and flatten into each layer") {
  const deploy::runtime rt(lenet().m);
  const deploy::integer_plan& plan = rt.engine().plan();
  REQUIRE(plan.steps.size() == 5);
  CHECK(plan.steps[0].pool);
  CHECK(plan.steps[0].relu);
  CHECK(plan.steps[1].pool);
  CHECK(plan.steps[2].in_shape == format::shape::image(16, 4, 4));
  CHECK(plan.steps[2].in_zero == 0); // after a ReLU
  CHECK(plan.steps[0].in_zero == 128);
  CHECK_FALSE(plan.steps[4].out_u8);
  CHECK(plan.steps[3].out_u8);
}

TEST_CASE("packed engine: an uncalibrated model is refused, then calibrated at load") {
  format::model_file m = lenet().m;
  for (auto& op : m.ops) op.input_range = 0;
  deploy::runtime rt(m);
  CHECK_FALSE(rt.packed_ready());
  CHECK_THROWS_WITH_AS(rt.run(lenet().x.data(), 2, deploy::precision::packed),
                       doctest::Contains("no calibrated input ranges"), config_error);
  rt.calibrate(lenet().x.data(), 64);
  CHECK(rt.packed_ready());
  const tensor2<float> y = rt.run(lenet().x.data(), 64, deploy::precision::packed);
  CHECK(double(agree(y, rt.run(lenet().x.data(), 64))) / 64.0 >= 0.95);
}

TEST_CASE("packed engine: a graph it cannot run says which operation") {
  format::model_file m = lenet().m;
  m.ops[1].kind = format::op_kind::relu6;
  const deploy::runtime rt(m);
  CHECK_FALSE(rt.engine().supported());
  CHECK(rt.engine().why().find("operation 1") != std::string::npos);
  CHECK_THROWS_WITH_AS(rt.run(lenet().x.data(), 1, deploy::precision::packed),
                       doctest::Contains("relu6"), config_error);
  // The float path still runs, from the file's codes (nothing was packed).
  CHECK(rt.run(lenet().x.data(), 1).shape()[1] == 10);
  CHECK(rt.resident_weight_bytes() > rt.weight_payload_bytes());
}

TEST_CASE("packed engine: odd geometry (stride, padding, dilation, 3x3 pools, no ReLU, ragged "
          "channels) equals the reference on every path") {
  // input (3, 13, 11) -> conv 3->5 k(3,2) s(2,1) p(1,0) d(1,2) (no relu: zero point 128)
  // -> conv 5->19 k3 p2 + relu + pool 3x3 s3 -> flatten -> linear -> relu -> linear 7
  std::mt19937 rng(8);
  format::model_file m;
  m.input = format::shape::image(3, 13, 11);
  auto add_weights = [&](std::vector<std::uint32_t> ext, bool bias) {
    format::tensor_data t;
    t.extents = ext;
    std::size_t n = 1;
    for (auto e : ext) n *= e;
    t = format::tensor_data::from_floats(ext, std::vector<float>(n, 0.0f));
    m.tensors.push_back(t);
    const auto w = std::uint32_t(m.tensors.size() - 1);
    if (!bias) return std::pair{w, format::no_index};
    std::normal_distribution<float> d(0.0f, 0.3f);
    std::vector<float> b(ext[0]);
    for (auto& v : b) v = d(rng);
    m.tensors.push_back(format::tensor_data::from_floats({ext[0]}, b));
    return std::pair{w, std::uint32_t(m.tensors.size() - 1)};
  };
  auto op = [&](format::op_kind k, const char* name) {
    format::operation o;
    o.kind = k;
    o.name = name;
    o.input = std::uint32_t(m.ops.size());
    m.ops.push_back(o);
    return &m.ops.back();
  };
  {
    auto [w, b] = add_weights({5, 3, 3, 2}, true);
    auto* o = op(format::op_kind::conv2d, "c1");
    o->conv = {.in_channels = 3,
               .out_channels = 5,
               .kernel_h = 3,
               .kernel_w = 2,
               .stride_h = 2,
               .stride_w = 1,
               .pad_h = 1,
               .pad_w = 0,
               .dilation_h = 1,
               .dilation_w = 2};
    o->weight = w, o->bias = b;
  }
  {
    auto [w, b] = add_weights({19, 5, 3, 3}, true);
    auto* o = op(format::op_kind::conv2d, "c2");
    o->conv = {
        .in_channels = 5, .out_channels = 19, .kernel_h = 3, .kernel_w = 3, .pad_h = 2, .pad_w = 2};
    o->weight = w, o->bias = b;
  }
  op(format::op_kind::relu, "r2");
  op(format::op_kind::max_pool2d, "p2")->pool = {3, 3, 3, 3, 0, 0};
  op(format::op_kind::flatten, "f");
  format::infer_shapes(m);
  {
    const std::uint32_t in = std::uint32_t(m.ops.back().output.elements());
    auto [w, b] = add_weights({21, in}, false);
    auto* o = op(format::op_kind::linear, "fc1");
    o->fc = {in, 21};
    o->weight = w, o->bias = b;
  }
  op(format::op_kind::relu, "r3");
  {
    auto [w, b] = add_weights({7, 21}, true);
    auto* o = op(format::op_kind::linear, "fc2");
    o->fc = {21, 7};
    o->weight = w, o->bias = b;
  }
  format::infer_shapes(m);
  recode_mixed(m, 31);
  // One layer kept float32 (requantized to 8 bits per channel by the plan).
  {
    std::normal_distribution<float> d(0.0f, 0.2f);
    std::vector<float> v(7 * 21);
    for (auto& x : v) x = d(rng);
    m.tensors[m.ops.back().weight] = format::tensor_data::from_floats({7, 21}, v);
  }
  std::normal_distribution<float> d(0.0f, 1.0f);
  const std::size_t batch = 9;
  std::vector<float> x(batch * m.input.elements());
  for (auto& v : x) v = d(rng);
  const deploy::runtime probe(m);
  const std::vector<float> r = probe.input_ranges(x.data(), batch);
  for (std::size_t i = 0; i < m.ops.size(); ++i)
    if (r[i] > 0) m.ops[i].input_range = r[i];
  const deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  REQUIRE(rt.packed_ready());
  CHECK(rt.engine().plan().steps[1].in_zero == 128); // c1 has no ReLU
  const tensor2<float> want = deploy::ref::run_integer(m, x.data(), batch);
  for (int_isa p : all_int_isas) {
    if (!int_isa_supported(p)) continue;
    CAPTURE(std::string(int_isa_name(p)));
    for (std::size_t b : {std::size_t(1), batch}) {
      const tensor2<float> got = rt.run(x.data(), b, deploy::precision::packed, p);
      for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got.data()[i] == want.data()[i]);
    }
  }
  // The float path agrees on most images (random net, 8-bit activations).
  CHECK(agree(rt.run(x.data(), batch), want) >= batch - 2);
}

TEST_CASE("packed engine: weights the packed formats refuse leave the float path running") {
  // A linear deeper than packed_max_depth.
  const std::uint32_t in = std::uint32_t(packed_max_depth + 3);
  format::model_file m;
  m.input = format::shape::features(in);
  std::vector<std::int32_t> codes(2 * std::size_t(in));
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = std::int32_t(i % 7) - 3;
  m.tensors.push_back(format::tensor_data::from_codes({2, in}, 1, {4, 4}, {0.5f, 0.25f}, codes));
  format::operation o;
  o.kind = format::op_kind::linear;
  o.name = "wide";
  o.fc = {in, 2};
  o.weight = 0;
  o.input_range = 1.0f;
  m.ops.push_back(o);
  format::infer_shapes(m);
  const deploy::runtime rt(m);
  CHECK_FALSE(rt.packed_ready());
  CHECK(rt.engine().why().find("operation 0 (wide)") != std::string::npos);
  CHECK(rt.engine().why().find("depth") != std::string::npos);
  std::vector<float> x(in, 1.0f);
  const tensor2<float> y = rt.run(x.data(), 1);
  CHECK(y.data()[0] == doctest::Approx(0.5 * (-3 - 2 - 1 + 0 + 1 + 2 + 3) * (in / 7) + 0.5 * [&] {
          double s = 0;
          for (std::size_t i = in / 7 * 7; i < in; ++i) s += double(std::int32_t(i % 7) - 3);
          return s;
        }()));
}

} // namespace test_packed_engine
