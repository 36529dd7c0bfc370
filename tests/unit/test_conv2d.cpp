// Convolution: the reference against hand-computed cases and as the adjoint of itself (which
// proves the backward math), then the optimised kernels (im2col+gemm and direct) against the
// reference over a grid of strides, paddings, dilations, groups, kernels and odd sizes.
#include <bitgrad/kernels/conv2d.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace test_conv2d {

using bitgrad::conv2d_algo;
using bitgrad::conv2d_geometry;

namespace {

template <class T>
std::vector<T> random_vector(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& e : v) e = T(d(rng));
  return v;
}

template <class T>
double inner(const std::vector<T>& a, const std::vector<T>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

template <class T>
T tolerance() {
  return std::is_same_v<T, float> ? T(2e-4) : T(1e-11);
}

template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  REQUIRE(got.size() == want.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= tolerance<T>() * (1 + std::abs(want[i])))) ++bad;
  INFO(what);
  CHECK(bad == 0);
}

std::string describe(const conv2d_geometry& g) {
  std::ostringstream os; // (not string +: GCC 12 -Wrestrict false positive at -march=native)
  os << "N" << g.batch << " C" << g.in_channels << "->" << g.out_channels << " " << g.in_h << "x"
     << g.in_w << " k" << g.kernel_h << "x" << g.kernel_w << " s" << g.stride_h << "," << g.stride_w
     << " p" << g.pad_h << "," << g.pad_w << " d" << g.dilation_h << "," << g.dilation_w << " g"
     << g.groups;
  return os.str();
}

/// Every valid geometry of the grid in the brief.
std::vector<conv2d_geometry> geometry_grid() {
  std::vector<conv2d_geometry> out;
  std::size_t counter = 0;
  for (std::size_t stride : {1, 2})
    for (std::size_t pad : {0, 1, 2})
      for (std::size_t dil : {1, 2})
        for (int groups_kind : {0, 1, 2}) // 1, 2, depthwise (multiplier 2)
          for (std::size_t k : {1, 3, 5}) {
            conv2d_geometry g;
            g.batch = 1 + counter++ % 3;
            g.in_h = 7;
            g.in_w = 5;
            g.in_channels = 4;
            g.out_channels = groups_kind == 2 ? 8 : 6;
            g.groups = groups_kind == 0 ? 1 : groups_kind == 1 ? 2 : 4;
            g.kernel_h = k;
            g.kernel_w = k == 5 ? 3 : k; // non-square kernels too
            g.stride_h = stride;
            g.stride_w = counter % 2 ? stride : 1;
            g.pad_h = pad;
            g.pad_w = pad == 2 ? 1 : pad;
            g.dilation_h = dil;
            g.dilation_w = dil;
            try {
              g.validate();
            } catch (const bitgrad::config_error&) {
              continue;
            }
            out.push_back(g);
          }
  return out;
}

conv2d_geometry make_geometry(std::size_t batch, std::size_t in_c, std::size_t out_c,
                              std::size_t in_h, std::size_t in_w, std::size_t kernel_h,
                              std::size_t kernel_w, std::size_t stride, std::size_t pad_h,
                              std::size_t pad_w, std::size_t dilation = 1, std::size_t groups = 1) {
  conv2d_geometry g;
  g.batch = batch;
  g.in_channels = in_c;
  g.out_channels = out_c;
  g.in_h = in_h;
  g.in_w = in_w;
  g.kernel_h = kernel_h;
  g.kernel_w = kernel_w;
  g.stride_h = g.stride_w = stride;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.dilation_h = g.dilation_w = dilation;
  g.groups = groups;
  g.validate();
  return g;
}

/// The operands of geometry g, uniform(-1, 1), drawn in this order: x, w, b, dy.
template <class T>
struct conv_operands {
  std::vector<T> x, w, b, dy;
};

template <class T>
conv_operands<T> random_operands(const conv2d_geometry& g, std::mt19937& rng) {
  // A braced list is evaluated left to right, so the draws keep their order.
  return {random_vector<T>(g.input_count(), rng), random_vector<T>(g.weight_count(), rng),
          random_vector<T>(g.out_channels, rng), random_vector<T>(g.output_count(), rng)};
}

/// Shapes the implicit GEMM meets beyond the small grid: output channels and pixels that leave
/// ragged register tiles (M = 11, P = 117), k and pixel counts past one cache block (K = 450 > KC,
/// P = 400 > NC at that depth), strides, 1x1 stride-2 shortcuts, a valid 5x5, dilation, groups,
/// asymmetric kernels and padding, padding wider than the kernel (dgrad cannot be a convolution
/// there), and batches cut into several wgrad slices (19 and 40 images: slices of 2 and 3, the
/// last one shorter).
std::vector<conv2d_geometry> implicit_shapes() {
  return {
      make_geometry(2, 5, 11, 13, 9, 3, 3, 1, 1, 1),        // ragged M and P, 3x3 pad 1
      make_geometry(3, 7, 12, 15, 15, 3, 3, 2, 1, 1),       // stride 2 (ResNet downsampling)
      make_geometry(2, 6, 10, 9, 9, 1, 1, 2, 0, 0),         // 1x1 stride 2 (projection shortcut)
      make_geometry(2, 50, 9, 6, 6, 3, 3, 1, 1, 1),         // K = 450: two k blocks
      make_geometry(2, 50, 9, 20, 20, 3, 3, 1, 1, 1),       // and P = 400: two column blocks
      make_geometry(2, 6, 16, 12, 12, 5, 5, 1, 0, 0),       // valid 5x5 (LeNet conv2)
      make_geometry(2, 4, 6, 11, 10, 3, 3, 1, 2, 2, 2),     // dilation 2, pad 2
      make_geometry(2, 8, 12, 10, 10, 3, 3, 1, 1, 1, 1, 2), // two groups
      make_geometry(2, 6, 6, 9, 8, 3, 3, 1, 1, 1, 1, 6),    // depthwise
      make_geometry(2, 3, 10, 9, 12, 3, 5, 1, 1, 0),        // 3x5 kernel, pad (1, 0)
      make_geometry(2, 3, 10, 7, 7, 3, 3, 1, 3, 3),         // pad 3 > kernel - 1
      make_geometry(2, 3, 13, 8, 7, 2, 3, 3, 1, 2),         // stride 3, 2x3 kernel
      make_geometry(19, 3, 9, 6, 5, 3, 3, 1, 1, 1),         // 10 wgrad slices of <= 2 images
      make_geometry(40, 4, 16, 5, 5, 3, 3, 2, 1, 1),        // 14 wgrad slices of <= 3 images
  };
}

} // namespace

TEST_CASE_TEMPLATE("ref conv2d fprop matches hand-computed cases", T, float, double) {
  std::vector<T> scratch;
  SUBCASE("2x2 difference kernel with bias") {
    conv2d_geometry g;
    g.in_h = g.in_w = 3;
    g.kernel_h = g.kernel_w = 2;
    std::vector<T> x{1, 2, 3, 4, 5, 6, 7, 8, 9}, w{1, 0, 0, -1}, b{T(0.5)}, y(4);
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y.data(), scratch);
    CHECK(y == std::vector<T>{-3.5, -3.5, -3.5, -3.5});
  }
  SUBCASE("padding 1 with a box kernel") {
    conv2d_geometry g;
    g.in_h = g.in_w = 2;
    g.kernel_h = g.kernel_w = 2;
    g.pad_h = g.pad_w = 1;
    std::vector<T> x{1, 2, 3, 4}, w{1, 1, 1, 1}, y(9);
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), static_cast<const T*>(nullptr), y.data(),
                               scratch);
    CHECK(y == std::vector<T>{1, 3, 2, 4, 10, 6, 3, 7, 4});
  }
  SUBCASE("stride 2, dilation 2, two groups") {
    conv2d_geometry g;
    g.in_channels = g.out_channels = g.groups = 2;
    g.in_h = g.in_w = 5;
    g.kernel_h = g.kernel_w = 2;
    g.stride_h = g.stride_w = 2;
    g.dilation_h = g.dilation_w = 2;
    CHECK(g.out_h() == 2); // (5 - 3) / 2 + 1
    std::vector<T> x(50);
    for (std::size_t i = 0; i < 50; ++i) x[i] = T(i);
    std::vector<T> w{1, 0, 0, 0, 0, 0, 0, 1}, y(8);
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), static_cast<const T*>(nullptr), y.data(),
                               scratch);
    // channel 0 picks x0[2oh][2ow]; channel 1 picks x1[2oh+2][2ow+2].
    CHECK(y == std::vector<T>{0, 2, 10, 12, 25 + 12, 25 + 14, 25 + 22, 25 + 24});
  }
}

TEST_CASE("ref conv2d dgrad and wgrad are the adjoints of fprop") {
  std::mt19937 rng(7);
  std::vector<double> scratch;
  for (const auto& g : geometry_grid()) {
    auto x = random_vector<double>(g.input_count(), rng);
    auto w = random_vector<double>(g.weight_count(), rng);
    auto dy = random_vector<double>(g.output_count(), rng);
    std::vector<double> y(g.output_count()), dx(g.input_count()), dw(g.weight_count(), 0.0),
        db(g.out_channels, 0.0);
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), static_cast<const double*>(nullptr), y.data(),
                               scratch);
    bitgrad::ref::conv2d_dgrad(g, dy.data(), w.data(), dx.data(), scratch);
    bitgrad::ref::conv2d_wgrad(g, x.data(), dy.data(), dw.data(), db.data(), scratch);
    const double lhs = inner(dy, y);
    INFO(describe(g));
    CHECK(inner(dx, x) == doctest::Approx(lhs).epsilon(1e-12));
    CHECK(inner(dw, w) == doctest::Approx(lhs).epsilon(1e-12));
    for (std::size_t o = 0; o < g.out_channels; ++o) {
      double s = 0;
      for (std::size_t n = 0; n < g.batch; ++n)
        for (std::size_t k = 0; k < g.out_plane(); ++k)
          s += dy[(n * g.out_channels + o) * g.out_plane() + k];
      CHECK(db[o] == doctest::Approx(s).epsilon(1e-12));
    }
  }
}

TEST_CASE_TEMPLATE("optimised conv2d matches the reference over the grid", T, float, double) {
  std::mt19937 rng(11);
  std::vector<T> scratch, ref_scratch; // shared across geometries: grown and reused
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::size_t checked = 0;
  for (const auto& g : geometry_grid()) {
    auto [x, w, b, dy] = random_operands<T>(g, rng);
    auto dw0 = random_vector<T>(g.weight_count(), rng); // wgrad accumulates onto this
    auto db0 = random_vector<T>(g.out_channels, rng);

    std::vector<T> y_ref(g.output_count()), yr_ref(g.output_count()), dx_ref(g.input_count());
    std::vector<T> dw_ref = dw0, db_ref = db0;
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), yr_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_dgrad(g, dy.data(), w.data(), dx_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_wgrad(g, x.data(), dy.data(), dw_ref.data(), db_ref.data(), ref_scratch);
    std::vector<T> y_nb_ref(g.output_count());
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), static_cast<const T*>(nullptr),
                               y_nb_ref.data(), ref_scratch);

    std::vector<conv2d_algo> algos{conv2d_algo::automatic, conv2d_algo::im2col,
                                   conv2d_algo::implicit};
    if (g.stride_h == 1 && g.stride_w == 1) algos.push_back(conv2d_algo::direct);
    for (auto algo : algos) {
      const std::string what = describe(g) + " algo " + std::to_string(int(algo));
      std::vector<T> y(g.output_count(), nan), yr(g.output_count(), nan),
          ynb(g.output_count(), nan), dx(g.input_count(), nan);
      std::vector<T> dw = dw0, db = db0;
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), y.data(), scratch);
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), yr.data(), scratch, true);
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), static_cast<const T*>(nullptr),
                                  ynb.data(), scratch);
      bitgrad::conv2d_dgrad_using(algo, g, dy.data(), w.data(), dx.data(), scratch);
      bitgrad::conv2d_wgrad_using(algo, g, x.data(), dy.data(), dw.data(), db.data(), scratch);
      check_close(y, y_ref, "fprop " + what);
      check_close(yr, yr_ref, "fprop_relu " + what);
      check_close(ynb, y_nb_ref, "fprop no bias " + what);
      check_close(dx, dx_ref, "dgrad " + what);
      check_close(dw, dw_ref, "wgrad " + what);
      check_close(db, db_ref, "dbias " + what);
      ++checked;
    }
  }
  CHECK(checked > 150);
}

TEST_CASE_TEMPLATE("implicit gemm matches the reference on the shapes it introduces", T, float,
                   double) {
  std::mt19937 rng(17);
  std::vector<T> scratch, ref_scratch;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (const auto& g : implicit_shapes()) {
    auto [x, w, b, dy] = random_operands<T>(g, rng);
    auto dw0 = random_vector<T>(g.weight_count(), rng);
    auto db0 = random_vector<T>(g.out_channels, rng);
    std::vector<T> y_ref(g.output_count()), yr_ref(g.output_count()), dx_ref(g.input_count());
    std::vector<T> dw_ref = dw0, db_ref = db0;
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), yr_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_dgrad(g, dy.data(), w.data(), dx_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_wgrad(g, x.data(), dy.data(), dw_ref.data(), db_ref.data(), ref_scratch);

    std::vector<conv2d_algo> algos{conv2d_algo::implicit, conv2d_algo::im2col,
                                   conv2d_algo::automatic};
    if (g.stride_h == 1 && g.stride_w == 1) algos.push_back(conv2d_algo::direct);
    std::vector<T> y_implicit, yr_implicit;
    for (auto algo : algos) {
      const std::string what = describe(g) + " algo " + std::to_string(int(algo));
      std::vector<T> y(g.output_count(), nan), yr(g.output_count(), nan), dx(g.input_count(), nan);
      std::vector<T> dw = dw0, db = db0;
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), y.data(), scratch);
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), yr.data(), scratch, true);
      bitgrad::conv2d_dgrad_using(algo, g, dy.data(), w.data(), dx.data(), scratch);
      bitgrad::conv2d_wgrad_using(algo, g, x.data(), dy.data(), dw.data(), db.data(), scratch);
      check_close(y, y_ref, "fprop " + what);
      check_close(yr, yr_ref, "fprop_relu " + what);
      check_close(dx, dx_ref, "dgrad " + what);
      check_close(dw, dw_ref, "wgrad " + what);
      check_close(db, db_ref, "dbias " + what);
      if (algo == conv2d_algo::implicit) {
        y_implicit = y;
        yr_implicit = yr;
      }
      if (algo == conv2d_algo::im2col) {
        // Same k blocks, micro-kernel and epilogue as the gemm on the stored col: same bits.
        INFO(what);
        CHECK(y == y_implicit);
        CHECK(yr == yr_implicit);
      }
    }
  }
}

/// The register-blocked direct kernel (kernels/conv2d_direct.hpp) on shapes that leave ragged
/// tiles: output channels not a multiple of its 4-channel block (1, 3, 5, 7, 18), flat spans
/// that are not a multiple of a tile and several tiles long (odd H and W up to 31), batch 1 and 3,
/// and the ResNet-20 / VGG shapes it is meant for (dgrad into fewer than 3 channels per group, the
/// one-channel and grouped shapes, runs direct's axpys: conv2d_dgrad_runs_blocked), and for the
/// direct wgrad (kernels/conv2d_direct_wgrad.hpp) Cout 2, 4, 5 and 7 (blocks of 3 and a ragged
/// one), 1x1, 2x2 (dilation 3), 1x5, 5x3, 5x5 and 7x7 kernels (1, 4, 5, 15, 25 and 49 taps: tap
/// chunks of 3 (AVX2, SSE) or 9 (AVX-512) with a shorter last one, or one short chunk),
/// depthwise, and a batch of 19 in 10 slices. The write-out (conv2d_direct_fprop_image) stores
/// whole registers that may run past a row into the rows after it but never past the image's
/// (group's) output: outputs 1 to 40 pixels wide (fewer, as many and more than a register's lanes,
/// several rows per register) leave 40 sentinel elements after y and dx as they were. Tolerance:
/// the sums run in another order than the reference's (fprop: channels, then taps, in one
/// accumulator per pixel; wgrad: per lane, then the lanes), fprop K <= 9 * 37 and wgrad <= 3 * 31 *
/// 29 products of values in [-1, 1] whose rounding errors grow like the square root of the count (~
/// 50 * 2^-24 relative to a sum of size ~ 30): check_close's 2e-4 (float) / 1e-11 (double) relative
/// to 1 + |want|.
TEST_CASE_TEMPLATE("direct conv matches the reference on ragged tiles", T, float, double) {
  std::mt19937 rng(23);
  std::vector<T> scratch, ref_scratch;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<conv2d_geometry> shapes{
      make_geometry(1, 1, 1, 3, 3, 3, 3, 1, 1, 1),        // one channel, one pixel row span
      make_geometry(3, 3, 5, 13, 11, 3, 3, 1, 1, 1),      // Cout 5: a block of 4 and one of 1
      make_geometry(1, 7, 3, 31, 29, 3, 3, 1, 1, 1),      // Cout 3 only, long span
      make_geometry(3, 5, 7, 9, 17, 3, 3, 1, 1, 1),       // Cout 7: 4 + 3
      make_geometry(1, 37, 18, 15, 7, 3, 3, 1, 1, 1),     // Cin 37, Cout 18: 4 x 4 + 2
      make_geometry(3, 16, 16, 28, 28, 3, 3, 1, 1, 1),    // ResNet-20 layer1
      make_geometry(1, 32, 64, 14, 14, 3, 3, 1, 1, 1),    // VGG conv3
      make_geometry(3, 4, 6, 11, 9, 5, 3, 1, 2, 1),       // 5x3 kernel, pad (2, 1)
      make_geometry(1, 4, 5, 12, 13, 3, 3, 1, 2, 2, 2),   // dilation 2
      make_geometry(3, 6, 9, 10, 9, 3, 3, 1, 0, 0),       // valid 3x3 (dgrad pads by 2)
      make_geometry(3, 6, 6, 9, 11, 3, 3, 1, 1, 1, 1, 3), // three groups of 2 -> 2
      make_geometry(3, 3, 7, 12, 12, 5, 5, 1, 0, 0),      // valid 5x5: taps in chunks of 9
      make_geometry(1, 6, 6, 9, 8, 3, 3, 1, 1, 1, 1, 6),  // depthwise
      make_geometry(19, 3, 5, 7, 5, 3, 3, 1, 1, 1),       // 10 wgrad slices of <= 2 images
      make_geometry(1, 2, 1, 1, 1, 3, 3, 1, 1, 1),        // one pixel
      make_geometry(3, 2, 3, 3, 7, 3, 3, 1, 1, 1),        // 7 wide: rows shorter than a register
      make_geometry(3, 3, 2, 7, 7, 3, 3, 1, 1, 1),        // ResNet-20's 7x7 stage, small
      make_geometry(1, 2, 5, 5, 15, 3, 3, 1, 1, 1),       // 15 wide
      make_geometry(3, 3, 4, 4, 16, 3, 3, 1, 1, 1),       // 16 wide: whole registers (AVX-512)
      make_geometry(1, 2, 3, 6, 17, 3, 3, 1, 1, 1),       // 17 wide
      make_geometry(3, 4, 6, 9, 28, 3, 3, 1, 1, 1),       // 28 wide, as ResNet-20's first stage
      make_geometry(1, 2, 2, 3, 40, 3, 3, 1, 1, 1),       // 40 wide
      make_geometry(3, 4, 6, 7, 9, 3, 3, 1, 1, 1, 1, 2),  // two groups of 2 -> 3
      make_geometry(3, 5, 4, 9, 10, 1, 1, 1, 0, 0),       // 1x1: one tap, a short chunk
      make_geometry(2, 3, 5, 13, 12, 7, 7, 1, 3, 3),      // 7x7 pad 3: 49 taps
      make_geometry(3, 4, 7, 8, 11, 1, 5, 1, 0, 2),       // 1x5: 5 taps
      make_geometry(1, 3, 2, 14, 13, 2, 2, 1, 1, 1, 3),   // 2x2, dilation 3: 4 taps
  };
  constexpr std::size_t guard = 40; // sentinel elements after y, yr and dx
  const T sentinel = T(7.25);
  const auto tail_kept = [&](const std::vector<T>& v, std::size_t n) {
    return std::all_of(v.begin() + std::ptrdiff_t(n), v.end(), [&](T e) { return e == sentinel; });
  };
  for (const auto& g : shapes) {
    const std::string what = describe(g);
    auto [x, w, b, dy] = random_operands<T>(g, rng);
    std::vector<T> y_ref(g.output_count()), yr_ref(g.output_count()), dx_ref(g.input_count());
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), yr_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_dgrad(g, dy.data(), w.data(), dx_ref.data(), ref_scratch);
    auto dw_ref = random_vector<T>(g.weight_count(), rng); // wgrad accumulates onto this
    auto db_ref = random_vector<T>(g.out_channels, rng);
    std::vector<T> dw = dw_ref, db = db_ref;
    bitgrad::ref::conv2d_wgrad(g, x.data(), dy.data(), dw_ref.data(), db_ref.data(), ref_scratch);
    std::vector<T> y(g.output_count(), nan), yr(g.output_count(), nan), dx(g.input_count(), nan);
    y.resize(y.size() + guard, sentinel);
    yr.resize(yr.size() + guard, sentinel);
    dx.resize(dx.size() + guard, sentinel);
    bitgrad::conv2d_fprop_using(conv2d_algo::direct, g, x.data(), w.data(), b.data(), y.data(),
                                scratch);
    bitgrad::conv2d_fprop_using(conv2d_algo::direct, g, x.data(), w.data(), b.data(), yr.data(),
                                scratch, true);
    bitgrad::conv2d_dgrad_using(conv2d_algo::direct, g, dy.data(), w.data(), dx.data(), scratch);
    INFO(what);
    CHECK(tail_kept(y, g.output_count()));
    CHECK(tail_kept(yr, g.output_count()));
    CHECK(tail_kept(dx, g.input_count()));
    y.resize(g.output_count());
    yr.resize(g.output_count());
    dx.resize(g.input_count());
    check_close(y, y_ref, "direct fprop " + what);
    check_close(yr, yr_ref, "direct fprop_relu " + what);
    bitgrad::conv2d_wgrad_using(conv2d_algo::direct, g, x.data(), dy.data(), dw.data(), db.data(),
                                scratch);
    check_close(dx, dx_ref, "direct dgrad " + what);
    check_close(dw, dw_ref, "direct wgrad " + what);
    check_close(db, db_ref, "direct dbias " + what);
  }
}

/// The Winograd F(2x2, 3x3) kernel (kernels/conv2d_winograd.hpp) against the reference: odd
/// H and W (the last tile row and column cropped), pad 0, 1 and 2 (dgrad then runs with pad 2, 1
/// and 0), Cin and Cout 1, 3, 5, 17, 33, batch 1 and 3, bias, the fused ReLU, dgrad, and shapes
/// with 1 x 1 to 17 x 16 tiles per image (rounds of several images, of one, of tile-row blocks).
/// Tolerance: an entry of U = G g G^T sums up to 9 weights times 1/4, of V = B^T d B up to 4 (x) 4
/// inputs with signs +-1, and Y = A^T M A sums 9 of M's entries, each a sum over Cin <= 33 of U V:
/// the rounding of these sums (each at most ~ 10 terms, then the Cin products) is a small constant
/// times the direct sum's, whose values here are <= ~ 33 * 9 / 3 in size: ~ 2^-24 * 300 relative
/// to 1 + |want| is well inside check_close's 2e-4 (float) and 1e-11 (double: 2^-53 * 300).
TEST_CASE_TEMPLATE("winograd conv matches the reference on odd shapes", T, float, double) {
  std::mt19937 rng(29);
  std::vector<T> scratch, ref_scratch;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<conv2d_geometry> shapes;
  const std::size_t channels[] = {1, 3, 5, 17, 33};
  std::size_t counter = 0;
  for (std::size_t cin : channels)
    for (std::size_t cout : channels)
      for (std::size_t pad : {0, 1, 2}) {
        const std::size_t batch = counter % 2 ? 3 : 1, h = 5 + 2 * (counter % 4);
        const std::size_t w = counter % 3 ? 7 + 2 * (counter % 5) : 8;
        shapes.push_back(make_geometry(batch, cin, cout, h, w, 3, 3, 1, pad, pad));
        ++counter;
      }
  shapes.push_back(make_geometry(3, 4, 6, 3, 3, 3, 3, 1, 0, 0));     // one tile, cropped to 1x1
  shapes.push_back(make_geometry(3, 5, 7, 4, 4, 3, 3, 1, 0, 0));     // one whole tile per image
  shapes.push_back(make_geometry(40, 3, 4, 5, 4, 3, 3, 1, 1, 0));    // pad (1, 0), 6 tiles: slices
  shapes.push_back(make_geometry(3, 16, 16, 32, 32, 3, 3, 1, 1, 1)); // 256 tiles, ResNet-20 stage 1
  shapes.push_back(make_geometry(2, 9, 11, 33, 31, 3, 3, 1, 1, 1));  // 17 x 16 tiles, both cropped
  // Rounds of tile-row blocks (conv2d_winograd_layout): 17 tile rows in blocks of 9 (float) or 6
  // (double), the last one shorter.
  shapes.push_back(make_geometry(2, 64, 48, 33, 29, 3, 3, 1, 1, 1));
  for (const auto& g : shapes) {
    const std::string what = describe(g);
    auto [x, w, b, dy] = random_operands<T>(g, rng);
    std::vector<T> y_ref(g.output_count()), yr_ref(g.output_count()), ynb_ref(g.output_count());
    std::vector<T> dx_ref(g.input_count());
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), yr_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), static_cast<const T*>(nullptr),
                               ynb_ref.data(), ref_scratch);
    bitgrad::ref::conv2d_dgrad(g, dy.data(), w.data(), dx_ref.data(), ref_scratch);
    std::vector<T> y(g.output_count(), nan), yr(g.output_count(), nan), ynb(g.output_count(), nan);
    std::vector<T> dx(g.input_count(), nan);
    const auto algo = conv2d_algo::winograd;
    bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), y.data(), scratch);
    bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), yr.data(), scratch, true);
    bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), static_cast<const T*>(nullptr),
                                ynb.data(), scratch);
    bitgrad::conv2d_dgrad_using(algo, g, dy.data(), w.data(), dx.data(), scratch);
    check_close(y, y_ref, "winograd fprop " + what);
    check_close(yr, yr_ref, "winograd fprop_relu " + what);
    check_close(ynb, ynb_ref, "winograd fprop no bias " + what);
    check_close(dx, dx_ref, "winograd dgrad " + what);
    // wgrad has no Winograd kernel: conv2d_algo::winograd runs the automatic choice.
    auto dw_ref = random_vector<T>(g.weight_count(), rng);
    std::vector<T> dw = dw_ref;
    bitgrad::ref::conv2d_wgrad(g, x.data(), dy.data(), dw_ref.data(), static_cast<T*>(nullptr),
                               ref_scratch);
    bitgrad::conv2d_wgrad_using(algo, g, x.data(), dy.data(), dw.data(), static_cast<T*>(nullptr),
                                scratch);
    check_close(dw, dw_ref, "winograd wgrad " + what);
  }
  CHECK(shapes.size() == 81);
}

TEST_CASE("winograd refuses what it cannot compute") {
  std::vector<float> scratch, x(3 * 9 * 9), w(3 * 3 * 25), y(3 * 9 * 9);
  const float* const no_bias = nullptr;
  const auto g = make_geometry(1, 3, 3, 9, 9, 5, 5, 1, 2, 2);
  CHECK_THROWS_AS(bitgrad::conv2d_fprop_using(conv2d_algo::winograd, g, x.data(), w.data(), no_bias,
                                              y.data(), scratch),
                  bitgrad::config_error);
  const auto strided = make_geometry(1, 3, 3, 9, 9, 3, 3, 2, 1, 1);
  CHECK_THROWS_AS(bitgrad::conv2d_fprop_using(conv2d_algo::winograd, strided, x.data(), w.data(),
                                              no_bias, y.data(), scratch),
                  bitgrad::config_error);
  // A dgrad padded by 3 > 2 is no convolution of dy: it runs im2col.
  const auto wide = make_geometry(1, 3, 3, 5, 5, 3, 3, 1, 3, 3);
  std::vector<float> dy(3 * wide.out_plane(), 1.0f), dx(3 * 25), dx_ref(3 * 25);
  std::fill(w.begin(), w.end(), 0.5f);
  bitgrad::conv2d_dgrad_using(conv2d_algo::winograd, wide, dy.data(), w.data(), dx.data(), scratch);
  bitgrad::ref::conv2d_dgrad(wide, dy.data(), w.data(), dx_ref.data(), scratch);
  CHECK(dx == dx_ref);
}

TEST_CASE("conv2d_choose_algo picks Winograd from 1,024 tiles of a batch on, never below") {
  using bitgrad::conv2d_choose_algo;
  using bitgrad::conv2d_pass;
  // 28x28, pad 1: 14 tile rows x (14 + 1 junk) tiles = 210 per image; 4 images are 840 tiles,
  // 5 are 1,050. 14x14: 7 x 8 = 56 per image, 19 images are 1,064.
  const auto winograd_at = [](std::size_t batch, std::size_t hw, conv2d_pass pass) {
    return conv2d_choose_algo(make_geometry(batch, 32, 64, hw, hw, 3, 3, 1, 1, 1), pass) ==
           conv2d_algo::winograd;
  };
  for (const auto pass : {conv2d_pass::fprop, conv2d_pass::dgrad}) {
    CHECK_FALSE(winograd_at(1, 28, pass));
    CHECK_FALSE(winograd_at(4, 28, pass));
    CHECK(winograd_at(5, 28, pass) == bitgrad::detail::conv2d_winograd_preferred);
    CHECK_FALSE(winograd_at(18, 14, pass));
    CHECK(winograd_at(19, 14, pass) == bitgrad::detail::conv2d_winograd_preferred);
    CHECK(winograd_at(128, 14, pass) == bitgrad::detail::conv2d_winograd_preferred);
  }
  CHECK_FALSE(winograd_at(128, 28, conv2d_pass::wgrad));
  // The layer test's shape (test_nn_layers: a gradient check through Winograd): 2 x 32 x 16.
  const auto layer_shape = make_geometry(2, 32, 32, 63, 30, 3, 3, 1, 1, 1);
  CHECK((conv2d_choose_algo(layer_shape) == conv2d_algo::winograd) ==
        bitgrad::detail::conv2d_winograd_preferred);
}

TEST_CASE("conv2d_choose_algo on AVX2: direct on the 16-channel stage, Winograd on 14x14 up") {
  using bitgrad::conv2d_choose_algo;
  using bitgrad::conv2d_pass;
  // ResNet-20 on 28x28x1 at batch 128 (bench_train's model), the paths measured fastest on the
  // Zen 3 host (benchmarks/README.md, h23-r20z). Only AVX2 builds take these rules.
  if constexpr (!bitgrad::detail::conv2d_direct_preferred_narrow) return;
  const auto pick = [](std::size_t in_c, std::size_t out_c, std::size_t hw, std::size_t k,
                       conv2d_pass pass) {
    const std::size_t pad = k / 2;
    return conv2d_choose_algo(make_geometry(128, in_c, out_c, hw, hw, k, k, 1, pad, pad), pass);
  };
  const auto fprop = conv2d_pass::fprop, dgrad = conv2d_pass::dgrad, wgrad = conv2d_pass::wgrad;
  for (const auto pass : {fprop, dgrad, wgrad}) {
    CHECK(pick(16, 16, 28, 3, pass) == conv2d_algo::direct);  // stage 1
    CHECK(pick(16, 16, 32, 3, pass) == conv2d_algo::direct);  // stage 1 on 32x32
    CHECK(pick(64, 64, 7, 3, pass) == conv2d_algo::implicit); // stage 3: neither wins
    CHECK(pick(64, 64, 8, 3, pass) == conv2d_algo::implicit);
    CHECK(pick(16, 16, 13, 3, pass) == conv2d_algo::implicit); // 169 < 196 pixels
    CHECK(pick(32, 32, 13, 3, pass) == conv2d_algo::implicit); // below 14 x 14
  }
  for (const auto pass : {fprop, dgrad}) {
    CHECK(pick(17, 16, 28, 3, pass) != conv2d_algo::direct); // more than 16 channels
    CHECK(pick(16, 17, 28, 3, pass) != conv2d_algo::direct);
    CHECK(pick(32, 32, 14, 3, pass) == conv2d_algo::winograd); // stage 2
    CHECK(pick(64, 64, 14, 3, pass) == conv2d_algo::winograd); // VGG conv4
    CHECK(pick(32, 32, 28, 3, pass) == conv2d_algo::winograd); // VGG conv2
  }
  // wgrad with the 3 x 3 tile: direct up to 32 channels in and out (h23-wgrad).
  CHECK(pick(32, 32, 14, 3, wgrad) == conv2d_algo::direct); // stage 2 (1.02x)
  CHECK(pick(32, 32, 28, 3, wgrad) == conv2d_algo::direct); // VGG conv2 (1.10x)
  CHECK(pick(17, 16, 28, 3, wgrad) == conv2d_algo::direct); // 17 .. 32 channels
  CHECK(pick(16, 17, 28, 3, wgrad) == conv2d_algo::direct);
  CHECK(pick(32, 64, 14, 3, wgrad) == conv2d_algo::implicit); // VGG conv3 (0.85x)
  CHECK(pick(64, 64, 14, 3, wgrad) == conv2d_algo::implicit); // VGG conv4 (0.89x)
  CHECK(pick(33, 32, 14, 3, wgrad) == conv2d_algo::implicit); // more than 32 channels
  CHECK(pick(32, 33, 14, 3, wgrad) == conv2d_algo::implicit);
  CHECK(pick(1, 16, 28, 3, wgrad) == conv2d_algo::direct);   // the first layer's wgrad
  CHECK(pick(1, 32, 28, 3, wgrad) == conv2d_algo::direct);   // VGG conv1 (1.11x im2col)
  CHECK(pick(1, 16, 28, 3, fprop) == conv2d_algo::implicit); // K = 9: too few taps
  // LeNet conv1 (1 -> 6, 5x5 valid on 28x28: K = 25, 24x24 out): direct.
  CHECK(conv2d_choose_algo(make_geometry(128, 1, 6, 28, 28, 5, 5, 1, 0, 0), fprop) ==
        conv2d_algo::direct);
  // LeNet conv2 (6 -> 16, 5x5 valid on 12x12: 8x8 out) keeps implicit GEMM.
  CHECK(conv2d_choose_algo(make_geometry(128, 6, 16, 12, 12, 5, 5, 1, 0, 0), fprop) ==
        conv2d_algo::implicit);
}

TEST_CASE("wgrad's slices depend on the batch and the weight count only") {
  using bitgrad::detail::conv2d_wgrad_slices;
  auto slices = [](std::size_t batch, std::size_t weights) {
    const auto s = conv2d_wgrad_slices(batch, weights);
    return std::vector<std::size_t>{s.size, s.count};
  };
  CHECK(slices(128, 36864) == std::vector<std::size_t>{8, 16}); // VGG conv4: 16 slices of 8
  CHECK(slices(64, 36864) == std::vector<std::size_t>{4, 16});
  CHECK(slices(19, 100) == std::vector<std::size_t>{2, 10}); // the last slice holds 1 image
  CHECK(slices(1, 100) == std::vector<std::size_t>{1, 1});
  // Partials of many weights: fewer slices (the budget), never fewer than two.
  CHECK(slices(64, bitgrad::detail::conv2d_wgrad_partials_budget / 4) ==
        std::vector<std::size_t>{16, 4});
  CHECK(slices(64, bitgrad::detail::conv2d_wgrad_partials_budget) ==
        std::vector<std::size_t>{32, 2});
}

#if defined(BITGRAD_WITH_OPENMP)
TEST_CASE_TEMPLATE("conv2d gives the same bits on any number of threads", T, float, double) {
  // fprop and dgrad: whole images per thread, or (batch 1) an image's pixels split between
  // threads; wgrad: slices fixed by the batch size, summed in slice order.
  std::mt19937 rng(23);
  std::vector<T> scratch;
  const int saved = omp_get_max_threads();
  for (const auto& g : {make_geometry(1, 16, 16, 32, 32, 3, 3, 1, 1, 1),   // pixels split
                        make_geometry(5, 8, 12, 9, 11, 3, 3, 1, 1, 1),     // winograd slices
                        make_geometry(5, 6, 16, 12, 12, 5, 5, 1, 0, 0),    // 5 images
                        make_geometry(19, 8, 16, 14, 14, 3, 3, 2, 1, 1),   // 10 slices
                        make_geometry(37, 1, 6, 28, 28, 5, 5, 1, 0, 0),    // direct, 13 slices
                        make_geometry(16, 64, 64, 7, 7, 3, 3, 1, 1, 1)}) { // ResNet-20 layer3
    auto [x, w, b, dy] = random_operands<T>(g, rng);
    for (auto algo : {conv2d_algo::automatic, conv2d_algo::implicit, conv2d_algo::im2col,
                      conv2d_algo::winograd}) {
      if (algo == conv2d_algo::winograd && !bitgrad::detail::conv2d_winograd_fits(g)) continue;
      std::vector<T> y1, dx1, dw1, db1;
      for (int threads : {1, 2, 3, 4, 7}) {
        omp_set_num_threads(threads);
        std::vector<T> y(g.output_count()), dx(g.input_count()), dw(g.weight_count(), T(0.5)),
            db(g.out_channels, T(0.5));
        bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), b.data(), y.data(), scratch);
        bitgrad::conv2d_dgrad_using(algo, g, dy.data(), w.data(), dx.data(), scratch);
        bitgrad::conv2d_wgrad_using(algo, g, x.data(), dy.data(), dw.data(), db.data(), scratch);
        if (threads == 1) {
          y1 = y, dx1 = dx, dw1 = dw, db1 = db;
          continue;
        }
        INFO(describe(g) << " algo " << int(algo) << ", threads = " << threads);
        CHECK(y == y1);
        CHECK(dx == dx1);
        CHECK(dw == dw1);
        CHECK(db == db1);
      }
    }
  }
  omp_set_num_threads(saved);
}
#endif

#if defined(BITGRAD_WITH_OPENMP)
TEST_CASE("parallel_phases: after the barrier every thread reads what the others wrote") {
  // Phase 1: thread t writes its run of a, the later threads doing more passes (so that they
  // finish last); phase 2: every thread reads the mirror of its run, another thread's. Without
  // the barrier, thread 0 reads the last thread's run before it is written.
  const int saved = omp_get_max_threads();
  const std::size_t n = std::size_t(1) << 16;
  for (int threads : {2, 3, 4}) {
    omp_set_num_threads(threads);
    std::vector<double> a(n, 0.0), b(n, -1.0);
    std::size_t team_size = 0;
    bitgrad::detail::parallel_phases(
        bitgrad::detail::batch_threads(n), [&](const bitgrad::detail::thread_team& team) {
          for (std::size_t pass = 0; pass < 4 * (team.thread + 1); ++pass)
            for (std::size_t i = team.begin(n); i < team.end(n); ++i)
              a[i] = std::sqrt(double(i + pass) + 1.0) - double(pass);
          team.barrier();
          for (std::size_t i = team.begin(n); i < team.end(n); ++i) b[i] = a[n - 1 - i];
          if (team.thread == 0) team_size = team.size;
        });
    INFO("threads = " << threads);
    CHECK(team_size == std::size_t(threads));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t j = n - 1 - i;
      std::size_t owner = 0; // the thread whose run holds j: j < end of its run
      while (j >= n * (owner + 1) / std::size_t(threads)) ++owner;
      const std::size_t passes = 4 * (owner + 1); // its last pass wrote a[j]
      const double want = std::sqrt(double(j + passes - 1) + 1.0) - double(passes - 1);
      wrong += b[i] != want;
    }
    CHECK(wrong == 0);
  }
  omp_set_num_threads(saved);
}
#endif

TEST_CASE_TEMPLATE("public conv2d entry points match the reference on network shapes", T, float,
                   double) {
  std::mt19937 rng(3);
  std::vector<T> scratch;
  auto make = [](std::size_t n, std::size_t ci, std::size_t co, std::size_t hw, std::size_t k,
                 std::size_t pad, std::size_t groups) {
    conv2d_geometry g;
    g.batch = n;
    g.in_channels = ci;
    g.out_channels = co;
    g.in_h = g.in_w = hw;
    g.kernel_h = g.kernel_w = k;
    g.pad_h = g.pad_w = pad;
    g.groups = groups;
    return g;
  };
  for (const auto& g :
       {make(3, 1, 6, 28, 5, 0, 1), make(2, 6, 16, 12, 5, 0, 1), make(2, 16, 24, 9, 3, 1, 1),
        make(3, 12, 12, 11, 3, 1, 12), make(2, 8, 20, 6, 1, 0, 1)}) {
    auto [x, w, b, dy] = random_operands<T>(g, rng);
    std::vector<T> y(g.output_count()), y_ref(g.output_count()), yr(g.output_count()),
        yr_ref(g.output_count()), dx(g.input_count()), dx_ref(g.input_count()),
        dw(g.weight_count(), T(0)), dw_ref(g.weight_count(), T(0)), db(g.out_channels, T(0)),
        db_ref(g.out_channels, T(0));
    bitgrad::conv2d_fprop(g, x.data(), w.data(), b.data(), y.data(), scratch);
    bitgrad::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), yr.data(), scratch);
    bitgrad::conv2d_dgrad(g, dy.data(), w.data(), dx.data(), scratch);
    bitgrad::conv2d_wgrad(g, x.data(), dy.data(), dw.data(), db.data(), scratch);
    bitgrad::ref::conv2d_fprop(g, x.data(), w.data(), b.data(), y_ref.data(), scratch);
    bitgrad::ref::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), yr_ref.data(), scratch);
    bitgrad::ref::conv2d_dgrad(g, dy.data(), w.data(), dx_ref.data(), scratch);
    bitgrad::ref::conv2d_wgrad(g, x.data(), dy.data(), dw_ref.data(), db_ref.data(), scratch);
    const std::string what = describe(g);
    check_close(y, y_ref, "fprop " + what);
    check_close(yr, yr_ref, "fprop_relu " + what);
    check_close(dx, dx_ref, "dgrad " + what);
    check_close(dw, dw_ref, "wgrad " + what);
    check_close(db, db_ref, "dbias " + what);
  }
}

TEST_CASE_TEMPLATE("the fused ReLU keeps NaN in every algorithm, as the reference", T, float,
                   double) {
  // Issue #17: the fused ReLU turned NaN into 0, hiding NaN data from the loss.
  std::mt19937 rng(5);
  std::vector<T> scratch;
  conv2d_geometry g;
  g.batch = 2;
  g.in_channels = 3;
  g.out_channels = 5;
  g.in_h = g.in_w = 7;
  g.kernel_h = g.kernel_w = 3;
  auto x = random_vector<T>(g.input_count(), rng);
  auto w = random_vector<T>(g.weight_count(), rng);
  auto b = random_vector<T>(g.out_channels, rng);
  const std::size_t ih = 3, iw = 4; // in image 1, channel 2
  x[((1 * 3 + 2) * 7 + ih) * 7 + iw] = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> want(g.output_count());
  bitgrad::ref::conv2d_fprop_relu(g, x.data(), w.data(), b.data(), want.data(), scratch);
  for (auto algo : {conv2d_algo::direct, conv2d_algo::im2col}) {
    for (const T* bias : {static_cast<const T*>(b.data()), static_cast<const T*>(nullptr)}) {
      CAPTURE(int(algo));
      CAPTURE(bias != nullptr);
      std::vector<T> y(g.output_count());
      bitgrad::conv2d_fprop_using(algo, g, x.data(), w.data(), bias, y.data(), scratch, true);
      for (std::size_t n = 0; n < 2; ++n)
        for (std::size_t o = 0; o < 5; ++o)
          for (std::size_t oh = 0; oh < 5; ++oh)
            for (std::size_t ow = 0; ow < 5; ++ow) {
              const std::size_t at = ((n * 5 + o) * 5 + oh) * 5 + ow;
              const bool covers = n == 1 && ih >= oh && ih < oh + 3 && iw >= ow && iw < ow + 3;
              CHECK(std::isnan(y[at]) == covers);
              CHECK(std::isnan(want[at]) == covers);
              if (!covers && bias != nullptr)
                CHECK(y[at] == doctest::Approx(want[at]).epsilon(1e-5));
            }
    }
  }
}

/// Geometries for the packers: pixel runs shorter and longer than a register, strides,
/// dilation, padding wider than the kernel reach.
std::vector<conv2d_geometry> packing_shapes() {
  std::vector<conv2d_geometry> shapes;
  auto add = [&](std::size_t cin, std::size_t h, std::size_t w, std::size_t k, std::size_t stride,
                 std::size_t pad, std::size_t dilation) {
    conv2d_geometry g;
    g.batch = 3;
    g.in_channels = cin;
    g.in_h = h;
    g.in_w = w;
    g.kernel_h = g.kernel_w = k;
    g.stride_h = g.stride_w = stride;
    g.pad_h = g.pad_w = pad;
    g.dilation_h = g.dilation_w = dilation;
    shapes.push_back(g);
  };
  add(2, 28, 28, 3, 1, 1, 1); // ResNet-20 stage 1: 28-pixel rows
  add(3, 7, 5, 3, 1, 1, 1);   // rows of 5
  add(1, 11, 13, 3, 2, 1, 1); // stride 2
  add(2, 9, 9, 3, 1, 2, 2);   // dilation 2
  add(1, 6, 1, 1, 1, 0, 1);   // one-pixel rows
  add(2, 5, 37, 3, 1, 1, 1);  // rows longer than a panel
  return shapes;
}

TEST_CASE_TEMPLATE("implicit GEMM packers write im2col's column matrix in the packed layouts", T,
                   float, double) {
  using tile = bitgrad::detail::gemm_tile<T>;
  constexpr std::size_t nr = tile::nr;
  std::mt19937 rng(23);
  for (const auto& g : packing_shapes()) {
    INFO(describe(g));
    const std::size_t k = g.filter_size(), p = g.out_plane(), cin = g.in_channels;
    const auto x = random_vector<T>(g.input_count(), rng);
    const bitgrad::detail::conv2d_phase_image layout(g);
    const std::vector<std::size_t> taps = layout.tap_offsets(g);
    const std::size_t xs_image = layout.size<T>();
    std::vector<T> xs(g.batch * xs_image), col(g.batch * k * p); // col of image n at n * k * p
    for (std::size_t n = 0; n < g.batch; ++n) {
      layout.fill(g, x.data() + n * cin * g.in_plane(), xs.data() + n * xs_image);
      bitgrad::im2col(g, cin, x.data() + n * cin * g.in_plane(), col.data() + n * k * p);
    }
    // fprop's B: taps [pc, pc + kc) x pixels [jc, jc + nc) of image 1, panels of NR pixels.
    const std::size_t pc = std::min<std::size_t>(1, k - 1), kc = k - pc;
    const std::size_t jc = std::min<std::size_t>(3, p - 1), nc = p - jc;
    const std::size_t panels = (nc + nr - 1) / nr;
    std::vector<T> packed(panels * nr * kc + nr, T(-7));
    bitgrad::detail::conv2d_pack_col<nr>(taps.data(), g.out_w(), layout.cols, xs.data() + xs_image,
                                         pc, kc, jc, nc, packed.data());
    std::size_t mismatches = 0;
    for (std::size_t panel = 0; panel < panels; ++panel)
      for (std::size_t t = 0; t < kc; ++t)
        for (std::size_t r = 0; r < nr; ++r) {
          const std::size_t q = panel * nr + r;
          const T want = q < nc ? col[k * p + (pc + t) * p + jc + q] : T(0);
          mismatches += packed[(panel * kc + t) * nr + r] != want;
        }
    CHECK(mismatches == 0);
    // wgrad's B: pixels [pc, pc + kc) of the run of all images (k = pixels) x taps [jc, jc + nc),
    // panels of NR taps.
    const std::size_t pixels = g.batch * p;
    const std::size_t wpc = std::min<std::size_t>(5, pixels - 1), wkc = pixels - wpc - 1;
    const std::size_t wjc = std::min<std::size_t>(2, k - 1), wnc = k - wjc;
    const std::size_t wpanels = (wnc + nr - 1) / nr;
    std::vector<T> wpacked(wpanels * nr * wkc, T(-7));
    std::vector<T> stage(bitgrad::detail::conv2d_stage_size<T>());
    bitgrad::detail::conv2d_pack_col_transposed<nr>(taps.data(), g.out_w(), layout.cols, p,
                                                    xs.data(), xs_image, wpc, wkc, wjc, wnc,
                                                    stage.data(), wpacked.data());
    mismatches = 0;
    for (std::size_t panel = 0; panel < wpanels; ++panel)
      for (std::size_t q = 0; q < wkc; ++q)
        for (std::size_t r = 0; r < nr; ++r) {
          const std::size_t t = panel * nr + r, pixel = wpc + q, n = pixel / p;
          const T want = t < wnc ? col[n * k * p + (wjc + t) * p + pixel % p] : T(0);
          mismatches += wpacked[(panel * wkc + q) * nr + r] != want;
        }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("conv2d geometry: output size formula and validation messages") {
  conv2d_geometry g;
  g.in_h = 28;
  g.in_w = 27;
  g.kernel_h = g.kernel_w = 3;
  g.stride_h = 2;
  g.pad_h = 1;
  g.dilation_w = 2;
  CHECK(g.out_h() == 14); // (28 + 2 - 2 - 1)/2 + 1
  CHECK(g.out_w() == 23); // (27 - 4 - 1)/1 + 1
  g.in_channels = 6;
  g.out_channels = 4;
  g.groups = 2;
  CHECK(g.weight_count() == 4 * 3 * 9);
  CHECK_NOTHROW(g.validate());

  auto message = [](const conv2d_geometry& bad) {
    try {
      bad.validate();
    } catch (const bitgrad::config_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto bad = g;
  bad.groups = 4;
  CHECK(message(bad).find("in_channels (6) is not divisible by groups (4)") != std::string::npos);
  bad = g;
  bad.groups = 3;
  CHECK(message(bad).find("out_channels (4) is not divisible by groups (3)") != std::string::npos);
  bad = g;
  bad.stride_w = 0;
  CHECK(message(bad).find("stride_w must be >= 1, got 0") != std::string::npos);
  bad = g;
  bad.in_w = 3; // dilated width 5 > 3
  CHECK(message(bad).find("dilated kernel width 5 is larger than the padded input width 3") !=
        std::string::npos);
  bad = g;
  bad.batch = 0;
  CHECK(message(bad).find("batch must be >= 1") != std::string::npos);

  std::vector<float> scratch, buf(10000);
  auto strided = g;
  strided.stride_w = 2;
  CHECK_THROWS_AS(bitgrad::conv2d_fprop_using(conv2d_algo::direct, strided, buf.data(), buf.data(),
                                              buf.data(), buf.data(), scratch),
                  bitgrad::config_error);
  bad = g;
  bad.groups = 4;
  CHECK_THROWS_AS(
      bitgrad::conv2d_fprop(bad, buf.data(), buf.data(), buf.data(), buf.data(), scratch),
      bitgrad::config_error);
}

} // namespace test_conv2d
