// The packed integer engine of the deploy runtime: weights stay packed (resident <= 1.25x the
// file's payload), the engine equals its plain reference twin exactly on every ISA path this
// binary and CPU run, and its top-1 agrees with the float path. Models: LeNet-5 and the
// VGG-style net of nn/models.hpp with random weights, re-coded with random bitwidths 1..8 per
// group of 4 channels, calibrated on synthetic images.
#include <bitgrad/deploy/packed_engine.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/format/model_file.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/export.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace test_packed_engine {

using namespace bitgrad;

namespace {

/// Every conv2d / linear weight of m replaced by random codes at random bitwidths 1..8 per
/// group of 4 channels, scaled like He initialisation (std sqrt(2 / depth)). lone_last > 0:
/// groups of 3 channels, every one at 8 bits but the last, at lone_last bits: the last n % 3
/// channels (or 3) form a bit class of their own, whose one tile starts off a multiple of 4
/// (and of 16) when n is a multiple of 16: at n - 1. min_bits: the least bitwidth (2: no 1-bit
/// group, so convs whose kernel rows are not whole quads get padded rows, packed_engine.hpp).
void recode_mixed(format::model_file& m, std::uint32_t seed, int lone_last = 0, int min_bits = 1) {
  std::mt19937 rng(seed);
  for (auto& op : m.ops) {
    if (op.kind != format::op_kind::conv2d && op.kind != format::op_kind::linear) continue;
    format::tensor_data& t = m.tensors[op.weight];
    const std::size_t channels = t.channels(), depth = t.per_channel();
    const std::size_t g = std::min<std::size_t>(lone_last > 0 ? 3 : 4, channels);
    const std::size_t groups = (channels + g - 1) / g;
    std::vector<std::uint8_t> bits(groups);
    std::vector<float> scales(groups);
    std::vector<std::int32_t> codes(t.element_count());
    for (std::size_t i = 0; i < groups; ++i) {
      bits[i] = static_cast<std::uint8_t>(min_bits + int(rng() % std::uint32_t(9 - min_bits)));
      if (lone_last > 0) bits[i] = static_cast<std::uint8_t>(i + 1 == groups ? lone_last : 8);
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
fixture make_fixture(Net& net, std::uint32_t seed, std::size_t batch, int lone_last = 0,
                     int min_bits = 1) {
  fixture f;
  net.train(false);
  f.m = train::to_model_file(net, format::shape::image(1, 28, 28), {0.2860}, {0.3530});
  recode_mixed(f.m, seed, lone_last, min_bits);
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

/// The packed engine's logits of images [at, at + b) of f on path p equal rows [at, at + b) of
/// want (the reference twin's logits of all of f's images), bit for bit.
void check_images(deploy::runtime& rt, const fixture& f, const tensor2<float>& want, std::size_t at,
                  std::size_t b, int_isa p) {
  const tensor2<float> got =
      rt.run(f.x.data() + at * rt.input_size(), b, deploy::precision::packed, p);
  REQUIRE(got.shape()[0] == b);
  bool same = true;
  for (std::size_t i = 0; i < got.size(); ++i)
    same = same && got.data()[i] == want.data()[at * rt.output_size() + i];
  CHECK(same);
}

/// The engine equals ref::run_integer on every path; resident weights <= 1.25x the payload;
/// top-1 agreement with the float path >= min_agreement.
void check_model(const char* name, const fixture& f, double min_agreement = 0.99) {
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
    // Every stride-1 conv that fits on the flat plane (flat_conv.hpp), then none (im2row).
    for (std::size_t flat : {std::size_t(0), std::numeric_limits<std::size_t>::max()})
      for (std::size_t b : {std::size_t(1), std::size_t(7), f.batch}) { // batch 1, odd, whole
        CAPTURE(flat);
        rt.set_engine_flat_min_width(flat);
        CAPTURE(b);
        const std::size_t n = b == 1 ? 5 : b;
        for (std::size_t at = 0; at + b <= n; at += b) check_images(rt, f, want, at, b, p);
      }
  }
  rt.set_engine_flat_min_width(deploy::flat_conv_min_width, deploy::flat_padded_min_width);
  MESSAGE(std::string(name) << ": packed engine == reference twin on paths:" << paths);
  const double ratio = double(rt.resident_weight_bytes()) / double(rt.weight_payload_bytes());
  MESSAGE(std::string(name) << ": resident weight bytes " << rt.resident_weight_bytes()
                            << ", payload " << rt.weight_payload_bytes() << ", ratio " << ratio);
  CHECK(ratio <= 1.25);
  // Top-1 agreement with the float path.
  const tensor2<float> fl = rt.run(f.x.data(), f.batch);
  const double agreement = double(agree(fl, want)) / double(f.batch);
  MESSAGE(std::string(name) << ": top-1 agreement with the float path " << agreement);
  CHECK(agreement >= min_agreement);
  // The float run decoded the weights once more, which the resident count now shows.
  CHECK(rt.resident_weight_bytes() > rt.weight_payload_bytes() * 4);
}

} // namespace

TEST_CASE("packed engine: LeNet-5, mixed 1..8 bits, exact against the reference on every path") {
  check_model("LeNet-5", lenet());
}

TEST_CASE("packed engine: LeNet-5, mixed 2..8 bits (conv2 on padded kernel rows, flat), exact "
          "against the reference on every path") {
  auto net = nn::lenet5<float>({.seed = 8});
  const fixture f = make_fixture(net, 25, 100, 0, 2);
  {
    const deploy::runtime rt(format::from_bytes(format::to_bytes(f.m)));
    REQUIRE(rt.packed_ready());
    // conv2: 6 channels, 5 x 5 (kw C = 30 -> 32), 8 x 8 output rows.
    CHECK(rt.engine().direct(0));
    CHECK(rt.engine().padded_rows(1));
    CHECK(rt.engine().flat(1));
    CHECK(rt.engine().weights(1).depth() == 160);
  }
  check_model("LeNet-5, 2..8 bits", f);
}

TEST_CASE("packed engine: VGG-style, mixed 1..8 bits, exact against the reference on every path") {
  check_model("VGG-style", vgg());
}

TEST_CASE("packed engine: stride-1 convs with kw C % 4 == 0 and output rows of at least "
          "flat_conv_min_width pixels run on the flat plane, the others not") {
  deploy::runtime rt(format::from_bytes(format::to_bytes(vgg().m)));
  REQUIRE(rt.packed_ready());
  const deploy::packed_engine& e = rt.engine();
  auto count = [&] {
    std::size_t flat = 0;
    for (std::size_t k = 0; k < e.plan().steps.size(); ++k) {
      const deploy::integer_step& s = e.plan().steps[k];
      if (!s.conv) continue;
      flat += e.flat(k);
      if (e.flat(k)) {
        CHECK_FALSE(e.direct(k));
        CHECK(s.c.stride_h == 1);
        CHECK(s.c.stride_w == 1);
        CHECK(s.in_shape.dims[0] * s.c.kernel_w % 4 == 0);
      }
    }
    return flat;
  };
  // The 28-pixel 16 -> 16 conv and the two 14-pixel ones (flat_conv_min_width = 14; the first
  // conv, 1 channel, is direct); from 15 pixels the 28-pixel conv only.
  CHECK(count() == 3);
  rt.set_engine_flat_min_width(15);
  CHECK(count() == 1);
  rt.set_engine_flat_min_width(0);
  CHECK(count() >= 2);
  rt.set_engine_flat_min_width(std::numeric_limits<std::size_t>::max());
  CHECK(count() == 0);
}

// The output stage of a tile whose channels are consecutive reads scale and bias in whole lane
// batches from the tile's first channel, here n - 1 in the 16-, 32- and 64-channel layers: up to
// n - 1 + lanes, inside the arrays' padding (output::padded_length); under AddressSanitizer
// (make asan) a padding to a multiple of 16 only fails here.
TEST_CASE("packed engine: a bit class of a layer's last channels alone, exact against the "
          "reference on every path") {
  // What counts here is the exactness and the reads; on 40 and 20 images of a random network
  // one near-tie between the two paths' logits moves the top-1 agreement by 2.5 or 5 points.
  auto lenet_net = nn::lenet5<float>({.seed = 6});
  check_model("LeNet-5, last group apart", make_fixture(lenet_net, 23, 40, 3), 0.9);
  auto vgg_net = nn::vgg_small<float>({.seed = 7, .width = 16, .hidden = 64});
  check_model("VGG-style, last group apart", make_fixture(vgg_net, 24, 20, 5), 0.9);
}

// Tile pairs (packed_gemm.hpp: two 16-channel tiles of one bit class per micro-kernel call,
// where the path has them): with every channel at 8 bits each layer is one bit class, so the
// 32- and 64-channel convs (flat and im2row, one panel and K = 576 over two) and the 256-wide
// fc1 run as pairs; the 10-channel fc2 as one tile.
TEST_CASE("packed engine: VGG-style at width 32, one bit class per layer (tile pairs), exact "
          "against the reference on every path") {
  auto net = nn::vgg_small<float>({.seed = 8});
  check_model("VGG-style width 32, 8 bits", make_fixture(net, 25, 20, 8), 0.9);
}

// The linear tail (packed_engine::linear_tail): the linears after the flatten run on the whole
// batch after the image blocks, from a batch-wide features buffer the blocks write. Blocks of
// 1, 3 and 64 images and the automatic size, batches 1, 7, 20 and 257 (257: a last block of 2
// images of 3, and more rows than two of packed_gemm's 64-row blocks per thread), every layer
// split across the threads and the default: the same logits as the reference twin.
TEST_CASE("packed engine: the linear tail on the whole batch after image blocks, exact against "
          "the reference on every path") {
  auto net = nn::vgg_small<float>({.seed = 9, .width = 8, .hidden = 40});
  const fixture f = make_fixture(net, 26, 257);
  deploy::runtime rt(format::from_bytes(format::to_bytes(f.m)));
  REQUIRE(rt.packed_ready());
  const deploy::packed_engine& e = rt.engine();
  REQUIRE(e.plan().steps.size() == 6); // conv1..conv4, fc1, fc2
  CHECK(e.linear_tail() == 4);
  const tensor2<float> want = deploy::ref::run_integer(f.m, f.x.data(), f.batch);
  for (int_isa p : all_int_isas) {
    if (!int_isa_supported(p)) continue;
    CAPTURE(std::string(int_isa_name(p)));
    for (std::size_t parallel_min : {std::size_t(0), deploy::engine_parallel_threshold()})
      for (std::size_t block : {std::size_t(0), std::size_t(1), std::size_t(3), std::size_t(64)})
        for (std::size_t b : {std::size_t(1), std::size_t(7), std::size_t(20), std::size_t(257)}) {
          CAPTURE(parallel_min);
          CAPTURE(block);
          CAPTURE(b);
          rt.set_engine_parallel_min(parallel_min);
          rt.set_block_images(block);
          check_images(rt, f, want, b == 257 ? 0 : 250 - b, b, p);
        }
  }
  // LeNet-5's fc1..fc3 form its tail.
  CHECK(deploy::runtime(lenet().m).engine().linear_tail() == 2);
}

TEST_CASE("packed engine: im2row runs of every copier width (kernel rows of kw C = 5 to 35 "
          "bytes), with pads and strides, equal the reference on every path") {
  // conv 1->C k3 p1 (direct) -> relu -> conv C->5 (im2row: C > 4) -> relu -> flatten -> linear.
  struct shape {
    std::size_t c, kernel, pad, stride;
  };
  const shape shapes[] = {{5, 1, 0, 1}, {5, 2, 1, 1}, {5, 3, 2, 2}, {6, 3, 1, 1},
                          {6, 5, 0, 1}, {7, 4, 0, 2}, {5, 7, 3, 1}};
  for (const shape& g : shapes) {
    const std::size_t c = g.c, kernel = g.kernel, pad = g.pad, stride = g.stride;
    CAPTURE(c);
    CAPTURE(kernel);
    CAPTURE(pad);
    CAPTURE(stride);
    const std::size_t out = (28 + 2 * pad - kernel) / stride + 1;
    auto net = nn::sequential(
        nn::conv2d<float>({.in_channels = 1, .out_channels = c, .padding = 1, .seed = 1}),
        nn::relu<float, 4>("r1"),
        nn::conv2d<float>({.in_channels = c,
                           .out_channels = 5,
                           .kernel = kernel,
                           .stride = stride,
                           .padding = pad,
                           .seed = 2}),
        nn::relu<float, 4>("r2"), nn::flatten<float>("f"),
        nn::linear<float>({.in_features = 5 * out * out, .out_features = 10, .seed = 3}));
    const fixture f = make_fixture(net, std::uint32_t(40 + c * 8 + kernel), 9);
    deploy::runtime rt(format::from_bytes(format::to_bytes(f.m)));
    REQUIRE(rt.packed_ready());
    CHECK_FALSE(rt.engine().direct(1));
    // im2row (kernel rows padded or not: a stride-1 conv whose bits allow it has them).
    rt.set_engine_flat_min_width(std::numeric_limits<std::size_t>::max());
    CHECK_FALSE(rt.engine().flat(1));
    const tensor2<float> want = deploy::ref::run_integer(f.m, f.x.data(), f.batch);
    for (int_isa p : all_int_isas) {
      if (!int_isa_supported(p)) continue;
      CAPTURE(std::string(int_isa_name(p)));
      const tensor2<float> got = rt.run(f.x.data(), f.batch, deploy::precision::packed, p);
      for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got.data()[i] == want.data()[i]);
    }
  }
}

TEST_CASE("packed engine: stride-1 convs whose kernel rows are not whole quads (kw C % 4 != 0) "
          "run on padded kernel rows, flat or im2row, with or without a pool, pads, equal the "
          "reference on every path") {
  // conv 1->C k3 p1 (direct) -> relu -> conv C->n (stride 1) -> relu [-> max-pool 2x2]
  // -> flatten -> linear; every group 2..8 bits (zero codes), then one with 1-bit groups.
  struct shape {
    std::size_t c, kernel, pad, n;
    bool pool;
  };
  const shape shapes[] = {{6, 5, 0, 16, true},  {6, 5, 0, 16, false}, {5, 3, 1, 5, true},
                          {7, 3, 2, 19, false}, {6, 1, 0, 3, true},   {5, 7, 3, 17, true},
                          {9, 3, 0, 7, false},  {6, 5, 4, 4, true}};
  for (const shape& g : shapes)
    for (int min_bits : {2, 1}) {
      CAPTURE(g.c);
      CAPTURE(g.kernel);
      CAPTURE(g.pad);
      CAPTURE(g.n);
      CAPTURE(g.pool);
      CAPTURE(min_bits);
      const std::size_t out = 28 + 2 * g.pad - g.kernel + 1;
      const std::size_t flat_in = g.n * (g.pool ? out / 2 : out) * (g.pool ? out / 2 : out);
      auto conv2 = nn::conv2d<float>({.in_channels = g.c,
                                      .out_channels = g.n,
                                      .kernel = g.kernel,
                                      .padding = g.pad,
                                      .seed = 2});
      auto head = nn::linear<float>({.in_features = flat_in, .out_features = 10, .seed = 3});
      auto conv1 =
          nn::conv2d<float>({.in_channels = 1, .out_channels = g.c, .padding = 1, .seed = 1});
      auto check = [&](auto& net) {
        const fixture f =
            make_fixture(net, std::uint32_t(60 + g.c * 8 + g.kernel + g.pad), 9, 0, min_bits);
        deploy::runtime rt(format::from_bytes(format::to_bytes(f.m)));
        REQUIRE(rt.packed_ready());
        const deploy::packed_engine& e = rt.engine();
        REQUIRE_FALSE(e.direct(1));
        std::size_t second = 0, convs = 0; // the second conv2d op
        for (std::size_t i = 0; i < f.m.ops.size() && convs < 2; ++i)
          if (f.m.ops[i].kind == format::op_kind::conv2d) second = i, ++convs;
        REQUIRE(convs == 2);
        const format::tensor_data& w = f.m.tensors[f.m.ops[second].weight];
        const bool one_bit = std::find(w.bits.begin(), w.bits.end(), 1) != w.bits.end();
        CHECK(e.padded_rows(1) == !one_bit);
        CHECK(e.flat(1) == !one_bit);
        if (e.padded_rows(1))
          CHECK(e.weights(1).depth() == g.kernel * ((g.kernel * g.c + 3) / 4 * 4));
        const tensor2<float> want = deploy::ref::run_integer(f.m, f.x.data(), f.batch);
        for (int_isa p : all_int_isas) {
          if (!int_isa_supported(p)) continue;
          CAPTURE(std::string(int_isa_name(p)));
          rt.set_engine_parallel_min(0); // batch 1: bands of output rows per thread
          for (std::size_t flat :
               {deploy::flat_padded_min_width, std::numeric_limits<std::size_t>::max()})
            for (std::size_t b : {std::size_t(1), f.batch}) {
              CAPTURE(flat);
              CAPTURE(b);
              rt.set_engine_flat_min_width(deploy::flat_conv_min_width, flat);
              // The knob moves the padded conv between the flat plane and im2row.
              CHECK(e.flat(1) == (!one_bit && flat != std::numeric_limits<std::size_t>::max()));
              const tensor2<float> got = rt.run(f.x.data(), b, deploy::precision::packed, p);
              for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got.data()[i] == want.data()[i]);
            }
        }
      };
      if (g.pool) {
        auto net = nn::sequential(conv1, nn::relu<float, 4>("r1"), conv2, nn::relu<float, 4>("r2"),
                                  nn::max_pool2d<float>({.kernel = 2, .name = "p"}),
                                  nn::flatten<float>("f"), head);
        check(net);
      } else {
        auto net = nn::sequential(conv1, nn::relu<float, 4>("r1"), conv2, nn::relu<float, 4>("r2"),
                                  nn::flatten<float>("f"), head);
        check(net);
      }
    }
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
  // conv1 (C = 1, K = 25) runs as a direct convolution, conv2 (C = 6) as im2row + packed_gemm.
  CHECK(rt.engine().direct(0));
  CHECK_FALSE(rt.engine().direct(1));
  CHECK_FALSE(rt.engine().direct(2));
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
  CHECK(rt.engine().direct(0));       // C = 3, K = 18: the direct path (with dilation)
  CHECK_FALSE(rt.engine().direct(1)); // C = 5
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

// Activation grids learned by the trainer (act_quant, issue #22) on the integer path.
namespace {

/// LeNet-5 with an activation quantizer after each ReLU, every one frozen at `act_bits` (one
/// group), weights frozen at 2..7 bits, act ranges calibrated on synthetic images; exported
/// with the first conv's input range calibrated (the network input has no act grid).
fixture act_lenet(int act_bits, std::size_t batch) {
  nn::act_model_options<float, quant::frac_bits> o{.seed = 11};
  o.quant.group_size = 2;
  auto net = nn::lenet5(o);
  net.train(false);
  const std::vector<std::uint8_t> px = synthetic_pixels(batch + 64, 28, 40 + act_bits);
  tensor4<float> cal = tensor4<float>::from_shape({64, 1, 28, 28});
  for (std::size_t i = 0; i < cal.size(); ++i)
    cal.data()[i] = float((px[batch * 784 + i] / 255.0 - 0.2860) / 0.3530);
  (void)net.forward(cal); // calibrates the activation ranges
  nn::visit_activation_quantizers(
      net, [&](std::string_view, auto& q) { q.freeze_to(std::vector<int>(q.groups(), act_bits)); });
  int w = 0;
  net.visit_quantizers([&](std::string_view, auto& q) {
    std::vector<int> bits(q.groups());
    for (int& b : bits) b = 2 + (w++ % 6);
    q.freeze_to(bits);
  });
  fixture f;
  f.m = train::to_model_file(net, format::shape::image(1, 28, 28), {0.2860}, {0.3530});
  f.batch = batch;
  const deploy::runtime rt(f.m);
  const std::vector<float> c = rt.normalise(px.data() + batch * 784, 64);
  const std::vector<float> r = rt.input_ranges(c.data(), 64);
  for (std::size_t i = 0; i < f.m.ops.size(); ++i)
    if (r[i] > 0) f.m.ops[i].input_range = r[i];
  f.x = rt.normalise(px.data(), batch);
  return f;
}

std::size_t op_index(const format::model_file& m, const std::string& name) {
  for (std::size_t i = 0; i < m.ops.size(); ++i)
    if (m.ops[i].name == name) return i;
  FAIL("no operation " << name);
  return 0;
}

/// f with every product and sum of the network exact in float: weight scales and activation
/// steps powers of two, biases multiples of s_in s_w, inputs on the first layer's grid (the
/// sums stay below 2^24 units: LeNet's deepest layer has 256 x 255 x 127 < 2^24).
fixture dyadic(fixture f) {
  auto pow2 = [](double v) { return float(std::exp2(std::round(std::log2(v)))); };
  std::vector<float> in_step(f.m.ops.size() + 1, 0.0f);
  for (auto& op : f.m.ops)
    if (op.kind == format::op_kind::act_quant) {
      const float L = float(act_level_limit(op.act.bits[0], op.act.is_signed));
      for (float& r : op.act.ranges) r = L * pow2(r / L);
    }
  for (std::size_t i = 0; i < f.m.ops.size(); ++i) {
    format::operation& op = f.m.ops[i];
    if (op.kind != format::op_kind::conv2d && op.kind != format::op_kind::linear) continue;
    format::tensor_data& t = f.m.tensors[op.weight];
    for (float& s : t.scales) s = pow2(s);
    float s_in = 0;
    if (i == 0) {
      op.input_range = 127.0f * pow2(op.input_range / 127.0f);
      s_in = op.input_range / 127.0f;
    } else {
      std::size_t p = i - 1; // the act_quant before this layer (then a pool, a flatten)
      while (p > 0 && f.m.ops[p].kind != format::op_kind::act_quant) --p;
      const format::operation& a = f.m.ops[p];
      REQUIRE(a.kind == format::op_kind::act_quant);
      s_in = a.act.ranges[0] / float(act_level_limit(a.act.bits[0], a.act.is_signed));
    }
    if (op.bias != format::no_index)
      for (std::size_t j = 0; j < t.channels(); ++j) {
        float& b = f.m.tensors[op.bias].values[j];
        const float unit = s_in * t.channel_scale(j);
        b = std::nearbyint(b / unit) * unit;
      }
  }
  const float s0 = f.m.ops[0].input_range / 127.0f;
  for (float& v : f.x) v = s0 * std::clamp(std::nearbyint(v / s0), -127.0f, 127.0f);
  return f;
}

} // namespace

TEST_CASE("packed engine: act_quant grids (2, 4, 8 bits) are the integer path's activations, "
          "exact against the reference on every path") {
  for (int k : {2, 4, 8}) {
    CAPTURE(k);
    const fixture f = act_lenet(k, 67);
    const deploy::runtime rt(f.m);
    REQUIRE(rt.engine().supported());
    const deploy::integer_plan& plan = rt.engine().plan();
    REQUIRE(plan.steps.size() == 5);
    CHECK(plan.steps[0].in_bits == 8);
    CHECK(plan.steps[0].in_act == format::no_index);
    const std::size_t last = (std::size_t(1) << k) - 1;
    for (std::size_t s = 1; s < 5; ++s) {
      CAPTURE(s);
      const format::operation& a = f.m.ops[plan.steps[s].in_act];
      CHECK(a.kind == format::op_kind::act_quant);
      CHECK(plan.steps[s].in_bits == k);
      CHECK(plan.steps[s].in_zero == 0);
      CHECK(plan.steps[s - 1].out_hi == last);
      CHECK(plan.steps[s].in_scale == a.act.ranges[0] / float(last));
    }
    // The act grids replace the calibration: without input ranges only the first layer's
    // is needed.
    format::model_file bare = f.m;
    for (std::size_t i = 1; i < bare.ops.size(); ++i) bare.ops[i].input_range = 0;
    CHECK(deploy::runtime(bare).packed_ready());
    // The float runtime given the engine's own input (x on the first layer's u8 grid), so the
    // two differ only in float rounding: a dot product in a different order (the float path
    // rounds each w x and each partial sum, the engine sums exactly in int32 and rounds once).
    fixture g = f;
    const float s0 = plan.steps[0].in_scale;
    for (float& v : g.x) v = s0 * std::clamp(std::nearbyint(v / s0), -127.0f, 127.0f);
    check_model(("LeNet-5 A" + std::to_string(k)).c_str(), g);
    const tensor2<float> fl = rt.run(g.x.data(), g.batch);
    const tensor2<float> in = rt.run(g.x.data(), g.batch, deploy::precision::packed);
    double worst = 0, scale = 0;
    std::size_t images_equal = 0;
    for (std::size_t n = 0; n < g.batch; ++n) {
      double row = 0;
      for (std::size_t j = 0; j < 10; ++j) {
        const double a = fl.data()[n * 10 + j], b = in.data()[n * 10 + j];
        row = std::max(row, std::abs(a - b));
        scale = std::max(scale, std::abs(a));
      }
      worst = std::max(worst, row);
      images_equal += row <= 1e-5 * scale;
    }
    MESSAGE("A" << k << ": engine vs float runtime on the same input: max |logit diff| " << worst
                << " (logits up to " << scale << "), images within 1e-5 relative " << images_equal
                << " / " << g.batch << ", top-1 agreement " << agree(fl, in) << " / " << g.batch);
    // Every act code equal, the logits differ by the last layer's rounding only: a float dot
    // product of depth 84 is within 84 u sum |w x| (u = 2^-24, about 5e-6 of the sum) of the
    // exact one, which the engine has; one act code off by a step would move a logit by
    // s |w| (s = range / L, at 8 bits range / 255), orders of magnitude more.
    CHECK(agree(fl, in) == g.batch);
    CHECK(worst <= 1e-5 * scale);
    CHECK(images_equal == g.batch);
  }
}

TEST_CASE("packed engine: with every product exact in float, the integer path's logits equal "
          "the float runtime's bit for bit (act grids at 2, 4 and 8 bits)") {
  // Both compute the same real pre-activations exactly, so the act_quant codes the float
  // runtime forms are the u8 codes the engine passes on: any grid difference shows here.
  for (int k : {2, 4, 8}) {
    CAPTURE(k);
    const fixture f = dyadic(act_lenet(k, 61));
    const deploy::runtime rt(f.m);
    REQUIRE(rt.packed_ready());
    const tensor2<float> fl = rt.run(f.x.data(), f.batch);
    for (int_isa p : all_int_isas) {
      if (!int_isa_supported(p)) continue;
      CAPTURE(std::string(int_isa_name(p)));
      for (std::size_t b : {std::size_t(1), std::size_t(9), f.batch}) {
        CAPTURE(b);
        const tensor2<float> got = rt.run(f.x.data(), b, deploy::precision::packed, p);
        std::size_t differ = 0;
        for (std::size_t i = 0; i < got.size(); ++i) differ += got.data()[i] != fl.data()[i];
        CHECK(differ == 0);
      }
    }
    // The grid matters: the same model without its act_quant operations gives other logits.
    format::model_file plain = f.m;
    std::erase_if(plain.ops, [](const format::operation& op) {
      return op.kind == format::op_kind::act_quant;
    });
    for (std::size_t o = 0; o < plain.ops.size(); ++o) plain.ops[o].input = std::uint32_t(o);
    const tensor2<float> unq = deploy::runtime(plain).run(f.x.data(), f.batch);
    double diff = 0;
    for (std::size_t i = 0; i < unq.size(); ++i)
      diff = std::max(diff, std::abs(double(unq.data()[i]) - double(fl.data()[i])));
    CHECK(diff > 0);
  }
}

TEST_CASE("packed engine: an act_quant it cannot hold in u8 is refused, naming the operation") {
  const fixture f = act_lenet(4, 3);
  SUBCASE("9 bits") {
    format::model_file m = f.m;
    const std::size_t a = op_index(m, "relu2_quant");
    m.ops[a].act.bits[0] = 9;
    const deploy::runtime rt(m);
    CHECK_FALSE(rt.engine().supported());
    CHECK_THROWS_WITH_AS(rt.run(f.x.data(), 1, deploy::precision::packed),
                         doctest::Contains(("operation " + std::to_string(a) +
                                            " (relu2_quant, act_quant): act_quant of 9 bits")
                                               .c_str()),
                         config_error);
    CHECK(rt.run(f.x.data(), 1).shape()[1] == 10); // the float path runs it
  }
  SUBCASE("groups with different grids") {
    format::model_file m = f.m;
    const std::size_t a = op_index(m, "relu3_quant");
    format::act_quant_attrs& q = m.ops[a].act;
    q.group_size = 60; // 120 channels: two groups
    q.bits = {4, 4};
    q.ranges = {q.ranges[0], 2 * q.ranges[0]};
    const deploy::runtime rt(m);
    CHECK(rt.engine().why().find("(relu3_quant, act_quant): act_quant groups 0 and 1 have "
                                 "different grids") != std::string::npos);
    // The same two groups on one grid run.
    q.ranges[1] = q.ranges[0];
    CHECK(deploy::runtime(m).packed_ready());
  }
  SUBCASE("two in one layer's chain") {
    format::model_file m = f.m;
    const std::size_t a = op_index(m, "relu2_quant");
    format::operation again = m.ops[a];
    again.name = "again_quant";
    again.input = std::uint32_t(a + 1);
    m.ops.insert(m.ops.begin() + std::ptrdiff_t(a + 1), again);
    for (std::size_t i = a + 2; i < m.ops.size(); ++i) m.ops[i].input = std::uint32_t(i);
    format::infer_shapes(m);
    const deploy::runtime rt(m);
    CHECK(rt.engine().why().find("(again_quant, act_quant): a second act_quant after one "
                                 "conv2d / linear") != std::string::npos);
  }
  SUBCASE("on the network output") {
    format::model_file m = f.m;
    format::operation a = m.ops[op_index(m, "relu4_quant")];
    a.name = "logits_quant";
    a.input = std::uint32_t(m.ops.size());
    a.act.is_signed = true;
    a.act.group_size = 10;
    m.ops.push_back(a);
    format::infer_shapes(m);
    const deploy::runtime rt(m);
    CHECK(rt.engine().why().find("(logits_quant, act_quant): an act_quant on the network "
                                 "output") != std::string::npos);
  }
}

TEST_CASE("packed engine: a signed act_quant on the network input and between layers (no ReLU) "
          "equals the reference and the float runtime's grid") {
  // act_quant (signed, 6 bits) -> conv 1->6 -> act_quant (signed, 8 bits, no ReLU before it)
  // -> pool -> conv 6->16 -> relu -> pool -> flatten -> linear: codes 128 - L..128 + L.
  const fixture base = act_lenet(4, 5);
  format::model_file m;
  m.input = base.m.input;
  m.mean = base.m.mean, m.stddev = base.m.stddev;
  m.tensors = base.m.tensors;
  auto take = [&](const std::string& name) {
    format::operation op = base.m.ops[op_index(base.m, name)];
    op.input = std::uint32_t(m.ops.size());
    m.ops.push_back(op);
    return &m.ops.back();
  };
  format::operation in_q = base.m.ops[op_index(base.m, "relu1_quant")];
  in_q.name = "input_quant";
  in_q.input = 0;
  in_q.act = {.is_signed = true, .group_size = 1, .bits = {6}, .ranges = {2.5f}};
  m.ops.push_back(in_q);
  take("conv1");
  format::operation* mid = take("relu1_quant");
  mid->act = {.is_signed = true, .group_size = 6, .bits = {8}, .ranges = {1.5f}};
  take("pool1");
  take("conv2");
  take("relu2");
  take("pool2");
  take("flatten");
  format::operation* fc = take("fc1");
  fc->fc.out_features = 120;
  format::infer_shapes(m);
  const deploy::runtime rt(m);
  REQUIRE(rt.packed_ready()); // no input ranges needed: both inputs come from act grids
  const deploy::integer_plan& plan = rt.engine().plan();
  REQUIRE(plan.steps.size() == 3);
  CHECK(plan.steps[0].in_zero == 128);
  CHECK(plan.steps[0].in_lo == 128 - 31);
  CHECK(plan.steps[0].in_hi == 128 + 31);
  CHECK(plan.steps[1].in_lo == 1);
  CHECK(plan.steps[1].in_hi == 255);
  CHECK(plan.steps[2].in_bits == 8);
  CHECK_FALSE(plan.steps[2].in_act != format::no_index); // the last input is calibrated
  format::model_file cal = m;
  const std::vector<float> r = rt.input_ranges(base.x.data(), base.batch);
  cal.ops[op_index(cal, "fc1")].input_range = r[op_index(cal, "fc1")];
  const deploy::runtime rc(cal);
  REQUIRE(rc.packed_ready());
  const tensor2<float> want = deploy::ref::run_integer(cal, base.x.data(), base.batch);
  for (int_isa p : all_int_isas) {
    if (!int_isa_supported(p)) continue;
    CAPTURE(std::string(int_isa_name(p)));
    const tensor2<float> got = rc.run(base.x.data(), base.batch, deploy::precision::packed, p);
    for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got.data()[i] == want.data()[i]);
  }
}

// ResNet-20 on the integer path (issues #19, #24): residual adds fused into the output stage of
// the layer before them, a block input read by two layers, global average pooling.
namespace {

constexpr std::size_t res_side = 11; // odd: 11 -> 6 -> 3 through the two stride-2 stages

/// 3-channel side x side images from synthetic_pixels (three grey images per colour image).
std::vector<std::uint8_t> colour_pixels(std::size_t n, std::uint32_t seed) {
  return synthetic_pixels(3 * n, res_side, seed);
}

/// A tiny ResNet-20 (width `width`, 3 x 11 x 11 input), re-coded with mixed 1..8 bits, its
/// folded batch-norm scales and biases randomised (a fresh batch norm folds to scale ~1, bias
/// 0), calibrated on 64 other images. With act_bits > 0 every ReLU has a frozen act_quant
/// (the stem's, two per block), so the global pool reads u8 codes; else it reads float.
fixture tiny_resnet(std::size_t width, std::size_t batch, std::uint32_t seed, int act_bits = 0) {
  fixture f;
  const std::size_t per = 3 * res_side * res_side;
  const std::vector<std::uint8_t> px = colour_pixels(batch + 64, seed + 1);
  const std::vector<double> mean{0.3}, sd{0.3};
  auto exported = [&](auto& net) {
    net.train(false);
    return train::to_model_file(net, format::shape::image(3, res_side, res_side), mean, sd);
  };
  if (act_bits > 0) {
    nn::act_model_options<float, quant::frac_bits> o{};
    o.seed = seed, o.in_channels = 3, o.in_size = res_side, o.width = width;
    auto net = nn::resnet20(o);
    net.train(false);
    tensor4<float> cal = tensor4<float>::from_shape({64, 3, res_side, res_side});
    for (std::size_t i = 0; i < cal.size(); ++i)
      cal.data()[i] = float((px[batch * per + i] / 255.0 - 0.3) / 0.3);
    (void)net.forward(cal); // calibrates the activation ranges
    nn::visit_activation_quantizers(net, [&](std::string_view, auto& q) {
      q.freeze_to(std::vector<int>(q.groups(), act_bits));
    });
    net.visit_quantizers(
        [&](std::string_view, auto& q) { q.freeze_to(std::vector<int>(q.groups(), 8)); });
    f.m = exported(net);
  } else {
    auto net =
        nn::resnet20<float>({.seed = seed, .in_channels = 3, .in_size = res_side, .width = width});
    f.m = exported(net);
  }
  recode_mixed(f.m, seed + 2);
  std::mt19937 rng(seed + 3);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& op : f.m.ops) {
    if (op.channel_scale != format::no_index)
      for (float& v : f.m.tensors[op.channel_scale].values) v = 1.0f + 0.4f * u(rng);
    if (op.bias != format::no_index)
      for (float& v : f.m.tensors[op.bias].values) v = 0.2f * u(rng);
  }
  f.batch = batch;
  // Centre the logits on the calibration images (fc's bias -= their mean logit per class):
  // a random deep net's logits share a large common part, which would make its top-1 one
  // class for every image and any agreement trivial.
  const std::vector<float> c = deploy::runtime(f.m).normalise(px.data() + batch * per, 64);
  {
    const tensor2<float> y = deploy::runtime(f.m).run(c.data(), 64);
    const std::size_t k = y.shape()[1];
    REQUIRE(f.m.ops.back().bias != format::no_index);
    std::vector<float>& b = f.m.tensors[f.m.ops.back().bias].values;
    for (std::size_t j = 0; j < k; ++j) {
      double mean_logit = 0;
      for (std::size_t n = 0; n < 64; ++n) mean_logit += y.data()[n * k + j];
      b[j] -= float(mean_logit / 64);
    }
  }
  const deploy::runtime rt(f.m);
  const std::vector<float> r = rt.input_ranges(c.data(), 64);
  for (std::size_t i = 0; i < f.m.ops.size(); ++i)
    if (r[i] > 0) f.m.ops[i].input_range = r[i];
  f.x = rt.normalise(px.data(), batch);
  return f;
}

std::size_t count_kind(const format::model_file& m, format::op_kind k) {
  return std::size_t(std::count_if(m.ops.begin(), m.ops.end(),
                                   [&](const format::operation& op) { return op.kind == k; }));
}

} // namespace

TEST_CASE("packed engine: ResNet-20 (width 3, 11 x 11, mixed 1..8 bits) is supported: the plan "
          "fuses every residual add and pools globally") {
  const fixture f = tiny_resnet(3, 8, 70);
  REQUIRE(count_kind(f.m, format::op_kind::add) == 9);
  const deploy::runtime rt(f.m);
  REQUIRE(rt.engine().supported());
  REQUIRE(rt.packed_ready());
  const deploy::integer_plan& plan = rt.engine().plan();
  // stem + 9 blocks x 2 convs + 2 projection shortcuts + global pool + fc
  REQUIRE(plan.steps.size() == 23);
  std::size_t fused = 0, u8_operand = 0, float_operand = 0, float_kept = 0;
  for (const auto& s : plan.steps) {
    if (s.add_op == format::no_index) continue;
    ++fused;
    CHECK(s.relu); // the block's ReLU, after the add
    CHECK((!s.out_u8 || s.out_zero == 0));
    (s.residual_u8 ? u8_operand : float_operand) += 1;
  }
  for (const auto& s : plan.steps) float_kept += !s.out_u8 && !s.network_output;
  CHECK(fused == 9);
  CHECK(u8_operand == 7);    // identity shortcuts: the block input, on its readers' grid
  CHECK(float_operand == 2); // projection blocks: conv2's output only the add reads
  // Kept float: the two projection blocks' conv2 and the last block (only the pool reads it).
  CHECK(float_kept == 3);
  const deploy::integer_step& pool = plan.steps[21];
  CHECK(pool.kind == deploy::step_kind::global_pool);
  CHECK_FALSE(pool.in_u8);
  CHECK(pool.out_u8);
  CHECK(pool.out_zero == 0); // the mean of ReLU outputs
  CHECK(plan.steps[22].in_value == pool.out_value);
  CHECK(rt.engine().linear_tail() == 22); // the fc, on the pool's u8 output
  // The block input of layer1.0 is read twice (conv1 and the add) on one grid.
  const deploy::integer_step& stem = plan.steps[0];
  CHECK(plan.steps[1].in_value == stem.out_value);
  CHECK(plan.steps[2].residual == stem.out_value);
  CHECK(plan.steps[2].residual_scale == plan.steps[1].in_scale);
}

TEST_CASE("packed engine: ResNet-20 (width 3 and 4, 11 x 11, mixed 1..8 bits) exact against the "
          "reference on every path, top-1 agreement with the float path") {
  for (const auto& [name, f] : {std::pair{"ResNet-20 w3", tiny_resnet(3, 61, 71)},
                                std::pair{"ResNet-20 w4", tiny_resnet(4, 40, 72)}}) {
    // Random weights with centred logits: small top-1 margins, so the 8-bit activations of
    // 20 layers flip some images (on 500 images, widths 3, 4, 5, 8 and two seeds each: 90.8%
    // to 97.6%); the exactness against the reference is the point here.
    check_model(name, f, 0.9);
    // The agreement is not that of a constant classifier: the float path's top-1 varies.
    const auto top = deploy::runtime::top1(deploy::runtime(f.m).run(f.x.data(), f.batch));
    const std::size_t classes = std::set<std::size_t>(top.begin(), top.end()).size();
    MESSAGE(name << ": the float path predicts " << classes << " classes");
    CHECK(classes >= 3);
  }
}

TEST_CASE("packed engine: ResNet-20 with act_quant grids (4 bits): the global pool sums u8 "
          "codes in int32, exact against the reference on every path") {
  const fixture f = tiny_resnet(2, 33, 73, 4);
  REQUIRE(count_kind(f.m, format::op_kind::act_quant) == 19);
  const deploy::runtime rt(f.m);
  REQUIRE(rt.packed_ready());
  const deploy::integer_plan& plan = rt.engine().plan();
  const auto pool =
      std::find_if(plan.steps.begin(), plan.steps.end(), [](const auto& s) { return !s.gemm(); });
  REQUIRE(pool != plan.steps.end());
  CHECK(pool->in_u8);
  CHECK(pool->in_bits == 4);
  CHECK(pool->in_act != format::no_index);
  // x on the first layer's u8 grid: the paths then differ only in float rounding (which can
  // move a value across a 4-bit step) and in the fc input's 8-bit grid.
  fixture g = f;
  const float s0 = plan.steps[0].in_scale;
  for (float& v : g.x) v = s0 * std::clamp(std::nearbyint(v / s0), -127.0f, 127.0f);
  check_model("ResNet-20 A4", g);
}

TEST_CASE("packed engine: an uncalibrated ResNet-20 is refused, then calibrated at load") {
  const fixture& base = tiny_resnet(3, 16, 74);
  format::model_file m = base.m;
  for (auto& op : m.ops) op.input_range = 0;
  deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  CHECK(rt.engine().supported());
  CHECK_FALSE(rt.packed_ready());
  rt.calibrate(base.x.data(), base.batch);
  REQUIRE(rt.packed_ready());
  const tensor2<float> y = rt.run(base.x.data(), base.batch, deploy::precision::packed);
  // The reference reads the file's codes (the runtime released them), with the new ranges.
  for (std::size_t i = 0; i < m.ops.size(); ++i)
    m.ops[i].input_range = rt.model().ops[i].input_range;
  const tensor2<float> want = deploy::ref::run_integer(m, base.x.data(), base.batch);
  for (std::size_t i = 0; i < y.size(); ++i) REQUIRE(y.data()[i] == want.data()[i]);
}

TEST_CASE("packed engine: a residual add it cannot fuse, and avg_pool2d, are refused by name") {
  const fixture f = tiny_resnet(2, 4, 75);
  {
    // An add reading two values no layer wrote last: the stem's output, twice (a ReLU between).
    format::model_file m = f.m;
    const std::size_t add = op_index(m, "layer1.0.add");
    m.ops[add].input = m.ops[add].input_b;
    format::infer_shapes(m);
    const deploy::runtime rt(m);
    CHECK_FALSE(rt.engine().supported());
    CHECK(rt.engine().why().find("operation " + std::to_string(add) + " (layer1.0.add, add)") !=
          std::string::npos);
  }
  {
    format::model_file m = f.m;
    const std::size_t pool = op_index(m, "avgpool");
    m.ops[pool].kind = format::op_kind::avg_pool2d;
    m.ops[pool].pool = {.kernel_h = 3, .kernel_w = 3, .stride_h = 3, .stride_w = 3};
    format::operation flat;
    flat.kind = format::op_kind::flatten;
    flat.name = "flatten";
    flat.input = std::uint32_t(pool + 1);
    m.ops.insert(m.ops.begin() + std::ptrdiff_t(pool + 1), flat);
    m.ops.back().input = std::uint32_t(pool + 2);
    format::infer_shapes(m);
    const deploy::runtime rt(m);
    CHECK_FALSE(rt.engine().supported());
    CHECK(rt.engine().why().find("avg_pool2d") != std::string::npos);
  }
}

} // namespace test_packed_engine

namespace test_packed_engine {

using namespace bitgrad;

namespace {

/// direct_conv on every supported path and its twin ref::direct_conv on rows [r0, r1) into the
/// engine's output stage (scale_bias -> ReLU -> quantize_u8 -> fused_store, u8 NHWC) under a
/// max-pool k x k of stride s: the pooled buffers (0 first, as the engine sets them) must be
/// equal byte for byte. Codes in [-max_code, max_code] (small ones: the madd path's int16
/// groups fit, so C = 1 takes its quad tiles; 127: mostly the float lines on that path).
void check_pooled_direct(const conv2d_geometry& g, std::size_t n_out, std::size_t batch,
                         std::size_t k, std::size_t s, std::size_t r0, std::size_t r1,
                         std::mt19937& rng, float inv_scale = 6.0f, bool infinite_scale = false,
                         bool relu_quantize = false, int max_code = 127) {
  const std::size_t OH = g.out_h(), OW = g.out_w(), plane = g.out_plane();
  const std::size_t ph = (OH - k) / s + 1, pw = (OW - k) / s + 1;
  INFO("C=" << g.in_channels << " " << g.in_h << "x" << g.in_w << " out " << OH << "x" << OW
            << " n_out=" << n_out << " batch=" << batch << " pool " << k << "/" << s << " rows=["
            << r0 << "," << r1 << ")");
  std::vector<std::uint8_t> x(batch * g.in_h * g.in_w * g.in_channels);
  for (auto& v : x) v = static_cast<std::uint8_t>(rng());
  std::vector<std::int8_t> codes(n_out * g.filter_size());
  for (auto& c : codes)
    c = static_cast<std::int8_t>(int(rng() % unsigned(2 * max_code + 1)) - max_code);
  std::vector<float> scale(output::padded_length(n_out)), bias(output::padded_length(n_out));
  for (std::size_t j = 0; j < n_out; ++j) {
    // Both signs: a negative scale reverses the order of the sums, not of the stored values.
    scale[j] = std::uniform_real_distribution<float>(-1e-3f, 1e-2f)(rng);
    bias[j] = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
  }
  // An infinite scale: the stages say they are not monotone (0 * inf is NaN), so the row pairs
  // take the general path (every pixel through the stages), not the reduced sums.
  if (infinite_scale) scale[n_out / 2] = std::numeric_limits<float>::infinity();
  const std::uint8_t z = static_cast<std::uint8_t>(rng());
  auto run = [&](int_isa p) {
    std::vector<std::uint8_t> y(batch * ph * pw * n_out, 0);
    deploy::detail::fused_store<std::uint8_t> st{y.data()};
    st.row0 = r0, st.plane = plane, st.out_w = OW, st.channels = n_out;
    st.pool = true, st.kh = k, st.kw = k, st.sh = s, st.sw = s, st.ph = ph, st.pw = pw;
    std::vector<std::ptrdiff_t> row_at(r1 - r0);
    st.row_offsets(r0, r1 - r0, row_at.data());
    st.row_at = row_at.data();
    auto conv = [&](const auto& out) {
      if (p == int_isa::reference) // the twin itself
        ref::direct_conv(g, x.data(), z, codes.data(), n_out, r0, r1, out);
      else
        direct_conv(p, g, x.data(), z, codes.data(), n_out, r0, r1, out);
    };
    const output::scale_bias sb{scale.data(), bias.data()};
    if (relu_quantize) // the engine's stage after a ReLU (relu_quantize_u8::fits)
      conv(output::make_padded_pipeline(
          sb, output::relu_quantize_u8{output::quantize_u8{inv_scale, 5}}, st));
    else
      conv(output::make_padded_pipeline(sb, output::clamp{0.0f}, output::quantize_u8{inv_scale, 5},
                                        st));
    return y;
  };
  const std::vector<std::uint8_t> want = run(int_isa::reference);
  if (r0 == 0 && r1 == batch * plane && inv_scale > 0) // every window: values, not only zeros
    CHECK(std::count_if(want.begin(), want.end(), [](std::uint8_t v) { return v > 0; }) > 0);
  for (int_isa p : all_int_isas)
    if (p != int_isa::reference && int_isa_supported(p)) {
      CAPTURE(std::string(int_isa_name(p)));
      CHECK(run(p) == want);
    }
}

} // namespace

TEST_CASE("fused_store's prepared rows: pipeline rows() and rows_in_runs() equal the scalar "
          "calls (u8 NHWC with and without a pool, NCHW, float; several lane batches and a tail)") {
  std::mt19937 rng(97);
  constexpr std::size_t oh_n = 6, ow_n = 7, plane = oh_n * ow_n, batch = 2;
  for (std::size_t channels : {5u, 16u, 37u})
    for (int layout = 0; layout < 4; ++layout) { // u8 NHWC, u8 NHWC pooled, u8 NCHW, float
      const bool pooled = layout == 1, nchw = layout == 2;
      INFO("channels=" << channels << " layout=" << layout);
      const std::size_t rows = batch * plane;
      std::vector<std::int32_t> acc(rows * channels);
      for (auto& v : acc) v = std::int32_t(rng() % 20001) - 10000;
      std::vector<std::uint8_t> res(rows * channels);
      for (auto& v : res) v = static_cast<std::uint8_t>(rng());
      std::vector<float> scale(output::padded_length(channels)), bias(scale.size());
      for (std::size_t j = 0; j < channels; ++j) {
        scale[j] = std::uniform_real_distribution<float>(-0.02f, 0.05f)(rng);
        bias[j] = std::uniform_real_distribution<float>(-3.0f, 3.0f)(rng);
      }
      // Runs of rows (output row i, acc row a, count n), gaps between them: as flat_conv's.
      const std::size_t runs_of[][3] = {{0, 0, 5}, {9, 6, 3}, {20, 10, 13}, {47, 30, 30}};
      auto each_run = [&](const auto& f) {
        for (const auto& run : runs_of) f(run[0], run[1], run[2]);
      };
      // out(i, j) for the runs' rows from acc row a + r, via the pipeline's rows_in_runs (or
      // rows() per run) against the scalar calls.
      auto run = [&](auto y, int how, bool residual) {
        using T = typename decltype(y)::value_type;
        const std::size_t ph = (oh_n - 2) / 3 + 1, pw = (ow_n - 2) / 3 + 1; // 2 x 2, stride 3
        y.assign(pooled ? batch * ph * pw * channels : rows * channels, T(0));
        deploy::detail::fused_store<T> st{y.data()};
        st.plane = plane, st.out_w = ow_n, st.channels = channels, st.nchw = nchw;
        if (pooled) st.pool = true, st.kh = st.kw = 2, st.sh = st.sw = 3, st.ph = ph, st.pw = pw;
        std::vector<std::ptrdiff_t> row_at(rows);
        st.row_offsets(0, rows, row_at.data());
        st.row_at = row_at.data();
        const output::scale_bias sb{scale.data(), bias.data()};
        const output::add_u8 add{res.data(), channels, 0.03f, 7};
        auto go = [&](const auto& out) {
          if (how == 0) {
            each_run([&](std::size_t i, std::size_t a, std::size_t n) {
              for (std::size_t r = 0; r < n; ++r)
                for (std::size_t j = 0; j < channels; ++j)
                  out(i + r, j, acc[(a + r) * channels + j]);
            });
          } else if (how == 1) {
            out.rows_in_runs(
                [&](const auto& f) {
                  each_run([&](std::size_t i, std::size_t a, std::size_t n) { f(i, a, n); });
                },
                0, acc.data(), channels, channels);
          } else {
            each_run([&](std::size_t i, std::size_t a, std::size_t n) {
              out.rows(i, n, 0, acc.data() + a * channels, channels, channels);
            });
          }
        };
        if constexpr (std::is_same_v<T, std::uint8_t>) {
          const output::quantize_u8 q{9.0f, 3, 0.0f, 200.0f};
          if (residual)
            go(output::make_pipeline(sb, add, output::relu_quantize_u8{q}, st));
          else
            go(output::make_padded_pipeline(sb, output::relu_quantize_u8{q}, st));
        } else {
          if (residual)
            go(output::make_pipeline(sb, add, output::clamp{}, st));
          else
            go(output::make_padded_pipeline(sb, output::clamp{}, st));
        }
        return y;
      };
      for (bool residual : {false, true})
        for (int how : {1, 2}) {
          INFO("how=" << how << " residual=" << residual);
          if (layout == 3) {
            const std::vector<float> want = run(std::vector<float>{}, 0, residual);
            CHECK(std::count_if(want.begin(), want.end(), [](float v) { return v > 0; }) > 0);
            CHECK(run(std::vector<float>{}, how, residual) == want);
          } else {
            const std::vector<std::uint8_t> want = run(std::vector<std::uint8_t>{}, 0, residual);
            CHECK(std::count_if(want.begin(), want.end(), [](std::uint8_t v) { return v > 0; }) >
                  0);
            CHECK(run(std::vector<std::uint8_t>{}, how, residual) == want);
          }
        }
    }
}

TEST_CASE("fused_store::row_offsets equals offset(r, 0) on every row of odd ranges") {
  std::mt19937 rng(89);
  for (bool nchw : {false, true})
    for (std::size_t pool_k : {0u, 2u, 3u})
      for (std::size_t pool_s : {2u, 3u}) {
        if (pool_k == 0 && pool_s == 3) continue;
        for (std::size_t oh_n : {5u, 8u})
          for (std::size_t ow_n : {1u, 7u, 12u}) {
            if (pool_k > oh_n || pool_k > ow_n) continue;
            deploy::detail::fused_store<float> st{nullptr};
            st.plane = oh_n * ow_n, st.out_w = ow_n, st.channels = 3, st.nchw = nchw;
            if (pool_k) {
              st.pool = true, st.kh = st.kw = pool_k, st.sh = st.sw = pool_s;
              st.ph = (oh_n - pool_k) / pool_s + 1, st.pw = (ow_n - pool_k) / pool_s + 1;
            }
            const std::size_t rows = 3 * st.plane;
            for (int trial = 0; trial < 6; ++trial) {
              const std::size_t r0 = trial == 0 ? 0 : rng() % rows;
              const std::size_t m = trial == 0 ? rows : rng() % (rows - r0 + 1);
              std::vector<std::ptrdiff_t> got(m, -7);
              st.row_offsets(r0, m, got.data());
              for (std::size_t i = 0; i < m; ++i) {
                INFO("nchw=" << nchw << " pool " << pool_k << "/" << pool_s << " " << oh_n << "x"
                             << ow_n << " r=" << r0 + i);
                REQUIRE(got[i] == st.offset(r0 + i, 0));
              }
            }
          }
      }
}

TEST_CASE("direct_conv into a 2x2 max-pool (pooled columns, a row pair at a time) equals the "
          "twin's per-pixel stores on odd shapes and row ranges") {
  std::mt19937 rng(83);
  for (std::size_t c : {1u, 3u})
    for (std::size_t h : {9u, 10u, 28u})
      for (std::size_t w : {9u, 10u, 13u, 28u, 37u})
        for (std::size_t n_out : {1u, 5u, 6u, 7u, 11u, 16u, 17u}) {
          conv2d_geometry g;
          g.in_channels = c, g.in_h = h, g.in_w = w, g.kernel_h = 5, g.kernel_w = 5;
          g.stride_h = g.stride_w = 1, g.dilation_h = g.dilation_w = 1;
          g.pad_h = g.pad_w = (w % 2 ? 1 : 0);
          for (std::size_t batch : {1u, 3u}) {
            const std::size_t rows = batch * g.out_plane(), OW = g.out_w();
            check_pooled_direct(g, n_out, batch, 2, 2, 0, rows, rng);
            // A band starting at an odd output row (its first row pairs with the row above,
            // outside the call), and a range starting and ending mid-row.
            const std::size_t oh0 = 1 + rng() % (g.out_h() - 1);
            check_pooled_direct(g, n_out, batch, 2, 2, oh0 * OW, rows, rng);
            const std::size_t a = rng() % rows, b = a + 1 + rng() % (rows - a);
            check_pooled_direct(g, n_out, batch, 2, 2, a, b, rng);
            // Windows the row pairs do not take: 3x3 of stride 3, 2x2 of stride 3.
            check_pooled_direct(g, n_out, batch, 3, 3, 0, rows, rng);
            check_pooled_direct(g, n_out, batch, 2, 3, 0, rows, rng);
            // Stages that fall as the sums rise (a negative inv_scale: a window's smallest sum
            // is its largest value), and stages that say nothing (an infinite scale).
            check_pooled_direct(g, n_out, batch, 2, 2, 0, rows, rng, -6.0f);
            check_pooled_direct(g, n_out, batch, 2, 2, a, b, rng, -6.0f);
            check_pooled_direct(g, n_out, batch, 2, 2, 0, rows, rng, 6.0f, true);
            // The engine's ReLU + quantizer as one stage (pooled blocks where the width is even).
            check_pooled_direct(g, n_out, batch, 2, 2, 0, rows, rng, 6.0f, false, true);
            check_pooled_direct(g, n_out, batch, 2, 2, a, b, rng, 6.0f, false, true);
            // Small codes (LeNet's 4-bit): C = 1 takes the madd path's quad tiles.
            check_pooled_direct(g, n_out, batch, 2, 2, a, b, rng, 6.0f, false, false, 8);
            check_pooled_direct(g, n_out, batch, 2, 2, 0, rows, rng, -6.0f, false, false, 8);
            check_pooled_direct(g, n_out, batch, 2, 2, a, b, rng, 6.0f, false, true, 8);
          }
        }
}

TEST_CASE("direct_conv pooled blocks (a row pair's channels interleaved at once): LeNet's conv1 "
          "and widths past one lane batch, against the twin") {
  std::mt19937 rng(97);
  // 28 x 28, 5 x 5, pad 2 (LeNet-5), then widths whose rows span 2 and 3 lane batches of pixels
  // (AVX-512: 16) and pads 0 to 3, 1 and 3 channels, 1 to 8 output channels and 9, 15 (the
  // byte loop past 8); 5, 6, 7, 11, 16, 17: more channels than int32 lanes at SSE2 (4) and
  // AVX2 (8), which the quad paths (C = 1, small codes) of a plain -O2 build run as blocks too.
  for (std::size_t c : {1u, 3u})
    for (std::size_t w : {28u, 34u, 40u, 66u})
      for (std::size_t pad : {0u, 1u, 2u, 3u})
        for (std::size_t n_out : {1u, 2u, 4u, 5u, 6u, 7u, 8u, 9u, 11u, 15u, 16u, 17u}) {
          conv2d_geometry g;
          g.in_channels = c, g.in_h = 12, g.in_w = w, g.kernel_h = 5, g.kernel_w = 5;
          g.stride_h = g.stride_w = 1, g.dilation_h = g.dilation_w = 1;
          g.pad_h = g.pad_w = pad;
          if (c == 1 && w == 28 && pad == 2) g.in_h = 28;
          const std::size_t rows = 2 * g.out_plane();
          check_pooled_direct(g, n_out, 2, 2, 2, 0, rows, rng, 6.0f, false, true);
          check_pooled_direct(g, n_out, 2, 2, 2, 0, rows, rng, -6.0f);
          check_pooled_direct(g, n_out, 2, 2, 2, 0, rows, rng, 6.0f, false, true, 8);
          check_pooled_direct(g, n_out, 2, 2, 2, 0, rows, rng, -6.0f, false, false, 8);
        }
}

} // namespace test_packed_engine
