// Instruction-set tags of the packed low-bit kernels and the run-time choice among them.
//
// Each optimised path of kernels/packed/ is a tag type (as xsimd's architectures are) and every
// per-ISA function is an overload taking that tag, defined in that ISA's header
// (packed_sse2.hpp, packed_avx2.hpp, ...):
//
//   tag            instructions used                               needs (cpuid / hwcap)
//   isa::sse2      pmaddwd on a 16-bit weight panel                  x86-64 baseline
//   isa::avx2      vpmaddubsw + vpmaddwd (exact, see packed_avx2)    AVX2 + OS YMM state
//   isa::avx_vnni  vpdpbusd on 256-bit registers (VEX encoding)      AVX-VNNI + AVX2
//   isa::avx512_vnni  vpdpbusd on 512-bit registers                  AVX512F/BW/VL + VNNI + ZMM
//   isa::neon      vmulq_s16 + vpadalq_s16 on a 16-bit panel         aarch64 baseline
//   isa::neon_dot  sdot (vdotq_laneq_s32)                            aarch64 + asimddp
//
// One binary, compiled with plain -O2, carries every path of its architecture: the functions of
// a path carry GCC/Clang's per-function `__attribute__((target("...")))` (BITGRAD_TARGET_*
// below), so the compiler emits those instructions in them and only there, whatever the
// command-line -m flags. Nothing with such an attribute may be called before best_int_isa()
// (or int_isa_supported) has said the CPU runs it. Why intrinsics and not xsimd batches: xsimd
// 8.1 defines batch<T, avx2> only when the whole translation unit is compiled with -mavx2, and
// has no VNNI architecture; the tags and the dispatch mirror xsimd's, the operations are
// intrinsics. Compilers too old for an ISA leave that path out (int_isa_compiled says which).
//
// The CPU check reads cpuid and xgetbv itself (xsimd 8.1's available_architectures() knows
// neither VNNI nor whether the OS saves ZMM state); on aarch64 Linux it reads getauxval.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define BITGRAD_PACKED_X86 1
#include <cpuid.h>
#else
#define BITGRAD_PACKED_X86 0
#endif

#if defined(__aarch64__)
#define BITGRAD_PACKED_ARM64 1
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#else
#define BITGRAD_PACKED_ARM64 0
#endif

// The target attributes of each path (GCC >= 11 or Clang >= 12 for AVX-VNNI; the others are
// older than C++20 support).
#if BITGRAD_PACKED_X86
#define BITGRAD_TARGET_SSE2 __attribute__((target("sse2")))
#define BITGRAD_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define BITGRAD_TARGET_AVX512_VNNI                                                                 \
  __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#if (defined(__clang__) && __clang_major__ >= 12) ||                                               \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define BITGRAD_PACKED_HAS_AVX_VNNI 1
#define BITGRAD_TARGET_AVX_VNNI __attribute__((target("avx2,fma,avxvnni")))
#else
#define BITGRAD_PACKED_HAS_AVX_VNNI 0
#endif
#endif

#if BITGRAD_PACKED_ARM64
#define BITGRAD_TARGET_NEON
#if defined(__clang__)
#define BITGRAD_TARGET_NEON_DOT __attribute__((target("dotprod")))
#else
#define BITGRAD_TARGET_NEON_DOT __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#endif

namespace bitgrad {

/// The paths of the packed kernels, for run-time choice; `reference` is ref::packed_gemm.
enum class int_isa { reference, sse2, avx2, avx_vnni, avx512_vnni, neon, neon_dot };

/// Every path, in order of preference from the slowest.
inline constexpr std::array<int_isa, 7> all_int_isas = {
    int_isa::reference,   int_isa::sse2, int_isa::avx2,    int_isa::avx_vnni,
    int_isa::avx512_vnni, int_isa::neon, int_isa::neon_dot};

namespace isa {
// One tag per path; name() matches int_isa_name.
struct sse2 {
  static constexpr const char* name() { return "sse2"; }
  static constexpr int_isa id = int_isa::sse2;
};
struct avx2 {
  static constexpr const char* name() { return "avx2"; }
  static constexpr int_isa id = int_isa::avx2;
};
struct avx_vnni {
  static constexpr const char* name() { return "avx_vnni"; }
  static constexpr int_isa id = int_isa::avx_vnni;
};
struct avx512_vnni {
  static constexpr const char* name() { return "avx512_vnni"; }
  static constexpr int_isa id = int_isa::avx512_vnni;
};
struct neon {
  static constexpr const char* name() { return "neon"; }
  static constexpr int_isa id = int_isa::neon;
};
struct neon_dot {
  static constexpr const char* name() { return "neon_dot"; }
  static constexpr int_isa id = int_isa::neon_dot;
};
} // namespace isa

inline const char* int_isa_name(int_isa p) {
  switch (p) {
  case int_isa::reference:
    return "reference";
  case int_isa::sse2:
    return isa::sse2::name();
  case int_isa::avx2:
    return isa::avx2::name();
  case int_isa::avx_vnni:
    return isa::avx_vnni::name();
  case int_isa::avx512_vnni:
    return isa::avx512_vnni::name();
  case int_isa::neon:
    return isa::neon::name();
  case int_isa::neon_dot:
    return isa::neon_dot::name();
  }
  return "unknown";
}

/// True when this binary holds the code of path p (its architecture and compiler allow it).
constexpr bool int_isa_compiled(int_isa p) {
  switch (p) {
  case int_isa::reference:
    return true;
#if BITGRAD_PACKED_X86
  case int_isa::sse2:
  case int_isa::avx2:
  case int_isa::avx512_vnni:
    return true;
  case int_isa::avx_vnni:
    return BITGRAD_PACKED_HAS_AVX_VNNI != 0;
#endif
#if BITGRAD_PACKED_ARM64
  case int_isa::neon:
  case int_isa::neon_dot:
    return true;
#endif
  default:
    return false;
  }
}

namespace detail {

/// What the running CPU (and its OS) can execute, read once.
struct int_isa_cpu {
  bool sse2 = false, avx2 = false, avx_vnni = false, avx512_vnni = false;
  bool neon = false, neon_dot = false;
  int_isa_cpu() {
#if BITGRAD_PACKED_X86
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    sse2 = (d >> 26) & 1u;
    const bool osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u;
    if (!osxsave || !avx) return;
    unsigned xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const bool ymm_state = (xcr0_lo & 0x6u) == 0x6u;   // SSE and AVX state
    const bool zmm_state = (xcr0_lo & 0xE6u) == 0xE6u; // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!ymm_state || __get_cpuid_max(0, nullptr) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    avx2 = (b >> 5) & 1u;
    const bool f512 = (b >> 16) & 1u, bw = (b >> 30) & 1u, vl = (b >> 31) & 1u, dq = (b >> 17) & 1u,
               vnni512 = (c >> 11) & 1u;
    avx512_vnni = zmm_state && avx2 && f512 && bw && vl && dq && vnni512;
    __cpuid_count(7, 1, a, b, c, d);
    avx_vnni = avx2 && ((a >> 4) & 1u);
#endif
#if BITGRAD_PACKED_ARM64
    neon = true;
#if defined(__linux__) && defined(AT_HWCAP)
    neon_dot = (getauxval(AT_HWCAP) & (1ul << 20)) != 0; // HWCAP_ASIMDDP
#endif
#endif
  }
};

inline const int_isa_cpu& int_isa_cpu_features() {
  static const int_isa_cpu features;
  return features;
}

} // namespace detail

/// True when this binary holds path p and the running CPU can execute it.
inline bool int_isa_supported(int_isa p) {
  if (!int_isa_compiled(p)) return false;
  const detail::int_isa_cpu& f = detail::int_isa_cpu_features();
  switch (p) {
  case int_isa::reference:
    return true;
  case int_isa::sse2:
    return f.sse2;
  case int_isa::avx2:
    return f.avx2;
  case int_isa::avx_vnni:
    return f.avx_vnni;
  case int_isa::avx512_vnni:
    return f.avx512_vnni;
  case int_isa::neon:
    return f.neon;
  case int_isa::neon_dot:
    return f.neon_dot;
  }
  return false;
}

/// True for the x86-64 paths whose CPUs run AVX2 (avx2, avx_vnni, avx512_vnni): the kernels
/// of a narrower build may run their AVX2 forms there (output_stage.hpp, "AVX2 blocks").
constexpr bool int_isa_has_avx2(int_isa p) {
  return p == int_isa::avx2 || p == int_isa::avx_vnni || p == int_isa::avx512_vnni;
}

/// The fastest path this binary holds that the CPU runs.
inline int_isa best_int_isa() {
  static const int_isa best = [] {
    int_isa b = int_isa::reference;
    for (int_isa p : all_int_isas)
      if (int_isa_supported(p)) b = p;
    return b;
  }();
  return best;
}

} // namespace bitgrad
