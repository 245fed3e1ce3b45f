// deform_conv2d: declarations, argument checks and geometry shared by the CPU and CUDA kernels.
//
// Equals torchvision.ops.deform_conv2d (DCNv1 without a mask, DCNv2 with one):
//   out[n, o, p] = bias[o] + sum_{c in weight group of o, k < kh*kw} weight[o, c, k] * mask[n, g, k, p]
//                  * bilinear(input[n, c], y, x),
//   y = oh * stride_h - pad_h + i * dilation_h + offset[n, g*2*kk + 2k, p], x likewise with 2k + 1,
// where k = i * kw + j, g = c / (C / offset_groups) and bilinear is zero outside (-1, H) x (-1, W) with each
// of its four corners zero outside the image (torchvision's bilinear_interpolate). Weight groups come from
// C / weight.shape[1], offset groups from offset.shape[1] / (2*kh*kw).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace fastconv {

struct DeformGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t weight_groups, offset_groups;
  bool use_mask;
  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t pixels() const { return out_h * out_w; }
  int64_t channels_per_weight_group() const { return in_channels / weight_groups; }
  int64_t outputs_per_weight_group() const { return out_channels / weight_groups; }
  int64_t channels_per_offset_group() const { return in_channels / offset_groups; }
};

inline void check_deform_companion(const at::Tensor& other, const at::Tensor& input, const char* name) {
  TORCH_CHECK(other.device() == input.device(), "deform_conv2d: ", name, " must be on input's device (",
              input.device(), "), got ", other.device());
  TORCH_CHECK(other.scalar_type() == input.scalar_type(), "deform_conv2d: ", name, " must have input's dtype (",
              input.scalar_type(), "), got ", other.scalar_type());
}

// Every check torchvision makes (same conditions, clearer messages), plus dtype/device agreement.
inline DeformGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& offset,
                                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation, const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "deform_conv2d";
  const bool use_mask = mask.has_value() && mask->defined();
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got sizes ", input.sizes());
  TORCH_CHECK(offset.dim() == 4, op, ": offset must be 4-D (N, 2*offset_groups*kh*kw, H_out, W_out), got sizes ",
              offset.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (C_out, C_in / groups, kh, kw), got sizes ",
              weight.sizes());
  TORCH_CHECK(!use_mask || mask->dim() == 4, op, ": mask must be 4-D (N, offset_groups*kh*kw, H_out, W_out), got sizes ",
              use_mask ? mask->sizes() : at::IntArrayRef{});
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
              input.scalar_type());
  check_deform_companion(offset, input, "offset");
  check_deform_companion(weight, input, "weight");
  if (use_mask) check_deform_companion(*mask, input, "mask");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) check_deform_companion(*bias, input, "bias");
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, ": stride must be two positive ints, got ",
              stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
              ": padding must be two non-negative ints, got ", padding);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, op,
              ": dilation must be two positive ints, got ", dilation);
  DeformGeometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, op, ": weight kernel size must be positive, got weight sizes ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) > 0 && g.in_channels % weight.size(1) == 0, op, ": weight.shape[1] (", weight.size(1),
              ") must divide input.shape[1] (", g.in_channels, "): weight groups = C_in / weight.shape[1]");
  g.weight_groups = g.in_channels / weight.size(1);
  TORCH_CHECK(g.out_channels % g.weight_groups == 0, op, ": weight.shape[0] (", g.out_channels,
              ") must be divisible by the weight groups (", g.weight_groups, " = input.shape[1] / weight.shape[1])");
  const int64_t taps = g.kernel_h * g.kernel_w;
  TORCH_CHECK(offset.size(1) > 0 && offset.size(1) % (2 * taps) == 0, op, ": offset.shape[1] is not valid: got ",
              offset.size(1), ", expected 2*offset_groups*kh*kw, a positive multiple of 2*", g.kernel_h, "*",
              g.kernel_w, " = ", 2 * taps);
  g.offset_groups = offset.size(1) / (2 * taps);
  TORCH_CHECK(g.in_channels % g.offset_groups == 0, op, ": input.shape[1] (", g.in_channels,
              ") must be divisible by offset_groups (", g.offset_groups, " = offset.shape[1] / (2*kh*kw))");
  if (use_mask) {
    TORCH_CHECK(mask->size(1) == g.offset_groups * taps, op, ": mask.shape[1] is not valid: got ", mask->size(1),
                ", expected offset_groups*kh*kw = ", g.offset_groups, "*", g.kernel_h, "*", g.kernel_w, " = ",
                g.offset_groups * taps);
  }
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, op, ": bias must have shape (", g.out_channels,
                ",), got ", bias->sizes());
  }
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = (g.in_h + 2 * g.pad_h - (g.dilation_h * (g.kernel_h - 1) + 1)) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_w - (g.dilation_w * (g.kernel_w - 1) + 1)) / g.stride_w + 1;
  TORCH_CHECK(g.in_h + 2 * g.pad_h - (g.dilation_h * (g.kernel_h - 1) + 1) >= 0 &&
                  g.in_w + 2 * g.pad_w - (g.dilation_w * (g.kernel_w - 1) + 1) >= 0 && g.out_h > 0 && g.out_w > 0,
              op, ": the output size is empty: input (H, W) = (", g.in_h, ", ", g.in_w, ") with padding ", padding,
              ", dilation ", dilation, " and kernel (", g.kernel_h, ", ", g.kernel_w, ")");
  TORCH_CHECK(offset.size(0) == g.batch, op, ": offset.shape[0] is not valid: got ", offset.size(0),
              ", expected input.shape[0] = ", g.batch);
  TORCH_CHECK(offset.size(2) == g.out_h && offset.size(3) == g.out_w, op, ": offset spatial size is not valid: got (",
              offset.size(2), ", ", offset.size(3), "), expected the output size (", g.out_h, ", ", g.out_w, ")");
  if (use_mask) {
    TORCH_CHECK(mask->size(0) == g.batch, op, ": mask.shape[0] is not valid: got ", mask->size(0),
                ", expected input.shape[0] = ", g.batch);
    TORCH_CHECK(mask->size(2) == g.out_h && mask->size(3) == g.out_w, op, ": mask spatial size is not valid: got (",
                mask->size(2), ", ", mask->size(3), "), expected the output size (", g.out_h, ", ", g.out_w, ")");
  }
  g.use_mask = use_mask;
  return g;
}

inline DeformGeometry check_deform_conv2d_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                                        const at::Tensor& offset, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformGeometry g =
      check_deform_conv2d_args(input, offset, weight, std::nullopt, stride, padding, dilation, mask);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels &&
                  grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
              "_deform_conv2d_backward: grad_output must have shape [", g.batch, ", ", g.out_channels, ", ", g.out_h,
              ", ", g.out_w, "], got ", grad_output.sizes());
  check_deform_companion(grad_output, input, "grad_output");
  return g;
}

// The layout every kernel writes (and the fake kernel returns): the input's for the output and grad_input,
// offset's for grad_offset, mask's for grad_mask, as ATen's convolutions keep their inputs' formats.
inline at::MemoryFormat deform_memory_format(const at::Tensor& like) {
  return like.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous;
}

// Zeros shaped like `like` in its deform_memory_format (at::zeros ignores a memory format in its options).
inline at::Tensor zeros_in_format(const at::Tensor& like, at::ScalarType dtype) {
  return at::empty(like.sizes(), like.options().dtype(dtype).memory_format(deform_memory_format(like))).zero_();
}

// The four bilinear corners of one sampling point (torchvision's bilinear_interpolate and
// get_coordinate_weight): corner offsets in elements of one (H, W) plane given its strides, each zeroed
// and flagged invalid outside the image; `inside` is the forward's (-1, H) x (-1, W) range test.
template <typename acc_t>
struct BilinearPoint {
  int64_t index[4];  // (low, low), (low, high), (high, low), (high, high); 0 when invalid
  bool valid[4];
  acc_t lh, lw;  // fractional parts
  bool inside;

  C10_HOST_DEVICE BilinearPoint(acc_t y, acc_t x, int64_t height, int64_t width, int64_t stride_h, int64_t stride_w) {
    inside = !(y <= acc_t(-1) || acc_t(height) <= y || x <= acc_t(-1) || acc_t(width) <= x);
    // Far outside the image nothing is read (and the floor could overflow an int): all corners invalid.
    const bool near = y > acc_t(-2) && y < acc_t(height + 1) && x > acc_t(-2) && x < acc_t(width + 1);
    const acc_t fy = near ? ::floor(y) : acc_t(-2);
    const acc_t fx = near ? ::floor(x) : acc_t(-2);
    const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
    lh = near ? y - fy : acc_t(0);
    lw = near ? x - fx : acc_t(0);
    const bool vy0 = y0 >= 0 && y0 < height, vy1 = y0 + 1 >= 0 && y0 + 1 < height;
    const bool vx0 = x0 >= 0 && x0 < width, vx1 = x0 + 1 >= 0 && x0 + 1 < width;
    valid[0] = vy0 && vx0;
    valid[1] = vy0 && vx1;
    valid[2] = vy1 && vx0;
    valid[3] = vy1 && vx1;
    index[0] = valid[0] ? y0 * stride_h + x0 * stride_w : 0;
    index[1] = valid[1] ? y0 * stride_h + (x0 + 1) * stride_w : 0;
    index[2] = valid[2] ? (y0 + 1) * stride_h + x0 * stride_w : 0;
    index[3] = valid[3] ? (y0 + 1) * stride_h + (x0 + 1) * stride_w : 0;
  }
  // Interpolation weights of the four corners (zero outside the forward's range or for an invalid corner).
  C10_HOST_DEVICE void weights(acc_t* w) const {
    const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
    w[0] = inside && valid[0] ? hh * hw : acc_t(0);
    w[1] = inside && valid[1] ? hh * lw : acc_t(0);
    w[2] = inside && valid[2] ? lh * hw : acc_t(0);
    w[3] = inside && valid[3] ? lh * lw : acc_t(0);
  }
};

}  // namespace fastconv
