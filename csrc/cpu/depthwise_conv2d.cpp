// depthwise_conv2d on the CPU, forward and backward, NCHW and channels_last, float accumulation
// (double for float64).
//
// NCHW: one task per (n, channel) plane; each output row accumulates tap by tap into a row buffer, the inner
//   loop running along contiguous output pixels (vectorised by the compiler for stride 1).
// channels_last: one task per (n, row); each output pixel accumulates tap by tap over all channels with
//   at::vec::Vectorized (depth multiplier 1; a plain loop otherwise).
// Backward: grad_preact = grad_output * activation'(...) once, then grad_input is the transposed depthwise
//   conv in gather form (each task owns its input rows: no atomics) and grad_weight/grad_bias a per-channel
//   reduction in a fixed order (each task owns its channels): deterministic for any thread count.
#include "depthwise_conv2d.h"

#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace fastconv {
namespace {

// Work per task (in multiply-adds) below which at::parallel_for keeps tasks together.
constexpr int64_t kGrainWork = 1 << 15;

int64_t grain_for(int64_t work_per_task) { return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(work_per_task, 1)); }

// Loads Vectorized<acc_t>::size() elements of `src` as acc_t.
template <typename acc_t, typename scalar_t>
inline at::vec::Vectorized<acc_t> load_as(const scalar_t* src) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return at::vec::Vectorized<acc_t>::loadu(src);
  } else {
    at::vec::Vectorized<float> out;
    at::vec::load_to_float<scalar_t>(src, out);
    return out;
  }
}

// acc[c] += a[c] * b[c] for c < count, vectorised over c.
template <typename acc_t, typename scalar_t>
inline void multiply_accumulate(acc_t* __restrict__ acc, const acc_t* __restrict__ a, const scalar_t* __restrict__ b,
                                int64_t count) {
  using Vec = at::vec::Vectorized<acc_t>;
  int64_t c = 0;
  for (; c + Vec::size() <= count; c += Vec::size()) {
    at::vec::fmadd(Vec::loadu(a + c), load_as<acc_t>(b + c), Vec::loadu(acc + c)).store(acc + c);
  }
  for (; c < count; ++c) acc[c] += a[c] * static_cast<acc_t>(b[c]);
}

// The weight as acc_t, either [out_channels][taps] (NCHW) or transposed to [taps][out_channels]
// (channels_last, so one tap's weights are contiguous over channels).
template <typename scalar_t, typename acc_t>
std::vector<acc_t> weight_as_acc(const at::Tensor& weight, const DepthwiseGeometry& g, bool taps_major) {
  const at::Tensor w = weight.contiguous();  // (C*m, 1, kh, kw): small
  const scalar_t* src = w.const_data_ptr<scalar_t>();
  const int64_t taps = g.taps();
  std::vector<acc_t> out(g.out_channels * taps);
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (int64_t t = 0; t < taps; ++t) {
      out[taps_major ? t * g.out_channels + o : o * taps + t] = static_cast<acc_t>(src[o * taps + t]);
    }
  }
  return out;
}

template <typename scalar_t, typename acc_t>
std::vector<acc_t> bias_as_acc(const std::optional<at::Tensor>& bias, int64_t out_channels) {
  std::vector<acc_t> out(out_channels, acc_t(0));
  if (bias.has_value() && bias->defined()) {
    const at::Tensor b = bias->contiguous();
    const scalar_t* src = b.const_data_ptr<scalar_t>();
    for (int64_t o = 0; o < out_channels; ++o) out[o] = static_cast<acc_t>(src[o]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- forward
// acc[ow] += sum_j w_row[j] * in_row[ow * stride_w - (pad_left - j * dilation_w)] for one kernel row.
// kKernelW > 0: the taps of the row are fused in one pass over the output pixels where all of them are in
// bounds (the accumulator is loaded and stored once, the compiler vectorises over ow), with tap-by-tap edges.
// kKernelW == 0: tap by tap (any kernel width).
template <int kKernelW, typename scalar_t, typename acc_t>
inline void accumulate_kernel_row(acc_t* __restrict__ acc, const scalar_t* __restrict__ in_row,
                                  const acc_t* __restrict__ w_row, const DepthwiseGeometry& g) {
  const int64_t kernel_w = kKernelW > 0 ? kKernelW : g.kernel_w;
  const int64_t sw = g.stride_w;
  const auto tap_by_tap = [&](int64_t j, int64_t lo, int64_t hi) {
    const int64_t offset = g.pad_left - j * g.dilation_w;  // iw = ow * stride - offset
    const acc_t wv = w_row[j];
    if (sw == 1) {
      const scalar_t* __restrict__ src = in_row - offset;
      for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += wv * static_cast<acc_t>(src[ow]);
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += wv * static_cast<acc_t>(in_row[ow * sw - offset]);
    }
  };
  if constexpr (kKernelW == 0) {
    for (int64_t j = 0; j < kernel_w; ++j) {
      const TapRange r = tap_range(g.pad_left - j * g.dilation_w, sw, g.in_w, g.out_w);
      tap_by_tap(j, r.lo, r.hi);
    }
  } else {
    int64_t lo = 0, hi = g.out_w;
    for (int64_t j = 0; j < kKernelW; ++j) {
      const TapRange r = tap_range(g.pad_left - j * g.dilation_w, sw, g.in_w, g.out_w);
      lo = std::max(lo, r.lo);
      hi = std::min(hi, r.hi);
    }
    if (lo >= hi) return accumulate_kernel_row<0>(acc, in_row, w_row, g);
    for (int64_t j = 0; j < kKernelW; ++j) {  // edges: [r.lo, lo) and [hi, r.hi), interior excluded
      const TapRange r = tap_range(g.pad_left - j * g.dilation_w, sw, g.in_w, g.out_w);
      tap_by_tap(j, r.lo, lo);
      tap_by_tap(j, hi, r.hi);
    }
    acc_t w[kKernelW];
    for (int j = 0; j < kKernelW; ++j) w[j] = w_row[j];
    const int64_t dw = g.dilation_w;
    const scalar_t* __restrict__ base = in_row - g.pad_left;  // base[ow * sw + j * dw] for interior ow
    if (sw == 1) {
      for (int64_t ow = lo; ow < hi; ++ow) {
        acc_t s = acc[ow];
        for (int j = 0; j < kKernelW; ++j) s += w[j] * static_cast<acc_t>(base[ow + j * dw]);
        acc[ow] = s;
      }
    } else {
      for (int64_t ow = lo; ow < hi; ++ow) {
        acc_t s = acc[ow];
        for (int j = 0; j < kKernelW; ++j) s += w[j] * static_cast<acc_t>(base[ow * sw + j * dw]);
        acc[ow] = s;
      }
    }
  }
}

template <int kKernelW, typename scalar_t, typename acc_t, typename out_t>
void forward_nchw(const scalar_t* in, out_t* out, const acc_t* w, const acc_t* bias, const DepthwiseGeometry& g,
                  Activation act) {
  const int64_t taps = g.taps();
  at::parallel_for(0, g.batch * g.out_channels, grain_for(g.out_h * g.out_w * taps), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(g.out_w);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.out_channels;
      const int64_t o = plane - n * g.out_channels;
      const scalar_t* in_plane = in + (n * g.channels + o / g.multiplier) * g.in_h * g.in_w;
      out_t* out_plane = out + plane * g.out_h * g.out_w;
      const acc_t* w_o = w + o * taps;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        std::fill(row.begin(), row.end(), bias[o]);
        acc_t* __restrict__ acc = row.data();
        for (int64_t i = 0; i < g.kernel_h; ++i) {
          const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dilation_h;
          if (ih < 0 || ih >= g.in_h) continue;
          accumulate_kernel_row<kKernelW>(acc, in_plane + ih * g.in_w, w_o + i * g.kernel_w, g);
        }
        out_t* out_row = out_plane + oh * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow) out_row[ow] = static_cast<out_t>(apply_activation(act, acc[ow]));
      }
    }
  });
}

template <typename scalar_t, typename acc_t, typename out_t>
void forward_nchw(const scalar_t* in, out_t* out, const acc_t* w, const acc_t* bias, const DepthwiseGeometry& g,
                  Activation act) {
  switch (g.kernel_w) {  // MobileNet/ShuffleNet 3x3, EfficientNet 5x5, 7x7 ConvNeXt-style; else tap by tap
    case 3: return forward_nchw<3>(in, out, w, bias, g, act);
    case 5: return forward_nchw<5>(in, out, w, bias, g, act);
    case 7: return forward_nchw<7>(in, out, w, bias, g, act);
    default: return forward_nchw<0>(in, out, w, bias, g, act);
  }
}

template <typename scalar_t, typename acc_t, typename out_t>
void forward_channels_last(const scalar_t* in, out_t* out, const acc_t* w_taps_major, const acc_t* bias,
                           const DepthwiseGeometry& g, Activation act) {
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t oc = g.out_channels;
  const int64_t c_in = g.channels;
  const int64_t m = g.multiplier;
  at::parallel_for(0, g.batch * g.out_h, grain_for(g.out_w * oc * g.taps()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pixel_acc(oc);
    acc_t* acc = pixel_acc.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_h;
      const int64_t oh = task - n * g.out_h;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        // Each channel vector accumulates every tap in a register: one store per output pixel.
        int64_t c = 0;
        const auto accumulate_taps = [&](auto&& body) {
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            const scalar_t* in_row = in + (n * g.in_h + ih) * g.in_w * c_in;
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              const int64_t iw = ow * g.stride_w - g.pad_left + j * g.dilation_w;
              if (iw < 0 || iw >= g.in_w) continue;
              body(w_taps_major + (i * g.kernel_w + j) * oc, in_row + iw * c_in);
            }
          }
        };
        if (m == 1) {
          for (; c + Vec::size() <= oc; c += Vec::size()) {
            Vec s = Vec::loadu(bias + c);
            accumulate_taps([&](const acc_t* w_tap, const scalar_t* pixel) {
              s = at::vec::fmadd(Vec::loadu(w_tap + c), load_as<acc_t>(pixel + c), s);
            });
            s.store(acc + c);
          }
        }
        if (c < oc) {  // channel tail, or every channel when m > 1
          const int64_t first = c;
          std::copy(bias + first, bias + oc, acc + first);
          accumulate_taps([&](const acc_t* w_tap, const scalar_t* pixel) {
            for (int64_t o = first; o < oc; ++o) acc[o] += w_tap[o] * static_cast<acc_t>(pixel[o / m]);
          });
        }
        out_t* out_pixel = out + (task * g.out_w + ow) * oc;
        for (int64_t o = 0; o < oc; ++o) out_pixel[o] = static_cast<out_t>(apply_activation(act, acc[o]));
      }
    }
  });
}

template <typename scalar_t, typename out_t>
void forward_kernel(const at::Tensor& in, at::Tensor& out, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const DepthwiseGeometry& g, Activation act,
                    bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> w = weight_as_acc<scalar_t, acc_t>(weight, g, channels_last);
  const std::vector<acc_t> b = bias_as_acc<scalar_t, acc_t>(bias, g.out_channels);
  if (channels_last) {
    forward_channels_last(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<out_t>(), w.data(), b.data(), g, act);
  } else {
    forward_nchw(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<out_t>(), w.data(), b.data(), g, act);
  }
}

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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cpu", [&] {
    const bool channels_last = format == at::MemoryFormat::ChannelsLast;
    if (accumulate_output) {
      forward_kernel<scalar_t, at::opmath_type<scalar_t>>(in, output, weight, bias, g, act, channels_last);
    } else {
      forward_kernel<scalar_t, scalar_t>(in, output, weight, bias, g, act, channels_last);
    }
  });
  return output;
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                std::optional<std::string_view> activation) {
  return forward_impl(input, weight, bias, stride, padding, dilation,
                      parse_activation(activation, "depthwise_conv2d"));
}

// --------------------------------------------------------------------------------------------- backward
// grad_preact = grad_output * activation'(value), as acc_t, dense in `format`. `value` is the forward output
// (relu/relu6) or the recomputed pre-activation (hardswish/silu).
template <typename scalar_t, typename acc_t>
at::Tensor preactivation_grad(const at::Tensor& grad_output, const at::Tensor& value, Activation act,
                              at::MemoryFormat format) {
  const at::Tensor grad = grad_output.contiguous(format);
  if (act == Activation::kNone && std::is_same_v<scalar_t, acc_t>) return grad;
  at::Tensor out = at::empty(grad.sizes(), grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value)
                                              .memory_format(format));
  const at::Tensor value_dense = act == Activation::kNone ? at::Tensor() : value.contiguous(format);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  acc_t* dst = out.mutable_data_ptr<acc_t>();
  const auto apply = [&](auto* v) {  // v: scalar_t (forward output) or acc_t (recomputed pre-activation)
    at::parallel_for(0, grad.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const acc_t factor = v ? activation_derivative(act, static_cast<acc_t>(v[k])) : acc_t(1);
        dst[k] = static_cast<acc_t>(g[k]) * factor;
      }
    });
  };
  if (!value_dense.defined()) {
    apply(static_cast<const scalar_t*>(nullptr));
  } else if (value_dense.scalar_type() == grad.scalar_type()) {
    apply(value_dense.const_data_ptr<scalar_t>());
  } else {
    apply(value_dense.const_data_ptr<acc_t>());
  }
  return out;
}

template <typename scalar_t, typename acc_t>
void grad_input_nchw(const acc_t* gp, scalar_t* grad_in, const acc_t* w, const DepthwiseGeometry& g) {
  const int64_t taps = g.taps();
  at::parallel_for(0, g.batch * g.channels, grain_for(g.in_h * g.in_w * taps * g.multiplier),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(g.in_w);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.channels;
      const int64_t c = plane - n * g.channels;
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        std::fill(row.begin(), row.end(), acc_t(0));
        acc_t* __restrict__ acc = row.data();
        for (int64_t k = 0; k < g.multiplier; ++k) {
          const int64_t o = c * g.multiplier + k;
          const acc_t* g_plane = gp + (n * g.out_channels + o) * g.out_h * g.out_w;
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t numerator = ih + g.pad_top - i * g.dilation_h;  // = oh * stride_h
            if (numerator < 0 || numerator % g.stride_h != 0) continue;
            const int64_t oh = numerator / g.stride_h;
            if (oh >= g.out_h) continue;
            const acc_t* __restrict__ g_row = g_plane + oh * g.out_w;
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              const int64_t offset = g.pad_left - j * g.dilation_w;  // iw = ow * stride_w - offset
              const TapRange r = tap_range(offset, g.stride_w, g.in_w, g.out_w);
              const acc_t wv = w[o * taps + i * g.kernel_w + j];
              if (g.stride_w == 1) {
                acc_t* __restrict__ dst = acc - offset;
                for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow] += wv * g_row[ow];
              } else {
                for (int64_t ow = r.lo; ow < r.hi; ++ow) acc[ow * g.stride_w - offset] += wv * g_row[ow];
              }
            }
          }
        }
        scalar_t* out_row = grad_in + (plane * g.in_h + ih) * g.in_w;
        for (int64_t iw = 0; iw < g.in_w; ++iw) out_row[iw] = static_cast<scalar_t>(acc[iw]);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void grad_input_channels_last(const acc_t* gp, scalar_t* grad_in, const acc_t* w_taps_major,
                              const DepthwiseGeometry& g) {
  const int64_t oc = g.out_channels;
  const int64_t c_in = g.channels;
  const int64_t m = g.multiplier;
  at::parallel_for(0, g.batch * g.in_h, grain_for(g.in_w * oc * g.taps()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(g.in_w * c_in);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.in_h;
      const int64_t ih = task - n * g.in_h;
      std::fill(row.begin(), row.end(), acc_t(0));
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const int64_t numerator = ih + g.pad_top - i * g.dilation_h;
        if (numerator < 0 || numerator % g.stride_h != 0) continue;
        const int64_t oh = numerator / g.stride_h;
        if (oh >= g.out_h) continue;
        const acc_t* g_row = gp + (n * g.out_h + oh) * g.out_w * oc;
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const int64_t offset = g.pad_left - j * g.dilation_w;
          const TapRange r = tap_range(offset, g.stride_w, g.in_w, g.out_w);
          const acc_t* w_tap = w_taps_major + (i * g.kernel_w + j) * oc;
          for (int64_t ow = r.lo; ow < r.hi; ++ow) {
            acc_t* acc = row.data() + (ow * g.stride_w - offset) * c_in;
            const acc_t* grad_pixel = g_row + ow * oc;
            if (m == 1) {
              multiply_accumulate(acc, w_tap, grad_pixel, oc);
            } else {
              for (int64_t o = 0; o < oc; ++o) acc[o / m] += w_tap[o] * grad_pixel[o];
            }
          }
        }
      }
      scalar_t* out_row = grad_in + task * g.in_w * c_in;
      for (int64_t k = 0; k < g.in_w * c_in; ++k) out_row[k] = static_cast<scalar_t>(row[k]);
    }
  });
}

// grad_weight[o, i, j] = sum over (n, oh, ow) of grad_preact * input; grad_bias[o] = sum of grad_preact.
// Each task owns whole output channels and sums in a fixed order (per-row partial sums, then rows in order).
template <typename scalar_t, typename acc_t>
void grad_weight_nchw(const acc_t* gp, const scalar_t* in, scalar_t* grad_w, scalar_t* grad_b,
                      const DepthwiseGeometry& g) {
  const int64_t taps = g.taps();
  at::parallel_for(0, g.out_channels, grain_for(g.batch * g.out_h * g.out_w * taps), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(taps);
    for (int64_t o = begin; o < end; ++o) {
      std::fill(sums.begin(), sums.end(), acc_t(0));
      acc_t bias_sum = 0;
      for (int64_t n = 0; n < g.batch; ++n) {
        const acc_t* g_plane = gp + (n * g.out_channels + o) * g.out_h * g.out_w;
        const scalar_t* in_plane = in + (n * g.channels + o / g.multiplier) * g.in_h * g.in_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const acc_t* __restrict__ g_row = g_plane + oh * g.out_w;
          if (grad_b) {
            acc_t s = 0;
            for (int64_t ow = 0; ow < g.out_w; ++ow) s += g_row[ow];
            bias_sum += s;
          }
          if (!grad_w) continue;
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            const scalar_t* __restrict__ in_row = in_plane + ih * g.in_w;
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              const int64_t offset = g.pad_left - j * g.dilation_w;
              const TapRange r = tap_range(offset, g.stride_w, g.in_w, g.out_w);
              acc_t s = 0;
              if (g.stride_w == 1) {
                const scalar_t* __restrict__ src = in_row - offset;
                for (int64_t ow = r.lo; ow < r.hi; ++ow) s += g_row[ow] * static_cast<acc_t>(src[ow]);
              } else {
                for (int64_t ow = r.lo; ow < r.hi; ++ow) {
                  s += g_row[ow] * static_cast<acc_t>(in_row[ow * g.stride_w - offset]);
                }
              }
              sums[i * g.kernel_w + j] += s;
            }
          }
        }
      }
      if (grad_w) {
        for (int64_t t = 0; t < taps; ++t) grad_w[o * taps + t] = static_cast<scalar_t>(sums[t]);
      }
      if (grad_b) grad_b[o] = static_cast<scalar_t>(bias_sum);
    }
  });
}

template <typename scalar_t, typename acc_t>
void grad_weight_channels_last(const acc_t* gp, const scalar_t* in, scalar_t* grad_w, scalar_t* grad_b,
                               const DepthwiseGeometry& g) {
  const int64_t taps = g.taps();
  const int64_t oc = g.out_channels;
  const int64_t c_in = g.channels;
  const int64_t m = g.multiplier;
  // A block of channels per task, a multiple of the multiplier so one task owns whole input channels.
  const int64_t block = std::min<int64_t>(oc, m * std::max<int64_t>(1, 64 / m));
  const int64_t blocks = (oc + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(taps * block), row_sums(taps * block), bias_sums(block);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * block;
      const int64_t width = std::min(block, oc - o0);
      std::fill(sums.begin(), sums.end(), acc_t(0));
      std::fill(bias_sums.begin(), bias_sums.end(), acc_t(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          std::fill(row_sums.begin(), row_sums.end(), acc_t(0));
          const acc_t* g_row = gp + (n * g.out_h + oh) * g.out_w * oc + o0;
          if (grad_b) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              for (int64_t t = 0; t < width; ++t) bias_sums[t] += g_row[ow * oc + t];
            }
          }
          if (!grad_w) continue;
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            const scalar_t* in_row = in + (n * g.in_h + ih) * g.in_w * c_in;
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              const int64_t offset = g.pad_left - j * g.dilation_w;
              const TapRange r = tap_range(offset, g.stride_w, g.in_w, g.out_w);
              acc_t* acc = row_sums.data() + (i * g.kernel_w + j) * block;
              for (int64_t ow = r.lo; ow < r.hi; ++ow) {
                const scalar_t* pixel = in_row + (ow * g.stride_w - offset) * c_in;
                const acc_t* grad_pixel = g_row + ow * oc;
                if (m == 1) {
                  multiply_accumulate(acc, grad_pixel, pixel + o0, width);
                } else {
                  for (int64_t t = 0; t < width; ++t) {
                    acc[t] += grad_pixel[t] * static_cast<acc_t>(pixel[(o0 + t) / m]);
                  }
                }
              }
            }
          }
          for (int64_t k = 0; k < taps * block; ++k) sums[k] += row_sums[k];
        }
      }
      for (int64_t t = 0; t < width; ++t) {
        if (grad_w) {
          for (int64_t tap = 0; tap < taps; ++tap) {
            grad_w[(o0 + t) * taps + tap] = static_cast<scalar_t>(sums[tap * block + t]);
          }
        }
        if (grad_b) grad_b[o0 + t] = static_cast<scalar_t>(bias_sums[t]);
      }
    }
  });
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
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "depthwise_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor grad_pre = preactivation_grad<scalar_t, acc_t>(grad_output, value, act, format);
    const acc_t* gp = grad_pre.const_data_ptr<acc_t>();
    if (grad_input.defined()) {
      const std::vector<acc_t> w = weight_as_acc<scalar_t, acc_t>(weight, g, channels_last);
      scalar_t* dst = grad_input.mutable_data_ptr<scalar_t>();
      if (channels_last) {
        grad_input_channels_last(gp, dst, w.data(), g);
      } else {
        grad_input_nchw(gp, dst, w.data(), g);
      }
    }
    if (grad_weight.defined() || grad_bias.defined()) {
      const scalar_t* src = in.defined() ? in.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* gw = grad_weight.defined() ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gb = grad_bias.defined() ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
      if (channels_last) {
        grad_weight_channels_last(gp, src, gw, gb, g);
      } else {
        grad_weight_nchw(gp, src, gw, gb, g);
      }
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("_depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
}

}  // namespace fastconv
