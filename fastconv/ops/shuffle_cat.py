"""Concatenate + channel shuffle of the ShuffleNet v2 unit in one pass: ``fastconv.ops.shuffle_cat(a, b)``."""
import torch

from fastconv.ops import _reference
from fastconv.ops._checks import check_shuffle_cat_args, check_shuffle_cat_backward_args
from fastconv.ops._registry import register_op


def shuffle_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat([a, b], 1), 2)`` in one pass: ``out[:, 2j] = a[:, j]``, ``out[:, 2j + 1] = b[:, j]``.

    The ShuffleNet v2 unit ends with this; the next unit's split ``out.chunk(2, dim=1)`` is a free view,
    and those views can be passed back in as ``a`` without a copy.

    Args:
        a, b: ``(N, C, *)`` tensors of the same shape, dtype and device (any dtype; any strides).

    Returns:
        ``(N, 2C, *)`` tensor. Channels_last when ``a`` is 4-D with its channels innermost
        (``a.stride(1) == 1``, more than one channel and more than one pixel: dense channels_last tensors and
        channel slices of them), otherwise contiguous (NCHW).
    """
    return _OP.run(a, b)


def shuffle_cat_memory_format(like):
    """The output layout rule, identical to shuffle_cat_memory_format in csrc/shuffle_cat.h."""
    if like.dim() == 4 and like.shape[1] > 1 and like.shape[2] * like.shape[3] > 1 and like.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


def _empty(like, channels, memory_format):
    shape = list(like.shape)
    shape[1] = channels
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


# --- C++ ops (CPU and CUDA kernels): fake kernels and autograd -------------------------------------------
@torch.library.register_fake("fastconv::shuffle_cat")
def _shuffle_cat_fake(a, b):
    check_shuffle_cat_args(a, b)
    return _empty(a, 2 * a.shape[1], shuffle_cat_memory_format(a))


@torch.library.register_fake("fastconv::_shuffle_cat_backward")
def _shuffle_cat_backward_fake(grad_output):
    check_shuffle_cat_backward_args(grad_output)
    memory_format = shuffle_cat_memory_format(grad_output)
    channels = grad_output.shape[1] // 2
    return _empty(grad_output, channels, memory_format), _empty(grad_output, channels, memory_format)


def _interleave_grads(grad_a, grad_b):
    """The derivative of the de-interleave is the interleave; a missing gradient is zero."""
    if grad_a is None and grad_b is None:
        return None
    if grad_a is None:
        grad_a = torch.zeros_like(grad_b)
    if grad_b is None:
        grad_b = torch.zeros_like(grad_a)
    return grad_a, grad_b


def _shuffle_cat_backward_grad(ctx, grad_grad_a, grad_grad_b):
    grads = _interleave_grads(grad_grad_a, grad_grad_b)  # double backward
    return None if grads is None else torch.ops.fastconv.shuffle_cat(*grads)


# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd("fastconv::_shuffle_cat_backward", _shuffle_cat_backward_grad)


# --- Triton ops ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::shuffle_cat_triton", mutates_args=())
def shuffle_cat_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    check_shuffle_cat_args(a, b)
    from fastconv.triton_kernels import shuffle_cat as kernels  # imports triton: only when used

    return kernels.shuffle_cat(a, b, shuffle_cat_memory_format(a))


@shuffle_cat_triton.register_fake
def _shuffle_cat_triton_fake(a, b):
    return _shuffle_cat_fake(a, b)


@torch.library.custom_op("fastconv::_shuffle_cat_backward_triton", mutates_args=())
def shuffle_cat_backward_triton(grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_shuffle_cat_backward_args(grad_output)
    from fastconv.triton_kernels import shuffle_cat as kernels

    return kernels.shuffle_cat_backward(grad_output, shuffle_cat_memory_format(grad_output))


@shuffle_cat_backward_triton.register_fake
def _shuffle_cat_backward_triton_fake(grad_output):
    return _shuffle_cat_backward_fake(grad_output)


def _shuffle_cat_triton_grad(ctx, grad_output):
    return shuffle_cat_backward_triton(grad_output)


def _shuffle_cat_backward_triton_grad(ctx, grad_grad_a, grad_grad_b):
    grads = _interleave_grads(grad_grad_a, grad_grad_b)
    return None if grads is None else shuffle_cat_triton(*grads)


shuffle_cat_triton.register_autograd(_shuffle_cat_triton_grad)
shuffle_cat_backward_triton.register_autograd(_shuffle_cat_backward_triton_grad)


_OP = register_op(
    "shuffle_cat",
    autocast="promote",
    cpu=torch.ops.fastconv.shuffle_cat,
    cuda=torch.ops.fastconv.shuffle_cat,
    triton=shuffle_cat_triton,
    reference=_reference.shuffle_cat,
)
