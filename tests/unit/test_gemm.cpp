// bitgrad::gemm against its reference twin bitgrad::ref::gemm: every small shape, ragged and
// prime shapes, shapes that cross the cache blocks, all four transpositions, padded leading
// dimensions, alpha / beta cases and every epilogue, in float and double.
#include <bitgrad/kernels/gemm.hpp>
#include <bitgrad/kernels/reference.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(BITGRAD_WITH_OPENMP)
#include <omp.h>
#endif

namespace test_gemm {

namespace {

using bitgrad::transpose;
namespace epilogue = bitgrad::epilogue;

constexpr transpose no = transpose::no;
constexpr transpose yes = transpose::yes;

/// What a GEMM call looks like: shapes, transpositions, scalars and the padding of each leading
/// dimension beyond its row length.
struct gemm_case {
  transpose ta = no, tb = no;
  std::size_t m = 1, n = 1, k = 1;
  double alpha = 1, beta = 0;
  std::size_t pad_a = 0, pad_b = 0, pad_c = 0;
};

std::string describe(const gemm_case& g) {
  return "ta=" + std::string(g.ta == yes ? "T" : "N") + " tb=" + (g.tb == yes ? "T" : "N") +
         " m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
         " alpha=" + std::to_string(g.alpha) + " beta=" + std::to_string(g.beta) +
         " pads=" + std::to_string(g.pad_a) + "," + std::to_string(g.pad_b) + "," +
         std::to_string(g.pad_c);
}

/// A row-major matrix stored with a leading dimension; the gaps hold `gap` values.
template <class T>
struct stored {
  std::size_t rows, cols, ld;
  std::vector<T> data;
  stored(std::size_t r, std::size_t c, std::size_t pad, T gap)
      : rows(r), cols(c), ld(c + pad), data(std::max<std::size_t>(1, r * (c + pad)), gap) {}
  T& at(std::size_t i, std::size_t j) { return data[i * ld + j]; }
};

template <class T>
T random_value(std::mt19937& rng) {
  return std::uniform_real_distribution<T>(T(-1), T(1))(rng);
}

/// Runs bitgrad::gemm and bitgrad::ref::gemm on the same inputs and checks that they agree within
/// a rounding bound, that the padding of C is untouched and that NaN in C stays out when beta == 0.
/// The padding of A and B is NaN, so reading it would show in C.
template <class T, class Epilogue>
void check_gemm(const gemm_case& g, const Epilogue& ep, std::mt19937& rng) {
  INFO(describe(g));
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T sentinel = T(-12345.5);
  stored<T> a(g.ta == no ? g.m : g.k, g.ta == no ? g.k : g.m, g.pad_a, nan);
  stored<T> b(g.tb == no ? g.k : g.n, g.tb == no ? g.n : g.k, g.pad_b, nan);
  stored<T> c(g.m, g.n, g.pad_c, sentinel);
  for (std::size_t i = 0; i < a.rows; ++i)
    for (std::size_t j = 0; j < a.cols; ++j) a.at(i, j) = random_value<T>(rng);
  for (std::size_t i = 0; i < b.rows; ++i)
    for (std::size_t j = 0; j < b.cols; ++j) b.at(i, j) = random_value<T>(rng);
  for (std::size_t i = 0; i < c.rows; ++i)
    for (std::size_t j = 0; j < c.cols; ++j) c.at(i, j) = g.beta == 0 ? nan : random_value<T>(rng);

  // Reference: the same call on copies (with C's NaN replaced, since ref never reads it either
  // but |C| enters the error bound).
  stored<T> expected = c;
  const T alpha = T(g.alpha), beta = T(g.beta);
  bitgrad::ref::gemm(g.ta, g.tb, g.m, g.n, g.k, alpha, a.data.data(), a.ld, b.data.data(), b.ld,
                     beta, expected.data.data(), expected.ld, ep);
  // Error bound per element: k * eps * (|alpha| sum_p |a_ip| |b_pj| + |beta c_ij| + |result|).
  stored<T> abs_a = a, abs_b = b, bound(g.m, g.n, g.pad_c, T(0));
  for (T& x : abs_a.data) x = std::abs(x);
  for (T& x : abs_b.data) x = std::abs(x);
  bitgrad::ref::gemm(g.ta, g.tb, g.m, g.n, g.k, std::abs(alpha), abs_a.data.data(), abs_a.ld,
                     abs_b.data.data(), abs_b.ld, T(0), bound.data.data(), bound.ld);

  stored<T> got = c;
  bitgrad::gemm(g.ta, g.tb, g.m, g.n, g.k, alpha, a.data.data(), a.ld, b.data.data(), b.ld, beta,
                got.data.data(), got.ld, ep);

  const T eps = std::numeric_limits<T>::epsilon();
  std::size_t bad = 0;
  for (std::size_t i = 0; i < g.m; ++i) {
    for (std::size_t j = 0; j < c.ld; ++j) {
      const T x = got.at(i, j), want = expected.at(i, j);
      if (j >= g.n) {
        if (x != sentinel && bad++ < 5)
          FAIL_CHECK("C padding written at (" << i << "," << j << ")");
        continue;
      }
      const T old_c = g.beta == 0 ? T(0) : std::abs(beta * c.at(i, j));
      const T tol = T(2) * T(g.k + 2) * eps * (bound.at(i, j) + old_c + std::abs(want) + T(1e-30));
      if (!(std::abs(x - want) <= tol) && bad++ < 5) {
        FAIL_CHECK("C(" << i << "," << j << ") = " << x << ", reference " << want << ", tol "
                        << tol);
      }
    }
  }
  CHECK(bad == 0);
}

/// Bias vectors long enough for any row or column index used here.
template <class T>
const T* test_bias() {
  static const std::vector<T> bias = [] {
    std::vector<T> v(4096);
    std::mt19937 rng(7);
    for (T& x : v) x = random_value<T>(rng);
    return v;
  }();
  return bias.data();
}

/// Calls f(epilogue) for every epilogue in kernels/epilogue.hpp.
template <class T, class F>
void for_each_epilogue(F&& f) {
  const T* bias = test_bias<T>();
  f(epilogue::identity{});
  f(epilogue::bias_rows<T>{bias});
  f(epilogue::bias_cols<T>{bias});
  f(epilogue::bias_rows_relu<T>{bias});
  f(epilogue::bias_cols_relu<T>{bias});
}

constexpr transpose transposes[2] = {no, yes};

} // namespace

TEST_CASE_TEMPLATE("gemm matches the reference on every extent 1..40", T, float, double) {
  std::mt19937 rng(1);
  for (transpose ta : transposes) {
    for (transpose tb : transposes) {
      for (std::size_t s = 1; s <= 40; ++s) {
        check_gemm<T>({ta, tb, s, 7, 13}, epilogue::identity{}, rng);
        check_gemm<T>({ta, tb, 5, s, 9}, epilogue::identity{}, rng);
        check_gemm<T>({ta, tb, 11, 17, s}, epilogue::identity{}, rng);
        check_gemm<T>({ta, tb, s, 41 - s, s + 3}, epilogue::identity{}, rng);
        check_gemm<T>({ta, tb, s, s, s, 1, 0.3}, epilogue::identity{}, rng);
      }
    }
  }
}

TEST_CASE_TEMPLATE("gemm matches the reference on large, prime and block-crossing shapes", T, float,
                   double) {
  std::mt19937 rng(2);
  for (transpose ta : transposes) {
    for (transpose tb : transposes) {
      check_gemm<T>({ta, tb, 257, 263, 129, 1, 0.3}, epilogue::identity{}, rng);
      check_gemm<T>({ta, tb, 97, 101, 521, -0.5, 1}, epilogue::bias_cols<T>{test_bias<T>()}, rng);
      // Several k blocks, several B blocks (n > NC), and skinny conv-like shapes.
      check_gemm<T>({ta, tb, 64, 1100, 400, 1, 0}, epilogue::bias_rows_relu<T>{test_bias<T>()},
                    rng);
      check_gemm<T>({ta, tb, 6, 2309, 25, 1, 0}, epilogue::bias_rows<T>{test_bias<T>()}, rng);
      check_gemm<T>({ta, tb, 33, 9, 1501, 1, 0}, epilogue::identity{}, rng);
    }
  }
  // Several A blocks (m > MC at this depth).
  check_gemm<T>({no, no, 2100, 40, 500, 1, 0.3}, epilogue::bias_cols_relu<T>{test_bias<T>()}, rng);
  check_gemm<T>({yes, yes, 2100, 40, 500, 1, 0}, epilogue::identity{}, rng);
}

TEST_CASE_TEMPLATE("gemm honours padded leading dimensions in every transposition", T, float,
                   double) {
  std::mt19937 rng(3);
  for (transpose ta : transposes) {
    for (transpose tb : transposes) {
      for (std::size_t pad : {1, 3, 16, 61}) {
        check_gemm<T>({ta, tb, 19, 53, 31, 1, 0, pad, pad + 2, pad + 5}, epilogue::identity{}, rng);
        check_gemm<T>({ta, tb, 70, 70, 400, -0.5, 0.3, pad + 7, pad, pad}, epilogue::identity{},
                      rng);
      }
    }
  }
}

TEST_CASE_TEMPLATE("gemm alpha and beta: 0, 1, -0.5 by 0, 1, 0.3", T, float, double) {
  std::mt19937 rng(4);
  for (double alpha : {0.0, 1.0, -0.5}) {
    for (double beta : {0.0, 1.0, 0.3}) {
      check_gemm<T>({no, no, 23, 37, 19, alpha, beta, 2, 0, 3}, epilogue::identity{}, rng);
      check_gemm<T>({yes, no, 40, 96, 450, alpha, beta}, epilogue::bias_rows<T>{test_bias<T>()},
                    rng);
      check_gemm<T>({no, yes, 130, 50, 70, alpha, beta, 0, 4, 1},
                    epilogue::bias_cols_relu<T>{test_bias<T>()}, rng);
    }
  }
}

TEST_CASE_TEMPLATE("gemm applies every epilogue exactly once, after alpha and beta", T, float,
                   double) {
  std::mt19937 rng(5);
  for_each_epilogue<T>([&](const auto& ep) {
    for (transpose ta : transposes) {
      for (transpose tb : transposes) {
        for (double beta : {0.0, 0.3}) {
          check_gemm<T>({ta, tb, 13, 29, 7, -0.5, beta, 1, 2, 3}, ep, rng);
          check_gemm<T>({ta, tb, 8, 48, 24, 1, beta}, ep, rng);
          // k spans several k blocks: the epilogue must wait for the last one.
          check_gemm<T>({ta, tb, 35, 77, 900, 1, beta}, ep, rng);
        }
      }
    }
  });
}

TEST_CASE_TEMPLATE("gemm's inner-product path (A B^T, few columns, long k)", T, float, double) {
  // C = A B^T with n <= 32 and k >= 256 runs as dot products (gemm_dot.hpp): every row and
  // column count of its register blocks, k tails, k chunks, padding and every epilogue.
  std::mt19937 rng(9);
  for (std::size_t m = 1; m <= 9; ++m) {
    for (std::size_t n : {1, 2, 3, 4, 5, 9, 25, 32}) {
      check_gemm<T>({no, yes, m, n, 256 + 7 * m + n, -0.5, m % 2 ? 0.0 : 0.3, m % 3, n % 4, 1},
                    epilogue::identity{}, rng);
    }
  }
  for_each_epilogue<T>([&](const auto& ep) {
    check_gemm<T>({no, yes, 32, 9, 784, 1, 0}, ep, rng);
    check_gemm<T>({no, yes, 6, 25, 576, 1, 1}, ep, rng);
    check_gemm<T>({no, yes, 37, 31, 9000, 0.5, 0.3, 3, 5, 2}, ep, rng);
  });
}

TEST_CASE_TEMPLATE("gemm gives the same bits wherever its operands sit in memory", T, float,
                   double) {
  // Training must not depend on the heap's layout: the same A and B at every offset from a
  // cache line (rows a whole number of cache lines apart, the case where alignment could be
  // exploited) give the same C, bit for bit. n = 9 runs as inner products, n = 40 packed.
  std::mt19937 rng(10);
  const std::size_t m = 13, k = 784;
  for (const std::size_t n : {9, 40}) {
    std::vector<T> a(m * k), b(n * k);
    for (T& x : a) x = random_value<T>(rng);
    for (T& x : b) x = random_value<T>(rng);
    std::vector<T> first;
    for (std::size_t offset = 0; offset < 24; ++offset) {
      std::vector<T> a_at(offset + a.size()), b_at(offset + b.size()), c(m * n);
      std::copy(a.begin(), a.end(), a_at.begin() + std::ptrdiff_t(offset));
      std::copy(b.begin(), b.end(), b_at.begin() + std::ptrdiff_t(offset));
      bitgrad::gemm(no, yes, m, n, k, T(1), a_at.data() + offset, k, b_at.data() + offset, k, T(0),
                    c.data(), n);
      if (first.empty()) {
        first = c;
      } else {
        INFO("n = " << n << ", offset = " << offset << " elements");
        CHECK(c == first);
      }
    }
  }
}

TEST_CASE_TEMPLATE("gemm with k == 0 writes ep(beta * C); m or n == 0 is a no-op", T, float,
                   double) {
  std::mt19937 rng(6);
  for_each_epilogue<T>([&](const auto& ep) {
    for (double beta : {0.0, 1.0, 0.3}) {
      check_gemm<T>({no, no, 9, 21, 0, 1, beta, 0, 0, 2}, ep, rng);
      check_gemm<T>({yes, yes, 9, 21, 0, -0.5, beta}, ep, rng);
    }
  });
  T c[4] = {1, 2, 3, 4};
  const T a[1] = {5}, b[1] = {6};
  bitgrad::gemm<T>(no, no, 0, 2, 1, T(1), a, 1, b, 2, T(0), c, 2);
  bitgrad::gemm<T>(no, no, 2, 0, 1, T(1), a, 1, b, 1, T(0), c, 2);
  bitgrad::gemm<T>(no, no, 0, 0, 0, T(1), nullptr, 1, nullptr, 1, T(0), nullptr, 1);
  CHECK(c[0] == T(1));
  CHECK(c[1] == T(2));
  CHECK(c[2] == T(3));
  CHECK(c[3] == T(4));
}

TEST_CASE_TEMPLATE("gemm with alpha == 0 reads neither A nor B", T, float, double) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> a(6 * 5, nan), b(5 * 7, nan);
  std::vector<T> c(6 * 7, T(2));
  bitgrad::gemm(no, yes, 6, 7, 5, T(0), a.data(), 5, b.data(), 5, T(0.5), c.data(), 7,
                epilogue::bias_cols<T>{test_bias<T>()});
  for (std::size_t i = 0; i < 6; ++i) {
    for (std::size_t j = 0; j < 7; ++j) CHECK(c[i * 7 + j] == T(1) + test_bias<T>()[j]);
  }
}

TEST_CASE_TEMPLATE("ReLU epilogues: the register overload matches the scalar one, NaN included", T,
                   float, double) {
  using batch = bitgrad::simd_batch<T>;
  constexpr std::size_t lanes = batch::size;
  const T specials[] = {T(-1),
                        T(0),
                        -T(0),
                        T(2.5),
                        std::numeric_limits<T>::quiet_NaN(),
                        std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity()};
  std::vector<T> bias(lanes, T(0));
  alignas(64) T in[lanes], out[lanes];
  for (std::size_t i = 0; i < lanes; ++i) in[i] = specials[i % 7];
  auto check = [&](const auto& ep) {
    ep.apply(batch::load_unaligned(in), 0, 0).store_unaligned(out);
    for (std::size_t i = 0; i < lanes; ++i) {
      const T want = ep(in[i], 0, i);
      INFO("input " << in[i]);
      CHECK(((out[i] == want && std::signbit(out[i]) == std::signbit(want)) ||
             (std::isnan(out[i]) && std::isnan(want))));
    }
  };
  check(epilogue::bias_rows_relu<T>{bias.data()});
  check(epilogue::bias_cols_relu<T>{bias.data()});
  // ... and NaN stays NaN (issue #17: it became 0, hiding NaN data from the loss).
  const T nan = std::numeric_limits<T>::quiet_NaN();
  CHECK(std::isnan(epilogue::bias_rows_relu<T>{bias.data()}(nan, 0, 0)));
  CHECK(std::isnan(epilogue::bias_cols_relu<T>{bias.data()}(nan, 0, 0)));
  CHECK(epilogue::bias_cols_relu<T>{bias.data()}(T(-1), 0, 0) == T(0));
}

#if defined(BITGRAD_WITH_OPENMP)
TEST_CASE_TEMPLATE("gemm gives the same bits on any number of threads", T, float, double) {
  std::mt19937 rng(8);
  const int saved = omp_get_max_threads();
  // Packed outer products, and inner products (n <= 32, long k).
  for (const std::size_t n : {517, 20}) {
    const std::size_t m = 203, k = n > 32 ? 611 : 3001;
    std::vector<T> a(m * k), b(k * n);
    for (T& x : a) x = random_value<T>(rng);
    for (T& x : b) x = random_value<T>(rng);
    std::vector<T> first;
    for (int threads : {1, 2, 3, 4, 7}) {
      omp_set_num_threads(threads);
      std::vector<T> c(m * n, T(0.25));
      bitgrad::gemm(no, yes, m, n, k, T(0.5), a.data(), k, b.data(), k, T(-1), c.data(), n,
                    epilogue::bias_cols_relu<T>{test_bias<T>()});
      if (first.empty()) {
        first = c;
      } else {
        INFO("n = " << n << ", threads = " << threads);
        CHECK(c == first);
      }
    }
  }
  omp_set_num_threads(saved);
}
#endif

} // namespace test_gemm
