// depthwise_conv2d: declarations, argument checks and geometry shared by the CPU and CUDA kernels.
//
// Equals F.conv2d(input, weight, bias, stride, padding, dilation, groups=C) followed by an activation.
// Depth multiplier m = weight.size(0) / C: output channel o reads input channel o / m. Padding is explicit
// (top, bottom, left, right); Python resolves "same"/"valid"/int/tuple to it (fastconv/ops/depthwise_conv2d.py).
#pragma once

#include <fastconv/activation.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace fastconv {

struct DepthwiseGeometry {
  int64_t batch, channels, multiplier, out_channels;
  int64_t in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_left;  // bottom/right padding only shape the output size
  int64_t dilation_h, dilation_w;
  int64_t taps() const { return kernel_h * kernel_w; }
};

// The output positions of one kernel tap along one axis: input index = out * stride - offset must lie in
// [0, in_len); offset = pad_before - tap * dilation. Returns [lo, hi) (empty when lo >= hi).
struct TapRange {
  int64_t lo, hi;
};
inline TapRange tap_range(int64_t offset, int64_t stride, int64_t in_len, int64_t out_len) {
  const int64_t lo = offset > 0 ? (offset + stride - 1) / stride : 0;
  const int64_t top = in_len - 1 + offset;
  const int64_t hi = top < 0 ? 0 : std::min(out_len, top / stride + 1);
  return {lo, std::max(lo, hi)};
}

inline int64_t conv_output_size(int64_t in, int64_t pad_sum, int64_t dilation, int64_t kernel, int64_t stride) {
  const int64_t span = in + pad_sum - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

// Shape checks and geometry from the input's sizes (the backward may not have the input tensor itself).
inline DepthwiseGeometry depthwise_geometry(at::IntArrayRef input_size, const at::Tensor& weight,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation) {
  constexpr const char* op = "depthwise_conv2d";
  TORCH_CHECK(input_size.size() == 4, op, ": input must be 4-D (N, C, H, W), got sizes ", input_size);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1, op, ": weight must have shape (C*m, 1, kh, kw), got ",
              weight.sizes());
  const int64_t channels = input_size[1];
  TORCH_CHECK(channels > 0 && weight.size(0) > 0 && weight.size(0) % channels == 0, op,
              ": weight.shape[0] (", weight.size(0), ") must be a positive multiple of the input channels "
              "(input.shape[1] = ", channels, ")");
  TORCH_CHECK(weight.size(2) > 0 && weight.size(3) > 0, op, ": weight kernel size must be positive, got ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, ": stride must be two positive ints, got ",
              stride);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, op,
              ": dilation must be two positive ints, got ", dilation);
  TORCH_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0, op,
              ": padding must be four non-negative ints (top, bottom, left, right), got ", padding);
  DepthwiseGeometry g;
  g.batch = input_size[0];
  g.channels = channels;
  g.out_channels = weight.size(0);
  g.multiplier = g.out_channels / channels;
  g.in_h = input_size[2];
  g.in_w = input_size[3];
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_top = padding[0];
  g.pad_left = padding[2];
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
inline void check_same_device_dtype(const at::Tensor& other, const at::Tensor& like, const char* name) {
  TORCH_CHECK(other.device() == like.device(), "depthwise_conv2d: ", name, " must be on the same device as weight (",
              like.device(), "), got ", other.device());
  TORCH_CHECK(other.scalar_type() == like.scalar_type(), "depthwise_conv2d: ", name,
              " must have the same dtype as weight (", like.scalar_type(), "), got ", other.scalar_type());
}

inline DepthwiseGeometry check_depthwise_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "depthwise_conv2d";
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got sizes ", input.sizes());
  TORCH_CHECK(input.device() == weight.device(), op, ": input and weight must be on the same device, got ",
              input.device(), " and ", weight.device());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), op, ": input and weight must have the same dtype, got ",
              input.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
              input.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape (",
                weight.size(0), ",), got ", bias->sizes());
    check_same_device_dtype(*bias, weight, "bias");
  }
  return depthwise_geometry(input.sizes(), weight, stride, padding, dilation);
}

// The memory format every kernel writes (and the fake kernel returns): the input's, as F.conv2d keeps it.
inline at::MemoryFormat depthwise_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                           : at::MemoryFormat::Contiguous;
}

// Checks the backward's arguments; returns the geometry. `input` is required when grad_weight is wanted or
// the activation's derivative needs the recomputed pre-activation; `output` for relu/relu6.
inline DepthwiseGeometry check_depthwise_backward_args(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& output, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, Activation act,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "_depthwise_conv2d_backward";
  const bool has_input = input.has_value() && input->defined();
  TORCH_CHECK(has_input || !(output_mask[1] || derivative_needs_preactivation(act)), op,
              ": input is required for grad_weight and for the hardswish/silu derivative");
  if (has_input) {
    TORCH_CHECK(input->sizes() == input_size, op, ": input has sizes ", input->sizes(), " but input_size is ",
                input_size);
  }
  const DepthwiseGeometry g = has_input ? check_depthwise_conv2d_args(*input, weight, bias, stride, padding, dilation)
                                        : depthwise_geometry(input_size, weight, stride, padding, dilation);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels &&
                  grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
              op, ": grad_output must have shape [", g.batch, ", ", g.out_channels, ", ", g.out_h, ", ", g.out_w,
              "], got ", grad_output.sizes());
  check_same_device_dtype(grad_output, weight, "grad_output");
  if (act == Activation::kRelu || act == Activation::kRelu6) {
    TORCH_CHECK(output.has_value() && output->defined() && output->sizes() == grad_output.sizes(), op,
                ": output (the forward result) is required for relu/relu6 and must have grad_output's shape");
    check_same_device_dtype(*output, weight, "output");
  }
  return g;
}

// The backward's layout: the input's when it is given, else grad_output's (the fake kernel follows the same rule).
inline at::MemoryFormat depthwise_backward_memory_format(const at::Tensor& grad_output,
                                                         const std::optional<at::Tensor>& input) {
  return depthwise_memory_format(input.has_value() && input->defined() ? *input : grad_output);
}

}  // namespace fastconv
