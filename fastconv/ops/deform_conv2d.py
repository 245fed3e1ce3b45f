"""Deformable convolution v1/v2: ``fastconv.ops.deform_conv2d``, torchvision.ops.deform_conv2d's semantics.

Autograd: the forward keeps input, offset, weight and mask (every gradient needs all of them but bias); the
backward op returns the five gradients at once, skipping the ones nobody asked for. The C++ op's backward is
`_deform_conv2d_backward` (CPU/CUDA kernels); the Triton variant's is `_deform_conv2d_backward_triton` (Triton
kernels: fastconv/triton_kernels/deform_conv2d.py), same semantics and layouts. Both double backwards go
through the plain-ATen composition.

Workspace: no (C*kh*kw) x (N*H_out*W_out) column buffer. The CPU forward holds one column tile per thread
(<= 2^17 elements); the CPU backward one per thread plus the per-channel-block partial sums of grad_offset/
grad_mask, (C / B) x N x 3*kh*kw x H_out*W_out with B <= 32 (e.g. 8 x 27 values per output pixel for C = 256,
~9% of torchvision's 2304-value column per pixel). The CUDA kernels keep their tiles in shared memory; only
float16/bfloat16 gradients use float32 accumulators shaped like the gradient itself. The Triton kernels keep
their column tiles in registers; their only workspace is grad_input's float32 accumulator for float16/bfloat16.

Determinism: the CPU backward is deterministic (fixed-order sums, bit-identical for any thread count). The
CUDA backward accumulates grad_input (and grad_offset/grad_mask when an offset group spans several channel
blocks) with atomics, so under torch.use_deterministic_algorithms(True) it raises (warn_only: warns). The
Triton backward accumulates only grad_input with atomics: it raises (warns) when grad_input is needed, and its
grad_offset, grad_mask, grad_weight and grad_bias are deterministic.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch._prims_common import alert_not_deterministic, suggest_memory_format

from fastconv.ops import _reference
from fastconv.ops._checks import check_deform_conv2d_args, check_deform_conv2d_backward_args, deform_pair
from fastconv.ops._registry import register_op

_PairOrInt = Union[int, Sequence[int]]


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _PairOrInt = (1, 1),
    padding: _PairOrInt = (0, 0),
    dilation: _PairOrInt = (1, 1),
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d``: deformable convolution (DCNv1; DCNv2 when ``mask`` is given).

    Args:
        input: ``(N, C_in, H, W)``, float32/float16/bfloat16 (float64 on the CPU), NCHW or channels_last.
        offset: ``(N, 2 * offset_groups * kh * kw, H_out, W_out)``: per output pixel and tap, the (dy, dx)
            displacement of the sampling point; ``offset_groups`` (dividing C_in) comes from its shape.
        weight: ``(C_out, C_in / groups, kh, kw)``; the weight groups come from ``C_in / weight.shape[1]``.
        bias: optional ``(C_out,)``.
        stride, padding, dilation: int or pair.
        mask: optional ``(N, offset_groups * kh * kw, H_out, W_out)`` modulation (DCNv2); None is all ones.

    Returns:
        ``(N, C_out, H_out, W_out)`` in the input's memory format. Sampling is bilinear, zero outside the image.
        Under autocast every tensor runs in the autocast dtype (float16/bfloat16) with float32 accumulation
        inside the kernels, rather than torchvision's upcast to float32 (the op's rule: fastconv.ops._autocast).
    """
    stride = deform_pair(stride, "stride")
    padding = deform_pair(padding, "padding")
    dilation = deform_pair(dilation, "dilation")
    return _OP.run(input, offset, weight, bias, stride, padding, dilation, mask)


def _layout(tensor):
    """The layout the kernels write (csrc/deform_conv2d.h: deform_memory_format)."""
    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _forward_fake(input, offset, weight, bias, stride, padding, dilation, mask):
    out_shape, _, _ = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask)
    return torch.empty(out_shape, dtype=input.dtype, device=input.device, memory_format=_layout(input))


def _backward_fake(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask):
    check_deform_conv2d_backward_args(grad_output, input, offset, weight, mask, stride, padding, dilation)

    def like(tensor, wanted):
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device,
                           memory_format=_layout(tensor)) if wanted else None

    return (
        like(input, output_mask[0]),
        like(offset, output_mask[1]),
        like(mask, output_mask[2]) if mask is not None else None,
        weight.new_empty(weight.shape) if output_mask[3] else None,
        grad_output.new_empty((weight.shape[0],)) if output_mask[4] else None,
    )


torch.library.register_fake("fastconv::deform_conv2d")(_forward_fake)
torch.library.register_fake("fastconv::_deform_conv2d_backward")(_backward_fake)


# --- autograd of the Triton op (the C++ op's forward is in csrc/autograd.cpp, the same contract) and of both
# backward ops (the double backward) ----------------------------------------------------------------------------
def _setup_forward(ctx, inputs, output):
    del output
    input, offset, weight, bias, stride, padding, dilation, mask = inputs
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation)
    ctx.save_for_backward(input, offset, weight, mask)


def _make_forward_grad(backward_op):
    def grad(ctx, grad_output):
        input, offset, weight, mask = ctx.saved_tensors
        wants = ctx.needs_input_grad
        output_mask = [wants[0], wants[1], wants[7] and mask is not None, wants[2], wants[3] and ctx.has_bias]
        grads = backward_op(grad_output, input, offset, weight, mask, *ctx.conv_args, output_mask)
        grad_input, grad_offset, grad_mask, grad_weight, grad_bias = (
            g if wanted else None for g, wanted in zip(grads, output_mask))
        return grad_input, grad_offset, grad_weight, grad_bias, None, None, None, grad_mask

    return grad


def _setup_backward(ctx, inputs, output):
    del output
    grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask = inputs
    ctx.save_for_backward(grad_output, input, offset, weight, mask)
    ctx.conv_args = (stride, padding, dilation)
    ctx.output_mask = output_mask


def _backward_grad(ctx, *grad_grads):
    """Double backward through the plain-ATen composition (differentiable bilinear im2col): rebuild the
    gradients with ATen ops and differentiate them. Rarely used (gradgradcheck, Hessian-vector products), so
    clarity wins over speed. torchvision has no double backward at all."""
    grad_output, input, offset, weight, mask = ctx.saved_tensors
    with torch.enable_grad():
        go, x, off, w = (t.detach().requires_grad_(True) for t in (grad_output, input, offset, weight))
        m = mask.detach().requires_grad_(True) if mask is not None else None
        out = _reference.deform_conv2d(x, off, w, None, *ctx.conv_args, m)
        first = [x, off, m if m is not None else x, w]  # placeholder for a missing mask, never wanted then
        grads = list(torch.autograd.grad(out, first, go, create_graph=True))
        grads.append(go.sum((0, 2, 3)))
        pairs = [(g, gg) for g, gg, wanted in zip(grads, grad_grads, ctx.output_mask) if wanted and gg is not None]
        sources = [go, x, off, w] + ([m] if m is not None else [])
        if not pairs:
            return (None,) * 9
        result = torch.autograd.grad([g for g, _ in pairs], sources, [gg for _, gg in pairs], allow_unused=True)
    d_mask = result[4] if m is not None else None
    return (result[0], result[1], result[2], result[3], d_mask, None, None, None, None)


# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd("fastconv::_deform_conv2d_backward", _backward_grad, setup_context=_setup_backward)


# --- Triton op -----------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::deform_conv2d_triton", mutates_args=())
def deform_conv2d_triton(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    mask: Optional[torch.Tensor],
) -> torch.Tensor:
    check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask)
    from fastconv.triton_kernels import deform_conv2d as kernels  # imports triton: only when used

    return kernels.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


# infer_schema cannot express optional outputs (the unrequested gradients): spell the schema out.
@torch.library.custom_op(
    "fastconv::_deform_conv2d_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, Tensor? mask, SymInt[2] stride, "
    "SymInt[2] padding, SymInt[2] dilation, bool[5] output_mask) -> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?)",
)
def _deform_conv2d_backward_triton(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask):
    """_deform_conv2d_backward in Triton: same gradients, layouts and output_mask; None where not wanted."""
    check_deform_conv2d_backward_args(grad_output, input, offset, weight, mask, stride, padding, dilation)
    if output_mask[0]:
        # Same policy as the CUDA backward: raises under torch.use_deterministic_algorithms(True), warns
        # with warn_only=True.
        alert_not_deterministic("fastconv deform_conv2d backward in Triton (grad_input is accumulated with "
                                "atomic adds; the CPU backend's backward is deterministic)")
    from fastconv.triton_kernels import deform_conv2d as kernels  # imports triton: only when used

    return kernels.deform_conv2d_backward(grad_output, input, offset, weight, mask, stride, padding, dilation,
                                          output_mask)


deform_conv2d_triton.register_fake(_forward_fake)
_deform_conv2d_backward_triton.register_fake(_backward_fake)
deform_conv2d_triton.register_autograd(_make_forward_grad(_deform_conv2d_backward_triton), setup_context=_setup_forward)
# The double backward: the same plain-ATen composition as the C++ op's.
_deform_conv2d_backward_triton.register_autograd(_backward_grad, setup_context=_setup_backward)


_OP = register_op(
    "deform_conv2d",
    autocast="lower",
    cpu=torch.ops.fastconv.deform_conv2d,
    cuda=torch.ops.fastconv.deform_conv2d,
    triton=deform_conv2d_triton,
    reference=_reference.deform_conv2d,
)
