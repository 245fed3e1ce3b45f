// squeeze_excite: argument checks, geometry and the tiny per-sample MLP shared by the CPU and CUDA kernels.
//
// Forward (torchvision.ops.SqueezeExcitation):
//   p = mean_hw(x)            (N, C)   one reduction pass over x, opmath accumulation
//   z1 = p W1^T + b1          (N, Cr)
//   h = act(z1)
//   z2 = h W2^T + b2          (N, C)
//   s = gate(z2)
//   out = x * s[n, c]                  one elementwise pass
// Backward: one pass computes both sum_hw(x) (to rebuild p) and ds = sum_hw(g * x) (x and g are read
// there anyway, so nothing but the input needs to be saved), the MLP backward runs on (N, C) tensors, and
// one pass writes grad_x = g * s + dp / HW.
#pragma once

#include <fastconv/layout.h>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace fastconv {

enum class SqueezeActivation { kRelu, kSilu };
enum class SqueezeGate { kSigmoid, kHardsigmoid };

inline SqueezeActivation parse_squeeze_activation(c10::string_view name) {
  if (name == "relu") return SqueezeActivation::kRelu;
  if (name == "silu") return SqueezeActivation::kSilu;
  TORCH_CHECK(false, "squeeze_excite: activation must be one of 'relu', 'silu', got '", name, "'");
}

inline SqueezeGate parse_squeeze_gate(c10::string_view name) {
  if (name == "sigmoid") return SqueezeGate::kSigmoid;
  if (name == "hardsigmoid") return SqueezeGate::kHardsigmoid;
  TORCH_CHECK(false, "squeeze_excite: gate must be one of 'sigmoid', 'hardsigmoid', got '", name, "'");
}

inline void check_same_dtype_device(const at::Tensor& input, const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.scalar_type() == input.scalar_type(), "squeeze_excite: ", name, " has dtype ",
              other.scalar_type(), " but input has dtype ", input.scalar_type(), "; they must match");
  TORCH_CHECK(other.device() == input.device(), "squeeze_excite: ", name, " is on ", other.device(),
              " but input is on ", input.device(), "; they must be on the same device");
}

inline void check_squeeze_excite_args(const at::Tensor& input, const at::Tensor& fc1_weight,
                                      const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                      const std::optional<at::Tensor>& fc2_bias, c10::string_view activation,
                                      c10::string_view gate) {
  TORCH_CHECK(input.dim() == 4, "squeeze_excite: input must be 4-D (N, C, H, W), got sizes ", input.sizes());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
              "squeeze_excite: input must be float16, bfloat16, float32 or float64, got ", dtype);
  const int64_t channels = input.size(1);
  TORCH_CHECK(fc1_weight.dim() == 4 && fc1_weight.size(1) == channels && fc1_weight.size(2) == 1 &&
                  fc1_weight.size(3) == 1,
              "squeeze_excite: fc1_weight must have shape (squeeze_channels, C, 1, 1) with C = input.shape[1] = ",
              channels, ", got ", fc1_weight.sizes());
  const int64_t squeeze = fc1_weight.size(0);
  TORCH_CHECK(fc2_weight.dim() == 4 && fc2_weight.size(0) == channels && fc2_weight.size(1) == squeeze &&
                  fc2_weight.size(2) == 1 && fc2_weight.size(3) == 1,
              "squeeze_excite: fc2_weight must have shape (C, squeeze_channels, 1, 1) = (", channels, ", ", squeeze,
              ", 1, 1), got ", fc2_weight.sizes());
  check_same_dtype_device(input, fc1_weight, "fc1_weight");
  check_same_dtype_device(input, fc2_weight, "fc2_weight");
  if (fc1_bias.has_value()) {
    TORCH_CHECK(fc1_bias->dim() == 1 && fc1_bias->size(0) == squeeze,
                "squeeze_excite: fc1_bias must have shape (squeeze_channels,) = (", squeeze, ",), got ",
                fc1_bias->sizes());
    check_same_dtype_device(input, *fc1_bias, "fc1_bias");
  }
  if (fc2_bias.has_value()) {
    TORCH_CHECK(fc2_bias->dim() == 1 && fc2_bias->size(0) == channels,
                "squeeze_excite: fc2_bias must have shape (C,) = (", channels, ",), got ", fc2_bias->sizes());
    check_same_dtype_device(input, *fc2_bias, "fc2_bias");
  }
  parse_squeeze_activation(activation);
  parse_squeeze_gate(gate);
  TORCH_CHECK(input.size(0) == 0 || input.size(2) * input.size(3) > 0,
              "squeeze_excite: input must have a non-empty spatial size (H * W > 0), got sizes ", input.sizes());
}

// The kernels see a dense tensor as [batch, channels, pixels] (NCHW: pixel stride 1) or
// [batch, pixels, channels] (channels_last: channel stride 1).
struct SqueezeGeometry {
  int64_t batch;
  int64_t channels;
  int64_t pixels;  // H * W
  bool channels_last;
};

inline SqueezeGeometry squeeze_geometry(const at::Tensor& dense) {
  // is_contiguous() first: when both hold (H = W = 1 or C = 1) the two index maps are the same.
  const bool channels_last = !dense.is_contiguous();
  return {dense.size(0), dense.size(1), dense.size(2) * dense.size(3), channels_last};
}

// The layout the kernels run in: NCHW or channels_last with the strides of empty_like(input). Any other
// layout (a non-dense view, or a dense permutation such as (N, C, W, H)) is first copied to NCHW; the caller
// then writes the result back into empty_like(input) so the output still keeps the input's layout.
inline at::Tensor kernel_layout(const at::Tensor& input) {
  if (input.is_contiguous() || input.is_contiguous(at::MemoryFormat::ChannelsLast)) return input;
  return input.contiguous();
}

// A tensor (grad_output) in the same layout as `like` (a kernel_layout tensor of the same shape): no copy
// when it already has it; otherwise one copy, since the passes index both with one geometry.
inline at::Tensor same_layout(const at::Tensor& tensor, const at::Tensor& like) {
  if (tensor.strides() == like.strides()) return tensor;
  return at::empty_like(like).copy_(tensor);
}

// Stores `result` (computed in kernel layout) as the op's output: empty_like(input)'s strides.
inline at::Tensor in_input_layout(const at::Tensor& result, const at::Tensor& input) {
  // A dense input (the usual case: NCHW or channels_last) is its own empty_like layout, so no probe tensor is
  // needed. Allocating one anyway costs a second input-sized block per call, and on the CPU glibc then gives
  // both back to the OS on free (heap trim) and page-faults them in again on the next call: 2-5x at batch 1.
  if (input.is_non_overlapping_and_dense()) {
    if (result.strides() == input.strides()) return result;
    return at::empty_like(input).copy_(result);
  }
  at::Tensor output = at::empty_like(input);
  if (output.strides() == result.strides()) return result;
  return output.copy_(result);
}

inline at::ScalarType squeeze_opmath_type(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The MLP on the pooled means, in opmath precision (ATen matmuls on (N, C) / (N, Cr) tensors: tiny next
// to the passes over x). Returns the gate s; z1 and z2 are kept for the backward.
struct SqueezeMlp {
  at::Tensor pooled, z1, hidden, z2, scale;
};

inline SqueezeMlp squeeze_mlp_forward(const at::Tensor& pooled, const at::Tensor& fc1_weight,
                                      const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                      const std::optional<at::Tensor>& fc2_bias, SqueezeActivation activation,
                                      SqueezeGate gate) {
  const auto opmath = pooled.scalar_type();
  const at::Tensor w1 = fc1_weight.flatten(1).to(opmath);  // (Cr, C)
  const at::Tensor w2 = fc2_weight.flatten(1).to(opmath);  // (C, Cr)
  SqueezeMlp mlp;
  mlp.pooled = pooled;
  mlp.z1 = fc1_bias.has_value() ? at::addmm(fc1_bias->to(opmath), pooled, w1.t()) : at::mm(pooled, w1.t());
  mlp.hidden = activation == SqueezeActivation::kRelu ? at::relu(mlp.z1) : at::silu(mlp.z1);
  mlp.z2 = fc2_bias.has_value() ? at::addmm(fc2_bias->to(opmath), mlp.hidden, w2.t()) : at::mm(mlp.hidden, w2.t());
  mlp.scale = gate == SqueezeGate::kSigmoid ? at::sigmoid(mlp.z2) : at::hardsigmoid(mlp.z2);
  return mlp;
}

struct SqueezeMlpGrads {
  at::Tensor grad_pooled;  // (N, C) opmath
  at::Tensor grad_fc1_weight, grad_fc1_bias, grad_fc2_weight, grad_fc2_bias;  // parameter dtype; biases may be undefined
};

// grad_scale = ds[n, c] = sum_hw(g * x).
inline SqueezeMlpGrads squeeze_mlp_backward(const SqueezeMlp& mlp, const at::Tensor& grad_scale,
                                            const at::Tensor& fc1_weight, bool has_fc1_bias,
                                            const at::Tensor& fc2_weight, bool has_fc2_bias,
                                            SqueezeActivation activation, SqueezeGate gate) {
  const auto opmath = grad_scale.scalar_type();
  const auto param_dtype = fc1_weight.scalar_type();
  const at::Tensor w1 = fc1_weight.flatten(1).to(opmath);  // (Cr, C)
  const at::Tensor w2 = fc2_weight.flatten(1).to(opmath);  // (C, Cr)
  const at::Tensor dz2 = gate == SqueezeGate::kSigmoid ? at::sigmoid_backward(grad_scale, mlp.scale)
                                                       : at::hardsigmoid_backward(grad_scale, mlp.z2);
  const at::Tensor dh = at::mm(dz2, w2);  // (N, Cr)
  const at::Tensor dz1 = activation == SqueezeActivation::kRelu ? at::threshold_backward(dh, mlp.z1, 0)
                                                                : at::silu_backward(dh, mlp.z1);
  SqueezeMlpGrads grads;
  grads.grad_pooled = at::mm(dz1, w1);  // (N, C)
  grads.grad_fc2_weight = at::mm(dz2.t(), mlp.hidden).to(param_dtype).view(fc2_weight.sizes());
  grads.grad_fc1_weight = at::mm(dz1.t(), mlp.pooled).to(param_dtype).view(fc1_weight.sizes());
  if (has_fc2_bias) grads.grad_fc2_bias = dz2.sum(0).to(param_dtype);
  if (has_fc1_bias) grads.grad_fc1_bias = dz1.sum(0).to(param_dtype);
  return grads;
}

}  // namespace fastconv

namespace fastconv {

// The device-independent body of both ops. `Passes` supplies the two memory-bound passes of one device:
//   Passes::pool(x, grad, sum_x, sum_grad_x, geometry): sum_x[n, c] = sum_hw x, and, when `grad` is
//       defined, sum_grad_x[n, c] = sum_hw grad * x, both into zero-filled (N, C) opmath tensors;
//   Passes::scale(x, scale, shift, out, geometry): out = x * scale[n, c] (+ shift[n, c] when defined),
//       computed in opmath, stored in x's dtype;
//   Passes::forward_scale(pooled, weights..., activation, gate): the gate s of the forward, (N, C) opmath
//       (squeeze_mlp_forward(...).scale, or a device's own fused version).
template <typename Passes>
at::Tensor squeeze_excite_forward(const at::Tensor& input, const at::Tensor& fc1_weight,
                                  const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                  const std::optional<at::Tensor>& fc2_bias, c10::string_view activation,
                                  c10::string_view gate) {
  check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
  const at::Tensor x = kernel_layout(input);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return in_input_layout(out, input);
  const SqueezeGeometry geometry = squeeze_geometry(x);
  at::Tensor sums = at::zeros({geometry.batch, geometry.channels}, x.options().dtype(squeeze_opmath_type(x)));
  Passes::pool(x, at::Tensor(), sums, at::Tensor(), geometry);
  const at::Tensor scale = Passes::forward_scale(sums.div_(geometry.pixels), fc1_weight, fc1_bias, fc2_weight,
                                                 fc2_bias, parse_squeeze_activation(activation), parse_squeeze_gate(gate));
  Passes::scale(x, scale, at::Tensor(), out, geometry);
  return in_input_layout(out, input);
}

// Returns (grad_input, grad_fc1_weight, grad_fc1_bias, grad_fc2_weight, grad_fc2_bias); a bias gradient is
// undefined (None in Python) when that bias is absent.
template <typename Passes>
std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>, at::Tensor, std::optional<at::Tensor>> squeeze_excite_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& fc1_weight,
    const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight, const std::optional<at::Tensor>& fc2_bias,
    c10::string_view activation, c10::string_view gate) {
  check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "squeeze_excite: grad_output must have the input's shape ",
              input.sizes(), ", got ", grad_output.sizes());
  check_same_dtype_device(input, grad_output, "grad_output");
  const at::Tensor x = kernel_layout(input);
  const at::Tensor grad = same_layout(grad_output, x);
  const SqueezeGeometry geometry = squeeze_geometry(x);
  const auto opmath_options = x.options().dtype(squeeze_opmath_type(x));
  at::Tensor sums = at::zeros({geometry.batch, geometry.channels}, opmath_options);
  at::Tensor grad_scale = at::zeros({geometry.batch, geometry.channels}, opmath_options);  // sum_hw g * x
  if (x.numel() > 0) Passes::pool(x, grad, sums, grad_scale, geometry);
  const auto act = parse_squeeze_activation(activation);
  const auto gate_kind = parse_squeeze_gate(gate);
  const SqueezeMlp mlp = squeeze_mlp_forward(sums.div_(std::max<int64_t>(geometry.pixels, 1)), fc1_weight, fc1_bias,
                                             fc2_weight, fc2_bias, act, gate_kind);
  const SqueezeMlpGrads grads = squeeze_mlp_backward(mlp, grad_scale, fc1_weight, fc1_bias.has_value(), fc2_weight,
                                                     fc2_bias.has_value(), act, gate_kind);
  at::Tensor grad_input = at::empty_like(x);
  if (x.numel() > 0) {
    // d mean / d x = 1 / HW for every pixel of the plane.
    Passes::scale(grad, mlp.scale, grads.grad_pooled.div_(geometry.pixels), grad_input, geometry);
  }
  const auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
  return {in_input_layout(grad_input, input), grads.grad_fc1_weight, optional(grads.grad_fc1_bias),
          grads.grad_fc2_weight, optional(grads.grad_fc2_bias)};
}

}  // namespace fastconv
