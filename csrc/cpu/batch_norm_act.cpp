// batch_norm_act on the CPU. A dense input is an [outer, C, inner] array (csrc/batch_norm_act.h):
// NCHW has inner = H*W planes, channels_last has inner = 1 (rows of C channels).
//   training forward: one pass over memory for per-channel mean / biased variance (in-cache blocks of
//     kBlock elements, each reduced by the corrected two-pass algorithm while it sits in L1, merged with
//     Chan's parallel formula -- never E[x^2] - E[x]^2), then one pass normalise + scale/shift + activation.
//   backward: one pass for sum(dy') and sum(dy' * (x - mean)) per channel (dy' = dy * act'(y), y recomputed
//     from x), one elementwise pass for grad_input.
// Per-channel partials are combined in a fixed order that depends on the shape only, never on the thread
// count, so results are deterministic.
#include "batch_norm_act.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fastconv {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 4096;       // elements of one in-cache statistics block (16 KiB of float)
constexpr int64_t kMaxRowGroups = 64;  // channels_last: partial sums per channel, merged in order
constexpr int64_t kGrainElements = 32768;

// Loads `count` (<= vector size) elements converted to acc_t; lanes past `count` are zero.
template <typename scalar_t, typename acc_t>
inline Vectorized<acc_t> load_as(const scalar_t* p, int64_t count) {
  constexpr int64_t kLanes = Vectorized<acc_t>::size();
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return count >= kLanes ? Vectorized<acc_t>::loadu(p) : Vectorized<acc_t>::loadu(p, count);
  } else {
    alignas(64) acc_t buffer[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) buffer[k] = k < count ? static_cast<acc_t>(p[k]) : acc_t(0);
    return Vectorized<acc_t>::loadu(buffer);
  }
}

template <typename acc_t>
inline acc_t lane_sum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t buffer[Vectorized<acc_t>::size()];
  v.store(buffer);
  acc_t total = 0;
  for (int64_t k = 0; k < Vectorized<acc_t>::size(); ++k) total += buffer[k];
  return total;
}

// Chan et al.'s merge of (count, mean, M2) summaries; exact in exact arithmetic, stable in floating point.
template <typename acc_t>
struct MeanM2 {
  double count = 0;
  acc_t mean = 0;
  acc_t m2 = 0;
  void merge(double count_b, acc_t mean_b, acc_t m2_b) {
    if (count_b == 0) return;
    const double total = count + count_b;
    const acc_t delta = mean_b - mean;
    mean += delta * static_cast<acc_t>(count_b / total);
    m2 += m2_b + delta * delta * static_cast<acc_t>(count * count_b / total);
    count = total;
  }
};

// --- statistics, NCHW-like (inner > 1): parallel over channels, each channel's planes in blocks ------------
template <typename scalar_t, typename acc_t>
acc_t span_sum(const scalar_t* x, int64_t length) {
  constexpr int64_t kLanes = Vectorized<acc_t>::size();
  Vectorized<acc_t> a(0), b(0);
  int64_t i = 0;
  for (; i + 2 * kLanes <= length; i += 2 * kLanes) {
    a += load_as<scalar_t, acc_t>(x + i, kLanes);
    b += load_as<scalar_t, acc_t>(x + i + kLanes, kLanes);
  }
  for (; i < length; i += kLanes) a += load_as<scalar_t, acc_t>(x + i, length - i);  // zero-filled tail
  return lane_sum<acc_t>(a + b);
}

// (sum of d, sum of d^2) with d = x - mean_guess: the corrected two-pass algorithm, whose result does not
// depend on the guess's rounding error (m2 = sum d^2 - (sum d)^2 / n, mean = guess + sum d / n).
template <typename scalar_t, typename acc_t>
std::pair<acc_t, acc_t> span_deviation(const scalar_t* x, int64_t length, acc_t mean_guess) {
  constexpr int64_t kLanes = Vectorized<acc_t>::size();
  const Vectorized<acc_t> m(mean_guess);
  Vectorized<acc_t> sum(0), squares(0);
  int64_t i = 0;
  for (; i + kLanes <= length; i += kLanes) {
    const auto d = load_as<scalar_t, acc_t>(x + i, kLanes) - m;
    sum += d;
    squares += d * d;
  }
  acc_t sum_tail = 0, squares_tail = 0;  // scalar: a zero-filled lane would add -mean and mean^2
  for (; i < length; ++i) {
    const acc_t d = static_cast<acc_t>(x[i]) - mean_guess;
    sum_tail += d;
    squares_tail += d * d;
  }
  return {lane_sum<acc_t>(sum) + sum_tail, lane_sum<acc_t>(squares) + squares_tail};
}

template <typename scalar_t, typename acc_t>
void stats_planes(const scalar_t* x, acc_t* mean, acc_t* var, const BatchNormGeometry& g) {
  const int64_t span = std::min(g.inner, kBlock);
  const int64_t planes_per_block = std::max<int64_t>(1, kBlock / g.inner);
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      MeanM2<acc_t> total;
      for (int64_t o0 = 0; o0 < g.outer; o0 += planes_per_block) {
        const int64_t o1 = std::min(g.outer, o0 + planes_per_block);
        for (int64_t i0 = 0; i0 < g.inner; i0 += span) {
          const int64_t length = std::min(g.inner - i0, span);
          acc_t sum = 0;
          for (int64_t o = o0; o < o1; ++o) sum += span_sum<scalar_t, acc_t>(x + (o * g.channels + c) * g.inner + i0, length);
          const double count = static_cast<double>((o1 - o0) * length);
          const acc_t guess = sum / static_cast<acc_t>(count);
          acc_t sum_d = 0, m2 = 0;
          for (int64_t o = o0; o < o1; ++o) {
            const auto d = span_deviation<scalar_t, acc_t>(x + (o * g.channels + c) * g.inner + i0, length, guess);
            sum_d += d.first;
            m2 += d.second;
          }
          const acc_t correction = sum_d / static_cast<acc_t>(count);
          total.merge(count, guess + correction, m2 - sum_d * correction);
        }
      }
      mean[c] = total.mean;
      var[c] = total.m2 / static_cast<acc_t>(total.count);
    }
  });
}

// --- statistics, channels_last (inner == 1): blocks of rows, vectorised across channels ----------------------
// (mean, m2) <- merge((mean, m2) of `count` values, (mean_b, m2_b) of `count_b` values), per channel.
template <typename acc_t>
void merge_channels(acc_t* mean, acc_t* m2, double count, const acc_t* mean_b, const acc_t* m2_b, double count_b,
                    int64_t channels) {
  constexpr int64_t kLanes = Vectorized<acc_t>::size();
  const double total = count + count_b;
  const Vectorized<acc_t> fraction(static_cast<acc_t>(count_b / total));
  const Vectorized<acc_t> weight(static_cast<acc_t>(count * count_b / total));
  for (int64_t c = 0; c < channels; c += kLanes) {
    const int64_t n = std::min(kLanes, channels - c);
    const auto m = Vectorized<acc_t>::loadu(mean + c, n);
    const auto delta = Vectorized<acc_t>::loadu(mean_b + c, n) - m;
    (m + delta * fraction).store(mean + c, n);
    (Vectorized<acc_t>::loadu(m2 + c, n) + Vectorized<acc_t>::loadu(m2_b + c, n) + delta * delta * weight)
        .store(m2 + c, n);
  }
}

template <typename scalar_t, typename acc_t>
void stats_rows(const scalar_t* x, acc_t* mean, acc_t* var, const BatchNormGeometry& g) {
  constexpr int64_t kLanes = Vectorized<acc_t>::size();
  const int64_t channels = g.channels;
  const int64_t rows = g.outer;
  const int64_t rows_per_block = std::max<int64_t>(2, kBlock / channels);
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t blocks_per_group = (blocks + kMaxRowGroups - 1) / kMaxRowGroups;
  const int64_t groups = (blocks + blocks_per_group - 1) / blocks_per_group;
  std::vector<acc_t> group_mean(groups * channels), group_m2(groups * channels);
  std::vector<double> group_count(groups, 0.0);
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> block_mean(channels), block_m2(channels);
    for (int64_t group = begin; group < end; ++group) {
      acc_t* gm = group_mean.data() + group * channels;
      acc_t* gm2 = group_m2.data() + group * channels;
      std::fill(gm, gm + channels, acc_t(0));
      std::fill(gm2, gm2 + channels, acc_t(0));
      double count = 0;
      const int64_t r_end = std::min(rows, (group + 1) * blocks_per_group * rows_per_block);
      for (int64_t r0 = group * blocks_per_group * rows_per_block; r0 < r_end; r0 += rows_per_block) {
        const int64_t r1 = std::min(r_end, r0 + rows_per_block);
        const acc_t inv_rows = acc_t(1) / static_cast<acc_t>(r1 - r0);
        for (int64_t c = 0; c < channels; c += kLanes) {
          const int64_t n = std::min(kLanes, channels - c);
          Vectorized<acc_t> sum(0);
          for (int64_t r = r0; r < r1; ++r) sum += load_as<scalar_t, acc_t>(x + r * channels + c, n);
          const Vectorized<acc_t> guess = sum * Vectorized<acc_t>(inv_rows);
          Vectorized<acc_t> sum_d(0), m2(0);  // zero-filled lanes give 0 - 0: harmless
          for (int64_t r = r0; r < r1; ++r) {
            const auto d = load_as<scalar_t, acc_t>(x + r * channels + c, n) - guess;
            sum_d += d;
            m2 += d * d;
          }
          // corrected two-pass (see span_deviation): exact whatever the rounding of the guess
          const auto correction = sum_d * Vectorized<acc_t>(inv_rows);
          (guess + correction).store(block_mean.data() + c, n);
          (m2 - sum_d * correction).store(block_m2.data() + c, n);
        }
        merge_channels(gm, gm2, count, block_mean.data(), block_m2.data(), static_cast<double>(r1 - r0), channels);
        count += static_cast<double>(r1 - r0);
      }
      group_count[group] = count;
    }
  });
  std::vector<acc_t> total_m2(channels, acc_t(0));
  std::fill(mean, mean + channels, acc_t(0));
  double count = 0;
  for (int64_t group = 0; group < groups; ++group) {
    merge_channels(mean, total_m2.data(), count, group_mean.data() + group * channels,
                   group_m2.data() + group * channels, group_count[group], channels);
    count += group_count[group];
  }
  for (int64_t c = 0; c < channels; ++c) var[c] = total_m2[c] / static_cast<acc_t>(count);
}

// --- traversal helpers for the elementwise passes and the backward reduction --------------------------------
// f(c, index) for every element; index is the element's offset in the dense [outer, C, inner] array.
template <typename F>
void parallel_elementwise(const BatchNormGeometry& g, const F& f) {
  if (g.inner == 1) {
    at::parallel_for(0, g.outer, std::max<int64_t>(1, kGrainElements / g.channels), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = r * g.channels;
        for (int64_t c = 0; c < g.channels; ++c) f(c, base + c);
      }
    });
  } else {
    at::parallel_for(0, g.outer * g.channels, std::max<int64_t>(1, kGrainElements / g.inner),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t plane = begin; plane < end; ++plane) {
                         const int64_t c = plane % g.channels;
                         const int64_t base = plane * g.inner;
                         for (int64_t i = 0; i < g.inner; ++i) f(c, base + i);
                       }
                     });
  }
}

// --- forward ------------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t, Activation kAct>
void apply_forward(const scalar_t* x, scalar_t* out, const acc_t* scale, const acc_t* shift,
                   const BatchNormGeometry& g) {
  parallel_elementwise(g, [=](int64_t c, int64_t index) {
    const acc_t y = static_cast<acc_t>(x[index]) * scale[c] + shift[c];
    out[index] = static_cast<scalar_t>(ActivationOp<kAct, acc_t>::forward(y));
  });
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
  // A non-dense input is copied once so that input and output share strides (not the hot path).
  const at::Tensor x = dense_like(input, output);
  const BatchNormGeometry g = batch_norm_geometry(x);
  if (training) {
    if (output.numel() == 0) {  // F.batch_norm: empty output, running statistics untouched
      save_mean.zero_();
      save_invstd.fill_(1.0 / std::sqrt(eps));
      return {output, save_mean, save_invstd};
    }
    at::Tensor var = at::empty({channels}, stat_options);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_stats_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto* mean_ptr = save_mean.mutable_data_ptr<acc_t>();
      auto* var_ptr = var.mutable_data_ptr<acc_t>();
      if (g.inner == 1) {
        stats_rows<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), mean_ptr, var_ptr, g);
      } else {
        stats_planes<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), mean_ptr, var_ptr, g);
      }
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
  // y = x * scale + shift with scale = w * invstd, shift = b - mean * scale.
  const at::Tensor scale = channel_param_or(weight, input, 1.0) * save_invstd;
  const at::Tensor shift = channel_param_or(bias, input, 0.0) - save_mean * scale;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_apply_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(act, [&]<Activation kAct>() {
      apply_forward<scalar_t, acc_t, kAct>(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
                                           scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(), g);
    });
  });
  return {output, save_mean, save_invstd};
}

// --- backward -----------------------------------------------------------------------------------------------
// The per-element work is spelled out in plain loops over raw pointers: written as nested lambdas GCC did
// not inline it, and the backward ran several times slower than its memory traffic.

// dy' = dy * act'(y), with y = (x - mean) * invstd * w + b recomputed from x.
template <typename acc_t, Activation kAct>
inline acc_t activation_grad(acc_t dy, acc_t xmu, acc_t invstd, acc_t w, acc_t b) {
  if constexpr (kAct == Activation::kNone) {
    return dy;
  } else {
    return dy * ActivationOp<kAct, acc_t>::derivative(xmu * invstd * w + b);
  }
}

// sum_dy[c] = sum dy', sum_dy_xmu[c] = sum dy' * (x - mean), per channel, in a fixed order.
template <typename scalar_t, typename acc_t, Activation kAct>
void backward_sums(const scalar_t* dy, const scalar_t* x, const acc_t* mean, const acc_t* invstd, const acc_t* w,
                   const acc_t* b, acc_t* sum_dy, acc_t* sum_dy_xmu, const BatchNormGeometry& g) {
  const int64_t channels = g.channels;
  const int64_t inner = g.inner;
  if (inner > 1) {  // NCHW: parallel over channels; independent lanes keep the plane loop vectorisable
    constexpr int64_t kLanes = 8;
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const acc_t m = mean[c], s = invstd[c], wc = w[c], bc = b[c];
        acc_t total_dy = 0, total_dy_xmu = 0;
        for (int64_t o = 0; o < g.outer; ++o) {
          const scalar_t* xp = x + (o * channels + c) * inner;
          const scalar_t* dyp = dy + (o * channels + c) * inner;
          acc_t lane_dy[kLanes] = {}, lane_dy_xmu[kLanes] = {};
          int64_t i = 0;
          for (; i + kLanes <= inner; i += kLanes) {
            for (int64_t k = 0; k < kLanes; ++k) {
              const acc_t xmu = static_cast<acc_t>(xp[i + k]) - m;
              const acc_t d = activation_grad<acc_t, kAct>(static_cast<acc_t>(dyp[i + k]), xmu, s, wc, bc);
              lane_dy[k] += d;
              lane_dy_xmu[k] += d * xmu;
            }
          }
          for (; i < inner; ++i) {
            const acc_t xmu = static_cast<acc_t>(xp[i]) - m;
            const acc_t d = activation_grad<acc_t, kAct>(static_cast<acc_t>(dyp[i]), xmu, s, wc, bc);
            lane_dy[0] += d;
            lane_dy_xmu[0] += d * xmu;
          }
          for (int64_t k = 0; k < kLanes; ++k) {
            total_dy += lane_dy[k];
            total_dy_xmu += lane_dy_xmu[k];
          }
        }
        sum_dy[c] = total_dy;
        sum_dy_xmu[c] = total_dy_xmu;
      }
    });
    return;
  }
  // channels_last: a fixed number of row groups, each accumulating per-channel arrays (vectorisable
  // across channels), then added in group order.
  const int64_t rows = g.outer;
  const int64_t groups = std::max<int64_t>(1, std::min(rows, kMaxRowGroups));
  const int64_t rows_per_group = (rows + groups - 1) / groups;
  std::vector<acc_t> partial_dy(groups * channels, acc_t(0)), partial_dy_xmu(groups * channels, acc_t(0));
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      acc_t* __restrict__ p_dy = partial_dy.data() + group * channels;
      acc_t* __restrict__ p_dy_xmu = partial_dy_xmu.data() + group * channels;
      const int64_t r_end = std::min(rows, (group + 1) * rows_per_group);
      for (int64_t r = group * rows_per_group; r < r_end; ++r) {
        const scalar_t* xp = x + r * channels;
        const scalar_t* dyp = dy + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t xmu = static_cast<acc_t>(xp[c]) - mean[c];
          const acc_t d = activation_grad<acc_t, kAct>(static_cast<acc_t>(dyp[c]), xmu, invstd[c], w[c], b[c]);
          p_dy[c] += d;
          p_dy_xmu[c] += d * xmu;
        }
      }
    }
  });
  std::fill(sum_dy, sum_dy + channels, acc_t(0));
  std::fill(sum_dy_xmu, sum_dy_xmu + channels, acc_t(0));
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t c = 0; c < channels; ++c) {
      sum_dy[c] += partial_dy[group * channels + c];
      sum_dy_xmu[c] += partial_dy_xmu[group * channels + c];
    }
  }
}

// training: dx = k * (dy' - mean_dy - (x - mean) * proj) with k = w * invstd, mean_dy = sum_dy / n,
// proj = sum_dy_xmu * invstd^2 / n; eval: mean_dy = proj = 0, i.e. dx = w * invstd_running * dy'.
template <typename scalar_t, typename acc_t, Activation kAct>
void backward_apply(const scalar_t* dy, const scalar_t* x, scalar_t* grad_input, const acc_t* mean,
                    const acc_t* invstd, const acc_t* w, const acc_t* b, const acc_t* k, const acc_t* mean_dy,
                    const acc_t* proj, const BatchNormGeometry& g) {
  const int64_t channels = g.channels;
  const int64_t inner = g.inner;
  if (inner > 1) {
    at::parallel_for(0, g.outer * channels, std::max<int64_t>(1, kGrainElements / inner),
                     [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % channels;
        const acc_t m = mean[c], s = invstd[c], wc = w[c], bc = b[c], kc = k[c], mdy = mean_dy[c], pc = proj[c];
        const scalar_t* xp = x + plane * inner;
        const scalar_t* dyp = dy + plane * inner;
        scalar_t* gp = grad_input + plane * inner;
        for (int64_t i = 0; i < inner; ++i) {
          const acc_t xmu = static_cast<acc_t>(xp[i]) - m;
          const acc_t d = activation_grad<acc_t, kAct>(static_cast<acc_t>(dyp[i]), xmu, s, wc, bc);
          gp[i] = static_cast<scalar_t>(kc * (d - mdy - xmu * pc));
        }
      }
    });
    return;
  }
  at::parallel_for(0, g.outer, std::max<int64_t>(1, kGrainElements / channels), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xp = x + r * channels;
      const scalar_t* dyp = dy + r * channels;
      scalar_t* gp = grad_input + r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const acc_t xmu = static_cast<acc_t>(xp[c]) - mean[c];
        const acc_t d = activation_grad<acc_t, kAct>(static_cast<acc_t>(dyp[c]), xmu, invstd[c], w[c], b[c]);
        gp[c] = static_cast<scalar_t>(k[c] * (d - mean_dy[c] - xmu * proj[c]));
      }
    }
  });
}

template <typename scalar_t, typename acc_t, Activation kAct>
void backward_kernels(const scalar_t* dy, const scalar_t* x, scalar_t* grad_input, const acc_t* mean,
                      const acc_t* invstd, const acc_t* w, const acc_t* b, acc_t* sum_dy, acc_t* sum_dy_xmu,
                      bool training, const BatchNormGeometry& g) {
  backward_sums<scalar_t, acc_t, kAct>(dy, x, mean, invstd, w, b, sum_dy, sum_dy_xmu, g);
  const int64_t channels = g.channels;
  std::vector<acc_t> k(channels), mean_dy(channels, acc_t(0)), proj(channels, acc_t(0));
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(g.count());
  for (int64_t c = 0; c < channels; ++c) {
    k[c] = w[c] * invstd[c];
    if (training) {
      mean_dy[c] = sum_dy[c] * inv_count;
      proj[c] = sum_dy_xmu[c] * invstd[c] * invstd[c] * inv_count;
    }
  }
  backward_apply<scalar_t, acc_t, kAct>(dy, x, grad_input, mean, invstd, w, b, k.data(), mean_dy.data(), proj.data(),
                                        g);
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
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_activation(act, [&]<Activation kAct>() {
        backward_kernels<scalar_t, acc_t, kAct>(
            dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
            mean.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(), w.const_data_ptr<acc_t>(),
            b.const_data_ptr<acc_t>(), sum_dy.mutable_data_ptr<acc_t>(), sum_dy_xmu.mutable_data_ptr<acc_t>(),
            training, g);
      });
    });
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
