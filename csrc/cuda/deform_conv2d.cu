// deform_conv2d on CUDA, forward and backward; any strides (NHWC/channels_last is the fast, coalesced case),
// float accumulation (double for float64). Compiled for sm_90 in CI; no column buffer anywhere.
//
// Channels are processed in blocks of B <= 32 (the largest divisor of gcd(C/groups, C/offset_groups) up to
// 32), so a block never straddles a weight group or an offset group: one offset/mask load per (pixel, tap)
// serves all B channels of the block.
//
// Forward (sampling fused with the GEMM): one CTA computes a 64-pixel x 64-output-channel tile of one weight
//   group. Per (tap, channel block) it samples the tile's bilinear points once into shared memory (offsets and
//   mask read once), gathers the B x 64 samples into a shared-memory tile (a warp = the block's channels of one
//   pixel: coalesced in NHWC), stages the matching weight tile, and every thread multiply-accumulates a 4x4
//   register tile. The weight is pre-transposed to (groups, kh*kw, C/groups, C_out/groups) (small).
// Backward:
//   columns kernel: one CTA per (64 pixels, channel block, tap) forms grad_columns = weight^T grad_output for
//     its tile (shared-memory tiles over the output channels), scatters it into grad_input with atomicAdd and
//     reduces its channels' share of grad_offset/grad_mask with warp shuffles; a single channel block per
//     offset group stores those directly, several add them atomically.
//   weight kernel: one CTA per (64 output channels, channel block, tap) sums grad_output x samples over every
//     pixel of the batch in a fixed order (deterministic), straight into its own grad_weight entries.
// grad_input (and grad_offset/grad_mask with several blocks per offset group) use atomics: under
// torch.use_deterministic_algorithms(True) the backward raises through at::globalContext().alertNotDeterministic.
// Indices are 32-bit when every offset fits, 64-bit otherwise (chosen at launch).
#include "deform_conv2d.h"

#include <fastconv/cuda_launch.h>

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/DeviceUtils.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <tuple>

namespace fastconv {
namespace {

constexpr int kThreads = 256;
constexpr int kTileP = 64;  // output pixels per CTA
constexpr int kTileO = 64;  // output channels per CTA
constexpr int kMaxBlock = 32;  // channels per block: one warp's lanes
// The backward kernels stage smaller tiles so that float64 stays under the 48 KiB of static shared memory.
constexpr int kChunkO = 32;        // columns kernel: output channels per step of its reduction
constexpr int kWeightTileP = 32;   // weight kernel: pixels per step of its reduction

// Geometry and the sampled tensors, with index_t strides.
template <typename scalar_t, typename index_t>
struct DeformArgs {
  const scalar_t* input;
  index_t in_sn, in_sc, in_sh, in_sw;
  const scalar_t* offset;
  index_t off_sn, off_sc, off_sh, off_sw;
  const scalar_t* mask;  // nullptr: DCNv1
  index_t mask_sn, mask_sc, mask_sh, mask_sw;
  index_t batch, height, width, out_h, out_w, kernel_w, taps;
  index_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  index_t channels_per_group, outputs_per_group, channels_per_offset_group, block;
  C10_HOST_DEVICE index_t pixels() const { return out_h * out_w; }
};

// One sampling point in shared memory: the low corner, the fractional parts, the corner validity bits and
// the forward's range test, the mask value.
template <typename acc_t, typename index_t>
struct Point {
  index_t y0, x0;
  acc_t lh, lw, mask;
  unsigned char valid;  // bit c: corner c = (low/high y) * 2 + (low/high x) inside the image
  bool inside;          // (-1, H) x (-1, W)
};

template <typename scalar_t, typename acc_t, typename index_t>
__device__ Point<acc_t, index_t> make_point(const DeformArgs<scalar_t, index_t>& a, index_t p, index_t og,
                                            index_t k) {
  Point<acc_t, index_t> s;
  const index_t total = a.batch * a.pixels();
  if (p >= total) {
    s.y0 = s.x0 = 0;
    s.lh = s.lw = s.mask = acc_t(0);
    s.valid = 0;
    s.inside = false;
    return s;
  }
  const index_t n = p / a.pixels();
  const index_t q = p - n * a.pixels();
  const index_t oh = q / a.out_w, ow = q - oh * a.out_w;
  const index_t i = k / a.kernel_w, j = k - i * a.kernel_w;
  const scalar_t* off = a.offset + n * a.off_sn + (og * 2 * a.taps + 2 * k) * a.off_sc + oh * a.off_sh + ow * a.off_sw;
  const acc_t y = static_cast<acc_t>(oh * a.stride_h - a.pad_h + i * a.dilation_h) + static_cast<acc_t>(off[0]);
  const acc_t x = static_cast<acc_t>(ow * a.stride_w - a.pad_w + j * a.dilation_w) + static_cast<acc_t>(off[a.off_sc]);
  const BilinearPoint<acc_t> b(y, x, a.height, a.width, 0, 0);  // strides unused: corners come from y0/x0
  const bool near = y > acc_t(-2) && y < acc_t(a.height + 1) && x > acc_t(-2) && x < acc_t(a.width + 1);
  s.y0 = near ? static_cast<index_t>(::floor(y)) : index_t(-2);
  s.x0 = near ? static_cast<index_t>(::floor(x)) : index_t(-2);
  s.lh = b.lh;
  s.lw = b.lw;
  s.valid = (b.valid[0] ? 1 : 0) | (b.valid[1] ? 2 : 0) | (b.valid[2] ? 4 : 0) | (b.valid[3] ? 8 : 0);
  s.inside = b.inside;
  s.mask = a.mask ? static_cast<acc_t>(a.mask[n * a.mask_sn + (og * a.taps + k) * a.mask_sc + oh * a.mask_sh +
                                               ow * a.mask_sw])
                  : acc_t(1);
  return s;
}

// The four corner values of `plane` (zero for an invalid corner).
template <typename scalar_t, typename acc_t, typename index_t>
__device__ void corners(const scalar_t* plane, index_t sh, index_t sw, const Point<acc_t, index_t>& s, acc_t* v) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const index_t y = s.y0 + (c >> 1), x = s.x0 + (c & 1);
    v[c] = (s.valid >> c) & 1 ? static_cast<acc_t>(plane[y * sh + x * sw]) : acc_t(0);
  }
}

// The unmodulated bilinear sample (zero outside (-1, H) x (-1, W)).
template <typename acc_t, typename index_t>
__device__ acc_t interpolate(const Point<acc_t, index_t>& s, const acc_t* v) {
  if (!s.inside) return acc_t(0);
  const acc_t hh = acc_t(1) - s.lh, hw = acc_t(1) - s.lw;
  return hh * hw * v[0] + hh * s.lw * v[1] + s.lh * hw * v[2] + s.lh * s.lw * v[3];
}

// ---------------------------------------------------------------------------------------------- forward
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(DeformArgs<scalar_t, index_t> a, const at::opmath_type<scalar_t>* __restrict__ weight_t,
                   const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, index_t out_sn, index_t out_sc,
                   index_t out_sh, index_t out_sw) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ Point<acc_t, index_t> points[kTileP];
  __shared__ acc_t samples[kMaxBlock][kTileP + 1];  // +1: conflict-free column writes
  __shared__ acc_t weights[kMaxBlock][kTileO];
  const index_t total = a.batch * a.pixels();
  const index_t p_base = static_cast<index_t>(blockIdx.x) * kTileP;
  const index_t o_blocks = (a.outputs_per_group + kTileO - 1) / kTileO;
  const index_t group = static_cast<index_t>(blockIdx.y) / o_blocks;
  const index_t o_base = (static_cast<index_t>(blockIdx.y) % o_blocks) * kTileO;
  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;  // 16 x 16 threads, each a 4 x 4 (pixels x outputs) register tile
  const int lane = tid % kMaxBlock, row0 = tid / kMaxBlock;
  acc_t acc[4][4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = acc_t(0);
  }
  for (index_t k = 0; k < a.taps; ++k) {
    index_t cached_og = -1;
    for (index_t c0 = 0; c0 < a.channels_per_group; c0 += a.block) {
      const index_t c_first = group * a.channels_per_group + c0;
      const index_t og = c_first / a.channels_per_offset_group;
      __syncthreads();  // the previous step is done with points/samples/weights
      if (og != cached_og) {  // uniform across the CTA
        if (tid < kTileP) points[tid] = make_point<scalar_t, acc_t, index_t>(a, p_base + tid, og, k);
        cached_og = og;
      }
      for (int e = tid; e < kMaxBlock * kTileO; e += kThreads) {
        const int r = e / kTileO, col = e % kTileO;
        const index_t o = o_base + col;
        weights[r][col] = r < a.block && o < a.outputs_per_group
                              ? weight_t[((group * a.taps + k) * a.channels_per_group + c0 + r) * a.outputs_per_group + o]
                              : acc_t(0);
      }
      __syncthreads();  // points ready
      for (int pr = row0; pr < kTileP; pr += kThreads / kMaxBlock) {
        acc_t value = acc_t(0);
        const index_t p = p_base + pr;
        if (lane < a.block && p < total) {
          const Point<acc_t, index_t> s = points[pr];
          const index_t n = p / a.pixels();
          const scalar_t* plane = a.input + n * a.in_sn + (c_first + lane) * a.in_sc;
          acc_t v[4];
          corners(plane, a.in_sh, a.in_sw, s, v);
          value = s.mask * interpolate(s, v);
        }
        samples[lane][pr] = value;
      }
      __syncthreads();  // samples and weights ready
      for (int r = 0; r < kMaxBlock; ++r) {  // rows >= block are zero on both sides
        acc_t av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          av[i] = samples[r][ty * 4 + i];
          bv[i] = weights[r][tx * 4 + i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const index_t p = p_base + ty * 4 + i;
    if (p >= total) continue;
    const index_t n = p / a.pixels();
    const index_t q = p - n * a.pixels();
    const index_t oh = q / a.out_w, ow = q - oh * a.out_w;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const index_t ol = o_base + tx * 4 + j;
      if (ol >= a.outputs_per_group) continue;
      const index_t o = group * a.outputs_per_group + ol;
      const acc_t b = bias ? static_cast<acc_t>(bias[o]) : acc_t(0);
      out[n * out_sn + o * out_sc + oh * out_sh + ow * out_sw] = static_cast<scalar_t>(acc[i][j] + b);
    }
  }
}

// --------------------------------------------------------------------------------------------- backward
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    columns_grad_kernel(DeformArgs<scalar_t, index_t> a, const at::opmath_type<scalar_t>* __restrict__ weight_t,
                        const scalar_t* __restrict__ grad_out, index_t go_sn, index_t go_sc, index_t go_sh,
                        index_t go_sw, at::opmath_type<scalar_t>* __restrict__ grad_in, index_t gi_sn, index_t gi_sc,
                        index_t gi_sh, index_t gi_sw, at::opmath_type<scalar_t>* __restrict__ grad_off,
                        index_t goff_sn, index_t goff_sc, index_t goff_sh, index_t goff_sw,
                        at::opmath_type<scalar_t>* __restrict__ grad_mask, index_t gm_sn, index_t gm_sc,
                        index_t gm_sh, index_t gm_sw, bool atomic_point_grads) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kRows = kThreads / kMaxBlock;  // 8 warps, each one pixel at a time
  constexpr int kPerThread = kTileP / kRows;   // 8 pixels per thread
  __shared__ Point<acc_t, index_t> points[kTileP];
  __shared__ acc_t wtile[kChunkO][kMaxBlock + 1];
  __shared__ acc_t gotile[kChunkO][kTileP + 1];
  __shared__ acc_t point_grads[3][kTileP];  // d offset_y, d offset_x, d mask, summed over the block's channels
  const index_t total = a.batch * a.pixels();
  const index_t p_base = static_cast<index_t>(blockIdx.x) * kTileP;
  const index_t c0 = static_cast<index_t>(blockIdx.y) * a.block;
  const index_t k = blockIdx.z;
  const index_t group = c0 / a.channels_per_group;
  const index_t c0_local = c0 - group * a.channels_per_group;
  const index_t og = c0 / a.channels_per_offset_group;
  const int tid = threadIdx.x, lane = tid % kMaxBlock, row0 = tid / kMaxBlock;
  if (tid < kTileP) points[tid] = make_point<scalar_t, acc_t, index_t>(a, p_base + tid, og, k);
  acc_t gcol[kPerThread];
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) gcol[r] = acc_t(0);
  for (index_t o0 = 0; o0 < a.outputs_per_group; o0 += kChunkO) {
    __syncthreads();  // the previous tiles are consumed
    for (int e = tid; e < kChunkO * kMaxBlock; e += kThreads) {
      const int ol = e % kChunkO, cl = e / kChunkO;  // coalesced along the transposed weight's output channels
      const index_t o = o0 + ol;
      wtile[ol][cl] = cl < a.block && o < a.outputs_per_group
                          ? weight_t[((group * a.taps + k) * a.channels_per_group + c0_local + cl) *
                                         a.outputs_per_group + o]
                          : acc_t(0);
    }
    for (int e = tid; e < kChunkO * kTileP; e += kThreads) {
      const int pl = e % kTileP, ol = e / kTileP;
      const index_t p = p_base + pl, o = o0 + ol;
      acc_t g = acc_t(0);
      if (p < total && o < a.outputs_per_group) {
        const index_t n = p / a.pixels();
        const index_t q = p - n * a.pixels();
        const index_t oh = q / a.out_w, ow = q - oh * a.out_w;
        g = static_cast<acc_t>(grad_out[n * go_sn + (group * a.outputs_per_group + o) * go_sc + oh * go_sh + ow * go_sw]);
      }
      gotile[ol][pl] = g;
    }
    __syncthreads();
    for (int ol = 0; ol < kChunkO; ++ol) {
      const acc_t w = wtile[ol][lane];
#pragma unroll
      for (int r = 0; r < kPerThread; ++r) gcol[r] += w * gotile[ol][row0 + r * kRows];
    }
  }
  // Scatter into grad_input; per pixel, reduce the offset/mask gradients over the block's channels (one warp).
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) {
    const int pr = row0 + r * kRows;
    const index_t p = p_base + pr;
    acc_t dy = acc_t(0), dx = acc_t(0), dm = acc_t(0);
    if (lane < a.block && p < total) {
      const Point<acc_t, index_t> s = points[pr];
      const index_t n = p / a.pixels();
      const index_t c = c0 + lane;
      acc_t v[4];
      corners(a.input + n * a.in_sn + c * a.in_sc, a.in_sh, a.in_sw, s, v);
      const acc_t g = gcol[r];
      if (grad_in && s.inside) {
        const acc_t hh = acc_t(1) - s.lh, hw = acc_t(1) - s.lw;
        const acc_t w[4] = {hh * hw, hh * s.lw, s.lh * hw, s.lh * s.lw};
        acc_t* plane = grad_in + n * gi_sn + c * gi_sc;
#pragma unroll
        for (int cr = 0; cr < 4; ++cr) {
          if ((s.valid >> cr) & 1) {
            gpuAtomicAdd(plane + (s.y0 + (cr >> 1)) * gi_sh + (s.x0 + (cr & 1)) * gi_sw, g * s.mask * w[cr]);
          }
        }
      }
      // torchvision's get_coordinate_weight (corner validity, no range test) times the mask.
      dy = g * s.mask * (s.lw * (v[3] - v[1]) + (acc_t(1) - s.lw) * (v[2] - v[0]));
      dx = g * s.mask * (s.lh * (v[3] - v[2]) + (acc_t(1) - s.lh) * (v[1] - v[0]));
      dm = g * interpolate(s, v);
    }
#pragma unroll
    for (int shift = kMaxBlock / 2; shift > 0; shift /= 2) {
      dy += WARP_SHFL_DOWN(dy, shift);
      dx += WARP_SHFL_DOWN(dx, shift);
      dm += WARP_SHFL_DOWN(dm, shift);
    }
    if (lane == 0) {
      point_grads[0][pr] = dy;
      point_grads[1][pr] = dx;
      point_grads[2][pr] = dm;
    }
  }
  __syncthreads();
  if (tid < kTileP && p_base + tid < total) {
    const index_t p = p_base + tid;
    const index_t n = p / a.pixels();
    const index_t q = p - n * a.pixels();
    const index_t oh = q / a.out_w, ow = q - oh * a.out_w;
    if (grad_off) {
      acc_t* dst = grad_off + n * goff_sn + (og * 2 * a.taps + 2 * k) * goff_sc + oh * goff_sh + ow * goff_sw;
      if (atomic_point_grads) {
        gpuAtomicAdd(dst, point_grads[0][tid]);
        gpuAtomicAdd(dst + goff_sc, point_grads[1][tid]);
      } else {
        dst[0] = point_grads[0][tid];
        dst[goff_sc] = point_grads[1][tid];
      }
    }
    if (grad_mask) {
      acc_t* dst = grad_mask + n * gm_sn + (og * a.taps + k) * gm_sc + oh * gm_sh + ow * gm_sw;
      if (atomic_point_grads) {
        gpuAtomicAdd(dst, point_grads[2][tid]);
      } else {
        dst[0] = point_grads[2][tid];
      }
    }
  }
}

// grad_weight[o, c, k] = sum over every (n, pixel) of grad_output[n, o, pixel] * sample[n, c, k, pixel].
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    weight_grad_kernel(DeformArgs<scalar_t, index_t> a, const scalar_t* __restrict__ grad_out, index_t go_sn,
                       index_t go_sc, index_t go_sh, index_t go_sw, at::opmath_type<scalar_t>* __restrict__ grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kRows = kThreads / kMaxBlock;  // 8
  constexpr int kPerThread = kTileO / kRows;   // 8 output channels per thread
  __shared__ Point<acc_t, index_t> points[kWeightTileP];
  __shared__ acc_t samples[kMaxBlock][kWeightTileP + 1];
  __shared__ acc_t gotile[kTileO][kWeightTileP + 1];
  const index_t total = a.batch * a.pixels();
  const index_t o_base = static_cast<index_t>(blockIdx.x) * kTileO;
  const index_t c0 = static_cast<index_t>(blockIdx.y) * a.block;
  const index_t k = blockIdx.z;
  const index_t group = c0 / a.channels_per_group;
  const index_t c0_local = c0 - group * a.channels_per_group;
  const index_t og = c0 / a.channels_per_offset_group;
  const int tid = threadIdx.x, lane = tid % kMaxBlock, row0 = tid / kMaxBlock;
  acc_t sums[kPerThread];
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) sums[r] = acc_t(0);
  for (index_t p_base = 0; p_base < total; p_base += kWeightTileP) {
    __syncthreads();
    if (tid < kWeightTileP) points[tid] = make_point<scalar_t, acc_t, index_t>(a, p_base + tid, og, k);
    for (int e = tid; e < kTileO * kWeightTileP; e += kThreads) {
      const int pl = e % kWeightTileP, ol = e / kWeightTileP;
      const index_t p = p_base + pl, o = o_base + ol;
      acc_t g = acc_t(0);
      if (p < total && o < a.outputs_per_group) {
        const index_t n = p / a.pixels();
        const index_t q = p - n * a.pixels();
        const index_t oh = q / a.out_w, ow = q - oh * a.out_w;
        g = static_cast<acc_t>(grad_out[n * go_sn + (group * a.outputs_per_group + o) * go_sc + oh * go_sh + ow * go_sw]);
      }
      gotile[ol][pl] = g;
    }
    __syncthreads();  // points ready
    for (int pr = row0; pr < kWeightTileP; pr += kRows) {
      acc_t value = acc_t(0);
      const index_t p = p_base + pr;
      if (lane < a.block && p < total) {
        const Point<acc_t, index_t> s = points[pr];
        const index_t n = p / a.pixels();
        acc_t v[4];
        corners(a.input + n * a.in_sn + (c0 + lane) * a.in_sc, a.in_sh, a.in_sw, s, v);
        value = s.mask * interpolate(s, v);
      }
      samples[lane][pr] = value;
    }
    __syncthreads();
    for (int pl = 0; pl < kWeightTileP; ++pl) {
      const acc_t sample = samples[lane][pl];
#pragma unroll
      for (int r = 0; r < kPerThread; ++r) sums[r] += gotile[row0 + r * kRows][pl] * sample;
    }
  }
  if (lane >= a.block) return;
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) {
    const index_t ol = o_base + row0 + r * kRows;
    if (ol >= a.outputs_per_group) continue;
    const index_t o = group * a.outputs_per_group + ol;
    grad_w[(o * a.channels_per_group + c0_local + lane) * a.taps + k] = sums[r];
  }
}

// ------------------------------------------------------------------------------------------------- host
int64_t channel_block(const DeformGeometry& g) {
  const int64_t common = std::gcd(g.channels_per_weight_group(), g.channels_per_offset_group());
  for (int64_t b = std::min<int64_t>(common, kMaxBlock); b > 1; --b) {
    if (common % b == 0) return b;
  }
  return 1;
}

// Largest element offset a tensor can be addressed at.
int64_t max_offset(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * std::abs(t.stride(d));
  return extent;
}

template <typename scalar_t, typename index_t>
DeformArgs<scalar_t, index_t> make_args(const DeformGeometry& g, const at::Tensor& input, const at::Tensor& offset,
                                        const std::optional<at::Tensor>& mask) {
  DeformArgs<scalar_t, index_t> a;
  a.input = input.const_data_ptr<scalar_t>();
  a.in_sn = input.stride(0);
  a.in_sc = input.stride(1);
  a.in_sh = input.stride(2);
  a.in_sw = input.stride(3);
  a.offset = offset.const_data_ptr<scalar_t>();
  a.off_sn = offset.stride(0);
  a.off_sc = offset.stride(1);
  a.off_sh = offset.stride(2);
  a.off_sw = offset.stride(3);
  a.mask = g.use_mask ? mask->const_data_ptr<scalar_t>() : nullptr;
  a.mask_sn = g.use_mask ? mask->stride(0) : 0;
  a.mask_sc = g.use_mask ? mask->stride(1) : 0;
  a.mask_sh = g.use_mask ? mask->stride(2) : 0;
  a.mask_sw = g.use_mask ? mask->stride(3) : 0;
  a.batch = g.batch;
  a.height = g.in_h;
  a.width = g.in_w;
  a.out_h = g.out_h;
  a.out_w = g.out_w;
  a.kernel_w = g.kernel_w;
  a.taps = g.taps();
  a.stride_h = g.stride_h;
  a.stride_w = g.stride_w;
  a.pad_h = g.pad_h;
  a.pad_w = g.pad_w;
  a.dilation_h = g.dilation_h;
  a.dilation_w = g.dilation_w;
  a.channels_per_group = g.channels_per_weight_group();
  a.outputs_per_group = g.outputs_per_weight_group();
  a.channels_per_offset_group = g.channels_per_offset_group();
  a.block = channel_block(g);
  return a;
}

bool fits_int32_all(std::initializer_list<int64_t> extents) {
  for (int64_t e : extents) {
    if (!fits_int32(e + int64_t{kTileP} * kTileO)) return false;
  }
  return true;
}

// (groups, kh*kw, C/groups, C_out/groups) in acc_t: coalesced weight tiles along the output channels (small).
at::Tensor transposed_weight(const at::Tensor& weight, const DeformGeometry& g) {
  return weight.detach()
      .to(at::toOpMathType(weight.scalar_type()))
      .view({g.weight_groups, g.outputs_per_weight_group(), g.channels_per_weight_group(), g.taps()})
      .permute({0, 3, 2, 1})
      .contiguous();
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, const std::optional<at::Tensor>& mask) {
  const DeformGeometry g = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                             input.options().memory_format(deform_memory_format(input)));
  if (out.numel() == 0) return out;
  const at::Tensor weight_t = transposed_weight(weight, g);
  const at::Tensor bias_c = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();  // (C_out,)
  const int64_t pixel_tiles = (g.batch * g.pixels() + kTileP - 1) / kTileP;
  TORCH_CHECK(pixel_tiles <= std::numeric_limits<int32_t>::max(), "deform_conv2d: too many output pixels");
  const dim3 grid(static_cast<unsigned int>(pixel_tiles),
                  static_cast<unsigned int>(g.weight_groups * ((g.outputs_per_weight_group() + kTileO - 1) / kTileO)));
  TORCH_CHECK(grid.y <= 65535, "deform_conv2d: too many output channel tiles for one launch");
  const bool small = fits_int32_all({max_offset(input), max_offset(offset), g.use_mask ? max_offset(*mask) : 0,
                                     max_offset(out), g.batch * g.pixels(), weight_t.numel()});
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* wt = weight_t.const_data_ptr<acc_t>();
    const scalar_t* b = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    if (small) {
      forward_kernel<scalar_t, int32_t><<<grid, kThreads, 0, stream>>>(
          make_args<scalar_t, int32_t>(g, input, offset, mask), wt, b, dst, out.stride(0), out.stride(1),
          out.stride(2), out.stride(3));
    } else {
      forward_kernel<scalar_t, int64_t><<<grid, kThreads, 0, stream>>>(
          make_args<scalar_t, int64_t>(g, input, offset, mask), wt, b, dst, out.stride(0), out.stride(1),
          out.stride(2), out.stride(3));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 5> output_mask) {
  const DeformGeometry g =
      check_deform_conv2d_backward_args(grad_output, input, offset, weight, mask, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool want_input = output_mask[0], want_offset = output_mask[1], want_mask = output_mask[2] && g.use_mask;
  const bool want_weight = output_mask[3], want_bias = output_mask[4];
  const bool want_columns = want_input || want_offset || want_mask;
  const int64_t block = channel_block(g);
  const bool atomic_point_grads = g.channels_per_offset_group() > block;
  if (want_input || ((want_offset || want_mask) && atomic_point_grads)) {
    at::globalContext().alertNotDeterministic(
        "fastconv deform_conv2d backward on CUDA (grad_input, and grad_offset/grad_mask when an offset group has "
        "more than one channel block, are accumulated with atomicAdd); use the CPU backend for a deterministic "
        "backward");
  }
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  const bool same = acc_type == input.scalar_type();
  const auto zeros_like_format = [&](const at::Tensor& like, at::ScalarType dtype) {
    return zeros_in_format(like, dtype);
  };
  // Accumulators in acc_t (the gradients themselves when they already are acc_t).
  at::Tensor gi_acc = want_input ? zeros_like_format(input, acc_type) : at::Tensor();
  at::Tensor goff_acc = want_offset ? zeros_like_format(offset, acc_type) : at::Tensor();
  at::Tensor gm_acc = want_mask ? zeros_like_format(*mask, acc_type) : at::Tensor();
  at::Tensor gw_acc = want_weight ? at::zeros(weight.sizes(), weight.options().dtype(acc_type)) : at::Tensor();
  at::Tensor grad_bias;
  if (want_bias) grad_bias = grad_output.sum({0, 2, 3}, false, acc_type).to(grad_output.scalar_type());
  if (grad_output.numel() > 0 && (want_columns || want_weight)) {
    const at::Tensor& in = input;  // the kernels address every tensor through its own strides
    const at::Tensor weight_t = transposed_weight(weight, g);
    const int64_t pixel_tiles = (g.batch * g.pixels() + kTileP - 1) / kTileP;
    TORCH_CHECK(pixel_tiles <= std::numeric_limits<int32_t>::max(), "deform_conv2d: too many output pixels");
    TORCH_CHECK(g.in_channels / block <= 65535 && g.taps() <= 65535,
                "deform_conv2d: too many channel blocks or taps for one launch");
    const bool small = fits_int32_all({max_offset(in), max_offset(offset), g.use_mask ? max_offset(*mask) : 0,
                                       max_offset(grad_output), gi_acc.defined() ? max_offset(gi_acc) : 0,
                                       goff_acc.defined() ? max_offset(goff_acc) : 0,
                                       gm_acc.defined() ? max_offset(gm_acc) : 0, g.batch * g.pixels(),
                                       weight_t.numel(), weight.numel()});
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const auto s = [](const at::Tensor& t, int d) { return t.defined() ? t.stride(d) : int64_t{0}; };
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto launch = [&](auto index_tag) {
        using index_t = decltype(index_tag);
        const DeformArgs<scalar_t, index_t> args = make_args<scalar_t, index_t>(g, in, offset, mask);
        const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
        if (want_columns) {
          const dim3 grid(static_cast<unsigned int>(pixel_tiles), static_cast<unsigned int>(g.in_channels / block),
                          static_cast<unsigned int>(g.taps()));
          columns_grad_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
              args, weight_t.const_data_ptr<acc_t>(), go, grad_output.stride(0), grad_output.stride(1),
              grad_output.stride(2), grad_output.stride(3),
              gi_acc.defined() ? gi_acc.mutable_data_ptr<acc_t>() : nullptr, s(gi_acc, 0), s(gi_acc, 1), s(gi_acc, 2),
              s(gi_acc, 3), goff_acc.defined() ? goff_acc.mutable_data_ptr<acc_t>() : nullptr, s(goff_acc, 0),
              s(goff_acc, 1), s(goff_acc, 2), s(goff_acc, 3),
              gm_acc.defined() ? gm_acc.mutable_data_ptr<acc_t>() : nullptr, s(gm_acc, 0), s(gm_acc, 1), s(gm_acc, 2),
              s(gm_acc, 3), atomic_point_grads);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (want_weight) {
          const dim3 grid(static_cast<unsigned int>((g.outputs_per_weight_group() + kTileO - 1) / kTileO),
                          static_cast<unsigned int>(g.in_channels / block), static_cast<unsigned int>(g.taps()));
          weight_grad_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
              args, go, grad_output.stride(0), grad_output.stride(1), grad_output.stride(2), grad_output.stride(3),
              gw_acc.mutable_data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      };
      if (small) {
        launch(int32_t{0});
      } else {
        launch(int64_t{0});
      }
    });
  }
  const auto finish = [&](const at::Tensor& acc) {
    return !acc.defined() || same ? acc : acc.to(input.scalar_type());  // .to keeps the dense layout
  };
  return {finish(gi_acc), finish(goff_acc), finish(gm_acc), finish(gw_acc), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace fastconv
