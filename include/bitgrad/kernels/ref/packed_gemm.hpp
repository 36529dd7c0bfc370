// Reference packed GEMM: the plain triple loop over codes read one at a time with the layout
// rules (packed_weights::code_at), the oracle for every path of kernels/packed/packed_gemm.hpp.
#pragma once

#include <bitgrad/kernels/packed/packed_weights.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitgrad::ref {

/// acc(i, j) = sum_p (a[i * lda + p] - a_zero) * w(j, p), in int64 then narrowed (exact for
/// depth <= packed_max_depth), handed to out(i, j, acc) for i < m, j < channels, in that order.
template <class Out>
void packed_gemm(std::size_t m, const std::uint8_t* a, std::size_t lda, std::uint8_t a_zero,
                 const packed_weights& w, const Out& out) {
  const std::size_t n = w.channels(), depth = w.depth();
  // Class and place in the class of every channel.
  std::vector<std::uint32_t> order(n);
  w.channel_order(order.data());
  std::vector<int> bits(n);
  std::vector<std::size_t> member(n);
  for (int k = 1; k <= packed_max_bits; ++k)
    for (std::size_t v = 0; v < w.class_channels(k); ++v) {
      const std::uint32_t j = order[w.class_begin(k) + v];
      bits[j] = k;
      member[j] = v;
    }
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      std::int64_t acc = 0;
      for (std::size_t p = 0; p < depth; ++p)
        acc += (std::int64_t(a[i * lda + p]) - std::int64_t(a_zero)) *
               std::int64_t(w.code_at(bits[j], member[j], p));
      out(i, j, static_cast<std::int32_t>(acc));
    }
}

/// packed_gemm for one activation row.
template <class Out>
void packed_gemv(const std::uint8_t* x, std::uint8_t x_zero, const packed_weights& w,
                 const Out& out) {
  ref::packed_gemm(1, x, w.depth(), x_zero, w, out);
}

} // namespace bitgrad::ref
