// depthwise_conv2d's grad_weight and grad_bias on CUDA, deterministic, in two stages. Included by
// depthwise_conv2d.cu only (kept apart so a host emulation can run these kernels thread by thread).
//
// Stage 1 (partial_*_kernel): the output rows (image, row) are cut into chunks of rows_per_chunk rows; a
// block sums grad_preact * input over one chunk for its output channels and kernel taps and writes one
// partial per (chunk, tap, channel); the bias gets the row `taps`. Stage 2 (finish_kernel) adds the chunks in
// order. Each sum has a fixed order that depends on the shape only, so results repeat run to run.
//  - channels_last: a block is kLanes consecutive output channels (each warp's loads are one contiguous run
//    of channels) x kGroups warps, each walking whole output rows of the chunk; the warps add their sums in
//    shared memory one after another.
//  - NCHW: a block is one output channel; its threads take consecutive pixels of the chunk (coalesced along
//    the row), then a warp-shuffle tree and the warps' sums in shared memory.
// Accumulators per thread: every tap of a compile-time 3x3/5x5 kernel (blockIdx.z = 0); for runtime shapes
// kRowTaps taps of one kernel row (blockIdx.z = row and column block), so a 31x31 kernel reads each grad
// value 124 times, not 961 as one block per tap would.
#pragma once

#include "depthwise_conv2d.h"

#include <algorithm>
#include <cstdint>

namespace fastconv {
namespace depthwise_grad_weight {

constexpr int kLanes = 32;                  // channels_last: output channels per block
constexpr int kGroups = 8;                  // warps per block
constexpr int kBlock = kLanes * kGroups;    // threads per block
constexpr int kRowTaps = 8;                 // runtime shapes: taps of one kernel row per block
constexpr int64_t kPixelsPerThread = 32;    // stage 1: about this many output pixels per thread
constexpr int64_t kTargetBlocks = 1024;     // stage 1: cut rows finer until about this many blocks
constexpr int64_t kMaxPartials = int64_t{1} << 24;  // stage 1 workspace bound (elements)
constexpr int64_t kMaxGridYZ = 65535;

template <int KH, int KW>
constexpr int acc_count() {
  return KH > 0 ? KH * KW : kRowTaps;
}

// The kernel taps one stage-1 block covers: blockIdx.z (or `slice`) picks a kernel row and a block of
// kRowTaps columns for runtime shapes; compile-time shapes cover every tap at slice 0.
struct TapSlice {
  int64_t row, col0;
};
__host__ __device__ inline int64_t runtime_col_blocks(int64_t kernel_w) { return (kernel_w + kRowTaps - 1) / kRowTaps; }

struct Plan {
  int64_t rows_per_chunk, chunks, slices, tiles;
};

// Shape-only (so the summation order never depends on the device): about kPixelsPerThread pixels per thread
// (channels_last: whole rows per warp, so a multiple of kGroups rows), cut finer while there are fewer than
// kTargetBlocks blocks (channels_last: not below one row per warp), coarser where the grid or the workspace
// would be too large.
inline Plan make_plan(const DepthwiseGeometry& g, bool channels_last, bool compile_time_taps, bool weight_taps) {
  Plan p;
  p.tiles = channels_last ? (g.out_channels + kLanes - 1) / kLanes : g.out_channels;
  p.slices = (compile_time_taps || !weight_taps) ? 1 : g.kernel_h * runtime_col_blocks(g.kernel_w);
  const int64_t rows_total = g.batch * g.out_h;
  const int64_t by_pixels = channels_last ? kGroups * ((kPixelsPerThread + g.out_w - 1) / g.out_w)
                                          : (kPixelsPerThread * kBlock + g.out_w - 1) / g.out_w;
  const int64_t by_blocks = rows_total * p.tiles * std::min(p.slices, kMaxGridYZ) / kTargetBlocks;
  int64_t rows = std::max(std::min(by_pixels, by_blocks), channels_last ? int64_t{kGroups} : int64_t{1});
  rows = std::max(rows, (rows_total + kMaxGridYZ - 1) / kMaxGridYZ);
  const int64_t partial_rows = (g.taps() + 1) * g.out_channels;
  rows = std::max(rows, (rows_total * partial_rows + kMaxPartials - 1) / kMaxPartials);
  p.rows_per_chunk = std::max<int64_t>(1, std::min(rows, rows_total));
  p.chunks = (rows_total + p.rows_per_chunk - 1) / p.rows_per_chunk;
  return p;
}

// Adds grad * input for one output pixel to the slice's accumulators. in_plane points at (n, c, 0, 0) of the
// input; in_row_step / in_col_step are its strides in elements.
template <int KH, int KW, typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ void add_pixel(acc_t (&acc)[acc_count<KH, KW>()], acc_t grad,
                                          const scalar_t* __restrict__ in_plane, index_t in_row_step,
                                          index_t in_col_step, index_t ih0, index_t iw0, const DepthwiseGeometry& g,
                                          index_t slice_row, index_t slice_col0) {
  const index_t in_h = g.in_h, in_w = g.in_w, dilation_h = g.dilation_h, dilation_w = g.dilation_w;
  if constexpr (KH > 0) {
#pragma unroll
    for (int i = 0; i < KH; ++i) {
      const index_t ih = ih0 + i * dilation_h;
      if (ih < 0 || ih >= in_h) continue;
#pragma unroll
      for (int j = 0; j < KW; ++j) {
        const index_t iw = iw0 + j * dilation_w;
        if (iw < 0 || iw >= in_w) continue;
        acc[i * KW + j] += grad * static_cast<acc_t>(in_plane[ih * in_row_step + iw * in_col_step]);
      }
    }
  } else {
    const index_t ih = ih0 + slice_row * dilation_h;
    if (ih < 0 || ih >= in_h) return;
    const index_t kernel_w = g.kernel_w;
#pragma unroll
    for (int j = 0; j < kRowTaps; ++j) {
      const index_t col = slice_col0 + j;
      const index_t iw = iw0 + col * dilation_w;
      if (col >= kernel_w || iw < 0 || iw >= in_w) continue;
      acc[j] += grad * static_cast<acc_t>(in_plane[ih * in_row_step + iw * in_col_step]);
    }
  }
}

// The weight index (tap) of accumulator a in the slice, or -1 when the slice has no such tap.
template <int KH, int KW>
__device__ __forceinline__ int64_t slice_tap(int a, int64_t slice_row, int64_t slice_col0, const DepthwiseGeometry& g) {
  if constexpr (KH > 0) {
    return a;
  } else {
    const int64_t col = slice_col0 + a;
    return col < g.kernel_w ? slice_row * g.kernel_w + col : -1;
  }
}

template <int KH, int KW>
__device__ __forceinline__ TapSlice tap_slice(int64_t slice, const DepthwiseGeometry& g) {
  if constexpr (KH > 0) {
    return {0, 0};
  } else {
    const int64_t col_blocks = runtime_col_blocks(g.kernel_w);
    return {slice / col_blocks, (slice % col_blocks) * kRowTaps};
  }
}

// One thread's sums over its pixels: grad * input for each accumulated tap, and grad for the bias.
template <typename acc_t, int kAcc>
struct Sums {
  acc_t tap[kAcc];
  acc_t bias;
};

// The output rows [begin, end) of stage-1 block blockIdx.y: rows are (image, row) pairs, image-major.
template <typename index_t>
struct RowRange {
  index_t begin, end;
};
template <typename index_t>
__device__ __forceinline__ RowRange<index_t> chunk_rows(const DepthwiseGeometry& g, int64_t rows_per_chunk) {
  const index_t rows_total = static_cast<index_t>(g.batch) * static_cast<index_t>(g.out_h);
  const index_t begin = static_cast<index_t>(blockIdx.y) * static_cast<index_t>(rows_per_chunk);
  return {begin, min(rows_total, begin + static_cast<index_t>(rows_per_chunk))};
}

// The partial row accumulator a of a slice goes to: its tap, the bias row (`taps`, slice 0 only) for
// a == kAcc, or -1 for nothing (a tap past the kernel's width, or weight taps not asked for).
template <int KH, int KW>
__device__ __forceinline__ int64_t partial_row(int a, int64_t slice, const TapSlice& ts, const DepthwiseGeometry& g,
                                               bool weight_taps) {
  constexpr int kAcc = acc_count<KH, KW>();
  if (a == kAcc) return slice == 0 ? g.kernel_h * g.kernel_w : -1;
  return weight_taps ? slice_tap<KH, KW>(a, ts.row, ts.col0, g) : -1;
}

// partial: [chunks][taps + 1][out_channels] (acc_t); the row `taps` is the bias (written by slice 0 only).
template <typename scalar_t, typename acc_t, typename index_t, int KH, int KW>
__global__ void __launch_bounds__(kBlock)
    partial_channels_last_kernel(const acc_t* __restrict__ grad_pre, const scalar_t* __restrict__ in,
                                 acc_t* __restrict__ partial, DepthwiseGeometry g, int64_t rows_per_chunk,
                                 int64_t slices, bool weight_taps) {
  constexpr int kAcc = acc_count<KH, KW>();
  __shared__ acc_t stage[kAcc + 1][kLanes];
  const int lane = threadIdx.x % kLanes;
  const int group = threadIdx.x / kLanes;
  const index_t out_channels = g.out_channels, channels = g.channels, out_h = g.out_h, out_w = g.out_w;
  const index_t o = static_cast<index_t>(blockIdx.x) * kLanes + lane;
  const bool active = o < out_channels;
  const index_t c = active ? o / static_cast<index_t>(g.multiplier) : 0;
  const RowRange<index_t> rows = chunk_rows<index_t>(g, rows_per_chunk);
  const int64_t taps = g.kernel_h * g.kernel_w;
  for (int64_t slice = blockIdx.z; slice < slices; slice += gridDim.z) {
    const TapSlice ts = tap_slice<KH, KW>(slice, g);
    Sums<acc_t, kAcc> sums{};  // zero
    if (active) {
      for (index_t row = rows.begin + group; row < rows.end; row += kGroups) {
        const index_t n = row / out_h;
        const index_t oh = row - n * out_h;
        const acc_t* grad_row = grad_pre + row * out_w * out_channels + o;
        const scalar_t* in_plane = in + n * static_cast<index_t>(g.in_h) * g.in_w * channels + c;
        const index_t ih0 = oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_top);
        for (index_t ow = 0; ow < out_w; ++ow) {
          const acc_t grad = grad_row[ow * out_channels];
          sums.bias += grad;
          if (!weight_taps) continue;
          const index_t iw0 = ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_left);
          add_pixel<KH, KW>(sums.tap, grad, in_plane, static_cast<index_t>(g.in_w) * channels, channels, ih0, iw0, g,
                            static_cast<index_t>(ts.row), static_cast<index_t>(ts.col0));
        }
      }
    }
    // The warps add their sums into stage one after another: a fixed order, and kAcc + 1 rows of kLanes values
    // (a 5x5 kernel's stage for all warps at once would not fit 48 KiB in float64).
    for (int w = 0; w < kGroups; ++w) {
      if (group == w) {
#pragma unroll
        for (int a = 0; a < kAcc; ++a) stage[a][lane] = w == 0 ? sums.tap[a] : stage[a][lane] + sums.tap[a];
        stage[kAcc][lane] = w == 0 ? sums.bias : stage[kAcc][lane] + sums.bias;
      }
      __syncthreads();
    }
    for (int k = threadIdx.x; k < (kAcc + 1) * kLanes; k += kBlock) {
      const int a = k / kLanes;
      const int l = k - a * kLanes;
      const int64_t oo = static_cast<int64_t>(blockIdx.x) * kLanes + l;
      const int64_t tap = partial_row<KH, KW>(a, slice, ts, g, weight_taps);
      if (oo >= g.out_channels || tap < 0) continue;
      partial[(static_cast<int64_t>(blockIdx.y) * (taps + 1) + tap) * g.out_channels + oo] = stage[a][l];
    }
    __syncthreads();  // stage is rewritten by the next slice
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int width = kLanes / 2; width > 0; width /= 2) v += __shfl_down_sync(0xffffffffu, v, width);
  return v;
}

template <typename scalar_t, typename acc_t, typename index_t, int KH, int KW>
__global__ void __launch_bounds__(kBlock)
    partial_nchw_kernel(const acc_t* __restrict__ grad_pre, const scalar_t* __restrict__ in,
                        acc_t* __restrict__ partial, DepthwiseGeometry g, int64_t rows_per_chunk, int64_t slices,
                        bool weight_taps) {
  constexpr int kAcc = acc_count<KH, KW>();
  __shared__ acc_t stage[kGroups][kAcc + 1];
  const int lane = threadIdx.x % kLanes;
  const int warp = threadIdx.x / kLanes;
  const index_t o = blockIdx.x;
  const index_t c = o / static_cast<index_t>(g.multiplier);
  const index_t out_channels = g.out_channels, out_h = g.out_h, out_w = g.out_w, in_h = g.in_h, in_w = g.in_w;
  const RowRange<index_t> rows = chunk_rows<index_t>(g, rows_per_chunk);
  const index_t step_rows = kBlock / out_w;  // a step of kBlock pixels along the chunk's rows
  const index_t step_cols = kBlock - step_rows * out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  for (int64_t slice = blockIdx.z; slice < slices; slice += gridDim.z) {
    const TapSlice ts = tap_slice<KH, KW>(slice, g);
    Sums<acc_t, kAcc> sums{};  // zero
    // Pixel threadIdx.x, +kBlock, ... of the chunk, as (row, column); the image index is redone on wrapping.
    index_t row = rows.begin + static_cast<index_t>(threadIdx.x) / out_w;
    index_t ow = static_cast<index_t>(threadIdx.x) % out_w;
    index_t n = row / out_h;
    index_t oh = row - n * out_h;
    while (row < rows.end) {
      const acc_t grad = grad_pre[((n * out_channels + o) * out_h + oh) * out_w + ow];
      sums.bias += grad;
      if (weight_taps) {
        const scalar_t* in_plane = in + (n * static_cast<index_t>(g.channels) + c) * in_h * in_w;
        const index_t ih0 = oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_top);
        const index_t iw0 = ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_left);
        add_pixel<KH, KW>(sums.tap, grad, in_plane, in_w, index_t(1), ih0, iw0, g, static_cast<index_t>(ts.row),
                          static_cast<index_t>(ts.col0));
      }
      ow += step_cols;
      index_t advance = step_rows;
      if (ow >= out_w) {
        ow -= out_w;
        ++advance;
      }
      row += advance;
      oh += advance;
      if (oh >= out_h) {
        n += oh / out_h;
        oh %= out_h;
      }
    }
#pragma unroll
    for (int a = 0; a < kAcc; ++a) {
      const acc_t s = warp_sum(sums.tap[a]);
      if (lane == 0) stage[warp][a] = s;
    }
    const acc_t bias_sum = warp_sum(sums.bias);
    if (lane == 0) stage[warp][kAcc] = bias_sum;
    __syncthreads();
    for (int a = threadIdx.x; a <= kAcc; a += kBlock) {
      const int64_t tap = partial_row<KH, KW>(a, slice, ts, g, weight_taps);
      if (tap < 0) continue;
      acc_t sum = 0;
      for (int w = 0; w < kGroups; ++w) sum += stage[w][a];
      partial[(static_cast<int64_t>(blockIdx.y) * (taps + 1) + tap) * g.out_channels + o] = sum;
    }
    __syncthreads();
  }
}

// Stage 2: grad_weight[o][tap] and grad_bias[o] as the in-order sum of the chunks' partials.
template <typename scalar_t, typename acc_t>
__global__ void finish_kernel(const acc_t* __restrict__ partial, int64_t chunks, DepthwiseGeometry g,
                              scalar_t* __restrict__ grad_w, scalar_t* __restrict__ grad_b) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t row = (taps + 1) * g.out_channels;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < row;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t tap = k / g.out_channels;
    const int64_t o = k - tap * g.out_channels;
    scalar_t* dst = tap == taps ? (grad_b != nullptr ? grad_b + o : nullptr)
                                : (grad_w != nullptr ? grad_w + o * taps + tap : nullptr);
    if (dst == nullptr) continue;
    acc_t sum = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * row + k];
    *dst = static_cast<scalar_t>(sum);
  }
}

}  // namespace depthwise_grad_weight
}  // namespace fastconv
