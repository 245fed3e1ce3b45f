// squeeze_excite on CUDA: a pooling reduction kernel (float accumulation; double for float64) and a scaling
// kernel, each for NCHW and channels_last (see csrc/squeeze_excite.h for the orchestration and the MLP).
#include "squeeze_excite.h"

#include <fastconv/cuda_launch.h>

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace fastconv {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// NCHW: a plane (n, c) is `pixels` contiguous elements, reduced by blockDim.x threads. Small planes: a
// warp each, blockDim.y planes per block. Large planes: a whole block (blockDim.y == 1) each.
template <typename scalar_t, typename acc_t, bool kWithGrad>
__global__ void pool_planes_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                                   acc_t* __restrict__ sum_x, acc_t* __restrict__ sum_gx, int64_t planes,
                                   int64_t pixels) {
  __shared__ acc_t warp_x[32];
  __shared__ acc_t warp_gx[32];
  const int64_t plane = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  acc_t acc_x = 0, acc_gx = 0;
  if (plane < planes) {
    const scalar_t* xp = x + plane * pixels;
    const scalar_t* gp = kWithGrad ? grad + plane * pixels : nullptr;
    for (int64_t p = threadIdx.x; p < pixels; p += blockDim.x) {
      const acc_t v = static_cast<acc_t>(xp[p]);
      acc_x += v;
      if (kWithGrad) acc_gx += static_cast<acc_t>(gp[p]) * v;
    }
  }
  // Every lane of every warp reaches the shuffles (no early return above).
  acc_x = warp_sum(acc_x);
  if (kWithGrad) acc_gx = warp_sum(acc_gx);
  if (blockDim.x == 32) {  // a warp per plane: done
    if (threadIdx.x == 0 && plane < planes) {
      sum_x[plane] = acc_x;
      if (kWithGrad) sum_gx[plane] = acc_gx;
    }
    return;
  }
  // A block per plane (blockDim.y == 1, so `plane` is uniform in the block): combine the warps' sums.
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_x[warp] = acc_x;
    if (kWithGrad) warp_gx[warp] = acc_gx;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    acc_x = warp_sum(lane < warps ? warp_x[lane] : acc_t(0));
    if (kWithGrad) acc_gx = warp_sum(lane < warps ? warp_gx[lane] : acc_t(0));
    if (lane == 0 && plane < planes) {
      sum_x[plane] = acc_x;
      if (kWithGrad) sum_gx[plane] = acc_gx;
    }
  }
}

// channels_last: x is [N, pixels, C]. Block (kTileC channels, kRows pixel rows); grid.x = (n, channel tile),
// grid.y = pixel chunk. Loads are coalesced along the channels; each block adds its partial sums into the
// zero-filled outputs with one atomicAdd per channel.
constexpr int kTileC = 32;
constexpr int kRows = 8;
constexpr int64_t kPixelsPerChunk = 256;

template <typename scalar_t, typename acc_t, bool kWithGrad>
__global__ void pool_pixels_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                                   acc_t* __restrict__ sum_x, acc_t* __restrict__ sum_gx, int64_t channels,
                                   int64_t pixels, int64_t channel_tiles) {
  __shared__ acc_t rows_x[kRows][kTileC];
  __shared__ acc_t rows_gx[kRows][kTileC];
  const int64_t n = blockIdx.x / channel_tiles;
  const int64_t c = (blockIdx.x - n * channel_tiles) * kTileC + threadIdx.x;
  const int64_t p_begin = static_cast<int64_t>(blockIdx.y) * kPixelsPerChunk;
  const int64_t p_end = p_begin + kPixelsPerChunk < pixels ? p_begin + kPixelsPerChunk : pixels;
  acc_t acc_x = 0, acc_gx = 0;
  if (c < channels) {
    for (int64_t p = p_begin + threadIdx.y; p < p_end; p += kRows) {
      const int64_t offset = (n * pixels + p) * channels + c;
      const acc_t v = static_cast<acc_t>(x[offset]);
      acc_x += v;
      if (kWithGrad) acc_gx += static_cast<acc_t>(grad[offset]) * v;
    }
  }
  rows_x[threadIdx.y][threadIdx.x] = acc_x;
  if (kWithGrad) rows_gx[threadIdx.y][threadIdx.x] = acc_gx;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    acc_t total_x = 0, total_gx = 0;
    for (int row = 0; row < kRows; ++row) {
      total_x += rows_x[row][threadIdx.x];
      if (kWithGrad) total_gx += rows_gx[row][threadIdx.x];
    }
    atomicAdd(sum_x + n * channels + c, total_x);
    if (kWithGrad) atomicAdd(sum_gx + n * channels + c, total_gx);
  }
}

// out = x * scale[n, c] (+ shift[n, c]), one grid-stride pass over every element.
template <typename scalar_t, typename acc_t, bool kWithShift, bool kChannelsLast, typename index_t>
__global__ void scale_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ scale,
                             const acc_t* __restrict__ shift, scalar_t* __restrict__ out, index_t total,
                             index_t channels, index_t pixels) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    index_t row;  // n * channels + c
    if (kChannelsLast) {
      const index_t c = i % channels;
      row = i / (pixels * channels) * channels + c;
    } else {
      row = i / pixels;
    }
    acc_t value = static_cast<acc_t>(x[i]) * scale[row];
    if (kWithShift) value += shift[row];
    out[i] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, typename acc_t, bool kWithShift, bool kChannelsLast>
void launch_scale(const scalar_t* x, const acc_t* scale, const acc_t* shift, scalar_t* out,
                  const SqueezeGeometry& geo) {
  const int64_t total = geo.batch * geo.channels * geo.pixels;
  constexpr int threads = 256;
  const unsigned int blocks = grid_stride_blocks(total, threads);
  const auto stream = at::cuda::getCurrentCUDAStream();
  // The grid-stride index runs up to total + blocks * threads: that must fit too, or it would wrap.
  if (fits_int32(total + int64_t{blocks} * threads)) {
    scale_kernel<scalar_t, acc_t, kWithShift, kChannelsLast, int32_t><<<blocks, threads, 0, stream>>>(
        x, scale, shift, out, static_cast<int32_t>(total), static_cast<int32_t>(geo.channels),
        static_cast<int32_t>(geo.pixels));
  } else {
    scale_kernel<scalar_t, acc_t, kWithShift, kChannelsLast, int64_t><<<blocks, threads, 0, stream>>>(
        x, scale, shift, out, total, geo.channels, geo.pixels);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, bool kWithGrad>
void launch_pool(const scalar_t* x, const scalar_t* grad, acc_t* sum_x, acc_t* sum_gx, const SqueezeGeometry& geo) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (geo.channels_last) {
    const int64_t channel_tiles = (geo.channels + kTileC - 1) / kTileC;
    const int64_t chunks = (geo.pixels + kPixelsPerChunk - 1) / kPixelsPerChunk;
    TORCH_CHECK(geo.batch * channel_tiles <= std::numeric_limits<int32_t>::max() && chunks <= 65535,
                "squeeze_excite: input too large for the CUDA pooling grid, got ", geo.batch, " x ", geo.channels,
                " x ", geo.pixels);
    const dim3 grid(static_cast<unsigned int>(geo.batch * channel_tiles), static_cast<unsigned int>(chunks));
    pool_pixels_kernel<scalar_t, acc_t, kWithGrad><<<grid, dim3(kTileC, kRows), 0, stream>>>(
        x, grad, sum_x, sum_gx, geo.channels, geo.pixels, channel_tiles);
  } else {
    const int64_t planes = geo.batch * geo.channels;
    // Planes of up to 1024 pixels: a warp each, 8 per block; larger planes: a 256-thread block each.
    const bool warp_per_plane = geo.pixels <= 1024;
    const dim3 block = warp_per_plane ? dim3(32, 8) : dim3(256, 1);
    const int64_t blocks = (planes + block.y - 1) / block.y;
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "squeeze_excite: too many planes for the CUDA grid: ",
                planes);
    pool_planes_kernel<scalar_t, acc_t, kWithGrad><<<static_cast<unsigned int>(blocks), block, 0, stream>>>(
        x, grad, sum_x, sum_gx, planes, geo.pixels);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct CudaPasses {
  static at::Tensor forward_scale(const at::Tensor& pooled, const at::Tensor& fc1_weight,
                                  const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                  const std::optional<at::Tensor>& fc2_bias, SqueezeActivation activation,
                                  SqueezeGate gate) {
    return squeeze_mlp_forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate).scale;
  }

  static void pool(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& sum_x, const at::Tensor& sum_gx,
                   const SqueezeGeometry& geo) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "squeeze_excite_pool_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* xp = x.const_data_ptr<scalar_t>();
      auto* sx = sum_x.mutable_data_ptr<acc_t>();
      if (grad.defined()) {
        launch_pool<scalar_t, acc_t, true>(xp, grad.const_data_ptr<scalar_t>(), sx, sum_gx.mutable_data_ptr<acc_t>(),
                                           geo);
      } else {
        launch_pool<scalar_t, acc_t, false>(xp, nullptr, sx, nullptr, geo);
      }
    });
  }

  static void scale(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& out,
                    const SqueezeGeometry& geo) {
    // (N, C) tensors from ATen matmuls: already contiguous, so these are no-ops.
    const at::Tensor scale_rows = scale.contiguous();
    const at::Tensor shift_rows = shift.defined() ? shift.contiguous() : shift;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "squeeze_excite_scale_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* xp = x.const_data_ptr<scalar_t>();
      const auto* sp = scale_rows.const_data_ptr<acc_t>();
      const acc_t* bp = shift_rows.defined() ? shift_rows.const_data_ptr<acc_t>() : nullptr;
      auto* op = out.mutable_data_ptr<scalar_t>();
      if (bp != nullptr) {
        if (geo.channels_last) launch_scale<scalar_t, acc_t, true, true>(xp, sp, bp, op, geo);
        else launch_scale<scalar_t, acc_t, true, false>(xp, sp, bp, op, geo);
      } else {
        if (geo.channels_last) launch_scale<scalar_t, acc_t, false, true>(xp, sp, bp, op, geo);
        else launch_scale<scalar_t, acc_t, false, false>(xp, sp, bp, op, geo);
      }
    });
  }
};

at::Tensor squeeze_excite_cuda(const at::Tensor& input, const at::Tensor& fc1_weight,
                               const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                               const std::optional<at::Tensor>& fc2_bias, c10::string_view activation,
                               c10::string_view gate) {
  const c10::cuda::CUDAGuard guard(input.device());
  return squeeze_excite_forward<CudaPasses>(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>, at::Tensor, std::optional<at::Tensor>>
squeeze_excite_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& fc1_weight,
                             const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                             const std::optional<at::Tensor>& fc2_bias, c10::string_view activation,
                             c10::string_view gate) {
  const c10::cuda::CUDAGuard guard(input.device());
  return squeeze_excite_backward<CudaPasses>(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                             activation, gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("squeeze_excite", &squeeze_excite_cuda);
  m.impl("_squeeze_excite_backward", &squeeze_excite_backward_cuda);
}

}  // namespace fastconv
