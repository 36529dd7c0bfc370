// int8 x int8 -> int32 GEMM with an output stage, for the integer inference path.
//
// Terminology and layout ("NT": both operands run along k, as dot products):
//
//            k                          k
//   A  +-----------+ m rows     B  +-----------+ n rows       C(i, j) = sum_p A(i, p) B(j, p)
//      | a_i . . . |               | b_j . . . |              int32, exact (|C| <= 127^2 k)
//      +-----------+               +-----------+
//   int8, row i at a + i*lda     int8, row j at b + j*ldb
//
//   linear: A = quantized input x (batch x in),  B = widened weight codes W (out x in)
//   conv2d: A = im2row of one image (pixels x K), B = filters (out x K), C written transposed
//
// The output stage is a small functor `void operator()(std::size_t i, std::size_t j,
// std::int32_t acc) const` that turns the exact int32 sum into the result (requantize: scale,
// bias, clamp) and stores it wherever it belongs; see deploy::requantize below.
//
// Kernel: both operands are widened to int32 once per call into zero-padded rows whose length
// is a multiple of the register width (so there is no ragged tail in the inner loop), then a
// 2 x 4 register tile of simd_batch<int32_t> accumulators runs the dot products; leftover rows
// and columns take the 1 x 1 path. ref::int8_gemm_nt is the plain triple loop it is tested
// against. Scratch buffers are thread_local: concurrent calls from several threads are safe.
#pragma once

#include <bitgrad/core/simd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::deploy {

namespace ref {

/// C(i, j) = sum_p a[i*lda + p] * b[j*ldb + p], handed to out(i, j, acc).
template <class Out>
void int8_gemm_nt(std::size_t m, std::size_t n, std::size_t k, const std::int8_t* a,
                  std::size_t lda, const std::int8_t* b, std::size_t ldb, const Out& out) {
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      std::int32_t acc = 0;
      for (std::size_t p = 0; p < k; ++p)
        acc += std::int32_t(a[i * lda + p]) * std::int32_t(b[j * ldb + p]);
      out(i, j, acc);
    }
}

} // namespace ref

namespace detail {

inline std::vector<std::int32_t>& int8_gemm_buffer(int which) {
  thread_local std::vector<std::int32_t> buffers[2];
  return buffers[which];
}

/// Rows of src (int8, stride ld) widened into dst (int32, stride kp, zero-padded).
inline void widen_rows(std::size_t rows, std::size_t k, std::size_t kp, const std::int8_t* src,
                       std::size_t ld, std::int32_t* dst) {
  for (std::size_t r = 0; r < rows; ++r) {
    const std::int8_t* s = src + r * ld;
    std::int32_t* d = dst + r * kp;
    for (std::size_t p = 0; p < k; ++p) d[p] = s[p];
    std::fill(d + k, d + kp, 0);
  }
}

/// Sum of the lanes (outside the inner loop; portable across xsimd's hadd / reduce_add names).
template <class B>
std::int32_t lane_sum(const B& v) {
  alignas(64) std::int32_t lanes[B::size];
  v.store_aligned(lanes);
  std::int32_t s = 0;
  for (std::size_t i = 0; i < B::size; ++i) s += lanes[i];
  return s;
}

} // namespace detail

/// Same contract as ref::int8_gemm_nt; see the top of this header.
template <class Out>
void int8_gemm_nt(std::size_t m, std::size_t n, std::size_t k, const std::int8_t* a,
                  std::size_t lda, const std::int8_t* b, std::size_t ldb, const Out& out) {
  if (m == 0 || n == 0) return;
  if constexpr (!BITGRAD_HAS_SIMD) {
    ref::int8_gemm_nt(m, n, k, a, lda, b, ldb, out);
  } else {
    using batch = simd_batch<std::int32_t>;
    constexpr std::size_t lanes = batch::size;
    const std::size_t kp = (k + lanes - 1) / lanes * lanes;
    std::vector<std::int32_t>& abuf = detail::int8_gemm_buffer(0);
    std::vector<std::int32_t>& bbuf = detail::int8_gemm_buffer(1);
    constexpr std::size_t block_rows = 64;
    const std::size_t mb = std::min(m, block_rows);
    if (abuf.size() < mb * kp) abuf.resize(mb * kp);
    if (bbuf.size() < n * kp) bbuf.resize(n * kp);
    detail::widen_rows(n, k, kp, b, ldb, bbuf.data());
    const std::int32_t* bw = bbuf.data();

    for (std::size_t i0 = 0; i0 < m; i0 += block_rows) {
      const std::size_t rows = std::min(block_rows, m - i0);
      detail::widen_rows(rows, k, kp, a + i0 * lda, lda, abuf.data());
      const std::int32_t* aw = abuf.data();
      std::size_t i = 0;
      for (; i + 2 <= rows; i += 2) {
        const std::int32_t* a0 = aw + i * kp;
        const std::int32_t* a1 = a0 + kp;
        std::size_t j = 0;
        for (; j + 4 <= n; j += 4) {
          const std::int32_t* b0 = bw + j * kp;
          batch c00(0), c01(0), c02(0), c03(0), c10(0), c11(0), c12(0), c13(0);
          for (std::size_t p = 0; p < kp; p += lanes) {
            const batch x0 = batch::load_unaligned(a0 + p), x1 = batch::load_unaligned(a1 + p);
            const batch y0 = batch::load_unaligned(b0 + p);
            const batch y1 = batch::load_unaligned(b0 + kp + p);
            const batch y2 = batch::load_unaligned(b0 + 2 * kp + p);
            const batch y3 = batch::load_unaligned(b0 + 3 * kp + p);
            c00 += x0 * y0;
            c01 += x0 * y1;
            c02 += x0 * y2;
            c03 += x0 * y3;
            c10 += x1 * y0;
            c11 += x1 * y1;
            c12 += x1 * y2;
            c13 += x1 * y3;
          }
          const std::size_t r = i0 + i;
          out(r, j, detail::lane_sum(c00));
          out(r, j + 1, detail::lane_sum(c01));
          out(r, j + 2, detail::lane_sum(c02));
          out(r, j + 3, detail::lane_sum(c03));
          out(r + 1, j, detail::lane_sum(c10));
          out(r + 1, j + 1, detail::lane_sum(c11));
          out(r + 1, j + 2, detail::lane_sum(c12));
          out(r + 1, j + 3, detail::lane_sum(c13));
        }
        for (; j < n; ++j) {
          const std::int32_t* b0 = bw + j * kp;
          batch c0(0), c1(0);
          for (std::size_t p = 0; p < kp; p += lanes) {
            const batch y = batch::load_unaligned(b0 + p);
            c0 += batch::load_unaligned(a0 + p) * y;
            c1 += batch::load_unaligned(a1 + p) * y;
          }
          out(i0 + i, j, detail::lane_sum(c0));
          out(i0 + i + 1, j, detail::lane_sum(c1));
        }
      }
      for (; i < rows; ++i) {
        const std::int32_t* a0 = aw + i * kp;
        for (std::size_t j = 0; j < n; ++j) {
          const std::int32_t* b0 = bw + j * kp;
          batch c(0);
          for (std::size_t p = 0; p < kp; p += lanes)
            c += batch::load_unaligned(a0 + p) * batch::load_unaligned(b0 + p);
          out(i0 + i, j, detail::lane_sum(c));
        }
      }
    }
  }
}

/// The requantizing output stage: value = acc * scale[j] + bias[j] (bias nullable), optionally
/// clamped at 0 (a fused ReLU), stored as float at y[i * row_stride + j * col_stride].
/// scale[j] = input scale * weight scale of output channel j (* folded channel scale).
struct requantize {
  const float* scale;
  const float* bias;
  float* y;
  std::size_t row_stride, col_stride;
  bool relu = false;
  void operator()(std::size_t i, std::size_t j, std::int32_t acc) const {
    const float b = bias ? bias[j] : 0.0f;
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    // One rounding wherever this is inlined: GCC contracts a * s + b into an FMA at some call
    // sites of int8_gemm_nt and not at others (-ffp-contract=fast, the GNU default), so one
    // image's logits differed in the last bit between a batch of 1 and a larger batch.
    float v = std::fma(static_cast<float>(acc), scale[j], b);
#else
    float v = static_cast<float>(acc) * scale[j] + b; // no FMA instruction: never contracted
#endif
    if (relu && v < 0.0f) v = 0.0f;
    y[i * row_stride + j * col_stride] = v;
  }
};

/// Symmetric per-tensor int8 quantization of activations: q = clamp(round(x / s), -127, 127).
inline void quantize_int8(std::size_t n, const float* x, float inv_scale, std::int8_t* q) {
  for (std::size_t i = 0; i < n; ++i) {
    float v = std::nearbyint(x[i] * inv_scale);
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : (v == v ? v : 0.0f)); // NaN -> 0
    q[i] = static_cast<std::int8_t>(v);
  }
}

} // namespace bitgrad::deploy
