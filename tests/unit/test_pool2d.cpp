// Pooling: hand-computed max/avg cases (values, argmax, bprop scatter), then the optimised
// kernels against the reference twins over strides, paddings, kernels and odd sizes.
#include <bitgrad/kernels/pool2d.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace test_pool2d {

using bitgrad::pool2d_geometry;

TEST_CASE_TEMPLATE("max pool 2x2/2: values, argmax and bprop by hand", T, float, double) {
  pool2d_geometry g;
  g.in_h = 3; // odd: the last row is dropped by the floor
  g.in_w = 4;
  // clang-format off
  std::vector<T> x{1, 5, 2, 2,
                   3, 4, 8, 2,
                   9, 9, 9, 9};
  // clang-format on
  std::vector<T> y(2);
  std::vector<std::uint32_t> arg(2);
  bitgrad::max_pool2d_fprop(g, x.data(), y.data(), arg.data());
  CHECK(y == std::vector<T>{5, 8});
  CHECK(arg == std::vector<std::uint32_t>{1, 6});
  // ties: the first maximum in row-major window order wins
  std::vector<T> ties{7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0};
  bitgrad::max_pool2d_fprop(g, ties.data(), y.data(), arg.data());
  CHECK(arg == std::vector<std::uint32_t>{0, 2});
  std::vector<T> dy{T(0.5), T(-2)}, dx(12, std::numeric_limits<T>::quiet_NaN());
  bitgrad::max_pool2d_bprop(g, dy.data(), arg.data(), dx.data());
  CHECK(dx == std::vector<T>{0.5, 0, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0});
}

TEST_CASE_TEMPLATE("max pool with padding never picks padding; overlapping windows add up", T,
                   float, double) {
  pool2d_geometry g;
  g.in_h = g.in_w = 2;
  g.kernel_h = g.kernel_w = 3;
  g.stride_h = g.stride_w = 1;
  g.pad_h = g.pad_w = 1;
  std::vector<T> x{-4, -3, -2, -1}, y(4), dy{1, 2, 3, 4}, dx(4);
  std::vector<std::uint32_t> arg(4);
  bitgrad::max_pool2d_fprop(g, x.data(), y.data(), arg.data());
  CHECK(y == std::vector<T>{-1, -1, -1, -1}); // all negative: padding (0) must not win
  CHECK(arg == std::vector<std::uint32_t>{3, 3, 3, 3});
  bitgrad::max_pool2d_bprop(g, dy.data(), arg.data(), dx.data());
  CHECK(dx == std::vector<T>{0, 0, 0, 10});
}

TEST_CASE_TEMPLATE("avg pool counts padding as zeros with divisor kernel_h*kernel_w", T, float,
                   double) {
  pool2d_geometry g;
  g.in_h = g.in_w = 2;
  g.kernel_h = g.kernel_w = 2;
  g.stride_h = g.stride_w = 2;
  g.pad_h = g.pad_w = 1;
  CHECK(g.out_h() == 2);
  std::vector<T> x{4, 8, 12, 16}, y(4), dy{4, 8, 12, 16}, dx(4);
  bitgrad::avg_pool2d_fprop(g, x.data(), y.data());
  CHECK(y == std::vector<T>{1, 2, 3, 4}); // each window holds one real input, divisor 4
  bitgrad::avg_pool2d_bprop(g, dy.data(), dx.data());
  CHECK(dx == std::vector<T>{1, 2, 3, 4});

  pool2d_geometry h; // overlapping 2x2 stride 1, no padding, on 2x3
  h.in_h = 2;
  h.in_w = 3;
  h.stride_h = h.stride_w = 1;
  std::vector<T> a{1, 2, 3, 4, 5, 6}, b(2), db{4, 8}, da(6);
  bitgrad::avg_pool2d_fprop(h, a.data(), b.data());
  CHECK(b == std::vector<T>{3, 4});
  bitgrad::avg_pool2d_bprop(h, db.data(), da.data());
  CHECK(da == std::vector<T>{1, 3, 2, 1, 3, 2});
}

TEST_CASE_TEMPLATE("global average pool by hand", T, float, double) {
  std::vector<T> x{1, 2, 3, 4, 10, 20, 30, 40, -1, -1, -1, -1}, y(3), dx(12);
  bitgrad::global_avg_pool_fprop<T>(1, 3, 4, x.data(), y.data());
  CHECK(y == std::vector<T>{2.5, 25, -1});
  std::vector<T> dy{4, 8, -4};
  bitgrad::global_avg_pool_bprop<T>(1, 3, 4, dy.data(), dx.data());
  CHECK(dx == std::vector<T>{1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1, -1});
  CHECK_THROWS_AS(bitgrad::global_avg_pool_fprop<T>(1, 3, 0, x.data(), y.data()),
                  bitgrad::config_error);
}

TEST_CASE_TEMPLATE("optimised pooling matches the reference over a grid", T, float, double) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> d(-1, 1);
  std::size_t checked = 0;
  for (std::size_t k : {1, 2, 3})
    for (std::size_t s : {1, 2, 3})
      for (std::size_t pad : {0, 1})
        for (std::size_t hw : {5, 7}) {
          pool2d_geometry g;
          g.batch = 1 + checked % 3;
          g.channels = 3;
          g.in_h = hw;
          g.in_w = 12 - hw; // 7x5 and 5x7
          g.kernel_h = k;
          g.kernel_w = k == 3 ? 2 : k;
          g.stride_h = s;
          g.stride_w = s == 3 ? 1 : s;
          g.pad_h = pad;
          g.pad_w = pad;
          try {
            g.validate();
          } catch (const bitgrad::config_error&) {
            continue;
          }
          std::vector<T> x(g.input_count()), dy(g.output_count());
          for (auto& v : x) v = T(d(rng));
          for (auto& v : dy) v = T(d(rng));
          std::vector<T> y(g.output_count()), y_ref(g.output_count()), dx(g.input_count()),
              dx_ref(g.input_count());
          std::vector<std::uint32_t> arg(g.output_count()), arg_ref(g.output_count());
          INFO("k " << k << " s " << s << " pad " << pad << " hw " << hw);
          bitgrad::max_pool2d_fprop(g, x.data(), y.data(), arg.data());
          bitgrad::ref::max_pool2d_fprop(g, x.data(), y_ref.data(), arg_ref.data());
          CHECK(y == y_ref);
          CHECK(arg == arg_ref);
          bitgrad::max_pool2d_bprop(g, dy.data(), arg.data(), dx.data());
          bitgrad::ref::max_pool2d_bprop(g, dy.data(), arg_ref.data(), dx_ref.data());
          CHECK(dx == dx_ref);
          bitgrad::avg_pool2d_fprop(g, x.data(), y.data());
          bitgrad::ref::avg_pool2d_fprop(g, x.data(), y_ref.data());
          for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == doctest::Approx(y_ref[i]));
          bitgrad::avg_pool2d_bprop(g, dy.data(), dx.data());
          bitgrad::ref::avg_pool2d_bprop(g, dy.data(), dx_ref.data());
          for (std::size_t i = 0; i < dx.size(); ++i) CHECK(dx[i] == doctest::Approx(dx_ref[i]));
          ++checked;
        }
  CHECK(checked >= 30);
  // global pooling with a plane longer than a SIMD register and a ragged tail
  std::vector<T> x(2 * 3 * 37), y(6), y_ref(6);
  for (auto& v : x) v = T(d(rng));
  bitgrad::global_avg_pool_fprop<T>(2, 3, 37, x.data(), y.data());
  bitgrad::ref::global_avg_pool_fprop<T>(2, 3, 37, x.data(), y_ref.data());
  for (std::size_t i = 0; i < 6; ++i) CHECK(y[i] == doctest::Approx(y_ref[i]));
}

TEST_CASE("pool2d geometry validation names the problem") {
  auto message = [](const pool2d_geometry& g) {
    try {
      g.validate();
    } catch (const bitgrad::config_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  pool2d_geometry g;
  g.in_h = g.in_w = 4;
  CHECK(message(g) == "no error");
  CHECK(g.out_h() == 2);
  auto bad = g;
  bad.pad_h = 2;
  CHECK(message(bad).find("padding (2, 0) must be at most half the kernel (2, 2)") !=
        std::string::npos);
  bad = g;
  bad.in_w = 1;
  CHECK(message(bad).find("kernel width 2 is larger than the padded input width 1") !=
        std::string::npos);
  bad = g;
  bad.stride_h = 0;
  CHECK(message(bad).find("stride_h must be >= 1, got 0") != std::string::npos);
}

TEST_CASE_TEMPLATE("max pool keeps NaN: a window's first NaN wins, in every path", T, float,
                   double) {
  // Issue #17: a NaN was kept only when it came first in its window (x > best is false for
  // NaN), so NaN data could vanish before the loss. As in PyTorch, a NaN now always wins.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  struct shape {
    std::size_t kernel, stride, pad;
  };
  for (const shape s : {shape{2, 2, 0}, shape{3, 1, 1}, shape{3, 2, 0}})
    for (std::size_t at = 0; at < 16; ++at) {
      CAPTURE(s.kernel);
      CAPTURE(at);
      pool2d_geometry g;
      g.batch = 1;
      g.channels = 1;
      g.in_h = g.in_w = 4;
      g.kernel_h = g.kernel_w = s.kernel;
      g.stride_h = g.stride_w = s.stride;
      g.pad_h = g.pad_w = s.pad;
      std::vector<T> x(16);
      for (std::size_t i = 0; i < 16; ++i) x[i] = T(i % 5); // ties included
      x[at] = nan;
      std::vector<T> y(g.output_count()), y_ref(g.output_count());
      std::vector<std::uint32_t> arg(g.output_count()), arg_ref(g.output_count());
      bitgrad::max_pool2d_fprop(g, x.data(), y.data(), arg.data());
      bitgrad::ref::max_pool2d_fprop(g, x.data(), y_ref.data(), arg_ref.data());
      CHECK(arg == arg_ref);
      const std::size_t ah = at / 4, aw = at % 4;
      for (std::size_t oh = 0; oh < g.out_h(); ++oh)
        for (std::size_t ow = 0; ow < g.out_w(); ++ow) {
          const std::size_t out = oh * g.out_w() + ow;
          // Does the window of (oh, ow) cover the NaN? (in padded coordinates)
          const std::size_t h0 = oh * s.stride, w0 = ow * s.stride;
          const bool covers = ah + s.pad >= h0 && ah + s.pad < h0 + s.kernel && aw + s.pad >= w0 &&
                              aw + s.pad < w0 + s.kernel;
          CAPTURE(out);
          CHECK(std::isnan(y[out]) == covers);
          CHECK(std::isnan(y_ref[out]) == covers);
          if (covers) CHECK(arg[out] == at);
          if (!covers) CHECK(y[out] == y_ref[out]);
        }
      std::vector<T> y2(g.output_count());
      bitgrad::max_pool2d_fprop(g, x.data(), y2.data(), static_cast<std::uint32_t*>(nullptr));
      for (std::size_t i = 0; i < y.size(); ++i)
        CHECK((y2[i] == y[i] || (std::isnan(y2[i]) && std::isnan(y[i]))));
    }
}

// ---- the 2x2 / stride 2 fast path (LeNet-5, VGG) ------------------------------------------

TEST_CASE_TEMPLATE("max pool 2x2/2 fast path matches the reference: wide rows, ties, NaN", T, float,
                   double) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> level(-3, 3); // few distinct values: many ties
  for (std::size_t h : {2, 3, 8, 24, 29})
    for (std::size_t w : {2, 5, 8, 24, 28, 41}) {
      pool2d_geometry g;
      g.batch = 2;
      g.channels = 3;
      g.in_h = h;
      g.in_w = w;
      std::vector<T> x(g.input_count()), dy(g.output_count());
      for (auto& v : x) v = T(level(rng));
      for (auto& v : dy) v = T(level(rng));
      if (x.size() > 7) x[7] = std::numeric_limits<T>::quiet_NaN();
      std::vector<T> y(g.output_count()), y_ref(g.output_count()), dx(g.input_count()),
          dx_ref(g.input_count());
      std::vector<std::uint32_t> arg(g.output_count()), arg_ref(g.output_count());
      INFO("h " << h << " w " << w);
      bitgrad::max_pool2d_fprop(g, x.data(), y.data(), arg.data());
      bitgrad::ref::max_pool2d_fprop(g, x.data(), y_ref.data(), arg_ref.data());
      CHECK(arg == arg_ref);
      for (std::size_t i = 0; i < y.size(); ++i)
        CHECK((y[i] == y_ref[i] || (std::isnan(y[i]) && std::isnan(y_ref[i]))));
      std::vector<T> y2(g.output_count());
      bitgrad::max_pool2d_fprop(g, x.data(), y2.data(), static_cast<std::uint32_t*>(nullptr));
      for (std::size_t i = 0; i < y.size(); ++i)
        CHECK((y2[i] == y_ref[i] || (std::isnan(y2[i]) && std::isnan(y_ref[i]))));
      bitgrad::max_pool2d_bprop(g, dy.data(), arg.data(), dx.data());
      bitgrad::ref::max_pool2d_bprop(g, dy.data(), arg_ref.data(), dx_ref.data());
      CHECK(dx == dx_ref);
    }
}

TEST_CASE_TEMPLATE("max pool 2x2/2 two-pass path: same bits as the reference, signed zeros, "
                   "blocks across planes, rows at and past the block width",
                   T, float, double) {
  // With argmax the 2x2 pool runs in two passes over blocks of 1024 column winners
  // (kernels/pool2d.hpp); rows of 2 * out_w > 1024 columns take the one-pass loop. ReLU outputs
  // hold many zero ties; -0 against +0 is a tie too, so the first in the window must be kept.
  std::mt19937 rng(23);
  std::uniform_int_distribution<int> level(-1, 2);
  struct shape {
    std::size_t batch, channels, h, w;
  };
  for (const shape s : {shape{5, 6, 24, 24}, shape{7, 16, 8, 8}, shape{3, 2, 9, 11},
                        shape{1, 2, 5, 1024}, shape{1, 2, 4, 1025}, shape{1, 1, 3, 1027}}) {
    CAPTURE(s.h);
    CAPTURE(s.w);
    pool2d_geometry g;
    g.batch = s.batch;
    g.channels = s.channels;
    g.in_h = s.h;
    g.in_w = s.w;
    std::vector<T> x(g.input_count());
    for (auto& v : x) {
      const int l = level(rng);
      v = l == -1 ? T(-0.0) : T(l); // -0, +0, 1, 2: mostly ties
    }
    x[x.size() / 2] = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> y(g.output_count()), y_ref(g.output_count());
    std::vector<std::uint32_t> arg(g.output_count()), arg_ref(g.output_count());
    bitgrad::max_pool2d_fprop(g, x.data(), y.data(), arg.data());
    bitgrad::ref::max_pool2d_fprop(g, x.data(), y_ref.data(), arg_ref.data());
    CHECK(arg == arg_ref);
    CHECK(std::memcmp(y.data(), y_ref.data(), y.size() * sizeof(T)) == 0);
  }
}

} // namespace test_pool2d
