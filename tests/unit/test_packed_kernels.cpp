// The packed low-bit integer kernels (kernels/packed/): the resident weight formats against the
// codes they were built from and against the documented byte layout, their size against the
// file's payload, and every compiled path of packed_gemm / packed_gemv against the reference
// twin ref::packed_gemm and against a plain loop over the original codes, exactly, on odd
// shapes, every bitwidth, mixed and ragged groups, extreme codes and activations, zero points,
// and the largest depth. Paths the CPU lacks are reported as skipped. The direct convolution
// (direct_conv.hpp, few input channels) against its twin ref::direct_conv and against im2row +
// ref::packed_gemm, on odd shapes and row ranges, raw and through the requantizing output stage.
//
// aarch64: scripts/test-aarch64.sh cross-builds this file with g++-aarch64-linux-gnu and runs it
// under qemu-aarch64 (the neon and neon_dot paths).
#include <bitgrad/kernels/packed/direct_conv.hpp>
#include <bitgrad/kernels/packed/flat_conv.hpp>
#include <bitgrad/kernels/packed/packed_gemm.hpp>
#include <bitgrad/kernels/ref/direct_conv.hpp>
#include <bitgrad/kernels/ref/packed_conv.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace test_packed_kernels {

namespace {

using namespace bitgrad;

/// How the codes of a test tensor are drawn.
/// random / min / alternating: the symmetric grid's codes (-L..L); random_full and lowest: the
/// full grid's (-2^(k-1)..L), lowest = -2^(k-1) everywhere (k = 1: -1).
enum class codes_kind { random, max, min, alternating, random_full, lowest };

/// A weight tensor as the file holds it: per-group bits and scales, int32 codes.
struct tensor_codes {
  std::size_t channels, depth, group_size;
  std::vector<std::uint8_t> bits;
  std::vector<float> scales;
  std::vector<std::int32_t> codes;
  packed_weights pack() const {
    return packed_weights(channels, depth, group_size, bits.data(), scales.data(), codes.data());
  }
};

tensor_codes make_codes(std::size_t n, std::size_t depth, std::size_t group_size,
                        const std::vector<std::uint8_t>& bits, codes_kind kind, std::mt19937& rng) {
  tensor_codes t{n, depth, group_size, bits, std::vector<float>(bits.size(), 0.5f), {}};
  t.codes.resize(n * depth);
  for (std::size_t j = 0; j < n; ++j) {
    const int k = bits[j / group_size];
    const std::int32_t limit = packed_code_limit(k);
    for (std::size_t p = 0; p < depth; ++p) {
      std::int32_t c = 0;
      switch (kind) {
      case codes_kind::random:
        c = k == 1 ? ((rng() & 1u) ? 1 : -1)
                   : std::int32_t(rng() % std::uint32_t(2 * limit + 1)) - limit;
        break;
      case codes_kind::max:
        c = limit;
        break;
      case codes_kind::min:
        c = -limit;
        break;
      case codes_kind::alternating:
        c = ((j + p) % 2) ? limit : -limit;
        break;
      case codes_kind::random_full:
        c = k == 1 ? ((rng() & 1u) ? 1 : -1)
                   : std::int32_t(rng() % std::uint32_t(2 * limit + 2)) - limit - 1;
        break;
      case codes_kind::lowest:
        c = k == 1 ? -1 : -limit - 1;
        break;
      }
      t.codes[j * depth + p] = c;
    }
  }
  return t;
}

std::vector<std::uint8_t> random_bits(std::size_t groups, std::mt19937& rng) {
  std::vector<std::uint8_t> b(groups);
  for (auto& v : b) v = static_cast<std::uint8_t>(1 + rng() % 8);
  return b;
}

/// The oracle of the oracle: the plain loop over the original codes.
std::vector<std::int32_t> plain_gemm(const tensor_codes& t, std::size_t m,
                                     const std::vector<std::uint8_t>& a, std::size_t lda,
                                     int zero) {
  std::vector<std::int32_t> c(m * t.channels);
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < t.channels; ++j) {
      std::int64_t s = 0;
      for (std::size_t p = 0; p < t.depth; ++p)
        s += (std::int64_t(a[i * lda + p]) - zero) * t.codes[j * t.depth + p];
      c[i * t.channels + j] = static_cast<std::int32_t>(s);
    }
  return c;
}

/// Runs path p (or the reference) into an m x n int32 matrix.
std::vector<std::int32_t> run(int_isa p, const packed_weights& w, std::size_t m,
                              const std::vector<std::uint8_t>& a, std::size_t lda,
                              std::uint8_t zero) {
  const std::size_t n = w.channels();
  std::vector<std::int32_t> c(m * n, std::numeric_limits<std::int32_t>::min());
  auto out = output::make_pipeline(output::store_int32{c.data(), n, 1});
  if (p == int_isa::reference)
    ref::packed_gemm(m, a.data(), lda, zero, w, out);
  else
    packed_gemm(p, m, a.data(), lda, zero, w, out);
  return c;
}

std::vector<std::uint8_t> activations(std::size_t m, std::size_t lda, int kind, std::mt19937& rng) {
  std::vector<std::uint8_t> a(m * lda);
  for (std::size_t i = 0; i < a.size(); ++i)
    a[i] = kind == 0 ? 0 : kind == 255 ? 255 : static_cast<std::uint8_t>(rng());
  return a;
}

std::string describe(const tensor_codes& t, std::size_t m, int zero) {
  std::string s = "m=" + std::to_string(m) + " n=" + std::to_string(t.channels) +
                  " K=" + std::to_string(t.depth) + " group=" + std::to_string(t.group_size) +
                  " zero=" + std::to_string(zero) + " bits=";
  for (std::size_t g = 0; g < t.bits.size() && g < 12; ++g) s += std::to_string(t.bits[g]) + ",";
  return s;
}

/// Checks path p on one case against ref::packed_gemm and against the plain loop.
void check_case(int_isa p, const tensor_codes& t, std::size_t m, std::size_t pad, int act_kind,
                std::uint8_t zero, std::mt19937& rng) {
  const packed_weights w = t.pack();
  const std::size_t lda = t.depth + pad;
  const std::vector<std::uint8_t> a = activations(m, lda, act_kind, rng);
  const std::vector<std::int32_t> want = plain_gemm(t, m, a, lda, zero);
  const std::string what = std::string(int_isa_name(p)) + " " + describe(t, m, zero);
  INFO(what);
  REQUIRE(run(int_isa::reference, w, m, a, lda, zero) == want);
  CHECK(run(p, w, m, a, lda, zero) == want);
}

/// True when the CPU runs path Arch; the first call per path says whether it runs or is
/// skipped (and why).
template <class Arch>
bool path_runs() {
  static bool said = false;
  const bool runs = int_isa_supported(Arch::id);
  if (!said) {
    said = true;
    const std::string name = Arch::name();
    const std::string why =
        int_isa_compiled(Arch::id) ? "this CPU lacks it" : "not compiled for this target";
    const std::string text = runs ? "path " + name + ": runs in the tests below"
                                  : "path " + name + ": SKIPPED (" + why + ")";
    MESSAGE(text);
  }
  return runs;
}

} // namespace

TEST_CASE("packed formats: every code reads back, every bitwidth and shape") {
  std::mt19937 rng(11);
  for (int k = 1; k <= packed_max_bits; ++k)
    for (std::size_t n : {1u, 5u, 16u, 17u, 35u})
      for (std::size_t depth : {1u, 3u, 4u, 7u, 9u, 25u, 34u}) {
        const tensor_codes t =
            make_codes(n, depth, n, {static_cast<std::uint8_t>(k)}, codes_kind::random, rng);
        const packed_weights w = t.pack();
        INFO("k=", k, " n=", n, " K=", depth);
        bool same = true;
        for (std::size_t j = 0; j < n; ++j)
          for (std::size_t p = 0; p < depth; ++p) same &= w.code(j, p) == t.codes[j * depth + p];
        CHECK(same);
      }
}

TEST_CASE("packed formats: mixed groups split into bit classes, codes read back") {
  std::mt19937 rng(12);
  for (int trial = 0; trial < 40; ++trial) {
    const std::size_t n = 1 + rng() % 70, depth = 1 + rng() % 40, gs = 1 + rng() % n;
    const tensor_codes t =
        make_codes(n, depth, gs, random_bits((n + gs - 1) / gs, rng), codes_kind::random, rng);
    const packed_weights w = t.pack();
    std::size_t members = 0;
    for (int k = 1; k <= packed_max_bits; ++k) members += w.class_channels(k);
    CHECK(members == n);
    bool same = true;
    for (std::size_t j = 0; j < n; ++j)
      for (std::size_t p = 0; p < depth; ++p) same &= w.code(j, p) == t.codes[j * depth + p];
    CHECK(same);
  }
}

TEST_CASE("packed formats: the bytes are the documented layout") {
  // One full tile (16 channels), one quad (K = 4): element e = 4 c + p.
  std::vector<std::int32_t> codes(64);
  for (std::size_t e = 0; e < 64; ++e) codes[e] = static_cast<std::int32_t>(e % 3) - 1; // -1,0,1
  const float scale = 1.0f;
  SUBCASE("k = 2: byte j holds elements j, j+16, j+32, j+48 at bits 0-1, 2-3, 4-5, 6-7") {
    const std::uint8_t bits = 2;
    const packed_weights w(16, 4, 16, &bits, &scale, codes.data());
    const std::uint8_t* d = w.tile_data(2, 0);
    for (std::size_t e = 0; e < 64; ++e) {
      const unsigned u = (d[e % 16] >> (2 * (e / 16))) & 3u;
      CHECK(int(u) - 2 == codes[e]);
    }
  }
  SUBCASE("k = 1: byte j bit b is element j + 8 b, 1 meaning +1") {
    std::vector<std::int32_t> signs(64);
    for (std::size_t e = 0; e < 64; ++e) signs[e] = (e * 7) % 5 < 2 ? 1 : -1;
    const std::uint8_t bits = 1;
    const packed_weights w(16, 4, 16, &bits, &scale, signs.data());
    const std::uint8_t* d = w.tile_data(1, 0);
    for (std::size_t e = 0; e < 64; ++e) CHECK(((d[e % 8] >> (e / 8)) & 1u ? 1 : -1) == signs[e]);
  }
  SUBCASE("k = 3: a 2-bit plane (16 bytes) then a 1-bit plane (8 bytes) holding bit 2") {
    std::vector<std::int32_t> c3(64);
    for (std::size_t e = 0; e < 64; ++e) c3[e] = static_cast<std::int32_t>(e % 7) - 3;
    const std::uint8_t bits = 3;
    const packed_weights w(16, 4, 16, &bits, &scale, c3.data());
    const std::uint8_t* d = w.tile_data(3, 0);
    for (std::size_t e = 0; e < 64; ++e) {
      const unsigned u =
          ((d[e % 16] >> (2 * (e / 16))) & 3u) | (((d[16 + e % 8] >> (e / 8)) & 1u) << 2);
      CHECK(int(u) - 4 == c3[e]);
    }
  }
  SUBCASE("k = 8: one signed byte per code, in dot order") {
    std::vector<std::int32_t> c8(64);
    for (std::size_t e = 0; e < 64; ++e) c8[e] = static_cast<std::int32_t>(e * 4) - 127;
    const std::uint8_t bits = 8;
    const packed_weights w(16, 4, 16, &bits, &scale, c8.data());
    const std::uint8_t* d = w.tile_data(8, 0);
    for (std::size_t e = 0; e < 64; ++e) CHECK(static_cast<std::int8_t>(d[e]) == c8[e]);
  }
  SUBCASE("a tail is a compact LSB-first stream of k-bit fields, channel-major") {
    // K = 5: one quad, then a tail of 1 input per channel (16 fields of 4 bits = 8 bytes).
    std::vector<std::int32_t> c4(16 * 5);
    for (std::size_t i = 0; i < c4.size(); ++i) c4[i] = static_cast<std::int32_t>(i % 15) - 7;
    const std::uint8_t bits = 4;
    const packed_weights w(16, 5, 16, &bits, &scale, c4.data());
    CHECK(w.full_tile_bytes(4) == 32 + 8);
    const std::uint8_t* tail = w.tile_data(4, 0) + 32;
    for (std::size_t c = 0; c < 16; ++c) {
      const unsigned u = (tail[c / 2] >> (4 * (c % 2))) & 15u;
      CHECK(int(u) - 8 == c4[c * 5 + 4]);
    }
  }
}

TEST_CASE("packed formats: resident bytes stay within 1.25x of the file's payload") {
  std::mt19937 rng(13);
  // Every uniform bitwidth on the shapes of LeNet-5 and the VGG-style net (conv as out x K).
  const std::size_t shapes[][2] = {{6, 25},   {16, 150}, {120, 256}, {84, 120}, {10, 84},
                                   {32, 9},   {32, 288}, {64, 288},  {64, 576}, {256, 3136},
                                   {10, 256}, {1, 1},    {3, 2},     {17, 5}};
  for (int k = 1; k <= packed_max_bits; ++k)
    for (const auto& s : shapes)
      for (std::size_t gs : {s[0], std::size_t(1), std::size_t(4)}) {
        if (gs > s[0]) continue;
        const std::size_t groups = (s[0] + gs - 1) / gs;
        const tensor_codes t =
            make_codes(s[0], s[1], gs, std::vector<std::uint8_t>(groups, std::uint8_t(k)),
                       codes_kind::random, rng);
        const packed_weights w = t.pack();
        INFO("k=", k, " n=", s[0], " K=", s[1], " group=", gs, " resident=", w.resident_bytes(),
             " payload=", w.payload_bytes());
        CHECK(double(w.resident_bytes()) <= 1.25 * double(w.payload_bytes()));
        if (k != 7 && !w.ragged_padded(k)) // compact: byte rounding of the ragged tile only
          CHECK(w.resident_bytes() <= w.payload_bytes() + 1);
      }
  // Mixed bitwidths, per-channel groups.
  for (int trial = 0; trial < 30; ++trial) {
    const std::size_t n = 1 + rng() % 200, depth = 1 + rng() % 600, gs = 1 + rng() % 8;
    const std::size_t groups = (n + gs - 1) / gs;
    const tensor_codes t =
        make_codes(std::max(n, gs), depth, gs, random_bits(groups, rng), codes_kind::random, rng);
    const packed_weights w = t.pack();
    INFO("n=", t.channels, " K=", depth, " resident=", w.resident_bytes(),
         " payload=", w.payload_bytes());
    CHECK(double(w.resident_bytes()) <= 1.25 * double(w.payload_bytes()));
  }
  // Ragged tiles are padded to the SIMD layout only where the budget allows.
  for (int k = 1; k <= packed_max_bits; ++k) {
    const packed_weights fc1 = make_codes(120, 256, 120, {std::uint8_t(k)}, codes_kind::random,
                                          rng)
                                   .pack(); // 7 tiles + 8 channels: +6.7%
    const packed_weights fc3 = make_codes(10, 84, 10, {std::uint8_t(k)}, codes_kind::random,
                                          rng)
                                   .pack(); // one tile of 10: +60%
    CHECK(fc1.ragged_padded(k));            // k = 7: 32773 bytes against a payload of 26885
    CHECK_FALSE(fc3.ragged_padded(k));
    CHECK(double(fc1.resident_bytes()) <= 1.25 * double(fc1.payload_bytes()));
  }
  // The exact count on one case: 32 channels x 8 inputs at 3 bits = 96 code bytes + 5.
  const tensor_codes t = make_codes(32, 8, 32, {3}, codes_kind::random, rng);
  CHECK(t.pack().resident_bytes() == 96 + 5);
  CHECK(t.pack().payload_bytes() == 96 + 5);
}

TEST_CASE("packed formats: bad input is rejected with the reason") {
  std::vector<std::int32_t> codes(8, 1);
  const float scale = 1.0f, bad_scale = 0.0f;
  const std::uint8_t nine = 9, zero_bits = 0, two = 2;
  CHECK_THROWS_WITH_AS(packed_weights(2, 4, 2, &nine, &scale, codes.data()),
                       doctest::Contains("9 bits"), std::invalid_argument);
  CHECK_THROWS_AS(packed_weights(2, 4, 2, &zero_bits, &scale, codes.data()), std::invalid_argument);
  CHECK_THROWS_WITH_AS(packed_weights(2, 4, 2, &two, &bad_scale, codes.data()),
                       doctest::Contains("scale"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(packed_weights(2, 0, 2, &two, &scale, codes.data()),
                       doctest::Contains("depth"), std::invalid_argument);
  codes[5] = 2; // 2 bits: codes -1..1
  CHECK_THROWS_WITH_AS(packed_weights(2, 4, 2, &two, &scale, codes.data()),
                       doctest::Contains("channel 1, input 1"), std::invalid_argument);
  const std::uint8_t one = 1;
  codes[5] = 0; // 1 bit: only -1 and +1
  CHECK_THROWS_AS(packed_weights(2, 4, 2, &one, &scale, codes.data()), std::invalid_argument);
}

TEST_CASE("packed_gemm: the reference equals the plain loop over the original codes") {
  std::mt19937 rng(21);
  for (int trial = 0; trial < 30; ++trial) {
    const std::size_t n = 1 + rng() % 40, depth = 1 + rng() % 70, gs = 1 + rng() % n;
    const tensor_codes t =
        make_codes(n, depth, gs, random_bits((n + gs - 1) / gs, rng), codes_kind::random, rng);
    check_case(int_isa::reference, t, 1 + rng() % 9, rng() % 3, 1, std::uint8_t(rng()), rng);
  }
}

TEST_CASE("packed paths: which paths this binary holds and this CPU runs") {
  std::string line = "packed kernels, best path: ";
  line += int_isa_name(best_int_isa());
  line += "; compiled:";
  for (int_isa p : all_int_isas)
    if (int_isa_compiled(p)) line += std::string(" ") + int_isa_name(p);
  line += "; supported:";
  for (int_isa p : all_int_isas)
    if (int_isa_supported(p)) line += std::string(" ") + int_isa_name(p);
  MESSAGE(line);
  CHECK(int_isa_supported(best_int_isa()));
  for (int_isa p : all_int_isas) {
    if (int_isa_supported(p)) continue;
    std::vector<std::int32_t> codes(4, 1);
    const std::uint8_t bits = 2;
    const float scale = 1.0f;
    const packed_weights w(1, 4, 1, &bits, &scale, codes.data());
    const std::uint8_t x[4] = {1, 2, 3, 4};
    std::int32_t y = 0;
    CHECK_THROWS_AS(packed_gemv(p, x, 0, w, output::make_pipeline(output::store_int32{&y, 1, 1})),
                    std::invalid_argument);
  }
}

TEST_CASE_TEMPLATE("packed_gemm: every bitwidth, odd shapes, exact on each path", Arch, isa::sse2,
                   isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon, isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(31);
  for (int k = 1; k <= packed_max_bits; ++k)
    for (std::size_t n : {1u, 7u, 16u, 33u, 61u})
      for (std::size_t depth : {1u, 2u, 3u, 4u, 5u, 9u, 25u, 67u})
        for (std::size_t m : {1u, 3u, 6u, 13u}) {
          for (codes_kind kind : {codes_kind::random, codes_kind::random_full}) {
            const tensor_codes t = make_codes(n, depth, n, {std::uint8_t(k)}, kind, rng);
            check_case(Arch::id, t, m, (m + depth) % 3, 1, 0, rng);
          }
        }
}

TEST_CASE_TEMPLATE("packed_gemm: mixed and ragged groups, zero points, long rows", Arch, isa::sse2,
                   isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon, isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(32);
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t n = 1 + rng() % 80, depth = 1 + rng() % 200, gs = 1 + rng() % n;
    const std::size_t m = 1 + rng() % 30;
    const std::uint8_t zero = trial % 3 == 0 ? 0 : trial % 3 == 1 ? 128 : std::uint8_t(rng());
    const tensor_codes t =
        make_codes(n, depth, gs, random_bits((n + gs - 1) / gs, rng), codes_kind::random, rng);
    check_case(Arch::id, t, m, rng() % 5, 1, zero, rng);
  }
  // Rows that cross the 64-row block, depths that fill or cross the 160-quad panel chunk.
  for (std::size_t depth : {640u, 643u, 1100u}) {
    const tensor_codes t = make_codes(37, depth, 5, random_bits(8, rng), codes_kind::random, rng);
    check_case(Arch::id, t, 70, 1, 1, 77, rng);
  }
}

TEST_CASE_TEMPLATE("packed_gemm: tile pairs (32 channels at once where the path has them): "
                   "channel counts of 2..6 tiles, rows across the 8-row kernels and the 64-row "
                   "block, tail quads, zero points, interleaved bit classes, long rows",
                   Arch, isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(35);
  // One bit class: 2 tiles (32, 31 channels: a ragged second tile), 3 (an odd last tile run
  // alone), 4 and 6; depths with and without a tail quad, one panel or (576, 1027) several.
  for (std::size_t n : {31u, 32u, 47u, 64u, 96u})
    for (std::size_t depth : {4u, 7u, 144u, 290u, 576u, 643u, 1027u})
      for (std::size_t m : {1u, 7u, 9u, 15u, 64u, 71u, 130u}) {
        if (m * n * depth > 4'000'000) continue;
        const std::uint8_t zero = std::uint8_t((m + depth) % 3 == 0 ? 0 : rng());
        const int k = 1 + int(rng() % 8);
        const tensor_codes t = make_codes(n, depth, n, {std::uint8_t(k)}, codes_kind::random, rng);
        check_case(Arch::id, t, m, (m + n) % 3, 1, zero, rng);
      }
  // Groups of 16 channels in two or three bit classes, interleaved: a class's tiles (and so a
  // pair's channels) are not consecutive channels.
  for (int trial = 0; trial < 12; ++trial) {
    const std::size_t groups = 4 + rng() % 5, n = 16 * groups - rng() % 9;
    std::vector<std::uint8_t> bits(groups);
    const std::uint8_t a = std::uint8_t(1 + rng() % 8), b = std::uint8_t(1 + rng() % 8);
    for (std::size_t g = 0; g < groups; ++g) bits[g] = (g % 3 == 1) ? b : a;
    const std::size_t depth = std::vector<std::size_t>{9, 288, 576, 700}[rng() % 4];
    const std::size_t m = 1 + rng() % 140;
    const std::uint8_t zero = trial % 2 ? 0 : std::uint8_t(rng());
    const tensor_codes t = make_codes(n, depth, 16, bits, codes_kind::random, rng);
    check_case(Arch::id, t, m, rng() % 4, 1, zero, rng);
  }
  // The extreme sums through both tiles of a pair.
  for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::lowest})
    for (int act : {0, 255}) {
      const tensor_codes t = make_codes(40, 700, 40, {8}, kind, rng);
      check_case(Arch::id, t, 19, 1, act, act == 255 ? 0 : 255, rng);
    }
}

TEST_CASE_TEMPLATE("packed_gemm: extreme codes and activations", Arch, isa::sse2, isa::avx2,
                   isa::avx_vnni, isa::avx512_vnni, isa::neon, isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(33);
  for (int k = 1; k <= packed_max_bits; ++k)
    for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::alternating,
                            codes_kind::random, codes_kind::lowest, codes_kind::random_full})
      for (int act : {0, 255, 1})
        for (std::uint8_t zero : {std::uint8_t(0), std::uint8_t(128), std::uint8_t(255)}) {
          // 8-bit codes of +-127 (and the full grid's -128) against 255: the pairs that saturate
          // a plain vpmaddubsw.
          const tensor_codes t = make_codes(19, 37, 19, {std::uint8_t(k)}, kind, rng);
          check_case(Arch::id, t, 5, 2, act, zero, rng);
        }
}

TEST_CASE_TEMPLATE("packed_gemm: the largest depth reaches +-255 * 127 * K (and the full grid's "
                   "255 * -128 * K) exactly",
                   Arch, isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(34);
  const std::size_t depth = packed_max_depth;
  for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::lowest}) {
    const tensor_codes t = make_codes(17, depth, 17, {8}, kind, rng);
    const packed_weights w = t.pack();
    for (int act : {255, 0}) {
      for (std::uint8_t zero : {std::uint8_t(0), std::uint8_t(255)}) {
        const std::vector<std::uint8_t> a = activations(2, depth, act, rng);
        const std::vector<std::int32_t> got = run(Arch::id, w, 2, a, depth, zero);
        const std::int64_t x = act - zero, c = kind == codes_kind::max   ? 127
                                               : kind == codes_kind::min ? -127
                                                                         : -128;
        INFO("act=", act, " zero=", int(zero), " code=", c);
        for (std::int32_t v : got) CHECK(v == x * c * std::int64_t(depth));
      }
    }
  }
}

TEST_CASE_TEMPLATE("packed_gemm: extreme sums over rows of several int16 groups, every bitwidth "
                   "(the AVX2 path sums 32767 / (510 * 2^(k-1)) quads' pairs in int16 lanes)",
                   Arch, isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(36);
  for (int k = 1; k <= packed_max_bits; ++k) {
    // The largest group whose pairs x0 w0 + x1 w1 (|.| <= 510 * 2^(k-1), k = 1: 510) sum
    // exactly in int16: 64, 32, 16, 8, 4, 2, 1 quads for k = 1..7 (k = 8: none, taken as 1).
    const std::size_t max_code = k == 1 ? 1 : std::size_t(1) << (k - 1);
    const std::size_t group = std::max<std::size_t>(1, 32767 / (510 * max_code));
    // One whole group, a group and one quad (a group one quad too long would overflow),
    // three groups and a tail quad of 3 inputs; 7 rows (the 4-, 2- and 1-row kernels).
    for (std::size_t depth : {4 * group, 4 * group + 4, 12 * group + 3})
      for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::lowest}) {
        const tensor_codes t = make_codes(19, depth, 19, {std::uint8_t(k)}, kind, rng);
        check_case(Arch::id, t, 7, 1, 255, 0, rng); // x = 255 against the limit codes
        check_case(Arch::id, t, 7, 2, 1, 128, rng); // random x, zero point 128
      }
  }
}

#if BITGRAD_PACKED_X86
TEST_CASE("packed_rows_pair (AVX2 tile pairs): exact against the plain sums, every bit class, "
          "segments across int16 group boundaries, tail quads, rows past the 2-row kernel, x = "
          "255 against the limit codes") {
  if (!path_runs<isa::avx2>()) return;
  std::mt19937 rng(37);
  constexpr std::size_t tile = packed_tile;
  // Segment lengths (quads) around the int16 groups of every class (64, 32, 16, 8, 4, 2, 1):
  // empty, one quad, one group +- 1, several groups and a remainder.
  const std::vector<std::vector<std::size_t>> segment_sets = {
      {1}, {2}, {3}, {7, 9}, {8, 8, 8}, {15, 0, 17}, {31, 33}, {64}, {65, 1}, {24, 24, 24}, {130}};
  for (int k = 1; k <= packed_max_bits; ++k)
    for (const std::vector<std::size_t>& nq : segment_sets)
      for (std::size_t rows : {1u, 2u, 3u, 5u, 8u, 67u})
        for (int kind = 0; kind < 4; ++kind) { // random, then x = 255 against max, min, lowest
          const std::size_t tail = (rows + nq.size() + std::size_t(k)) % 4; // 0..3 inputs
          const std::size_t segments = nq.size();
          // Segment s's quads at x + off[s]: gaps of a few quads between segments.
          std::vector<std::size_t> off(segments);
          std::size_t width = 0, quads = 0;
          for (std::size_t s = 0; s < segments; ++s) {
            off[s] = width + 4 * (s % 3);
            width = off[s] + 4 * nq[s];
            quads += nq[s];
          }
          const std::size_t tail_at = width; // the tail quad after the last segment's quads
          const std::size_t lda = width + 4 + rows % 5;
          std::vector<std::uint8_t> x(rows * lda);
          for (std::uint8_t& v : x) v = kind == 0 ? std::uint8_t(rng()) : std::uint8_t(255);
          const int lo = k == 1 ? -1 : -(1 << (k - 1)), hi = k == 1 ? 1 : (1 << (k - 1)) - 1;
          const std::size_t panel_stride = (quads + 1) * packed_quad_codes + 64;
          std::vector<std::int8_t> panel(2 * panel_stride);
          for (std::int8_t& v : panel) {
            const int r = lo + int(rng() % std::uint32_t(hi - lo + 1));
            const int code = kind == 1 ? hi : kind == 2 ? (k == 1 ? -1 : -hi) : kind == 3 ? lo : r;
            v = std::int8_t(k == 1 && code == 0 ? 1 : code);
          }
          for (bool accumulate : {false, true}) {
            std::vector<std::int32_t> c(2 * rows * tile), want(2 * rows * tile);
            for (std::size_t i = 0; i < c.size(); ++i)
              c[i] = want[i] = accumulate ? std::int32_t(rng() % 2001) - 1000 : -7;
            for (std::size_t t = 0; t < 2; ++t)
              for (std::size_t i = 0; i < rows; ++i)
                for (std::size_t ch = 0; ch < tile; ++ch) {
                  std::int64_t sum = 0;
                  std::size_t q = 0; // the panel's quad
                  for (std::size_t s = 0; s < segments; ++s)
                    for (std::size_t u = 0; u < nq[s]; ++u, ++q)
                      for (std::size_t j = 0; j < 4; ++j)
                        sum += std::int64_t(x[i * lda + off[s] + 4 * u + j]) *
                               panel[t * panel_stride + q * packed_quad_codes + ch * 4 + j];
                  for (std::size_t j = 0; j < tail; ++j)
                    sum += std::int64_t(x[i * lda + tail_at + j]) *
                           panel[t * panel_stride + q * packed_quad_codes + ch * 4 + j];
                  std::int32_t& w = want[t * rows * tile + i * tile + ch];
                  w = std::int32_t((accumulate ? w : 0) + sum);
                }
            detail::packed_rows_pair(isa::avx2{}, rows, x.data(), lda, off.data(), nq.data(),
                                     segments, tail, k, panel.data(), panel_stride, c.data(),
                                     c.data() + rows * tile, accumulate);
            INFO("k=", k, " rows=", rows, " segments=", segments, " first nq=", nq[0],
                 " tail=", tail, " kind=", kind, " accumulate=", accumulate);
            CHECK(c == want);
          }
        }
}
#endif

TEST_CASE_TEMPLATE("packed_gemv: equals the reference on one row", Arch, isa::sse2, isa::avx2,
                   isa::avx_vnni, isa::avx512_vnni, isa::neon, isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(35);
  for (int trial = 0; trial < 30; ++trial) {
    const std::size_t n = 1 + rng() % 300, depth = 1 + rng() % 700, gs = 1 + rng() % 16;
    const tensor_codes t =
        make_codes(std::max(n, gs), depth, gs, random_bits((std::max(n, gs) + gs - 1) / gs, rng),
                   codes_kind::random, rng);
    const packed_weights w = t.pack();
    const std::vector<std::uint8_t> x = activations(1, depth, 1, rng);
    const std::uint8_t zero = trial % 2 ? 0 : 128;
    std::vector<std::int32_t> want(w.channels()), got(w.channels(), -1);
    ref::packed_gemv(x.data(), zero, w, output::make_pipeline(output::store_int32{want.data(), 0}));
    packed_gemv(Arch::id, x.data(), zero, w,
                output::make_pipeline(output::store_int32{got.data(), 0}));
    CHECK(got == want);
    CHECK(want == plain_gemm(t, 1, x, depth, zero));
  }
}

TEST_CASE_TEMPLATE("packed_gemm: requantized u8 and float outputs equal the reference's", Arch,
                   isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(36);
  for (int trial = 0; trial < 30; ++trial) {
    // Uniform bits (consecutive channels: the row path) or mixed (per-element calls).
    const std::size_t n = 1 + rng() % 70, depth = 1 + rng() % 90, gs = 1 + rng() % n;
    const std::size_t groups = (n + gs - 1) / gs;
    const tensor_codes t = make_codes(n, depth, gs,
                                      trial % 2 ? random_bits(groups, rng)
                                                : std::vector<std::uint8_t>(groups, 1 + trial % 8),
                                      codes_kind::random, rng);
    const packed_weights w = t.pack();
    const std::size_t m = 1 + rng() % 20;
    const std::vector<std::uint8_t> a = activations(m, depth, 1, rng);
    // Padded with zeros as integer_plan pads them, for the padded pipelines.
    std::vector<float> scale(output::padded_length(n)), bias(output::padded_length(n));
    for (std::size_t j = 0; j < n; ++j) {
      scale[j] = std::uniform_real_distribution<float>(1e-4f, 1e-2f)(rng);
      bias[j] = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
    }
    std::vector<std::uint8_t> want(m * n), got(m * n, 7);
    std::vector<float> want_f(m * n), got_f(m * n, -1.0f);
    auto to_u8 = [&](std::uint8_t* y) {
      return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::clamp{0.0f}, output::quantize_u8{8.0f, 3},
                                   output::store<std::uint8_t>{y, n});
    };
    auto to_float = [&](float* y) {
      return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::store<float>{y, n});
    };
    ref::packed_gemm(m, a.data(), depth, 0, w, to_u8(want.data()));
    packed_gemm(Arch::id, m, a.data(), depth, 0, w, to_u8(got.data()));
    CHECK(got == want);
    ref::packed_gemm(m, a.data(), depth, 0, w, to_float(want_f.data()));
    packed_gemm(Arch::id, m, a.data(), depth, 0, w, to_float(got_f.data()));
    CHECK(got_f == want_f);
    // Padded rows (the tail of each tile's row as one partial lane batch), the same bits.
    std::fill(got.begin(), got.end(), std::uint8_t(7));
    packed_gemm(Arch::id, m, a.data(), depth, 0, w,
                output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                             output::clamp{0.0f}, output::quantize_u8{8.0f, 3},
                                             output::store<std::uint8_t>{got.data(), n}));
    CHECK(got == want);
    std::fill(got_f.begin(), got_f.end(), -1.0f);
    packed_gemm(Arch::id, m, a.data(), depth, 0, w,
                output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                             output::store<float>{got_f.data(), n}));
    CHECK(got_f == want_f);
  }
}

TEST_CASE("output stages: a row through the lane overloads equals the scalar calls") {
  std::mt19937 rng(41);
  for (std::size_t count : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 9u, 15u, 16u, 17u, 21u, 64u}) {
    std::vector<std::int32_t> acc(count);
    // j0 + count, then lane_pad more: readable for a padded row's last lane batch
    std::vector<float> scale(count + 5 + output::lane_pad), bias(count + 5 + output::lane_pad);
    for (auto& v : acc) v = std::int32_t(rng() % 200001) - 100000;
    for (auto& v : scale) v = std::uniform_real_distribution<float>(1e-5f, 1e-2f)(rng);
    for (auto& v : bias) v = std::uniform_real_distribution<float>(-5.0f, 5.0f)(rng);
    acc[0] = std::numeric_limits<std::int32_t>::max(); // a huge value saturates at 255
    const std::size_t j0 = 5, stride = 3;
    for (std::size_t col_stride : {std::size_t(1), stride}) {
      std::vector<std::uint8_t> ys((count + j0) * col_stride * 2, 0), yv(ys);
      auto u8 = [&](std::vector<std::uint8_t>& y) {
        return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                     output::clamp{0.0f, 6.0f}, output::quantize_u8{40.0f, 2},
                                     output::store<std::uint8_t>{y.data(), 0, col_stride});
      };
      for (std::size_t c = 0; c < count; ++c) u8(ys)(0, j0 + c, acc[c]);
      u8(yv).row(0, j0, acc.data(), count);
      CHECK(yv == ys);
      // Padded rows: the tail as one partial lane batch; it stores the row's channels only.
      std::vector<std::uint8_t> yp(ys.size(), 0);
      output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::clamp{0.0f, 6.0f}, output::quantize_u8{40.0f, 2},
                                   output::store<std::uint8_t>{yp.data(), 0, col_stride})
          .row(0, j0, acc.data(), count);
      CHECK(yp == ys);
      std::vector<float> fs((count + j0) * col_stride, 0.0f), fv(fs);
      auto f32 = [&](std::vector<float>& y) {
        return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                     output::store<float>{y.data(), 0, col_stride});
      };
      for (std::size_t c = 0; c < count; ++c) f32(fs)(0, j0 + c, acc[c]);
      f32(fv).row(0, j0, acc.data(), count);
      CHECK(fv == fs);
      std::vector<float> fp(fs.size(), 0.0f);
      output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::store<float>{fp.data(), 0, col_stride})
          .row(0, j0, acc.data(), count);
      CHECK(fp == fs);
    }
  }
}

TEST_CASE("output stages: store_u8_narrowed stores every lane's byte in place, every value "
          "0..255 in every lane (the compiled lane batch: 4 at SSE2, 8 at AVX2, else lanes)") {
#if BITGRAD_HAS_SIMD
  using B = simd_batch<std::int32_t>;
  for (std::size_t shift = 0; shift < 256; ++shift) { // lane l: (shift + 37 l) % 256, every value
    alignas(64) std::int32_t lanes[B::size];
    for (std::size_t l = 0; l < B::size; ++l) lanes[l] = std::int32_t((shift + 37 * l) % 256);
    std::uint8_t out[B::size + 2];
    std::memset(out, 0xA5, sizeof(out));
    output::detail::store_u8_narrowed(B::load_aligned(lanes), out + 1);
    CHECK(out[0] == 0xA5); // nothing written before or after the lanes
    CHECK(out[B::size + 1] == 0xA5);
    for (std::size_t l = 0; l < B::size; ++l) {
      INFO("lane ", l, " shift ", shift);
      CHECK(int(out[1 + l]) == lanes[l]);
    }
  }
#endif
}

TEST_CASE("output stages: quantize_u8 rounds like nearbyint, half to even") {
  std::mt19937 rng(42);
  for (int i = -600; i <= 600; ++i) {
    const float v = 0.5f * float(i); // every half and whole number in -300..300
    for (std::int32_t zp : {0, 128}) {
      float q = std::nearbyint(v) + float(zp);
      q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
      CHECK(output::quantize_u8{1.0f, zp}(v, 0, 0) == std::uint8_t(q));
    }
  }
  for (int i = 0; i < 10000; ++i) {
    const float v = std::uniform_real_distribution<float>(-1e3f, 1e3f)(rng);
    float q = std::nearbyint(v * 0.37f);
    q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
    CHECK(output::quantize_u8{0.37f}(v, 0, 0) == std::uint8_t(q));
  }
  CHECK(output::quantize_u8{1.0f}(std::numeric_limits<float>::infinity(), 0, 0) == 255);
  CHECK(output::quantize_u8{1.0f}(-std::numeric_limits<float>::infinity(), 0, 0) == 0);
  CHECK(output::quantize_u8{1.0f}(1e30f, 0, 0) == 255);
}

TEST_CASE("output stages: relu_quantize_u8 equals clamp{} then quantize_u8 on every float tried") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  // Every 65,537th bit pattern (all signs, exponents, NaNs, subnormals) and the edges: zeros,
  // infinities, half-integers, the 2^22 bound of quantize_u8 and its neighbours.
  std::vector<float> values;
  for (std::uint64_t bits = 0; bits < (std::uint64_t(1) << 32); bits += 65537) {
    float v;
    const std::uint32_t b = std::uint32_t(bits);
    std::memcpy(&v, &b, sizeof v);
    values.push_back(v);
  }
  for (float v : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), 0.5f, 1.5f, 2.5f,
                  254.5f, 255.5f, 4194304.0f, std::nextafter(4194304.0f, inf),
                  std::nextafter(4194304.0f, 0.0f), 12582912.0f, 3e38f, 1e-45f, -1e-45f})
    for (float scale : {1.0f, 0.25f, 3.0f}) values.push_back(v * scale);
  std::mt19937 rng(43);
  for (int i = 0; i < 4000; ++i)
    values.push_back(std::uniform_real_distribution<float>(-50.0f, 300.0f)(rng));
  while (values.size() % output::lane_pad) values.push_back(1.0f);
  const output::quantize_u8 quantizers[] = {{1.0f, 0},
                                            {8.0f, 3},
                                            {0.37f, 0, 0.0f, 15.0f},
                                            {7.5f, 128, 113.0f, 143.0f},
                                            {1e-30f, 255},
                                            {3e38f, 0},
                                            {1e-40f, 7},
                                            {1.0f / 6.0f, 0, 0.0f, 255.0f},
                                            // lo above the zero point, the ends
                                            {2.0f, 3, 5.0f, 200.0f},
                                            {0.5f, 10, 20.0f, 40.0f},
                                            {1.0f, 255, 255.0f, 255.0f},
                                            {0.75f, 0, 0.0f, 0.0f}};
  for (const output::quantize_u8& q : quantizers) {
    REQUIRE(output::relu_quantize_u8::fits(q));
    const output::relu_quantize_u8 fused{q};
    for (float v : values) CHECK(fused(v, 0, 0) == q(output::clamp{}(v, 0, 0), 0, 0));
#if BITGRAD_HAS_SIMD
    using F = simd_batch<float>;
    using I = simd_batch<std::int32_t>;
    alignas(64) std::int32_t lanes_fused[F::size], lanes_two[F::size], lanes_col[F::size];
    std::size_t mismatches = 0;
    for (std::size_t p = 0; p < values.size(); p += F::size) {
      const F v = F::load_unaligned(values.data() + p);
      I(fused.apply(v, 0, 0)).store_aligned(lanes_fused);
      I(q.apply(output::clamp{}.apply(v, 0, 0), 0, 0)).store_aligned(lanes_two);
      I(fused.apply_column(v, 0, 0)).store_aligned(lanes_col);
      for (std::size_t l = 0; l < F::size; ++l)
        mismatches += lanes_fused[l] != lanes_two[l] || lanes_col[l] != lanes_two[l] ||
                      lanes_two[l] != q(output::clamp{}(values[p + l], 0, 0), 0, 0);
    }
    CHECK(mismatches == 0);
#endif
  }
  // Outside the conditions the engine keeps the two stages.
  CHECK_FALSE(output::relu_quantize_u8::fits({inf, 0}));
  CHECK_FALSE(output::relu_quantize_u8::fits({0.0f, 0}));
  CHECK_FALSE(output::relu_quantize_u8::fits({-1.0f, 0}));
  CHECK_FALSE(output::relu_quantize_u8::fits({std::numeric_limits<float>::quiet_NaN(), 0}));
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, -1}));
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, 0, 0.0f, 300.0f}));
  // The lanes move the clamp before the rounding: lo, hi whole numbers in 0..255, zero point
  // <= 255.
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, 0, 0.5f, 255.0f}));
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, 0, 0.0f, 254.5f}));
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, 0, -1.0f, 255.0f}));
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, 256, 0.0f, 255.0f}));
  CHECK_FALSE(output::relu_quantize_u8::fits({1.0f, 0, 0.0f, inf}));
}

TEST_CASE("output stages: the residual adds (u8 on its grid, float) through the lane overloads "
          "equal the scalar calls, and add what the formula says") {
  std::mt19937 rng(43);
  for (std::size_t count : {1u, 3u, 4u, 7u, 16u, 21u, 64u}) {
    const std::size_t j0 = 5, rows = 3, stride = count + j0 + 2;
    std::vector<std::int32_t> acc(count);
    std::vector<float> scale(count + j0), bias(count + j0), rf(rows * stride);
    std::vector<std::uint8_t> ru(rows * stride);
    for (auto& v : acc) v = std::int32_t(rng() % 200001) - 100000;
    for (auto& v : scale) v = std::uniform_real_distribution<float>(1e-5f, 1e-2f)(rng);
    for (auto& v : bias) v = std::uniform_real_distribution<float>(-5.0f, 5.0f)(rng);
    for (auto& v : rf) v = std::uniform_real_distribution<float>(-3.0f, 3.0f)(rng);
    for (auto& v : ru) v = std::uint8_t(rng() % 256);
    const std::size_t i = 2; // row 2: the operand is read at i * stride + j
    std::vector<std::uint8_t> ys(count + j0, 0), yv(ys);
    auto u8 = [&](std::vector<std::uint8_t>& y) {
      return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::add_u8{ru.data(), stride, 0.037f, 128},
                                   output::clamp{0.0f}, output::quantize_u8{12.0f, 0},
                                   output::store<std::uint8_t>{y.data(), 0, 1});
    };
    for (std::size_t c = 0; c < count; ++c) u8(ys)(i, j0 + c, acc[c]);
    u8(yv).row(i, j0, acc.data(), count);
    CHECK(yv == ys);
    std::vector<float> fs(count + j0, 0.0f), fv(fs);
    auto f32 = [&](std::vector<float>& y) {
      return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                   output::add_f32{rf.data(), stride},
                                   output::store<float>{y.data(), 0, 1});
    };
    for (std::size_t c = 0; c < count; ++c) f32(fs)(i, j0 + c, acc[c]);
    f32(fv).row(i, j0, acc.data(), count);
    CHECK(fv == fs);
  }
  // v + s_r (q_r - z_r): 1.5 + 0.25 (140 - 128) = 4.5; 1.5 + 0.25 (120 - 128) = -0.5
  const std::uint8_t r[2] = {140, 120};
  CHECK(output::add_u8{r, 1, 0.25f, 128}(1.5f, 0, 0) == 4.5f);
  CHECK(output::add_u8{r, 1, 0.25f, 128}(1.5f, 0, 1) == -0.5f);
  const float rf[4] = {0.0f, 0.0f, 0.5f, -2.0f};
  CHECK(output::add_f32{rf, 2}(1.0f, 1, 1) == -1.0f); // rf[1 * 2 + 1]
}

TEST_CASE("output stages: rows(i0, m, j0, acc, stride, count) of the plain and the padded "
          "pipeline equal the scalar calls of every element (with a residual add)") {
  std::mt19937 rng(47);
  for (std::size_t count : {1u, 5u, 8u, 13u, 16u}) {
    for (std::size_t m : {1u, 3u, 7u}) {
      const std::size_t j0 = 3, i0 = 2, acc_stride = 16, width = output::padded_length(j0 + count);
      const std::size_t rows_all = i0 + m;
      std::vector<std::int32_t> acc(m * acc_stride);
      std::vector<float> scale(width), bias(width);
      std::vector<std::uint8_t> ru(rows_all * width);
      for (auto& v : acc) v = std::int32_t(rng() % 200001) - 100000;
      for (auto& v : scale) v = std::uniform_real_distribution<float>(1e-5f, 1e-2f)(rng);
      for (auto& v : bias) v = std::uniform_real_distribution<float>(-5.0f, 5.0f)(rng);
      for (auto& v : ru) v = std::uint8_t(rng() % 256);
      auto plain = [&](std::vector<std::uint8_t>& y) {
        return output::make_pipeline(output::scale_bias{scale.data(), bias.data()},
                                     output::add_u8{ru.data(), width, 0.037f, 128},
                                     output::clamp{0.0f}, output::quantize_u8{12.0f, 0},
                                     output::store<std::uint8_t>{y.data(), width, 1});
      };
      auto padded = [&](std::vector<std::uint8_t>& y) {
        return output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                            output::clamp{0.0f}, output::quantize_u8{12.0f, 0},
                                            output::store<std::uint8_t>{y.data(), width, 1});
      };
      std::vector<std::uint8_t> ys(rows_all * width, 7), yv(ys), ps(ys), pv(ys);
      for (std::size_t r = 0; r < m; ++r)
        for (std::size_t c = 0; c < count; ++c) {
          plain(ys)(i0 + r, j0 + c, acc[r * acc_stride + c]);
          padded(ps)(i0 + r, j0 + c, acc[r * acc_stride + c]);
        }
      plain(yv).rows(i0, m, j0, acc.data(), acc_stride, count);
      padded(pv).rows(i0, m, j0, acc.data(), acc_stride, count);
      CHECK(yv == ys);
      CHECK(pv == ps);
      CHECK(ys[0] == 7); // rows before i0 untouched
    }
  }
}

TEST_CASE("output stages: rows and rows_in_runs with prepared lanes (a float residual, a signed "
          "narrowed grid, extreme sums, two lane batches) equal the scalar calls of every "
          "element") {
  std::mt19937 rng(53);
  for (std::size_t count : {2u, 16u, 19u, 32u}) {
    const std::size_t j0 = 1, acc_stride = 40, m = 9, width = output::padded_length(j0 + count);
    std::vector<std::int32_t> acc(m * acc_stride);
    std::vector<float> scale(width), bias(width), rf(m * width);
    for (auto& v : acc) v = std::int32_t(rng() % 400001) - 200000;
    acc[0] = std::numeric_limits<std::int32_t>::max(),
    acc[1] = std::numeric_limits<std::int32_t>::min();
    for (auto& v : scale) v = std::uniform_real_distribution<float>(-1e-2f, 1e-2f)(rng);
    for (auto& v : bias) v = std::uniform_real_distribution<float>(-5.0f, 5.0f)(rng);
    for (auto& v : rf) v = std::uniform_real_distribution<float>(-3.0f, 3.0f)(rng);
    scale[j0 + 1] = 1e30f; // sums far past the grid: the clamps at +-2^22
    // Signed 5-bit grid: zero point 128, codes 113..143; no ReLU; a float residual.
    const output::quantize_u8 q{7.5f, 128, 113.0f, 143.0f};
    auto u8 = [&](std::vector<std::uint8_t>& y) {
      return output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                          output::add_f32{rf.data(), width}, q,
                                          output::store<std::uint8_t>{y.data(), width, 1});
    };
    auto f32 = [&](std::vector<float>& y) {
      return output::make_pipeline(output::scale_bias{scale.data(), nullptr},
                                   output::clamp{-1.0f, 2.5f},
                                   output::store<float>{y.data(), width, 1});
    };
    std::vector<std::uint8_t> ys(m * width, 7), yv(ys), yr(ys);
    std::vector<float> fs(m * width, 7.0f), fv(fs), fr(fs);
    for (std::size_t r = 0; r < m; ++r)
      for (std::size_t c = 0; c < count; ++c) {
        u8(ys)(r, j0 + c, acc[r * acc_stride + c]);
        f32(fs)(r, j0 + c, acc[r * acc_stride + c]);
      }
    u8(yv).rows(0, m, j0, acc.data(), acc_stride, count);
    f32(fv).rows(0, m, j0, acc.data(), acc_stride, count);
    CHECK(yv == ys);
    CHECK(fv == fs);
    // The same rows as runs: rows 0..3 from acc rows 0..3, rows 4..8 from acc rows 4..8.
    auto runs = [&](const auto& f) {
      f(std::size_t(0), std::size_t(0), std::size_t(4));
      f(std::size_t(4), std::size_t(4), m - 4);
    };
    u8(yr).rows_in_runs(runs, j0, acc.data(), acc_stride, count);
    f32(fr).rows_in_runs(runs, j0, acc.data(), acc_stride, count);
    CHECK(yr == ys);
    CHECK(fr == fs);
  }
}

TEST_CASE("output stages: requantize, clamp and store, composed") {
  const float scale[3] = {0.5f, 0.25f, 2.0f}, bias[3] = {1.0f, -3.0f, 0.0f};
  std::uint8_t y[2 * 3] = {};
  const auto out =
      output::make_pipeline(output::scale_bias{scale, bias}, output::clamp{0.0f},
                            output::quantize_u8{1.0f / 0.5f}, output::store<std::uint8_t>{y, 3, 1});
  out(0, 0, 3);   // 3 * 0.5 + 1 = 2.5 -> 5
  out(0, 1, 4);   // 4 * 0.25 - 3 = -2 -> ReLU 0 -> 0
  out(0, 2, 100); // 200 -> 400 -> 255
  out(1, 0, -1);  // -0.5 + 1 = 0.5 -> 1
  out(1, 1, 15);  // 3.75 - 3 = 0.75 -> 1.5 -> 2 (half to even)
  out(1, 2, 0);   // 0
  CHECK(y[0] == 5);
  CHECK(y[1] == 0);
  CHECK(y[2] == 255);
  CHECK(y[3] == 1);
  CHECK(y[4] == 2);
  CHECK(y[5] == 0);

  float f[2] = {};
  const auto to_float = output::make_pipeline(output::scale_bias{scale}, output::clamp{-1.0f, 1.0f},
                                              output::store<float>{f, 0, 1});
  to_float(0, 0, 3);  // 1.5 -> 1
  to_float(0, 1, -2); // -0.5
  CHECK(f[0] == 1.0f);
  CHECK(f[1] == -0.5f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(output::clamp{0.0f}(nan, 0, 0) == 0.0f);
  CHECK(output::quantize_u8{1.0f, 7}(nan, 0, 0) == 7);
  CHECK(output::quantize_u8{1.0f, 0}(2.5f, 0, 0) == 2);
  CHECK(output::quantize_u8{1.0f, 0}(-3.0f, 0, 0) == 0);
}

} // namespace test_packed_kernels

namespace test_packed_kernels {

namespace {

/// The rows [r0, r1) of im2row on u8 NHWC (depth order (a, b, c), padding z), the input of the
/// packed_gemm path the direct convolution replaces.
std::vector<std::uint8_t> im2row(const conv2d_geometry& g, const std::vector<std::uint8_t>& x,
                                 std::uint8_t z, std::size_t r0, std::size_t r1) {
  const std::size_t K = g.filter_size(), plane = g.out_plane();
  std::vector<std::uint8_t> a((r1 - r0) * K, z);
  for (std::size_t r = r0; r < r1; ++r) {
    const std::size_t n = r / plane, oh = r % plane / g.out_w(), ow = r % plane % g.out_w();
    for (std::size_t ka = 0; ka < g.kernel_h; ++ka)
      for (std::size_t kb = 0; kb < g.kernel_w; ++kb) {
        const long ih = long(oh * g.stride_h + ka * g.dilation_h) - long(g.pad_h);
        const long iw = long(ow * g.stride_w + kb * g.dilation_w) - long(g.pad_w);
        if (ih < 0 || iw < 0 || ih >= long(g.in_h) || iw >= long(g.in_w)) continue;
        for (std::size_t c = 0; c < g.in_channels; ++c)
          a[(r - r0) * K + (ka * g.kernel_w + kb) * g.in_channels + c] =
              x[((n * g.in_h + std::size_t(ih)) * g.in_w + std::size_t(iw)) * g.in_channels + c];
      }
  }
  return a;
}

conv2d_geometry conv_geometry(std::size_t c, std::size_t h, std::size_t w, std::size_t kh,
                              std::size_t kw, std::size_t s, std::size_t pad, std::size_t d) {
  conv2d_geometry g;
  g.in_channels = c, g.in_h = h, g.in_w = w, g.kernel_h = kh, g.kernel_w = kw;
  g.stride_h = s, g.stride_w = s, g.pad_h = pad, g.pad_w = pad, g.dilation_h = d, g.dilation_w = d;
  return g;
}

std::string describe(const conv2d_geometry& g, std::size_t n_out, std::size_t batch, int zero) {
  return "C=" + std::to_string(g.in_channels) + " H=" + std::to_string(g.in_h) +
         " W=" + std::to_string(g.in_w) + " k=" + std::to_string(g.kernel_h) + "x" +
         std::to_string(g.kernel_w) + " s=" + std::to_string(g.stride_h) +
         " p=" + std::to_string(g.pad_h) + " d=" + std::to_string(g.dilation_h) +
         " n_out=" + std::to_string(n_out) + " batch=" + std::to_string(batch) +
         " zero=" + std::to_string(zero);
}

/// Every path this binary holds and this CPU runs (direct_conv takes each: reference, the float
/// lines, the madd and vnni quad tiles).
std::vector<int_isa> supported_isas() {
  std::vector<int_isa> paths;
  for (int_isa p : all_int_isas)
    if (int_isa_supported(p)) paths.push_back(p);
  return paths;
}

/// direct_conv on every supported path and ref::direct_conv on rows [r0, r1) into int32 (rows x
/// n_out) and through the padded requantizing pipeline (u8), checked against im2row +
/// ref::packed_gemm.
void check_direct(const conv2d_geometry& g, const tensor_codes& t, std::size_t batch,
                  std::uint8_t z, std::size_t r0, std::size_t r1, std::mt19937& rng) {
  const std::size_t n = t.channels, m = r1 - r0;
  std::vector<std::uint8_t> x(batch * g.in_h * g.in_w * g.in_channels);
  for (auto& v : x) v = static_cast<std::uint8_t>(rng());
  std::vector<std::int8_t> codes(t.codes.size());
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::int8_t>(t.codes[i]);
  const std::string what =
      describe(g, n, batch, z) + " rows=[" + std::to_string(r0) + "," + std::to_string(r1) + ")";
  INFO(what);
  const std::vector<std::uint8_t> a = im2row(g, x, z, r0, r1);
  const std::vector<std::int32_t> want =
      run(int_isa::reference, t.pack(), m, a, g.filter_size(), z);
  std::vector<std::int32_t> got_ref(m * n, -1);
  ref::direct_conv(g, x.data(), z, codes.data(), n, r0, r1,
                   output::make_pipeline(output::store_int32{got_ref.data(), n, 1}));
  REQUIRE(got_ref == want);
  // Through scale_bias -> ReLU -> quantize_u8 (padded rows, as the engine's stage), against
  // the scalar calls of the twin.
  std::vector<float> scale(output::padded_length(n)), bias(output::padded_length(n));
  for (std::size_t j = 0; j < n; ++j) {
    scale[j] = std::uniform_real_distribution<float>(1e-4f, 1e-2f)(rng);
    bias[j] = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
  }
  auto u8 = [&](std::uint8_t* y) {
    return output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                        output::clamp{0.0f}, output::quantize_u8{8.0f, 3},
                                        output::store<std::uint8_t>{y, n});
  };
  std::vector<std::uint8_t> want_u8(m * n, 7);
  ref::direct_conv(g, x.data(), z, codes.data(), n, r0, r1, u8(want_u8.data()));
  // With a float residual add (no column form: the per-pixel rows), to float.
  std::vector<float> res(m * n);
  for (auto& v : res) v = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
  auto f32 = [&](float* y) {
    return output::make_padded_pipeline(output::scale_bias{scale.data(), bias.data()},
                                        output::add_f32{res.data(), n}, output::clamp{0.0f},
                                        output::store<float>{y, n});
  };
  std::vector<float> want_f(m * n, 7.0f);
  ref::direct_conv(g, x.data(), z, codes.data(), n, r0, r1, f32(want_f.data()));
  for (int_isa p : supported_isas()) {
    CAPTURE(std::string(int_isa_name(p)));
    std::vector<std::int32_t> got(m * n, -1);
    direct_conv(p, g, x.data(), z, codes.data(), n, r0, r1,
                output::make_pipeline(output::store_int32{got.data(), n, 1}));
    CHECK(got == want);
    std::vector<std::uint8_t> got_u8(m * n, 9);
    direct_conv(p, g, x.data(), z, codes.data(), n, r0, r1, u8(got_u8.data()));
    CHECK(got_u8 == want_u8);
    std::vector<float> got_f(m * n, 9.0f);
    direct_conv(p, g, x.data(), z, codes.data(), n, r0, r1, f32(got_f.data()));
    CHECK(got_f == want_f);
  }
  // The overload without a path: best_int_isa().
  std::vector<std::int32_t> got(m * n, -1);
  direct_conv(g, x.data(), z, codes.data(), n, r0, r1,
              output::make_pipeline(output::store_int32{got.data(), n, 1}));
  CHECK(got == want);
}

} // namespace

TEST_CASE(
    "direct_conv: exact against its twin and im2row + packed_gemm on odd shapes, every path") {
  std::mt19937 rng(61);
  std::string paths;
  for (int_isa p : supported_isas()) paths += std::string(" ") + int_isa_name(p);
  MESSAGE("direct_conv: " << simd_lanes<float> << " float lanes (" << std::string(simd_arch_name())
                          << "), paths" << paths);
  std::size_t cases = 0;
  for (std::size_t c : {1u, 2u, 3u})
    for (std::size_t k : {1u, 3u, 5u})
      for (std::size_t s : {1u, 2u})
        for (std::size_t pad : {0u, 1u, 2u}) {
          if (pad >= k && k > 1) continue;
          // Widths that are not multiples of any lane count, and one below a register.
          const std::size_t w = std::vector<std::size_t>{5, 13, 19, 37}[rng() % 4];
          const std::size_t h = k + rng() % 9;
          const std::size_t batch = rng() % 2 ? 1 : 3;
          const conv2d_geometry g = conv_geometry(c, h, w, k, k, s, pad, 1);
          const std::size_t n_out = std::vector<std::size_t>{1, 3, 6, 16, 19}[rng() % 5];
          // Mixed 1..8-bit codes, one bitwidth per channel.
          const tensor_codes t = make_codes(n_out, g.filter_size(), 1, random_bits(n_out, rng),
                                            codes_kind::random, rng);
          const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
          const std::size_t rows = batch * g.out_plane();
          check_direct(g, t, batch, z, 0, rows, rng);
          // A band of output rows within an image, and a range starting and ending mid-row.
          const std::size_t oh0 = rng() % g.out_h(), oh1 = oh0 + 1 + rng() % (g.out_h() - oh0);
          check_direct(g, t, batch, z, oh0 * g.out_w(), oh1 * g.out_w(), rng);
          const std::size_t r0 = rng() % rows, r1 = r0 + 1 + rng() % (rows - r0);
          check_direct(g, t, batch, z, r0, r1, rng);
          ++cases;
        }
  MESSAGE("direct_conv: " << cases << " shapes, 3 row ranges each");
}

TEST_CASE("direct_conv: channel lanes (the float lines' channel tiles, at AVX2 width on an AVX2 "
          "path of a plain -O2 build) with 5 to 33 channels and odd widths, every path") {
  // Channels that fill one, two or three registers of 4 (SSE2) or 8 (AVX2) with a ragged last
  // one, 2 or 3 input channels (no quad path), widths with ragged 4-pixel tiles.
  std::mt19937 rng(67);
  std::size_t cases = 0;
  for (std::size_t n_out : {5u, 6u, 7u, 11u, 16u, 17u, 33u})
    for (std::size_t c : {2u, 3u})
      for (std::size_t w : {7u, 13u, 18u}) {
        const std::size_t k = rng() % 2 ? 3 : 5, s = rng() % 2 ? 1 : 2;
        const conv2d_geometry g = conv_geometry(c, k + 1 + rng() % 5, w, k, k, s, 1, 1);
        const tensor_codes t =
            make_codes(n_out, g.filter_size(), 1, random_bits(n_out, rng), codes_kind::random, rng);
        const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
        const std::size_t batch = 2, rows = batch * g.out_plane();
        check_direct(g, t, batch, z, 0, rows, rng);
        const std::size_t r0 = rng() % rows, r1 = r0 + 1 + rng() % (rows - r0);
        check_direct(g, t, batch, z, r0, r1, rng);
        ++cases;
      }
  MESSAGE("direct_conv, channel lanes: " << cases << " shapes");
}

TEST_CASE("direct_conv: one input channel, stride 1 (the quad paths: vnni, madd; large codes the "
          "float lines), every path: kernel widths 1..9, every bitwidth 1..8, zero points "
          "0..255, the extreme sums") {
  std::mt19937 rng(65);
  std::size_t cases = 0;
  for (int bits = 1; bits <= packed_max_bits; ++bits)
    for (std::size_t kw : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 9u}) {
      const std::size_t kh = 1 + rng() % 5, pad = rng() % std::min<std::size_t>(kw, 4);
      conv2d_geometry g = conv_geometry(1, kh + rng() % 7, kw + rng() % 35, kh, kw, 1, 0, 1);
      g.pad_w = pad, g.pad_h = rng() % kh;
      if (rng() % 2) g.stride_h = 2; // the rows' stride: the path takes any
      const std::size_t n_out = std::vector<std::size_t>{1, 5, 6, 7, 11}[rng() % 5];
      const tensor_codes t =
          make_codes(n_out, g.filter_size(), n_out, {std::uint8_t(bits)}, codes_kind::random, rng);
      const std::uint8_t z = std::vector<std::uint8_t>{0, 1, 128, 255, 37}[rng() % 5];
      const std::size_t batch = 1 + rng() % 2, rows = batch * g.out_plane();
      check_direct(g, t, batch, z, 0, rows, rng);
      const std::size_t r0 = rng() % rows, r1 = r0 + 1 + rng() % (rows - r0);
      check_direct(g, t, batch, z, r0, r1, rng);
      ++cases;
    }
  MESSAGE("direct_conv, one channel: " << cases << " shapes");
  // K = 16 * 32 = 512 in one channel: x = 255, z = 0 and every code +-127 sum to +-255 * 127 *
  // 512; x = 0, z = 255 the same with the sign flipped (the z sum w term alone).
  const conv2d_geometry g = conv_geometry(1, 20, 40, 16, 32, 1, 0, 1);
  REQUIRE(g.filter_size() == direct_conv_max_depth);
  for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::lowest})
    for (std::uint8_t xv : {std::uint8_t(255), std::uint8_t(0)}) {
      const tensor_codes t = make_codes(6, g.filter_size(), 6, {8}, kind, rng);
      std::vector<std::int8_t> codes(t.codes.size());
      for (std::size_t i = 0; i < codes.size(); ++i)
        codes[i] = static_cast<std::int8_t>(t.codes[i]);
      const std::vector<std::uint8_t> x(g.in_h * g.in_w, xv);
      const std::uint8_t z = xv == 255 ? 0 : 255;
      const std::int64_t c = kind == codes_kind::max ? 127 : kind == codes_kind::min ? -127 : -128;
      const std::int64_t full =
          255 * c * std::int64_t(direct_conv_max_depth) * (xv == 255 ? 1 : -1);
      for (int_isa p : supported_isas()) {
        CAPTURE(std::string(int_isa_name(p)));
        std::vector<std::int32_t> got(g.out_plane() * 6, 0);
        direct_conv(p, g, x.data(), z, codes.data(), 6, 0, g.out_plane(),
                    output::make_pipeline(output::store_int32{got.data(), 6, 1}));
        bool all = true;
        for (std::int32_t v : got) all = all && v == full;
        CHECK(all);
      }
      // A path this binary or CPU lacks is refused, as packed_gemm refuses it.
      for (int_isa p : all_int_isas)
        if (!int_isa_supported(p)) {
          CAPTURE(std::string(int_isa_name(p)));
          std::vector<std::int32_t> got(g.out_plane() * 6, 0);
          CHECK_THROWS_AS(direct_conv(p, g, x.data(), z, codes.data(), 6, 0, g.out_plane(),
                                      output::make_pipeline(output::store_int32{got.data(), 6, 1})),
                          std::invalid_argument);
        }
    }
}

TEST_CASE("direct_conv: the AVX2 path's int16 groups: pair sums at the bound and one above, "
          "every group size, 6-channel tiles of 16 and 8 pixels") {
  // The AVX2 path (direct_conv.hpp, "madd") sums the byte pairs x0 w0 + x1 w1 in int16 over a
  // group of quads: exact while 255 times the sum of |w| over a group's pair lane is <= 32767,
  // i.e. <= 128. Channels built to hit that bound exactly in one group of all quads, to pass it
  // by one (two groups then), pairs of |w| = 64 (groups of one quad), a pair of |w| 65 and -128
  // (no group: the float lines), each with x = 255, z = 0 (the largest sums, both signs) and
  // with random x, z; against the twin ref::direct_conv in int32.
  std::mt19937 rng(66);
  // codes for n channels of a kh x kw kernel, every quad's pair lane h of channel j with the
  // |w| values filled greedily up to `lane_sum`, one sign per channel (so that x = 255 sums reach
  // 255 lane_sum in a lane), alternating between channels, 0 past kw.
  auto make = [&](std::size_t n, std::size_t kh, std::size_t kw, int lane_sum, int largest) {
    std::vector<std::int8_t> codes(n * kh * kw, 0);
    for (std::size_t j = 0; j < n; ++j)
      for (int h = 0; h < 2; ++h) {
        int left = lane_sum;
        for (std::size_t a = 0; a < kh; ++a)
          for (std::size_t b = 0; b < kw; ++b) {
            if ((b % 4) / 2 != std::size_t(h)) continue; // taps 4u + 2h, 4u + 2h + 1
            const int v = std::min(left, largest);
            left -= v;
            const int sign = j % 2 ? -1 : 1; // 128 wraps to -128
            codes[(j * kh + a) * kw + b] = static_cast<std::int8_t>(sign * v);
          }
      }
    return codes;
  };
  struct shape {
    std::size_t kh, kw, w, n_out;
    int lane_sum, largest;
    std::size_t groups; // madd_group_quads' expected group size (0: none)
  };
  // (madd_group_quads' expected sizes recomputed by hand: a lane's |w| per quad, greedy groups.)
  const std::vector<shape> shapes = {
      {5, 5, 28, 6, 128, 9, 10},   // LeNet's conv1 shape, lane 0 (taps 0, 1, 4) at the bound
      {5, 5, 28, 6, 120, 8, 10},   // LeNet's 4-bit worst case: 15 codes of -8 / 8 in lane 0
      {5, 5, 19, 7, 129, 9, 9},    // one above: quads' lane sums 18 9 ... 18 3, groups of 9, 1
      {3, 8, 37, 6, 128, 64, 6},   // 6 quads, the sum in the first quad: one group
      {4, 4, 13, 11, 256, 64, 1},  // pairs of 64 in two quads: groups of one quad
      {2, 9, 22, 6, 1000, 64, 1},  // every pair of 64 (3 quads a row, the last ragged)
      {3, 5, 24, 6, 130, 65, 0},   // a pair of 65: no group, the float lines
      {1, 7, 17, 5, 1000, 128, 0}, // codes of -128 (128 wraps to -128): the float lines
      {6, 1, 9, 6, 128, 127, 6},   // kw = 1: one code per quad, 127 then 1: one group
  };
  std::size_t cases = 0;
  for (const shape& sh : shapes)
    for (int fill = 0; fill < 2; ++fill) {
      conv2d_geometry g = conv_geometry(1, sh.kh + 3 + rng() % 4, sh.w, sh.kh, sh.kw, 1, 0, 1);
      g.pad_w = std::min<std::size_t>(sh.kw - 1, 2), g.pad_h = sh.kh / 2;
      std::vector<std::int8_t> codes = make(sh.n_out, sh.kh, sh.kw, sh.lane_sum, sh.largest);
      const std::size_t batch = 2, rows = batch * g.out_plane();
      std::vector<std::uint8_t> x(batch * g.in_h * g.in_w, 255);
      std::uint8_t z = 0;
      if (fill == 1) {
        for (auto& v : x) v = static_cast<std::uint8_t>(rng());
        z = static_cast<std::uint8_t>(rng());
      }
      INFO("kh=", sh.kh, " kw=", sh.kw, " W=", sh.w, " n_out=", sh.n_out, " lane_sum=", sh.lane_sum,
           " largest=", sh.largest, " fill=", fill);
      std::vector<std::int32_t> want(rows * sh.n_out, -1);
      ref::direct_conv(g, x.data(), z, codes.data(), sh.n_out, 0, rows,
                       output::make_pipeline(output::store_int32{want.data(), sh.n_out, 1}));
      // A band of rows starting mid-row.
      const std::size_t r0 = g.out_w() / 2 + 1, r1 = rows - 3;
      std::vector<std::int32_t> want_b((r1 - r0) * sh.n_out, -1);
      ref::direct_conv(g, x.data(), z, codes.data(), sh.n_out, r0, r1,
                       output::make_pipeline(output::store_int32{want_b.data(), sh.n_out, 1}));
      for (int_isa p : supported_isas()) {
        CAPTURE(std::string(int_isa_name(p)));
        std::vector<std::int32_t> got(rows * sh.n_out, -2), got_b(want_b.size(), -2);
        direct_conv(p, g, x.data(), z, codes.data(), sh.n_out, 0, rows,
                    output::make_pipeline(output::store_int32{got.data(), sh.n_out, 1}));
        CHECK(got == want);
        direct_conv(p, g, x.data(), z, codes.data(), sh.n_out, r0, r1,
                    output::make_pipeline(output::store_int32{got_b.data(), sh.n_out, 1}));
        CHECK(got_b == want_b);
      }
      // The group size the path takes, from the weight quads as direct_conv builds them.
      const std::size_t row_quads = (sh.kw + 3) / 4, Kq = sh.kh * row_quads;
      std::vector<std::int32_t> wq(sh.n_out * Kq, 0);
      for (std::size_t j = 0; j < sh.n_out; ++j)
        for (std::size_t a = 0; a < sh.kh; ++a)
          for (std::size_t u = 0; u < row_quads; ++u) {
            std::uint8_t four[4] = {};
            for (std::size_t e = 0; e < 4 && 4 * u + e < sh.kw; ++e)
              four[e] = static_cast<std::uint8_t>(codes[(j * sh.kh + a) * sh.kw + 4 * u + e]);
            std::memcpy(&wq[j * Kq + a * row_quads + u], four, 4);
          }
      CHECK(detail::madd_group_quads(wq.data(), sh.n_out, Kq) == sh.groups);
      ++cases;
    }
  MESSAGE("direct_conv, int16 groups: " << cases << " cases");
}

TEST_CASE("packed_unpack_fields: equals the streaming reader, every bitwidth, odd offsets") {
  // The twin is packed_field_reader, one field per next(). The stream is exactly the bytes
  // that hold the fields, so a read past them would be out of the vector (the asan preset).
  std::mt19937 rng(64);
  std::size_t cases = 0;
  for (int k = 1; k <= packed_max_bits; ++k)
    for (std::size_t first : {0u, 1u, 2u, 3u, 5u, 8u, 13u})
      for (std::size_t count : {0u, 1u, 3u, 4u, 7u, 24u, 37u, 40u}) {
        const std::size_t bytes = ((first + count) * std::size_t(k) + 7) / 8;
        std::vector<std::uint8_t> stream(std::max<std::size_t>(bytes, 1));
        for (auto& b : stream) b = static_cast<std::uint8_t>(rng());
        std::vector<std::int8_t> got8(count + 1, 99);
        std::vector<std::int16_t> got16(count + 1, 99);
        detail::packed_unpack_fields(stream.data(), first, count, k, got8.data());
        detail::packed_unpack_fields(stream.data(), first, count, k, got16.data());
        detail::packed_field_reader in(stream.data(), first, k);
        bool same = true;
        for (std::size_t i = 0; i < count; ++i) {
          const std::int32_t want = in.next();
          same = same && got8[i] == want && got16[i] == want;
        }
        INFO("k=", k, " first=", first, " count=", count);
        CHECK(same);
        CHECK(got8[count] == 99); // nothing written past the run
        CHECK(got16[count] == 99);
        ++cases;
      }
  MESSAGE("packed_unpack_fields: " << cases << " runs");
}

TEST_CASE("direct_conv: packed_codes reads back every code, mixed and ragged classes") {
  std::mt19937 rng(63);
  for (std::size_t n : {1u, 6u, 16u, 19u, 40u})
    for (std::size_t depth : {1u, 9u, 25u, 27u, 36u}) {
      const std::size_t gs = 1 + rng() % n;
      const tensor_codes t =
          make_codes(n, depth, gs, random_bits((n + gs - 1) / gs, rng), codes_kind::random, rng);
      std::vector<std::int8_t> codes(n * depth, 99);
      packed_codes(t.pack(), codes.data());
      bool same = true;
      for (std::size_t i = 0; i < codes.size(); ++i) same = same && codes[i] == t.codes[i];
      CHECK(same);
    }
}

TEST_CASE("direct_conv: rectangular kernels, dilation, 4 channels, the largest depth") {
  std::mt19937 rng(62);
  // 3 -> 5, k(3, 2) s2 p1 d2; 4 channels 3x3 s1 p1 (the largest C of the rule).
  for (const conv2d_geometry& g0 :
       {conv_geometry(3, 13, 11, 3, 3, 2, 1, 2), conv_geometry(4, 9, 23, 3, 3, 1, 1, 1)}) {
    conv2d_geometry g = g0;
    if (g.in_channels == 3) g.kernel_w = 2; // kernel 3 x 2
    CHECK(direct_conv_fits(g));
    const tensor_codes t =
        make_codes(7, g.filter_size(), 2, random_bits(4, rng), codes_kind::random, rng);
    check_direct(g, t, 3, 128, 0, 3 * g.out_plane(), rng);
  }
  // K = 2 * 16 * 16 = 512: every tap 255 * 127 (x = 255, z = 0) sums to 255 * 127 * 512, exact.
  const conv2d_geometry g = conv_geometry(2, 16, 21, 16, 16, 1, 0, 1);
  REQUIRE(g.filter_size() == direct_conv_max_depth);
  CHECK(direct_conv_fits(g));
  CHECK_FALSE(direct_conv_fits(conv_geometry(5, 8, 8, 1, 1, 1, 0, 1)));
  CHECK_FALSE(direct_conv_fits(conv_geometry(3, 16, 16, 14, 14, 1, 0, 1))); // K = 588
  for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::alternating}) {
    const tensor_codes t = make_codes(3, g.filter_size(), 3, {8}, kind, rng);
    std::vector<std::int8_t> codes(t.codes.size());
    for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::int8_t>(t.codes[i]);
    const std::vector<std::uint8_t> x(g.in_h * g.in_w * g.in_channels, 255);
    const std::int64_t full = 255 * 127 * std::int64_t(direct_conv_max_depth);
    for (int_isa p : supported_isas()) {
      CAPTURE(std::string(int_isa_name(p)));
      std::vector<std::int32_t> got(g.out_plane() * 3, 0);
      direct_conv(p, g, x.data(), 0, codes.data(), 3, 0, g.out_plane(),
                  output::make_pipeline(output::store_int32{got.data(), 3, 1}));
      for (std::size_t i = 0; i < got.size(); ++i) {
        const std::int64_t want = kind == codes_kind::max   ? full
                                  : kind == codes_kind::min ? -full
                                                            : std::int64_t(0);
        CHECK(got[i] == want);
      }
    }
    check_direct(g, t, 1, 0, 0, g.out_plane(), rng);
  }
}

namespace {

/// packed_conv_flat on path p (both row layouts) and ref::packed_conv on rows [r0, r1) of conv
/// g, into int32 and through the padded requantizing stage with a float residual add (its rows
/// overload), checked against im2row + the plain loop over the codes. When kw C % 4 != 0 the
/// weights are packed with padded kernel rows (ref/packed_conv.hpp), the codes t's.
void check_flat(int_isa p, const conv2d_geometry& g, const tensor_codes& t, std::size_t batch,
                std::uint8_t z, std::size_t r0, std::size_t r1, std::mt19937& rng) {
  const std::size_t n = t.channels, m = r1 - r0;
  const packed_weights w =
      packed_conv_flat_fits(g)
          ? t.pack()
          : packed_weights(n, packed_padded_depth(g), t.group_size, t.bits.data(), t.scales.data(),
                           pad_kernel_rows(g, n, t.codes.data()).data());
  std::vector<std::uint8_t> x(batch * g.in_h * g.in_w * g.in_channels);
  for (auto& v : x) v = static_cast<std::uint8_t>(rng());
  const std::string what = std::string(int_isa_name(p)) + " " + describe(g, n, batch, z) +
                           " rows=[" + std::to_string(r0) + "," + std::to_string(r1) + ")";
  INFO(what);
  const std::vector<std::int32_t> want =
      plain_gemm(t, m, im2row(g, x, z, r0, r1), g.filter_size(), z);
  std::vector<std::int32_t> got_ref(m * n, -1);
  ref::packed_conv(g, x.data(), z, w, r0, r1,
                   output::make_pipeline(output::store_int32{got_ref.data(), n, 1}));
  REQUIRE(got_ref == want);
  for (flat_layout mode : {flat_layout::band_pixels, flat_layout::output_pixels}) {
    CAPTURE(int(mode));
    std::vector<std::int32_t> got(m * n, -1);
    packed_conv_flat(p, g, x.data(), z, w, r0, r1,
                     output::make_pipeline(output::store_int32{got.data(), n, 1}), mode);
    CHECK(got == want);
  }
  std::vector<float> scale(output::padded_length(n)), bias(output::padded_length(n));
  for (std::size_t j = 0; j < n; ++j) {
    scale[j] = std::uniform_real_distribution<float>(1e-4f, 1e-2f)(rng);
    bias[j] = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
  }
  std::vector<float> res(m * n);
  for (auto& v : res) v = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
  auto stage = [&](std::uint8_t* y) {
    return output::make_padded_pipeline(
        output::scale_bias{scale.data(), bias.data()}, output::add_f32{res.data(), n},
        output::clamp{0.0f}, output::quantize_u8{8.0f, 3}, output::store<std::uint8_t>{y, n});
  };
  std::vector<std::uint8_t> want_u8(m * n, 7);
  ref::packed_conv(g, x.data(), z, w, r0, r1, stage(want_u8.data()));
  for (flat_layout mode : {flat_layout::band_pixels, flat_layout::output_pixels}) {
    CAPTURE(int(mode));
    std::vector<std::uint8_t> got_u8(m * n, 9);
    packed_conv_flat(p, g, x.data(), z, w, r0, r1, stage(got_u8.data()), mode);
    CHECK(got_u8 == want_u8);
  }
}

/// Rows of conv g: all, a band of whole output rows, and a range from and to mid-row.
template <class F>
void flat_ranges(const conv2d_geometry& g, std::size_t batch, std::mt19937& rng, const F& f) {
  const std::size_t rows = batch * g.out_plane();
  f(std::size_t(0), rows);
  const std::size_t oh0 = rng() % g.out_h(), oh1 = oh0 + 1 + rng() % (g.out_h() - oh0);
  f(oh0 * g.out_w(), oh1 * g.out_w());
  const std::size_t r0 = rng() % rows;
  f(r0, r0 + 1 + rng() % (rows - r0));
}

} // namespace

TEST_CASE_TEMPLATE("packed_conv_flat: exact against ref::packed_conv, every bitwidth 1..8, odd "
                   "shapes, row ranges, zero points, each path",
                   Arch, isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(71);
  // Every bitwidth on 3x3 / pad 1 (the nets' layers) at odd widths and channel counts.
  for (int k = 1; k <= packed_max_bits; ++k)
    for (std::size_t c : {4u, 12u, 20u}) {
      const std::size_t w = std::vector<std::size_t>{5, 7, 13, 30}[rng() % 4];
      const conv2d_geometry g = conv_geometry(c, 3 + rng() % 7, w, 3, 3, 1, 1, 1);
      const std::size_t n_out = std::vector<std::size_t>{1, 7, 16, 19, 33}[rng() % 5];
      const tensor_codes t =
          make_codes(n_out, g.filter_size(), n_out, {std::uint8_t(k)}, codes_kind::random, rng);
      const std::size_t batch = rng() % 2 ? 1 : 3;
      const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
      flat_ranges(g, batch, rng, [&](std::size_t r0, std::size_t r1) {
        check_flat(Arch::id, g, t, batch, z, r0, r1, rng);
      });
    }
  // Other kernels and paddings (1x1, 5x5 pad 2 and 0, 3x3 pad 0 and 2, 3 x 4 with 3 channels:
  // kw C = 12, 17 x 1: more kernel rows than the AVX-512 kernel's 16 segments per call), mixed
  // bits per channel; 1 x 1 pad 1 and 2 x 2 pad 2 (pw >= kw: an output row wider than W + pw,
  // the band rows padded on both sides, flat_band_width) and 2 x 2 pad 1 (OW = W + pw).
  struct shape {
    std::size_t c, kh, kw, pad;
  };
  for (const shape s : {shape{8, 1, 1, 0}, shape{4, 5, 5, 2}, shape{4, 5, 5, 0}, shape{16, 3, 3, 0},
                        shape{8, 3, 3, 2}, shape{3, 3, 4, 1}, shape{4, 17, 1, 0}, shape{8, 1, 1, 1},
                        shape{4, 2, 2, 2}, shape{4, 2, 2, 1}}) {
    conv2d_geometry g =
        conv_geometry(s.c, s.kh + rng() % 6, s.kw + 2 + rng() % 9, s.kh, s.kw, 1, s.pad, 1);
    const std::size_t n_out = std::vector<std::size_t>{3, 16, 21}[rng() % 3];
    const tensor_codes t =
        make_codes(n_out, g.filter_size(), 1, random_bits(n_out, rng), codes_kind::random, rng);
    const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
    flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
      check_flat(Arch::id, g, t, 2, z, r0, r1, rng);
    });
  }
  // Tile pairs (32 output channels at once on the paths that have them): 2 to 4 tiles, a
  // ragged or odd last tile, at the nets' channel counts (16, 32, 64 in, 3x3 pad 1), and a
  // 17 x 1 kernel (more kernel rows than a pair call's 16 segments).
  for (std::size_t n_out : {32u, 45u, 64u}) {
    const std::size_t c = std::vector<std::size_t>{16, 32, 64}[rng() % 3];
    const conv2d_geometry g = conv_geometry(c, 3 + rng() % 6, 5 + rng() % 10, 3, 3, 1, 1, 1);
    const tensor_codes t = make_codes(n_out, g.filter_size(), 16,
                                      random_bits((n_out + 15) / 16, rng), codes_kind::random, rng);
    const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
    flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
      check_flat(Arch::id, g, t, 2, z, r0, r1, rng);
    });
  }
  {
    const conv2d_geometry g = conv_geometry(4, 19, 6, 17, 1, 1, 0, 1);
    const tensor_codes t = make_codes(40, g.filter_size(), 40, {5}, codes_kind::random, rng);
    flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
      check_flat(Arch::id, g, t, 2, 37, r0, r1, rng);
    });
  }
  // K = 9 * 96 = 864 > 640 (the long-row nest: panels of 160 quads, a chunk boundary inside
  // kernel row 2) and the extreme sums: x = 255, z = 0, codes at the limit.
  for (codes_kind kind : {codes_kind::random, codes_kind::max, codes_kind::min, codes_kind::lowest,
                          codes_kind::random_full}) {
    const conv2d_geometry g = conv_geometry(96, 9, 11, 3, 3, 1, 1, 1);
    const std::size_t n_out = kind == codes_kind::random ? 40 : 17; // 40: pairs over chunks
    const tensor_codes t = make_codes(n_out, g.filter_size(), n_out, {8}, kind, rng);
    flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
      const bool random = kind == codes_kind::random || kind == codes_kind::random_full;
      check_flat(Arch::id, g, t, 2, random ? 200 : 0, r0, r1, rng);
    });
  }
}

TEST_CASE_TEMPLATE("packed_conv_flat: one tile (at most 16 output channels; two quads per "
                   "broadcast on AVX-512 VNNI): even and odd quads per kernel row, rows across "
                   "the 4- and 8-row kernels, zero points, extreme sums, each path",
                   Arch, isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(73);
  // ResNet-20's stage 1 (16 -> 16, 3 x 3, pad 1: 12 quads per kernel row), and kernel rows of
  // 1, 3, 5 and 9 quads (an odd last quad paired with zero codes); ragged tiles of 1, 9, 15.
  struct shape {
    std::size_t c, kh, kw, pad;
  };
  for (const shape s :
       {shape{16, 3, 3, 1}, shape{4, 3, 3, 1}, shape{4, 1, 1, 0}, shape{20, 3, 3, 1},
        shape{12, 3, 3, 0}, shape{4, 5, 5, 2}, shape{16, 1, 3, 0}})
    for (std::size_t n_out : {16u, 15u, 9u, 1u}) {
      const conv2d_geometry g =
          conv_geometry(s.c, s.kh + rng() % 8, s.kw + rng() % 12, s.kh, s.kw, 1, s.pad, 1);
      const tensor_codes t = make_codes(n_out, g.filter_size(), n_out,
                                        {std::uint8_t(1 + rng() % 8)}, codes_kind::random, rng);
      const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
      flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
        check_flat(Arch::id, g, t, 2, z, r0, r1, rng);
      });
    }
  // The extreme sums (x = 255 with z = 0, codes at the limit), 16 channels, 9 and 12 quads per
  // kernel row.
  for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::lowest})
    for (std::size_t c : {12u, 16u}) {
      const conv2d_geometry g = conv_geometry(c, 9, 11, 3, 3, 1, 1, 1);
      const tensor_codes t = make_codes(16, g.filter_size(), 16, {8}, kind, rng);
      flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
        check_flat(Arch::id, g, t, 2, 0, r0, r1, rng);
      });
    }
}

TEST_CASE_TEMPLATE("packed_conv_flat: padded kernel rows (kw C % 4 != 0) exact against the "
                   "plain loop, bitwidths 2..8, odd shapes, row ranges, zero points, each path",
                   Arch, isa::sse2, isa::avx2, isa::avx_vnni, isa::avx512_vnni, isa::neon,
                   isa::neon_dot) {
  if (!path_runs<Arch>()) return;
  std::mt19937 rng(73);
  // LeNet-5's conv2 (6 channels, 5 x 5, 12 x 12 -> 8 x 8: kw C = 30 -> 32), then kernel rows
  // of 1 to 3 bytes of padding: kw C = 5, 6, 7, 9, 10, 15, 18, 21, 27, 35.
  struct shape {
    std::size_t c, kh, kw, pad;
  };
  for (const shape s : {shape{6, 5, 5, 0}, shape{5, 1, 1, 0}, shape{6, 1, 1, 0}, shape{7, 1, 1, 0},
                        shape{3, 3, 3, 1}, shape{5, 2, 2, 1}, shape{5, 3, 3, 2}, shape{6, 3, 3, 1},
                        shape{7, 3, 3, 0}, shape{9, 3, 3, 1}, shape{7, 5, 5, 2}, shape{5, 4, 7, 3},
                        shape{3, 17, 1, 0}}) {
    const bool lenet = s.c == 6 && s.kh == 5;
    conv2d_geometry g = lenet ? conv_geometry(6, 12, 12, 5, 5, 1, 0, 1)
                              : conv_geometry(s.c, s.kh + rng() % 6, s.kw + 2 + rng() % 11, s.kh,
                                              s.kw, 1, s.pad, 1);
    REQUIRE_FALSE(packed_conv_flat_fits(g));
    REQUIRE(packed_conv_flat_padded_fits(g));
    const std::size_t n_out = lenet ? 16 : std::vector<std::size_t>{1, 7, 16, 19, 33}[rng() % 5];
    const std::size_t gs = rng() % 2 ? 1 : 4;
    std::vector<std::uint8_t> bits((n_out + gs - 1) / gs);
    for (auto& b : bits) b = static_cast<std::uint8_t>(2 + rng() % 7); // zero codes: k >= 2
    const tensor_codes t = make_codes(n_out, g.filter_size(), gs, bits, codes_kind::random, rng);
    const std::size_t batch = rng() % 2 ? 1 : 3;
    const std::uint8_t z = std::vector<std::uint8_t>{0, 128, 255, 37}[rng() % 4];
    flat_ranges(g, batch, rng, [&](std::size_t r0, std::size_t r1) {
      check_flat(Arch::id, g, t, batch, z, r0, r1, rng);
    });
  }
  // Codes at the limits (8 bits) on LeNet-5's conv2, z = 0.
  for (codes_kind kind : {codes_kind::max, codes_kind::min, codes_kind::lowest}) {
    const conv2d_geometry g = conv_geometry(6, 12, 12, 5, 5, 1, 0, 1);
    const tensor_codes t = make_codes(16, g.filter_size(), 16, {8}, kind, rng);
    flat_ranges(g, 2, rng, [&](std::size_t r0, std::size_t r1) {
      check_flat(Arch::id, g, t, 2, 0, r0, r1, rng);
    });
  }
}

TEST_CASE("packed_conv_flat: which convolutions fit; others are refused") {
  CHECK(packed_conv_flat_fits(conv_geometry(16, 28, 28, 3, 3, 1, 1, 1)));
  CHECK(packed_conv_flat_fits(conv_geometry(4, 7, 7, 1, 1, 1, 0, 1)));
  CHECK_FALSE(packed_conv_flat_fits(conv_geometry(16, 28, 28, 3, 3, 2, 1, 1))); // stride 2
  CHECK_FALSE(packed_conv_flat_fits(conv_geometry(16, 28, 28, 3, 3, 1, 2, 2))); // dilation 2
  CHECK_FALSE(packed_conv_flat_fits(conv_geometry(6, 12, 12, 3, 3, 1, 1, 1)));  // kw C = 18
  CHECK(packed_conv_flat_padded_fits(conv_geometry(6, 12, 12, 3, 3, 1, 1, 1))); // padded: 20
  CHECK_FALSE(packed_conv_flat_padded_fits(conv_geometry(6, 12, 12, 3, 3, 2, 1, 1)));
  CHECK_FALSE(packed_conv_flat_padded_fits(conv_geometry(6, 12, 12, 3, 3, 1, 2, 2)));
  // The band rows' width: W + pw (the padding shared by neighbouring rows) while pw < kw.
  CHECK(flat_band_width(conv_geometry(16, 14, 14, 3, 3, 1, 1, 1)) == 15);
  CHECK(flat_band_width(conv_geometry(16, 14, 14, 3, 3, 1, 2, 1)) == 16);
  CHECK(flat_band_width(conv_geometry(16, 14, 14, 3, 3, 1, 0, 1)) == 14);
  CHECK(flat_band_width(conv_geometry(8, 14, 14, 1, 1, 1, 1, 1)) == 16);
  CHECK(flat_band_width(conv_geometry(4, 14, 14, 2, 2, 1, 2, 1)) == 18);
  const conv2d_geometry g = conv_geometry(6, 12, 12, 3, 3, 1, 1, 1);
  CHECK(packed_kernel_row(g) == 20);
  CHECK(packed_padded_depth(g) == 60);
  std::mt19937 rng(72);
  // Weights of depth kh kw C = 54 (not padded): refused by the flat kernel, taken by the twin.
  const tensor_codes t = make_codes(4, g.filter_size(), 4, {4}, codes_kind::random, rng);
  const packed_weights w = t.pack();
  const std::vector<std::uint8_t> x(g.in_h * g.in_w * g.in_channels, 1);
  std::vector<std::int32_t> y(g.out_plane() * 4);
  CHECK_THROWS_AS(packed_conv_flat(int_isa::reference, g, x.data(), 0, w, 0, g.out_plane(),
                                   output::make_pipeline(output::store_int32{y.data(), 4, 1})),
                  std::invalid_argument);
  // Padded: the codes at [a 20, a 20 + 18), zeros after them.
  const std::vector<std::int32_t> padded = pad_kernel_rows(g, 4, t.codes.data());
  REQUIRE(padded.size() == 4 * 60);
  for (std::size_t j = 0; j < 4; ++j)
    for (std::size_t a = 0; a < 3; ++a)
      for (std::size_t p = 0; p < 20; ++p)
        CHECK(padded[(j * 3 + a) * 20 + p] == (p < 18 ? t.codes[j * 54 + a * 18 + p] : 0));
  // A depth that is neither: refused by the twin.
  const packed_weights odd = make_codes(4, 55, 4, {4}, codes_kind::random, rng).pack();
  CHECK_THROWS_AS(ref::packed_conv(g, x.data(), 0, odd, 0, g.out_plane(),
                                   output::make_pipeline(output::store_int32{y.data(), 4, 1})),
                  std::invalid_argument);
}

} // namespace test_packed_kernels
