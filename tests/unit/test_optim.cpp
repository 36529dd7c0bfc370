// Optimizers, parameter groups, optimizer state, gradient clipping and lr schedules against
// hand-computed values. Literal expectations were derived from the formulas in the headers
// (PyTorch's update rules) worked by hand or in a few lines of independent scalar code.
#include <bitgrad/optim/adam.hpp>
#include <bitgrad/optim/clip.hpp>
#include <bitgrad/optim/schedule.hpp>
#include <bitgrad/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace test_optim {

using bitgrad::config_error;
using bitgrad::format_error;
using bitgrad::param_kind;
using bitgrad::param_ref;
namespace optim = bitgrad::optim;
namespace io = bitgrad::io;

namespace {

/// A few named parameters with their gradients, visited in insertion order.
template <class T>
struct toy_params {
  struct entry {
    std::string name;
    std::vector<T> value, grad;
    param_kind kind;
    bool has_grad = true;
  };
  std::vector<entry> entries;

  toy_params& add(std::string name, std::vector<T> value, std::vector<T> grad,
                  param_kind kind = param_kind::weight) {
    entries.push_back({std::move(name), std::move(value), std::move(grad), kind});
    return *this;
  }
  std::vector<T>& value(std::size_t i) { return entries[i].value; }
  std::vector<T>& grad(std::size_t i) { return entries[i].grad; }

  /// The parameter source optimizers take.
  auto source() {
    return [this](auto&& f) {
      for (entry& e : entries) {
        param_ref<T> p{e.name, e.value.data(), e.has_grad ? e.grad.data() : nullptr, e.value.size(),
                       e.kind};
        f(p);
      }
    };
  }
};

template <class T>
T tol() {
  return std::is_same_v<T, float> ? T(2e-6) : T(1e-12);
}

template <class T>
void check_values(const std::vector<T>& got, const std::vector<double>& want, double eps) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    CHECK(double(got[i]) == doctest::Approx(want[i]).epsilon(eps));
}

double feps(bool is_float) {
  return is_float ? 1e-6 : 1e-12;
}

} // namespace

TEST_CASE_TEMPLATE("sgd without momentum: p -= lr * g", T, float, double) {
  toy_params<T> ps;
  ps.add("w", {1, 2, 3}, {T(0.5), -1, 2});
  optim::sgd<T> opt({.lr = 0.1});
  opt.step(ps.source());
  opt.step(ps.source());
  check_values(ps.value(0), {0.9, 2.2, 2.6}, feps(std::is_same_v<T, float>));
}

TEST_CASE_TEMPLATE("sgd momentum: buf = g on the first step, then mu * buf + g", T, float, double) {
  toy_params<T> ps;
  ps.add("w", {1, 2, 3}, {T(0.5), -1, 2});
  optim::sgd<T> opt({.lr = 0.1, .momentum = 0.9});
  for (int i = 0; i < 3; ++i) opt.step(ps.source());
  // buf = g, 1.9 g, 2.71 g: w = w0 - 0.1 * 5.61 g
  check_values(ps.value(0), {0.7195, 2.561, 1.878}, feps(std::is_same_v<T, float>));
  REQUIRE(opt.state().size() == 1);
  check_values(opt.state()[0].buffers[0], {2.71 * 0.5, -2.71, 2.71 * 2},
               feps(std::is_same_v<T, float>));
}

TEST_CASE_TEMPLATE("sgd nesterov: d = g + mu * buf", T, float, double) {
  toy_params<T> ps;
  ps.add("w", {1, 2, 3}, {T(0.5), -1, 2});
  optim::sgd<T> opt({.lr = 0.1, .momentum = 0.9, .nesterov = true});
  for (int i = 0; i < 3; ++i) opt.step(ps.source());
  // d = 1.9 g, 2.71 g, 3.439 g: w = w0 - 0.1 * 8.049 g
  check_values(ps.value(0), {0.59755, 2.8049, 1.3902}, feps(std::is_same_v<T, float>));
}

TEST_CASE_TEMPLATE("sgd weight decay is added to the gradient, weights only by default", T, float,
                   double) {
  toy_params<T> ps;
  ps.add("w", {1, 2, 3}, {T(0.5), -1, 2}).add("b", {1, -1}, {0, 0}, param_kind::bias);
  optim::sgd<T> opt({.lr = 0.1, .weight_decay = 0.1});
  opt.step(ps.source());
  check_values(ps.value(0), {0.94, 2.08, 2.77}, feps(std::is_same_v<T, float>));
  opt.step(ps.source());
  check_values(ps.value(0), {0.8806, 2.1592, 2.5423}, feps(std::is_same_v<T, float>));
  CHECK(ps.value(1) == std::vector<T>{1, -1}); // bias: no decay
}

TEST_CASE_TEMPLATE("sgd momentum with weight decay on a quadratic", T, float, double) {
  // loss = w^2 / 2 (g = w), wd 0.1, lr 0.1, mu 0.9
  toy_params<T> ps;
  ps.add("w", {1}, {1});
  optim::sgd<T> opt({.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1});
  std::vector<double> want = {0.89, 0.6931, 0.439649};
  for (double expected : want) {
    ps.grad(0)[0] = ps.value(0)[0];
    opt.step(ps.source());
    CHECK(double(ps.value(0)[0]) ==
          doctest::Approx(expected).epsilon(feps(std::is_same_v<T, float>)));
  }
}

TEST_CASE("sgd rejects bad options") {
  CHECK_THROWS_AS(optim::sgd<float>({.lr = -1}), config_error);
  CHECK_THROWS_AS(optim::sgd<float>({.lr = 0.1, .nesterov = true}), config_error);
  CHECK_THROWS_AS(optim::sgd<float>({.lr = 0.1, .momentum = -0.5}), config_error);
  optim::sgd<float> opt;
  CHECK_THROWS_AS(opt.set_lr(std::numeric_limits<double>::quiet_NaN()), config_error);
}

TEST_CASE_TEMPLATE("adam bias correction on a quadratic", T, float, double) {
  // g = w; t = 1: m_hat = g, v_hat = g^2, so the first step moves each element by lr.
  toy_params<T> ps;
  ps.add("w", {1, -2}, {0, 0});
  optim::adam<T> opt({.lr = 0.1});
  std::vector<std::vector<double>> want = {{0.900000001, -1.9000000005},
                                           {0.8004122297123382, -1.8001664866210927},
                                           {0.701586274504415, -1.7006233928121137}};
  for (const auto& w : want) {
    ps.grad(0) = ps.value(0);
    opt.step(ps.source());
    check_values(ps.value(0), w, feps(std::is_same_v<T, float>));
  }
  CHECK(opt.state()[0].steps == 3);
}

TEST_CASE_TEMPLATE("adam adds L2 decay to the gradient, adamw decays the weight", T, float,
                   double) {
  // g = [0.5, -1] constant, w0 = [1, 2], wd 0.5, lr 0.1, three steps.
  toy_params<T> a, b;
  a.add("w", {1, 2}, {T(0.5), -1});
  b = a;
  optim::adam<T> l2({.lr = 0.1, .weight_decay = 0.5});
  optim::adamw<T> decoupled({.lr = 0.1, .weight_decay = 0.5});
  for (int i = 0; i < 3; ++i) {
    l2.step(a.source());
    decoupled.step(b.source());
  }
  // adam: g + wd w = 0 for the second element, which then never moves.
  check_values(a.value(0), {0.7006233943434114, 2.0}, feps(std::is_same_v<T, float>));
  check_values(b.value(0), {0.5721250057050006, 1.999999997147499}, feps(std::is_same_v<T, float>));
}

TEST_CASE("adamw defaults to a decay of 0.01, adam to none") {
  CHECK(optim::adamw<float>().options().weight_decay == 0.01);
  CHECK(optim::adam<float>().options().weight_decay == 0.0);
  CHECK_THROWS_AS(optim::adam<float>({.beta1 = 1.0}), config_error);
  CHECK_THROWS_AS(optim::adamw<float>({.beta2 = -0.1}), config_error);
}

TEST_CASE_TEMPLATE("groups by kind: a bitwidth gets its own lr and no decay", T, float, double) {
  toy_params<T> ps;
  ps.add("fc.weight", {1}, {1})
      .add("fc.bias", {1}, {1}, param_kind::bias)
      .add("fc.bits", {4}, {1}, param_kind::bitwidth);
  optim::sgd<T> opt({.lr = 0.1, .weight_decay = 0.5});
  opt.set_group(param_kind::bitwidth, {.lr = 0.01, .weight_decay = 0});
  opt.step(ps.source());
  CHECK(double(ps.value(0)[0]) == doctest::Approx(1 - 0.1 * 1.5)); // decayed weight
  CHECK(double(ps.value(1)[0]) == doctest::Approx(0.9));           // bias: no decay
  CHECK(double(ps.value(2)[0]) == doctest::Approx(3.99));          // bitwidth: lr 0.01

  // A schedule halves the base lr: the absolute group lr follows it.
  opt.set_lr(0.05);
  CHECK(opt.groups().lr_for(param_kind::bitwidth) == doctest::Approx(0.005));
  opt.step(ps.source());
  CHECK(double(ps.value(2)[0]) == doctest::Approx(3.985));

  // lr_scale multiplies the base lr; an explicit decay applies to any kind.
  opt.set_group(param_kind::bias, {.lr_scale = 2.0, .weight_decay = 1.0});
  T before = ps.value(1)[0];
  opt.step(ps.source());
  CHECK(double(ps.value(1)[0]) == doctest::Approx(double(before) - 0.1 * (1 + double(before))));
  CHECK(opt.groups().decay_for(param_kind::norm) == 0.0);
  CHECK(opt.groups().decay_for(param_kind::scale) == 0.0);
  CHECK(opt.groups().decay_for(param_kind::weight) == 0.5);
}

TEST_CASE_TEMPLATE("adam group lr on a bitwidth", T, float, double) {
  toy_params<T> ps;
  ps.add("w", {1}, {T(0.5)}).add("bits", {8}, {-2}, param_kind::bitwidth);
  optim::adam<T> opt({.lr = 0.1});
  opt.set_group(param_kind::bitwidth, {.lr = 0.01});
  for (int i = 0; i < 2; ++i) opt.step(ps.source()); // constant g: each step moves lr * sign(g)
  CHECK(double(ps.value(0)[0]) == doctest::Approx(0.8));
  CHECK(double(ps.value(1)[0]) == doctest::Approx(8.02));
}

TEST_CASE_TEMPLATE("adam with a shared second moment steps in proportion to the gradients", T,
                   float, double) {
  // Constant gradients g = [1, 2, -3] on a bitwidth tensor: after bias correction every element
  // sees m_hat = g_k and v_hat = mean(g^2) = 14/3, so each step moves it by lr g_k / sqrt(14/3).
  // The weight tensor keeps per-element moments: each element moves by lr per step.
  toy_params<T> ps;
  ps.add("w", {1, 1}, {1, 100}).add("bits", {4, 4, 4}, {1, 2, -3}, param_kind::bitwidth);
  optim::adam<T> opt({.lr = 0.1, .eps = 0});
  CHECK_FALSE(opt.shared_second_moment(param_kind::bitwidth));
  opt.set_shared_second_moment(param_kind::bitwidth);
  CHECK(opt.shared_second_moment(param_kind::bitwidth));
  CHECK_FALSE(opt.shared_second_moment(param_kind::weight));
  for (int i = 0; i < 2; ++i) opt.step(ps.source());
  const double unit = 0.2 / std::sqrt(14.0 / 3.0);
  check_values(ps.value(1), {4 - unit, 4 - 2 * unit, 4 + 3 * unit}, feps(std::is_same_v<T, float>));
  check_values(ps.value(0), {0.8, 0.8}, feps(std::is_same_v<T, float>));
  // The state holds one v per element, all equal within the shared tensor (save/load unchanged).
  const auto& v = opt.state()[1].buffers[1];
  CHECK(v[0] == v[1]);
  CHECK(v[1] == v[2]);
}

TEST_CASE_TEMPLATE("the update kernels match their reference twins on ragged lengths", T, float,
                   double) {
  // Whole registers, then the zero-padded last one: every length up to a few registers.
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> d(-2.0, 2.0);
  auto random = [&](std::size_t n, double shift = 0) {
    std::vector<T> v(n);
    for (T& e : v) e = T(d(rng) + shift);
    return v;
  };
  const double eps = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  for (std::size_t n = 0; n < 4 * bitgrad::simd_lanes<T> + 3; ++n) {
    const auto w = random(n), g = random(n), m = random(n), v = random(n, 3.0), b = random(n);
    for (int variant = 0; variant < 3; ++variant) {
      bitgrad::adam_update_params<T> k{T(0.9), T(0.999), T(0.1), T(0.001), T(1e-8), T(0.3), T(0.2)};
      k.decay = T(0.05);
      k.keep = T(0.99);
      k.decoupled = variant == 1;
      k.shared_second_moment = variant == 2;
      k.mean_square = T(1.7);
      auto w1 = w, m1 = m, v1 = v, w2 = w, m2 = m, v2 = v;
      bitgrad::adam_update(n, w1.data(), g.data(), m1.data(), v1.data(), k);
      bitgrad::ref::adam_update(n, w2.data(), g.data(), m2.data(), v2.data(), k);
      INFO("adam n = " << n << ", variant " << variant);
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(double(w1[i]) == doctest::Approx(double(w2[i])).epsilon(eps));
        CHECK(double(m1[i]) == doctest::Approx(double(m2[i])).epsilon(eps));
        CHECK(double(v1[i]) == doctest::Approx(double(v2[i])).epsilon(eps));
      }
    }
    for (int variant = 0; variant < 3; ++variant) {
      const bitgrad::sgd_update_params<T> k{T(0.1), T(0.05), variant == 0 ? T(0) : T(0.9),
                                            variant == 2};
      auto w1 = w, b1 = b, w2 = w, b2 = b;
      bitgrad::sgd_update(n, w1.data(), g.data(), b1.data(), k);
      bitgrad::ref::sgd_update(n, w2.data(), g.data(), b2.data(), k);
      INFO("sgd n = " << n << ", variant " << variant);
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(double(w1[i]) == doctest::Approx(double(w2[i])).epsilon(eps));
        CHECK(double(b1[i]) == doctest::Approx(double(b2[i])).epsilon(eps));
      }
    }
  }
}

#if defined(BITGRAD_WITH_OPENMP)
TEST_CASE_TEMPLATE("large steps split across threads give the serial step's bits", T, float,
                   double) {
  // Tensors of ragged sizes around the block size, the parallel thresholds crossed by the step as
  // a whole (adam_parallel_min() <= sgd_parallel_min() + 5 elements, in spinning and in sleeping
  // mode), a null gradient among them, a shared second moment and every SGD variant.
  const std::size_t block = bitgrad::detail::optim_block;
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  toy_params<T> start;
  std::size_t index = 0;
  for (std::size_t n : {std::size_t(3), block - 1, block + 1, 3 * block + 13, std::size_t(1),
                        bitgrad::detail::sgd_parallel_min() + 5, std::size_t(0), 2 * block}) {
    std::vector<T> value(n), grad(n);
    for (T& e : value) e = T(d(rng));
    for (T& e : grad) e = T(d(rng));
    std::ostringstream name; // (not string +: GCC 12 -Wrestrict false positive at -march=native)
    name << "p" << index;
    start.add(name.str(), value, grad, index % 3 == 2 ? param_kind::bitwidth : param_kind::weight);
    ++index;
  }
  start.entries[4].has_grad = false;
  auto run = [&](auto make_optimizer, int threads) {
    omp_set_num_threads(threads);
    toy_params<T> ps = start;
    auto opt = make_optimizer();
    for (int step = 0; step < 3; ++step) {
      for (auto& e : ps.entries)
        for (std::size_t k = 0; k < e.value.size(); ++k)
          e.grad[k] = e.value[k] * T(0.5) - e.grad[k];
      opt.step(ps.source());
    }
    std::vector<std::vector<T>> out;
    for (auto& e : ps.entries) out.push_back(e.value);
    for (const auto& s : opt.state())
      for (const auto& b : s.buffers) out.push_back(b);
    return out;
  };
  const int saved = omp_get_max_threads();
  auto check = [&](const char* name, auto make_optimizer) {
    const auto serial = run(make_optimizer, 1);
    for (int threads : {2, 3, 4, 7}) {
      INFO(name << ", threads = " << threads);
      CHECK(run(make_optimizer, threads) == serial);
    }
  };
  check("adam", [] {
    optim::adam<T> opt({.lr = 0.01, .weight_decay = 0.1});
    opt.set_shared_second_moment(param_kind::bitwidth);
    return opt;
  });
  check("adamw", [] { return optim::adamw<T>({.lr = 0.01}); });
  check("sgd", [] { return optim::sgd<T>({.lr = 0.1, .weight_decay = 0.01}); });
  check("sgd momentum", [] { return optim::sgd<T>({.lr = 0.1, .momentum = 0.9}); });
  check("sgd nesterov",
        [] { return optim::sgd<T>({.lr = 0.1, .momentum = 0.9, .nesterov = true}); });
  omp_set_num_threads(saved);
}
#endif

TEST_CASE("parameters without a gradient are skipped and keep their slot") {
  toy_params<double> ps;
  ps.add("a", {1}, {1}).add("frozen", {5, 6}, {1, 1}).add("c", {1}, {1});
  ps.entries[1].has_grad = false;
  optim::adam<double> opt({.lr = 0.1});
  opt.step(ps.source());
  CHECK(ps.value(1) == std::vector<double>{5, 6});
  REQUIRE(opt.state().size() == 3);
  CHECK(opt.state()[1].steps == 0);
  CHECK(opt.state()[1].buffers.empty());
  CHECK(opt.state()[2].steps == 1);
  // Unfrozen later: its own t starts at 1, so its first step is a full lr step.
  ps.entries[1].has_grad = true;
  opt.step(ps.source());
  CHECK(ps.value(1)[0] == doctest::Approx(4.9));
  CHECK(opt.state()[1].steps == 1);
  CHECK(opt.state()[0].steps == 2);
}

TEST_CASE("a parameter source of another shape is rejected before anything changes") {
  toy_params<float> ps;
  ps.add("fc1.weight", {1, 2}, {1, 1}).add("fc1.bias", {0}, {1}, param_kind::bias);
  optim::sgd<float> opt({.lr = 0.1, .momentum = 0.9});
  opt.step(ps.source());

  toy_params<float> bigger = ps;
  bigger.value(0) = {1, 2, 3};
  bigger.grad(0) = {1, 1, 1};
  try {
    opt.step(bigger.source());
    FAIL("no exception");
  } catch (const config_error& e) {
    std::string msg = e.what();
    CHECK(msg.find("fc1.weight") != std::string::npos);
    CHECK(msg.find("3 elements") != std::string::npos);
  }
  CHECK(bigger.value(0) == std::vector<float>{1, 2, 3});

  toy_params<float> more = ps;
  more.add("fc2.weight", {1}, {1});
  CHECK_THROWS_WITH_AS(opt.step(more.source()), doctest::Contains("fc2.weight"), config_error);
  CHECK(more.value(0) == ps.value(0)); // nothing updated

  toy_params<float> fewer;
  fewer.add("fc1.weight", {1, 2}, {1, 1});
  CHECK_THROWS_WITH_AS(opt.step(fewer.source()), doctest::Contains("fc1.bias"), config_error);
}

TEST_CASE_TEMPLATE("state save/load round trip continues identically", T, float, double) {
  toy_params<T> ps;
  ps.add("w", {1, -2, 3}, {0, 0, 0}).add("bits", {4, 6}, {0, 0}, param_kind::bitwidth);
  auto set_grads = [](toy_params<T>& p) {
    for (auto& e : p.entries)
      for (std::size_t k = 0; k < e.value.size(); ++k) e.grad[k] = e.value[k] * T(0.3) - T(k);
  };
  optim::adamw<T> a({.lr = 0.05});
  a.set_group(param_kind::bitwidth, {.lr = 0.02});
  for (int i = 0; i < 2; ++i) {
    set_grads(ps);
    a.step(ps.source());
  }
  a.set_lr(0.04);
  io::byte_writer buf;
  a.save(buf);

  optim::adamw<T> b({.lr = 0.05});
  b.set_group(param_kind::bitwidth, {.lr = 0.02});
  io::byte_reader in(buf.bytes(), "adamw state");
  b.load(in);
  CHECK(in.at_end());
  CHECK(b.lr() == 0.04);
  toy_params<T> copy = ps;
  for (int i = 0; i < 3; ++i) {
    set_grads(ps);
    set_grads(copy);
    a.step(ps.source());
    b.step(copy.source());
  }
  for (std::size_t i = 0; i < ps.entries.size(); ++i) CHECK(ps.value(i) == copy.value(i));
  CHECK(b.state()[0].steps == 5);

  // sgd with momentum too
  optim::sgd<T> s1({.lr = 0.1, .momentum = 0.9});
  toy_params<T> q = ps;
  set_grads(q);
  s1.step(q.source());
  io::byte_writer sbuf;
  s1.save(sbuf);
  optim::sgd<T> s2({.lr = 0.1, .momentum = 0.9});
  io::byte_reader sin(sbuf.bytes(), "sgd state");
  s2.load(sin);
  toy_params<T> q2 = q;
  s1.step(q.source());
  s2.step(q2.source());
  for (std::size_t i = 0; i < q.entries.size(); ++i) CHECK(q.value(i) == q2.value(i));
}

TEST_CASE("a loaded state from another architecture fails at the next step") {
  toy_params<float> ps;
  ps.add("conv1.weight", {1, 2, 3, 4}, {1, 1, 1, 1});
  optim::adam<float> a;
  a.step(ps.source());
  io::byte_writer buf;
  a.save(buf);
  optim::adam<float> b;
  io::byte_reader in(buf.bytes(), "adam state");
  b.load(in);
  toy_params<float> other;
  other.add("conv1.weight", {1, 2}, {1, 1});
  CHECK_THROWS_WITH_AS(b.step(other.source()), doctest::Contains("conv1.weight"), config_error);
}

TEST_CASE("the state reader rejects what it does not understand") {
  toy_params<float> ps;
  ps.add("w", {1, 2}, {1, 1});
  optim::adam<float> a;
  a.step(ps.source());
  io::byte_writer buf;
  a.save(buf);
  const std::string good = buf.take();
  // magic 8 + version 4 + tag 8 + elem 1 + lr 8 + count 8 + (4 + 1 + 8 + 8 + 4 + 2*2*4)
  CHECK(good.size() == 37 + 25 + 16);

  auto load_adam = [](const std::string& bytes) {
    io::byte_reader in(bytes, "ckpt.bin");
    optim::adam<float> o;
    o.load(in);
  };
  CHECK_NOTHROW(load_adam(good));

  std::string bad_version = good;
  bad_version[8] = 2;
  CHECK_THROWS_WITH_AS(load_adam(bad_version),
                       doctest::Contains("unknown optimizer state version 2"), format_error);
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  CHECK_THROWS_AS(load_adam(bad_magic), format_error);
  CHECK_THROWS_WITH_AS(load_adam(good.substr(0, good.size() - 3)), doctest::Contains("ckpt.bin"),
                       format_error);

  io::byte_reader as_sgd(good, "ckpt.bin");
  optim::sgd<float> s({.momentum = 0.9});
  CHECK_THROWS_WITH_AS(s.load(as_sgd), doctest::Contains("'adam'"), format_error);

  io::byte_reader as_double(good, "ckpt.bin");
  optim::adam<double> d;
  CHECK_THROWS_AS(d.load(as_double), format_error);

  // A corrupt parameter size (2^61 values) fails at the buffers, naming the offset of the
  // state inside its file, before anything that size is allocated.
  std::string huge = good;
  const std::size_t size_at = 37 + 4 + 1; // the first slot's size field
  huge[size_at + 7] = 0x20;
  {
    io::byte_reader in(huge, "ckpt.bin", 1000);
    optim::adam<float> o;
    try {
      o.load(in);
      FAIL("a corrupt size loaded");
    } catch (const format_error& e) {
      CHECK(std::string(e.what()).find("buffers") != std::string::npos);
      CHECK(e.offset() == 1000 + size_at + 8 + 8 + 4);
    }
  }

  // A failed load leaves the optimizer as it was.
  optim::adam<float> keep;
  keep.step(ps.source());
  const std::string cut = good.substr(0, 50);
  io::byte_reader truncated(cut, "ckpt.bin");
  CHECK_THROWS_AS(keep.load(truncated), format_error);
  CHECK(keep.state().size() == 1);
  CHECK(keep.state()[0].steps == 1);
}

TEST_CASE_TEMPLATE("clip_grad_norm scales to max_norm and returns the norm before", T, float,
                   double) {
  toy_params<T> ps;
  ps.add("w", {0, 0}, {3, 4}).add("b", {0}, {0}, param_kind::bias);
  auto src = ps.source();
  CHECK(optim::clip_grad_norm<T>(src, 10.0) == doctest::Approx(5.0));
  CHECK(ps.grad(0) == std::vector<T>{3, 4}); // below max: unchanged

  double norm = optim::clip_grad_norm<T>(src, 1.0);
  CHECK(norm == doctest::Approx(5.0));
  CHECK(double(ps.grad(0)[0]) == doctest::Approx(3.0 / (5.0 + 1e-6)));
  CHECK(double(ps.grad(0)[1]) == doctest::Approx(4.0 / (5.0 + 1e-6)));
  CHECK(optim::grad_norm<T>(src) == doctest::Approx(1.0));

  CHECK_THROWS_AS(optim::clip_grad_norm<T>(src, 0.0), config_error);
}

TEST_CASE("clip_grad_norm filtered by kind") {
  toy_params<double> ps;
  ps.add("w", {0, 0}, {3, 4}).add("bits", {0}, {12}, param_kind::bitwidth);
  auto src = ps.source();
  CHECK(optim::grad_norm<double>(src) == doctest::Approx(13.0));
  double norm = optim::clip_grad_norm<double>(src, 2.5, {param_kind::weight, param_kind::bias});
  CHECK(norm == doctest::Approx(5.0));
  CHECK(ps.grad(0)[0] == doctest::Approx(1.5));
  CHECK(ps.grad(1)[0] == 12.0); // not selected: untouched
}

TEST_CASE("grad_is_finite names the first non-finite parameter") {
  toy_params<float> ps;
  ps.add("fc1.weight", {0, 0}, {1, 2}).add("fc1.bits", {0}, {3}).add("fc2.weight", {0}, {4});
  auto src = ps.source();
  CHECK(optim::grad_is_finite<float>(src).empty());
  ps.grad(2)[0] = std::numeric_limits<float>::infinity();
  ps.grad(1)[0] = std::numeric_limits<float>::quiet_NaN();
  CHECK(optim::grad_is_finite<float>(src) == "fc1.bits");
  // A non-finite norm is reported and nothing is scaled.
  CHECK(std::isnan(optim::clip_grad_norm<float>(src, 1.0)));
  CHECK(ps.grad(0) == std::vector<float>{1, 2});
}

TEST_CASE("step schedule") {
  optim::step_schedule s{.step_size = 3, .gamma = 0.5};
  CHECK(s.factor(0) == 1.0);
  CHECK(s.factor(2) == 1.0);
  CHECK(s.factor(3) == 0.5);
  CHECK(s.factor(5) == 0.5);
  CHECK(s.factor(6) == 0.25);
  CHECK(optim::scheduled_lr(s, 0.2, 7) == doctest::Approx(0.05));
  CHECK_THROWS_AS((optim::step_schedule{.step_size = 0}.factor(1)), config_error);
}

TEST_CASE("cosine schedule") {
  optim::cosine_schedule c{.total_steps = 4, .min_factor = 0.1};
  CHECK(c.factor(0) == doctest::Approx(1.0));
  CHECK(c.factor(1) == doctest::Approx(0.8681980515339464));
  CHECK(c.factor(2) == doctest::Approx(0.55));
  CHECK(c.factor(4) == doctest::Approx(0.1));
  CHECK(c.factor(10) == doctest::Approx(0.1));
  CHECK_THROWS_AS((optim::cosine_schedule{.total_steps = 0}.factor(0)), config_error);
}

TEST_CASE("linear warmup then the inner schedule") {
  optim::warmup<optim::cosine_schedule> w{.warmup_steps = 4, .inner = {.total_steps = 4}};
  std::vector<double> want = {0,   0.25,
                              0.5, 0.75,
                              1,   0.5 + 0.5 * std::cos(3.141592653589793 / 4),
                              0.5, 0.5 - 0.5 * std::cos(3.141592653589793 / 4),
                              0,   0};
  for (std::size_t s = 0; s < want.size(); ++s) CHECK(w.factor(s) == doctest::Approx(want[s]));

  optim::warmup<optim::step_schedule> ws{
      .warmup_steps = 2, .inner = {.step_size = 2, .gamma = 0.1}, .start_factor = 0.5};
  CHECK(ws.factor(0) == doctest::Approx(0.5));
  CHECK(ws.factor(1) == doctest::Approx(0.75));
  CHECK(ws.factor(2) == doctest::Approx(1.0));
  CHECK(ws.factor(3) == doctest::Approx(1.0));
  CHECK(ws.factor(4) == doctest::Approx(0.1));

  // The warmup ramps towards where the inner schedule starts.
  struct half {
    double factor(std::size_t) const { return 0.5; }
  };
  optim::warmup<half> scaled{.warmup_steps = 2};
  CHECK(scaled.factor(0) == 0.0);
  CHECK(scaled.factor(1) == doctest::Approx(0.25));
  CHECK(scaled.factor(2) == 0.5);
  optim::warmup<optim::constant_schedule> plain{.warmup_steps = 0};
  CHECK(plain.factor(0) == 1.0);
  static_assert(optim::lr_schedule<optim::warmup<optim::cosine_schedule>>);
}

TEST_CASE("a schedule drives the optimizer's lr") {
  toy_params<double> ps;
  ps.add("w", {0}, {1});
  optim::sgd<double> opt({.lr = 0.2});
  optim::step_schedule sched{.step_size = 1, .gamma = 0.5};
  for (std::size_t step = 0; step < 3; ++step) {
    opt.set_lr(optim::scheduled_lr(sched, 0.2, step));
    opt.step(ps.source());
  }
  CHECK(ps.value(0)[0] == doctest::Approx(-(0.2 + 0.1 + 0.05)));
}

} // namespace test_optim
