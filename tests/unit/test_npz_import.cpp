// Pretrained weights in: the .npz reader on real numpy files (stored, deflated, ZIP64 extras),
// load_npz by parameter name with its errors, PyTorch's layouts, and save_npz -> load_npz.
#include "test_data_common.hpp"

#include <bitgrad/io/npz.hpp>
#include <bitgrad/nn/activation.hpp>
#include <bitgrad/nn/batch_norm.hpp>
#include <bitgrad/nn/conv2d.hpp>
#include <bitgrad/nn/flatten.hpp>
#include <bitgrad/nn/linear.hpp>
#include <bitgrad/nn/models.hpp>
#include <bitgrad/nn/sequential.hpp>
#include <bitgrad/quant/frac_bits.hpp>
#include <bitgrad/train/npz_import.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace test_npz_import {

namespace fs = std::filesystem;
using namespace bitgrad;
using bitgrad_test::temp_dir;
using train::npy_entry;

namespace {

const fs::path fixtures = fs::path(BITGRAD_TEST_DATA_DIR) / "npz";

/// conv 1->2 2x2 "conv" -> flatten -> linear 2->3 "fc": the shapes of the numpy fixtures.
auto small_net() {
  return nn::sequential(
      nn::conv2d<float>({.in_channels = 1, .out_channels = 2, .kernel = 2, .name = "conv"}),
      nn::flatten<float>("flat"),
      nn::linear<float>({.in_features = 2, .out_features = 3, .name = "fc"}));
}

template <class T>
npy_entry npy(const std::string& name, const std::vector<T>& v, std::vector<std::size_t> shape) {
  xt::xarray<T> a = xt::adapt(v, shape);
  return {name, xt::dump_npy(a)};
}

std::vector<npy_array> archive(const std::vector<npy_entry>& entries) {
  const std::string zip = train::zip_npy_entries(entries);
  return parse_npz({reinterpret_cast<const std::uint8_t*>(zip.data()), zip.size()}, "test.npz");
}

/// What the fixtures hold (tests/data/npz/make_fixtures.py).
std::vector<npy_entry> fixture_entries() {
  std::vector<float> cw(8), fw(6);
  for (std::size_t i = 0; i < 8; ++i) cw[i] = static_cast<float>(i) / 8;
  for (std::size_t i = 0; i < 6; ++i) fw[i] = static_cast<float>(i) / 4 - 0.5f;
  return {npy("conv.weight", cw, {2, 1, 2, 2}), npy<double>("conv.bias", {0.5, -0.25}, {2}),
          npy("fc.weight", fw, {3, 2}), npy<float>("fc.bias", {1, 2, 3}, {3})};
}

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

} // namespace

TEST_CASE("npz reader: numpy's savez and savez_compressed files") {
  for (const char* file : {"stored.npz", "deflated.npz"}) {
    CAPTURE(file);
    const auto a = read_npz(fixtures / file);
    REQUIRE(a.size() == 4);
    CHECK(a[0].name == "conv.weight");
    CHECK(a[0].dtype == "<f4");
    CHECK(a[0].shape == std::vector<std::size_t>{2, 1, 2, 2});
    const auto w = a[0].to_doubles();
    for (std::size_t i = 0; i < 8; ++i) CHECK(w[i] == static_cast<double>(i) / 8);
    CHECK(a[1].dtype == "<f8");
    CHECK(a[1].to_doubles() == std::vector<double>{0.5, -0.25});
    CHECK(a[2].shape == std::vector<std::size_t>{3, 2});
    CHECK(a[3].to_doubles() == std::vector<double>{1, 2, 3});
  }
}

TEST_CASE("npz reader: malformed archives throw format_error") {
  const auto good = read_file_bytes(fixtures / "deflated.npz", 1 << 20);
  // Truncated: no end record.
  std::vector<std::uint8_t> cut(good.begin(), good.begin() + static_cast<long>(good.size() / 2));
  CHECK_THROWS_AS(parse_npz(cut, "cut.npz"), format_error);
  // One flipped byte inside the first member's deflate data: inflate or the CRC fails.
  std::vector<std::uint8_t> flipped = good;
  const std::size_t data = 30 + (good[26] | good[27] << 8) + (good[28] | good[29] << 8);
  flipped[data + 5] ^= 0x5A;
  CHECK_THROWS_AS(parse_npz(flipped, "flipped.npz"), format_error);
  // Not a ZIP at all.
  const std::vector<std::uint8_t> text(100, 'x');
  CHECK(error_of([&] { parse_npz(text, "text.npz"); }).find("not a ZIP archive") !=
        std::string::npos);
}

TEST_CASE("npz reader: every single-byte corruption is read or refused, never a crash") {
  for (const char* file : {"stored.npz", "deflated.npz"}) {
    const auto good = read_file_bytes(fixtures / file, 1 << 20);
    std::size_t refused = 0;
    for (std::size_t at = 0; at < good.size(); ++at)
      for (std::uint8_t x : {std::uint8_t(0x01), std::uint8_t(0x80), std::uint8_t(0xFF)}) {
        std::vector<std::uint8_t> bad = good;
        bad[at] ^= x;
        try {
          (void)parse_npz(bad, "mutated.npz");
        } catch (const format_error&) {
          ++refused;
        }
      }
    CAPTURE(file);
    CHECK(refused > good.size()); // most corruptions are caught (CRC, structure)
  }
}

TEST_CASE("load_npz: fills weights and biases by name, any order, float64 converted") {
  for (const char* file : {"stored.npz", "deflated.npz"}) {
    auto net = small_net();
    train::load_npz(net, fixtures / file);
    const auto& conv = net.get<0>();
    for (std::size_t i = 0; i < 8; ++i) CHECK(conv.weight().data()[i] == static_cast<float>(i) / 8);
    CHECK(conv.bias()(0) == 0.5f);
    CHECK(conv.bias()(1) == -0.25f);
    CHECK(net.get<2>().weight()(2, 1) == 5.0f / 4 - 0.5f);
    CHECK(net.get<2>().bias()(2) == 3.0f);
  }
}

TEST_CASE("load_npz: PyTorch's conv (out, in/groups, kh, kw) and linear (out, in) layouts") {
  // w[o][c][i][j] = f(o, c, i, j) written as PyTorch would store it; the layer must compute
  // the cross-correlation y[n][o][h][w] = b[o] + sum_{c,i,j} w[o][c][i][j] x[n][c][h+i][w+j].
  const std::size_t out = 4, in = 6, groups = 2, k = 3, hw = 5, cin = in / groups;
  auto f = [](std::size_t o, std::size_t c, std::size_t i, std::size_t j) {
    return static_cast<float>(0.01 * double(o) - 0.02 * double(c) + 0.03 * double(i) -
                              0.05 * double(j) + 0.001 * double(o * c * i + j));
  };
  std::vector<float> w(out * cin * k * k), b{0.1f, -0.2f, 0.3f, -0.4f};
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t c = 0; c < cin; ++c)
      for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < k; ++j) w[((o * cin + c) * k + i) * k + j] = f(o, c, i, j);
  nn::conv2d<double> conv(
      {.in_channels = in, .out_channels = out, .kernel = k, .groups = groups, .name = "c"});
  train::load_arrays(conv, archive({npy("c.weight", w, {out, cin, k, k}), npy("c.bias", b, {out})}),
                     "layout.npz");
  conv.train(false);
  tensor4<double> x = tensor4<double>::from_shape({1, in, hw, hw});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.7 * double(i));
  const auto& y = conv.forward(x);
  const std::size_t oh = hw - k + 1;
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t h = 0; h < oh; ++h)
      for (std::size_t v = 0; v < oh; ++v) {
        const std::size_t g = o / (out / groups);
        double want = b[o];
        for (std::size_t c = 0; c < cin; ++c)
          for (std::size_t i = 0; i < k; ++i)
            for (std::size_t j = 0; j < k; ++j)
              want += double(f(o, c, i, j)) * x(0, g * cin + c, h + i, v + j);
        CHECK(y(0, o, h, v) == doctest::Approx(want).epsilon(1e-12));
      }
  // Linear: y = x W^T + b with W (out, in) as nn.Linear stores it.
  nn::linear<double> fc({.in_features = 3, .out_features = 2, .name = "l"});
  train::load_arrays(fc,
                     archive({npy<float>("l.weight", {1, 2, 3, 4, 5, 6}, {2, 3}),
                              npy<float>("l.bias", {0.5, -0.5}, {2})}),
                     "layout.npz");
  tensor2<double> xi = tensor2<double>::from_shape({1, 3});
  xi(0, 0) = 1;
  xi(0, 1) = -1;
  xi(0, 2) = 2;
  const auto& yi = fc.forward(xi);
  CHECK(yi(0, 0) == 1 - 2 + 6 + 0.5);
  CHECK(yi(0, 1) == 4 - 5 + 12 - 0.5);
}

TEST_CASE("load_npz: missing, extra, misshapen, wrong dtype and non-finite arrays") {
  auto entries = fixture_entries();
  auto without = [&](const std::string& name) {
    std::vector<npy_entry> e;
    for (const auto& x : entries)
      if (x.name != name) e.push_back(x);
    return e;
  };
  auto net = small_net();
  const float before = net.get<0>().weight().data()[3];
  auto load = [&](const std::vector<npy_entry>& e) {
    return error_of([&] { train::load_arrays(net, archive(e), "w.npz"); });
  };
  std::string e = load(without("fc.bias"));
  CHECK(e.find("w.npz: no array 'fc.bias'") != std::string::npos);
  CHECK(e.find("expected shape (3,)") != std::string::npos);
  auto extra = entries;
  extra.push_back(npy<float>("fc.running_mean", {0, 0, 0}, {3}));
  e = load(extra);
  CHECK(e.find("'fc.running_mean' matches no parameter") != std::string::npos);
  CHECK(e.find("conv.weight, conv.bias, fc.weight, fc.bias") != std::string::npos);
  auto misshapen = without("conv.weight");
  misshapen.push_back(npy<float>("conv.weight", std::vector<float>(8, 1), {2, 2, 2, 1}));
  e = load(misshapen);
  CHECK(e.find("'conv.weight' has shape (2, 2, 2, 1)") != std::string::npos);
  CHECK(e.find("expects (2, 1, 2, 2)") != std::string::npos);
  auto ints = without("fc.bias");
  ints.push_back(npy<std::int64_t>("fc.bias", {1, 2, 3}, {3}));
  e = load(ints);
  CHECK(e.find("'fc.bias' has dtype '<i8'") != std::string::npos);
  CHECK(e.find("float32 ('<f4') or float64 ('<f8')") != std::string::npos);
  auto nan = without("fc.bias");
  nan.push_back(npy<float>("fc.bias", {1, std::numeric_limits<float>::quiet_NaN(), 3}, {3}));
  e = load(nan);
  CHECK(e.find("'fc.bias' holds a non-finite value at element 1") != std::string::npos);
  auto twice = entries;
  twice.push_back(entries[0]);
  CHECK(load(twice).find("appears twice") != std::string::npos);
  // No failed load wrote anything.
  CHECK(net.get<0>().weight().data()[3] == before);
  // numpy's own dtypes bitgrad does not take.
  for (const auto& a : read_npz(fixtures / "dtypes.npz")) {
    CAPTURE(a.name);
    const std::string why = error_of([&] { (void)a.to_doubles(); });
    if (a.name == "fortran")
      CHECK(why.find("Fortran") != std::string::npos);
    else
      CHECK(why.find("bitgrad takes float32") != std::string::npos);
  }
}

TEST_CASE("load_npz: names are the network's parameter names; batch-norm statistics too") {
  auto lenet = nn::lenet5<float>({});
  CHECK(train::npz_parameter_names(lenet) ==
        std::vector<std::string>{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                 "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                                 "fc3.bias"});
  // Every weight, bias and norm parameter visit_parameters names is among them (ResNet-20:
  // nested blocks and batch norms).
  auto resnet = nn::resnet20<float>({});
  const auto names = train::npz_parameter_names(resnet);
  const std::set<std::string> set(names.begin(), names.end());
  std::size_t seen = 0;
  resnet.visit_parameters([&](param_ref<float>& p) {
    if (p.kind == param_kind::weight || p.kind == param_kind::bias || p.kind == param_kind::norm) {
      CHECK(set.count(p.name) == 1);
      ++seen;
    }
  });
  CHECK(seen > 0);
  CHECK(set.count("layer1.0.bn1.running_var") == 1);
  std::size_t stats = 0;
  for (const auto& n : names) stats += n.ends_with(".running_mean") || n.ends_with(".running_var");
  CHECK(names.size() == seen + stats);
}

TEST_CASE("save_npz -> load_npz restores every weight and batch-norm statistic") {
  temp_dir dir;
  auto make = [](std::uint64_t seed) {
    return nn::sequential(
        nn::conv2d<float, quant::frac_bits>(
            {.in_channels = 1, .out_channels = 3, .kernel = 3, .seed = seed, .name = "conv"}),
        nn::batch_norm<float, 4>({.features = 3, .name = "bn"}), nn::relu<float, 4>("relu"),
        nn::flatten<float>("flat"),
        nn::linear<float>({.in_features = 12, .out_features = 2, .seed = seed + 1, .name = "fc"}));
  };
  auto a = make(1);
  for (std::size_t c = 0; c < 3; ++c) {
    a.get<1>().running_mean()(c) = 0.1f * float(c + 1);
    a.get<1>().running_var()(c) = 1.5f + float(c);
    a.get<1>().gamma()(c) = 0.5f + float(c);
  }
  train::save_npz(a, dir / "a.npz");
  auto b = make(7);
  CHECK(b.get<0>().weight().data()[0] != a.get<0>().weight().data()[0]);
  train::load_npz(b, dir / "a.npz");
  CHECK(b.get<0>().weight() == a.get<0>().weight());
  CHECK(b.get<0>().bias() == a.get<0>().bias());
  CHECK(b.get<1>().gamma() == a.get<1>().gamma());
  CHECK(b.get<1>().beta() == a.get<1>().beta());
  CHECK(b.get<1>().running_mean() == a.get<1>().running_mean());
  CHECK(b.get<1>().running_var() == a.get<1>().running_var());
  CHECK(b.get<4>().weight() == a.get<4>().weight());
  // The quantizer's own parameters (bitwidths) are not in the file.
  for (const auto& n : train::npz_parameter_names(a)) CHECK(n.find("bits") == std::string::npos);
}

} // namespace test_npz_import
