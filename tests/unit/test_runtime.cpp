// The deploy runtime: int8 GEMM against its reference, float path == trained network's eval
// forward (LeNet-5, ResNet-20), int8 path agreement, batch-norm folding through a residual net,
// concurrent runs.
#include "fashion_sample.hpp"

#include <bitgrad/deploy/int8_gemm.hpp>
#include <bitgrad/deploy/runtime.hpp>
#include <bitgrad/nn/loss.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/quant/fixed_bits.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/export.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <thread>
#include <vector>

namespace test_runtime {

namespace fs = std::filesystem;
using namespace bitgrad;
using bitgrad::testing::sample_test;
using bitgrad::testing::sample_train;

namespace {

const loader_options normalise{.mean = {0.2860}, .stddev = {0.3530}};

/// Trains n on the sample for `epochs` epochs (Adam, batches of 64 shuffled by `seed`, the
/// quantizers projected after every step), leaving it in training mode.
template <class Net>
void train_on_sample(Net& n, std::uint64_t seed, int epochs) {
  optim::adam<float> opt({.lr = 2e-3});
  nn::softmax_cross_entropy<float> loss;
  loader_options lo = normalise;
  lo.batch_size = 64;
  lo.seed = seed;
  loader<float> batches(sample_train(), lo);
  tensor4<float> x;
  std::vector<std::int32_t> y;
  n.train(true);
  for (int epoch = 0; epoch < epochs; ++epoch) {
    while (batches.next(x, y)) {
      n.zero_grad();
      loss.forward(n.forward(x), y);
      n.backward(loss.backward());
      opt.step([&](auto&& f) { n.visit_parameters(f); });
      n.visit_quantizers([](std::string_view, auto& q) { q.project(); });
    }
  }
}

/// A LeNet-5 with frac_bits trained for two epochs on the sample, then frozen (nearest).
auto& trained_lenet() {
  static auto net = [] {
    nn::model_options<float, quant::frac_bits> o{.seed = 3};
    o.quant.b_min = 2;
    o.quant.b_max = 6;
    auto n = nn::lenet5<float, quant::frac_bits>(o);
    train_on_sample(n, 1, 2);
    n.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
    n.train(false);
    return n;
  }();
  return net;
}

tensor4<float> test_images(const deploy::runtime& rt, const dataset& d) {
  const std::vector<float> x = rt.normalise(d.pixels.data(), d.size());
  tensor4<float> t = tensor4<float>::from_shape({d.size(), d.channels, d.height, d.width});
  std::copy(x.begin(), x.end(), t.data());
  return t;
}

std::size_t agree(const std::vector<std::size_t>& a, const std::vector<std::size_t>& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] == b[i];
  return n;
}

double accuracy(const std::vector<std::size_t>& pred, const dataset& d) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < pred.size(); ++i)
    n += pred[i] == static_cast<std::size_t>(d.labels[i]);
  return double(n) / double(pred.size());
}

} // namespace

TEST_CASE("int8 GEMM matches the reference on ragged shapes") {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> d(-128, 127);
  for (std::size_t m : {1u, 2u, 3u, 7u, 65u, 130u})
    for (std::size_t n : {1u, 3u, 4u, 5u, 9u})
      for (std::size_t k : {1u, 15u, 16u, 17u, 75u, 301u}) {
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(k);
        const std::size_t lda = k + 3, ldb = k + 1;
        std::vector<std::int8_t> a(m * lda), b(n * ldb);
        for (auto& v : a) v = static_cast<std::int8_t>(d(rng));
        for (auto& v : b) v = static_cast<std::int8_t>(d(rng));
        std::vector<std::int32_t> c(m * n, -1), r(m * n, -2);
        deploy::int8_gemm_nt(
            m, n, k, a.data(), lda, b.data(), ldb,
            [&](std::size_t i, std::size_t j, std::int32_t v) { c[i * n + j] = v; });
        deploy::ref::int8_gemm_nt(
            m, n, k, a.data(), lda, b.data(), ldb,
            [&](std::size_t i, std::size_t j, std::int32_t v) { r[i * n + j] = v; });
        CHECK(c == r);
      }
}

/// The trained LeNet exported (calibrated on 256 training images) and loaded, its test inputs
/// and both forwards: built once and shared by the test cases below.
struct exported_lenet {
  deploy::runtime rt;
  tensor4<float> x;
  tensor2<float> ref, out;
};

const exported_lenet& lenet_fixture() {
  static const exported_lenet f = [] {
    auto& net = trained_lenet();
    format::model_file m = train::to_model_file(net, format::shape::image(1, 28, 28),
                                                normalise.mean, normalise.stddev);
    train::calibrate(m, sample_train(), 256);
    deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
    tensor4<float> x = test_images(rt, sample_test());
    tensor2<float> ref = net.forward(x);
    tensor2<float> out = rt.run(x);
    return exported_lenet{std::move(rt), std::move(x), std::move(ref), std::move(out)};
  }();
  return f;
}

TEST_CASE("runtime float path reproduces the trained network's eval forward") {
  const auto& f = lenet_fixture();
  REQUIRE(f.out.shape() == f.ref.shape());
  double max_diff = 0;
  for (std::size_t i = 0; i < f.out.size(); ++i)
    max_diff = std::max(max_diff, double(std::fabs(f.out.data()[i] - f.ref.data()[i])));
  const auto p_net = deploy::runtime::top1(f.ref);
  const auto p_rt = deploy::runtime::top1(f.out);
  MESSAGE("float path: max |logit difference| " << max_diff << ", accuracy "
                                                << accuracy(p_rt, sample_test()));
  CHECK(agree(p_net, p_rt) == p_net.size()); // same top-1 on every test image
  CHECK(max_diff <= 1e-5);
  CHECK(accuracy(p_net, sample_test()) > 0.6); // it did learn something
}

TEST_CASE("runtime int8 path agrees with the float path") {
  const auto& f = lenet_fixture();
  REQUIRE(f.rt.int8_ready());
  const auto p_rt = deploy::runtime::top1(f.out);
  const auto p8 = deploy::runtime::top1(f.rt.run(f.x, deploy::precision::int8));
  const double agreement = double(agree(p8, p_rt)) / double(p8.size());
  MESSAGE("int8 path: top-1 agreement with float " << agreement << ", accuracy "
                                                   << accuracy(p8, sample_test()) << " vs "
                                                   << accuracy(p_rt, sample_test()));
  CHECK(agreement >= 0.97);
  CHECK(std::fabs(accuracy(p8, sample_test()) - accuracy(p_rt, sample_test())) <= 0.02);
}

TEST_CASE("runtime: the trained LeNet stays packed and the packed path agrees with float") {
  auto& net = trained_lenet();
  format::model_file m =
      train::to_model_file(net, format::shape::image(1, 28, 28), normalise.mean, normalise.stddev);
  train::calibrate(m, sample_train(), 256);
  const deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  REQUIRE(rt.packed_ready());
  const tensor4<float> x = test_images(rt, sample_test());
  const auto p_packed = deploy::runtime::top1(rt.run(x, deploy::precision::packed));
  // Before any float run: only the packed formats hold the weights.
  const double ratio = double(rt.resident_weight_bytes()) / double(rt.weight_payload_bytes());
  MESSAGE("trained LeNet: resident weight bytes " << rt.resident_weight_bytes() << ", payload "
                                                  << rt.weight_payload_bytes() << ", ratio "
                                                  << ratio);
  CHECK(ratio <= 1.25);
  CHECK(rt.weight_payload_bytes() > 10000);
  const auto p_float = deploy::runtime::top1(rt.run(x));
  const double agreement = double(agree(p_packed, p_float)) / double(p_float.size());
  MESSAGE("packed path: top-1 agreement with float " << agreement << ", accuracy "
                                                     << accuracy(p_packed, sample_test()) << " vs "
                                                     << accuracy(p_float, sample_test()));
  CHECK(agreement >= 0.99);
  CHECK(std::fabs(accuracy(p_packed, sample_test()) - accuracy(p_float, sample_test())) <= 0.01);
}

TEST_CASE("runtime: a full-grid LeNet (codes down to -2^(k-1)) through the file, the float, "
          "int8 and packed paths") {
  // fixed_bits on the full 2-bit grid {-2, -1, 0, 1} (3-bit edges: -4..3), one epoch.
  nn::model_options<float, quant::fixed_bits> o{.seed = 5};
  o.quant.bits = 2;
  o.quant.grid = quant::uniform_grid::full;
  quant::fixed_bits<float>::options edge = o.quant;
  edge.bits = 3;
  o.edge_quant = edge;
  auto net = nn::lenet5<float, quant::fixed_bits>(o);
  train_on_sample(net, 2, 1);
  net.train(false);
  // LSQ's initial step puts -2^(k-1) beyond 3 sigma of the weights (s = 2 mean|w| / sqrt(Qp)):
  // after one epoch on the sample few weights reach it. Halving every step clips more weights
  // onto it, so that every tensor carries the code through the file and every path.
  net.visit_quantizers([](std::string_view, auto& q) {
    q.visit_parameters([](auto& p) {
      if (p.name == "scale")
        for (std::size_t i = 0; i < p.size; ++i) p.value[i] *= 0.5f;
    });
  });
  format::model_file m =
      train::to_model_file(net, format::shape::image(1, 28, 28), normalise.mean, normalise.stddev);
  train::calibrate(m, sample_train(), 256);
  const std::vector<std::uint8_t> bytes = format::to_bytes(m);
  std::uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  CHECK(version == 3);
  // Every quantized weight tensor is flagged and uses its lowest code -2^(k-1).
  std::size_t quantized = 0;
  for (const auto& t : m.tensors) {
    if (t.kind != format::tensor_kind::quantized) continue;
    ++quantized;
    CHECK(t.full_grid);
    const auto c = t.codes();
    const std::int32_t lowest = -(std::int32_t(1) << (t.bits[0] - 1));
    CHECK(std::find(c.begin(), c.end(), lowest) != c.end());
    CHECK(*std::min_element(c.begin(), c.end()) == lowest);
  }
  CHECK(quantized == 5);
  const deploy::runtime rt(format::from_bytes(bytes));
  REQUIRE(rt.packed_ready());
  const tensor4<float> x = test_images(rt, sample_test());
  // Packed first: before the float run, only the packed formats hold the weights.
  const auto p_packed = deploy::runtime::top1(rt.run(x, deploy::precision::packed));
  const tensor2<float> ref = net.forward(x);
  const tensor2<float> out = rt.run(x);
  double max_diff = 0;
  for (std::size_t i = 0; i < out.size(); ++i)
    max_diff = std::max(max_diff, double(std::fabs(out.data()[i] - ref.data()[i])));
  const auto p_net = deploy::runtime::top1(ref);
  const auto p_float = deploy::runtime::top1(out);
  const auto p8 = deploy::runtime::top1(rt.run(x, deploy::precision::int8));
  MESSAGE("full grid LeNet: max |logit difference| "
          << max_diff << ", accuracy float " << accuracy(p_float, sample_test()) << ", packed "
          << accuracy(p_packed, sample_test()) << ", int8 " << accuracy(p8, sample_test()));
  CHECK(max_diff <= 1e-5);
  CHECK(agree(p_net, p_float) == p_net.size());
  CHECK(accuracy(p_net, sample_test()) > 0.3); // one epoch on the sample, steps halved
  CHECK(double(agree(p_packed, p_float)) / double(p_float.size()) >= 0.98);
  CHECK(double(agree(p8, p_float)) / double(p_float.size()) >= 0.97);
}

TEST_CASE("runtime: several threads on one const model give the single-threaded outputs") {
  const auto& f = lenet_fixture();
  for (auto prec :
       {deploy::precision::float32, deploy::precision::int8, deploy::precision::packed}) {
    const tensor2<float> single = f.rt.run(f.x, prec);
    std::vector<tensor2<float>> results(4);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < results.size(); ++t)
      threads.emplace_back([&, t] {
        for (int rep = 0; rep < 2; ++rep) results[t] = f.rt.run(f.x, prec);
      });
    for (auto& t : threads) t.join();
    for (const auto& r : results) CHECK(r == single);
  }
}

TEST_CASE("image blocks: the batch is cut into whole-image blocks, threads get as many") {
  using deploy::detail::plan_image_blocks;
  for (std::size_t batch : {1, 2, 7, 12, 13, 14, 41, 256})
    for (std::size_t cap : {1, 3, 13, 1000})
      for (std::size_t threads : {1, 2, 3}) {
        CAPTURE(batch);
        CAPTURE(cap);
        CAPTURE(threads);
        const auto b = plan_image_blocks(batch, cap, threads);
        CHECK(b.size >= 1);
        CHECK(b.size <= cap);
        CHECK(b.begin(0) == 0);
        CHECK(b.end(b.count - 1) == batch);
        for (std::size_t k = 0; k + 1 < b.count; ++k) CHECK(b.end(k) == b.begin(k + 1));
        for (std::size_t k = 0; k < b.count; ++k) CHECK(b.begin(k) < b.end(k));
        if (threads <= 2) CHECK(b.count >= std::min(threads, batch)); // no thread idles
      }
  CHECK(deploy::detail::image_block_cap(3456 * 4) == 18); // LeNet-5's conv1 output, float
  CHECK(deploy::detail::image_block_cap(std::size_t(1) << 30) == 1);
}

TEST_CASE("image blocks: every image is visited once, on 1 and 2 threads, and an exception "
          "thrown inside a block reaches the caller") {
  for (std::size_t threads : {1, 2}) {
    const auto blocks = deploy::detail::plan_image_blocks(23, 3, threads);
    std::vector<int> seen(23, 0);
    deploy::detail::for_image_blocks(blocks, threads, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) ++seen[i];
    });
    CHECK(seen == std::vector<int>(23, 1));
    CHECK_THROWS_WITH_AS(deploy::detail::for_image_blocks(blocks, threads,
                                                          [&](std::size_t b, std::size_t) {
                                                            if (b >= 9)
                                                              throw config_error("block at " +
                                                                                 std::to_string(b));
                                                          }),
                         doctest::Contains("block at"), config_error);
  }
}

TEST_CASE("runtime: a batch in image blocks (1, block - 1, block, block + 1, several blocks) "
          "gives each image's own outputs, on the float, int8 and packed paths, blocks split "
          "across threads or the kernels inside one block") {
  const auto& f = lenet_fixture();
  deploy::runtime rt = f.rt;
  const std::size_t images = f.x.shape()[0], in = rt.input_size(), out = rt.output_size();
  // 0: blocks split across the threads whenever there are two (kernels run serially inside);
  // never: the blocks run on this thread and the kernels split their work (the int8 conv its
  // images: its worker threads must see this thread's buffers).
  const std::size_t never = std::numeric_limits<std::size_t>::max();
  for (const std::size_t parallel_min : {std::size_t(0), never})
    for (auto prec :
         {deploy::precision::float32, deploy::precision::int8, deploy::precision::packed}) {
      rt.set_parallel_min(parallel_min);
      CAPTURE(parallel_min);
      const std::string precision_name = deploy::to_string(prec);
      CAPTURE(precision_name); // (a const char* would print as a pointer)
      // Each image alone (one block of one image).
      std::vector<float> alone(images * out);
      for (std::size_t i = 0; i < images; ++i) {
        const tensor2<float> y = rt.run(f.x.data() + i * in, 1, prec);
        std::copy(y.begin(), y.end(), alone.begin() + std::ptrdiff_t(i * out));
      }
      rt.set_block_images(0);
      const std::size_t automatic = rt.block_images();
      for (std::size_t block : {std::size_t(3), automatic}) {
        rt.set_block_images(block == automatic ? 0 : block);
        CAPTURE(block);
        for (std::size_t batch : {std::size_t(1), block - 1, block, block + 1, 3 * block + 2}) {
          if (batch == 0 || batch > images) continue;
          CAPTURE(batch);
          const tensor2<float> y = rt.run(f.x.data(), batch, prec);
          REQUIRE(y.shape()[0] == batch);
          CHECK(std::equal(y.begin(), y.end(), alone.begin()));
        }
      }
    }
  rt.set_block_images(0);
  CHECK(rt.block_images() == 18); // 256 KiB / LeNet-5's largest float activation (6 x 24 x 24)
}

TEST_CASE("runtime: an exception thrown inside an image block (int8 path, uncalibrated) "
          "reaches the caller") {
  const auto& f = lenet_fixture();
  deploy::runtime raw(train::to_model_file(trained_lenet(), format::shape::image(1, 28, 28)));
  raw.set_parallel_min(0);
  raw.set_block_images(2);
  CHECK_THROWS_WITH_AS(raw.run(f.x.data(), 9, deploy::precision::int8),
                       doctest::Contains("calibrated"), config_error);
  // The float path still runs the same blocks.
  CHECK(raw.run(f.x.data(), 9).shape()[0] == 9);
}

TEST_CASE("runtime::evaluate gives what the hand-written normalise + run + top-1 loop gives") {
  const auto& f = lenet_fixture();
  const dataset& test = sample_test();
  for (auto prec :
       {deploy::precision::float32, deploy::precision::int8, deploy::precision::packed}) {
    CAPTURE(std::string(deploy::to_string(prec)));
    // The loop a user wrote before: every image at once.
    const std::vector<float> x = f.rt.normalise(test.pixels.data(), test.size());
    const std::vector<std::size_t> hand =
        deploy::runtime::top1(f.rt.run(x.data(), test.size(), prec));
    const double hand_accuracy = accuracy(hand, test);
    for (std::size_t batch :
         {std::size_t(1), std::size_t(7), std::size_t(256), std::size_t(4096)}) {
      CAPTURE(batch);
      const deploy::evaluation e = f.rt.evaluate(test, prec, batch);
      CHECK(e.images == test.size());
      CHECK(e.predictions == hand);
      CHECK(e.correct ==
            agree(hand, std::vector<std::size_t>(test.labels.begin(), test.labels.end())));
      CHECK(e.accuracy == hand_accuracy);
      CHECK(f.rt.accuracy(test, prec, batch) == hand_accuracy);
    }
    MESSAGE(std::string(deploy::to_string(prec)) << " accuracy on the sample: " << hand_accuracy);
  }
  CHECK(f.rt.accuracy(test) > 0.6); // the default: float32
}

TEST_CASE("runtime::evaluate refuses data that does not fit the model") {
  const auto& f = lenet_fixture();
  CHECK_THROWS_WITH_AS(f.rt.evaluate(sample_test(), deploy::precision::float32, 0),
                       doctest::Contains("batch must be >= 1"), config_error);
  dataset wrong = sample_test();
  wrong.height = 14;
  wrong.width = 56;
  CHECK_THROWS_WITH_AS(f.rt.evaluate(wrong),
                       doctest::Contains("images of 1x14x56, the model's input is (1, 28, 28)"),
                       config_error);
  dataset many = sample_test();
  many.classes = 12;
  many.labels[5] = 11;
  CHECK_THROWS_WITH_AS(
      f.rt.evaluate(many),
      doctest::Contains("label 11 of image 5 is not one of the model's 10 outputs"), config_error);
  dataset empty = sample_test();
  empty.labels.clear();
  empty.pixels.clear();
  CHECK_THROWS_WITH_AS(f.rt.evaluate(empty), doctest::Contains("empty"), config_error);
}

TEST_CASE("runtime: an uncalibrated model refuses the int8 path") {
  const auto& f = lenet_fixture();
  const deploy::runtime raw(train::to_model_file(trained_lenet(), format::shape::image(1, 28, 28)));
  CHECK_FALSE(raw.int8_ready());
  CHECK_THROWS_AS(raw.run(f.x, deploy::precision::int8), config_error);
}

TEST_CASE("runtime float path reproduces ResNet-20's eval forward (fashion_mnist --model "
          "resnet20)") {
  // The network fashion_mnist builds for --model resnet20 (issue #24): 1 input channel, 28x28,
  // frac_bits everywhere; batch-norm statistics moved by training-mode forwards, bitwidths
  // frozen. Its model file (9 residual adds, 2 projection shortcuts, 21 folded batch norms)
  // must give the network's eval logits.
  nn::model_options<float, quant::frac_bits> o{.seed = 4, .in_channels = 1, .in_size = 28};
  o.quant.b_min = 2;
  o.quant.b_max = 6;
  auto net = nn::resnet20(o);
  loader_options lo = normalise;
  lo.batch_size = 32;
  loader<float> batches(sample_train(), lo);
  tensor4<float> xb;
  std::vector<std::int32_t> yb;
  net.train(true);
  for (int i = 0; i < 4 && batches.next(xb, yb); ++i) (void)net.forward(xb);
  net.visit_quantizers([](std::string_view, auto& q) { q.freeze(quant::rounding::nearest); });
  net.train(false);
  const format::model_file m =
      train::to_model_file(net, format::shape::image(1, 28, 28), normalise.mean, normalise.stddev);
  std::size_t adds = 0;
  for (const auto& op : m.ops) adds += op.kind == format::op_kind::add;
  CHECK(adds == 9);
  const deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  std::vector<std::size_t> first(48);
  for (std::size_t i = 0; i < first.size(); ++i) first[i] = i;
  const tensor4<float> x = test_images(rt, subset(sample_test(), first));
  const tensor2<float> ref = net.forward(x);
  const tensor2<float> out = rt.run(x);
  REQUIRE(out.shape() == ref.shape());
  double max_diff = 0, max_abs = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(out.data()[i] - ref.data()[i])));
    max_abs = std::max(max_abs, double(std::fabs(ref.data()[i])));
  }
  MESSAGE("resnet20 float path: max |logit difference| " << max_diff << " of max |logit| "
                                                         << max_abs);
  CHECK(max_diff <= 1e-4 * std::max(1.0, max_abs));
  CHECK(agree(deploy::runtime::top1(ref), deploy::runtime::top1(out)) == first.size());
}

TEST_CASE("runtime: batch norm folded through a residual block") {
  using T = float;
  quant::fixed_bits<T>::options q;
  q.bits = 5;
  auto body =
      nn::sequential(nn::conv2d<T, quant::fixed_bits>({.in_channels = 4,
                                                       .out_channels = 4,
                                                       .kernel = 3,
                                                       .padding = 1,
                                                       .bias = false,
                                                       .seed = 2,
                                                       .name = "c1"},
                                                      q),
                     nn::batch_norm<T, 4>({.features = 4, .name = "bn1"}), nn::relu<T, 4>("r1"),
                     nn::conv2d<T, quant::fixed_bits>({.in_channels = 4,
                                                       .out_channels = 4,
                                                       .kernel = 3,
                                                       .padding = 1,
                                                       .bias = false,
                                                       .seed = 3,
                                                       .name = "c2"},
                                                      q),
                     nn::batch_norm<T, 4>({.features = 4, .name = "bn2"}));
  auto net = nn::sequential(
      nn::conv2d<T, quant::fixed_bits>({.in_channels = 1,
                                        .out_channels = 4,
                                        .kernel = 3,
                                        .stride = 2,
                                        .padding = 1,
                                        .seed = 1,
                                        .name = "stem"},
                                       q),
      nn::batch_norm<T, 4>({.features = 4, .name = "bn0"}), nn::relu<T, 4>("r0"),
      nn::residual(std::string("block"), std::move(body), nn::identity<T, 4>("shortcut")),
      nn::relu<T, 4>("r"), nn::avg_pool2d<T>({.kernel = 2, .name = "avg"}),
      nn::global_avg_pool<T>("gap"),
      nn::linear<T>({.in_features = 4, .out_features = 3, .seed = 9, .name = "fc"}));
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.5f, 1.0f);
  tensor4<T> x = tensor4<T>::from_shape({6, 1, 9, 9});
  for (auto& v : x) v = nd(rng);
  net.train(true);
  for (int i = 0; i < 5; ++i) (void)net.forward(x); // running statistics move away from 0 / 1
  net.train(false);
  const tensor2<T> ref = net.forward(x);
  const format::model_file m = train::to_model_file(net, format::shape::image(1, 9, 9));
  // stem, relu, c1, relu, c2, add, relu, avg, gap, fc
  REQUIRE(m.ops.size() == 10);
  CHECK(m.ops[5].kind == format::op_kind::add);
  CHECK(m.ops[5].input == 5);
  CHECK(m.ops[5].input_b == 2);
  CHECK(m.ops[2].channel_scale != format::no_index);
  const deploy::runtime rt(format::from_bytes(format::to_bytes(m)));
  const tensor2<T> out = rt.run(x);
  for (std::size_t i = 0; i < out.size(); ++i)
    CHECK(out.data()[i] == doctest::Approx(ref.data()[i]).epsilon(1e-4));
}

} // namespace test_runtime
