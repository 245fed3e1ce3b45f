// squeeze_excite on the CPU: a pooling pass and a scaling pass over x (see csrc/squeeze_excite.h).
//
// The inner loops are written for the auto-vectoriser: a fixed number of independent accumulator lanes
// (NCHW, along the pixels of one plane) or a contiguous run of channels (channels_last, one pixel at a
// time), so every lane is a separate sum and no floating-point reassociation is needed to vectorise.
#include "squeeze_excite.h"
#include "fastconv/cpu_isa.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace fastconv {
namespace {

// The passes are plain loops written for the auto-vectoriser, so the instruction set is the compiler's choice:
// squeeze_excite_kernels.inc is compiled for baseline x86-64, AVX2 and AVX-512 and picked at run time
// (fastconv/cpu_isa.h; the at::parallel_for lambdas are defined inside, so they carry the target too).
#define FASTCONV_ISA_KERNELS "cpu/squeeze_excite_kernels.inc"
#include "fastconv/cpu_isa_kernels.h"

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
    return FASTCONV_ISA_CALL(IsaGate::forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate));
  }

  static void pool(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& sum_x, const at::Tensor& sum_gx,
                   const SqueezeGeometry& geo) {
    FASTCONV_ISA_CALL(IsaPasses::pool(x, grad, sum_x, sum_gx, geo));
  }

  static void scale(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& out,
                    const SqueezeGeometry& geo) {
    FASTCONV_ISA_CALL(IsaPasses::scale(x, scale, shift, out, geo));
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
