// batch_norm_act on CUDA. A dense input is an [outer, C, inner] array (csrc/batch_norm_act.h); channel c's
// j-th element (j < outer * inner) sits at (j / inner) * C * inner + c * inner + j % inner.
//   statistics: a grid of (channel blocks, splits). A block is kChannelLanes x kRowLanes threads: NCHW uses
//     1 x 256 (threads walk a channel's planes, coalesced along the plane), channels_last 32 x 8 (a warp
//     reads 32 consecutive channels of one row). Each thread runs Welford's update, the block merges its
//     threads with Chan's formula in a fixed tree, and one partial (count, mean, M2) per (split, channel)
//     is written; a second kernel merges the splits in order. Deterministic, never E[x^2] - E[x]^2.
//   apply: one grid-stride pass, y = x * scale[c] + shift[c], then the activation.
//   backward: the same reduction grid for sum(dy') and sum(dy' * (x - mean)), an in-order merge of the
//     splits, and one grid-stride pass for grad_input.
// All element offsets are 64-bit.
#include "batch_norm_act.h"

#include <fastconv/cuda_launch.h>

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace fastconv {
namespace {

constexpr int kThreads = 256;

struct ReductionShape {
  int channel_lanes;  // threads across channels in a block
  int row_lanes;      // threads along a channel's elements
  int64_t channel_blocks;
  int64_t splits;
  int64_t per_split;  // elements of one channel handled by one block
};

ReductionShape reduction_shape(const BatchNormGeometry& g) {
  ReductionShape s;
  s.channel_lanes = g.inner == 1 ? 32 : 1;
  s.row_lanes = kThreads / s.channel_lanes;
  s.channel_blocks = (g.channels + s.channel_lanes - 1) / s.channel_lanes;
  const int64_t per_channel = g.count();
  const int64_t wanted_blocks = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 4;
  // Enough splits to fill the device, but at least 4 elements per thread of a split.
  const int64_t max_splits = std::max<int64_t>(1, per_channel / (int64_t{s.row_lanes} * 4));
  s.splits = std::clamp<int64_t>((wanted_blocks + s.channel_blocks - 1) / s.channel_blocks, 1, max_splits);
  s.splits = std::min<int64_t>(s.splits, 65535);  // gridDim.y limit
  s.per_split = (per_channel + s.splits - 1) / s.splits;
  s.splits = (per_channel + s.per_split - 1) / s.per_split;
  return s;
}

__device__ __forceinline__ int64_t element_offset(int64_t j, int64_t c, int64_t inner, int64_t channels) {
  const int64_t o = j / inner;
  return (o * channels + c) * inner + (j - o * inner);
}

template <typename acc_t>
struct Welford {
  acc_t count, mean, m2;
  __device__ __forceinline__ void merge(const Welford& b) {
    const acc_t total = count + b.count;
    if (b.count == acc_t(0)) return;
    const acc_t delta = b.mean - mean;
    mean += delta * (b.count / total);
    m2 += b.m2 + delta * delta * (count * b.count / total);
    count = total;
  }
};

// Every split of a channel accumulates x - pivot, the pivot being the channel's first element: the variance is
// unchanged, and the running means and the merges' deltas stay of the size of the deviations. Unshifted, a
// channel with a large common offset (3000 + 0.01 * N(0, 1)) rounds each update of a float32 running mean
// to 2.4e-4, a quarter of a deviation, and the merged variance was off by 2.5e-3 of itself
// (test_statistics_are_numerically_stable, found by the CUDA emulator). x - pivot is exact whenever x is
// within a factor 2 of the pivot.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t channel_pivot(const scalar_t* x, int64_t c, int64_t inner, int64_t channels) {
  return static_cast<acc_t>(x[element_offset(0, c, inner, channels)]);
}

// Per-(split, channel) (count, mean, M2) of the split's elements, the mean less the channel's pivot.
template <typename scalar_t, typename acc_t>
__global__ void stats_partial_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ part_count,
                                     acc_t* __restrict__ part_mean, acc_t* __restrict__ part_m2, int64_t channels,
                                     int64_t inner, int64_t per_channel, int64_t per_split) {
  extern __shared__ unsigned char shared_bytes[];
  auto* shared = reinterpret_cast<Welford<acc_t>*>(shared_bytes);
  const int lane_c = threadIdx.x;  // blockDim.x = channel lanes
  const int lane_r = threadIdx.y;  // blockDim.y = row lanes
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + lane_c;
  const int64_t split = blockIdx.y;
  const int64_t start = split * per_split;
  const int64_t end = std::min(per_channel, start + per_split);
  Welford<acc_t> w{acc_t(0), acc_t(0), acc_t(0)};
  if (c < channels) {
    const acc_t pivot = channel_pivot<acc_t>(x, c, inner, channels);
    for (int64_t j = start + lane_r; j < end; j += blockDim.y) {
      const acc_t v = static_cast<acc_t>(x[element_offset(j, c, inner, channels)]) - pivot;
      w.count += acc_t(1);
      const acc_t delta = v - w.mean;
      w.mean += delta / w.count;
      w.m2 += delta * (v - w.mean);
    }
  }
  shared[lane_r * blockDim.x + lane_c] = w;
  __syncthreads();
  for (int stride = blockDim.y / 2; stride > 0; stride /= 2) {  // fixed tree: deterministic
    if (lane_r < stride) {
      Welford<acc_t> a = shared[lane_r * blockDim.x + lane_c];
      a.merge(shared[(lane_r + stride) * blockDim.x + lane_c]);
      shared[lane_r * blockDim.x + lane_c] = a;
    }
    __syncthreads();
  }
  if (lane_r == 0 && c < channels) {
    const Welford<acc_t> total = shared[lane_c];
    part_count[split * channels + c] = total.count;
    part_mean[split * channels + c] = total.mean;
    part_m2[split * channels + c] = total.m2;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void stats_merge_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ part_count,
                                   const acc_t* __restrict__ part_mean, const acc_t* __restrict__ part_m2,
                                   acc_t* __restrict__ mean, acc_t* __restrict__ var, int64_t channels,
                                   int64_t inner, int64_t splits) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  Welford<acc_t> total{part_count[c], part_mean[c], part_m2[c]};
  for (int64_t s = 1; s < splits; ++s) {
    total.merge({part_count[s * channels + c], part_mean[s * channels + c], part_m2[s * channels + c]});
  }
  mean[c] = total.mean + channel_pivot<acc_t>(x, c, inner, channels);
  var[c] = total.m2 / total.count;
}

template <typename scalar_t, typename acc_t, Activation kAct>
__global__ void apply_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                     const acc_t* __restrict__ scale, const acc_t* __restrict__ shift, int64_t total,
                                     int64_t inner, int64_t channels) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t c = (i / inner) % channels;
    const acc_t y = static_cast<acc_t>(x[i]) * scale[c] + shift[c];
    out[i] = static_cast<scalar_t>(ActivationOp<kAct, acc_t>::forward(y));
  }
}

// dy' = dy * act'(y), y = (x - mean) * invstd * w + b recomputed from x.
template <typename acc_t, Activation kAct>
__device__ __forceinline__ acc_t activation_grad(acc_t dy, acc_t xmu, acc_t invstd, acc_t w, acc_t b) {
  if constexpr (kAct == Activation::kNone) {
    return dy;
  } else {
    return dy * ActivationOp<kAct, acc_t>::derivative(xmu * invstd * w + b);
  }
}

template <typename scalar_t, typename acc_t, Activation kAct>
__global__ void backward_partial_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                        const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                                        const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                        acc_t* __restrict__ part_dy, acc_t* __restrict__ part_dy_xmu,
                                        int64_t channels, int64_t inner, int64_t per_channel, int64_t per_split) {
  extern __shared__ unsigned char shared_bytes[];
  auto* shared = reinterpret_cast<acc_t*>(shared_bytes);  // [2][row lanes][channel lanes]
  const int lane_c = threadIdx.x;
  const int lane_r = threadIdx.y;
  const int lanes = blockDim.x * blockDim.y;
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + lane_c;
  const int64_t split = blockIdx.y;
  const int64_t start = split * per_split;
  const int64_t end = std::min(per_channel, start + per_split);
  acc_t sum_dy = 0, sum_dy_xmu = 0;
  if (c < channels) {
    const acc_t m = mean[c], s = invstd[c], w = weight[c], b = bias[c];
    for (int64_t j = start + lane_r; j < end; j += blockDim.y) {
      const int64_t offset = element_offset(j, c, inner, channels);
      const acc_t xmu = static_cast<acc_t>(x[offset]) - m;
      const acc_t g = activation_grad<acc_t, kAct>(static_cast<acc_t>(dy[offset]), xmu, s, w, b);
      sum_dy += g;
      sum_dy_xmu += g * xmu;
    }
  }
  const int slot = lane_r * blockDim.x + lane_c;
  shared[slot] = sum_dy;
  shared[lanes + slot] = sum_dy_xmu;
  __syncthreads();
  for (int stride = blockDim.y / 2; stride > 0; stride /= 2) {
    if (lane_r < stride) {
      shared[slot] += shared[slot + stride * blockDim.x];
      shared[lanes + slot] += shared[lanes + slot + stride * blockDim.x];
    }
    __syncthreads();
  }
  if (lane_r == 0 && c < channels) {
    part_dy[split * channels + c] = shared[lane_c];
    part_dy_xmu[split * channels + c] = shared[lanes + lane_c];
  }
}

template <typename acc_t>
__global__ void sum_splits_kernel(const acc_t* __restrict__ part_dy, const acc_t* __restrict__ part_dy_xmu,
                                  acc_t* __restrict__ sum_dy, acc_t* __restrict__ sum_dy_xmu, int64_t channels,
                                  int64_t splits) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  acc_t a = 0, b = 0;
  for (int64_t s = 0; s < splits; ++s) {  // in order: deterministic
    a += part_dy[s * channels + c];
    b += part_dy_xmu[s * channels + c];
  }
  sum_dy[c] = a;
  sum_dy_xmu[c] = b;
}

// training: dx = k * (dy' - mean_dy - (x - mean) * proj), k = w * invstd, mean_dy = sum_dy / n,
// proj = sum_dy_xmu * invstd^2 / n; eval: mean_dy = proj = 0.
template <typename scalar_t, typename acc_t, Activation kAct>
__global__ void backward_apply_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                      scalar_t* __restrict__ grad_input, const acc_t* __restrict__ mean,
                                      const acc_t* __restrict__ invstd, const acc_t* __restrict__ weight,
                                      const acc_t* __restrict__ bias, const acc_t* __restrict__ mean_dy,
                                      const acc_t* __restrict__ proj, int64_t total, int64_t inner,
                                      int64_t channels) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t c = (i / inner) % channels;
    const acc_t xmu = static_cast<acc_t>(x[i]) - mean[c];
    const acc_t g = activation_grad<acc_t, kAct>(static_cast<acc_t>(dy[i]), xmu, invstd[c], weight[c], bias[c]);
    grad_input[i] = static_cast<scalar_t>(weight[c] * invstd[c] * (g - mean_dy[c] - xmu * proj[c]));
  }
}

unsigned int channel_grid(int64_t channels) { return static_cast<unsigned int>((channels + kThreads - 1) / kThreads); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps, std::optional<c10::string_view> activation) {
  const Activation act =
      check_batch_norm_act_args(input, weight, bias, running_mean, running_var, training, eps, activation);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor output = empty_like_layout(input);
  const auto stat_options = input.options().dtype(accumulate_type_of(input));
  const int64_t channels = input.size(1);
  at::Tensor save_mean = at::empty({channels}, stat_options);
  at::Tensor save_invstd;
  const at::Tensor x = dense_like(input, output);  // a copy only for non-dense inputs
  const BatchNormGeometry g = batch_norm_geometry(x);
  if (training) {
    if (output.numel() == 0) {  // F.batch_norm: empty output, running statistics untouched
      save_mean.zero_();
      return {output, save_mean, at::full({channels}, 1.0 / std::sqrt(eps), stat_options)};
    }
    const ReductionShape s = reduction_shape(g);
    at::Tensor partial = at::empty({3, s.splits, channels}, stat_options);
    at::Tensor var = at::empty({channels}, stat_options);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      acc_t* counts = partial.mutable_data_ptr<acc_t>();
      acc_t* means = counts + s.splits * channels;
      acc_t* m2s = means + s.splits * channels;
      const dim3 block(s.channel_lanes, s.row_lanes);
      const dim3 grid(static_cast<unsigned int>(s.channel_blocks), static_cast<unsigned int>(s.splits));
      stats_partial_kernel<scalar_t, acc_t><<<grid, block, kThreads * sizeof(Welford<acc_t>), stream>>>(
          x.const_data_ptr<scalar_t>(), counts, means, m2s, channels, g.inner, g.count(), s.per_split);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      stats_merge_kernel<scalar_t, acc_t><<<channel_grid(channels), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), counts, means, m2s, save_mean.mutable_data_ptr<acc_t>(),
          var.mutable_data_ptr<acc_t>(), channels, g.inner, s.splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
  const at::Tensor scale = channel_param_or(weight, input, 1.0) * save_invstd;
  const at::Tensor shift = channel_param_or(bias, input, 0.0) - save_mean * scale;
  const int64_t total = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(act, [&]<Activation kAct>() {
      apply_forward_kernel<scalar_t, acc_t, kAct><<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(),
          shift.const_data_ptr<acc_t>(), total, g.inner, channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {output, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& save_mean, const at::Tensor& save_invstd,
    bool training, std::optional<c10::string_view> activation) {
  check_batch_norm_act_backward_args(grad_output, input, weight, bias, save_mean, save_invstd);
  const Activation act = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor grad_input = empty_like_layout(input);
  const auto stat_options = input.options().dtype(accumulate_type_of(input));
  const int64_t channels = input.size(1);
  at::Tensor sum_dy = at::zeros({channels}, stat_options);
  at::Tensor sum_dy_xmu = at::zeros({channels}, stat_options);
  if (input.numel() > 0) {
    const at::Tensor x = dense_like(input, grad_input);
    const at::Tensor dy = dense_like(grad_output, grad_input);
    const BatchNormGeometry g = batch_norm_geometry(x);
    const ReductionShape s = reduction_shape(g);
    const at::Tensor w = channel_param_or(weight, input, 1.0);
    const at::Tensor b = channel_param_or(bias, input, 0.0);
    const at::Tensor mean = save_mean.contiguous();
    const at::Tensor invstd = save_invstd.contiguous();
    at::Tensor partial = at::empty({2, s.splits, channels}, stat_options);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_activation(act, [&]<Activation kAct>() {
        acc_t* part_dy = partial.mutable_data_ptr<acc_t>();
        acc_t* part_dy_xmu = part_dy + s.splits * channels;
        const dim3 block(s.channel_lanes, s.row_lanes);
        const dim3 grid(static_cast<unsigned int>(s.channel_blocks), static_cast<unsigned int>(s.splits));
        backward_partial_kernel<scalar_t, acc_t, kAct><<<grid, block, 2 * kThreads * sizeof(acc_t), stream>>>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
            invstd.const_data_ptr<acc_t>(), w.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(), part_dy,
            part_dy_xmu, channels, g.inner, g.count(), s.per_split);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        sum_splits_kernel<acc_t><<<channel_grid(channels), kThreads, 0, stream>>>(
            part_dy, part_dy_xmu, sum_dy.mutable_data_ptr<acc_t>(), sum_dy_xmu.mutable_data_ptr<acc_t>(), channels,
            s.splits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    at::Tensor mean_dy, proj;
    if (training) {
      mean_dy = sum_dy / static_cast<double>(g.count());
      proj = sum_dy_xmu * invstd * invstd / static_cast<double>(g.count());
    } else {
      mean_dy = at::zeros_like(sum_dy);
      proj = at::zeros_like(sum_dy);
    }
    const int64_t total = x.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_apply", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_activation(act, [&]<Activation kAct>() {
        backward_apply_kernel<scalar_t, acc_t, kAct><<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
            mean.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(), w.const_data_ptr<acc_t>(),
            b.const_data_ptr<acc_t>(), mean_dy.const_data_ptr<acc_t>(), proj.const_data_ptr<acc_t>(), total, g.inner,
            channels);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  } else {
    grad_input.zero_();
  }
  const auto weight_dtype = weight.has_value() ? weight->scalar_type() : accumulate_type_of(input);
  at::Tensor grad_weight = (sum_dy_xmu * save_invstd).to(weight_dtype);
  at::Tensor grad_bias = sum_dy.to(bias.has_value() ? bias->scalar_type() : weight_dtype);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("batch_norm_act", &batch_norm_act_cuda);
  m.impl("_batch_norm_act_backward", &batch_norm_act_backward_cuda);
}

}  // namespace fastconv
