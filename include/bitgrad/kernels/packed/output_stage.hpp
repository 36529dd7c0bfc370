// Output stages of the packed integer kernels: what happens to each exact int32 sum
// acc(i, j) = sum_p (x(i, p) - z) w(j, p) after the kernel has formed it (as gemmlowp's output
// stages, CUTLASS's epilogues).
//
// A stage is a small struct with `operator()(value, i, j)` returning the next value; the last
// stage of a pipeline stores and returns nothing. output::pipeline chains them into the functor
// the kernels call, `out(i, j, acc)` (i: activation row, j: output channel, original order):
//
//   acc (int32) -> scale_bias -> [add_u8 | add_f32] -> clamp -> quantize_u8 -> store<std::uint8_t>
//                  acc * s[j] + b[j]   + residual       (ReLU: lo = 0)  round(v / s_y), 0..255
//
// For a layer y = s_x s_w[j] cs[j] acc + bias[j]: scale[j] = s_x * s_w[j] * cs[j] (input scale,
// weight scale of j's group, folded channel scale). A next integer layer that reads y as u8
// with scale s_y takes quantize_u8{1 / s_y}; a float consumer stops at store<float>.
//
// Rows: every stage here also has `apply(batch, i, j0)`, the same operation on the channels
// j0 .. j0 + lanes - 1 of row i (simd_batch, the compiled instruction set: SSE2 at -O2); a
// pipeline of such stages gets `row(i, j0, acc, count)`, which the kernels call instead of
// count scalar calls when a tile's channels are consecutive, and `rows(i0, m, j0, acc,
// acc_stride, count)`, the same for m consecutive rows (the stages copied once per call). Both give
// the same bits: the one multiply-add is rounded twice (the product, then the sum) on every
// target, path and compiler (detail::mul_add), so a compiler that fuses a * b + c into one FMA
// where the target has one cannot make the scalar calls and the lanes differ; test_packed_kernels
// holds them against each other, and build.output_rounding (ctest) at -O1 and -O2 with FMA
// enabled, where GCC fuses.
//
// Prepared lanes: in rows() and rows_in_runs() (a 16-channel tile's block of rows, the packed
// GEMM's hot output), every stage but the last is prepared once per lane batch of channels,
// prepared<B>(j0): its per-channel loads (scale, bias) and scalar parameters (ReLU bounds,
// quantizer scale and zero point) as lane batches held in registers, then applied to each row.
// Applied per row, they were reloaded after every u8 store (which may alias them) and broadcast
// again: a third of the stage's instructions. A stage's apply(v, i, j0) is prepared<B>(j0)
// .apply(v, i), so both ways run the same operations and give the same bits.
//
// Columns: scale_bias, clamp, quantize_u8 and the stores also have `apply_column(batch, i0, j)`,
// the same operation on rows i0 .. i0 + lanes - 1 of one channel j (the per-channel parameters
// broadcast); a pipeline of such stages (marked `columns = true`) gets `column(i0, j, acc,
// count)`, which a kernel whose lanes are rows (the direct convolution: output pixels) calls.
// The same bits again: each lane runs the operations of the scalar call.
//
// Pooled columns: a last stage that stores into 2 x 2 / stride-2 max-pool windows (the
// engine's fused_store, `pooled_columns = true`) also has `pool_pairs(i, width)` and
// `apply_pool_pairs`, `apply_pooled`; the pipeline's `column_pairs(i0, j, top, bottom, count)`
// then runs the stages on two output rows of a window row and stores each window's max once.
// When every stage but the last says it is monotone per channel (`direction(j)`: scale_bias,
// clamp, quantize_u8 with finite parameters), the four sums of a window are reduced to their
// max (min, for a falling pipeline) first and the stages run once per window (apply_pooled):
// max_k f(a_k) = f(max_k a_k) for a rising f, f(min_k a_k) for a falling one, exactly.
//
// AVX2 blocks: in a build whose own lanes are narrower than AVX2's (SSE2 at plain -O2), the
// pooled blocks also run in AVX2 registers of 8 pooled pixels where the run's path allows it
// (column_pairs_block_avx2, chosen by direct_conv from its int_isa): functions with isa.hpp's
// target attribute (BITGRAD_TARGET_AVX2) and intrinsics, since xsimd 8.1 has no AVX2 batch in
// an -O2 translation unit. The stages that have it (scale_bias, clamp, quantize_u8,
// relu_quantize_u8: `avx2_columns = true`) give apply_column_avx2(v, j), their lane operations
// one for one (maxps(a, b) is select(a > b, a, b), minps(a, b) select(a < b, a, b), the
// conversions those of SSE2, the product kept rounded before the add): the same bits.
//
// Padded rows: a pipeline made by make_padded_pipeline also runs the last count % lanes
// channels of a row as one lane batch (a tail of LeNet-5's 6-channel first conv would otherwise
// take 6 scalar calls at AVX-512's 16 lanes): the accumulators are copied into a zeroed lane
// array, every stage computes all lanes, and the last stage stores only the row's channels
// (apply_partial). The caller guarantees that the per-channel arrays (scale_bias's scale and
// bias) are readable to padded_length(channels), lane_pad past any row's last channel; stages that
// read other per-row data (the residual adds) have no `padded` mark, and a pipeline holding one
// runs its tail with scalar calls as make_pipeline's does.
#pragma once

#include <bitgrad/core/simd.hpp>
#include <bitgrad/kernels/gemm_microkernel.hpp> // BITGRAD_ALWAYS_INLINE
#include <bitgrad/kernels/packed/isa.hpp>       // BITGRAD_TARGET_AVX2

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

// The AVX2 forms of the stages ("AVX2 blocks" at the top): x86-64 builds whose own lanes are
// narrower than AVX2's; an AVX2 or AVX-512 build runs its own lanes.
#if BITGRAD_HAS_SIMD && BITGRAD_PACKED_X86 && !defined(__AVX2__)
#define BITGRAD_OUTPUT_AVX2 1
#else
#define BITGRAD_OUTPUT_AVX2 0
#endif

namespace bitgrad::output {

namespace detail {

/// Keeps v as computed: the empty asm hides the value from GCC's optimiser, so the multiply that
/// made v cannot be fused with a later add (GCC fuses a * b + c into an FMA at -O2 wherever the
/// target has one: -ffp-contract=fast, its default in C++, ISO mode included). Clang fuses only
/// within one expression (-ffp-contract=on) and needs nothing.
template <class T>
BITGRAD_ALWAYS_INLINE void keep_rounded(T& v) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  asm("" : "+v"(v)); // any SSE / AVX / AVX-512 register
#elif defined(__GNUC__) && !defined(__clang__) && defined(__aarch64__)
  asm("" : "+w"(v)); // any FP / NEON register
#else
  (void)v;
#endif
}

/// a * b + c rounded twice, the product to float and then the sum, on every target (SSE2 has no
/// FMA, so this is the rounding that every path can give).
inline float mul_add(float a, float b, float c) {
  float product = a * b;
  keep_rounded(product);
  return product + c;
}

template <class B>
BITGRAD_ALWAYS_INLINE B mul_add(const B& a, const B& b, const B& c) {
  typename B::register_type product = a * b;
  keep_rounded(product);
  return B(product) + c;
}

/// Lanes of v (|v| <= 2^22) rounded to int32 in one instruction: cvtps2dq on x86 (the current
/// rounding mode, as quantize_u8's trick (v + 1.5 * 2^23) - 1.5 * 2^23 in any mode), fcvtns on
/// aarch64 (to nearest even: the trick in the default mode); elsewhere the trick and a
/// truncating conversion.
template <class B>
BITGRAD_ALWAYS_INLINE auto round_to_int(const B& v) {
#if XSIMD_WITH_SSE2 || XSIMD_WITH_NEON64
  return xsimd::nearbyint_as_int(v);
#else
  const B magic(12582912.0f);
  return xsimd::to_int((v + magic) - magic);
#endif
}

/// Lane l of the int32 batch I is p[l] (u8, zero-extended): one widening load where the
/// instruction set has one (vpmovzxbd at AVX2 / AVX-512, two unpacks at SSE2), else through a
/// lane array. (Filled a lane at a time, the array's narrow stores cannot forward to the wide
/// load that reads it back, which then waits for them to retire.)
template <class I>
BITGRAD_ALWAYS_INLINE I load_u8_widened(const std::uint8_t* p) {
#if XSIMD_WITH_AVX512F
  if constexpr (I::size == 16)
    return I(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
#if XSIMD_WITH_AVX2
  if constexpr (I::size == 8) {
    std::int64_t bytes;
    std::memcpy(&bytes, p, 8);
    return I(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes)));
  }
#endif
#if XSIMD_WITH_SSE2
  if constexpr (I::size == 4) { // SSE2 .. SSE4.2: __m128i
    std::int32_t bytes;
    std::memcpy(&bytes, p, 4);
    const __m128i zero = _mm_setzero_si128();
    return I(_mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero));
  }
#endif
  alignas(64) std::int32_t lane[I::size];
  for (std::size_t l = 0; l < I::size; ++l) lane[l] = p[l];
  return I::load_aligned(lane);
}

/// p[l] = lane l of the int32 batch I, every lane in 0..255 (load_u8_widened's inverse): in
/// registers and one store where the instruction set has it (AVX-512: vpmovdb, a 16-byte store;
/// AVX2: vpackusdw, vpackuswb, an 8-byte store; SSE2: packssdw, packuswb, a 4-byte store; the
/// packs saturate, which leaves 0..255 as it is), else lane by lane.
template <class I>
BITGRAD_ALWAYS_INLINE void store_u8_narrowed(const I& v, std::uint8_t* p) {
#if XSIMD_WITH_AVX512F
  if constexpr (I::size == 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
    return;
  }
#endif
#if XSIMD_WITH_AVX2
  if constexpr (I::size == 8) {
    const __m256i x = v;
    const __m128i words =
        _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(words, words));
    return;
  }
#endif
#if XSIMD_WITH_SSE2
  if constexpr (I::size == 4) { // SSE2 .. SSE4.2: __m128i
    const __m128i x = v;
    const __m128i words = _mm_packs_epi32(x, x); // signed, exact on 0..255
    const std::int32_t bytes = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
    std::memcpy(p, &bytes, 4);
    return;
  }
#endif
  alignas(64) std::int32_t lane[I::size];
  v.store_aligned(lane);
  for (std::size_t l = 0; l < I::size; ++l) p[l] = static_cast<std::uint8_t>(lane[l]);
}

/// True for a stage with a lane overload, apply(batch, i, j0) (marked `lanes = true`).
template <class S>
concept lane_stage = S::lanes;

/// True for a stage with AVX2 column lanes, apply_column_avx2(v, j) (marked `avx2_columns =
/// true`; "AVX2 blocks" at the top).
template <class S>
concept avx2_column_stage = S::avx2_columns;

/// True for a stage that may compute lanes past a row's channels (marked `padded = true`).
template <class S>
concept padded_stage = S::padded;

/// True for a stage with a column overload, apply_column(batch, i0, j) (`columns = true`).
template <class S>
concept column_stage = S::columns;

/// True for a last stage that stores 2 x 2-pooled column lanes, apply_pool_pairs(batch, i0, j, n),
/// and says where it may, pool_pairs(i, width) (marked `pooled_columns = true`).
template <class S>
concept pooled_column_store = S::pooled_columns;

/// True for a last stage that takes a row pair's pooled pixels as one block of u8 codes,
/// channels consecutive (NHWC): pool_block(i, width, channels) says where it may and
/// pooled_at(i) is the block's first byte (marked `pooled_blocks = true`; u8 outputs only).
template <class S>
concept pooled_block_store = S::pooled_blocks && requires(const S& s) {
  { s.pooled_at(std::size_t(0)) } -> std::same_as<std::uint8_t*>;
};

/// interleave_index.at[c][o] = the plane byte of output byte o for c channels: (o mod c) 16 + o div
/// c (0 where o div c >= 16: never stored).
inline constexpr auto interleave_index = [] {
  struct table {
    std::uint8_t at[9][128];
  } t{};
  for (std::size_t c = 1; c <= 8; ++c)
    for (std::size_t o = 0; o < 128; ++o)
      t.at[c][o] = o / c < 16 ? static_cast<std::uint8_t>(o % c * 16 + o / c) : 0;
  return t;
}();

#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
/// dst[t * channels + j] = code t of channel j for t < n <= 16, j < channels <= 8 (LeNet's 6):
/// a row pair's pooled codes interleaved into NHWC. The codes are the 128 bytes of low
/// (channels 0..3, channel j's 16 codes in 128-bit lane j) and high (channels 4..7); two byte
/// permutes of those (vpermt2b, indices from interleave_index) and two masked stores.
BITGRAD_ALWAYS_INLINE void interleave_codes(__m512i low, __m512i high, std::size_t channels,
                                            std::size_t n, std::uint8_t* dst) {
  const std::uint8_t* idx = interleave_index.at[channels];
  const std::size_t bytes = n * channels; // <= 128
  auto mask = [](std::size_t k) {
    return _cvtu64_mask64(k >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << k) - 1);
  };
  _mm512_mask_storeu_epi8(dst, mask(bytes),
                          _mm512_permutex2var_epi8(low, _mm512_loadu_si512(idx), high));
  if (bytes > 64)
    _mm512_mask_storeu_epi8(dst + 64, mask(bytes - 64),
                            _mm512_permutex2var_epi8(low, _mm512_loadu_si512(idx + 64), high));
}
#endif

/// True for a stage that says per channel j whether it is monotone in its input:
/// direction(j) = 1 (never falls), -1 (never rises), 0 (not known).
template <class S>
concept monotone_stage = requires(const S& s) {
  { s.direction(std::size_t(0)) } -> std::same_as<int>;
};

/// True for a stage with prepared<B>(j0): its parameters for the lane batch of channels j0 ..
/// j0 + lanes - 1 as batches, with apply(v, i) giving the bits of apply(v, i, j0) (see
/// "Prepared lanes" at the top).
template <class S, class B>
concept prepared_stage = requires(const S& s) {
  s.template prepared<B>(std::size_t(0));
};

/// True for a last stage with prepared_store<B>(j0): an object whose apply(v, i) does what the
/// stage's apply(v, i, j0) does (pipeline::prepare_last).
template <class S, class B>
concept prepared_last_stage = requires(const S& s) {
  s.template prepared_store<B>(std::size_t(0));
};

/// True for a last stage that stores the first n lanes only, apply_partial(batch, i, j0, n)
/// (marked `partial = true`).
template <class S>
concept partial_store = S::partial;

} // namespace detail

/// Per-channel arrays of a padded pipeline are readable to a multiple of lane_pad channels
/// (integer_plan pads its scale and bias to it): at least the widest lane batch compiled.
inline constexpr std::size_t lane_pad = 16;
static_assert(simd_lanes<float> <= lane_pad && simd_lanes<std::int32_t> <= lane_pad);

/// The length of a padded per-channel array of n channels: n rounded up to a multiple of
/// lane_pad, plus lane_pad. A row may start at any channel j0 (a tile of one bit class starts
/// where the class does) and reads whole lane batches from j0, up to channel
/// j0 + count - 1 + (lanes - 1) < n + lane_pad.
constexpr std::size_t padded_length(std::size_t n) {
  return (n + lane_pad - 1) / lane_pad * lane_pad + lane_pad;
}

/// value = acc * scale[j] + bias[j] (bias nullable).
struct scale_bias {
  static constexpr bool lanes = true;
  static constexpr bool padded = true; ///< reads scale, bias only: padded by the caller
  const float* scale;
  const float* bias = nullptr;
  float operator()(std::int32_t acc, std::size_t, std::size_t j) const {
    return detail::mul_add(static_cast<float>(acc), scale[j], bias ? bias[j] : 0.0f);
  }
  template <class B>
  BITGRAD_ALWAYS_INLINE auto apply(const B& acc, std::size_t i, std::size_t j0) const {
    return prepared<B>(j0).apply(acc, i);
  }
  /// apply(acc, i, j0) with channel j0's lanes loaded once ("Prepared lanes" at the top).
  template <class B>
  struct prepared_lanes {
    xsimd::batch<float, typename B::arch_type> s, b;
    BITGRAD_ALWAYS_INLINE auto apply(const B& acc, std::size_t) const {
      return detail::mul_add(xsimd::to_float(acc), s, b);
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_lanes<B> prepared(std::size_t j0) const {
    using F = xsimd::batch<float, typename B::arch_type>;
    return {F::load_unaligned(scale + j0), bias ? F::load_unaligned(bias + j0) : F(0.0f)};
  }
  static constexpr bool columns = true;
  template <class B>
  BITGRAD_ALWAYS_INLINE auto apply_column(const B& acc, std::size_t, std::size_t j) const {
    using F = xsimd::batch<float, typename B::arch_type>;
    return detail::mul_add(xsimd::to_float(acc), F(scale[j]), F(bias ? bias[j] : 0.0f));
  }
#if BITGRAD_OUTPUT_AVX2
  static constexpr bool avx2_columns = true;
  /// apply_column on 8 rows in an AVX2 register ("AVX2 blocks" at the top).
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE __m256 apply_column_avx2(__m256i acc,
                                                                     std::size_t j) const {
    __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(scale[j]));
    detail::keep_rounded(product); // not fused with the add (detail::mul_add)
    return _mm256_add_ps(product, _mm256_set1_ps(bias ? bias[j] : 0.0f));
  }
#endif
  /// Monotone in acc ("Pooled columns" at the top): rising for scale[j] >= 0, falling below;
  /// 0 (not known) when a parameter is not finite (0 * inf is NaN).
  int direction(std::size_t j) const {
    const bool finite = std::isfinite(scale[j]) && (!bias || std::isfinite(bias[j]));
    return !finite ? 0 : scale[j] >= 0.0f ? 1 : -1;
  }
};

/// value = min(max(value, lo), hi); NaN becomes lo. ReLU is clamp{0}, ReLU6 clamp{0, 6}.
struct clamp {
  static constexpr bool lanes = true;
  static constexpr bool padded = true;
  float lo = 0.0f;
  float hi = std::numeric_limits<float>::infinity();
  /// Branchless (a ReLU's sign is data: a branch on it mispredicts): two selects, maxss and
  /// minss on x86.
  float operator()(float v, std::size_t, std::size_t) const {
    v = v > lo ? v : lo; // also NaN -> lo
    return v < hi ? v : hi;
  }
  template <class B>
  BITGRAD_ALWAYS_INLINE B apply(const B& v, std::size_t i, std::size_t j0) const {
    return prepared<B>(j0).apply(v, i);
  }
  template <class B>
  struct prepared_lanes {
    B lo, hi;
    BITGRAD_ALWAYS_INLINE B apply(const B& v, std::size_t) const {
      // NaN -> lo by the select; no NaN is left for min, whose NaN rule differs across ISAs.
      return xsimd::min(xsimd::select(v > lo, v, lo), hi);
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_lanes<B> prepared(std::size_t) const {
    return {B(lo), B(hi)};
  }
  static constexpr bool columns = true;
  template <class B>
  BITGRAD_ALWAYS_INLINE B apply_column(const B& v, std::size_t i, std::size_t j) const {
    return apply(v, i, j);
  }
#if BITGRAD_OUTPUT_AVX2
  static constexpr bool avx2_columns = true;
  /// apply_column in an AVX2 register: maxps(v, lo) = select(v > lo, v, lo), then minps.
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE __m256 apply_column_avx2(__m256 v, std::size_t) const {
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
  }
#endif
  /// Rising in v (0: a NaN bound, whose min differs across ISAs).
  int direction(std::size_t) const {
    return lo == lo && hi == hi ? 1 : 0;
  }
};

/// value += s_r * (r(i, j) - z_r): the other operand of a residual add, held as u8 codes on its
/// own grid (scale s_r, zero point z_r), read at r[i * stride + j] (rows of the call, as the
/// accumulators). Rounded as scale_bias (detail::mul_add).
struct add_u8 {
  static constexpr bool lanes = true;
  const std::uint8_t* r;
  std::size_t stride;
  float scale;
  std::int32_t zero_point = 0;
  float operator()(float v, std::size_t i, std::size_t j) const {
    return detail::mul_add(static_cast<float>(std::int32_t(r[i * stride + j]) - zero_point), scale,
                           v);
  }
  template <class B>
  BITGRAD_ALWAYS_INLINE B apply(const B& v, std::size_t i, std::size_t j0) const {
    return prepared<B>(j0).apply(v, i);
  }
  template <class B>
  struct prepared_lanes {
    const std::uint8_t* r; // channel j0 of row 0
    std::size_t stride;
    B scale;
    xsimd::batch<std::int32_t, typename B::arch_type> zero_point;
    BITGRAD_ALWAYS_INLINE B apply(const B& v, std::size_t i) const {
      using I = xsimd::batch<std::int32_t, typename B::arch_type>;
      const I q = detail::load_u8_widened<I>(r + i * stride) - zero_point;
      return detail::mul_add(xsimd::to_float(q), scale, v);
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_lanes<B> prepared(std::size_t j0) const {
    return {r + j0, stride, B(scale),
            xsimd::batch<std::int32_t, typename B::arch_type>(zero_point)};
  }
};

/// value += r(i, j): the other operand of a residual add, held as float (r[i * stride + j]).
struct add_f32 {
  static constexpr bool lanes = true;
  const float* r;
  std::size_t stride;
  float operator()(float v, std::size_t i, std::size_t j) const { return v + r[i * stride + j]; }
  template <class B>
  BITGRAD_ALWAYS_INLINE B apply(const B& v, std::size_t i, std::size_t j0) const {
    return prepared<B>(j0).apply(v, i);
  }
  template <class B>
  struct prepared_lanes {
    const float* r; // channel j0 of row 0
    std::size_t stride;
    BITGRAD_ALWAYS_INLINE B apply(const B& v, std::size_t i) const {
      return v + B::load_unaligned(r + i * stride);
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_lanes<B> prepared(std::size_t j0) const {
    return {r + j0, stride};
  }
};

/// u8 = clamp(round_half_even(value * inv_scale) + zero_point, lo, hi); NaN gives zero_point
/// (clamped). lo, hi default to u8's 0..255; a learned k-bit activation grid (integer_plan.hpp)
/// narrows them to its codes: 0..2^k - 1 (unsigned, zero point 0) or
/// 128 - L..128 + L with L = 2^(k-1) - 1 (signed, zero point 128).
/// Rounds with the 1.5 * 2^23 trick (adding it leaves no fraction bits; the sum rounds half to
/// even, and subtracting it back is exact), which equals std::nearbyint in the default
/// rounding mode for |q| <= 2^22 and, unlike nearbyint at -O2 on SSE2, is not a library call.
struct quantize_u8 {
  static constexpr bool lanes = true;
  static constexpr bool padded = true;
  float inv_scale;
  std::int32_t zero_point = 0;
  float lo = 0.0f, hi = 255.0f;                                 ///< integers in 0..255
  static constexpr float magic = 12582912.0f, big = 4194304.0f; // 1.5 * 2^23, 2^22
  std::uint8_t operator()(float v, std::size_t, std::size_t) const {
    float q = v * inv_scale;
    if (!(q == q)) q = 0.0f;
    q = q < -big ? -big : (q > big ? big : q);
    q = (q + magic) - magic;
    q += static_cast<float>(zero_point);
    q = q < lo ? lo : (q > hi ? hi : q);
    return static_cast<std::uint8_t>(q);
  }
  /// The u8 values as int32 lanes.
  template <class B>
  BITGRAD_ALWAYS_INLINE auto apply(const B& v, std::size_t i, std::size_t j0) const {
    return prepared<B>(j0).apply(v, i);
  }
  /// apply with the parameters as batches.
  template <class B>
  struct prepared_lanes {
    B inv_scale, zero_point, lo, hi;
    BITGRAD_ALWAYS_INLINE auto apply(const B& v, std::size_t) const {
      B q = v * inv_scale;
      q = xsimd::select(q == q, q, B(0.0f)); // NaN -> 0; min and max below see no NaN
      q = xsimd::min(xsimd::max(q, B(-big)), B(big));
      return code(q);
    }
    /// q (scaled, no NaN, |q| <= 2^22 or rounding to beyond hi) to its code: rounded half to
    /// even, + zero point, clamped to [lo, hi], as int32 lanes.
    BITGRAD_ALWAYS_INLINE auto code(B q) const {
      q = (q + B(magic)) - B(magic);
      q += zero_point;
      q = xsimd::min(xsimd::max(q, lo), hi);
      return xsimd::to_int(q);
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_lanes<B> prepared(std::size_t) const {
    return {B(inv_scale), B(static_cast<float>(zero_point)), B(lo), B(hi)};
  }
  static constexpr bool columns = true;
  template <class B>
  BITGRAD_ALWAYS_INLINE auto apply_column(const B& v, std::size_t i, std::size_t j) const {
    return apply(v, i, j);
  }
#if BITGRAD_OUTPUT_AVX2
  static constexpr bool avx2_columns = true;
  /// apply_column in an AVX2 register: prepared_lanes::apply's operations one for one.
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE __m256i apply_column_avx2(__m256 v, std::size_t) const {
    __m256 q = _mm256_mul_ps(v, _mm256_set1_ps(inv_scale));
    q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_EQ_OQ)); // NaN -> +0
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-big)), _mm256_set1_ps(big));
    q = _mm256_sub_ps(_mm256_add_ps(q, _mm256_set1_ps(magic)), _mm256_set1_ps(magic));
    q = _mm256_add_ps(q, _mm256_set1_ps(static_cast<float>(zero_point)));
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
    return _mm256_cvttps_epi32(q); // xsimd::to_int: truncation (q is whole)
  }
#endif
  /// Rising in v for inv_scale >= 0, falling below; 0 (not known) for a NaN or infinite
  /// parameter.
  int direction(std::size_t) const {
    const bool finite = std::isfinite(inv_scale) && lo == lo && hi == hi;
    return !finite ? 0 : inv_scale >= 0.0f ? 1 : -1;
  }
};

/// clamp{0} (ReLU) then quantize_u8 q in one stage, for a q that `fits`: inv_scale finite and
/// > 0, zero_point >= 0, hi <= 255. The scalar call is the two stages' calls; the lanes (rows
/// and columns) skip what the ReLU makes idle, with the same bits for every float value v:
///   r = v > 0 ? v : 0 is in [0, +inf], never NaN, so clamp's min(r, +inf) = r;
///   x = r * inv_scale is in [0, +inf], never NaN (+inf * finite > 0 = +inf), so quantize_u8's
///   NaN select and max(x, -2^22) return x;
///   min(x, 2^22): for x <= 2^22 it returns x; for x > 2^22 (+inf too) both ways round to
///   round(x) >= round(2^22) = 2^22 (the rounding (x + m) - m is monotone in x), and
///   + zero_point >= 0 keeps it > 255 >= hi, so the last min gives hi either way.
/// Left: r, x, the rounding, + zero_point, min(max(., lo), hi) and the conversion.
///
/// The lanes go further when lo, hi are whole numbers in [0, 255] and zero_point <= 255 (fits
/// asks for that too): the clamp moves before the rounding and the zero point after it,
///
///   code = round(min(max(x', L), H)) + zero_point,   x' = v * inv_scale (no ReLU first),
///   L = max(lo - zero_point, 0),  H = hi - zero_point   (whole numbers, exact in float),
///
/// with round() the conversion to int32 (detail::round_to_int: cvtps2dq in the current rounding
/// mode on x86; fcvtns, to nearest even, the default mode, on aarch64):
///   - for whole c, round(max(x, c)) = max(round(x), c) and round(min(x, c)) = min(round(x), c)
///     (rounding is monotone and leaves c as it is), and + zero_point moves out of a clamp; so
///     for x = r * inv_scale >= 0 this is min(max(round(x) + zero_point, max(lo, zp)), hi),
///     and round(x) + zero_point >= zero_point already, which is the two-stage code
///     min(max(round(x) + zero_point, lo), hi) (round(x) = (x + m) - m for x <= 2^22, in every
///     rounding mode; x > 2^22 gives hi both ways, above);
///   - v <= 0, -0, -inf or NaN: x' <= 0 or NaN, and max(x', L) as select(x' > L, x', L) gives
///     L >= 0, the code of r = 0 (x = 0); v > 0: x' = x;
///   - min(., H) bounds the value before the conversion (no int32 overflow for x' = +inf).
/// 5 lane operations (multiply, select, min, convert, add) against the form above's 8.
/// test_packed_kernels holds both against clamp, quantize_u8 over the floats, NaN and
/// infinities included.
struct relu_quantize_u8 {
  static constexpr bool lanes = true;
  static constexpr bool padded = true;
  quantize_u8 q;
  /// True when q meets the conditions above (else run clamp{}, q as two stages).
  static bool fits(const quantize_u8& q) {
    auto whole_u8 = [](float b) { return b >= 0.0f && b <= 255.0f && b == std::trunc(b); };
    return std::isfinite(q.inv_scale) && q.inv_scale > 0.0f && q.zero_point >= 0 &&
           q.zero_point <= 255 && whole_u8(q.lo) && whole_u8(q.hi);
  }
  std::uint8_t operator()(float v, std::size_t i, std::size_t j) const {
    return q(clamp{}(v, i, j), i, j);
  }
  template <class B>
  BITGRAD_ALWAYS_INLINE auto apply(const B& v, std::size_t i, std::size_t j0) const {
    return prepared<B>(j0).apply(v, i);
  }
  template <class B>
  struct prepared_lanes {
    using I = xsimd::batch<std::int32_t, typename B::arch_type>;
    B inv_scale, low, high; // inv_scale, L, H above
    I zero_point;
    BITGRAD_ALWAYS_INLINE auto apply(const B& v, std::size_t) const {
      const B x = v * inv_scale;
      return detail::round_to_int(xsimd::min(xsimd::select(x > low, x, low), high)) + zero_point;
    }
  };
  template <class B>
  BITGRAD_ALWAYS_INLINE prepared_lanes<B> prepared(std::size_t) const {
    const float zp = static_cast<float>(q.zero_point);
    return {B(q.inv_scale), B(std::max(q.lo - zp, 0.0f)), B(q.hi - zp),
            typename prepared_lanes<B>::I(q.zero_point)};
  }
  static constexpr bool columns = true;
  /// The lanes' operations again: no parameter depends on the channel.
  template <class B>
  BITGRAD_ALWAYS_INLINE auto apply_column(const B& v, std::size_t i, std::size_t j) const {
    return apply(v, i, j);
  }
#if BITGRAD_OUTPUT_AVX2
  static constexpr bool avx2_columns = true;
  /// apply_column in an AVX2 register: prepared_lanes::apply's operations one for one
  /// (round_to_int is cvtps2dq on x86).
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE __m256i apply_column_avx2(__m256 v, std::size_t) const {
    const float zp = static_cast<float>(q.zero_point);
    const __m256 x = _mm256_mul_ps(v, _mm256_set1_ps(q.inv_scale));
    const __m256 low = _mm256_set1_ps(std::max(q.lo - zp, 0.0f)), high = _mm256_set1_ps(q.hi - zp);
    return _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(x, low), high)),
                            _mm256_set1_epi32(q.zero_point));
  }
#endif
  int direction(std::size_t j) const {
    return clamp{}.direction(j) * q.direction(j);
  }
};

/// Stores the value at y[i * row_stride + j * col_stride] (the last stage).
template <class T>
struct store {
  static constexpr bool lanes = true;
  static constexpr bool partial = true;
  T* y;
  std::size_t row_stride, col_stride = 1;
  void operator()(T v, std::size_t i, std::size_t j) const {
    y[i * row_stride + j * col_stride] = v;
  }
  /// Lanes are channels j0..; u8 outputs arrive as int32 lanes holding 0..255.
  template <class B>
  void apply(const B& v, std::size_t i, std::size_t j0) const {
    using V = typename B::value_type;
    T* dst = y + i * row_stride + j0 * col_stride;
    if constexpr (std::is_same_v<V, T>) {
      if (col_stride == 1) {
        v.store_unaligned(dst);
        return;
      }
    }
    alignas(64) V lane_values[B::size];
    v.store_aligned(lane_values);
    if (col_stride == 1)
      for (std::size_t l = 0; l < B::size; ++l) dst[l] = static_cast<T>(lane_values[l]);
    else
      for (std::size_t l = 0; l < B::size; ++l)
        dst[l * col_stride] = static_cast<T>(lane_values[l]);
  }
  /// The first n lanes only (n < lanes: the tail of a padded row).
  template <class B>
  void apply_partial(const B& v, std::size_t i, std::size_t j0, std::size_t n) const {
    store_first(v, y + i * row_stride + j0 * col_stride, col_stride, n);
  }
  /// Lanes are rows i0 .. i0 + n - 1 of channel j (n <= lanes).
  static constexpr bool columns = true;
  template <class B>
  void apply_column(const B& v, std::size_t i0, std::size_t j, std::size_t n) const {
    store_first(v, y + i0 * row_stride + j * col_stride, row_stride, n);
  }

private:
  /// dst[l * stride] = lane l of v, for l < n.
  template <class B>
  static void store_first(const B& v, T* dst, std::size_t stride, std::size_t n) {
    using V = typename B::value_type;
    alignas(64) V lane_values[B::size];
    v.store_aligned(lane_values);
    for (std::size_t l = 0; l < n; ++l) dst[l * stride] = static_cast<T>(lane_values[l]);
  }
};

/// Stores the raw int32 sum (tests, or a caller that requantizes itself).
using store_int32 = store<std::int32_t>;

/// Stages applied in order; the functor the kernels call as out(i, j, acc), and as
/// out.row(i, j0, acc, count) for count consecutive channels j0.. of row i.
template <class... Stages>
struct pipeline {
  std::tuple<Stages...> stages;

  void operator()(std::size_t i, std::size_t j, std::int32_t acc) const {
    run<0>(stages, acc, i, j);
  }

  BITGRAD_ALWAYS_INLINE void row(std::size_t i, std::size_t j0, const std::int32_t* acc,
                                 std::size_t count) const
      requires(detail::lane_stage<Stages>&&...) {
    // A local copy: stores through a u8 output may alias anything reachable through `this`,
    // which would make the compiler reload every stage parameter after each store.
    const std::tuple<Stages...> s = stages;
    row_of(s, i, j0, acc, count);
  }

  /// Rows i0 .. i0 + m - 1, channels j0 .. j0 + count - 1, row i0 + r's sums at
  /// acc + r * acc_stride: the same values as m calls of row(), with the stages copied once
  /// (a copy per row of a 16-channel tile costs as much as the row's arithmetic) and prepared
  /// once per lane batch ("Prepared lanes" at the top: the rows run batch by batch).
  BITGRAD_ALWAYS_INLINE void rows(std::size_t i0, std::size_t m, std::size_t j0,
                                  const std::int32_t* acc, std::size_t acc_stride,
                                  std::size_t count) const
      requires(detail::lane_stage<Stages>&&...) {
    const std::tuple<Stages...> s = stages; // see row
    const std::size_t c = prepared_batches(s, i0, m, j0, acc, acc_stride, count);
    if (c < count)
      for (std::size_t r = 0; r < m; ++r)
        row_of(s, i0 + r, j0 + c, acc + r * acc_stride + c, count - c);
  }

  /// rows() on runs of rows: runs(f) calls f(i, a, n) for each run, rows i .. i + n - 1 with
  /// their sums at acc + (a + r) * acc_stride, r < n; the stages copied once for all the runs
  /// (flat_conv.hpp: the real pixels of a block that also holds dropped ones).
  template <class Runs>
  BITGRAD_ALWAYS_INLINE void rows_in_runs(const Runs& runs, std::size_t j0, const std::int32_t* acc,
                                          std::size_t acc_stride, std::size_t count) const
      requires(detail::lane_stage<Stages>&&...) {
    const std::tuple<Stages...> s = stages; // see row
    const std::size_t c = prepared_batches_in_runs(s, runs, j0, acc, acc_stride, count);
    if (c < count)
      runs([&](std::size_t i, std::size_t a, std::size_t n) {
        const std::int32_t* run_acc = acc + a * acc_stride;
        for (std::size_t r = 0; r < n; ++r)
          row_of(s, i + r, j0 + c, run_acc + r * acc_stride + c, count - c);
      });
  }

  /// Rows i0 .. i0 + count - 1 of channel j (acc[l]: row i0 + l), in lanes; the last count %
  /// lanes as one lane batch of which the last stage stores count % lanes.
  BITGRAD_ALWAYS_INLINE void column(std::size_t i0, std::size_t j, const std::int32_t* acc,
                                    std::size_t count) const
      requires(detail::column_stage<Stages>&&...) {
    const std::tuple<Stages...> s = stages; // see row
#if BITGRAD_HAS_SIMD
    using B = simd_batch<std::int32_t>;
    std::size_t c = 0;
    for (; c + B::size <= count; c += B::size)
      run_column<0>(s, B::load_unaligned(acc + c), i0 + c, j, B::size);
    if (c < count) {
      alignas(64) std::int32_t tail[B::size] = {};
      std::memcpy(tail, acc + c, (count - c) * sizeof(std::int32_t));
      run_column<0>(s, B::load_aligned(tail), i0 + c, j, count - c);
    }
#else
    for (std::size_t c = 0; c < count; ++c) run<0>(s, acc[c], i0 + c, j);
#endif
  }

  /// Pooled columns: true when rows i .. i + width - 1 (one whole output row) and the same
  /// pixels of the next output row (i + width ..) form 2 x 2 max-pool windows of stride 2,
  /// pixels (2t, 2t + 1) of both rows into pooled pixel t, written by no other call (the last
  /// stage's pool_pairs; false without one).
  bool pool_pairs(std::size_t i, std::size_t width) const {
    using last = std::tuple_element_t<sizeof...(Stages) - 1, std::tuple<Stages...>>;
    if constexpr (detail::pooled_column_store<last>)
      return last_stage().pool_pairs(i, width);
    else
      return false;
  }

  /// 1 when the value the last stage receives never falls as channel j's sum rises, -1 when
  /// it never rises, 0 when a stage is not monotone or does not say (direction_of).
  int direction(std::size_t j) const {
    return direction_of(stages, j);
  }

  /// Pooled columns, where pool_pairs(i0 - i0 % width, width) holds: rows i0 .. i0 + count - 1
  /// of channel j (acc_top[l], a row's pixels from an even one) and the row below
  /// (acc_bottom[l]); every stage but the last on each, in lanes, then
  ///
  ///   v[l] = max(top[l], bottom[l]),  pooled pixel of lanes 2t, 2t + 1 = max(v[2t], v[2t + 1])
  ///
  /// stored by the last stage (apply_pool_pairs). The values are those the scalar calls give,
  /// and the max of a window is the same in any order: the same bits as the per-pixel path.
  /// whole_lanes: both rows may be read up to count rounded up to whole lane batches (the
  /// padded rows of direct_conv); the last batch is then loaded in place, not from a zeroed
  /// copy (whose narrower stores a full-width load waits on), its lanes past count computed
  /// and never stored. direction: direction(j) when the caller has it (once per call of a
  /// kernel, not per row pair), else direction_unknown.
  static constexpr int direction_unknown = 2;
  BITGRAD_ALWAYS_INLINE void
      column_pairs(std::size_t i0, std::size_t j, const std::int32_t* acc_top,
                   const std::int32_t* acc_bottom, std::size_t count, bool whole_lanes = false,
                   int direction = direction_unknown) const
      requires(detail::column_stage<Stages>&&...) &&
      detail::pooled_column_store<
          std::tuple_element_t<sizeof...(Stages) - 1, std::tuple<Stages...>>> {
#if BITGRAD_HAS_SIMD
    const std::tuple<Stages...> s = stages; // see row
    using B = simd_batch<std::int32_t>;
    static_assert(B::size % 2 == 0, "lane pairs must not straddle two batches");
    auto pooled = [&](const B& top, const B& bottom, std::size_t c, std::size_t n) {
      const auto v =
          xsimd::max(column_value<0>(s, top, i0 + c, j), column_value<0>(s, bottom, i0 + c, j));
      std::get<sizeof...(Stages) - 1>(s).apply_pool_pairs(v, i0 + c, j, n);
    };
    const int d = direction == direction_unknown ? direction_of(s, j) : direction;
    if (d > 0) return pooled_sums<true>(s, i0, j, acc_top, acc_bottom, count, whole_lanes);
    if (d < 0) return pooled_sums<false>(s, i0, j, acc_top, acc_bottom, count, whole_lanes);
    std::size_t c = 0;
    for (; c + B::size <= count; c += B::size)
      pooled(B::load_unaligned(acc_top + c), B::load_unaligned(acc_bottom + c), c, B::size);
    if (c < count && whole_lanes) {
      pooled(B::load_unaligned(acc_top + c), B::load_unaligned(acc_bottom + c), c, count - c);
    } else if (c < count) {
      alignas(64) std::int32_t top[B::size] = {}, bottom[B::size] = {};
      std::memcpy(top, acc_top + c, (count - c) * sizeof(std::int32_t));
      std::memcpy(bottom, acc_bottom + c, (count - c) * sizeof(std::int32_t));
      pooled(B::load_aligned(top), B::load_aligned(bottom), c, count - c);
    }
#else
    (void)i0, (void)j, (void)acc_top, (void)acc_bottom, (void)count, (void)whole_lanes,
        (void)direction;
#endif
  }

  /// Pooled blocks: true where column_pairs_block may run on rows i .. i + width - 1 (and the
  /// row below) of `channels` channels (the last stage's pool_block; false without one).
  bool pool_block(std::size_t i, std::size_t width, std::size_t channels) const {
    using last = std::tuple_element_t<sizeof...(Stages) - 1, std::tuple<Stages...>>;
    if constexpr (detail::pooled_block_store<last>)
      return last_stage().pool_block(i, width, channels);
    else
      return false;
  }

  /// column_pairs of every channel j < channels of a row pair at once, for monotone stages
  /// whose last stage takes u8 blocks (pool_block(i0, count, channels) holds): channel j's
  /// sums at acc_top + j acc_stride, acc_bottom + j acc_stride, each readable to count rounded
  /// up to whole lane batches; direction[j] = direction(j), 1 or -1 for every channel; count
  /// even, any number of channels (LeNet's 6 fill two of SSE2's 4 lanes). Per lane batch of pooled
  /// pixels t and per channel, the window's extreme sum m(t) (pooled_sums) through every stage but
  /// the last, narrowed to its u8 code and stored interleaved into the row pair's pooled pixels,
  /// channels consecutive, from the last stage's pooled_at(i0) (interleave_codes under AVX-512
  /// VBMI, else a byte store per code, without row_at's offset and test per pooled pixel). The
  /// values of pooled_sums, the same bits.
  BITGRAD_ALWAYS_INLINE void column_pairs_block(std::size_t i0, const std::int32_t* acc_top,
                                                const std::int32_t* acc_bottom,
                                                std::size_t acc_stride, std::size_t count,
                                                std::size_t channels, const int* direction) const
      requires(detail::column_stage<Stages>&&...) &&
      detail::pooled_block_store<
          std::tuple_element_t<sizeof...(Stages) - 1, std::tuple<Stages...>>> {
#if BITGRAD_HAS_SIMD
    const std::tuple<Stages...> s = stages; // see row
    using B = simd_batch<std::int32_t>;
    constexpr std::size_t L = B::size;
    std::uint8_t* dst = std::get<sizeof...(Stages) - 1>(s).pooled_at(i0);
    for (std::size_t c = 0; c < count; c += 2 * L) {
      const std::size_t n = std::min(L, (count - c) / 2); // pooled pixels of this batch
      std::uint8_t* to = dst + c / 2 * channels;
      auto code_of = [&](std::size_t j) {
        return pooled_code(s, i0 + c, j, acc_top + j * acc_stride + c,
                           acc_bottom + j * acc_stride + c, count - c, direction[j]);
      };
#if defined(__AVX512VBMI__) && defined(__AVX512BW__) && XSIMD_WITH_AVX512F
      if constexpr (L == 16)
        if (channels <= 8) { // the codes in two registers (no store and reload)
          __m512i low = _mm512_setzero_si512(), high = low;
          for (std::size_t j = 0; j < channels; ++j) {
            const __m128i b = _mm512_cvtepi32_epi8(code_of(j));
            const auto lane = static_cast<__mmask16>(0xFu << (4 * (j % 4)));
            if (j < 4)
              low = _mm512_mask_broadcast_i32x4(low, lane, b);
            else
              high = _mm512_mask_broadcast_i32x4(high, lane, b);
          }
          detail::interleave_codes(low, high, channels, n, to);
          continue;
        }
#endif
      for (std::size_t j = 0; j < channels; ++j) { // a byte store per code
        alignas(64) std::int32_t lane[L];
        code_of(j).store_aligned(lane);
        for (std::size_t t = 0; t < n; ++t)
          to[t * channels + j] = static_cast<std::uint8_t>(lane[t]);
      }
    }
#else
    (void)i0, (void)acc_top, (void)acc_bottom, (void)acc_stride, (void)count, (void)channels,
        (void)direction;
#endif
  }

#if BITGRAD_OUTPUT_AVX2
  /// True when column_pairs_block_avx2 runs on this pipeline: every stage but the last has
  /// AVX2 columns ("AVX2 blocks" at the top), the last takes pooled blocks.
  static constexpr bool avx2_blocks = [] {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      using last = std::tuple_element_t<sizeof...(Stages) - 1, std::tuple<Stages...>>;
      return (detail::avx2_column_stage<std::tuple_element_t<I, std::tuple<Stages...>>> && ...) &&
             detail::pooled_block_store<last>;
    }
    (std::make_index_sequence<sizeof...(Stages) - 1>{});
  }();

  /// column_pairs_block in AVX2 registers of 8 pooled pixels (16 pixels of each row), for a
  /// caller whose path has AVX2 (int_isa_supported(int_isa::avx2): nothing here may run before
  /// that is known). The same contract, but the sums are read to count rounded up to a multiple
  /// of 8, and the same operations lane for lane: the same bits. 4 to 8 channels (LeNet's 6):
  /// the codes transposed in registers and stored a pooled pixel at a time
  /// (store_interleaved_avx2); others a byte store per code.
  BITGRAD_TARGET_AVX2 void
  column_pairs_block_avx2(std::size_t i0, const std::int32_t* acc_top,
                          const std::int32_t* acc_bottom, std::size_t acc_stride, std::size_t count,
                          std::size_t channels, const int* direction) const requires avx2_blocks {
    const std::tuple<Stages...> s = stages; // see row
    std::uint8_t* dst = std::get<sizeof...(Stages) - 1>(s).pooled_at(i0);
    for (std::size_t c = 0; c < count; c += 16) {
      const std::size_t n = std::min<std::size_t>(8, (count - c) / 2); // pooled pixels
      std::uint8_t* to = dst + c / 2 * channels;
      if (channels >= 4 && channels <= 8) {
        __m128i codes[8]; // codes[j]: channel j's 8 codes as bytes 0..7 (0 past the channels)
        for (std::size_t j = 0; j < 8; ++j)
          codes[j] = j < channels
                         ? code_bytes_avx2(pooled_code_avx2(s, j, acc_top, acc_bottom, acc_stride,
                                                            c, count, direction[j]))
                         : _mm_setzero_si128();
        store_interleaved_avx2(codes, channels, n, to);
        continue;
      }
      for (std::size_t j = 0; j < channels; ++j) { // a byte store per code
        const __m256i code =
            pooled_code_avx2(s, j, acc_top, acc_bottom, acc_stride, c, count, direction[j]);
        alignas(32) std::int32_t lane[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lane), code);
        for (std::size_t t = 0; t < n; ++t)
          to[t * channels + j] = static_cast<std::uint8_t>(lane[t]);
      }
    }
  }
#endif

protected:
#if BITGRAD_OUTPUT_AVX2
  /// window_extremes at AVX2 (8 pooled pixels from 16 of each row): lane t = the extreme of
  /// pixels 2t, 2t + 1 of both rows. The vertical extremes v0 (pixels 0..7), v1 (8..15); the
  /// even and odd pixels of each 128-bit half (shufps), their extreme, then the 64-bit quarters
  /// in order (vpermq 0, 2, 1, 3).
  template <bool Rising>
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE static __m256i
  window_extremes_avx2(const std::int32_t* top, const std::int32_t* bottom, std::size_t left) {
    __m256i v[2];
    for (std::size_t h = 0; h < 2; ++h) {
      if (8 * h >= left) {
        v[h] = _mm256_setzero_si256();
        continue;
      }
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(top + 8 * h));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bottom + 8 * h));
      v[h] = Rising ? _mm256_max_epi32(a, b) : _mm256_min_epi32(a, b);
    }
    const __m256 f0 = _mm256_castsi256_ps(v[0]), f1 = _mm256_castsi256_ps(v[1]);
    const __m256i even = _mm256_castps_si256(_mm256_shuffle_ps(f0, f1, _MM_SHUFFLE(2, 0, 2, 0)));
    const __m256i odd = _mm256_castps_si256(_mm256_shuffle_ps(f0, f1, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m256i e = Rising ? _mm256_max_epi32(even, odd) : _mm256_min_epi32(even, odd);
    return _mm256_permute4x64_epi64(e, _MM_SHUFFLE(3, 1, 2, 0));
  }
  /// Channel j's codes of the 8 pooled pixels from pixel c of a row pair (pooled_code at AVX2).
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE static __m256i
  pooled_code_avx2(const std::tuple<Stages...>& s, std::size_t j, const std::int32_t* acc_top,
                   const std::int32_t* acc_bottom, std::size_t acc_stride, std::size_t c,
                   std::size_t count, int direction) {
    const std::int32_t* top = acc_top + j * acc_stride + c;
    const std::int32_t* bottom = acc_bottom + j * acc_stride + c;
    const __m256i m = direction > 0 ? window_extremes_avx2<true>(top, bottom, count - c)
                                    : window_extremes_avx2<false>(top, bottom, count - c);
    // Pooled blocks store u8 codes, which the stages give as int32 lanes (a float register
    // does not convert to __m256i implicitly: the line does not compile for a float result).
    const __m256i code = column_value_avx2<0>(s, m, j);
    return code;
  }
  /// The 8 int32 lanes of v (0..255) as bytes 0..7 (vpackusdw, vpackuswb: exact on 0..255).
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE static __m128i code_bytes_avx2(__m256i v) {
    const __m128i words =
        _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_packus_epi16(words, words);
  }
  /// to[t * channels + j] = byte t of codes[j], t < n, 4 <= channels <= 8: the 8 x 8 bytes
  /// transposed (unpacks of bytes, words, dwords: pixel t's channels 0..7 in half t % 2 of
  /// px[t / 2]), then an 8-byte store per pixel; its bytes past `channels` land on the next
  /// pixel's, which its own store writes after, and the last pixel stores `channels` bytes
  /// only (so nothing is written past pixel n - 1: (n - 2) channels + 8 <= n channels for
  /// channels >= 4).
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE static void store_interleaved_avx2(const __m128i* codes,
                                                                               std::size_t channels,
                                                                               std::size_t n,
                                                                               std::uint8_t* to) {
    const __m128i a01 = _mm_unpacklo_epi8(codes[0], codes[1]);
    const __m128i a23 = _mm_unpacklo_epi8(codes[2], codes[3]);
    const __m128i a45 = _mm_unpacklo_epi8(codes[4], codes[5]);
    const __m128i a67 = _mm_unpacklo_epi8(codes[6], codes[7]);
    const __m128i b_lo = _mm_unpacklo_epi16(a01, a23), b_hi = _mm_unpackhi_epi16(a01, a23);
    const __m128i c_lo = _mm_unpacklo_epi16(a45, a67), c_hi = _mm_unpackhi_epi16(a45, a67);
    const __m128i px[4] = {_mm_unpacklo_epi32(b_lo, c_lo), _mm_unpackhi_epi32(b_lo, c_lo),
                           _mm_unpacklo_epi32(b_hi, c_hi), _mm_unpackhi_epi32(b_hi, c_hi)};
    for (std::size_t q = 0; q < 4; ++q)
      for (std::size_t h = 0; h < 2; ++h) {
        const std::size_t t = 2 * q + h;
        if (t >= n) return;
        const std::uint64_t bytes = static_cast<std::uint64_t>(
            h == 0 ? _mm_cvtsi128_si64(px[q]) : _mm_extract_epi64(px[q], 1));
        std::uint8_t* p = to + t * channels;
        if (t + 1 < n) {
          std::memcpy(p, &bytes, 8);
        } else {
          const auto low = static_cast<std::uint32_t>(bytes);
          std::memcpy(p, &low, 4);
          for (std::size_t k = 4; k < channels; ++k)
            p[k] = static_cast<std::uint8_t>(bytes >> (8 * k));
        }
      }
  }
  /// column_value at AVX2: every stage but the last, apply_column_avx2.
  template <std::size_t I, class V>
  BITGRAD_TARGET_AVX2 BITGRAD_ALWAYS_INLINE static auto
  column_value_avx2(const std::tuple<Stages...>& s, const V& v, std::size_t j) {
    if constexpr (I + 1 == sizeof...(Stages))
      return v;
    else
      return column_value_avx2<I + 1>(s, std::get<I>(s).apply_column_avx2(v, j), j);
  }
#endif
#if BITGRAD_HAS_SIMD
  /// Lane t: the extreme (max when Rising, else min) of the window of pixels 2t, 2t + 1 of
  /// both rows (pooled_sums), for the 2 L pixels from top, bottom; a register of pixels at or
  /// past `left` is not read (0), readable ones are whole lane batches.
  template <bool Rising>
  BITGRAD_ALWAYS_INLINE static simd_batch<std::int32_t>
  window_extremes(const std::int32_t* top, const std::int32_t* bottom, std::size_t left) {
    using B = simd_batch<std::int32_t>;
    constexpr std::size_t L = B::size;
    auto vertical = [&](std::size_t u) {
      if (u >= left) return B(0);
      const B a = B::load_unaligned(top + u), b = B::load_unaligned(bottom + u);
      if constexpr (Rising)
        return xsimd::max(a, b);
      else
        return xsimd::min(a, b);
    };
    return pair_extremes<Rising>(vertical(0), vertical(L));
  }

  /// Channel j's codes of pooled pixels t < lanes (rows from i0, sums from top, bottom with
  /// `left` pixels in the row from there): the window extremes through every stage but the
  /// last, int32 lanes (a function, not a lambda: GCC kept the lambda out of line and returned
  /// its register through memory).
  BITGRAD_ALWAYS_INLINE static auto pooled_code(const std::tuple<Stages...>& s, std::size_t i0,
                                                std::size_t j, const std::int32_t* top,
                                                const std::int32_t* bottom, std::size_t left,
                                                int direction) {
    using B = simd_batch<std::int32_t>;
    const B m = direction > 0 ? window_extremes<true>(top, bottom, left)
                              : window_extremes<false>(top, bottom, left);
    const auto code = column_value<0>(s, m, i0, j);
    static_assert(std::is_same_v<typename std::decay_t<decltype(code)>::value_type, std::int32_t>,
                  "pooled blocks store u8 codes, which the stages give as int32 lanes");
    return code;
  }

#endif

  /// The product of the directions of every stage but the last (monotone_stage): 1 when the
  /// value the last stage receives never falls as acc rises, -1 when it never rises, 0 when a
  /// stage is not monotone or does not say.
  static int direction_of(const std::tuple<Stages...>& s, std::size_t j) {
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      int d = 1;
      auto times = [&]<std::size_t K>() {
        using S = std::tuple_element_t<K, std::tuple<Stages...>>;
        if constexpr (detail::monotone_stage<S>)
          d *= std::get<K>(s).direction(j);
        else
          d = 0;
      };
      (times.template operator()<I>(), ...);
      return d;
    }
    (std::make_index_sequence<sizeof...(Stages) - 1>{});
  }

#if BITGRAD_HAS_SIMD
  /// column_pairs when the stages are monotone (direction_of = 1 for rising, else -1): the max
  /// of f over a window is f of the window's largest sum when f never falls, of its smallest
  /// when f never rises, so the four sums of a window are reduced first,
  ///
  ///   m(t) = max (rising) or min (falling) of top[2t], top[2t + 1], bottom[2t], bottom[2t + 1],
  ///
  /// and the stages run once per pooled pixel (lanes: pooled pixels t), not once per pixel: the
  /// same bits, a quarter of the arithmetic. A lone last pixel (odd count) goes through
  /// apply_pool_pairs as in the general path, from the extreme of its two sums.
  /// Lane t < L / 2: the extreme of lanes 2t, 2t + 1 of v0; lane L / 2 + t: of lanes 2t, 2t + 1
  /// of v1. Two swizzles, an extreme, two swizzles and a blend where xsimd swizzles int32 lanes
  /// (SSE2, AVX2, AVX-512, aarch64 NEON), else through memory.
  template <bool Rising, class B>
  BITGRAD_ALWAYS_INLINE static B pair_extremes(const B& v0, const B& v1) {
#if XSIMD_WITH_AVX512F || XSIMD_WITH_AVX2 || (XSIMD_WITH_SSE2 && !XSIMD_WITH_AVX) ||               \
    XSIMD_WITH_NEON64
    auto extreme = [](const B& a, const B& b) {
      if constexpr (Rising)
        return xsimd::max(a, b);
      else
        return xsimd::min(a, b);
    };
    using U = xsimd::batch<std::uint32_t, typename B::arch_type>;
    struct swap_pairs { // lane i <- lane i xor 1
      static constexpr std::uint32_t get(std::size_t i, std::size_t) {
        return std::uint32_t(i ^ 1);
      }
    };
    struct evens { // lane i <- lane 2i mod L
      static constexpr std::uint32_t get(std::size_t i, std::size_t n) {
        return std::uint32_t(2 * i % n);
      }
    };
    struct lower_half {
      static constexpr bool get(std::size_t i, std::size_t n) { return i < n / 2; }
    };
    constexpr auto swap = xsimd::make_batch_constant<U, swap_pairs>();
    constexpr auto even = xsimd::make_batch_constant<U, evens>();
    const B p0 = extreme(v0, xsimd::swizzle(v0, swap)), p1 = extreme(v1, xsimd::swizzle(v1, swap));
    return xsimd::select(xsimd::make_batch_bool_constant<B, lower_half>(), xsimd::swizzle(p0, even),
                         xsimd::swizzle(p1, even));
#else
    constexpr std::size_t L = B::size;
    alignas(64) std::int32_t v[2 * L], m[L];
    v0.store_aligned(v), v1.store_aligned(v + L);
    for (std::size_t t = 0; t < L; ++t)
      m[t] = Rising ? std::max(v[2 * t], v[2 * t + 1]) : std::min(v[2 * t], v[2 * t + 1]);
    return B::load_aligned(m);
#endif
  }

  template <bool Rising>
  BITGRAD_ALWAYS_INLINE static void pooled_sums(const std::tuple<Stages...>& s, std::size_t i0,
                                                std::size_t j, const std::int32_t* acc_top,
                                                const std::int32_t* acc_bottom, std::size_t count,
                                                bool whole_lanes) {
    using B = simd_batch<std::int32_t>;
    constexpr std::size_t L = B::size;
    const auto& last = std::get<sizeof...(Stages) - 1>(s);
    auto extreme = [](const auto& a, const auto& b) {
      if constexpr (Rising)
        return xsimd::max(a, b);
      else
        return xsimd::min(a, b);
    };
    auto extreme1 = [](std::int32_t a, std::int32_t b) {
      return Rising ? std::max(a, b) : std::min(a, b);
    };
    const std::size_t pairs = count / 2;
    for (std::size_t c = 0; c < 2 * pairs; c += 2 * L) {
      // vertical[h] lane l = extreme of pixel c + h L + l's two sums (0 past the row), then
      // m lane t = extreme of pixels c + 2t, c + 2t + 1 of vertical.
      B vertical[2];
      for (std::size_t h = 0; h < 2; ++h) {
        const std::size_t u = c + h * L;
        if (u < count && (whole_lanes || u + L <= count)) {
          vertical[h] = extreme(B::load_unaligned(acc_top + u), B::load_unaligned(acc_bottom + u));
        } else {
          alignas(64) std::int32_t part[L];
          for (std::size_t l = 0; l < L; ++l)
            part[l] = u + l < count ? extreme1(acc_top[u + l], acc_bottom[u + l]) : 0;
          vertical[h] = B::load_aligned(part);
        }
      }
      const std::size_t n = std::min(L, pairs - c / 2);
      last.apply_pooled(
          column_value<0>(s, pair_extremes<Rising>(vertical[0], vertical[1]), i0 + c, j), i0 + c, j,
          n);
    }
    if (count % 2) {
      const std::size_t c = count - 1;
      const B v(extreme1(acc_top[c], acc_bottom[c]));
      last.apply_pool_pairs(column_value<0>(s, v, i0 + c, j), i0 + c, j, 1);
    }
  }
#endif

  /// Prepared lanes (the top of this header): the whole lane batches of channels j0 .. j0 +
  /// count - 1 of rows i0 .. i0 + m - 1 (row i0 + r's sums at acc + r * acc_stride), batch by
  /// batch, every stage but the last prepared once per batch. Returns the channels done: a
  /// multiple of the lanes, 0 when a stage has no prepared lanes (the caller runs the rest).
  BITGRAD_ALWAYS_INLINE static std::size_t
  prepared_batches(const std::tuple<Stages...>& s, std::size_t i0, std::size_t m, std::size_t j0,
                   const std::int32_t* acc, std::size_t acc_stride, std::size_t count) {
#if BITGRAD_HAS_SIMD
    using B = simd_batch<std::int32_t>;
    if constexpr (preparable<0, B>()) {
      const auto& last = std::get<sizeof...(Stages) - 1>(s);
      std::size_t c = 0;
      for (; c + B::size <= count; c += B::size) {
        const auto p = prepare_from<0, B>(s, j0 + c);
        using V = decltype(apply_prepared<0>(p, B(0), i0));
        const auto store = prepare_last<V>(last, j0 + c);
        for (std::size_t r = 0; r < m; ++r)
          store.apply(apply_prepared<0>(p, B::load_unaligned(acc + r * acc_stride + c), i0 + r),
                      i0 + r);
      }
      return c;
    }
#endif
    (void)s, (void)i0, (void)m, (void)j0, (void)acc, (void)acc_stride, (void)count;
    return 0;
  }
  /// prepared_batches on runs of rows (rows_in_runs): each lane batch's stages prepared once for
  /// all the runs, not once per run (a flat conv's 64-row block holds 3 runs at 28 pixels a row,
  /// 5 at 14; the preparation's broadcasts and copies cost as much as a few rows).
  template <class Runs>
  BITGRAD_ALWAYS_INLINE static std::size_t
  prepared_batches_in_runs(const std::tuple<Stages...>& s, const Runs& runs, std::size_t j0,
                           const std::int32_t* acc, std::size_t acc_stride, std::size_t count) {
#if BITGRAD_HAS_SIMD
    using B = simd_batch<std::int32_t>;
    if constexpr (preparable<0, B>()) {
      const auto& last = std::get<sizeof...(Stages) - 1>(s);
      std::size_t c = 0;
      for (; c + B::size <= count; c += B::size) {
        const auto p = prepare_from<0, B>(s, j0 + c);
        using V = decltype(apply_prepared<0>(p, B(0), 0));
        const auto store = prepare_last<V>(last, j0 + c);
        runs([&](std::size_t i, std::size_t a, std::size_t n) {
          // Local copies: runs() may keep this lambda out of line, where p and store would be
          // read through its captures, again after every u8 store.
          const auto run_p = p;
          const auto run_store = store;
          const std::int32_t* run_acc = acc + a * acc_stride + c;
          for (std::size_t r = 0; r < n; ++r)
            run_store.apply(
                apply_prepared<0>(run_p, B::load_unaligned(run_acc + r * acc_stride), i + r),
                i + r);
        });
      }
      return c;
    }
#endif
    (void)s, (void)runs, (void)j0, (void)acc, (void)acc_stride, (void)count;
    return 0;
  }
  /// The last stage for lanes V of channels j0..: its prepared_store<V>(j0) where it has one
  /// (detail::prepared_last_stage: its parameters as values, which stay in registers across the
  /// rows' u8 stores, where the stage's own members are reloaded after each), else a call of
  /// its apply(v, i, j0).
  template <class V, class Last>
  BITGRAD_ALWAYS_INLINE static auto prepare_last(const Last& last, std::size_t j0) {
    if constexpr (detail::prepared_last_stage<Last, V>) {
      return last.template prepared_store<V>(j0);
    } else {
      struct calls {
        const Last& last;
        std::size_t j0;
        BITGRAD_ALWAYS_INLINE void apply(const V& v, std::size_t i) const { last.apply(v, i, j0); }
      };
      return calls{last, j0};
    }
  }
  /// True when stages I .. (all but the last) have prepared lanes for their input lanes In.
  template <std::size_t I, class In>
  static constexpr bool preparable() {
    if constexpr (I + 1 == sizeof...(Stages)) {
      return true;
    } else {
      using S = std::tuple_element_t<I, std::tuple<Stages...>>;
      if constexpr (!detail::prepared_stage<S, In>) {
        return false;
      } else {
        using Out = decltype(std::declval<const S&>().template prepared<In>(0).apply(
            std::declval<const In&>(), std::size_t(0)));
        return preparable<I + 1, Out>();
      }
    }
  }
  /// The prepared lanes of stages I .. (all but the last) at channel j0, as a tuple.
  template <std::size_t I, class In>
  BITGRAD_ALWAYS_INLINE static auto prepare_from(const std::tuple<Stages...>& s, std::size_t j0) {
    if constexpr (I + 1 == sizeof...(Stages)) {
      return std::tuple<>{};
    } else {
      const auto p = std::get<I>(s).template prepared<In>(j0);
      using Out = decltype(p.apply(std::declval<const In&>(), std::size_t(0)));
      return std::tuple_cat(std::make_tuple(p), prepare_from<I + 1, Out>(s, j0));
    }
  }
  /// The prepared stages I.. of p on v, row i: the value the last stage receives.
  template <std::size_t I, class P, class V>
  BITGRAD_ALWAYS_INLINE static auto apply_prepared(const P& p, const V& v, std::size_t i) {
    if constexpr (I == std::tuple_size_v<P>)
      return v;
    else
      return apply_prepared<I + 1>(p, std::get<I>(p).apply(v, i), i);
  }

  BITGRAD_ALWAYS_INLINE static void row_of(const std::tuple<Stages...>& s, std::size_t i,
                                           std::size_t j0, const std::int32_t* acc,
                                           std::size_t count) {
    std::size_t c = 0;
#if BITGRAD_HAS_SIMD
    using B = simd_batch<std::int32_t>;
    for (; c + B::size <= count; c += B::size)
      run_lanes<0>(s, B::load_unaligned(acc + c), i, j0 + c);
#endif
    for (; c < count; ++c) run<0>(s, acc[c], i, j0 + c);
  }
  const auto& last_stage() const {
    return std::get<sizeof...(Stages) - 1>(stages);
  }
  /// Every stage but the last on column lanes v: the value the last stage stores.
  template <std::size_t I, class V>
  BITGRAD_ALWAYS_INLINE static auto column_value(const std::tuple<Stages...>& s, const V& v,
                                                 std::size_t i0, std::size_t j) {
    if constexpr (I + 1 == sizeof...(Stages))
      return v;
    else
      return column_value<I + 1>(s, std::get<I>(s).apply_column(v, i0, j), i0, j);
  }
  template <std::size_t I, class V>
  BITGRAD_ALWAYS_INLINE static void run_column(const std::tuple<Stages...>& s, const V& v,
                                               std::size_t i0, std::size_t j, std::size_t n) {
    if constexpr (I + 1 == sizeof...(Stages))
      std::get<I>(s).apply_column(v, i0, j, n);
    else
      run_column<I + 1>(s, std::get<I>(s).apply_column(v, i0, j), i0, j, n);
  }
  template <std::size_t I, class V>
  BITGRAD_ALWAYS_INLINE static void run(const std::tuple<Stages...>& s, V v, std::size_t i,
                                        std::size_t j) {
    if constexpr (I + 1 == sizeof...(Stages))
      std::get<I>(s)(v, i, j);
    else
      run<I + 1>(s, std::get<I>(s)(v, i, j), i, j);
  }
  template <std::size_t I, class V>
  BITGRAD_ALWAYS_INLINE static void run_lanes(const std::tuple<Stages...>& s, const V& v,
                                              std::size_t i, std::size_t j0) {
    if constexpr (I + 1 == sizeof...(Stages))
      std::get<I>(s).apply(v, i, j0);
    else
      run_lanes<I + 1>(s, std::get<I>(s).apply(v, i, j0), i, j0);
  }
  template <std::size_t I, class V>
  BITGRAD_ALWAYS_INLINE static void run_partial(const std::tuple<Stages...>& s, const V& v,
                                                std::size_t i, std::size_t j0, std::size_t n) {
    if constexpr (I + 1 == sizeof...(Stages))
      std::get<I>(s).apply_partial(v, i, j0, n);
    else
      run_partial<I + 1>(s, std::get<I>(s).apply(v, i, j0), i, j0, n);
  }
};

/// A pipeline whose rows run their tail as one partial lane batch (see "Padded rows" at the
/// top): the caller pads the per-channel arrays to padded_length(channels).
template <class... Stages>
struct padded_pipeline : pipeline<Stages...> {
  using base = pipeline<Stages...>;

  BITGRAD_ALWAYS_INLINE void row(std::size_t i, std::size_t j0, const std::int32_t* acc,
                                 std::size_t count) const
      requires(detail::lane_stage<Stages>&&...) {
    const std::tuple<Stages...> s = this->stages; // see pipeline::row
    padded_row_of(s, i, j0, acc, count);
  }

  /// pipeline::rows with this pipeline's rows.
  BITGRAD_ALWAYS_INLINE void rows(std::size_t i0, std::size_t m, std::size_t j0,
                                  const std::int32_t* acc, std::size_t acc_stride,
                                  std::size_t count) const
      requires(detail::lane_stage<Stages>&&...) {
    const std::tuple<Stages...> s = this->stages; // see pipeline::row
    const std::size_t c = base::prepared_batches(s, i0, m, j0, acc, acc_stride, count);
    if (c < count)
      for (std::size_t r = 0; r < m; ++r)
        padded_row_of(s, i0 + r, j0 + c, acc + r * acc_stride + c, count - c);
  }

  /// pipeline::rows_in_runs with this pipeline's rows.
  template <class Runs>
  BITGRAD_ALWAYS_INLINE void rows_in_runs(const Runs& runs, std::size_t j0, const std::int32_t* acc,
                                          std::size_t acc_stride, std::size_t count) const
      requires(detail::lane_stage<Stages>&&...) {
    const std::tuple<Stages...> s = this->stages; // see pipeline::row
    const std::size_t c = base::prepared_batches_in_runs(s, runs, j0, acc, acc_stride, count);
    if (c < count)
      runs([&](std::size_t i, std::size_t a, std::size_t n) {
        const std::int32_t* run_acc = acc + a * acc_stride;
        for (std::size_t r = 0; r < n; ++r)
          padded_row_of(s, i + r, j0 + c, run_acc + r * acc_stride + c, count - c);
      });
  }

private:
  BITGRAD_ALWAYS_INLINE static void padded_row_of(const std::tuple<Stages...>& s, std::size_t i,
                                                  std::size_t j0, const std::int32_t* acc,
                                                  std::size_t count) {
#if BITGRAD_HAS_SIMD
    if constexpr (can_pad()) {
      using B = simd_batch<std::int32_t>;
      std::size_t c = 0;
      for (; c + B::size <= count; c += B::size)
        base::template run_lanes<0>(s, B::load_unaligned(acc + c), i, j0 + c);
      if (c < count) {
        alignas(64) std::int32_t tail[B::size] = {};
        std::memcpy(tail, acc + c, (count - c) * sizeof(std::int32_t));
        base::template run_partial<0>(s, B::load_aligned(tail), i, j0 + c, count - c);
      }
      return;
    }
#endif
    base::row_of(s, i, j0, acc, count);
  }

  /// Every stage but the last marked `padded`, the last one with apply_partial.
  static constexpr bool can_pad() {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      using last = std::tuple_element_t<sizeof...(Stages) - 1, std::tuple<Stages...>>;
      return ((I + 1 == sizeof...(Stages) ||
               detail::padded_stage<std::tuple_element_t<I, std::tuple<Stages...>>>)&&...) &&
             detail::partial_store<last>;
    }
    (std::index_sequence_for<Stages...>{});
  }
};

template <class... Stages>
pipeline<Stages...> make_pipeline(Stages... s) {
  return pipeline<Stages...>{std::tuple<Stages...>(std::move(s)...)};
}

/// make_pipeline whose rows run their tail in lanes: scale_bias's arrays must be readable to
/// padded_length(channels) (see "Padded rows" at the top).
template <class... Stages>
padded_pipeline<Stages...> make_padded_pipeline(Stages... s) {
  return padded_pipeline<Stages...>{{std::tuple<Stages...>(std::move(s)...)}};
}

} // namespace bitgrad::output
