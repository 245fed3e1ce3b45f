// Instruction sets of the C++ CPU kernels, chosen at run time (the role of ATen's CPU_CAPABILITY dispatch).
//
// The extension is compiled for baseline x86-64, so it loads and runs on any x86-64 CPU; next to ATen's
// AVX2/AVX-512 kernels that leaves 2-4x of in-cache throughput unused. A kernel file therefore compiles its
// hot loops three times, for baseline, AVX2+FMA+F16C and AVX-512 (512-bit vectors), and calls the variant
// the CPU supports:
//
//   // csrc/cpu/<op>.cpp, after every #include the kernels need:
//   #define FASTCONV_ISA_KERNELS "cpu/<op>_kernels.inc"  // code only, no #include
//   #include "fastconv/cpu_isa_kernels.h"                  // -> namespaces isa_baseline, isa_avx2, isa_avx512
//   ...
//   FASTCONV_ISA_CALL(forward_into(input, output, ...));    // the detected variant
//
// FASTCONV_CPU_ISA=baseline|avx2|avx512 caps the choice (read once; it can't raise it above what the CPU
// has): the tests run the baseline variant this way, and A/B benchmarks compare variants.
#pragma once

#include <cstdlib>
#include <cstring>

namespace fastconv {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

inline CpuIsa detect_cpu_isa() {
  CpuIsa best = CpuIsa::kBaseline;
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    best = CpuIsa::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      best = CpuIsa::kAvx512;
    }
  }
#endif
  const char* cap = std::getenv("FASTCONV_CPU_ISA");
  if (cap != nullptr) {
    for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      if (std::strcmp(cap, cpu_isa_name(isa)) == 0 && static_cast<int>(isa) < static_cast<int>(best)) best = isa;
    }
  }
  return best;
}

inline CpuIsa cpu_isa() {
  static const CpuIsa isa = detect_cpu_isa();
  return isa;
}

}  // namespace fastconv

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTCONV_MULTI_ISA 1
#define FASTCONV_ISA_CALL(...)                                                        \
  (::fastconv::cpu_isa() == ::fastconv::CpuIsa::kAvx512 ? isa_avx512::__VA_ARGS__    \
   : ::fastconv::cpu_isa() == ::fastconv::CpuIsa::kAvx2 ? isa_avx2::__VA_ARGS__       \
                                                         : isa_baseline::__VA_ARGS__)
#else
#define FASTCONV_ISA_CALL(...) (isa_baseline::__VA_ARGS__)
#endif
