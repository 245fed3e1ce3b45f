// Launch helpers shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace fastconv {

// Blocks for a grid-stride loop over `work` items: enough to fill the device, never more than the work.
inline unsigned int grid_stride_blocks(int64_t work, int threads) {
  const int64_t needed = (work + threads - 1) / threads;
  const int64_t filling = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, filling)));
}

// 32-bit indexing is markedly cheaper on the GPU; use it whenever every index fits.
inline bool fits_int32(int64_t n) { return n <= std::numeric_limits<int32_t>::max(); }

}  // namespace fastconv
