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

// A (C,) tensor of any floating dtype and stride, read into / written from acc_t values.
template <class acc_t>
void read_channels(const at::Tensor& t, acc_t* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "batch_norm_act_read", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    const int64_t stride = t.stride(0);
    for (int64_t c = 0; c < t.size(0); ++c) out[c] = static_cast<acc_t>(p[c * stride]);
  });
}

template <class acc_t>
void write_channels(const at::Tensor& t, const acc_t* in) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "batch_norm_act_write", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    const int64_t stride = t.stride(0);
    for (int64_t c = 0; c < t.size(0); ++c) p[c * stride] = static_cast<scalar_t>(in[c]);
  });
}

// The forward's per-channel arithmetic in one scalar loop over the channels, in acc_t (the statistics' dtype):
// save_invstd = 1 / sqrt(var + eps); in training, the running-statistics update of F.batch_norm
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)   (unbiased)
// (in eval, save_mean/var are the running statistics); then the apply pass's y = x * scale + shift with
// scale = w * invstd, shift = b - mean * scale. As (C,)-sized ATen ops (13 of them) this cost ~10 us a call, half
// of the op on a small input. Scalars enter in acc_t, as ATen's tensor-scalar arithmetic takes them.
template <class acc_t>
void channel_coefficients(const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                          bool training, const acc_t* batch_var, int64_t count, double momentum, double eps,
                          acc_t* mean, acc_t* invstd, acc_t* scale, acc_t* shift, int64_t channels) {
  std::vector<acc_t> w(channels, acc_t(1)), b(channels, acc_t(0)), rm(channels), rv(channels);
  if (weight.has_value()) read_channels(*weight, w.data());
  if (bias.has_value()) read_channels(*bias, b.data());
  if (running_mean.has_value()) {
    read_channels(*running_mean, rm.data());
    read_channels(*running_var, rv.data());
  }
  const acc_t eps_acc = static_cast<acc_t>(eps);
  if (training) {
    const double unbias = count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
    const acc_t keep = static_cast<acc_t>(1.0 - momentum), take = static_cast<acc_t>(momentum);
    const acc_t take_unbiased = static_cast<acc_t>(momentum * unbias);
    for (int64_t c = 0; c < channels; ++c) {
      invstd[c] = acc_t(1) / std::sqrt(batch_var[c] + eps_acc);
      rm[c] = mean[c] * take + rm[c] * keep;
      rv[c] = batch_var[c] * take_unbiased + rv[c] * keep;
    }
    if (running_mean.has_value()) {
      write_channels(*running_mean, rm.data());
      write_channels(*running_var, rv.data());
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) {
      mean[c] = rm[c];
      invstd[c] = acc_t(1) / std::sqrt(rv[c] + eps_acc);
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = w[c] * invstd[c];
    shift[c] = b[c] - mean[c] * scale[c];
  }
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
  // save_mean and save_invstd are returned (their own storage: outputs must not alias one another); var, scale and
  // shift share one scratch allocation.
  at::Tensor save_mean = at::empty({channels}, stat_options);
  at::Tensor save_invstd = at::empty({channels}, stat_options);
  const at::Tensor scratch = at::empty({3, channels}, stat_options);
  if (training && output.numel() == 0) {  // F.batch_norm: empty output, running statistics untouched
    save_mean.zero_();
    save_invstd.fill_(1.0 / std::sqrt(eps));
    return {output, save_mean, save_invstd};
  }
  // A non-dense input is copied once so that input and output share strides (not the hot path), except, in eval,
  // a channels_last view of whole pixel rows of a wider tensor, which the apply pass reads in place.
  const int64_t row_stride = training ? 0 : wider_channels_last_rows(input, output);
  const at::Tensor x = row_stride > 0 ? input : dense_like(input, output);
  const BatchNormGeometry g = batch_norm_geometry(row_stride > 0 ? output : x);
  at::Tensor var = scratch[0], scale = scratch[1], shift = scratch[2];
  if (training) FASTCONV_ISA_CALL(compute_stats(x, save_mean, var, g));
  AT_DISPATCH_FLOATING_TYPES(scratch.scalar_type(), "batch_norm_act_coefficients", [&] {
    channel_coefficients<scalar_t>(weight, bias, running_mean, running_var, training, var.const_data_ptr<scalar_t>(),
                                   g.count(), momentum, eps, save_mean.mutable_data_ptr<scalar_t>(),
                                   save_invstd.mutable_data_ptr<scalar_t>(), scale.mutable_data_ptr<scalar_t>(),
                                   shift.mutable_data_ptr<scalar_t>(), channels);
  });
  if (output.numel() == 0) return {output, save_mean, save_invstd};
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
  // w, b, sum_dy and sum_dy_xmu in the statistics' dtype, in one scratch allocation; the (C,)-sized work in scalar
  // loops (as ATen ops it cost ~4 us a call: see channel_coefficients).
  const at::Tensor scratch = at::empty({4, channels}, stat_options);
  const at::Tensor mean = save_mean.contiguous(), invstd = save_invstd.contiguous();
  const auto param_dtype = weight.has_value() ? weight->scalar_type() : accumulate_type_of(input);
  at::Tensor grad_weight = at::empty({channels}, stat_options.dtype(param_dtype));
  at::Tensor grad_bias = at::empty({channels}, stat_options.dtype(bias.has_value() ? bias->scalar_type() : param_dtype));
  AT_DISPATCH_FLOATING_TYPES(scratch.scalar_type(), "batch_norm_act_backward_coefficients", [&] {
    using acc_t = scalar_t;
    acc_t* w = scratch[0].mutable_data_ptr<acc_t>();
    acc_t* b = scratch[1].mutable_data_ptr<acc_t>();
    acc_t* sum_dy = scratch[2].mutable_data_ptr<acc_t>();
    acc_t* sum_dy_xmu = scratch[3].mutable_data_ptr<acc_t>();
    std::fill(w, w + channels, acc_t(1));
    std::fill(b, b + channels, acc_t(0));
    if (weight.has_value()) read_channels(*weight, w);
    if (bias.has_value()) read_channels(*bias, b);
    std::fill(sum_dy, sum_dy + channels, acc_t(0));
    std::fill(sum_dy_xmu, sum_dy_xmu + channels, acc_t(0));
  });
  if (input.numel() > 0) {
    const at::Tensor x = dense_like(input, grad_input);
    const at::Tensor dy = dense_like(grad_output, grad_input);
    const BatchNormGeometry g = batch_norm_geometry(x);
    at::Tensor sum_dy = scratch[2], sum_dy_xmu = scratch[3];
    FASTCONV_ISA_CALL(backward_into(dy, x, grad_input, mean, invstd, scratch[0], scratch[1], sum_dy, sum_dy_xmu,
                                    training, act, g));
  }
  AT_DISPATCH_FLOATING_TYPES(scratch.scalar_type(), "batch_norm_act_backward_params", [&] {
    using acc_t = scalar_t;
    const acc_t* sum_dy = scratch[2].const_data_ptr<acc_t>();
    const acc_t* sum_dy_xmu = scratch[3].const_data_ptr<acc_t>();
    const acc_t* s = invstd.const_data_ptr<acc_t>();
    std::vector<acc_t> gw(channels);
    for (int64_t c = 0; c < channels; ++c) gw[c] = sum_dy_xmu[c] * s[c];
    write_channels(grad_weight, gw.data());
    write_channels(grad_bias, sum_dy);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("batch_norm_act", &batch_norm_act_cpu);
  m.impl("_batch_norm_act_backward", &batch_norm_act_backward_cpu);
}

}  // namespace fastconv
