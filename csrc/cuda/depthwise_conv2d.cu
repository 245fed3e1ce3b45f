// depthwise_conv2d on CUDA, forward and backward, NCHW and channels_last, float accumulation.
//
// Forward: three kernels; launch_fast_forward spells out which configuration goes where.
//  - channels_last_kernel (channels_last, depth multiplier 1). A thread owns kVec consecutive channels (one
//    16- or 8-byte load when the channel count and both pointers allow it, else one element) of kVecOutW = 4
//    consecutive output columns of one output row. Compile-time shapes stream each input row's columns
//    through registers once: for 3x3 stride 1, 6 vector loads feed the 4 outputs' 12 row taps (a thread per
//    output would issue 12). A block is `lanes` channel vectors x `rows` column groups, grid-strided over the
//    (image, row, column group) items; it stages its channels' weights and bias in shared memory as float,
//    tap-major, so a tap's kVec weights are one vector read. Large kernels get fewer lanes per block so the
//    staged weights stay within 48 KiB (31x31 in fp16: one 8-channel lane).
//  - plane_tile_kernel (NCHW, any multiplier). A block computes one output tile of each of blockDim.z planes
//    (several small planes per block, so 7x7 and 14x14 planes do not leave most threads idle); a thread
//    computes kOutH = 2 rows x tile_out_w(K) (4, or 8 for runtime shapes) columns. The input tile plus its
//    halo is staged once in shared memory as float, zero-filled outside the input (the taps need no bounds
//    checks), one warp per tile row so the global loads coalesce. Compile-time shapes keep the weights in
//    registers and stream each staged input row through registers once for every output it feeds.
//  - Both kernels' K = S = 0 instances handle runtime shapes: weights in shared memory, tap loops at runtime;
//    at stride 1 dilation 1 a register window slides along the row (one input read per tap and output row
//    instead of one per output). The NCHW one is the large-kernel path (7x7 up to RepLKNet's 31x31): a 64x32
//    output tile, whose 31x31 input tile plus halo (62x94 floats) and 961 weights take 27 KiB; a tile past
//    48 KiB (large dilations) opts into more, and past the device's limit the generic kernel runs instead.
//  - forward_kernel, the generic fallback: one thread per output element, every tap read from global memory.
//    It runs what the tiled kernels do not cover: float64, channels_last with a multiplier > 1, coordinates
//    or per-image/per-plane offsets past 32 bits (the tiled kernels use 32-bit offsets from a 64-bit image or
//    plane base, so large batches stay tiled), shared memory past the device's limit.
// Compile-time shapes: 3x3 and 5x5 kernels with dilation 1 and stride 1 or 2 (the same along H and W) are
// template parameters of the two tiled kernels (fully unrolled tap and column loops); every other shape is
// their runtime instance. All paths add the bias first, then the taps row by row, left to right.
// Backward: grad_preact = grad_output * activation'(...) once (float; grad_output itself when float32 has no
// activation). grad_input at stride 1 and multiplier 1 is a forward depthwise conv of grad_preact with the
// kernel turned by 180 degrees (the tiled kernels above), otherwise the transposed depthwise conv in gather
// form (each thread owns one input element: no atomics). grad_weight/grad_bias sum over chunks of output
// rows, then over the chunks in order: deterministic (depthwise_conv2d_grad_weight.cuh). The generic kernels'
// indices are 32-bit when every offset fits, 64-bit otherwise (chosen at launch). The hardswish/silu backward
// recomputes the pre-activation with the forward kernels writing float (accumulate_output).
#include "depthwise_conv2d.h"
#include "depthwise_conv2d_grad_weight.cuh"

#include <fastconv/cuda_launch.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

namespace fastconv {
namespace {

constexpr int kThreads = 256;

// Offsets into a dense (N, C, H, W) tensor stored NCHW or channels_last, and the inverse for a linear index.
template <typename index_t, bool kChannelsLast>
struct DenseIndex {
  index_t channels, height, width;
  __device__ index_t offset(index_t n, index_t c, index_t h, index_t w) const {
    return kChannelsLast ? ((n * height + h) * width + w) * channels + c : ((n * channels + c) * height + h) * width + w;
  }
  __device__ void decode(index_t linear, index_t& n, index_t& c, index_t& h, index_t& w) const {
    if (kChannelsLast) {
      c = linear % channels;
      linear /= channels;
      w = linear % width;
      linear /= width;
      h = linear % height;
      n = linear / height;
    } else {
      w = linear % width;
      linear /= width;
      h = linear % height;
      linear /= height;
      c = linear % channels;
      n = linear / channels;
    }
  }
};

// The generic fallback: one thread per output element.
template <typename scalar_t, typename out_t, typename index_t, bool kChannelsLast, int kKernelH, int kKernelW>
__global__ void forward_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ weight,
                               const scalar_t* __restrict__ bias, out_t* __restrict__ out, DepthwiseGeometry g,
                               Activation act, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t kernel_h = kKernelH > 0 ? kKernelH : static_cast<index_t>(g.kernel_h);
  const index_t kernel_w = kKernelW > 0 ? kKernelW : static_cast<index_t>(g.kernel_w);
  const index_t in_h = g.in_h, in_w = g.in_w, stride_h = g.stride_h, stride_w = g.stride_w;
  const index_t pad_top = g.pad_top, pad_left = g.pad_left, dilation_h = g.dilation_h, dilation_w = g.dilation_w;
  const index_t multiplier = g.multiplier;
  const DenseIndex<index_t, kChannelsLast> out_index{static_cast<index_t>(g.out_channels),
                                                     static_cast<index_t>(g.out_h), static_cast<index_t>(g.out_w)};
  const DenseIndex<index_t, kChannelsLast> in_index{static_cast<index_t>(g.channels), in_h, in_w};
  const index_t grid_stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t linear = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; linear < total;
       linear += grid_stride) {
    index_t n, o, oh, ow;
    out_index.decode(linear, n, o, oh, ow);
    const index_t c = o / multiplier;
    const scalar_t* w_o = weight + o * kernel_h * kernel_w;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[o]) : acc_t(0);
#pragma unroll
    for (index_t i = 0; i < kernel_h; ++i) {
      const index_t ih = oh * stride_h - pad_top + i * dilation_h;
      if (ih < 0 || ih >= in_h) continue;
#pragma unroll
      for (index_t j = 0; j < kernel_w; ++j) {
        const index_t iw = ow * stride_w - pad_left + j * dilation_w;
        if (iw < 0 || iw >= in_w) continue;
        acc += static_cast<acc_t>(w_o[i * kernel_w + j]) * static_cast<acc_t>(in[in_index.offset(n, c, ih, iw)]);
      }
    }
    out[linear] = static_cast<out_t>(apply_activation(act, acc));
  }
}

// ---- The tiled forward kernels ----------------------------------------------------------------------------

constexpr int kTileThreads = 128;  // plane_tile_kernel's block (bx * by * bz, see plan_plane_tiles)
constexpr int kOutH = 2;           // output rows per plane_tile_kernel thread
constexpr int kVecOutW = 4;        // output columns per channels_last_kernel thread
constexpr int kStaticSharedBytes = 48 * 1024;  // usable without opting in

// Output columns per plane_tile_kernel thread: 4 when the taps are unrolled (registers hold the streamed row),
// 8 for runtime shapes, whose sliding window needs only one read per tap however wide it is.
constexpr int tile_out_w(int kernel) { return kernel > 0 ? 4 : 8; }

// kCount float values (accumulators, converted inputs, weights), aligned to their size up to 16 bytes so a
// Pack in shared memory is read with vector loads.
template <int kCount>
struct alignas(kCount * 4 >= 16 ? 16 : kCount * 4) Pack {
  float v[kCount];
};

// The unsigned type of kBytes bytes: what one load or store instruction moves.
template <int kBytes>
struct WordOf;
template <>
struct WordOf<2> {
  using type = unsigned short;
};
template <>
struct WordOf<4> {
  using type = unsigned int;
};
template <>
struct WordOf<8> {
  using type = uint2;
};
template <>
struct WordOf<16> {
  using type = uint4;
};

// kVec consecutive elements as float, in one load (the pointer is aligned to the load's size).
template <typename scalar_t, int kVec>
__device__ __forceinline__ Pack<kVec> load_pack(const scalar_t* src) {
  using word_t = typename WordOf<kVec * sizeof(scalar_t)>::type;
  const word_t word = __ldg(reinterpret_cast<const word_t*>(src));
  scalar_t values[kVec];
  memcpy(values, &word, sizeof(word));
  Pack<kVec> x;
#pragma unroll
  for (int v = 0; v < kVec; ++v) x.v[v] = static_cast<float>(values[v]);
  return x;
}

// activation(acc) for kVec consecutive outputs, stored in 16-byte words (fewer when the vector is smaller).
template <typename out_t, int kVec>
__device__ __forceinline__ void store_pack(out_t* dst, const float (&acc)[kVec], Activation act) {
  constexpr int kBytes = kVec * static_cast<int>(sizeof(out_t));
  constexpr int kWordBytes = kBytes < 16 ? kBytes : 16;
  using word_t = typename WordOf<kWordBytes>::type;
  out_t values[kVec];
#pragma unroll
  for (int v = 0; v < kVec; ++v) values[v] = static_cast<out_t>(apply_activation(act, acc[v]));
  word_t words[kBytes / kWordBytes];
  memcpy(words, values, kBytes);
#pragma unroll
  for (int q = 0; q < kBytes / kWordBytes; ++q) reinterpret_cast<word_t*>(dst)[q] = words[q];
}

// The tap loops shared by both tiled kernels. A thread owns OH x OW outputs of kVec channels each; output
// (u, t) reads input (row u * stride_h + i * dilation_h, column t * stride_w + j * dilation_w) relative to the
// thread's first input pixel. load(r, k) returns that relative input (zero where it is padding), weight(i, j)
// the tap's kVec weights, row_ok(r) false for a relative row wholly in the padding (skipped: its taps add 0).

// Compile-time KH x KW, stride S, dilation 1: each input row r and column k is loaded once and added into every
// output it feeds (u with 0 <= r - u*S < KH, t with 0 <= k - t*S < KW); the loops unroll completely, so the
// indices are constants and the operands stay in registers. weight(i, j) is called at each use: the compiler
// loads each tap once anyway, and schedules better than with a row of weights preloaded by hand (that form
// spilled at 5x5 stride 2, kVec 4).
template <int KH, int KW, int S, int OH, int OW, int kVec, typename Load, typename Weight, typename RowOk>
__device__ __forceinline__ void accumulate_static(float (&acc)[OH][OW][kVec], const Load& load,
                                                  const Weight& weight, const RowOk& row_ok) {
  constexpr int kRows = (OH - 1) * S + KH;
  constexpr int kCols = (OW - 1) * S + KW;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (!row_ok(r)) continue;
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const Pack<kVec> x = load(r, k);
#pragma unroll
      for (int u = 0; u < OH; ++u) {
        const int i = r - u * S;
        if (i < 0 || i >= KH) continue;
#pragma unroll
        for (int t = 0; t < OW; ++t) {
          const int j = k - t * S;
          if (j < 0 || j >= KW) continue;
          const Pack<kVec> w = weight(i, j);
#pragma unroll
          for (int v = 0; v < kVec; ++v) acc[u][t][v] += w.v[v] * x.v[v];
        }
      }
    }
  }
}

// Runtime shape. Stride 1 and dilation 1 along W: output t's tap j reads column t + j, so a window of OW
// columns slides one column per tap (one load per tap); otherwise every (tap, output) pair loads its input.
template <int OH, int OW, int kVec, typename Load, typename Weight, typename RowOk>
__device__ __forceinline__ void accumulate_dynamic(float (&acc)[OH][OW][kVec], const Load& load,
                                                   const Weight& weight, const RowOk& row_ok, int kernel_h,
                                                   int kernel_w, int stride_h, int stride_w, int dilation_h,
                                                   int dilation_w) {
  const bool sliding = stride_w == 1 && dilation_w == 1;
#pragma unroll
  for (int u = 0; u < OH; ++u) {
    for (int i = 0; i < kernel_h; ++i) {
      const int r = u * stride_h + i * dilation_h;
      if (!row_ok(r)) continue;
      if (sliding) {
        Pack<kVec> x[OW];  // x[t] = column t + j at tap j
#pragma unroll
        for (int t = 0; t + 1 < OW; ++t) x[t] = load(r, t);
        for (int j = 0; j < kernel_w; ++j) {
          x[OW - 1] = load(r, j + OW - 1);
          const Pack<kVec> w = weight(i, j);
#pragma unroll
          for (int t = 0; t < OW; ++t) {
#pragma unroll
            for (int v = 0; v < kVec; ++v) acc[u][t][v] += w.v[v] * x[t].v[v];
          }
#pragma unroll
          for (int t = 0; t + 1 < OW; ++t) x[t] = x[t + 1];
        }
      } else {
        for (int j = 0; j < kernel_w; ++j) {
          const Pack<kVec> w = weight(i, j);
#pragma unroll
          for (int t = 0; t < OW; ++t) {
            const Pack<kVec> x = load(r, t * stride_w + j * dilation_w);
#pragma unroll
            for (int v = 0; v < kVec; ++v) acc[u][t][v] += w.v[v] * x.v[v];
          }
        }
      }
    }
  }
}

// DepthwiseGeometry in 32-bit ints (conv_shape checks that it fits).
struct ConvShape {
  int batch, channels, multiplier, out_channels;
  int in_h, in_w, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
};

// Launch bounds of channels_last_kernel: without a minimum, ptxas squeezes the kVec <= 4 instances into 64
// registers and spilled a few bytes in some stride-2 ones; 2 blocks per SM (up to 128 registers) leaves
// them room. The kVec = 8 instances need 94-132 registers; 0 keeps ptxas's own choice for them.
constexpr int channels_last_min_blocks(int vec) { return vec >= 8 ? 0 : 2; }

struct ChannelsLastParams {
  ConvShape s;
  int col_groups;      // ceil(out_w / kVecOutW)
  int items;           // batch * out_h * col_groups: one (image, output row, column group) each
  int64_t in_image;    // elements per image: the image base is 64-bit, offsets inside an image 32-bit
  int64_t out_image;
};

// channels_last, multiplier 1. blockDim = (lanes, rows): threadIdx.x is a channel vector (neighbouring threads
// load neighbouring 16-byte vectors of one pixel: coalesced), threadIdx.y a column group, grid-strided over
// the items; blockIdx.y picks the block's lanes * kVec channels.
template <typename scalar_t, typename out_t, int kVec, int K, int S>
__global__ void __launch_bounds__(kThreads, channels_last_min_blocks(kVec))
channels_last_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ weight,
                     const scalar_t* __restrict__ bias, out_t* __restrict__ out, ChannelsLastParams p,
                     Activation act) {
  constexpr bool kStatic = K > 0;
  const ConvShape& s = p.s;
  const int kernel_w = kStatic ? K : s.kernel_w;
  const int taps = kStatic ? K * K : s.kernel_h * s.kernel_w;
  // [taps + 1][block_channels] floats: the block's weights tap-major, then its bias.
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  float* const block_weights = reinterpret_cast<float*>(shared_bytes);
  const int block_channels = static_cast<int>(blockDim.x) * kVec;
  const int first_channel = static_cast<int>(blockIdx.y) * block_channels;
  const int thread = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  const int threads = static_cast<int>(blockDim.x * blockDim.y);
  // idx = local channel * taps + tap walks the (C, 1, kh, kw) weight contiguously from first_channel.
  for (int idx = thread; idx < block_channels * taps; idx += threads) {
    const int local = idx / taps;
    const int tap = idx - local * taps;
    block_weights[tap * block_channels + local] =
        first_channel + local < s.channels ? static_cast<float>(weight[first_channel * taps + idx]) : 0.f;
  }
  for (int local = thread; local < block_channels; local += threads) {
    block_weights[taps * block_channels + local] =
        bias != nullptr && first_channel + local < s.channels ? static_cast<float>(bias[first_channel + local]) : 0.f;
  }
  __syncthreads();  // the only barrier: threads past the last channel may leave now
  const int c0 = first_channel + static_cast<int>(threadIdx.x) * kVec;
  if (c0 >= s.channels) return;  // channels % kVec == 0: a vector is wholly in or out
  const float* const lane_weights = block_weights + threadIdx.x * kVec;
  const Pack<kVec> lane_bias = *reinterpret_cast<const Pack<kVec>*>(lane_weights + taps * block_channels);
  const int item_stride = static_cast<int>(gridDim.x * blockDim.y);
  for (int item = static_cast<int>(blockIdx.x * blockDim.y + threadIdx.y); item < p.items; item += item_stride) {
    const int group = item % p.col_groups;
    const int rest = item / p.col_groups;
    const int oh = rest % s.out_h;
    const int n = rest / s.out_h;
    const int ow0 = group * kVecOutW;
    const int ih0 = oh * s.stride_h - s.pad_top;
    const int iw0 = ow0 * s.stride_w - s.pad_left;
    const scalar_t* const image = in + n * p.in_image;
    float acc[1][kVecOutW][kVec];
#pragma unroll
    for (int t = 0; t < kVecOutW; ++t) {
#pragma unroll
      for (int v = 0; v < kVec; ++v) acc[0][t][v] = lane_bias.v[v];
    }
    const auto row_ok = [&](int r) { return static_cast<unsigned>(ih0 + r) < static_cast<unsigned>(s.in_h); };
    const auto load = [&](int r, int k) {
      const int iw = iw0 + k;
      if (static_cast<unsigned>(iw) >= static_cast<unsigned>(s.in_w)) return Pack<kVec>{};
      return load_pack<scalar_t, kVec>(image + ((ih0 + r) * s.in_w + iw) * s.channels + c0);
    };
    const auto tap_weights = [&](int i, int j) {
      return *reinterpret_cast<const Pack<kVec>*>(lane_weights + (i * kernel_w + j) * block_channels);
    };
    if constexpr (kStatic) {
      accumulate_static<K, K, S, 1, kVecOutW, kVec>(acc, load, tap_weights, row_ok);
    } else {
      accumulate_dynamic<1, kVecOutW, kVec>(acc, load, tap_weights, row_ok, s.kernel_h, s.kernel_w, s.stride_h,
                                            s.stride_w, s.dilation_h, s.dilation_w);
    }
    out_t* const dst = out + n * p.out_image + (oh * s.out_w + ow0) * s.channels + c0;
#pragma unroll
    for (int t = 0; t < kVecOutW; ++t) {
      if (ow0 + t < s.out_w) store_pack<out_t, kVec>(dst + t * s.channels, acc[0][t], act);
    }
  }
}

struct TileParams {
  ConvShape s;
  int planes;           // batch * out_channels
  int tiles_w;          // output tiles along W per plane
  int tiles_per_plane;
  int rows_in, cols_in; // the staged input tile: (tile_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1 rows
  int64_t in_plane;     // in_h * in_w
  int64_t out_plane;    // out_h * out_w
};

// NCHW. blockDim = (bx, by, bz): bz planes, each an output tile of (by * kOutH) x (bx * kOutW); blockIdx.x =
// plane group * tiles_per_plane + tile, so consecutive blocks share halo rows in L2. Shared memory:
// [bz][taps] weights (runtime shapes only), then [bz][rows_in][cols_in] input tiles.
template <typename scalar_t, typename out_t, int K, int S>
__global__ void __launch_bounds__(kTileThreads)
plane_tile_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ weight,
                  const scalar_t* __restrict__ bias, out_t* __restrict__ out, TileParams p, Activation act) {
  constexpr bool kStatic = K > 0;
  constexpr int kOutW = tile_out_w(K);
  const ConvShape& s = p.s;
  const int taps = kStatic ? K * K : s.kernel_h * s.kernel_w;
  const int stride_h = kStatic ? S : s.stride_h;
  const int stride_w = kStatic ? S : s.stride_w;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  float* const plane_weights = reinterpret_cast<float*>(shared_bytes);
  float* const tiles = plane_weights + (kStatic ? 0 : static_cast<int>(blockDim.z) * taps);
  const int thread = static_cast<int>((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
  const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);  // a multiple of 32
  const int tile = static_cast<int>(blockIdx.x) % p.tiles_per_plane;
  const int first_plane = static_cast<int>(blockIdx.x) / p.tiles_per_plane * static_cast<int>(blockDim.z);
  const int tile_y = tile / p.tiles_w;
  const int tile_x = tile - tile_y * p.tiles_w;
  const int oh0 = tile_y * static_cast<int>(blockDim.y) * kOutH;
  const int ow0 = tile_x * static_cast<int>(blockDim.x) * kOutW;
  const int ih0 = oh0 * stride_h - s.pad_top;
  const int iw0 = ow0 * stride_w - s.pad_left;

  // Stage the input tiles: warp w fills tile rows w, w + warps, ... (coalesced along the row), zeros outside.
  const int lane = thread % 32;
  for (int row = thread / 32; row < static_cast<int>(blockDim.z) * p.rows_in; row += threads / 32) {
    const int z = row / p.rows_in;
    const int ih = ih0 + (row - z * p.rows_in);
    const int plane = first_plane + z;
    float* const dst = tiles + row * p.cols_in;
    if (plane < p.planes && static_cast<unsigned>(ih) < static_cast<unsigned>(s.in_h)) {
      const int n = plane / s.out_channels;
      const int c = (plane - n * s.out_channels) / s.multiplier;
      const scalar_t* const src = in + (static_cast<int64_t>(n) * s.channels + c) * p.in_plane + ih * s.in_w;
      for (int col = lane; col < p.cols_in; col += 32) {
        const int iw = iw0 + col;
        dst[col] = static_cast<unsigned>(iw) < static_cast<unsigned>(s.in_w) ? static_cast<float>(src[iw]) : 0.f;
      }
    } else {
      for (int col = lane; col < p.cols_in; col += 32) dst[col] = 0.f;
    }
  }
  const int plane = first_plane + static_cast<int>(threadIdx.z);
  const bool active = plane < p.planes;
  const int o = active ? plane % s.out_channels : 0;
  [[maybe_unused]] float static_weights[kStatic ? K * K : 1];
  if constexpr (kStatic) {
#pragma unroll
    for (int tap = 0; tap < K * K; ++tap) {
      static_weights[tap] = active ? static_cast<float>(weight[o * taps + tap]) : 0.f;
    }
  } else {
    for (int idx = thread; idx < static_cast<int>(blockDim.z) * taps; idx += threads) {
      const int z = idx / taps;
      const int tap_plane = first_plane + z;
      plane_weights[idx] = tap_plane < p.planes
                               ? static_cast<float>(weight[(tap_plane % s.out_channels) * taps + (idx - z * taps)])
                               : 0.f;
    }
  }
  __syncthreads();  // the only barrier
  if (!active) return;

  const float bias_value = bias != nullptr ? static_cast<float>(bias[o]) : 0.f;
  float acc[kOutH][kOutW][1];
#pragma unroll
  for (int u = 0; u < kOutH; ++u) {
#pragma unroll
    for (int t = 0; t < kOutW; ++t) acc[u][t][0] = bias_value;
  }
  // This thread's first input pixel inside its plane's tile.
  const float* const origin = tiles + (static_cast<int>(threadIdx.z) * p.rows_in +
                                       static_cast<int>(threadIdx.y) * kOutH * stride_h) * p.cols_in +
                              static_cast<int>(threadIdx.x) * kOutW * stride_w;
  const auto load = [&](int r, int k) { return Pack<1>{{origin[r * p.cols_in + k]}}; };
  const auto row_ok = [](int) { return true; };  // the tile holds the padding as zeros
  if constexpr (kStatic) {
    const auto tap_weight = [&](int i, int j) { return Pack<1>{{static_weights[i * K + j]}}; };
    accumulate_static<K, K, S, kOutH, kOutW, 1>(acc, load, tap_weight, row_ok);
  } else {
    const float* const weights = plane_weights + static_cast<int>(threadIdx.z) * taps;
    const auto tap_weight = [&](int i, int j) { return Pack<1>{{weights[i * s.kernel_w + j]}}; };
    accumulate_dynamic<kOutH, kOutW, 1>(acc, load, tap_weight, row_ok, s.kernel_h, s.kernel_w, stride_h, stride_w,
                                        s.dilation_h, s.dilation_w);
  }
  out_t* const dst = out + plane * p.out_plane;
  const int oh = oh0 + static_cast<int>(threadIdx.y) * kOutH;
  const int ow = ow0 + static_cast<int>(threadIdx.x) * kOutW;
#pragma unroll
  for (int u = 0; u < kOutH; ++u) {
    if (oh + u >= s.out_h) break;
#pragma unroll
    for (int t = 0; t < kOutW; ++t) {
      if (ow + t < s.out_w) dst[(oh + u) * s.out_w + ow + t] = static_cast<out_t>(apply_activation(act, acc[u][t][0]));
    }
  }
}

// grad_preact[k] = grad_output[k] * activation'(value[k]); all dense with the same strides.
template <typename scalar_t, typename value_t, typename index_t>
__global__ void preactivation_grad_kernel(const scalar_t* __restrict__ grad, const value_t* __restrict__ value,
                                          at::opmath_type<scalar_t>* __restrict__ out, Activation act,
                                          index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t grid_stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += grid_stride) {
    const acc_t factor = value != nullptr ? activation_derivative(act, static_cast<acc_t>(value[k])) : acc_t(1);
    out[k] = static_cast<acc_t>(grad[k]) * factor;
  }
}

// kStride > 0: the stride on both axes at compile time (the tap tests below become bit operations for 2).
template <typename scalar_t, typename index_t, bool kChannelsLast, int kKernelH, int kKernelW, int kStride>
__global__ void grad_input_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_pre,
                                  const scalar_t* __restrict__ weight, scalar_t* __restrict__ grad_in,
                                  DepthwiseGeometry g, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t kernel_h = kKernelH > 0 ? kKernelH : static_cast<index_t>(g.kernel_h);
  const index_t kernel_w = kKernelW > 0 ? kKernelW : static_cast<index_t>(g.kernel_w);
  const index_t out_h = g.out_h, out_w = g.out_w;
  const index_t stride_h = kStride > 0 ? kStride : static_cast<index_t>(g.stride_h);
  const index_t stride_w = kStride > 0 ? kStride : static_cast<index_t>(g.stride_w);
  const index_t pad_top = g.pad_top, pad_left = g.pad_left, dilation_h = g.dilation_h, dilation_w = g.dilation_w;
  const index_t multiplier = g.multiplier;
  const DenseIndex<index_t, kChannelsLast> in_index{static_cast<index_t>(g.channels), static_cast<index_t>(g.in_h),
                                                    static_cast<index_t>(g.in_w)};
  const DenseIndex<index_t, kChannelsLast> out_index{static_cast<index_t>(g.out_channels), out_h, out_w};
  const index_t grid_stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t linear = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; linear < total;
       linear += grid_stride) {
    index_t n, c, ih, iw;
    in_index.decode(linear, n, c, ih, iw);
    acc_t acc = 0;
    for (index_t k = 0; k < multiplier; ++k) {
      const index_t o = c * multiplier + k;
      const scalar_t* w_o = weight + o * kernel_h * kernel_w;
#pragma unroll
      for (index_t i = 0; i < kernel_h; ++i) {
        const index_t oh_scaled = ih + pad_top - i * dilation_h;  // = oh * stride_h when this tap reaches ih
        if (oh_scaled < 0 || oh_scaled % stride_h != 0) continue;
        const index_t oh = oh_scaled / stride_h;
        if (oh >= out_h) continue;
#pragma unroll
        for (index_t j = 0; j < kernel_w; ++j) {
          const index_t ow_scaled = iw + pad_left - j * dilation_w;
          if (ow_scaled < 0 || ow_scaled % stride_w != 0) continue;
          const index_t ow = ow_scaled / stride_w;
          if (ow >= out_w) continue;
          acc += static_cast<acc_t>(w_o[i * kernel_w + j]) * grad_pre[out_index.offset(n, o, oh, ow)];
        }
      }
    }
    grad_in[linear] = static_cast<scalar_t>(acc);
  }
}

// ---- Host: launch planning and dispatch -------------------------------------------------------------------

// Calls fn(std::integral_constant<int, kh>, std::integral_constant<int, kw>): 3x3 and 5x5 compile-time,
// anything else runtime (0). For the generic kernels.
template <typename Fn>
void dispatch_kernel_size(const DepthwiseGeometry& g, Fn&& fn) {
  if (g.kernel_h == 3 && g.kernel_w == 3) return fn(std::integral_constant<int, 3>{}, std::integral_constant<int, 3>{});
  if (g.kernel_h == 5 && g.kernel_w == 5) return fn(std::integral_constant<int, 5>{}, std::integral_constant<int, 5>{});
  return fn(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
}

// 32-bit indexing when every offset of every tensor, and the grid-stride index, fits.
bool use_int32(int64_t largest_numel, unsigned int blocks) {
  return fits_int32(largest_numel + int64_t{blocks} * kThreads);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t pow2_ceil(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}

// The tiled kernels' template shape: kernel K x K and stride S along both axes as compile-time constants for
// the common MobileNet/ShuffleNet/EfficientNet layers (3x3 and 5x5, dilation 1, stride 1 or 2); {0, 0}, the
// runtime instance, for everything else (kernels >= 7, 1xk, even sizes, dilation, strides 3-4 or unequal).
struct TileShape {
  int kernel, stride;
};

TileShape tile_shape(const DepthwiseGeometry& g) {
  const bool square = g.kernel_h == g.kernel_w && g.stride_h == g.stride_w && g.dilation_h == 1 && g.dilation_w == 1;
  if (square && (g.kernel_h == 3 || g.kernel_h == 5) && (g.stride_h == 1 || g.stride_h == 2)) {
    return {static_cast<int>(g.kernel_h), static_cast<int>(g.stride_h)};
  }
  return {0, 0};
}

// Calls fn(std::integral_constant<int, K>, std::integral_constant<int, S>) for `shape`.
template <typename Fn>
void dispatch_tile_shape(TileShape shape, Fn&& fn) {
  using std::integral_constant;
  if (shape.kernel == 3 && shape.stride == 1) return fn(integral_constant<int, 3>{}, integral_constant<int, 1>{});
  if (shape.kernel == 3 && shape.stride == 2) return fn(integral_constant<int, 3>{}, integral_constant<int, 2>{});
  if (shape.kernel == 5 && shape.stride == 1) return fn(integral_constant<int, 5>{}, integral_constant<int, 1>{});
  if (shape.kernel == 5 && shape.stride == 2) return fn(integral_constant<int, 5>{}, integral_constant<int, 2>{});
  return fn(integral_constant<int, 0>{}, integral_constant<int, 0>{});
}

// The geometry in 32-bit ints, or nothing when a coordinate a tiled kernel forms could leave that range:
// input rows/columns of every tile (overhanging tiles included) and weight offsets stay below 2^30.
std::optional<ConvShape> conv_shape(const DepthwiseGeometry& g) {
  constexpr int64_t kLimit = int64_t{1} << 30;
  for (const int64_t v : {g.batch, g.out_channels, g.in_h, g.in_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
                          g.pad_top, g.pad_left, g.dilation_h, g.dilation_w}) {
    if (v >= kLimit) return std::nullopt;
  }
  const auto reach = [](int64_t out, int64_t stride, int64_t kernel, int64_t dilation, int64_t pad) {
    return (out + 64) * stride + (kernel - 1) * dilation + pad;  // 64: more than any tile's overhang
  };
  if (reach(g.out_h, g.stride_h, g.kernel_h, g.dilation_h, g.pad_top) >= kLimit ||
      reach(g.out_w, g.stride_w, g.kernel_w, g.dilation_w, g.pad_left) >= kLimit ||
      g.out_channels * g.taps() >= kLimit) {
    return std::nullopt;
  }
  const auto i32 = [](int64_t v) { return static_cast<int>(v); };
  return ConvShape{i32(g.batch),    i32(g.channels),   i32(g.multiplier), i32(g.out_channels),
                   i32(g.in_h),     i32(g.in_w),       i32(g.out_h),      i32(g.out_w),
                   i32(g.kernel_h), i32(g.kernel_w),   i32(g.stride_h),   i32(g.stride_w),
                   i32(g.pad_top),  i32(g.pad_left),   i32(g.dilation_h), i32(g.dilation_w)};
}

struct ChannelsLastPlan {
  ChannelsLastParams params;
  dim3 grid, block;
  int shared_bytes;
};

// channels_last_kernel's launch for vectors of `vec` channels, or nothing when it does not apply.
std::optional<ChannelsLastPlan> plan_channels_last(const DepthwiseGeometry& g, const ConvShape& s, int vec,
                                                   int sm_count) {
  if (g.multiplier != 1 || g.channels % vec != 0) return std::nullopt;
  const int64_t in_image = g.in_h * g.in_w * g.channels;
  const int64_t out_image = g.out_h * g.out_w * g.channels;
  if (!fits_int32(in_image) || !fits_int32(out_image)) return std::nullopt;
  // Lanes (channel vectors) per block: up to a warp, as many as the staged weights allow without opting in
  // (a 31x31 kernel of 8 halves per lane takes 30 KiB per lane), spread evenly over the channel blocks.
  const int64_t lane_bytes = (g.taps() + 1) * vec * int64_t{sizeof(float)};
  const int64_t max_lanes = kStaticSharedBytes / lane_bytes;
  if (max_lanes < 1) return std::nullopt;
  const int64_t vectors = g.channels / vec;
  const int64_t channel_blocks = ceil_div(vectors, std::min<int64_t>({32, vectors, max_lanes}));
  if (channel_blocks > 65535) return std::nullopt;  // gridDim.y
  const int64_t lanes = ceil_div(vectors, channel_blocks);
  const int64_t rows = kThreads / lanes;
  const int64_t col_groups = ceil_div(g.out_w, kVecOutW);
  const int64_t items = g.batch * g.out_h * col_groups;
  // 8 blocks per SM in all: a few waves of resident blocks, each looping over enough items that staging its
  // weights is a small part of its work; never more blocks than the items need.
  const int64_t blocks =
      std::min(ceil_div(items, rows), std::max<int64_t>(1, ceil_div(int64_t{sm_count} * 8, channel_blocks)));
  if (!fits_int32(items + blocks * rows)) return std::nullopt;  // the grid-stride index must not wrap
  ChannelsLastPlan plan;
  plan.params = ChannelsLastParams{s, static_cast<int>(col_groups), static_cast<int>(items), in_image, out_image};
  plan.grid = dim3(static_cast<unsigned int>(blocks), static_cast<unsigned int>(channel_blocks));
  plan.block = dim3(static_cast<unsigned int>(lanes), static_cast<unsigned int>(rows));
  plan.shared_bytes = static_cast<int>(lanes * lane_bytes);
  return plan;
}

struct TilePlan {
  TileParams params;
  dim3 grid, block;
  int shared_bytes;
};

// plane_tile_kernel's launch, or nothing when it does not apply. out_w_per_thread and weights_in_shared
// follow the template instance (tile_out_w(K), K == 0).
std::optional<TilePlan> plan_plane_tiles(const DepthwiseGeometry& g, const ConvShape& s, int out_w_per_thread,
                                         bool weights_in_shared, int64_t max_shared_bytes) {
  const int64_t planes = g.batch * g.out_channels;
  if (!fits_int32(planes) || !fits_int32(g.in_h * g.in_w) || !fits_int32(g.out_h * g.out_w)) return std::nullopt;
  // A tile as wide as 8 threads and as high as the 128 threads allow, shrunk (powers of two) to the plane;
  // the threads left over take further planes (bz): 7x7 planes get 2 x 4 threads each, 16 planes per block.
  const int64_t bx = std::min<int64_t>(8, pow2_ceil(ceil_div(g.out_w, out_w_per_thread)));
  const int64_t by = std::min<int64_t>(kTileThreads / bx, pow2_ceil(ceil_div(g.out_h, kOutH)));
  int64_t bz = std::min<int64_t>(64, kTileThreads / (bx * by));  // 64: the blockDim.z limit
  const int64_t tile_h = by * kOutH;
  const int64_t tile_w = bx * out_w_per_thread;
  const int64_t rows_in = (tile_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
  const int64_t cols_in = (tile_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  if (rows_in * cols_in > max_shared_bytes) return std::nullopt;  // a huge dilation: not even one tile fits
  const int64_t plane_bytes = (rows_in * cols_in + (weights_in_shared ? g.taps() : 0)) * int64_t{sizeof(float)};
  // Fewer planes per block while half of them still cover all planes, or to stay within 48 KiB; always whole
  // warps (the staging loop hands out tile rows per warp).
  while (bz > 1 && bx * by * (bz / 2) >= 32 && (bz / 2 >= planes || bz * plane_bytes > kStaticSharedBytes)) bz /= 2;
  if (bz * plane_bytes > max_shared_bytes) return std::nullopt;
  const int64_t tiles_w = ceil_div(g.out_w, tile_w);
  const int64_t tiles_per_plane = tiles_w * ceil_div(g.out_h, tile_h);
  const int64_t blocks = ceil_div(planes, bz) * tiles_per_plane;
  if (!fits_int32(blocks)) return std::nullopt;
  TilePlan plan;
  plan.params = TileParams{s,
                           static_cast<int>(planes),
                           static_cast<int>(tiles_w),
                           static_cast<int>(tiles_per_plane),
                           static_cast<int>(rows_in),
                           static_cast<int>(cols_in),
                           g.in_h * g.in_w,
                           g.out_h * g.out_w};
  plan.grid = dim3(static_cast<unsigned int>(blocks));
  plan.block = dim3(static_cast<unsigned int>(bx), static_cast<unsigned int>(by), static_cast<unsigned int>(bz));
  plan.shared_bytes = static_cast<int>(bz * plane_bytes);
  return plan;
}

// The widest channel vector one load can move in channels_last: 16 or 8 bytes when the channel count is a
// multiple of it and both base pointers are aligned to it (every pixel then starts aligned too), else one
// element. The input is dense (contiguous(format)) but may still start at an odd storage offset.
int channels_last_vector_width(int64_t channels, const void* in, const void* out, int in_size, int out_size) {
  for (const int bytes : {16, 8}) {
    const int vec = bytes / in_size;
    const int out_bytes = std::min(16, vec * out_size);
    if (vec >= 1 && channels % vec == 0 && reinterpret_cast<std::uintptr_t>(in) % bytes == 0 &&
        reinterpret_cast<std::uintptr_t>(out) % out_bytes == 0) {
      return vec;
    }
  }
  return 1;
}

template <typename scalar_t, typename out_t>
bool launch_channels_last(const at::Tensor& in, const at::Tensor& w, const scalar_t* bias, const at::Tensor& out,
                          const DepthwiseGeometry& g, const ConvShape& s, Activation act, cudaStream_t stream) {
  constexpr int kWide = 16 / sizeof(scalar_t);
  constexpr int kNarrow = 8 / sizeof(scalar_t);
  const int vec = channels_last_vector_width(g.channels, in.const_data_ptr(), out.const_data_ptr(),
                                             sizeof(scalar_t), sizeof(out_t));
  const auto plan = plan_channels_last(g, s, vec, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  if (!plan) return false;
  const scalar_t* in_ptr = in.const_data_ptr<scalar_t>();
  const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
  out_t* out_ptr = out.mutable_data_ptr<out_t>();
  dispatch_tile_shape(tile_shape(g), [&](auto kernel_tag, auto stride_tag) {
    constexpr int K = decltype(kernel_tag)::value;
    constexpr int S = decltype(stride_tag)::value;
    const auto run = [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      channels_last_kernel<scalar_t, out_t, kVec, K, S><<<plan->grid, plan->block, plan->shared_bytes, stream>>>(
          in_ptr, w_ptr, bias, out_ptr, plan->params, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vec == kWide) {
      run(std::integral_constant<int, kWide>{});
    } else if (vec == kNarrow) {
      run(std::integral_constant<int, kNarrow>{});
    } else {
      run(std::integral_constant<int, 1>{});
    }
  });
  return true;
}

template <typename scalar_t, typename out_t>
bool launch_plane_tiles(const at::Tensor& in, const at::Tensor& w, const scalar_t* bias, const at::Tensor& out,
                        const DepthwiseGeometry& g, const ConvShape& s, Activation act, cudaStream_t stream) {
  const TileShape shape = tile_shape(g);
  const auto plan = plan_plane_tiles(g, s, tile_out_w(shape.kernel), shape.kernel == 0,
                                     at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  if (!plan) return false;
  const scalar_t* in_ptr = in.const_data_ptr<scalar_t>();
  const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
  out_t* out_ptr = out.mutable_data_ptr<out_t>();
  dispatch_tile_shape(shape, [&](auto kernel_tag, auto stride_tag) {
    constexpr int K = decltype(kernel_tag)::value;
    constexpr int S = decltype(stride_tag)::value;
    const auto kernel = plane_tile_kernel<scalar_t, out_t, K, S>;
    if (plan->shared_bytes > kStaticSharedBytes) {  // large dilations: opt in (a per-device kernel attribute)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan->shared_bytes));
    }
    kernel<<<plan->grid, plan->block, plan->shared_bytes, stream>>>(in_ptr, w_ptr, bias, out_ptr, plan->params, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return true;
}

// The forward's dispatch: runs the tiled kernel that covers the call and returns true, or returns false and
// the caller runs the generic forward_kernel.
//   float64 (the CPU/gradcheck dtype; not worth instances)             -> false
//   a coordinate or the weight past 2^30 (conv_shape)                  -> false
//   channels_last, multiplier 1                                        -> channels_last_kernel<kVec, K, S>
//       kVec: 16 bytes of channels, else 8, when C and both pointers allow it, else one element; false when
//       an image has 2^31 elements or more, the items reach 2^31, or C / kVec needs > 65535 channel blocks
//   channels_last, multiplier > 1                                      -> false
//   NCHW, any multiplier                                               -> plane_tile_kernel<K, S>
//       false when a plane has 2^31 elements or more, the planes or blocks reach 2^31, or one tile's shared
//       memory is past the device's opt-in limit (a huge dilation)
//   K, S for both: 3x3 or 5x5, dilation 1, stride 1 or 2 on both axes -> unrolled; anything else -> 0, 0
//       (runtime instance: >= 7x7 up to 31x31, 1xk and even kernels, dilation, strides 3-4 or unequal)
template <typename scalar_t, typename out_t>
bool launch_fast_forward(const at::Tensor& in, const at::Tensor& w, const scalar_t* bias, const at::Tensor& out,
                         const DepthwiseGeometry& g, Activation act, bool channels_last, cudaStream_t stream) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    const std::optional<ConvShape> s = conv_shape(g);
    if (!s) return false;
    return channels_last ? launch_channels_last<scalar_t, out_t>(in, w, bias, out, g, *s, act, stream)
                         : launch_plane_tiles<scalar_t, out_t>(in, w, bias, out, g, *s, act, stream);
  }
}

at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, Activation act,
                        bool accumulate_output = false) {
  const DepthwiseGeometry g = check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat format = depthwise_memory_format(input);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const at::ScalarType out_dtype = accumulate_output ? at::toOpMathType(input.scalar_type()) : input.scalar_type();
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().dtype(out_dtype).memory_format(format));
  if (output.numel() == 0) return output;
  // Dense in the chosen format: a no-op unless the input is a strided view. The kernels index it with the
  // format's dense offsets (size-1 dimensions, whose strides may be anything, never move an offset).
  const at::Tensor in = input.contiguous(format);
  const at::Tensor w = weight.contiguous();  // (C*m, 1, kh, kw): tiny
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t total = output.numel();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    const scalar_t* bias_ptr = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const auto launch_generic = [&](auto out_tag, auto kh, auto kw) {
      using out_t = decltype(out_tag);
      constexpr int KH = decltype(kh)::value;
      constexpr int KW = decltype(kw)::value;
      const unsigned int blocks = grid_stride_blocks(total, kThreads);
      const bool int32 = use_int32(std::max(total, in.numel()), blocks);
      out_t* out_ptr = output.mutable_data_ptr<out_t>();
      const scalar_t* in_ptr = in.const_data_ptr<scalar_t>();
      const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
      if (channels_last) {
        if (int32) {
          forward_kernel<scalar_t, out_t, int32_t, true, KH, KW><<<blocks, kThreads, 0, stream>>>(
              in_ptr, w_ptr, bias_ptr, out_ptr, g, act, static_cast<int32_t>(total));
        } else {
          forward_kernel<scalar_t, out_t, int64_t, true, KH, KW><<<blocks, kThreads, 0, stream>>>(
              in_ptr, w_ptr, bias_ptr, out_ptr, g, act, total);
        }
      } else {
        if (int32) {
          forward_kernel<scalar_t, out_t, int32_t, false, KH, KW><<<blocks, kThreads, 0, stream>>>(
              in_ptr, w_ptr, bias_ptr, out_ptr, g, act, static_cast<int32_t>(total));
        } else {
          forward_kernel<scalar_t, out_t, int64_t, false, KH, KW><<<blocks, kThreads, 0, stream>>>(
              in_ptr, w_ptr, bias_ptr, out_ptr, g, act, total);
        }
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    const auto run = [&](auto out_tag) {
      using out_t = decltype(out_tag);
      if (launch_fast_forward<scalar_t, out_t>(in, w, bias_ptr, output, g, act, channels_last, stream)) return;
      dispatch_kernel_size(g, [&](auto kh, auto kw) { launch_generic(out_tag, kh, kw); });
    };
    if (accumulate_output) {
      run(at::opmath_type<scalar_t>{});
    } else {
      run(scalar_t{});
    }
  });
  return output;
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 std::optional<std::string_view> activation) {
  return forward_impl(input, weight, bias, stride, padding, dilation,
                      parse_activation(activation, "depthwise_conv2d"));
}

// grad_input through the tiled forward kernels: at stride 1 with multiplier 1, grad_input[c] is grad_preact[c]
// correlated with the kernel turned by 180 degrees, padded by (kernel - 1) * dilation - pad before each axis
// (input row r gathers grad rows r + pad - i * dilation = r - pad' + (kernel - 1 - i) * dilation). The forward
// kernels read the float grad_preact and write scalar_t. Returns false where this does not hold or no tiled
// kernel applies (strides, multipliers, float64, a padding past the kernel's reach); the caller then runs the
// gather kernel.
template <typename scalar_t>
bool launch_grad_input_as_forward(const at::Tensor& grad_pre, const at::Tensor& weight, const at::Tensor& grad_input,
                                  const DepthwiseGeometry& g, bool channels_last, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    const int64_t pad_top = (g.kernel_h - 1) * g.dilation_h - g.pad_top;
    const int64_t pad_left = (g.kernel_w - 1) * g.dilation_w - g.pad_left;
    if (g.stride_h != 1 || g.stride_w != 1 || g.multiplier != 1 || pad_top < 0 || pad_left < 0) return false;
    DepthwiseGeometry t = g;
    t.in_h = g.out_h;
    t.in_w = g.out_w;
    t.out_h = g.in_h;
    t.out_w = g.in_w;
    t.pad_top = pad_top;
    t.pad_left = pad_left;
    const at::Tensor flipped = weight.flip({2, 3}).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    return launch_fast_forward<acc_t, scalar_t>(grad_pre, flipped, nullptr, grad_input, t, Activation::kNone,
                                                channels_last, stream);
  }
}

// grad_weight / grad_bias (either may be undefined) from the float grad_preact and the input (undefined when
// only grad_bias is asked for); see depthwise_conv2d_grad_weight.cuh.
template <typename scalar_t>
void launch_grad_weight(const at::Tensor& grad_pre, const at::Tensor& in, at::Tensor& grad_weight,
                        at::Tensor& grad_bias, const DepthwiseGeometry& g, bool channels_last, bool int32,
                        cudaStream_t stream) {
  namespace gw = depthwise_grad_weight;
  using acc_t = at::opmath_type<scalar_t>;
  const bool weight_taps = grad_weight.defined();
  const acc_t* gp = grad_pre.const_data_ptr<acc_t>();
  const scalar_t* in_ptr = weight_taps ? in.const_data_ptr<scalar_t>() : nullptr;
  at::Tensor partial;
  int64_t chunks = 0;
  dispatch_kernel_size(g, [&](auto kh, auto kw) {
    constexpr int KH = decltype(kh)::value;
    constexpr int KW = decltype(kw)::value;
    const gw::Plan plan = gw::make_plan(g, channels_last, KH > 0, weight_taps);
    chunks = plan.chunks;
    partial = at::empty({plan.chunks * (g.taps() + 1) * g.out_channels}, grad_pre.options());
    acc_t* dst = partial.mutable_data_ptr<acc_t>();
    const dim3 grid(static_cast<unsigned int>(plan.tiles), static_cast<unsigned int>(plan.chunks),
                    static_cast<unsigned int>(std::min(plan.slices, gw::kMaxGridYZ)));
    const auto launch = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      if (channels_last) {
        gw::partial_channels_last_kernel<scalar_t, acc_t, index_t, KH, KW><<<grid, gw::kBlock, 0, stream>>>(
            gp, in_ptr, dst, g, plan.rows_per_chunk, plan.slices, weight_taps);
      } else {
        gw::partial_nchw_kernel<scalar_t, acc_t, index_t, KH, KW><<<grid, gw::kBlock, 0, stream>>>(
            gp, in_ptr, dst, g, plan.rows_per_chunk, plan.slices, weight_taps);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (int32) {
      launch(int32_t{});
    } else {
      launch(int64_t{});
    }
  });
  const int64_t row = (g.taps() + 1) * g.out_channels;
  gw::finish_kernel<scalar_t, acc_t><<<grid_stride_blocks(row, kThreads), kThreads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), chunks, g, weight_taps ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr,
      grad_bias.defined() ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& output, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::optional<std::string_view> activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation, "_depthwise_conv2d_backward");
  const DepthwiseGeometry g = check_depthwise_backward_args(grad_output, input, weight, bias, output, input_size,
                                                            stride, padding, dilation, act, output_mask);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::MemoryFormat format = depthwise_backward_memory_format(grad_output, input);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty(input_size, weight.options().memory_format(format));
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({g.out_channels}, weight.options());
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {grad_input, grad_weight, grad_bias};
  if (grad_output.numel() == 0) {
    if (grad_weight.defined()) grad_weight.zero_();
    if (grad_bias.defined()) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  // hardswish/silu: recompute the pre-activation in float (see csrc/cpu/depthwise_conv2d.cpp).
  const at::Tensor value =
      derivative_needs_preactivation(act)
          ? forward_impl(*input, weight, bias, stride, padding, dilation, Activation::kNone, true)
          : (act == Activation::kNone ? at::Tensor() : output->contiguous(format));
  const at::Tensor grad = grad_output.contiguous(format);
  const at::Tensor in = grad_weight.defined() ? input->contiguous(format) : at::Tensor();
  const at::Tensor w = weight.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t out_numel = grad.numel();
  const int64_t in_numel = g.batch * g.channels * g.in_h * g.in_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "depthwise_conv2d_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // No activation in float32/float64: grad_output (dense in `format`) is grad_preact already; no pass.
    const bool grad_is_preact = act == Activation::kNone && std::is_same_v<scalar_t, acc_t>;
    at::Tensor grad_pre = grad;
    if (!grad_is_preact) {
      grad_pre = at::empty(grad.sizes(),
                           grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value).memory_format(format));
      const unsigned int blocks = grid_stride_blocks(out_numel, kThreads);
      const auto run = [&](auto* value_ptr) {
        if (use_int32(out_numel, blocks)) {
          preactivation_grad_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
              grad.const_data_ptr<scalar_t>(), value_ptr, grad_pre.mutable_data_ptr<acc_t>(), act,
              static_cast<int32_t>(out_numel));
        } else {
          preactivation_grad_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
              grad.const_data_ptr<scalar_t>(), value_ptr, grad_pre.mutable_data_ptr<acc_t>(), act, out_numel);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (!value.defined()) {
        run(static_cast<const scalar_t*>(nullptr));
      } else if (value.scalar_type() == weight.scalar_type()) {
        run(value.const_data_ptr<scalar_t>());
      } else {
        run(value.const_data_ptr<acc_t>());
      }
    }
    if (grad_input.defined() && !launch_grad_input_as_forward<scalar_t>(grad_pre, w, grad_input, g, channels_last,
                                                                          stream)) {
      const unsigned int blocks = grid_stride_blocks(in_numel, kThreads);
      const bool int32 = use_int32(std::max(in_numel, out_numel), blocks);
      const acc_t* gp = grad_pre.const_data_ptr<acc_t>();
      const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
      scalar_t* dst = grad_input.mutable_data_ptr<scalar_t>();
      dispatch_kernel_size(g, [&](auto kh, auto kw) {
        constexpr int KH = decltype(kh)::value;
        constexpr int KW = decltype(kw)::value;
        const auto launch = [&](auto index_tag, auto layout_tag, auto stride_tag) {
          using index_t = decltype(index_tag);
          grad_input_kernel<scalar_t, index_t, decltype(layout_tag)::value, KH, KW, decltype(stride_tag)::value>
              <<<blocks, kThreads, 0, stream>>>(gp, w_ptr, dst, g, static_cast<index_t>(in_numel));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        const auto with_stride = [&](auto index_tag, auto layout_tag) {
          if constexpr (KH > 0) {  // MobileNet's and ShuffleNet's stride-2 layers
            if (g.stride_h == 2 && g.stride_w == 2) {
              launch(index_tag, layout_tag, std::integral_constant<int, 2>{});
              return;
            }
          }
          launch(index_tag, layout_tag, std::integral_constant<int, 0>{});
        };
        const auto with_layout = [&](auto index_tag) {
          if (channels_last) {
            with_stride(index_tag, std::true_type{});
          } else {
            with_stride(index_tag, std::false_type{});
          }
        };
        if (int32) {
          with_layout(int32_t{});
        } else {
          with_layout(int64_t{});
        }
      });
    }
    if (grad_weight.defined() || grad_bias.defined()) {
      launch_grad_weight<scalar_t>(grad_pre, in, grad_weight, grad_bias, g, channels_last,
                                   fits_int32(std::max(in_numel, out_numel)), stream);
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
}

}  // namespace fastconv
