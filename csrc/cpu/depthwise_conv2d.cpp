// depthwise_conv2d on the CPU, forward and backward, NCHW and channels_last, float accumulation
// (double for float64).
//
// NCHW, three paths (forward_kernel picks; the rules and their measurements are at nchw_rows and
// nchw_channel_blocks):
// - rows (AVX-512, stride_w 1, dilation_w 1, rows wider than a vector): one task per (n, channel) plane and band
//   of output rows; the band's rows are copied into a zero-padded buffer and each output vector along a row
//   takes every column tap as one unaligned load, four output rows at a time sharing their input loads.
// - channel blocks (float/double with >= one vector of output channels; oneDNN's scheme, fused): one task per
//   (n, block of vector-width output channels, band of output rows). The band's input rows are transposed
//   (zero-padded) into a small channels-last buffer, the channels_last micro-kernels run on it without edge
//   cases, and the results (bias + activation applied) are transposed back into the NCHW planes. The
//   transposes work on whole registers over flattened pixels, so 7x7 and 14x14 planes waste no lanes.
// - phase planes (half precision, or fewer channels than one vector): one task per (n, channel) plane and
//   band; the band is copied into padded stride-phase planes and every tap is one offset into them, the
//   vectors running along contiguous output pixels.
// channels_last: one task per (n, row); each output pixel accumulates tap by tap over all channels with
//   at::vec::Vectorized (depth multiplier 1; a plain loop otherwise).
// The loops live in depthwise_conv2d_kernels.inc, compiled for baseline x86-64, AVX2 and AVX-512 and picked at
// run time (fastconv/cpu_isa.h).
// Backward: grad_preact = grad_output * activation'(...) once, then grad_input is the transposed depthwise
//   conv in gather form (each task owns its input rows: no atomics) and grad_weight/grad_bias a per-channel
//   reduction in a fixed order (each task owns its channels): deterministic for any thread count.
#include "depthwise_conv2d.h"
#include "fastconv/cpu_isa.h"

#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastconv {
namespace {

// The kernels pass 64-byte vector types between inlined helpers; GCC warns that such a value's ABI differs
// without AVX-512 (the baseline variant), which never matters for these internal functions.
#pragma GCC diagnostic ignored "-Wpsabi"
#define FASTCONV_ISA_KERNELS "cpu/depthwise_conv2d_kernels.inc"
#include "fastconv/cpu_isa_kernels.h"

// accumulate_output: write the accumulation dtype (float, double for float64) instead of the input's; the
// backward uses it to recompute the pre-activation without rounding it to half precision.
at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, Activation act,
                        bool accumulate_output = false) {
  const DepthwiseGeometry g = check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation);
  const at::MemoryFormat format = depthwise_memory_format(input);
  const at::ScalarType out_dtype = accumulate_output ? at::toOpMathType(input.scalar_type()) : input.scalar_type();
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().dtype(out_dtype).memory_format(format));
  if (output.numel() == 0) return output;
  // The kernels index a dense tensor of the chosen format; a no-op unless the input is a strided view
  // (which would need a gather per tap otherwise).
  const at::Tensor in = input.contiguous(format);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  FASTCONV_ISA_CALL(forward_into(in, output, weight, bias, g, act, channels_last, accumulate_output));
  return output;
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                std::optional<std::string_view> activation) {
  return forward_impl(input, weight, bias, stride, padding, dilation,
                      parse_activation(activation, "depthwise_conv2d"));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& output, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::optional<std::string_view> activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation, "_depthwise_conv2d_backward");
  const DepthwiseGeometry g = check_depthwise_backward_args(grad_output, input, weight, bias, output, input_size,
                                                            stride, padding, dilation, act, output_mask);
  const at::MemoryFormat format = depthwise_backward_memory_format(grad_output, input);
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty(input_size, weight.options().memory_format(format));
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  if (output_mask[2]) grad_bias = at::empty({g.out_channels}, weight.options());
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {grad_input, grad_weight, grad_bias};
  if (grad_output.numel() == 0) {  // batch 0: the gradients of the parameters are zero sums
    if (grad_weight.defined()) grad_weight.zero_();
    if (grad_bias.defined()) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  // hardswish/silu: recompute the pre-activation (one cheap depthwise pass) rather than keep a second
  // activation-sized tensor alive from the forward; relu/relu6 read the forward output.
  const at::Tensor value = derivative_needs_preactivation(act)
                               ? forward_impl(*input, weight, bias, stride, padding, dilation, Activation::kNone,
                                              /*accumulate_output=*/true)
                               : (act == Activation::kNone ? at::Tensor() : *output);
  // Dense in the gradient's layout (a no-op for the usual dense input); only read for grad_weight.
  const at::Tensor in = grad_weight.defined() ? input->contiguous(format) : at::Tensor();
  FASTCONV_ISA_CALL(backward_into(grad_output, value, in, weight, g, act, format, grad_input, grad_weight, grad_bias));
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
}

}  // namespace fastconv
