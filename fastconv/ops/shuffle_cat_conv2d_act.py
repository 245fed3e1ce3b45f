"""The ShuffleNet v2 unit's tail in one op: ``fastconv.ops.shuffle_cat_conv2d_act``.

A unit ends with its branch's last convolution (1x1, BN folded in eval, ReLU) and ``shuffle_cat(a, branch)``.
Run as two ops, the branch's result is written by the convolution, read back and written again, interleaved, by
shuffle_cat. Here the convolution writes it straight into the odd channels of the interleaved output and `a`
goes into the even ones, so each activation byte moves once between kernels (issue 6's "aim higher"):
- CUDA and Triton: the implicit-GEMM kernel of conv2d_act stores its tile at the odd channels and copies the same
  tile of `a` to the even ones (one kernel; csrc/cuda/conv2d_act.cu, triton_kernels/conv2d_act.py);
- CPU: the convolution (the channels_last GEMM or oneDNN), then one pass that writes the interleaved output and
  applies the activation on the way (csrc/cpu/conv2d_act.cpp). A BLAS GEMM cannot write channels_last's odd
  channels (2 elements apart) in place, so the branch's result is still a tensor there, but the activation pass
  and shuffle_cat's second read of it are gone.

Autograd: shuffle_cat's backward (the de-interleave) gives grad_a and the convolution's grad_output, then
conv2d_act's backward; no backward op of its own, and double backward goes through those two.
"""
from typing import List, Optional, Sequence, Union

import torch

from fastconv.ops import _reference
from fastconv.ops._checks import check_shuffle_cat_conv2d_act_args, resolve_conv2d_act_args
from fastconv.ops._registry import register_op
from fastconv.ops.conv2d_act import _conv2d_act_backward_triton, save_for_conv_backward
from fastconv.ops.shuffle_cat import _empty, shuffle_cat_backward_triton, shuffle_cat_memory_format

_PairOrInt = Union[int, Sequence[int]]


def shuffle_cat_conv2d_act(
    a: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _PairOrInt = 1,
    padding: Union[str, _PairOrInt] = 0,
    dilation: _PairOrInt = 1,
    groups: int = 1,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``shuffle_cat(a, conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation))`` in one op:
    ``out[:, 2j] = a[:, j]`` and ``out[:, 2j + 1] = act(conv(input) + bias)[:, j]``.

    Args:
        a: the other half, with the convolution's output shape ``(N, C_out, H_out, W_out)``, input's dtype and
            device, any strides (the ShuffleNet split ``x.chunk(2, dim=1)`` is read in place).
        input, weight, bias, stride, padding, dilation, groups, activation: as ``fastconv.ops.conv2d_act``.

    Returns:
        ``(N, 2 * C_out, H_out, W_out)``, laid out by shuffle_cat's rule on ``a`` (channels_last when ``a`` has its
        channels innermost, more than one channel and more than one pixel; otherwise contiguous).
    """
    stride, padding, dilation, groups = resolve_conv2d_act_args(weight, stride, padding, dilation, groups)
    return _OP.run(a, input, weight, bias, stride, padding, dilation, groups, activation)


def _fake(a, input, weight, bias, stride, padding, dilation, groups, activation):
    check_shuffle_cat_conv2d_act_args(a, input, weight, bias, stride, padding, dilation, groups, activation)
    return _empty(a, 2 * a.shape[1], shuffle_cat_memory_format(a))


# The C++ op's autograd is in csrc/autograd.cpp.
torch.library.register_fake("fastconv::shuffle_cat_conv2d_act")(_fake)


# --- Triton op ------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::shuffle_cat_conv2d_act_triton", mutates_args=())
def shuffle_cat_conv2d_act_triton(
    a: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    activation: Optional[str],
) -> torch.Tensor:
    check_shuffle_cat_conv2d_act_args(a, input, weight, bias, stride, padding, dilation, groups, activation)
    from fastconv.triton_kernels import conv2d_act as kernels  # imports triton: only when used

    return kernels.shuffle_cat_conv2d_act(a, input, weight, bias, stride, padding, dilation, groups, activation,
                                          shuffle_cat_memory_format(a))


shuffle_cat_conv2d_act_triton.register_fake(_fake)


def _setup_context(ctx, inputs, output):
    """conv2d_act's saved tensors; for relu/relu6 the whole output, whose odd channels are the convolution's."""
    save_for_conv_backward(ctx, ctx.needs_input_grad[1:4], inputs[1:], output)


def _grad(ctx, grad_output):
    input, weight, bias, output = ctx.saved_tensors
    grad_a, grad_b = shuffle_cat_backward_triton(grad_output)
    mask = [ctx.needs_input_grad[1], ctx.needs_input_grad[2], ctx.needs_input_grad[3] and ctx.has_bias]
    grads = [None, None, None]
    if any(mask):
        grads = _conv2d_act_backward_triton(grad_b, input, weight, bias, None if output is None else output[:, 1::2],
                                            ctx.input_size, *ctx.conv_args, mask)
    return ((grad_a if ctx.needs_input_grad[0] else None,)
            + tuple(g if wanted else None for g, wanted in zip(grads, mask)) + (None,) * 5)


shuffle_cat_conv2d_act_triton.register_autograd(_grad, setup_context=_setup_context)


_OP = register_op(
    "shuffle_cat_conv2d_act",
    autocast="lower",
    cpu=torch.ops.fastconv.shuffle_cat_conv2d_act,
    cuda=torch.ops.fastconv.shuffle_cat_conv2d_act,
    triton=shuffle_cat_conv2d_act_triton,
    reference=_reference.shuffle_cat_conv2d_act,
)
