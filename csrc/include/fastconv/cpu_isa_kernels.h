// Compiles the kernel code named by FASTCONV_ISA_KERNELS once per instruction set (see cpu_isa.h).
// Deliberately without an include guard: every kernel file includes it once, with its own kernels.
#ifndef FASTCONV_ISA_KERNELS
#error "define FASTCONV_ISA_KERNELS (the kernel code to compile per instruction set) before including this"
#endif
#ifndef FASTCONV_ISA_CALL
#error "include fastconv/cpu_isa.h at file scope first (this header is included inside the op's namespace)"
#endif

// FASTCONV_VECTOR_BYTES: the variant's native vector register width, for kernels written with GCC vector
// extensions (register blocking depends on it: 16 registers of it on baseline/AVX2, 32 on AVX-512).
#define FASTCONV_VECTOR_BYTES 16
namespace isa_baseline {
#include FASTCONV_ISA_KERNELS
}  // namespace isa_baseline
#undef FASTCONV_VECTOR_BYTES

#ifdef FASTCONV_MULTI_ISA
// Functions defined in these regions (templates and the lambdas inside them included) are compiled for the
// target; the inline ATen/c10 helpers they call are inlined and compiled for it too.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define FASTCONV_VECTOR_BYTES 32
namespace isa_avx2 {
#include FASTCONV_ISA_KERNELS
}  // namespace isa_avx2
#undef FASTCONV_VECTOR_BYTES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#define FASTCONV_VECTOR_BYTES 64
namespace isa_avx512 {
#include FASTCONV_ISA_KERNELS
}  // namespace isa_avx512
#undef FASTCONV_VECTOR_BYTES
#pragma GCC pop_options
#endif

#undef FASTCONV_ISA_KERNELS
