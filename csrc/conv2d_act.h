// conv2d_act: declarations, argument checks and geometry shared by the CPU and CUDA kernels.
//
// Equals F.conv2d(input, weight, bias, stride, padding, dilation, groups) followed by an activation (None,
// relu, relu6, hardswish, silu): the eval form of conv-BN-act once fastconv.nn.fold_bn has folded the BN.
// Padding is explicit (top, bottom, left, right); Python resolves "same"/"valid"/int/pair to it
// (fastconv/ops/conv2d_act.py), exactly as for depthwise_conv2d.
//
// Backward (both devices): grad_preact = grad_output * activation'(value) in one elementwise pass, then
// ATen's convolution_backward (oneDNN / cuDNN) for grad_input, grad_weight and grad_bias. `value` is the
// forward output for relu/relu6 and the pre-activation for hardswish/silu, recomputed by one convolution
// in the backward rather than kept alive from the forward (the depthwise op makes the same trade).
#pragma once

#include <fastconv/activation.h>

#include "depthwise_conv2d.h"  // conv_output_size

#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/Exception.h>
#include <c10/util/strides.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace fastconv {

struct ConvGeometry {
  int64_t batch, in_channels, out_channels, groups;
  int64_t in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t dilation_h, dilation_w;
  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  // The GEMM's reduction length per output: (C_in / groups) * kh * kw.
  int64_t reduction() const { return in_per_group() * kernel_h * kernel_w; }
  bool pointwise() const { return kernel_h == 1 && kernel_w == 1; }
  bool symmetric_padding() const { return pad_top == pad_bottom && pad_left == pad_right; }
};

// Shape checks and geometry from the input's sizes (the backward may not have the input tensor itself).
inline ConvGeometry conv2d_act_geometry(at::IntArrayRef input_size, const at::Tensor& weight, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                        const char* op = "conv2d_act") {
  TORCH_CHECK(input_size.size() == 4, op, ": input must be 4-D (N, C, H, W), got sizes ", input_size);
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (C_out, C_in / groups, kh, kw), got sizes ",
              weight.sizes());
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  const int64_t in_channels = input_size[1];
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(in_channels % groups == 0, op, ": groups (", groups, ") must divide the input channels (input.shape[1] = ",
              in_channels, ")");
  TORCH_CHECK(out_channels > 0 && out_channels % groups == 0, op, ": groups (", groups,
              ") must divide the output channels (weight.shape[0] = ", out_channels, ")");
  TORCH_CHECK(weight.size(1) * groups == in_channels, op, ": weight.shape[1] (", weight.size(1),
              ") must equal input.shape[1] / groups (", in_channels, " / ", groups, ")");
  TORCH_CHECK(weight.size(2) > 0 && weight.size(3) > 0, op, ": weight kernel size must be positive, got ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, ": stride must be two positive ints, got ",
              stride);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, op,
              ": dilation must be two positive ints, got ", dilation);
  TORCH_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0, op,
              ": padding must be four non-negative ints (top, bottom, left, right), got ", padding);
  ConvGeometry g;
  g.batch = input_size[0];
  g.in_channels = in_channels;
  g.out_channels = out_channels;
  g.groups = groups;
  g.in_h = input_size[2];
  g.in_w = input_size[3];
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_top = padding[0];
  g.pad_bottom = padding[1];
  g.pad_left = padding[2];
  g.pad_right = padding[3];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = conv_output_size(g.in_h, padding[0] + padding[1], g.dilation_h, g.kernel_h, g.stride_h);
  g.out_w = conv_output_size(g.in_w, padding[2] + padding[3], g.dilation_w, g.kernel_w, g.stride_w);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, op, ": the output size is empty: input (H, W) = (", g.in_h, ", ", g.in_w,
              ") with padding ", padding, ", dilation ", dilation, " and kernel (", g.kernel_h, ", ", g.kernel_w,
              ") gives (", g.out_h, ", ", g.out_w, ")");
  return g;
}

// `other` (bias, grad_output, output) must live on `like`'s device with its dtype.
inline void check_conv2d_act_same_device_dtype(const at::Tensor& other, const at::Tensor& like, const char* name,
                                               const char* op = "conv2d_act") {
  TORCH_CHECK(other.device() == like.device(), op, ": ", name, " must be on the same device as weight (",
              like.device(), "), got ", other.device());
  TORCH_CHECK(other.scalar_type() == like.scalar_type(), op, ": ", name, " must have the same dtype as weight (",
              like.scalar_type(), "), got ", other.scalar_type());
}

inline ConvGeometry check_conv2d_act_args(const at::Tensor& input, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                          const char* op = "conv2d_act") {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got sizes ", input.sizes());
  TORCH_CHECK(input.device() == weight.device(), op, ": input and weight must be on the same device, got ",
              input.device(), " and ", weight.device());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), op, ": input and weight must have the same dtype, got ",
              input.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
              input.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape (weight.shape[0],) = (",
                weight.size(0), ",), got ", bias->sizes());
    check_conv2d_act_same_device_dtype(*bias, weight, "bias", op);
  }
  return conv2d_act_geometry(input.sizes(), weight, stride, padding, dilation, groups, op);
}

// shuffle_cat_conv2d_act: conv2d_act's checks, and `a` must be the convolution's output: its shape, dtype, device.
inline ConvGeometry check_shuffle_cat_conv2d_act_args(const at::Tensor& a, const at::Tensor& input,
                                                      const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "shuffle_cat_conv2d_act";
  const ConvGeometry g = check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, op);
  TORCH_CHECK(a.dim() == 4 && a.size(0) == g.batch && a.size(1) == g.out_channels && a.size(2) == g.out_h &&
                  a.size(3) == g.out_w,
              op, ": a must have the convolution's output shape [", g.batch, ", ", g.out_channels, ", ", g.out_h,
              ", ", g.out_w, "], got ", a.sizes());
  TORCH_CHECK(a.device() == input.device(), op, ": a must be on the same device as input (", input.device(),
              "), got ", a.device());
  TORCH_CHECK(a.scalar_type() == input.scalar_type(), op, ": a must have the same dtype as input (",
              input.scalar_type(), "), got ", a.scalar_type());
  return g;
}

// The memory format every kernel writes (and the fake kernel returns): the input's, as F.conv2d keeps it.
inline at::MemoryFormat conv2d_act_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                           : at::MemoryFormat::Contiguous;
}

// Checks the backward's arguments; returns the geometry. `input` is required for grad_weight and for the
// hardswish/silu derivative (recomputed pre-activation); `output` (the forward result) for relu/relu6.
inline ConvGeometry check_conv2d_act_backward_args(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& output, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, Activation act,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "_conv2d_act_backward";
  const bool has_input = input.has_value() && input->defined();
  TORCH_CHECK(has_input || !(output_mask[1] || derivative_needs_preactivation(act)), op,
              ": input is required for grad_weight and for the hardswish/silu derivative");
  if (has_input) {
    TORCH_CHECK(input->sizes() == input_size, op, ": input has sizes ", input->sizes(), " but input_size is ",
                input_size);
  }
  const ConvGeometry g = has_input ? check_conv2d_act_args(*input, weight, bias, stride, padding, dilation, groups)
                                   : conv2d_act_geometry(input_size, weight, stride, padding, dilation, groups);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels &&
                  grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
              op, ": grad_output must have shape [", g.batch, ", ", g.out_channels, ", ", g.out_h, ", ", g.out_w,
              "], got ", grad_output.sizes());
  check_conv2d_act_same_device_dtype(grad_output, weight, "grad_output", op);
  if (act == Activation::kRelu || act == Activation::kRelu6) {
    TORCH_CHECK(output.has_value() && output->defined() && output->sizes() == grad_output.sizes(), op,
                ": output (the forward result) is required for relu/relu6 and must have grad_output's shape");
    check_conv2d_act_same_device_dtype(*output, weight, "output", op);
  }
  return g;
}

// The backward's layout: the input's when it is given, else grad_output's (the fake kernel follows the same rule).
inline at::MemoryFormat conv2d_act_backward_memory_format(const at::Tensor& grad_output,
                                                          const std::optional<at::Tensor>& input) {
  return conv2d_act_memory_format(input.has_value() && input->defined() ? *input : grad_output);
}

// ATen's convolution, bias included (fused by oneDNN/cuDNN), with fastconv's explicit four-sided padding:
// asymmetric padding ("same" with an even kernel span) pads the input explicitly first, as ATen itself does.
inline at::Tensor aten_convolution(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, const ConvGeometry& g) {
  const at::Tensor padded = g.symmetric_padding()
                                ? input
                                : at::constant_pad_nd(input, {g.pad_left, g.pad_right, g.pad_top, g.pad_bottom}, 0);
  const int64_t pad_h = g.symmetric_padding() ? g.pad_top : 0;
  const int64_t pad_w = g.symmetric_padding() ? g.pad_left : 0;
  return at::convolution(padded, weight, bias, {g.stride_h, g.stride_w}, {pad_h, pad_w}, {g.dilation_h, g.dilation_w},
                         /*transposed=*/false, /*output_padding=*/{0, 0}, g.groups);
}

// `result` with exactly the strides of at::empty(sizes, format) (what the fake kernel returns). ATen picks a
// convolution's layout from the input *and* the weight and may report other strides for size-1 dimensions;
// when the element order is already right, restriding is free (size-1 strides address nothing), else copy.
inline at::Tensor with_memory_format(const at::Tensor& result, at::MemoryFormat format) {
  const at::IntArrayRef sizes = result.sizes();
  std::vector<int64_t> strides;
  if (format == at::MemoryFormat::ChannelsLast) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else {
    const c10::DimVector contiguous = c10::contiguous_strides(sizes);
    strides.assign(contiguous.begin(), contiguous.end());
  }
  if (result.strides() == at::IntArrayRef(strides)) return result;
  if (result.is_contiguous(format)) return result.as_strided(sizes, strides);
  return at::empty(sizes, result.options().memory_format(format)).copy_(result);
}

// The shared second half of the backward: ATen's convolution_backward from grad_preact (dense, `format`, the
// weight's dtype). `input` may be undefined when grad_weight is not wanted: convolution_backward then only
// reads its sizes, so an uninitialised tensor of the right shape and layout stands in (nothing is computed
// from its values: grad_input depends on grad_preact and the weight alone).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_act_convolution_backward(
    const at::Tensor& grad_preact, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    at::IntArrayRef input_size, const ConvGeometry& g, at::MemoryFormat format, std::array<bool, 3> output_mask) {
  at::Tensor in = input.has_value() && input->defined()
                      ? *input
                      : at::empty(input_size, weight.options().memory_format(format));
  if (!g.symmetric_padding()) in = at::constant_pad_nd(in, {g.pad_left, g.pad_right, g.pad_top, g.pad_bottom}, 0);
  const int64_t pad_h = g.symmetric_padding() ? g.pad_top : 0;
  const int64_t pad_w = g.symmetric_padding() ? g.pad_left : 0;
  // The weight in the gradient's layout so ATen does not switch the layout it computes grad_input in.
  const at::Tensor w = weight.contiguous(format);
  auto [grad_input, grad_weight, grad_bias] = at::convolution_backward(
      grad_preact, in, w, std::vector<int64_t>{g.out_channels}, {g.stride_h, g.stride_w}, {pad_h, pad_w},
      {g.dilation_h, g.dilation_w}, /*transposed=*/false, /*output_padding=*/{0, 0}, g.groups, output_mask);
  if (grad_input.defined()) {
    if (!g.symmetric_padding()) {
      grad_input = grad_input.slice(2, g.pad_top, g.pad_top + g.in_h).slice(3, g.pad_left, g.pad_left + g.in_w);
    }
    grad_input = with_memory_format(grad_input, format);
  }
  if (grad_weight.defined()) grad_weight = with_memory_format(grad_weight, at::MemoryFormat::Contiguous);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace fastconv
