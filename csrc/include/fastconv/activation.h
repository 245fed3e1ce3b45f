// Activation functors shared by the fused kernels, on the host and on the device.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <string>
#include <string_view>

namespace fastconv {

// The activations a fused op may apply after its linear part (None, "relu", "relu6", "hardswish", "silu").
enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2, kHardswish = 3, kSilu = 4 };

inline Activation parse_activation(const std::optional<std::string_view>& name, const char* op) {
  if (!name.has_value()) return Activation::kNone;
  if (*name == "relu") return Activation::kRelu;
  if (*name == "relu6") return Activation::kRelu6;
  if (*name == "hardswish") return Activation::kHardswish;
  if (*name == "silu") return Activation::kSilu;
  TORCH_CHECK(false, op, ": activation must be None, \"relu\", \"relu6\", \"hardswish\" or \"silu\", got \"",
              std::string(*name), "\"");
}

// The derivative of relu and relu6 is a function of their output (out > 0, 0 < out < 6, exactly where the
// input was in the open interval); hardswish and silu need the pre-activation value.
inline bool derivative_needs_preactivation(Activation act) {
  return act == Activation::kHardswish || act == Activation::kSilu;
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t apply_activation(Activation act, acc_t x) {
  switch (act) {
    case Activation::kRelu: return x < acc_t(0) ? acc_t(0) : x;
    case Activation::kRelu6: return x < acc_t(0) ? acc_t(0) : (x > acc_t(6) ? acc_t(6) : x);
    case Activation::kHardswish: {
      const acc_t gate = x + acc_t(3) < acc_t(0) ? acc_t(0) : (x + acc_t(3) > acc_t(6) ? acc_t(6) : x + acc_t(3));
      return x * gate / acc_t(6);
    }
    case Activation::kSilu: return x / (acc_t(1) + ::exp(-x));
    default: return x;
  }
}

// d activation / d pre-activation, from `value`: the output for relu/relu6, the pre-activation for
// hardswish/silu (see derivative_needs_preactivation). Matches ATen's threshold/hardtanh/hardswish/silu
// backward formulas, boundaries included.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t activation_derivative(Activation act, acc_t value) {
  switch (act) {
    case Activation::kRelu: return value > acc_t(0) ? acc_t(1) : acc_t(0);
    case Activation::kRelu6: return value > acc_t(0) && value < acc_t(6) ? acc_t(1) : acc_t(0);
    case Activation::kHardswish:
      if (value < acc_t(-3)) return acc_t(0);
      if (value <= acc_t(3)) return value / acc_t(3) + acc_t(0.5);
      return acc_t(1);
    case Activation::kSilu: {
      const acc_t sigmoid = acc_t(1) / (acc_t(1) + ::exp(-value));
      return sigmoid * (acc_t(1) + value * (acc_t(1) - sigmoid));
    }
    default: return acc_t(1);
  }
}

}  // namespace fastconv
