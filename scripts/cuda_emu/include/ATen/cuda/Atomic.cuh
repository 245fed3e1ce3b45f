// CUDA emulation stub (scripts/cuda_emu): ATen's atomic adds (blocks run one at a time: plain adds).
#pragma once
#include <fastconv_cuda_emu.h>
template <typename T, typename V>
inline void gpuAtomicAdd(T* address, V value) {
  *address = static_cast<T>(static_cast<float>(*address) + static_cast<float>(value));
}
inline void gpuAtomicAdd(double* address, double value) { *address += value; }
inline void gpuAtomicAdd(float* address, float value) { *address += value; }
template <typename T, typename V>
inline void fastAtomicAdd(T* tensor, int64_t index, int64_t, V value, bool) {
  gpuAtomicAdd(tensor + index, value);
}
