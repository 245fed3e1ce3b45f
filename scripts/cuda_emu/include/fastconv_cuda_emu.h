// CUDA emulation on the CPU, for testing csrc/cuda/*.cu without a GPU (scripts/cuda_emu/README.md).
//
// scripts/cuda_emu/build.py rewrites each .cu file into C++ (kernel launches become fcemu::launch calls,
// `extern __shared__` arrays become pointers into the block's dynamic shared memory) and includes this header
// first. Every CUDA thread of a block runs as a fiber on one OS thread, switched at __syncthreads and at warp
// shuffles, so barriers, shared memory and warp collectives keep their CUDA meaning; blocks run one after
// another. What it checks beyond the values: barrier divergence (a deadlock is reported, not hung), launch
// limits (block size, grid dimensions, dynamic shared memory against the opt-in attribute) and, through
// poisoned dynamic shared memory, reads of shared memory no thread wrote.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define FASTCONV_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy per OS thread: the fibers of a block share it, as a block's threads share shared memory.
#define __shared__ static thread_local
#define __constant__ static

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) int2 { int x, y; };

struct CUstream_st;
using cudaStream_t = CUstream_st*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
constexpr int warpSize = 32;

namespace fcemu {

// The executing CUDA thread's coordinates (set by the scheduler at every switch).
extern thread_local dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  LaunchConfig(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), shared_bytes(s) {}
};

// Runs `body` once per thread of every block of the grid. `kernel` identifies the kernel for its attributes.
void run_grid(const LaunchConfig& config, const char* kernel, const std::function<void()>& body);
void* dynamic_shared();
void sync_block();
void sync_warp(unsigned int mask);
unsigned char* warp_slot(int lane);  // 16 bytes per lane of the calling thread's warp
int lane_id();
cudaError_t func_set_attribute(const char* kernel, cudaFuncAttribute attribute, int value);
void launch_check();
void check_error(cudaError_t error, const char* expression);

// kernel<<<config>>>(args...), rewritten by build.py as launch(config, "file:kernel", call, args...) with
// call = [&](auto... a) { kernel(a...); }, so template arguments are deduced as in the original launch. The
// arguments are evaluated once, at the launch; every thread calls the kernel with its own copy of them, as
// every CUDA thread has its own parameters. `name` (the source file and the kernel expression) keys the
// kernel's attributes (cudaFuncSetAttribute, rewritten likewise).
template <typename Call, typename... A>
void launch(const LaunchConfig& config, const char* name, const Call& call, A&&... args) {
  const std::tuple<std::decay_t<A>...> params(std::forward<A>(args)...);
  run_grid(config, name, [&] {
    std::tuple<std::decay_t<A>...> copy = params;
    std::apply(call, copy);
  });
}

template <typename T>
T shuffle(unsigned int mask, T value, int source_lane, bool valid) {
  static_assert(sizeof(T) <= 16, "shuffled values are at most 16 bytes");
  std::memcpy(warp_slot(lane_id()), &value, sizeof(T));
  sync_warp(mask);
  T result = value;
  if (valid) std::memcpy(&result, warp_slot(source_lane), sizeof(T));
  sync_warp(mask);
  return result;
}

}  // namespace fcemu

#define threadIdx (::fcemu::g_thread_idx)
#define blockIdx (::fcemu::g_block_idx)
#define blockDim (::fcemu::g_block_dim)
#define gridDim (::fcemu::g_grid_dim)

inline void __syncthreads() { ::fcemu::sync_block(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { ::fcemu::sync_warp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = warpSize) {
  const int lane = ::fcemu::lane_id();
  const int in_segment = lane % width + static_cast<int>(delta);
  return ::fcemu::shuffle(mask, value, lane + static_cast<int>(delta), in_segment < width);
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = warpSize) {
  const int lane = ::fcemu::lane_id();
  return ::fcemu::shuffle(mask, value, lane - static_cast<int>(delta), lane % width >= static_cast<int>(delta));
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = warpSize) {
  const int lane = ::fcemu::lane_id();
  const int source = lane ^ lane_mask;
  return ::fcemu::shuffle(mask, value, source, source / width == lane / width);
}
template <typename T>
inline T __shfl_sync(unsigned int mask, T value, int source_lane, int width = warpSize) {
  const int lane = ::fcemu::lane_id();
  return ::fcemu::shuffle(mask, value, (lane / width) * width + source_lane % width, true);
}

// Blocks run one at a time on one OS thread, so a read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T value) {
  const T old = *address;
  *address = old < value ? value : old;
  return old;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }


// CUDA's device-side integer and floating min/max overloads.
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
