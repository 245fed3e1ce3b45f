// CUDA emulation stub (scripts/cuda_emu): ATen's warp shuffle wrappers.
#pragma once
#include <fastconv_cuda_emu.h>
template <typename T>
inline T WARP_SHFL_DOWN(T value, unsigned int delta, int width = warpSize, unsigned int mask = 0xffffffffu) {
  return __shfl_down_sync(mask, value, delta, width);
}
template <typename T>
inline T WARP_SHFL_XOR(T value, int lane_mask, int width = warpSize, unsigned int mask = 0xffffffffu) {
  return __shfl_xor_sync(mask, value, lane_mask, width);
}
template <typename T>
inline T WARP_SHFL(T value, int lane, int width = warpSize, unsigned int mask = 0xffffffffu) {
  return __shfl_sync(mask, value, lane, width);
}
