// CUDA emulation stub (scripts/cuda_emu): the current stream and the emulated device's properties.
#pragma once
#include <fastconv_cuda_emu.h>
struct cudaDeviceProp {
  int multiProcessorCount;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int maxThreadsPerBlock;
  int warpSize;
  int major, minor;
};
namespace fcemu {
cudaDeviceProp* device_properties();
}
namespace at::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int = -1) { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() { return ::fcemu::device_properties(); }
}  // namespace at::cuda
