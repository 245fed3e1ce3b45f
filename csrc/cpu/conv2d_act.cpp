// conv2d_act on the CPU: ATen's convolution (oneDNN, which also adds the bias inside its own output loop),
// then the activation in one vectorised in-place pass over the output (ATen's kernel, see activate_in_place). Layout is kept: the weight is handed to ATen in the input's memory format, so an NCHW input gives
// an NCHW output and channels_last stays channels_last.
// Backward: grad_preact = grad_output * activation'(value) in one pass, then ATen's convolution_backward
// (see csrc/conv2d_act.h).
#include "conv2d_act.h"
#include "shuffle_cat.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardswish_backward.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/hardtanh_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <type_traits>

namespace fastconv {
namespace {

// Elements per task of the elementwise passes: big enough to amortise a task, small enough to split.
constexpr int64_t kElementwiseGrain = 1 << 15;

// Calls fn(std::integral_constant<Activation, act>{}): the passes below are compiled once per activation, so
// the per-element switch of apply_activation/activation_derivative folds away and the loops vectorise.
template <typename Fn>
void dispatch_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::kRelu: return fn(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kRelu6: return fn(std::integral_constant<Activation, Activation::kRelu6>{});
    case Activation::kHardswish: return fn(std::integral_constant<Activation, Activation::kHardswish>{});
    case Activation::kSilu: return fn(std::integral_constant<Activation, Activation::kSilu>{});
    default: return fn(std::integral_constant<Activation, Activation::kNone>{});
  }
}

// activation(output) in place, in one pass: ATen's own activation kernels (at::vec, compiled per ISA and
// picked at run time). This extension is built for baseline x86-64, where at::vec is the generic emulation:
// a pass written with it measured several times slower than ATen's AVX2 kernels on MobileNetV2's relu6 layers.
void activate_in_place(at::Tensor& output, Activation act) {
  switch (act) {
    case Activation::kRelu: output.relu_(); break;
    case Activation::kRelu6: at::hardtanh_(output, 0.0, 6.0); break;
    case Activation::kHardswish: at::hardswish_(output); break;
    case Activation::kSilu: at::silu_(output); break;
    default: break;
  }
}

// A pointwise convolution (1x1, stride 1, no padding, no groups) on a channels_last float32/float64 input is one
// GEMM over the pixels: out[p, :] = x[p, :] W^T + b, with x read in place as a (pixels, C_in) matrix. That also
// holds for a channel slice of a wider channels_last tensor (ShuffleNetV2's split: the rows are just further
// apart), which ATen's convolution would first copy dense. ATen's own paths for it were slower at batch 1 on
// every 1x1 layer of ShuffleNetV2 and MobileNetV2 measured (2 threads, AVX-512; benches/RESULTS.md): its native
// path (small inputs) copies the bias into the output, then runs the same GEMM on a dense copy of a slice, and its
// oneDNN path pays oneDNN's per-call setup and the weight reorder. Larger ones (batch 32: 0.79-0.93x of ATen's
// oneDNN convolution + ReLU from 14M multiply-adds up) stay with ATen: up to kGemmMaxMacs multiply-adds, the
// bound fastconv/ops/conv2d_act.py's _GEMM_MAX_MACS mirrors (above it, inference prepacks for oneDNN instead).
constexpr int64_t kGemmMaxMacs = int64_t(1) << 22;

bool runs_as_gemm(const at::Tensor& input, const at::Tensor& weight, const ConvGeometry& g) {
  if (!g.pointwise() || g.groups != 1 || g.stride_h != 1 || g.stride_w != 1 || g.pad_top != 0 || g.pad_bottom != 0 ||
      g.pad_left != 0 || g.pad_right != 0 || input.numel() == 0 || input.numel() * g.out_channels > kGemmMaxMacs) {
    return false;
  }
  if (input.scalar_type() != at::kFloat && input.scalar_type() != at::kDouble) return false;  // MKL's s/dgemm
  // Pixel p of the input at p * row, channel c at c: channels_last with whole rows of any stride >= C_in.
  const int64_t row = input.stride(3);
  return input.stride(1) == 1 && row >= g.in_channels && (g.in_h == 1 || input.stride(2) == g.in_w * row) &&
         (g.batch == 1 || input.stride(0) == g.in_h * g.in_w * row) && weight.is_contiguous();
}

at::Tensor conv2d_as_gemm(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const ConvGeometry& g) {
  const int64_t pixels = g.batch * g.in_h * g.in_w;
  const at::Tensor rows = input.as_strided({pixels, g.in_channels}, {input.stride(3), 1});
  const at::Tensor weight_t = weight.view({g.out_channels, g.in_channels}).t();
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor output_rows = output.as_strided({pixels, g.out_channels}, {g.out_channels, 1});
  if (bias.has_value() && bias->defined()) {
    at::addmm_out(output_rows, *bias, rows, weight_t);
  } else {
    at::mm_out(output_rows, rows, weight_t);
  }
  return output;
}

// The convolution with its bias, before the activation, in the input's memory format.
at::Tensor convolution_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const ConvGeometry& g) {
  const at::MemoryFormat format = conv2d_act_memory_format(input);
  if (format == at::MemoryFormat::ChannelsLast && runs_as_gemm(input, weight, g)) {
    return conv2d_as_gemm(input, weight, bias, g);
  }
  // ATen takes a convolution's layout from the input or the weight; hand it the weight in the input's
  // layout (a no-op normally; a small copy of the weight otherwise) so the output keeps the input's.
  return with_memory_format(aten_convolution(input, weight.contiguous(format), bias, g), format);
}

at::Tensor conv2d_act_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          std::optional<std::string_view> activation) {
  const Activation act = parse_activation(activation, "conv2d_act");
  const ConvGeometry g = check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups);
  at::Tensor output = convolution_cpu(input, weight, bias, g);
  if (output.numel() > 0) activate_in_place(output, act);
  return output;
}

// --- shuffle_cat_conv2d_act: the convolution, then one pass that writes the interleaved output ---------------
// The pass reads `a` and the convolution's result and writes out[:, 2j] = a[:, j], out[:, 2j + 1] = act(b[:, j])
// (csrc/shuffle_cat.h's blocks and rows): the activation pass over b and shuffle_cat's separate read and write of
// b are gone, and b stays in cache between the GEMM and this pass at ShuffleNet's batch-1 sizes. The GEMM itself
// cannot write the odd channels in place: in channels_last they are 2 elements apart, which no BLAS takes.
template <typename scalar_t, Activation kAct>
inline scalar_t activated(scalar_t value) {
  using acc_t = at::opmath_type<scalar_t>;
  return static_cast<scalar_t>(apply_activation(kAct, static_cast<acc_t>(value)));
}

// One block of one-element rows (channels_last: one pixel). __restrict__: the three rows do not overlap.
template <typename scalar_t, Activation kAct>
inline void zip_activated(scalar_t* __restrict__ out, const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                          int64_t channels) {
  for (int64_t j = 0; j < channels; ++j) {
    out[2 * j] = a[j];
    out[2 * j + 1] = activated<scalar_t, kAct>(b[j]);
  }
}

template <typename scalar_t, Activation kAct>
inline void activate_row(scalar_t* __restrict__ out, const scalar_t* __restrict__ b, int64_t inner) {
  for (int64_t k = 0; k < inner; ++k) out[k] = activated<scalar_t, kAct>(b[k]);
}

// `a` at block stride `a_block` (elements); `b` dense in the output's format; `inner` = 1 in channels_last.
template <typename scalar_t, Activation kAct>
void interleave_activated(scalar_t* out, const scalar_t* a, int64_t a_block, const scalar_t* b, int64_t outer,
                          int64_t channels, int64_t inner) {
  if (inner == 1) {
    const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(channels, 1));
    at::parallel_for(0, outer, grain, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        zip_activated<scalar_t, kAct>(out + o * 2 * channels, a + o * a_block, b + o * channels, channels);
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / inner);
  at::parallel_for(0, outer * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = o * channels + j
      const int64_t o = row / channels;
      std::memcpy(out + 2 * row * inner, a + o * a_block + (row - o * channels) * inner, inner * sizeof(scalar_t));
      activate_row<scalar_t, kAct>(out + (2 * row + 1) * inner, b + row * inner, inner);
    }
  });
}

at::Tensor shuffle_cat_conv2d_act_cpu(const at::Tensor& a, const at::Tensor& input, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                      std::optional<std::string_view> activation) {
  const Activation act = parse_activation(activation, "shuffle_cat_conv2d_act");
  const ConvGeometry g = check_shuffle_cat_conv2d_act_args(a, input, weight, bias, stride, padding, dilation, groups);
  const at::MemoryFormat format = shuffle_cat_memory_format(a);
  at::Tensor output = at::empty(interleaved_sizes(a), a.options().memory_format(format));
  if (output.numel() == 0) return output;
  const at::Tensor b = convolution_cpu(input, weight, bias, g).contiguous(format);
  const BlockedHalf first = blocked_half(a, format);
  const int64_t inner = format == at::MemoryFormat::ChannelsLast ? 1 : g.out_h * g.out_w;
  const int64_t outer = format == at::MemoryFormat::ChannelsLast ? g.batch * g.out_h * g.out_w : g.batch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "shuffle_cat_conv2d_act_cpu", [&] {
    dispatch_activation(act, [&](auto act_tag) {
      interleave_activated<scalar_t, decltype(act_tag)::value>(
          output.mutable_data_ptr<scalar_t>(), first.tensor.const_data_ptr<scalar_t>(), first.block_stride,
          b.const_data_ptr<scalar_t>(), outer, g.out_channels, inner);
    });
  });
  return output;
}

// grad_output * activation'(value) in `compute` dtype (what convolution_backward then runs in), dense in
// `format`; float math. `value` is the forward output (relu/relu6) or the recomputed pre-activation.
at::Tensor preactivation_grad(const at::Tensor& grad_output, const at::Tensor& value, Activation act,
                              at::MemoryFormat format, at::ScalarType compute) {
  const at::Tensor grad = grad_output.contiguous(format);
  if (act == Activation::kNone) return grad.to(compute);
  // Both dense in `format`: the same flat index is the same element (size-1 strides address nothing).
  const at::Tensor value_dense = value.contiguous(format);
  if (value_dense.scalar_type() == grad.scalar_type() && grad.scalar_type() == compute) {
    // One dtype throughout (float32/float64 training): ATen's backward of the same activation, the pass eager
    // autograd runs, vectorised for this CPU (the loop below is compiled for baseline x86-64: 4.2 ms against
    // threshold_backward's 0.7 on VGG's 2x128x112x112). The derivatives are activation_derivative's.
    at::Tensor result;
    switch (act) {
      case Activation::kRelu: result = at::threshold_backward(grad, value_dense, 0); break;
      case Activation::kRelu6: result = at::hardtanh_backward(grad, value_dense, 0, 6); break;
      case Activation::kHardswish: result = at::hardswish_backward(grad, value_dense); break;
      case Activation::kSilu: result = at::silu_backward(grad, value_dense); break;
      default: TORCH_INTERNAL_ASSERT(false, "conv2d_act backward: unknown activation");
    }
    return result.contiguous(format);
  }
  at::Tensor result = at::empty(grad.sizes(), grad.options().dtype(compute).memory_format(format));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "conv2d_act_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    dispatch_activation(act, [&](auto act_tag) {
      constexpr Activation kAct = decltype(act_tag)::value;
      const auto run = [&](auto* dst, const auto* v) {
        using out_t = std::remove_pointer_t<decltype(dst)>;
        at::parallel_for(0, grad.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
          for (int64_t k = begin; k < end; ++k) {
            dst[k] = static_cast<out_t>(static_cast<acc_t>(g[k]) * activation_derivative(kAct, static_cast<acc_t>(v[k])));
          }
        });
      };
      // value: the forward output (grad's dtype) or the pre-activation recomputed in `compute`.
      const auto with_value = [&](auto* dst) {
        if (value_dense.scalar_type() == grad.scalar_type()) {
          run(dst, value_dense.const_data_ptr<scalar_t>());
        } else {
          run(dst, value_dense.const_data_ptr<acc_t>());
        }
      };
      if (compute == grad.scalar_type()) {
        with_value(result.mutable_data_ptr<scalar_t>());
      } else {
        with_value(result.mutable_data_ptr<acc_t>());
      }
    });
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_act_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& output, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::optional<std::string_view> activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation, "_conv2d_act_backward");
  const ConvGeometry g = check_conv2d_act_backward_args(grad_output, input, weight, bias, output, input_size, stride,
                                                        padding, dilation, groups, act, output_mask);
  const at::MemoryFormat format = conv2d_act_backward_memory_format(grad_output, input);
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {};
  if (grad_output.numel() == 0) {  // batch 0: the parameter gradients are empty sums
    return {output_mask[0] ? at::empty(input_size, weight.options().memory_format(format)) : at::Tensor(),
            output_mask[1] ? at::zeros(weight.sizes(), weight.options()) : at::Tensor(),
            output_mask[2] ? at::zeros({g.out_channels}, weight.options()) : at::Tensor()};
  }
  // float16/bfloat16: ATen's CPU convolution backward rounds partial sums to the reduced type (1.6% error on a
  // 162-term weight gradient in tests/ops/test_conv2d_act.py), so it runs in float here and rounds once. The
  // float copies of input and weight are the price; reduced-precision training on the CPU is rare.
  const at::ScalarType dtype = weight.scalar_type();
  const at::ScalarType compute = at::toOpMathType(dtype);
  const std::optional<at::Tensor> input_compute =
      input.has_value() && input->defined() ? std::optional<at::Tensor>(input->to(compute)) : std::nullopt;
  const at::Tensor weight_compute = weight.to(compute);
  // hardswish/silu: recompute the pre-activation (see csrc/conv2d_act.h), in float: hardswish' jumps by 0.5 at
  // +-3, and a bfloat16-rounded pre-activation (spacing 1/64 there) lands on the wrong side of the jump for
  // true values within 1/128 of it. relu/relu6 read the forward output (their derivative only needs its sign
  // and whether it reached 6, which the rounded output keeps).
  const std::optional<at::Tensor> bias_compute =
      bias.has_value() && bias->defined() ? std::optional<at::Tensor>(bias->to(compute)) : std::nullopt;
  const at::Tensor value = derivative_needs_preactivation(act)
                               ? aten_convolution(*input_compute, weight_compute, bias_compute, g)
                               : (act == Activation::kNone ? at::Tensor() : *output);
  const at::Tensor grad_preact = preactivation_grad(grad_output, value, act, format, compute);
  auto [grad_input, grad_weight, grad_bias] = conv2d_act_convolution_backward(
      grad_preact, input_compute, weight_compute, input_size, g, format, output_mask);
  if (compute != dtype) {
    if (grad_input.defined()) grad_input = grad_input.to(dtype);
    if (grad_weight.defined()) grad_weight = grad_weight.to(dtype);
    if (grad_bias.defined()) grad_bias = grad_bias.to(dtype);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d_act", &conv2d_act_cpu);
  m.impl("_conv2d_act_backward", &conv2d_act_backward_cpu);
  m.impl("shuffle_cat_conv2d_act", &shuffle_cat_conv2d_act_cpu);
}

}  // namespace fastconv
