// depthwise_conv2d on CUDA, forward and backward, NCHW and channels_last, float accumulation.
//
// One thread per output element, walked in the output's memory order (coalesced stores; in channels_last
// neighbouring threads read neighbouring channels, so input loads coalesce too). The kernel size is a
// template parameter for the common 3x3 and 5x5 (fully unrolled tap loops), runtime otherwise (up to 31x31).
// Backward: grad_preact = grad_output * activation'(...) once (float); grad_input is the transposed
// depthwise conv in gather form (each thread owns one input element: no atomics); grad_weight/grad_bias are
// one block per (channel, tap) reducing over all pixels with a fixed-order tree: deterministic.
// Indices are 32-bit when every offset fits, 64-bit otherwise (chosen at launch).
#include "depthwise_conv2d.h"

#include <fastconv/cuda_launch.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

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

template <typename scalar_t, typename index_t, bool kChannelsLast, int kKernelH, int kKernelW>
__global__ void grad_input_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_pre,
                                  const scalar_t* __restrict__ weight, scalar_t* __restrict__ grad_in,
                                  DepthwiseGeometry g, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t kernel_h = kKernelH > 0 ? kKernelH : static_cast<index_t>(g.kernel_h);
  const index_t kernel_w = kKernelW > 0 ? kKernelW : static_cast<index_t>(g.kernel_w);
  const index_t out_h = g.out_h, out_w = g.out_w, stride_h = g.stride_h, stride_w = g.stride_w;
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

// One block per (output channel, tap); "tap" == taps means the bias. Each thread sums a fixed stripe of
// pixels, then a fixed shared-memory tree combines the stripes: the same order on every run.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void grad_weight_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_pre,
                                   const scalar_t* __restrict__ in, scalar_t* __restrict__ grad_w,
                                   scalar_t* __restrict__ grad_b, DepthwiseGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const index_t taps = g.kernel_h * g.kernel_w;
  const index_t o = static_cast<index_t>(blockIdx.x) / (taps + 1);
  const index_t tap = static_cast<index_t>(blockIdx.x) - o * (taps + 1);
  const bool is_bias = tap == taps;
  if ((is_bias && grad_b == nullptr) || (!is_bias && grad_w == nullptr)) return;  // uniform per block
  const index_t i = is_bias ? 0 : tap / g.kernel_w;
  const index_t j = is_bias ? 0 : tap - i * g.kernel_w;
  const index_t out_h = g.out_h, out_w = g.out_w, in_h = g.in_h, in_w = g.in_w;
  const index_t c = o / g.multiplier;
  const DenseIndex<index_t, kChannelsLast> in_index{static_cast<index_t>(g.channels), in_h, in_w};
  const DenseIndex<index_t, kChannelsLast> out_index{static_cast<index_t>(g.out_channels), out_h, out_w};
  const index_t pixels = static_cast<index_t>(g.batch) * out_h * out_w;
  acc_t sum = 0;
  for (index_t p = threadIdx.x; p < pixels; p += blockDim.x) {
    const index_t ow = p % out_w;
    const index_t rest = p / out_w;
    const index_t oh = rest % out_h;
    const index_t n = rest / out_h;
    const acc_t grad = grad_pre[out_index.offset(n, o, oh, ow)];
    if (is_bias) {
      sum += grad;
      continue;
    }
    const index_t ih = oh * g.stride_h - g.pad_top + i * g.dilation_h;
    const index_t iw = ow * g.stride_w - g.pad_left + j * g.dilation_w;
    if (ih < 0 || ih >= in_h || iw < 0 || iw >= in_w) continue;
    sum += grad * static_cast<acc_t>(in[in_index.offset(n, c, ih, iw)]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (is_bias) {
      grad_b[o] = static_cast<scalar_t>(partial[0]);
    } else {
      grad_w[o * taps + tap] = static_cast<scalar_t>(partial[0]);
    }
  }
}

// Calls fn(std::integral_constant<int, kh>, std::integral_constant<int, kw>): 3x3 and 5x5 compile-time,
// anything else runtime (0).
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

at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, Activation act,
                        bool accumulate_output = false) {
  const DepthwiseGeometry g = check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat format = depthwise_memory_format(input);
  const at::ScalarType out_dtype = accumulate_output ? at::toOpMathType(input.scalar_type()) : input.scalar_type();
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().dtype(out_dtype).memory_format(format));
  if (output.numel() == 0) return output;
  // Dense in the chosen format: a no-op unless the input is a strided view.
  const at::Tensor in = input.contiguous(format);
  const at::Tensor w = weight.contiguous();  // (C*m, 1, kh, kw): tiny
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t total = output.numel();
  const unsigned int blocks = grid_stride_blocks(total, kThreads);
  const bool int32 = use_int32(std::max(total, in.numel()), blocks);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    const scalar_t* bias_ptr = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const auto launch = [&](auto out_tag, auto kh, auto kw) {
      using out_t = decltype(out_tag);
      constexpr int KH = decltype(kh)::value;
      constexpr int KW = decltype(kw)::value;
      out_t* out_ptr = output.mutable_data_ptr<out_t>();
      const scalar_t* in_ptr = in.const_data_ptr<scalar_t>();
      const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
      if (format == at::MemoryFormat::ChannelsLast) {
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
    dispatch_kernel_size(g, [&](auto kh, auto kw) {
      if (accumulate_output) {
        launch(at::opmath_type<scalar_t>{}, kh, kw);
      } else {
        launch(scalar_t{}, kh, kw);
      }
    });
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
    at::Tensor grad_pre = at::empty(grad.sizes(), grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value)
                                                      .memory_format(format));
    {
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
    if (grad_input.defined()) {
      const unsigned int blocks = grid_stride_blocks(in_numel, kThreads);
      const bool int32 = use_int32(std::max(in_numel, out_numel), blocks);
      dispatch_kernel_size(g, [&](auto kh, auto kw) {
        constexpr int KH = decltype(kh)::value;
        constexpr int KW = decltype(kw)::value;
        const acc_t* gp = grad_pre.const_data_ptr<acc_t>();
        const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
        scalar_t* dst = grad_input.mutable_data_ptr<scalar_t>();
        if (channels_last) {
          if (int32) {
            grad_input_kernel<scalar_t, int32_t, true, KH, KW><<<blocks, kThreads, 0, stream>>>(
                gp, w_ptr, dst, g, static_cast<int32_t>(in_numel));
          } else {
            grad_input_kernel<scalar_t, int64_t, true, KH, KW><<<blocks, kThreads, 0, stream>>>(gp, w_ptr, dst, g,
                                                                                                in_numel);
          }
        } else {
          if (int32) {
            grad_input_kernel<scalar_t, int32_t, false, KH, KW><<<blocks, kThreads, 0, stream>>>(
                gp, w_ptr, dst, g, static_cast<int32_t>(in_numel));
          } else {
            grad_input_kernel<scalar_t, int64_t, false, KH, KW><<<blocks, kThreads, 0, stream>>>(gp, w_ptr, dst, g,
                                                                                                 in_numel);
          }
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (grad_weight.defined() || grad_bias.defined()) {
      const int64_t block_count = g.out_channels * (g.taps() + 1);
      TORCH_CHECK(block_count <= std::numeric_limits<int32_t>::max(),
                  "_depthwise_conv2d_backward: too many (channel, tap) pairs for one launch: ", block_count);
      const bool int32 = fits_int32(std::max(in_numel, out_numel) + kThreads);
      const acc_t* gp = grad_pre.const_data_ptr<acc_t>();
      const scalar_t* in_ptr = in.defined() ? in.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* gw = grad_weight.defined() ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gb = grad_bias.defined() ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
      const auto blocks = static_cast<unsigned int>(block_count);
      if (channels_last) {
        if (int32) {
          grad_weight_kernel<scalar_t, int32_t, true><<<blocks, kThreads, 0, stream>>>(gp, in_ptr, gw, gb, g);
        } else {
          grad_weight_kernel<scalar_t, int64_t, true><<<blocks, kThreads, 0, stream>>>(gp, in_ptr, gw, gb, g);
        }
      } else {
        if (int32) {
          grad_weight_kernel<scalar_t, int32_t, false><<<blocks, kThreads, 0, stream>>>(gp, in_ptr, gw, gb, g);
        } else {
          grad_weight_kernel<scalar_t, int64_t, false><<<blocks, kThreads, 0, stream>>>(gp, in_ptr, gw, gb, g);
        }
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
