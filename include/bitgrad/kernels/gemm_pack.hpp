// GEMM packing: copies a block of op(A) or op(B) into the one layout the micro-kernel reads,
// whatever the transposition and leading dimension, and the aligned thread-local buffers that
// hold the copies.
//
// A block (mc x kc of op(A)) -> ceil(mc / MR) micro-panels, each kc columns of MR values:
//
//   op(A) rows i..i+MR-1        packed: [a(i,0) a(i+1,0) .. a(i+MR-1,0)] [a(i,1) ..] .. [..
//   a(i+MR-1,kc-1)]
//
// B block (kc x nc of op(B)) -> ceil(nc / NR) micro-panels, each kc rows of NR values:
//
//   op(B) cols j..j+NR-1        packed: [b(0,j) b(0,j+1) .. b(0,j+NR-1)] [b(1,j) ..] .. [..
//   b(kc-1,j+NR-1)]
//
// Rows past mc and columns past nc in the last micro-panel are zero, so the micro-kernel always
// runs full tiles; the store writes only the valid part.
#pragma once

#include <bitgrad/kernels/gemm_transpose.hpp>
#include <bitgrad/kernels/transpose.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

namespace bitgrad::detail {

/// dst[(r / W) * W * lines + p * W + r % W] = src[p * ld + r] for p < lines, r < len, zero up to
/// the next multiple of W: `lines` rows of length `len` dealt out to micro-panels of width W.
/// Each source row is read front to back, so the hardware prefetcher follows one stream.
template <std::size_t W, class T>
void gemm_pack_runs(const T* src, std::size_t ld, std::size_t lines, std::size_t len, T* dst) {
  const std::size_t full = len / W * W;
  for (std::size_t p = 0; p < lines; ++p) {
    const T* const in = src + p * ld;
    T* out = dst + p * W;
    for (std::size_t r = 0; r < full; r += W, out += W * lines)
      std::memcpy(out, in + r, sizeof(T) * W);
    if (full < len) {
      std::size_t r = 0;
      for (; r < len - full; ++r) out[r] = in[full + r];
      for (; r < W; ++r) out[r] = T(0);
    }
  }
}

/// dst[p * W + r] = src[r * ld + p] for rows [r0, r1) and columns [p0, p1), element by element
/// in chunks of 32 columns: each source cache line is read once, and the stretch of dst being
/// written stays in L1 even when the rows are a multiple of 4 KiB apart (and would evict each
/// other from a set-associative L1).
template <std::size_t W, class T>
void gemm_pack_transposed_scalar(const T* src, std::size_t ld, std::size_t r0, std::size_t r1,
                                 std::size_t p0, std::size_t p1, T* dst) {
  constexpr std::size_t chunk = 32;
  for (std::size_t pc = p0; pc < p1; pc += chunk) {
    const std::size_t len = std::min(chunk, p1 - pc);
    for (std::size_t r = r0; r < r1; ++r) {
      const T* const in = src + r * ld + pc;
      T* const out = dst + pc * W + r;
      if (len == chunk) {
        for (std::size_t p = 0; p < chunk; ++p) out[p * W] = in[p];
      } else {
        for (std::size_t p = 0; p < len; ++p) out[p * W] = in[p];
      }
    }
  }
}

/// Rows [r, ...) of gemm_pack_transposed in S x S register squares (gemm_transpose.hpp), then in
/// smaller squares down to 16-byte registers; returns the first row left for the scalar loop.
/// Row block by row block, so that each of the S source rows is read as one stream.
template <std::size_t S, std::size_t W, class T>
std::size_t gemm_pack_transposed_squares(const T* src, std::size_t ld, std::size_t r,
                                         std::size_t rows, std::size_t kc, T* dst) {
  if constexpr (S * sizeof(T) >= 16) {
    const std::size_t whole = kc / S * S;
    for (; r + S <= rows; r += S) {
      for (std::size_t p = 0; p < whole; p += S) {
        gemm_transpose_square<T, S>(src + r * ld + p, ld, dst + p * W + r, W);
      }
      gemm_pack_transposed_scalar<W>(src, ld, r, r + S, whole, kc, dst);
    }
    return gemm_pack_transposed_squares<S / 2, W>(src, ld, r, rows, kc, dst);
  } else {
    return r;
  }
}

/// dst[p * W + r] = src[r * ld + p] for r < rows, p < kc; zero for rows <= r < W: one W x kc
/// micro-panel from `rows` rows of length kc (a transpose).
template <std::size_t W, class T>
void gemm_pack_transposed(const T* src, std::size_t ld, std::size_t rows, std::size_t kc, T* dst) {
  const std::size_t r =
      gemm_pack_transposed_squares<simd_batch<T>::size, W>(src, ld, 0, rows, kc, dst);
  gemm_pack_transposed_scalar<W>(src, ld, r, rows, 0, kc, dst);
  if (rows < W) {
    for (std::size_t p = 0; p < kc; ++p) {
      for (std::size_t i = rows; i < W; ++i) dst[p * W + i] = T(0);
    }
  }
}

/// Packs the mc x kc block of op(A) whose element (i, p) is `a[i * lda + p]` (transpose::no) or
/// `a[p * lda + i]` (transpose::yes) into micro-panels of MR rows at `dst`.
template <std::size_t MR, class T>
void gemm_pack_a(transpose trans, const T* a, std::size_t lda, std::size_t mc, std::size_t kc,
                 T* dst) {
  if (trans == transpose::no) {
    // Rows of op(A) are rows of A: one transpose per micro-panel.
    for (std::size_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
      gemm_pack_transposed<MR>(a + i0 * lda, lda, std::min(MR, mc - i0), kc, dst);
    }
  } else {
    // Columns of op(A) are rows of A: each is read once, front to back, and dealt out to the
    // micro-panels in runs of MR.
    gemm_pack_runs<MR>(a, lda, kc, mc, dst);
  }
}

/// Packs the kc x nc block of op(B) whose element (p, j) is `b[p * ldb + j]` (transpose::no) or
/// `b[j * ldb + p]` (transpose::yes) into micro-panels of NR columns at `dst`.
template <std::size_t NR, class T>
void gemm_pack_b(transpose trans, const T* b, std::size_t ldb, std::size_t kc, std::size_t nc,
                 T* dst) {
  if (trans == transpose::no) {
    // Rows of op(B) are rows of B: each is read once, front to back, and dealt out to the
    // micro-panels in runs of NR.
    gemm_pack_runs<NR>(b, ldb, kc, nc, dst);
  } else {
    // Rows of op(B) are columns of B: one transpose per micro-panel.
    for (std::size_t j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
      gemm_pack_transposed<NR>(b + j0 * ldb, ldb, std::min(NR, nc - j0), kc, dst);
    }
  }
}

/// A growable buffer aligned to `Align` bytes. It only grows, so a thread that packs the same
/// block sizes again allocates nothing.
template <class T, std::size_t Align>
class gemm_pack_buffer {
public:
  T* reserve(std::size_t count) {
    if (count > capacity_) {
      data_.reset(static_cast<T*>(::operator new[](count * sizeof(T), std::align_val_t{Align})));
      capacity_ = count;
    }
    return data_.get();
  }

private:
  struct release {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t{Align}); }
  };
  std::unique_ptr<T[], release> data_;
  std::size_t capacity_ = 0;
};

/// The calling thread's buffers: packed A (`which` = 0), packed B (1), inner-product sums (2).
template <class T, std::size_t Align>
gemm_pack_buffer<T, Align>& gemm_thread_buffer(std::size_t which) {
  thread_local gemm_pack_buffer<T, Align> buffers[3];
  return buffers[which];
}

} // namespace bitgrad::detail
