// squeeze_excite on the CPU: a pooling pass and a scaling pass over x (see csrc/squeeze_excite.h).
//
// The inner loops are written for the auto-vectoriser: a fixed number of independent accumulator lanes
// (NCHW, along the pixels of one plane) or a contiguous run of channels (channels_last, one pixel at a
// time), so every lane is a separate sum and no floating-point reassociation is needed to vectorise.
#include "squeeze_excite.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace fastconv {
namespace {

constexpr int kLanes = 16;                 // independent partial sums per plane
constexpr int64_t kGrainElements = 32768;  // elements per parallel task, at least

// NCHW: one (n, c) plane is `pixels` contiguous elements; tasks are planes.
template <typename scalar_t, typename acc_t, bool kWithGrad>
void pool_planes(const scalar_t* x, const scalar_t* g, acc_t* sum_x, acc_t* sum_gx, int64_t planes,
                 int64_t pixels) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / pixels);
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* xp = x + plane * pixels;
      const scalar_t* gp = kWithGrad ? g + plane * pixels : nullptr;
      acc_t lanes_x[kLanes] = {};
      acc_t lanes_gx[kLanes] = {};
      int64_t p = 0;
      for (; p + kLanes <= pixels; p += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const acc_t v = static_cast<acc_t>(xp[p + l]);
          lanes_x[l] += v;
          if (kWithGrad) lanes_gx[l] += static_cast<acc_t>(gp[p + l]) * v;
        }
      }
      for (int l = 0; p < pixels; ++p, ++l) {
        const acc_t v = static_cast<acc_t>(xp[p]);
        lanes_x[l] += v;
        if (kWithGrad) lanes_gx[l] += static_cast<acc_t>(gp[p]) * v;
      }
      acc_t total_x = 0, total_gx = 0;
      for (int l = 0; l < kLanes; ++l) {
        total_x += lanes_x[l];
        total_gx += lanes_gx[l];
      }
      sum_x[plane] = total_x;
      if (kWithGrad) sum_gx[plane] = total_gx;
    }
  });
}

// channels_last: pixel p of sample n is a row of `channels` contiguous elements. Tasks are (n, channel
// block): each walks every pixel of its sample, adding a contiguous run of channels into its accumulators.
template <typename scalar_t, typename acc_t, bool kWithGrad>
void pool_pixels(const scalar_t* x, const scalar_t* g, acc_t* sum_x, acc_t* sum_gx, const SqueezeGeometry& geo) {
  constexpr int64_t kMaxBlock = 64;
  const int64_t channels = geo.channels;
  const int64_t pixels = geo.pixels;
  // Narrower blocks when there are too few tasks to keep every thread busy (batch 1).
  int64_t block = kMaxBlock;
  while (block > 16 && geo.batch * ((channels + block - 1) / block) < 2 * at::get_num_threads()) block /= 2;
  const int64_t blocks_per_sample = (channels + block - 1) / block;
  at::parallel_for(0, geo.batch * blocks_per_sample, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks_per_sample;
      const int64_t c0 = (task - n * blocks_per_sample) * block;
      const int64_t width = std::min(block, channels - c0);
      acc_t acc_x[kMaxBlock] = {};
      acc_t acc_gx[kMaxBlock] = {};
      const int64_t base = n * pixels * channels + c0;
      for (int64_t p = 0; p < pixels; ++p) {
        const scalar_t* row = x + base + p * channels;
        const scalar_t* grow = kWithGrad ? g + base + p * channels : nullptr;
        for (int64_t c = 0; c < width; ++c) {
          const acc_t v = static_cast<acc_t>(row[c]);
          acc_x[c] += v;
          if (kWithGrad) acc_gx[c] += static_cast<acc_t>(grow[c]) * v;
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        sum_x[n * channels + c0 + c] = acc_x[c];
        if (kWithGrad) sum_gx[n * channels + c0 + c] = acc_gx[c];
      }
    }
  });
}

// out = x * scale[n, c] (+ shift[n, c]); scale and shift are contiguous (N, C) opmath arrays.
template <typename scalar_t, typename acc_t, bool kWithShift>
void scale_all(const scalar_t* x, const acc_t* scale, const acc_t* shift, scalar_t* out, const SqueezeGeometry& geo) {
  const int64_t channels = geo.channels;
  const int64_t pixels = geo.pixels;
  if (!geo.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / pixels);
    at::parallel_for(0, geo.batch * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const acc_t s = scale[plane];
        const acc_t b = kWithShift ? shift[plane] : acc_t(0);
        const scalar_t* xp = x + plane * pixels;
        scalar_t* op = out + plane * pixels;
        for (int64_t p = 0; p < pixels; ++p) {
          const acc_t v = static_cast<acc_t>(xp[p]) * s;
          op[p] = static_cast<scalar_t>(kWithShift ? v + b : v);
        }
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / channels);
  at::parallel_for(0, geo.batch * pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t n = pixel / pixels;
      const acc_t* s = scale + n * channels;
      const acc_t* b = kWithShift ? shift + n * channels : nullptr;
      const scalar_t* row = x + pixel * channels;
      scalar_t* orow = out + pixel * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const acc_t v = static_cast<acc_t>(row[c]) * s[c];
        orow[c] = static_cast<scalar_t>(kWithShift ? v + b[c] : v);
      }
    }
  });
}

struct CpuPasses {
  static void pool(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& sum_x, const at::Tensor& sum_gx,
                   const SqueezeGeometry& geo) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "squeeze_excite_pool_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* xp = x.const_data_ptr<scalar_t>();
      auto* sx = sum_x.mutable_data_ptr<acc_t>();
      if (grad.defined()) {
        const auto* gp = grad.const_data_ptr<scalar_t>();
        auto* sgx = sum_gx.mutable_data_ptr<acc_t>();
        if (geo.channels_last) {
          pool_pixels<scalar_t, acc_t, true>(xp, gp, sx, sgx, geo);
        } else {
          pool_planes<scalar_t, acc_t, true>(xp, gp, sx, sgx, geo.batch * geo.channels, geo.pixels);
        }
      } else if (geo.channels_last) {
        pool_pixels<scalar_t, acc_t, false>(xp, nullptr, sx, nullptr, geo);
      } else {
        pool_planes<scalar_t, acc_t, false>(xp, nullptr, sx, nullptr, geo.batch * geo.channels, geo.pixels);
      }
    });
  }

  static void scale(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& out,
                    const SqueezeGeometry& geo) {
    // (N, C) tensors from ATen matmuls: already contiguous, so these are no-ops.
    const at::Tensor scale_rows = scale.contiguous();
    const at::Tensor shift_rows = shift.defined() ? shift.contiguous() : shift;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "squeeze_excite_scale_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* xp = x.const_data_ptr<scalar_t>();
      const auto* sp = scale_rows.const_data_ptr<acc_t>();
      auto* op = out.mutable_data_ptr<scalar_t>();
      if (shift_rows.defined()) {
        scale_all<scalar_t, acc_t, true>(xp, sp, shift_rows.const_data_ptr<acc_t>(), op, geo);
      } else {
        scale_all<scalar_t, acc_t, false>(xp, sp, nullptr, op, geo);
      }
    });
  }
};

at::Tensor squeeze_excite_cpu(const at::Tensor& input, const at::Tensor& fc1_weight,
                              const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                              const std::optional<at::Tensor>& fc2_bias, c10::string_view activation,
                              c10::string_view gate) {
  return squeeze_excite_forward<CpuPasses>(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>, at::Tensor, std::optional<at::Tensor>> squeeze_excite_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& fc1_weight,
    const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight, const std::optional<at::Tensor>& fc2_bias,
    c10::string_view activation, c10::string_view gate) {
  return squeeze_excite_backward<CpuPasses>(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                            activation, gate);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("squeeze_excite", &squeeze_excite_cpu);
  m.impl("_squeeze_excite_backward", &squeeze_excite_backward_cpu);
}

}  // namespace fastconv
