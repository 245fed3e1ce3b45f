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
#include <cmath>

namespace fastconv {
namespace {

// The passes are plain loops written for the auto-vectoriser, so the instruction set is the compiler's
// choice: the extension is built for the baseline x86-64 (SSE2), which leaves 2-4x of in-cache throughput
// unused next to ATen's AVX2/AVX-512 kernels. Compile them twice, baseline and AVX2+FMA+F16C, and pick at
// run time (the at::parallel_for lambdas are defined inside, so they carry the target too).
#if defined(__GNUC__) && defined(__x86_64__)
#define FASTCONV_SE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#include "squeeze_excite_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace baseline {
#include "squeeze_excite_kernels.inc"
}  // namespace baseline

bool use_avx2() {
#ifdef FASTCONV_SE_AVX2
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
#else
  return false;
#endif
}

struct CpuPasses {
  // Below this batch the gate MLP runs as fused dot products; above, ATen's GEMMs reuse the weights better.
  static constexpr int64_t kSmallBatch = 4;

  static at::Tensor forward_scale(const at::Tensor& pooled, const at::Tensor& fc1_weight,
                                  const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                  const std::optional<at::Tensor>& fc2_bias, SqueezeActivation activation,
                                  SqueezeGate gate) {
    if (pooled.size(0) > kSmallBatch) {
      return squeeze_mlp_forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate).scale;
    }
#ifdef FASTCONV_SE_AVX2
    if (use_avx2()) return avx2::IsaGate::forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
#endif
    return baseline::IsaGate::forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
  }

  static void pool(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& sum_x, const at::Tensor& sum_gx,
                   const SqueezeGeometry& geo) {
#ifdef FASTCONV_SE_AVX2
    if (use_avx2()) return avx2::IsaPasses::pool(x, grad, sum_x, sum_gx, geo);
#endif
    baseline::IsaPasses::pool(x, grad, sum_x, sum_gx, geo);
  }

  static void scale(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& out,
                    const SqueezeGeometry& geo) {
#ifdef FASTCONV_SE_AVX2
    if (use_avx2()) return avx2::IsaPasses::scale(x, scale, shift, out, geo);
#endif
    baseline::IsaPasses::scale(x, scale, shift, out, geo);
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
