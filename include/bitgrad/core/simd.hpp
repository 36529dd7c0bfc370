// The one place bitgrad includes xsimd.
//
// bitgrad compiles its kernels for the instruction set the compiler targets (xsimd's
// `default_arch`): SSE2 with plain -O2 on x86-64, AVX2 / AVX-512 with -march=native.
// `simd_arch` is that tag; kernels are written on `simd_batch<T> = xsimd::batch<T, simd_arch>`.
// Where xsimd has no architecture (BITGRAD_HAS_SIMD == 0) the kernels fall back to the
// scalar reference twins in bitgrad::ref.
#pragma once

#include <cstddef>

#if __has_include(<xsimd/xsimd.hpp>)
// GCC 12 reports -Wuninitialized / -Wmaybe-uninitialized inside its own AVX-512 intrinsics
// (the self-initialised `__Y = __Y` of _mm512_undefined_ps, GCC bug 105593) wherever they are
// inlined. The warning's location is the intrinsic header, so silencing it around the one
// include that pulls those headers in fixes it without hiding anything in bitgrad's code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#else
#error "bitgrad needs xsimd >= 8.1 (Debian: libxsimd-dev)"
#endif

namespace bitgrad {

#if defined(BITGRAD_NO_SIMD)
#define BITGRAD_HAS_SIMD 0
#else
#define BITGRAD_HAS_SIMD 1
#endif

/// The instruction set the kernels are compiled for.
using simd_arch = xsimd::default_arch;

/// One SIMD register of T on simd_arch.
template <class T>
using simd_batch = xsimd::batch<T, simd_arch>;

/// Lanes of T in one register on simd_arch (1 when SIMD is disabled).
template <class T>
inline constexpr std::size_t simd_lanes = BITGRAD_HAS_SIMD ? simd_batch<T>::size : 1;

/// Name of the compiled instruction set, for benchmark and test output ("avx512f", "sse2", ...).
inline const char* simd_arch_name() {
  return simd_arch::name();
}

} // namespace bitgrad
