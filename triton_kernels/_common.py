"""Helpers shared by the Triton launchers."""
import os

import torch
import triton
import triton.language as tl

# Under the interpreter every program is slow Python, so use few, large programs; on a GPU, occupancy.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ELEMENTWISE_BLOCK = 1 << 14 if INTERPRET else 1024

# Same-size integer types: data-movement kernels move bits, so every dtype (bfloat16 included, which the
# interpreter cannot compute with) takes one code path.
_BITS_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(tensor):
    """`tensor` viewed as the integer type of its element size (same storage)."""
    if tensor.element_size() not in _BITS_OF_SIZE:
        raise TypeError(f"fastconv (triton): unsupported element size {tensor.element_size()} of {tensor.dtype}")
    return tensor.view(_BITS_OF_SIZE[tensor.element_size()])


def dense_like(input, like):
    """`input` with the strides of `like` (from torch.empty_like(input)); no copy when it already has them."""
    if input.stride() == like.stride():
        return input
    return torch.empty_like(like).copy_(input)


# The activations a fused kernel applies in its epilogue, as compile-time codes (csrc/include/fastconv/activation.h).
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4}


@triton.jit
def activate(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = tl.minimum(tl.maximum(x, 0.0), 6.0)
    elif ACT == 3:
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif ACT == 4:
        x = x / (1.0 + tl.exp(-x))
    return x


@triton.jit
def activation_derivative(v, ACT: tl.constexpr):
    """d act / d pre-activation from v: the output for relu/relu6, the pre-activation for hardswish/silu.
    Same conventions at the kinks as ATen's backward formulas."""
    if ACT == 1:
        d = tl.where(v > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where((v > 0.0) & (v < 6.0), 1.0, 0.0)
    elif ACT == 3:
        d = tl.where(v < -3.0, 0.0, tl.where(v <= 3.0, v / 3.0 + 0.5, 1.0))
    elif ACT == 4:
        s = 1.0 / (1.0 + tl.exp(-v))
        d = s * (1.0 + v * (1.0 - s))
    else:
        d = tl.full(v.shape, 1.0, v.dtype)
    return d
