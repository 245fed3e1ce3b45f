// CUDA emulation stub (scripts/cuda_emu): __nv_bfloat16 with c10::BFloat16's bits, for WMMA's element type.
#pragma once
#include <fastconv_cuda_emu.h>
struct __nv_bfloat16 {
  uint16_t bits;
  operator float() const { return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits())); }
};
static_assert(sizeof(__nv_bfloat16) == sizeof(c10::BFloat16), "reinterpreted from c10::BFloat16 storage");
