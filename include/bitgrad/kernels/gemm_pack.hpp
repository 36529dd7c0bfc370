// GEMM packing: copies a block of op(A) or op(B) into the one layout the micro-kernel reads,
// whatever the transposition and leading dimension, and the aligned thread-local buffers that
// hold the copies.
//
// A block (mc x kc of op(A)) -> ceil(mc / MR) micro-panels, each kc columns of MR values:
//
//   op(A) rows i..i+MR-1        packed: [a(i,0) a(i+1,0) .. a(i+MR-1,0)] [a(i,1) ..] .. [.. a(i+MR-1,kc-1)]
//
// B block (kc x nc of op(B)) -> ceil(nc / NR) micro-panels, each kc rows of NR values:
//
//   op(B) cols j..j+NR-1        packed: [b(0,j) b(0,j+1) .. b(0,j+NR-1)] [b(1,j) ..] .. [.. b(kc-1,j+NR-1)]
//
// Rows past mc and columns past nc in the last micro-panel are zero, so the micro-kernel always
// runs full tiles; the store writes only the valid part.
#pragma once

#include <bitgrad/kernels/transpose.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

namespace bitgrad::detail {

/// dst[p * W + r] = src[r * ld + p] for r < rows, p < kc; zero for rows <= r < W: one W x kc
/// micro-panel from `rows` rows of length kc. Runs in chunks of 16 columns so that each source
/// cache line is read once and the chunk of dst (16 * W values) stays in L1, even when the rows
/// are a multiple of 4 KiB apart and would evict each other from a set-associative L1.
template <std::size_t W, class T>
void gemm_pack_transposed(const T* src, std::size_t ld, std::size_t rows, std::size_t kc, T* dst) {
  constexpr std::size_t chunk = 16;
  for (std::size_t p0 = 0; p0 < kc; p0 += chunk) {
    const std::size_t len = std::min(chunk, kc - p0);
    T* const out = dst + p0 * W;
    for (std::size_t r = 0; r < rows; ++r) {
      const T* const in = src + r * ld + p0;
      if (len == chunk) {
        for (std::size_t p = 0; p < chunk; ++p) out[p * W + r] = in[p];
      } else {
        for (std::size_t p = 0; p < len; ++p) out[p * W + r] = in[p];
      }
    }
    for (std::size_t r = rows; r < W; ++r) {
      for (std::size_t p = 0; p < len; ++p) out[p * W + r] = T(0);
    }
  }
}

/// Packs the mc x kc block of op(A) whose element (i, p) is `a[i * lda + p]` (transpose::no) or
/// `a[p * lda + i]` (transpose::yes) into micro-panels of MR rows at `dst`.
template <std::size_t MR, class T>
void gemm_pack_a(transpose trans, const T* a, std::size_t lda, std::size_t mc, std::size_t kc,
                 T* dst) {
  for (std::size_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const std::size_t rows = std::min(MR, mc - i0);
    if (trans == transpose::yes) {
      // Columns of op(A) are rows of A: contiguous runs of MR.
      const T* src = a + i0;
      if (rows == MR) {
        for (std::size_t p = 0; p < kc; ++p) std::memcpy(dst + p * MR, src + p * lda, sizeof(T) * MR);
      } else {
        for (std::size_t p = 0; p < kc; ++p) {
          for (std::size_t i = 0; i < rows; ++i) dst[p * MR + i] = src[p * lda + i];
          for (std::size_t i = rows; i < MR; ++i) dst[p * MR + i] = T(0);
        }
      }
    } else {
      // Rows of op(A) are rows of A: a transpose.
      gemm_pack_transposed<MR>(a + i0 * lda, lda, rows, kc, dst);
    }
  }
}

/// Packs the kc x nc block of op(B) whose element (p, j) is `b[p * ldb + j]` (transpose::no) or
/// `b[j * ldb + p]` (transpose::yes) into micro-panels of NR columns at `dst`.
template <std::size_t NR, class T>
void gemm_pack_b(transpose trans, const T* b, std::size_t ldb, std::size_t kc, std::size_t nc,
                 T* dst) {
  for (std::size_t j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
    const std::size_t cols = std::min(NR, nc - j0);
    if (trans == transpose::no) {
      // Rows of op(B) are rows of B: contiguous runs of NR.
      const T* src = b + j0;
      if (cols == NR) {
        for (std::size_t p = 0; p < kc; ++p) std::memcpy(dst + p * NR, src + p * ldb, sizeof(T) * NR);
      } else {
        for (std::size_t p = 0; p < kc; ++p) {
          for (std::size_t j = 0; j < cols; ++j) dst[p * NR + j] = src[p * ldb + j];
          for (std::size_t j = cols; j < NR; ++j) dst[p * NR + j] = T(0);
        }
      }
    } else {
      // Rows of op(B) are columns of B: a transpose.
      gemm_pack_transposed<NR>(b + j0 * ldb, ldb, cols, kc, dst);
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

/// The calling thread's pack buffers for A (`which` = 0) and B (`which` = 1).
template <class T, std::size_t Align>
gemm_pack_buffer<T, Align>& gemm_thread_buffer(int which) {
  thread_local gemm_pack_buffer<T, Align> buffers[2];
  return buffers[which];
}

} // namespace bitgrad::detail
