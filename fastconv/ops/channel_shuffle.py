"""Channel shuffle (ShuffleNet v1/v2): ``fastconv.ops.channel_shuffle(input, groups)``."""
import torch

from fastconv.ops import _reference
from fastconv.ops._checks import check_channel_shuffle_args
from fastconv.ops._registry import register_op


def channel_shuffle(input: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups, as ``torch.nn.functional.channel_shuffle``.

    Viewing the C channels as a (groups, C // groups) matrix, the output reads it transposed: output
    channel ``j * groups + i`` is input channel ``i * (C // groups) + j``.

    Args:
        input: ``(N, C, *)`` tensor, any dtype, any number of trailing dimensions. Dense layouts (NCHW,
            channels_last, ...) are kept: the output has the strides of ``torch.empty_like(input)``.
        groups: number of groups; must be positive and divide C.

    Returns:
        Tensor of the same shape, dtype, device and memory format as ``input``.
    """
    return _OP.run(input, groups)


# --- C++ ops (CPU and CUDA kernels): fake kernels and autograd -------------------------------------------
@torch.library.register_fake("fastconv::channel_shuffle")
def _channel_shuffle_fake(input, groups):
    check_channel_shuffle_args(input, groups)
    return torch.empty_like(input)


@torch.library.register_fake("fastconv::_channel_shuffle_backward")
def _channel_shuffle_backward_fake(grad_output, groups):
    check_channel_shuffle_args(grad_output, groups)
    return torch.empty_like(grad_output)


def _save_groups(ctx, inputs, output):
    ctx.groups = inputs[1]


def _channel_shuffle_backward_grad(ctx, grad_grad):
    # The backward is itself a permutation; its derivative is the forward shuffle (double backward).
    return torch.ops.fastconv.channel_shuffle(grad_grad, ctx.groups), None


# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd(
    "fastconv::_channel_shuffle_backward", _channel_shuffle_backward_grad, setup_context=_save_groups
)


# --- Triton op -----------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::channel_shuffle_triton", mutates_args=())
def channel_shuffle_triton(input: torch.Tensor, groups: int) -> torch.Tensor:
    check_channel_shuffle_args(input, groups)
    from fastconv.triton_kernels import channel_shuffle as kernels  # imports triton: only when used

    return kernels.channel_shuffle(input, groups)


@channel_shuffle_triton.register_fake
def _channel_shuffle_triton_fake(input, groups):
    check_channel_shuffle_args(input, groups)
    return torch.empty_like(input)


def _channel_shuffle_triton_grad(ctx, grad_output):
    return channel_shuffle_triton(grad_output, grad_output.shape[1] // ctx.groups), None


channel_shuffle_triton.register_autograd(_channel_shuffle_triton_grad, setup_context=_save_groups)


_OP = register_op(
    "channel_shuffle",
    cpu=torch.ops.fastconv.channel_shuffle,
    cuda=torch.ops.fastconv.channel_shuffle,
    triton=channel_shuffle_triton,
    reference=_reference.channel_shuffle,
)
