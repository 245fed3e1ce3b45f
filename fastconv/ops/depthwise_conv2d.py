"""Depthwise convolution with a fused activation: ``fastconv.ops.depthwise_conv2d``.

Autograd: the forward saves only what the requested gradients need. The weight (tiny) is always kept; the
input only for grad_weight or for hardswish/silu, whose derivative needs the pre-activation: the backward
recomputes it (one depthwise pass, cheap next to the backward itself) instead of keeping a second
activation-sized tensor alive between forward and backward. relu/relu6 read the forward output instead.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch._prims_common import suggest_memory_format

from fastconv.ops import _reference
from fastconv.ops._checks import (
    check_depthwise_conv2d_args,
    check_depthwise_conv2d_backward_args,
    resolve_depthwise_conv2d_args,
)
from fastconv.ops._registry import register_op

_PairOrInt = Union[int, Sequence[int]]


def depthwise_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _PairOrInt = 1,
    padding: Union[str, _PairOrInt] = 0,
    dilation: _PairOrInt = 1,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``F.conv2d(input, weight, bias, stride, padding, dilation, groups=C)`` followed by ``activation``.

    Args:
        input: ``(N, C, H, W)``, float32/float16/bfloat16 (float64 on the CPU), NCHW or channels_last.
        weight: ``(C * m, 1, kh, kw)``: depth multiplier ``m >= 1``; output channel ``o`` reads input
            channel ``o // m``. Any kernel size.
        bias: optional ``(C * m,)``.
        stride, dilation: int or pair, positive.
        padding: int, pair, ``"valid"`` or ``"same"`` (stride 1 only, like F.conv2d; an odd total pads one
            more at the bottom/right, exactly like F.conv2d).
        activation: None, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``.

    Returns:
        ``(N, C * m, H_out, W_out)`` in the input's memory format (channels_last stays channels_last).
    """
    stride, padding, dilation = resolve_depthwise_conv2d_args(weight, stride, padding, dilation)
    return _OP.run(input, weight, bias, stride, padding, dilation, activation)


def _memory_format(tensor):
    """The layout the kernels write (csrc/depthwise_conv2d.h: depthwise_memory_format)."""
    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _forward_fake(input, weight, bias, stride, padding, dilation, activation):
    out_shape = check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation, activation)
    return torch.empty(out_shape, dtype=input.dtype, device=input.device, memory_format=_memory_format(input))


def _backward_fake(grad_output, input, weight, bias, output, input_size, stride, padding, dilation, activation,
                   output_mask):
    check_depthwise_conv2d_backward_args(grad_output, input, weight, bias, output, input_size, stride, padding,
                                         dilation, activation, output_mask)
    layout = _memory_format(input if input is not None else grad_output)
    grad_input = (torch.empty(input_size, dtype=weight.dtype, device=weight.device, memory_format=layout)
                  if output_mask[0] else None)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


torch.library.register_fake("fastconv::depthwise_conv2d")(_forward_fake)
torch.library.register_fake("fastconv::_depthwise_conv2d_backward")(_backward_fake)


# --- autograd of the Triton op (the C++ op's forward is in csrc/autograd.cpp, the same contract) and of both
# backward ops (the double backward) ----------------------------------------------------------------------------
def _setup_forward(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, activation = inputs
    wants = ctx.needs_input_grad[:3]
    any_grad = any(wants)
    preact = activation in ("hardswish", "silu")
    ctx.input_size = tuple(input.shape)
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation, activation)
    ctx.save_for_backward(
        input if wants[1] or (preact and any_grad) else None,
        weight,
        bias if preact and any_grad else None,
        output if activation in ("relu", "relu6") and any_grad else None,
    )


def _make_forward_grad(backward_op):
    def grad(ctx, grad_output):
        input, weight, bias, output = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        grad_input, grad_weight, grad_bias = backward_op(
            grad_output, input, weight, bias, output, ctx.input_size, *ctx.conv_args, mask
        )
        return (grad_input if mask[0] else None, grad_weight if mask[1] else None, grad_bias if mask[2] else None,
                None, None, None, None)

    return grad


def _setup_backward(ctx, inputs, output):
    del output  # the gradients; the double backward rebuilds them from the inputs
    grad_output, input, weight, bias, forward_output, input_size, stride, padding, dilation, activation, mask = inputs
    ctx.save_for_backward(grad_output, input, weight, bias, forward_output)
    ctx.input_size = input_size
    ctx.conv_args = (stride, padding, dilation, activation)
    ctx.output_mask = mask


def _activation_derivative(activation, preact, output):
    """d activation / d pre-activation as differentiable ATen ops (for the double backward)."""
    if activation == "relu":
        return (output > 0).to(output.dtype)
    if activation == "relu6":
        return ((output > 0) & (output < 6)).to(output.dtype)
    if activation == "hardswish":
        return torch.where(preact < -3, 0.0, torch.where(preact <= 3, preact / 3 + 0.5, 1.0))
    if activation == "silu":
        sigmoid = torch.sigmoid(preact)
        return sigmoid * (1 + preact * (1 - sigmoid))
    return None


def _backward_grad(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Double backward, through the plain-ATen composition: rebuild the backward with differentiable ATen ops
    (the reference convolution's vjp) and differentiate it. Rarely used (gradgradcheck, Hessian-vector
    products), so clarity wins over speed here."""
    grad_output, input, weight, bias, output = ctx.saved_tensors
    stride, padding, dilation, activation = ctx.conv_args
    with torch.enable_grad():
        go = grad_output.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        # The vjp of the convolution with respect to its input does not depend on the input's values.
        x = (input if input is not None else weight.new_zeros(ctx.input_size)).detach().requires_grad_(True)
        b = bias.detach().requires_grad_(True) if bias is not None else None
        preact = None
        if activation in ("hardswish", "silu"):
            preact = _reference.depthwise_conv2d(x, w, b, stride, padding, dilation, None)
        factor = _activation_derivative(activation, preact, output)
        grad_preact = go if factor is None else go * factor
        linear = _reference.depthwise_conv2d(x, w, None, stride, padding, dilation, None)
        grad_x, grad_w = torch.autograd.grad(linear, [x, w], grad_preact, create_graph=True)
        grads = [grad_x, grad_w, grad_preact.sum((0, 2, 3))]
        pairs = [(g, gg) for g, gg, wanted in zip(grads, (grad_grad_input, grad_grad_weight, grad_grad_bias),
                                                  ctx.output_mask) if wanted and gg is not None]
        sources = [go, x, w] + ([b] if b is not None else [])
        if not pairs:
            return (None,) * 11
        result = torch.autograd.grad([g for g, _ in pairs], sources, [gg for _, gg in pairs], allow_unused=True)
    d_grad_output, d_input, d_weight = result[:3]
    d_bias = result[3] if b is not None else None
    return (d_grad_output, d_input if input is not None else None, d_weight, d_bias) + (None,) * 7


# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd(
    "fastconv::_depthwise_conv2d_backward", _backward_grad, setup_context=_setup_backward
)


# --- Triton ops ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::depthwise_conv2d_triton", mutates_args=())
def depthwise_conv2d_triton(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    activation: Optional[str],
) -> torch.Tensor:
    check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation, activation)
    from fastconv.triton_kernels import depthwise_conv2d as kernels  # imports triton: only when used

    return kernels.depthwise_conv2d(input, weight, bias, stride, padding, dilation, activation)


@torch.library.custom_op("fastconv::_depthwise_conv2d_backward_triton", mutates_args=())
def _depthwise_conv2d_backward_triton(
    grad_output: torch.Tensor,
    input: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    output: Optional[torch.Tensor],
    input_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    activation: Optional[str],
    output_mask: List[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like _depthwise_conv2d_backward, but an unrequested gradient is an empty tensor (a custom_op cannot
    return None); the autograd wrapper drops it."""
    check_depthwise_conv2d_backward_args(grad_output, input, weight, bias, output, input_size, stride, padding,
                                         dilation, activation, output_mask)
    from fastconv.triton_kernels import depthwise_conv2d as kernels

    grads = kernels.depthwise_conv2d_backward(grad_output, input, weight, bias, output, input_size, stride, padding,
                                              dilation, activation, output_mask)
    return tuple(g if g is not None else weight.new_empty(0) for g in grads)


depthwise_conv2d_triton.register_fake(_forward_fake)


@_depthwise_conv2d_backward_triton.register_fake
def _depthwise_conv2d_backward_triton_fake(*args):
    grads = _backward_fake(*args)
    return tuple(g if g is not None else args[2].new_empty(0) for g in grads)


depthwise_conv2d_triton.register_autograd(
    _make_forward_grad(_depthwise_conv2d_backward_triton), setup_context=_setup_forward
)
_depthwise_conv2d_backward_triton.register_autograd(_backward_grad, setup_context=_setup_backward)


_OP = register_op(
    "depthwise_conv2d",
    autocast="lower",
    cpu=torch.ops.fastconv.depthwise_conv2d,
    cuda=torch.ops.fastconv.depthwise_conv2d,
    triton=depthwise_conv2d_triton,
    reference=_reference.depthwise_conv2d,
)
