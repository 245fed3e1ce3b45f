// batch_norm_act on the CPU. A dense input is an [outer, C, inner] array (csrc/batch_norm_act.h):
// NCHW has inner = H*W planes, channels_last has inner = 1 (rows of C channels).
//   training forward: one pass over memory for per-channel mean / biased variance (in-cache blocks of
//     kBlock elements, each reduced by the corrected two-pass algorithm while it sits in L1, merged with
//     Chan's parallel formula -- never E[x^2] - E[x]^2), then one pass normalise + scale/shift + activation.
//   backward: one pass for sum(dy') and sum(dy' * (x - mean)) per channel (dy' = dy * act'(y), y recomputed
//     from x), one elementwise pass for grad_input.
// Per-channel partials are combined in a fixed order that depends on the shape only, never on the thread
// count, so results are deterministic. The loops live in batch_norm_act_kernels.inc, compiled for baseline
// x86-64, AVX2 and AVX-512 and picked at run time (fastconv/cpu_isa.h).
#include "batch_norm_act.h"
#include "fastconv/cpu_isa.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fastconv {
namespace {

#define FASTCONV_ISA_KERNELS "cpu/batch_norm_act_kernels.inc"
#include "fastconv/cpu_isa_kernels.h"

// The distance between pixel rows when `input` is a channels_last view of whole rows of a wider channels_last
// tensor (a channel slice: DenseNet's growing feature buffer, of which each layer normalises a channel prefix)
// and `output` (from empty_like_layout) is dense channels_last; 0 otherwise.
int64_t wider_channels_last_rows(const at::Tensor& input, const at::Tensor& output) {
  if (input.dim() != 4 || input.numel() == 0 || input.size(1) < 2 || output.stride(1) != 1 || input.stride(1) != 1) {
    return 0;
  }
  const int64_t n = input.size(0), h = input.size(2), w = input.size(3);
  // The step from one pixel to the next in (n, h, w) order (a size-1 dimension's stride is arbitrary).
  const int64_t row = w > 1 ? input.stride(3) : h > 1 ? input.stride(2) : n > 1 ? input.stride(0) : 0;
  const bool rows = row > input.size(1) && (h == 1 || input.stride(2) == w * row) &&
                    (n == 1 || input.stride(0) == h * w * row);
  return rows ? row : 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps, std::optional<c10::string_view> activation) {
  const Activation act =
      check_batch_norm_act_args(input, weight, bias, running_mean, running_var, training, eps, activation);
  at::Tensor output = empty_like_layout(input);
  const auto stat_options = input.options().dtype(accumulate_type_of(input));
  const int64_t channels = input.size(1);
  at::Tensor save_mean = at::empty({channels}, stat_options);
  at::Tensor save_invstd = at::empty({channels}, stat_options);
  // A non-dense input is copied once so that input and output share strides (not the hot path), except, in eval,
  // a channels_last view of whole pixel rows of a wider tensor, which the apply pass reads in place.
  const int64_t row_stride = training ? 0 : wider_channels_last_rows(input, output);
  const at::Tensor x = row_stride > 0 ? input : dense_like(input, output);
  const BatchNormGeometry g = batch_norm_geometry(row_stride > 0 ? output : x);
  if (training) {
    if (output.numel() == 0) {  // F.batch_norm: empty output, running statistics untouched
      save_mean.zero_();
      save_invstd.fill_(1.0 / std::sqrt(eps));
      return {output, save_mean, save_invstd};
    }
    at::Tensor var = at::empty({channels}, stat_options);
    FASTCONV_ISA_CALL(compute_stats(x, save_mean, var, g));
    save_invstd = (var + eps).rsqrt();
    if (running_mean.has_value()) {
      at::Tensor rm = *running_mean, rv = *running_var;
      update_running_stats(rm, rv, save_mean, var, g.count(), momentum);
    }
  } else {
    save_mean.copy_(*running_mean);
    save_invstd = (running_var->to(stat_options) + eps).rsqrt();
  }
  if (output.numel() == 0) return {output, save_mean, save_invstd};
  // y = x * scale + shift with scale = w * invstd, shift = b - mean * scale.
  const at::Tensor scale = channel_param_or(weight, input, 1.0) * save_invstd;
  const at::Tensor shift = channel_param_or(bias, input, 0.0) - save_mean * scale;
  FASTCONV_ISA_CALL(apply_forward_into(x, output, scale, shift, act, g, row_stride > 0 ? row_stride : channels));
  return {output, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& save_mean, const at::Tensor& save_invstd,
    bool training, std::optional<c10::string_view> activation) {
  check_batch_norm_act_backward_args(grad_output, input, weight, bias, save_mean, save_invstd);
  const Activation act = parse_activation(activation);
  at::Tensor grad_input = empty_like_layout(input);
  const auto stat_options = input.options().dtype(accumulate_type_of(input));
  const int64_t channels = input.size(1);
  at::Tensor sum_dy = at::zeros({channels}, stat_options);
  at::Tensor sum_dy_xmu = at::zeros({channels}, stat_options);
  if (input.numel() > 0) {
    const at::Tensor x = dense_like(input, grad_input);
    const at::Tensor dy = dense_like(grad_output, grad_input);
    const BatchNormGeometry g = batch_norm_geometry(x);
    const at::Tensor w = channel_param_or(weight, input, 1.0);
    const at::Tensor b = channel_param_or(bias, input, 0.0);
    const at::Tensor mean = save_mean.contiguous();
    const at::Tensor invstd = save_invstd.contiguous();
    FASTCONV_ISA_CALL(backward_into(dy, x, grad_input, mean, invstd, w, b, sum_dy, sum_dy_xmu, training, act, g));
  } else {
    grad_input.zero_();
  }
  const auto param_dtype = weight.has_value() ? weight->scalar_type() : accumulate_type_of(input);
  at::Tensor grad_weight = (sum_dy_xmu * save_invstd).to(param_dtype);
  at::Tensor grad_bias = sum_dy.to(bias.has_value() ? bias->scalar_type() : param_dtype);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("batch_norm_act", &batch_norm_act_cpu);
  m.impl("_batch_norm_act_backward", &batch_norm_act_backward_cpu);
}

}  // namespace fastconv
