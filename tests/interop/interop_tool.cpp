// The bitgrad side of the interoperability tests (tests/interop/CMakeLists.txt):
//
//   interop_tool zoo OUT.bgm                      a model with every operation a .bgm can hold
//   interop_tool act OUT.bgm                      a model with act_quant operations (#22)
//   interop_tool full OUT.bgm                     weights on the full grid, down to -2^(k-1) (#24)
//   interop_tool reference MODEL.bgm DIR (--data SAMPLE | --random N)
//        bitgrad's runtime on the images: DIR/{pixels.u8, labels.u8, input.f32,
//        logits_float32.f32, logits_int8.f32, meta.json} for run_ort.mjs and check_onnx.py
//   interop_tool train-fp32 --data SAMPLE --epochs E --out W.npz
//        a short FP32 LeNet-5 training; saves W.npz (save_npz) and prints the test accuracy
//   interop_tool npz-logits W.npz --data SAMPLE --compare LOGITS.f32 [--tolerance 1e-4]
//        LeNet-5 FP32 with W.npz loaded (load_npz), its logits on the sample compared with
//        another framework's (float32, row-major, train images then test images)
//
// Arrays are raw little-endian float32 / uint8, images in the sample's order: the 1200
// training images, then the 400 test images.
#include <bitgrad/bitgrad.hpp>
#include <bitgrad/train/npz_import.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace bitgrad;

const loader_options fashion_normalise{.mean = {0.2860}, .stddev = {0.3530}};

template <class U>
void write_raw(const fs::path& p, const std::vector<U>& v) {
  write_file_atomically(
      p, std::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(U)));
}

std::vector<float> read_floats(const fs::path& p) {
  const auto bytes = read_file_bytes(p, std::uint64_t(1) << 32);
  if (bytes.size() % 4) throw format_error(p.string(), bytes.size(), "not a float32 array");
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

/// The sample's training images then its test images.
dataset load_sample(const fs::path& dir) {
  dataset a =
      load_mnist_format(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz");
  const dataset b =
      load_mnist_format(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz");
  a.pixels.insert(a.pixels.end(), b.pixels.begin(), b.pixels.end());
  a.labels.insert(a.labels.end(), b.labels.begin(), b.labels.end());
  return a;
}

// ---- zoo: every operation --------------------------------------------------------------------

/// Random codes for a quantized tensor with the given per-group bitwidths; `full_grid`: codes
/// on the full grid -2^(k-1)..2^(k-1)-1 (k >= 2), every channel's first code the lowest.
format::tensor_data random_quantized(std::mt19937& rng, std::vector<std::uint32_t> extents,
                                     std::uint32_t group_size, std::vector<std::uint8_t> bits,
                                     float fan_in, bool full_grid = false) {
  const std::size_t channels = extents[0];
  std::size_t per = 1;
  for (std::size_t i = 1; i < extents.size(); ++i) per *= extents[i];
  std::vector<float> scales(bits.size());
  std::vector<std::int32_t> codes(channels * per);
  std::uniform_real_distribution<float> jitter(0.7f, 1.3f);
  for (std::size_t c = 0; c < channels; ++c) {
    const std::size_t g = c / group_size;
    const int k = bits[g];
    const int limit = k == 1 ? 1 : (1 << (k - 1)) - 1;
    const int lowest = full_grid && k >= 2 ? -limit - 1 : -limit;
    std::uniform_int_distribution<int> code(lowest, limit);
    for (std::size_t i = 0; i < per; ++i) {
      int v = i == 0 ? lowest : code(rng);
      if (k == 1) v = v >= 0 ? 1 : -1;
      codes[c * per + i] = v;
    }
    scales[g] = jitter(rng) * 1.5f / (static_cast<float>(limit) * std::sqrt(fan_in));
  }
  return format::tensor_data::from_codes(std::move(extents), group_size, std::move(bits),
                                         std::move(scales), codes, full_grid);
}

format::tensor_data random_floats(std::mt19937& rng, std::vector<std::uint32_t> extents,
                                  float scale, float offset = 0) {
  std::size_t n = 1;
  for (auto e : extents) n *= e;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = offset + scale * u(rng);
  return format::tensor_data::from_floats(std::move(extents), std::move(v));
}

/// m.tensors gets t; its index.
std::uint32_t add_tensor(format::model_file& m, format::tensor_data t) {
  m.tensors.push_back(std::move(t));
  return static_cast<std::uint32_t>(m.tensors.size() - 1);
}

/// An operation of kind k reading the one before it (value ops.size()); its index in m.ops.
std::size_t add_chained(format::model_file& m, format::op_kind k, std::string name) {
  format::operation op;
  op.kind = k;
  op.name = std::move(name);
  op.input = static_cast<std::uint32_t>(m.ops.size());
  m.ops.push_back(op);
  return m.ops.size() - 1;
}

/// The model's normalised input for 256 random images (drawn from rng).
std::vector<float> random_inputs(const format::model_file& m, std::mt19937& rng) {
  std::vector<std::uint8_t> pixels(256 * m.input.elements());
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& p : pixels) p = static_cast<std::uint8_t>(byte(rng));
  return deploy::runtime(m).normalise(pixels.data(), 256);
}

/// Calibrates the int8 path: each conv / linear input range from the 256 images x.
void calibrate_int8(format::model_file& m, const std::vector<float>& x) {
  const std::vector<float> r = deploy::runtime(m).input_ranges(x.data(), 256);
  for (std::size_t i = 0; i < m.ops.size(); ++i)
    if (m.ops[i].kind == format::op_kind::conv2d || m.ops[i].kind == format::op_kind::linear)
      m.ops[i].input_range = r[i];
}

format::model_file zoo(std::uint32_t seed) {
  std::mt19937 rng(seed);
  format::model_file m;
  m.input = format::shape::image(3, 13, 13);
  m.mean = {0.5, 0.4, 0.3};
  m.stddev = {0.25, 0.3, 0.2};
  auto tensor = [&](format::tensor_data t) { return add_tensor(m, std::move(t)); };
  auto conv = [&](std::string name, std::uint32_t input, format::conv_attrs c) {
    format::operation op;
    op.kind = format::op_kind::conv2d;
    op.name = std::move(name);
    op.input = input;
    op.conv = c;
    return op;
  };
  auto simple = [&](format::op_kind k, std::string name, std::uint32_t input) {
    format::operation op;
    op.kind = k;
    op.name = std::move(name);
    op.input = input;
    return op;
  };
  // 0: conv 3->8 3x3 pad 1, groups of 3 channels (the last of 2) at 2, 5 and 8 bits, batch norm
  //    folded (channel scale + bias).                                           (8, 13, 13)
  auto op = conv("conv_a", 0, {3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1});
  op.weight = tensor(random_quantized(rng, {8, 3, 3, 3}, 3, {2, 5, 8}, 27));
  op.channel_scale = tensor(random_floats(rng, {8}, 0.4f, 1.0f));
  op.bias = tensor(random_floats(rng, {8}, 0.2f));
  m.ops.push_back(op);
  m.ops.push_back(simple(format::op_kind::relu6, "act_a", 1)); // 1 -> value 2
  // 2: grouped conv 8->8, 4 groups, 3x3 stride 2 pad 2 dilation 2, 12- and 6-bit channels (the
  //    QDQ forms requantize this tensor to int8), no bias.                          (8, 7, 7)
  op = conv("conv_dw", 2, {8, 8, 3, 3, 2, 2, 2, 2, 2, 2, 4});
  op.weight = tensor(random_quantized(rng, {8, 2, 3, 3}, 1, {12, 6, 6, 12, 6, 6, 6, 6}, 18));
  m.ops.push_back(op);
  // 3: max pool 3x3 stride 2 pad 1                                                  (8, 4, 4)
  op = simple(format::op_kind::max_pool2d, "pool_max", 3);
  op.pool = {3, 3, 2, 2, 1, 1};
  m.ops.push_back(op);
  // 4: 1x1 conv with float32 weights (a layer kept in FP32)                         (8, 4, 4)
  op = conv("conv_fp32", 4, {8, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1});
  op.weight = tensor(random_floats(rng, {8, 8, 1, 1}, 0.5f));
  op.bias = tensor(random_floats(rng, {8}, 0.1f));
  m.ops.push_back(op);
  // 5: residual add of the pool and the 1x1 conv; 6: relu; 7: avg pool 3x3 stride 1 pad 1
  op = simple(format::op_kind::add, "residual", 5);
  op.input_b = 4;
  m.ops.push_back(op);
  m.ops.push_back(simple(format::op_kind::relu, "act_b", 6));
  op = simple(format::op_kind::avg_pool2d, "pool_avg", 7);
  op.pool = {3, 3, 1, 1, 1, 1};
  m.ops.push_back(op);
  // 8: grouped conv 8->6 2x2, 2 groups, 1-bit and 4-bit groups of 2 channels        (6, 3, 3)
  op = conv("conv_c", 8, {8, 6, 2, 2, 1, 1, 0, 0, 1, 1, 2});
  op.weight = tensor(random_quantized(rng, {6, 4, 2, 2}, 2, {1, 4, 3}, 16));
  op.bias = tensor(random_floats(rng, {6}, 0.1f));
  m.ops.push_back(op);
  // 9: flatten (54); 10: linear 54->16 at 3-4 bits with bias; 11: relu;
  // 12: linear 16->6 without bias, 16-bit codes, batch norm folded (channel scale)
  m.ops.push_back(simple(format::op_kind::flatten, "flat", 9));
  op = simple(format::op_kind::linear, "fc_a", 10);
  op.fc = {54, 16};
  std::vector<std::uint8_t> fc_bits(16);
  for (std::size_t i = 0; i < fc_bits.size(); ++i) fc_bits[i] = i % 3 ? 3 : 4;
  op.weight = tensor(random_quantized(rng, {16, 54}, 1, fc_bits, 54));
  op.bias = tensor(random_floats(rng, {16}, 0.1f));
  m.ops.push_back(op);
  m.ops.push_back(simple(format::op_kind::relu, "act_c", 11));
  op = simple(format::op_kind::linear, "fc_b", 12);
  op.fc = {16, 6};
  op.weight = tensor(random_quantized(rng, {6, 16}, 6, {16}, 16));
  op.channel_scale = tensor(random_floats(rng, {6}, 0.3f, 1.0f));
  m.ops.push_back(op);
  // 13: global average pool of conv_c (6); 14: add with fc_b -> the output (6)
  m.ops.push_back(simple(format::op_kind::global_avg_pool, "gap", 9));
  op = simple(format::op_kind::add, "logits", 13);
  op.input_b = 14;
  m.ops.push_back(op);
  format::infer_shapes(m);
  calibrate_int8(m, random_inputs(m, rng));
  return m;
}

// ---- act: learned activation grids ----------------------------------------------------------

/// A small net with an act_quant of every kind the ONNX export writes: signed 6 bits on the
/// input; unsigned after a ReLU, two groups at 2 and 4 bits (per-channel scales); signed
/// 8 bits without a ReLU (int8 clamped to -127); unsigned 8 bits (uint8 is the grid). Each
/// range is 0.8 x max |input| over 256 random images (so some values clip).
format::model_file act_model(std::uint32_t seed) {
  std::mt19937 rng(seed);
  format::model_file m;
  m.input = format::shape::image(1, 12, 12);
  m.mean = {0.5};
  m.stddev = {0.25};
  auto tensor = [&](format::tensor_data t) { return add_tensor(m, std::move(t)); };
  auto add = [&](format::op_kind k, std::string name) {
    return add_chained(m, k, std::move(name));
  };
  auto act = [&](std::string name, bool is_signed, std::uint32_t group_size,
                 std::vector<std::uint8_t> bits) {
    const std::size_t i = add(format::op_kind::act_quant, std::move(name));
    m.ops[i].act = {is_signed, group_size, bits, std::vector<float>(bits.size(), 1.0f)};
  };
  act("input_quant", true, 1, {6});
  std::size_t i = add(format::op_kind::conv2d, "conv1"); // (6, 10, 10)
  m.ops[i].conv = {1, 6, 3, 3, 1, 1, 0, 0, 1, 1, 1};
  m.ops[i].weight = tensor(random_quantized(rng, {6, 1, 3, 3}, 2, {4, 6, 3}, 9));
  m.ops[i].bias = tensor(random_floats(rng, {6}, 0.2f));
  add(format::op_kind::relu, "relu1");
  act("relu1_quant", false, 3, {2, 4});
  add(format::op_kind::max_pool2d, "pool1"); // (6, 5, 5)
  i = add(format::op_kind::conv2d, "conv2"); // (8, 3, 3)
  m.ops[i].conv = {6, 8, 3, 3, 1, 1, 0, 0, 1, 1, 1};
  m.ops[i].weight = tensor(random_quantized(rng, {8, 6, 3, 3}, 4, {5, 3}, 54));
  m.ops[i].bias = tensor(random_floats(rng, {8}, 0.2f));
  act("conv2_quant", true, 8, {8});
  add(format::op_kind::flatten, "flat"); // (72)
  i = add(format::op_kind::linear, "fc1");
  m.ops[i].fc = {72, 20};
  m.ops[i].weight = tensor(random_quantized(rng, {20, 72}, 5, {4, 8, 2, 6}, 72));
  m.ops[i].bias = tensor(random_floats(rng, {20}, 0.1f));
  add(format::op_kind::relu, "relu2");
  act("relu2_quant", false, 20, {8});
  i = add(format::op_kind::linear, "fc2");
  m.ops[i].fc = {20, 10};
  m.ops[i].weight = tensor(random_quantized(rng, {10, 20}, 10, {7}, 20));
  format::infer_shapes(m);
  // Ranges in order: each act_quant's input is the output of the model cut before it.
  const std::vector<float> x = random_inputs(m, rng);
  for (std::size_t a = 0; a < m.ops.size(); ++a) {
    if (m.ops[a].kind != format::op_kind::act_quant) continue;
    float mx = 0;
    if (a == 0) {
      for (float v : x) mx = std::max(mx, std::fabs(v));
    } else {
      format::model_file cut = m;
      cut.ops.resize(a);
      const tensor2<float> y = deploy::runtime(cut).run(x.data(), 256);
      for (float v : y) mx = std::max(mx, std::fabs(v));
    }
    for (float& r : m.ops[a].act.ranges) r = 0.8f * mx;
  }
  calibrate_int8(m, x); // the conv / linear inputs, after the activation ranges
  return m;
}

// ---- full: weights on the full grid --------------------------------------------------------

/// A small net whose weight tensors are on the full grid (fixed_bits' uniform_grid::full,
/// issue #24), every channel holding the lowest code -2^(k-1) of its group: conv 1->4 3x3 with
/// per-channel groups at 2, 8, 4 and 2 bits (-2, -128, -8, -2) and a folded batch norm; relu;
/// max pool 2x2; linear 36->6 in groups of 3 channels at 2 and 3 bits.
format::model_file full_grid_model(std::uint32_t seed) {
  std::mt19937 rng(seed);
  format::model_file m;
  m.input = format::shape::image(1, 8, 8);
  m.mean = {0.5};
  m.stddev = {0.25};
  auto tensor = [&](format::tensor_data t) { return add_tensor(m, std::move(t)); };
  auto add = [&](format::op_kind k, std::string name) {
    return add_chained(m, k, std::move(name));
  };
  std::size_t i = add(format::op_kind::conv2d, "conv1"); // (4, 6, 6)
  m.ops[i].conv = {1, 4, 3, 3, 1, 1, 0, 0, 1, 1, 1};
  m.ops[i].weight = tensor(random_quantized(rng, {4, 1, 3, 3}, 1, {2, 8, 4, 2}, 9, true));
  m.ops[i].channel_scale = tensor(random_floats(rng, {4}, 0.4f, 1.0f));
  m.ops[i].bias = tensor(random_floats(rng, {4}, 0.2f));
  add(format::op_kind::relu, "relu1");
  i = add(format::op_kind::max_pool2d, "pool1"); // (4, 3, 3)
  m.ops[i].pool = {2, 2, 2, 2, 0, 0};
  add(format::op_kind::flatten, "flat"); // (36)
  i = add(format::op_kind::linear, "fc1");
  m.ops[i].fc = {36, 6};
  m.ops[i].weight = tensor(random_quantized(rng, {6, 36}, 3, {2, 3}, 36, true));
  m.ops[i].bias = tensor(random_floats(rng, {6}, 0.1f));
  format::infer_shapes(m);
  calibrate_int8(m, random_inputs(m, rng));
  return m;
}

// ---- reference: bitgrad's runtime on images ------------------------------------------------

int reference(const fs::path& model, const fs::path& dir, const std::string& data,
              std::size_t random, std::uint32_t seed) {
  const auto rt = deploy::runtime::load(model);
  const std::size_t size = rt.input_size();
  std::vector<std::uint8_t> pixels, labels;
  std::size_t n = 0;
  if (!data.empty()) {
    const dataset d = load_sample(data);
    if (d.image_size() != size)
      throw config_error("reference: images of " + std::to_string(d.image_size()) +
                         " values, model input " + rt.model().input.str());
    pixels = d.pixels;
    for (auto l : d.labels) labels.push_back(static_cast<std::uint8_t>(l));
    n = d.size();
  } else {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> byte(0, 255);
    n = random;
    pixels.resize(n * size);
    for (auto& p : pixels) p = static_cast<std::uint8_t>(byte(rng));
  }
  fs::create_directories(dir);
  const std::vector<float> x = rt.normalise(pixels.data(), n);
  write_raw(dir / "pixels.u8", pixels);
  if (!labels.empty()) write_raw(dir / "labels.u8", labels);
  write_raw(dir / "input.f32", x);
  for (auto p : {deploy::precision::float32, deploy::precision::int8}) {
    if (p == deploy::precision::int8 && !rt.int8_ready()) continue;
    const tensor2<float> y = rt.run(x.data(), n, p);
    write_raw(dir / (std::string("logits_") + deploy::to_string(p) + ".f32"),
              std::vector<float>(y.data(), y.data() + y.size()));
  }
  const auto& in = rt.model().input;
  std::string shape = "[" + std::to_string(in.dims[0]);
  if (in.rank == 3) shape += ", " + std::to_string(in.dims[1]) + ", " + std::to_string(in.dims[2]);
  shape += "]";
  const std::string meta = "{\"images\": " + std::to_string(n) + ", \"input_shape\": " + shape +
                           ", \"outputs\": " + std::to_string(rt.output_size()) +
                           ", \"labels\": " + (labels.empty() ? "false" : "true") +
                           ", \"int8\": " + (rt.int8_ready() ? "true" : "false") + "}\n";
  write_file_atomically(dir / "meta.json", meta);
  std::printf("%zu images through %s -> %s\n", n, model.c_str(), dir.c_str());
  return 0;
}

// ---- pretrained weights --------------------------------------------------------------------

int train_fp32(const std::string& data, std::size_t epochs, const fs::path& out,
               std::uint64_t seed) {
  const fs::path dir = data;
  const dataset train_set =
      load_mnist_format(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz");
  const dataset test_set =
      load_mnist_format(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz");
  auto net = nn::lenet5<float>({.seed = seed});
  optim::adam<float> opt({.lr = 2e-3});
  loader_options lo = fashion_normalise;
  lo.seed = seed;
  loader<float> batches(train_set, lo);
  nn::softmax_cross_entropy<float> loss;
  tensor4<float> x;
  std::vector<std::int32_t> y;
  auto params = [&](auto&& f) { net.visit_parameters(f); };
  for (std::size_t e = 0; e < epochs; ++e) {
    while (batches.next(x, y)) { // false at the end of an epoch; the next call starts the next
      net.zero_grad();
      loss.forward(net.forward(x), y);
      net.backward(loss.backward());
      opt.step(params);
    }
  }
  train::save_npz(net, out);
  const auto eval = train::evaluate(net, test_set, fashion_normalise);
  std::printf("{\"test_accuracy\": %.17g}\n", eval.accuracy);
  return 0;
}

int npz_logits(const fs::path& weights, const std::string& data, const fs::path& compare,
               double tolerance) {
  auto net = nn::lenet5<float>({});
  train::load_npz(net, weights);
  net.train(false);
  const dataset d = load_sample(data);
  loader_options lo = fashion_normalise;
  lo.shuffle = false;
  lo.batch_size = 400;
  loader<float> batches(d, lo);
  tensor4<float> x;
  std::vector<std::int32_t> y;
  std::vector<float> logits;
  while (batches.next(x, y)) {
    const auto& out = net.forward(x);
    logits.insert(logits.end(), out.data(), out.data() + out.size());
  }
  const std::vector<float> other = read_floats(compare);
  if (other.size() != logits.size())
    throw config_error("npz-logits: " + compare.string() + " holds " +
                       std::to_string(other.size()) + " values, bitgrad computed " +
                       std::to_string(logits.size()));
  double worst = 0;
  std::size_t same = 0;
  for (std::size_t i = 0; i < logits.size(); ++i)
    worst = std::max(worst, std::fabs(double(logits[i]) - double(other[i])));
  for (std::size_t i = 0; i < d.size(); ++i) {
    const float* a = logits.data() + i * 10;
    const float* b = other.data() + i * 10;
    same += std::max_element(a, a + 10) - a == std::max_element(b, b + 10) - b;
  }
  std::printf("%zu images: max |logit difference| %.3g (tolerance %.3g), top-1 agreement %zu/%zu\n",
              d.size(), worst, tolerance, same, d.size());
  return worst <= tolerance ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"bitgrad's side of the ONNX / NumPy interoperability tests"};
  app.require_subcommand(1);
  std::string out, model, dir, data, weights, compare;
  std::size_t random = 0, epochs = 2;
  std::uint32_t seed = 1;
  double tolerance = 1e-4;

  auto* z = app.add_subcommand("zoo", "write a model with every operation");
  z->add_option("out", out)->required();
  z->add_option("--seed", seed);

  auto* ac = app.add_subcommand("act", "write a model with act_quant operations");
  ac->add_option("out", out)->required();
  ac->add_option("--seed", seed);

  auto* fg = app.add_subcommand("full", "write a model with full-grid weights (codes -2^(k-1))");
  fg->add_option("out", out)->required();
  fg->add_option("--seed", seed);

  auto* r = app.add_subcommand("reference", "bitgrad's runtime outputs for the ONNX checks");
  r->add_option("model", model)->required();
  r->add_option("dir", dir)->required();
  r->add_option("--data", data, "the Fashion-MNIST sample (train then test images)");
  r->add_option("--random", random, "N random images instead");
  r->add_option("--seed", seed);

  auto* t = app.add_subcommand("train-fp32", "short FP32 LeNet-5 training, saved as .npz");
  t->add_option("--data", data)->required();
  t->add_option("--epochs", epochs);
  t->add_option("--out", out)->required();
  t->add_option("--seed", seed);

  auto* n = app.add_subcommand("npz-logits", "LeNet-5 from an .npz vs another framework");
  n->add_option("weights", weights)->required();
  n->add_option("--data", data)->required();
  n->add_option("--compare", compare)->required();
  n->add_option("--tolerance", tolerance);
  CLI11_PARSE(app, argc, argv);
  try {
    if (*z) {
      const std::size_t bytes = format::write_model_file(out, zoo(seed));
      std::printf("wrote %s (%zu bytes)\n", out.c_str(), bytes);
      return 0;
    }
    if (*ac) {
      const std::size_t bytes = format::write_model_file(out, act_model(seed));
      std::printf("wrote %s (%zu bytes)\n", out.c_str(), bytes);
      return 0;
    }
    if (*fg) {
      const std::size_t bytes = format::write_model_file(out, full_grid_model(seed));
      std::printf("wrote %s (%zu bytes)\n", out.c_str(), bytes);
      return 0;
    }
    if (*r) {
      if (data.empty() == (random == 0))
        throw config_error("reference: give exactly one of --data and --random");
      return reference(model, dir, data, random, seed);
    }
    if (*t) return train_fp32(data, epochs, out, seed);
    return npz_logits(weights, data, compare, tolerance);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "interop_tool: %s\n", e.what());
    return 2;
  }
}
