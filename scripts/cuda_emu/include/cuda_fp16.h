// CUDA emulation stub (scripts/cuda_emu): __half with c10::Half's bits, for WMMA's element type.
#pragma once
#include <fastconv_cuda_emu.h>
struct __half {
  uint16_t bits;
  operator float() const { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }
};
static_assert(sizeof(__half) == sizeof(c10::Half), "__half is reinterpreted from c10::Half storage");
