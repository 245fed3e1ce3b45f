// conv2d_act on CUDA: one templated implicit-GEMM kernel with the bias + activation epilogue.
//
// GEMM view: M = N * H_out * W_out output pixels, N = C_out / groups output channels of one group,
// K = (C_in / groups) * kh * kw, ordered (kernel row, kernel column, channel) so that in channels_last a run of
// consecutive k is a run of consecutive channels of one input pixel (one 16-byte load). A block computes a
// 64 x 64 output tile of one group (grid z = group), walking K in slices of 16:
//   - 128 threads gather the A slice (im2col on the fly, zero padding by bounds checks) and the B slice
//     (the weight, read in place: weight[oc][c][i][j]) into shared memory, 8 consecutive k per thread;
//   - float16/bfloat16: 4 warps x (2 x 2) WMMA 16x16x16 tiles on tensor cores, float accumulators;
//     float32/float64: FFMA, an 8 x 4 register tile per thread;
//   - epilogue: the accumulators go through shared memory so the global stores follow the output's memory
//     order (channels inner in channels_last, pixels inner in NCHW), + bias, activation, one rounding.
// 1x1 convolutions are the kPointwise specialisation (k is the channel: no tap decode; the weight slice is
// contiguous and loaded 16 bytes at a time). Indices are 32-bit when every offset fits, else 64-bit.
// No double buffering or split-K: a clear baseline to tune on a GPU (it has not run yet: no GPU here).
//
// Backward: activation derivative (one elementwise kernel) then ATen's convolution_backward (cuDNN), see
// csrc/conv2d_act.h.
#include "conv2d_act.h"
#include "shuffle_cat.h"

#include <fastconv/cuda_launch.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace fastconv {
namespace {

constexpr int kTileM = 64;     // output pixels per block
constexpr int kTileN = 64;     // output channels per block
constexpr int kTileK = 16;     // reduction slice per step: one WMMA k
constexpr int kThreads = 128;  // 4 warps
constexpr int kRun = 8;        // consecutive k one thread gathers per slice (kTileM * kTileK / kThreads)
constexpr int kPadAB = 8;      // shared-memory row padding (elements) of the A and B slices
constexpr int kPadC = 4;       // ... of the float accumulator tile (WMMA store: ldm a multiple of 4)
constexpr int kLdA = kTileK + kPadAB;
constexpr int kLdB = kTileN + kPadAB;
constexpr int kLdC = kTileN + kPadC;
static_assert(kTileM * kTileK == kThreads * kRun && kTileN * kTileK == kThreads * kRun, "one run per thread");

// The tensor-core element type of scalar_t (void: FFMA). bfloat16 WMMA needs sm_80; the extension is built
// for sm_90 (setup.py), and older device passes fall back to FFMA.
template <typename scalar_t>
struct TensorCoreType {
  using type = void;
};
template <>
struct TensorCoreType<c10::Half> {
  using type = __half;
};
template <>
struct TensorCoreType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
constexpr bool kArchHasTensorCores = true;
#else
constexpr bool kArchHasTensorCores = false;
#endif

template <typename index_t>
struct ConvParams {
  index_t in_channels, in_h, in_w;
  index_t out_channels, out_h, out_w;
  index_t in_per_group, out_per_group, reduction, pixels;  // K, M
  index_t kernel_w, taps, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
};

template <typename index_t>
ConvParams<index_t> make_params(const ConvGeometry& g) {
  return {static_cast<index_t>(g.in_channels),   static_cast<index_t>(g.in_h),
          static_cast<index_t>(g.in_w),          static_cast<index_t>(g.out_channels),
          static_cast<index_t>(g.out_h),         static_cast<index_t>(g.out_w),
          static_cast<index_t>(g.in_per_group()), static_cast<index_t>(g.out_per_group()),
          static_cast<index_t>(g.reduction()),   static_cast<index_t>(g.batch * g.out_h * g.out_w),
          static_cast<index_t>(g.kernel_w),      static_cast<index_t>(g.kernel_h * g.kernel_w),
          static_cast<index_t>(g.stride_h),      static_cast<index_t>(g.stride_w),
          static_cast<index_t>(g.pad_top),       static_cast<index_t>(g.pad_left),
          static_cast<index_t>(g.dilation_h),    static_cast<index_t>(g.dilation_w)};
}

// kRun consecutive elements, 16 bytes at a time (src and dst 16-byte aligned).
template <typename scalar_t>
__device__ __forceinline__ void copy_run(scalar_t* dst, const scalar_t* src) {
  static_assert(kRun * sizeof(scalar_t) % 16 == 0, "a run is whole 16-byte words");
#pragma unroll
  for (int q = 0; q < static_cast<int>(kRun * sizeof(scalar_t) / 16); ++q) {
    reinterpret_cast<uint4*>(dst)[q] = __ldg(reinterpret_cast<const uint4*>(src) + q);
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast, bool kPointwise>
__global__ void __launch_bounds__(kThreads)
conv2d_act_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ weight,
                  const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, ConvParams<index_t> p,
                  Activation act, bool vector_a, bool vector_b, const scalar_t* __restrict__ pass,
                  index_t pass_block) {
  using acc_t = at::opmath_type<scalar_t>;
  using mma_t = typename TensorCoreType<scalar_t>::type;
  constexpr bool kTensorCores = !std::is_void_v<mma_t> && kArchHasTensorCores;
  constexpr int kBytesA = kTileM * kLdA * sizeof(scalar_t);
  constexpr int kBytesB = kTileK * kLdB * sizeof(scalar_t);
  constexpr int kBytesC = kTileM * kLdC * sizeof(acc_t);
  constexpr int kBytes = kBytesA + kBytesB > kBytesC ? kBytesA + kBytesB : kBytesC;
  static_assert(kBytesA % 128 == 0, "the B slice starts 128-byte aligned");
  // The A/B slices during the main loop, then (after a barrier) the accumulator tile for the epilogue.
  __shared__ __align__(128) unsigned char smem[kBytes];
  scalar_t* tile_a = reinterpret_cast<scalar_t*>(smem);            // [kTileM][kLdA]: A[m][k]
  scalar_t* tile_b = reinterpret_cast<scalar_t*>(smem + kBytesA);  // [kTileK][kLdB]: B[k][n]
  acc_t* tile_c = reinterpret_cast<acc_t*>(smem);                  // [kTileM][kLdC]

  const int tid = threadIdx.x;
  const index_t group = blockIdx.z;
  const index_t m_block = static_cast<index_t>(blockIdx.x) * kTileM;
  const index_t n_block = static_cast<index_t>(blockIdx.y) * kTileN;

  // This thread's A row (one output pixel) and its k offset within a slice; fixed for the whole K loop.
  const int a_row = tid / (kTileK / kRun);
  const int a_col = (tid % (kTileK / kRun)) * kRun;
  const index_t m = m_block + a_row;
  const bool m_valid = m < p.pixels;
  const index_t ow = m_valid ? m % p.out_w : 0;
  const index_t n_img = m_valid ? m / p.out_w / p.out_h : 0;
  const index_t oh = m_valid ? (m / p.out_w) % p.out_h : 0;
  const index_t ih0 = oh * p.stride_h - p.pad_top;
  const index_t iw0 = ow * p.stride_w - p.pad_left;
  const index_t channel0 = group * p.in_per_group;
  // This thread's B column (one output channel) and its k offset.
  const int b_col = tid % kTileN;
  const int b_row = (tid / kTileN) * kRun;
  const bool n_valid = n_block + b_col < p.out_per_group;
  const index_t oc_b = group * p.out_per_group + n_block + b_col;
  const scalar_t* w_row = weight + (n_valid ? oc_b : 0) * p.reduction;

  // Input offset of reduction index k for this thread's pixel, or -1 when it falls in the padding.
  const auto input_offset = [&](index_t k) -> index_t {
    index_t c = k, ih = ih0, iw = iw0;
    if constexpr (!kPointwise) {
      const index_t tap = k / p.in_per_group;
      c = k - tap * p.in_per_group;
      const index_t i = tap / p.kernel_w;
      ih += i * p.dilation_h;
      iw += (tap - i * p.kernel_w) * p.dilation_w;
    }
    if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) return -1;
    return kChannelsLast ? ((n_img * p.in_h + ih) * p.in_w + iw) * p.in_channels + channel0 + c
                         : ((n_img * p.in_channels + channel0 + c) * p.in_h + ih) * p.in_w + iw;
  };
  // Weight offset (within w_row) of reduction index k = (tap, c): weight[oc][c][i][j] = c * taps + tap.
  const auto weight_offset = [&](index_t k) -> index_t {
    if constexpr (kPointwise) {
      return k;
    } else {
      const index_t tap = k / p.in_per_group;
      return (k - tap * p.in_per_group) * p.taps + tap;
    }
  };

  // Accumulators: WMMA fragments (tensor cores) or an 8 x 4 register tile (FFMA).
  constexpr int kWarpTiles = 2;  // 2 x 2 fragments of 16 x 16 per warp: a 32 x 32 warp tile
  using namespace nvcuda;
  using FragC = std::conditional_t<kTensorCores, wmma::fragment<wmma::accumulator, 16, 16, 16, float>, int>;
  FragC frag_c[kWarpTiles][kWarpTiles];
  constexpr int kRegM = 8, kRegN = 4;  // FFMA: 8 x 4 outputs per thread, 8 x 16 threads cover 64 x 64
  acc_t reg_c[kRegM][kRegN];
  const int warp = tid / 32;
  const int warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32;
  const int reg_m = (tid / 16) * kRegM, reg_n = (tid % 16) * kRegN;
  if constexpr (kTensorCores) {
#pragma unroll
    for (int r = 0; r < kWarpTiles; ++r) {
#pragma unroll
      for (int c = 0; c < kWarpTiles; ++c) wmma::fill_fragment(frag_c[r][c], 0.0f);
    }
  } else {
#pragma unroll
    for (int r = 0; r < kRegM; ++r) {
#pragma unroll
      for (int c = 0; c < kRegN; ++c) reg_c[r][c] = acc_t(0);
    }
  }

  for (index_t k_slice = 0; k_slice < p.reduction; k_slice += kTileK) {
    // ---- gather A: kRun consecutive k of one output pixel
    {
      scalar_t* dst = tile_a + a_row * kLdA + a_col;
      const index_t k0 = k_slice + a_col;
      if (vector_a) {  // channels_last, C_in/groups % 8 == 0: the run is 8 channels of one input pixel
        const index_t offset = m_valid && k0 < p.reduction ? input_offset(k0) : -1;
        if (offset >= 0) {
          copy_run(dst, in + offset);
        } else {
#pragma unroll
          for (int e = 0; e < kRun; ++e) dst[e] = scalar_t(0);
        }
      } else {
#pragma unroll
        for (int e = 0; e < kRun; ++e) {
          const index_t offset = m_valid && k0 + e < p.reduction ? input_offset(k0 + e) : -1;
          dst[e] = offset >= 0 ? in[offset] : scalar_t(0);
        }
      }
    }
    // ---- gather B: kRun consecutive k of one output channel, stored transposed (B[k][n])
    {
      const index_t k0 = k_slice + b_row;
      alignas(16) scalar_t run[kRun];
      if (vector_b && n_valid && k0 < p.reduction) {  // 1x1, C_in/groups % 8 == 0: contiguous in the weight
        copy_run(run, w_row + k0);
      } else {
#pragma unroll
        for (int e = 0; e < kRun; ++e) {
          run[e] = n_valid && k0 + e < p.reduction ? w_row[weight_offset(k0 + e)] : scalar_t(0);
        }
      }
#pragma unroll
      for (int e = 0; e < kRun; ++e) tile_b[(b_row + e) * kLdB + b_col] = run[e];
    }
    __syncthreads();
    // ---- multiply-accumulate the slice
    if constexpr (kTensorCores) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> frag_a[kWarpTiles];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> frag_b[kWarpTiles];
      const mma_t* a = reinterpret_cast<const mma_t*>(tile_a);
      const mma_t* b = reinterpret_cast<const mma_t*>(tile_b);
#pragma unroll
      for (int r = 0; r < kWarpTiles; ++r) wmma::load_matrix_sync(frag_a[r], a + (warp_m + r * 16) * kLdA, kLdA);
#pragma unroll
      for (int c = 0; c < kWarpTiles; ++c) wmma::load_matrix_sync(frag_b[c], b + warp_n + c * 16, kLdB);
#pragma unroll
      for (int r = 0; r < kWarpTiles; ++r) {
#pragma unroll
        for (int c = 0; c < kWarpTiles; ++c) wmma::mma_sync(frag_c[r][c], frag_a[r], frag_b[c], frag_c[r][c]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kTileK; ++kk) {
        acc_t a[kRegM], b[kRegN];
#pragma unroll
        for (int r = 0; r < kRegM; ++r) a[r] = static_cast<acc_t>(tile_a[(reg_m + r) * kLdA + kk]);
#pragma unroll
        for (int c = 0; c < kRegN; ++c) b[c] = static_cast<acc_t>(tile_b[kk * kLdB + reg_n + c]);
#pragma unroll
        for (int r = 0; r < kRegM; ++r) {
#pragma unroll
          for (int c = 0; c < kRegN; ++c) reg_c[r][c] = fma(a[r], b[c], reg_c[r][c]);
        }
      }
    }
    __syncthreads();  // the slice is consumed before the next gather (and before tile_c reuses the bytes)
  }

  // ---- epilogue: accumulators -> shared tile -> + bias, activation -> global, in the output's memory order
  if constexpr (kTensorCores) {
#pragma unroll
    for (int r = 0; r < kWarpTiles; ++r) {
#pragma unroll
      for (int c = 0; c < kWarpTiles; ++c) {
        wmma::store_matrix_sync(tile_c + (warp_m + r * 16) * kLdC + warp_n + c * 16, frag_c[r][c], kLdC,
                                wmma::mem_row_major);
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < kRegM; ++r) {
#pragma unroll
      for (int c = 0; c < kRegN; ++c) tile_c[(reg_m + r) * kLdC + reg_n + c] = reg_c[r][c];
    }
  }
  __syncthreads();
  const index_t out_pixels = p.out_h * p.out_w;
  // shuffle_cat_conv2d_act (pass != nullptr): `out` has 2 * out_channels interleaved channels; channel oc of the
  // convolution goes to 2 * oc + 1 and channel oc of `pass` (block-strided in the output's format, see
  // csrc/shuffle_cat.h) to 2 * oc, in the same store loop.
  const bool interleaved = pass != nullptr;
  const index_t out_channels = interleaved ? 2 * p.out_channels : p.out_channels;
  for (int e = tid; e < kTileM * kTileN; e += kThreads) {
    const int row = kChannelsLast ? e / kTileN : e % kTileM;  // consecutive threads: consecutive channels
    const int col = kChannelsLast ? e % kTileN : e / kTileM;  // (channels_last) or pixels (NCHW)
    const index_t pixel = m_block + row;
    const index_t channel = n_block + col;
    if (pixel >= p.pixels || channel >= p.out_per_group) continue;
    const index_t oc = group * p.out_per_group + channel;
    acc_t value = tile_c[row * kLdC + col];
    if (bias != nullptr) value += static_cast<acc_t>(bias[oc]);
    value = apply_activation(act, value);
    const index_t out_oc = interleaved ? 2 * oc + 1 : oc;
    index_t offset, pass_offset, even_step;
    if constexpr (kChannelsLast) {
      offset = pixel * out_channels + out_oc;
      pass_offset = pixel * pass_block + oc;
      even_step = 1;
    } else {
      const index_t image = pixel / out_pixels;
      const index_t within = pixel - image * out_pixels;
      offset = (image * out_channels + out_oc) * out_pixels + within;
      pass_offset = image * pass_block + oc * out_pixels + within;
      even_step = out_pixels;
    }
    out[offset] = static_cast<scalar_t>(value);
    if (interleaved) out[offset - even_step] = pass[pass_offset];
  }
}

bool aligned16(const void* pointer) { return reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0; }

// Runs the kernel into `output` (dense in `format`, which `in` is too). With `pass` (shuffle_cat_conv2d_act: its
// `a`, block-strided by pass_block elements in `format`), `output` is the interleaved tensor of 2 * C_out channels.
void launch_conv2d_act(const at::Tensor& in, const at::Tensor& w, const at::Tensor& b, at::Tensor& output,
                       const ConvGeometry& g, Activation act, at::MemoryFormat format, const at::Tensor& pass,
                       int64_t pass_block) {
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const int64_t blocks_m = (pixels + kTileM - 1) / kTileM;
  const int64_t blocks_n = (g.out_per_group() + kTileN - 1) / kTileN;
  TORCH_CHECK(blocks_m <= std::numeric_limits<int32_t>::max() && blocks_n <= 65535 && g.groups <= 65535,
              "conv2d_act: the output is too large for one launch (", blocks_m, " x ", blocks_n, " x ", g.groups,
              " tiles)");
  const dim3 grid(static_cast<unsigned int>(blocks_m), static_cast<unsigned int>(blocks_n),
                  static_cast<unsigned int>(g.groups));
  // 32-bit indices when every offset (plus a tile of overrun before the bounds checks) fits.
  const int64_t pass_extent = pass.defined() ? pass_block * (channels_last ? pixels : g.batch) : 0;
  const int64_t largest = std::max({in.numel(), output.numel(), w.numel(), pixels, pass_extent});
  const bool int32 = fits_int32(largest + int64_t{kTileM} * kTileN);
  const bool vector_a = channels_last && g.in_per_group() % kRun == 0 && g.in_channels % kRun == 0 &&
                        aligned16(in.const_data_ptr());
  const bool vector_b = g.pointwise() && g.in_per_group() % kRun == 0 && aligned16(w.const_data_ptr());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "conv2d_act_cuda", [&] {
    const scalar_t* in_ptr = in.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
    const scalar_t* b_ptr = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pass_ptr = pass.defined() ? pass.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
    const auto launch = [&](auto index_tag, auto channels_last_tag, auto pointwise_tag) {
      using index_t = decltype(index_tag);
      constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
      constexpr bool kPointwise = decltype(pointwise_tag)::value;
      conv2d_act_kernel<scalar_t, index_t, kChannelsLast, kPointwise><<<grid, kThreads, 0, stream>>>(
          in_ptr, w_ptr, b_ptr, out_ptr, make_params<index_t>(g), act, vector_a, vector_b, pass_ptr,
          static_cast<index_t>(pass_block));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    const auto with_pointwise = [&](auto index_tag, auto channels_last_tag) {
      if (g.pointwise()) {
        launch(index_tag, channels_last_tag, std::true_type{});
      } else {
        launch(index_tag, channels_last_tag, std::false_type{});
      }
    };
    const auto with_layout = [&](auto index_tag) {
      if (channels_last) {
        with_pointwise(index_tag, std::true_type{});
      } else {
        with_pointwise(index_tag, std::false_type{});
      }
    };
    if (int32) {
      with_layout(int32_t{});
    } else {
      with_layout(int64_t{});
    }
  });
}

at::Tensor conv2d_act_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           std::optional<std::string_view> activation) {
  const Activation act = parse_activation(activation, "conv2d_act");
  const ConvGeometry g = check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat format = conv2d_act_memory_format(input);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(format));
  if (output.numel() == 0) return output;
  // Dense in the chosen format (a no-op unless the input is a strided view); the weight contiguous
  // (C_out, C_in/groups, kh, kw), which is what the kernel indexes.
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  launch_conv2d_act(input.contiguous(format), weight.contiguous(), b, output, g, act, format, at::Tensor(), 0);
  return output;
}

// shuffle_cat_conv2d_act: the same kernel, its epilogue writing the interleaved output (see launch_conv2d_act).
// The convolution runs in the output's layout (shuffle_cat's rule on `a`).
at::Tensor shuffle_cat_conv2d_act_cuda(const at::Tensor& a, const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                       std::optional<std::string_view> activation) {
  const Activation act = parse_activation(activation, "shuffle_cat_conv2d_act");
  const ConvGeometry g = check_shuffle_cat_conv2d_act_args(a, input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat format = shuffle_cat_memory_format(a);
  at::Tensor output = at::empty(interleaved_sizes(a), a.options().memory_format(format));
  if (output.numel() == 0) return output;
  const BlockedHalf first = blocked_half(a, format);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  launch_conv2d_act(input.contiguous(format), weight.contiguous(), b, output, g, act, format, first.tensor,
                    first.block_stride);
  return output;
}

// grad_preact[k] = grad[k] * activation'(value[k]) over dense tensors with the same strides (float math).
// value_t: scalar_t for the forward output (relu/relu6), opmath (float for float16/bfloat16) for the recomputed
// pre-activation (hardswish/silu).
template <typename scalar_t, typename value_t, typename index_t>
__global__ void preactivation_grad_kernel(const scalar_t* __restrict__ grad, const value_t* __restrict__ value,
                                          scalar_t* __restrict__ out, Activation act, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t grid_stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += grid_stride) {
    out[k] = static_cast<scalar_t>(static_cast<acc_t>(grad[k]) * activation_derivative(act, static_cast<acc_t>(value[k])));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_act_backward_cuda(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& output, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::optional<std::string_view> activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation, "_conv2d_act_backward");
  const ConvGeometry g = check_conv2d_act_backward_args(grad_output, input, weight, bias, output, input_size, stride,
                                                        padding, dilation, groups, act, output_mask);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::MemoryFormat format = conv2d_act_backward_memory_format(grad_output, input);
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {};
  if (grad_output.numel() == 0) {
    return {output_mask[0] ? at::empty(input_size, weight.options().memory_format(format)) : at::Tensor(),
            output_mask[1] ? at::zeros(weight.sizes(), weight.options()) : at::Tensor(),
            output_mask[2] ? at::zeros({g.out_channels}, weight.options()) : at::Tensor()};
  }
  at::Tensor grad_preact = grad_output.contiguous(format);
  if (act != Activation::kNone) {
    // hardswish/silu: recompute the pre-activation (cuDNN) in float: hardswish' jumps by 0.5 at +-3, and a
    // bfloat16-rounded pre-activation (spacing 1/64 there) lands on the wrong side of the jump for true values
    // within 1/128 of it (the CPU backward's fix, csrc/cpu/conv2d_act.cpp). float16/bfloat16 values are exact
    // in float (and in TF32, should cuDNN use it), so only the accumulation differs from the forward's. The
    // price: float copies of input and weight for this one convolution. relu/relu6 read the forward output
    // (their derivative needs only its sign and whether it reached 6, which the rounded output keeps).
    at::Tensor value;
    if (derivative_needs_preactivation(act)) {
      const at::ScalarType compute = at::toOpMathType(weight.scalar_type());
      const std::optional<at::Tensor> bias_compute =
          bias.has_value() && bias->defined() ? std::optional<at::Tensor>(bias->to(compute)) : std::nullopt;
      value = aten_convolution(input->to(compute), weight.to(compute), bias_compute, g).contiguous(format);
    } else {
      value = output->contiguous(format);
    }
    const at::Tensor grad = grad_preact;
    grad_preact = at::empty(grad.sizes(), grad.options().memory_format(format));
    const int64_t total = grad.numel();
    constexpr int threads = 256;
    const unsigned int blocks = grid_stride_blocks(total, threads);
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "conv2d_act_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto launch = [&](const auto* value_ptr) {
        using value_t = std::remove_const_t<std::remove_pointer_t<decltype(value_ptr)>>;
        if (fits_int32(total + int64_t{blocks} * threads)) {
          preactivation_grad_kernel<scalar_t, value_t, int32_t><<<blocks, threads, 0, stream>>>(
              grad.const_data_ptr<scalar_t>(), value_ptr, grad_preact.mutable_data_ptr<scalar_t>(), act,
              static_cast<int32_t>(total));
        } else {
          preactivation_grad_kernel<scalar_t, value_t, int64_t><<<blocks, threads, 0, stream>>>(
              grad.const_data_ptr<scalar_t>(), value_ptr, grad_preact.mutable_data_ptr<scalar_t>(), act, total);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (value.scalar_type() == grad.scalar_type()) {
        launch(value.const_data_ptr<scalar_t>());
      } else {
        launch(value.const_data_ptr<acc_t>());
      }
    });
  }
  return conv2d_act_convolution_backward(grad_preact, input, weight, input_size, g, format, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("conv2d_act", &conv2d_act_cuda);
  m.impl("_conv2d_act_backward", &conv2d_act_backward_cuda);
  m.impl("shuffle_cat_conv2d_act", &shuffle_cat_conv2d_act_cuda);
}

}  // namespace fastconv
