"""Helpers shared by the Triton launchers."""
import os

import torch

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
