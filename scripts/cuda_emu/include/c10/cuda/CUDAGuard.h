// CUDA emulation stub (scripts/cuda_emu): device guards do nothing on the one emulated device.
#pragma once
#include <fastconv_cuda_emu.h>
namespace c10::cuda {
struct CUDAGuard {
  template <typename T>
  explicit CUDAGuard(const T&) {}
};
struct OptionalCUDAGuard {
  OptionalCUDAGuard() = default;
  template <typename T>
  explicit OptionalCUDAGuard(const T&) {}
};
}  // namespace c10::cuda
