// squeeze_excite on the CPU: a pooling pass and a scaling pass over x (see csrc/squeeze_excite.h), with the
// gate MLP in between. The loops (squeeze_excite_kernels.inc) run on native-width vectors
// (fastconv/simd_kernels.inc) with several independent accumulators: NCHW planes are reduced a vector of
// planes at a time (or one long plane with four accumulators), channels_last pixels a block of channel vectors
// at a time.
#include "squeeze_excite.h"
#include "fastconv/activation.h"
#include "fastconv/cpu_isa.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastconv {
namespace {

// squeeze_excite_kernels.inc is compiled for baseline x86-64, AVX2 and AVX-512 and picked at run time
// (fastconv/cpu_isa.h; the at::parallel_for lambdas are defined inside, so they carry the target too).
// The kernels pass 64-byte vector types between inlined helpers; GCC warns that such a value's ABI differs
// without AVX-512 (the baseline variant), which never matters for these internal functions.
#pragma GCC diagnostic ignored "-Wpsabi"
#define FASTCONV_ISA_KERNELS "cpu/squeeze_excite_kernels.inc"
#include "fastconv/cpu_isa_kernels.h"

// Up to this batch the forward runs in one kernel call with the gate MLP as dot products over the weight rows
// (one pass over the weights per sample); above, ATen's GEMMs reuse the weights better.
constexpr int64_t kSmallBatch = 4;

struct CpuPasses {
  static at::Tensor forward_scale(const at::Tensor& pooled, const at::Tensor& fc1_weight,
                                  const std::optional<at::Tensor>& fc1_bias, const at::Tensor& fc2_weight,
                                  const std::optional<at::Tensor>& fc2_bias, SqueezeActivation activation,
                                  SqueezeGate gate) {
    return squeeze_mlp_forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate).scale;
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
  if (input.dim() != 4 || input.size(0) > kSmallBatch) {  // (a wrong rank is reported by the shared checks)
    return squeeze_excite_forward<CpuPasses>(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
  }
  check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
  const at::Tensor x = kernel_layout(input);
  if (x.numel() == 0) return at::empty_like(input);
  const at::Tensor out = FASTCONV_ISA_CALL(IsaForward::small_batch(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                                                   parse_squeeze_activation(activation),
                                                                   parse_squeeze_gate(gate), squeeze_geometry(x)));
  return in_input_layout(out, input);
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
