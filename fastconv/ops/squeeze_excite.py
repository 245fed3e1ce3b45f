"""Squeeze-and-Excitation (SE-ResNet, MobileNetV3, EfficientNet): ``fastconv.ops.squeeze_excite``."""
from typing import Optional

import torch

from fastconv.ops import _reference
from fastconv.ops._checks import check_squeeze_excite_args
from fastconv.ops._registry import register_op


def squeeze_excite(
    input: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: Optional[torch.Tensor],
    fc2_weight: torch.Tensor,
    fc2_bias: Optional[torch.Tensor],
    activation: str = "relu",
    gate: str = "sigmoid",
) -> torch.Tensor:
    """The forward of ``torchvision.ops.SqueezeExcitation`` in two passes over ``input``::

        s = gate(conv1x1(act(conv1x1(adaptive_avg_pool2d(input, 1), fc1_weight, fc1_bias)), fc2_weight, fc2_bias))
        out = input * s

    The pooled means are accumulated in float32 (float64 for float64 inputs); the two 1x1 convolutions run
    on (N, C) and (N, Cr) tensors; no intermediate larger than (N, C) is created.

    Args:
        input: ``(N, C, H, W)``, float16/bfloat16/float32 (float64 too). NCHW and channels_last are kept:
            the output has the strides of ``torch.empty_like(input)``.
        fc1_weight: ``(Cr, C, 1, 1)``; fc1_bias: ``(Cr,)`` or None.
        fc2_weight: ``(C, Cr, 1, 1)``; fc2_bias: ``(C,)`` or None.
        activation: ``"relu"`` or ``"silu"`` (between the two convolutions).
        gate: ``"sigmoid"`` or ``"hardsigmoid"`` (MobileNetV3).

    Returns:
        Tensor of the same shape, dtype, device and memory format as ``input``.
    """
    return _OP.run(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)


def _squeeze_excite_fake(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation="relu", gate="sigmoid"):
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    return torch.empty_like(input)


def _squeeze_excite_backward_fake(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    if grad_output.shape != input.shape:
        raise RuntimeError(
            f"squeeze_excite: grad_output must have the input's shape {list(input.shape)}, "
            f"got {list(grad_output.shape)}"
        )
    # Parameter gradients come from matmuls: contiguous, whatever the parameters' strides.
    new = lambda t: None if t is None else t.new_empty(t.shape)  # noqa: E731
    return torch.empty_like(input), new(fc1_weight), new(fc1_bias), new(fc2_weight), new(fc2_bias)


def _save_for_backward(ctx, inputs, output):
    input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate = inputs
    # The backward recomputes the pooled means in its reduction pass over grad_output * input, so the
    # parameters and the input are all it needs (no (N, C, H, W) intermediate is kept).
    ctx.save_for_backward(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    ctx.activation, ctx.gate = activation, gate


def _make_grad(backward_op):
    def grad(ctx, grad_output):
        input, fc1_weight, fc1_bias, fc2_weight, fc2_bias = ctx.saved_tensors
        grads = backward_op(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, ctx.activation, ctx.gate)
        grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)]
        return (*grads, None, None)

    return grad


def _save_backward_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.activation, ctx.gate = inputs[6], inputs[7]


def _twice_differentiable(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    """The op as ATen ops that all have a double backward (F.hardsigmoid's backward has none)."""
    scale = torch.nn.functional.adaptive_avg_pool2d(input, 1)
    scale = torch.nn.functional.conv2d(scale, fc1_weight, fc1_bias)
    scale = torch.relu(scale) if activation == "relu" else torch.nn.functional.silu(scale)
    scale = torch.nn.functional.conv2d(scale, fc2_weight, fc2_bias)
    scale = torch.sigmoid(scale) if gate == "sigmoid" else (scale / 6 + 0.5).clamp(0, 1)
    return scale * input


def _squeeze_excite_double_backward(ctx, *grad_grads):
    """Double backward (rare: gradient penalties, gradgradcheck) by differentiating the plain-ATen composition."""
    saved = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(True) for t in saved]
        grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias = leaves
        out = _twice_differentiable(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, ctx.activation, ctx.gate)
        params = [input, fc1_weight, fc1_bias, fc2_weight, fc2_bias]
        present = [i for i, t in enumerate(params) if t is not None]
        first = torch.autograd.grad(out, [params[i] for i in present], grad_output, create_graph=True)
        pairs = [(g, grad_grads[i]) for g, i in zip(first, present) if grad_grads[i] is not None]
        targets = [t for t in leaves if t is not None]
        second = torch.autograd.grad(
            [g for g, _ in pairs], targets, [gg for _, gg in pairs], allow_unused=True, materialize_grads=True
        ) if pairs else [torch.zeros_like(t) for t in targets]
    second = iter(second)
    return (*[None if t is None else next(second) for t in leaves], None, None)


# --- C++ ops (CPU and CUDA kernels): fake kernels and autograd -------------------------------------------
torch.library.register_fake("fastconv::squeeze_excite")(_squeeze_excite_fake)
torch.library.register_fake("fastconv::_squeeze_excite_backward")(_squeeze_excite_backward_fake)
# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd(
    "fastconv::_squeeze_excite_backward", _squeeze_excite_double_backward, setup_context=_save_backward_inputs
)


# --- Triton ops --------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::squeeze_excite_triton", mutates_args=())
def squeeze_excite_triton(
    input: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: Optional[torch.Tensor],
    fc2_weight: torch.Tensor,
    fc2_bias: Optional[torch.Tensor],
    activation: str = "relu",
    gate: str = "sigmoid",
) -> torch.Tensor:
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    from fastconv.triton_kernels import squeeze_excite as kernels  # imports triton: only when used

    return kernels.squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)


# infer_schema cannot express optional outputs (the absent biases' gradients): spell the schema out.
@torch.library.custom_op(
    "fastconv::_squeeze_excite_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_output, Tensor input, Tensor fc1_weight, Tensor? fc1_bias, Tensor fc2_weight, "
    "Tensor? fc2_bias, str activation, str gate) -> (Tensor, Tensor, Tensor?, Tensor, Tensor?)",
)
def _squeeze_excite_backward_triton(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    _squeeze_excite_backward_fake(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    from fastconv.triton_kernels import squeeze_excite as kernels

    return kernels.squeeze_excite_backward(
        grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate
    )


squeeze_excite_triton.register_fake(_squeeze_excite_fake)
_squeeze_excite_backward_triton.register_fake(_squeeze_excite_backward_fake)
squeeze_excite_triton.register_autograd(_make_grad(_squeeze_excite_backward_triton), setup_context=_save_for_backward)
_squeeze_excite_backward_triton.register_autograd(_squeeze_excite_double_backward, setup_context=_save_backward_inputs)


_OP = register_op(
    "squeeze_excite",
    autocast="input",
    cpu=torch.ops.fastconv.squeeze_excite,
    cuda=torch.ops.fastconv.squeeze_excite,
    triton=squeeze_excite_triton,
    reference=_reference.squeeze_excite,
)
