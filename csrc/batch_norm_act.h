// batch_norm_act: declarations, argument checks, activation functors and geometry shared by the CPU and
// CUDA kernels. Semantics: F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
// eps) followed by the activation; the op returns (output, save_mean, save_invstd) like aten's
// native_batch_norm, so the backward never recomputes statistics.
#pragma once

#include <fastconv/activation.h>
#include <fastconv/layout.h>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace fastconv {


inline Activation parse_activation(const std::optional<c10::string_view>& name) {
  if (!name.has_value()) return Activation::kNone;
  const std::string s(name->data(), name->size());
  if (s == "relu") return Activation::kRelu;
  if (s == "relu6") return Activation::kRelu6;
  if (s == "hardswish") return Activation::kHardswish;
  if (s == "silu") return Activation::kSilu;
  TORCH_CHECK_VALUE(false, "batch_norm_act: unknown activation '", s,
                    "'; expected one of None, 'relu', 'relu6', 'hardswish', 'silu'");
}

// The activation and its derivative, both as functions of the pre-activation y = x_hat * w + b (which the
// backward recomputes from x, mean, invstd, w, b instead of saving it). The derivatives follow aten's
// backward kernels at the kinks: relu passes where y > 0 (threshold_backward), relu6 where 0 < y < 6
// (hardtanh_backward), hardswish is 0 below -3, y / 3 + 1/2 on [-3, 3] and 1 above (hardswish_backward).
template <Activation kAct, typename acc_t>
struct ActivationOp {
  static C10_HOST_DEVICE inline acc_t forward(acc_t y) {
    if constexpr (kAct == Activation::kRelu) {
      return y > acc_t(0) ? y : acc_t(0);
    } else if constexpr (kAct == Activation::kRelu6) {
      return y < acc_t(0) ? acc_t(0) : (y > acc_t(6) ? acc_t(6) : y);
    } else if constexpr (kAct == Activation::kHardswish) {
      const acc_t gate = y + acc_t(3) < acc_t(0) ? acc_t(0) : (y + acc_t(3) > acc_t(6) ? acc_t(6) : y + acc_t(3));
      return y * gate / acc_t(6);
    } else if constexpr (kAct == Activation::kSilu) {
      return y / (acc_t(1) + std::exp(-y));
    } else {
      return y;
    }
  }
  // d activation / d y at y. Written with arithmetic on comparisons, not branches: the signs of y are
  // random, and a mispredicted branch per element made the CPU backward several times slower.
  static C10_HOST_DEVICE inline acc_t derivative(acc_t y) {
    if constexpr (kAct == Activation::kRelu) {
      // The second factor is 1 for every finite y; without it GCC turned the product back into a branch
      // (10x slower on random signs). Only y = +inf differs from aten (0 instead of 1).
      return static_cast<acc_t>(y > acc_t(0)) * static_cast<acc_t>(y < std::numeric_limits<acc_t>::infinity());
    } else if constexpr (kAct == Activation::kRelu6) {
      return static_cast<acc_t>(y > acc_t(0)) * static_cast<acc_t>(y < acc_t(6));
    } else if constexpr (kAct == Activation::kHardswish) {
      const acc_t middle = static_cast<acc_t>(y <= acc_t(3));
      return static_cast<acc_t>(y >= acc_t(-3)) * (middle * (y / acc_t(3) + acc_t(0.5)) + (acc_t(1) - middle));
    } else if constexpr (kAct == Activation::kSilu) {
      const acc_t sigmoid = acc_t(1) / (acc_t(1) + std::exp(-y));
      return sigmoid * (acc_t(1) + y * (acc_t(1) - sigmoid));
    } else {
      return acc_t(1);
    }
  }
};

// Calls body.template operator()<kAct>() with the activation as a compile-time constant.
template <typename Body>
inline void dispatch_activation(Activation act, Body&& body) {
  switch (act) {
    case Activation::kNone: return body.template operator()<Activation::kNone>();
    case Activation::kRelu: return body.template operator()<Activation::kRelu>();
    case Activation::kRelu6: return body.template operator()<Activation::kRelu6>();
    case Activation::kHardswish: return body.template operator()<Activation::kHardswish>();
    case Activation::kSilu: return body.template operator()<Activation::kSilu>();
  }
}

// The statistics (and weight/bias as used by the kernels) are kept in the accumulation type: float for
// float/half/bfloat16 inputs, double for double inputs.
inline c10::ScalarType accumulate_type_of(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A per-channel parameter: shape (C,), on the input's device, and either the input's dtype or float32 with
// a float16/bfloat16 input (mixed precision, as cuDNN and F.batch_norm allow).
inline void check_channel_param(const at::Tensor& input, const at::Tensor& param, const char* name) {
  const int64_t channels = input.size(1);
  TORCH_CHECK(param.dim() == 1 && param.size(0) == channels, "batch_norm_act: ", name,
              " must have shape (C,) = (", channels, ",), got ", param.sizes());
  TORCH_CHECK(param.device() == input.device(), "batch_norm_act: ", name, " must be on the input's device (",
              input.device(), "), got ", param.device());
  const bool reduced = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  TORCH_CHECK(param.scalar_type() == input.scalar_type() || (reduced && param.scalar_type() == at::kFloat),
              "batch_norm_act: ", name, " must have the input's dtype (", input.scalar_type(),
              ") or float32 with a float16/bfloat16 input, got ", param.scalar_type());
}

inline void check_input(const at::Tensor& input, const char* name) {
  TORCH_CHECK(input.dim() >= 2, "batch_norm_act: ", name, " must have at least 2 dimensions (N, C, *), got sizes ",
              input.sizes());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
              "batch_norm_act: ", name, " must be float32, float16, bfloat16 or float64, got ", dtype);
}

// All checks of the forward; returns the parsed activation.
inline Activation check_batch_norm_act_args(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias,
                                            const std::optional<at::Tensor>& running_mean,
                                            const std::optional<at::Tensor>& running_var, bool training,
                                            double eps, const std::optional<c10::string_view>& activation) {
  check_input(input, "input");
  const Activation act = parse_activation(activation);
  if (weight.has_value()) check_channel_param(input, *weight, "weight");
  if (bias.has_value()) check_channel_param(input, *bias, "bias");
  if (running_mean.has_value()) check_channel_param(input, *running_mean, "running_mean");
  if (running_var.has_value()) check_channel_param(input, *running_var, "running_var");
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "batch_norm_act: running_mean and running_var must both be given or both be None");
  TORCH_CHECK_VALUE(eps > 0, "batch_norm_act: eps must be positive, got ", eps);
  TORCH_CHECK(training || running_mean.has_value(),
              "batch_norm_act: running_mean must be defined in evaluation mode (training=False)");
  if (training) {
    // Like F.batch_norm: exactly one value per channel is an error; an empty batch is not (empty output,
    // running statistics unchanged).
    int64_t per_channel = input.size(0);
    for (int64_t d = 2; d < input.dim(); ++d) per_channel *= input.size(d);
    TORCH_CHECK_VALUE(per_channel != 1,
                      "batch_norm_act: Expected more than 1 value per channel when training, got input size ",
                      input.sizes());
  }
  return act;
}

inline void check_batch_norm_act_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                               const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& bias,
                                               const at::Tensor& save_mean, const at::Tensor& save_invstd) {
  check_input(input, "input");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "batch_norm_act: grad_output must have the input's shape ",
              input.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "batch_norm_act: grad_output must have the input's dtype and device");
  if (weight.has_value()) check_channel_param(input, *weight, "weight");
  if (bias.has_value()) check_channel_param(input, *bias, "bias");
  for (const auto* stat : {&save_mean, &save_invstd}) {
    TORCH_CHECK(stat->dim() == 1 && stat->size(0) == input.size(1) && stat->device() == input.device() &&
                    stat->scalar_type() == accumulate_type_of(input),
                "batch_norm_act: save_mean/save_invstd must be (C,) tensors of the accumulation dtype");
  }
}

// A dense tensor whose channel dimension has stride `inner` is, in memory, an [outer, C, inner] array:
// NCHW is [N, C, H*W]; channels_last (and 2-D (N, C)) is [N*H*W, C, 1] (see csrc/channel_shuffle.h).
struct BatchNormGeometry {
  int64_t outer;
  int64_t channels;
  int64_t inner;
  int64_t count() const { return outer * inner; }  // elements per channel
};

inline BatchNormGeometry batch_norm_geometry(const at::Tensor& dense) {
  const int64_t channels = dense.size(1);
  if (dense.numel() == 0) return {0, channels, 1};
  const int64_t inner = channels > 1 ? dense.stride(1) : dense.numel() / dense.size(0);
  return {dense.numel() / (channels * inner), channels, inner};
}

// weight and bias as contiguous accumulation-type tensors (ones / zeros when absent): (C,) sized, so the
// conversion is negligible next to the passes over the input, and the kernels have one code path.
inline at::Tensor channel_param_or(const std::optional<at::Tensor>& param, const at::Tensor& input, double fill) {
  const auto options = input.options().dtype(accumulate_type_of(input));
  if (param.has_value()) return param->to(options).contiguous();
  return fill == 0.0 ? at::zeros({input.size(1)}, options) : at::ones({input.size(1)}, options);
}

// The running-statistics update of F.batch_norm, in place, in the accumulation type:
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)   (unbiased)
// (C,)-sized ATen arithmetic; the statistics themselves come from the kernels.
inline void update_running_stats(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                                 const at::Tensor& biased_var, int64_t count, double momentum) {
  const double unbias = count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  const auto acc = mean.scalar_type();
  running_mean.copy_(mean * momentum + running_mean.to(acc) * (1.0 - momentum));
  running_var.copy_(biased_var * (momentum * unbias) + running_var.to(acc) * (1.0 - momentum));
}

}  // namespace fastconv
