"""Batch normalisation + activation: ``fastconv.ops.batch_norm_act(...)``."""
from typing import Optional, Tuple

import torch

from fastconv.ops import _reference
from fastconv.ops._checks import check_batch_norm_act_args
from fastconv.ops._registry import register_op


def batch_norm_act(
    input: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)`` followed by
    ``activation`` (None, "relu", "relu6", "hardswish", "silu"), fused.

    Args:
        input: ``(N, C, *)``, at least 2-D; float32/float16/bfloat16 (float64 on the CPU). The output keeps
            the input's memory format (NCHW, channels_last, ...).
        weight, bias: ``(C,)`` or None. running_mean, running_var: ``(C,)`` or None (both or neither).
            With a float16/bfloat16 input these may be float32 (mixed precision, as cuDNN allows).
        training: normalise with the batch statistics (per-channel mean and biased variance, computed in
            float32 -- float64 for float64 input -- with Chan's stable merge of partial (mean, M2)) and update
            the running statistics in place like F.batch_norm:
            ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and the same for
            ``running_var`` with the *unbiased* variance. Otherwise normalise with the running statistics,
            which must then be given (as in F.batch_norm). An empty batch gives an empty output and leaves
            the running statistics untouched (as F.batch_norm); one value per channel raises ValueError.
        momentum: a float. ``torch.nn.BatchNorm2d(momentum=None)`` (cumulative moving average) passes
            ``1 / num_batches_tracked`` here, as does :class:`fastconv.nn.BatchNorm2d`.
        eps: must be positive.

    Gradients flow to input, weight and bias (training and eval formulas differ, as in aten); the double
    backward runs through differentiable ATen ops (see _backward_grad).
    """
    return _OP.run(
        input, weight, bias, running_mean, running_var, training, momentum, eps, activation
    )


def _accumulate_dtype(input):
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _forward_fake(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    check_batch_norm_act_args(input, weight, bias, running_mean, running_var, training, momentum, eps, activation)
    stat = input.new_empty((input.shape[1],), dtype=_accumulate_dtype(input))
    return torch.empty_like(input), stat, torch.empty_like(stat)


def _backward_fake(grad_output, input, weight, bias, save_mean, save_invstd, training, activation):
    weight_dtype = weight.dtype if weight is not None else _accumulate_dtype(input)
    bias_dtype = bias.dtype if bias is not None else weight_dtype
    channels = input.shape[1]
    return (
        torch.empty_like(input),
        input.new_empty((channels,), dtype=weight_dtype),
        input.new_empty((channels,), dtype=bias_dtype),
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, _running_mean, _running_var, training, _momentum, _eps, activation = inputs
    _, save_mean, save_invstd = output
    ctx.mark_non_differentiable(save_mean, save_invstd)
    ctx.training = training
    ctx.activation = activation
    ctx.save_for_backward(input, weight, bias, save_mean, save_invstd)


def _make_backward(backward_op):
    def backward(ctx, grad_output, _grad_save_mean, _grad_save_invstd):
        input, weight, bias, save_mean, save_invstd = ctx.saved_tensors
        grad_input, grad_weight, grad_bias = backward_op(
            grad_output, input, weight, bias, save_mean, save_invstd, ctx.training, ctx.activation
        )
        needs = ctx.needs_input_grad
        return (
            grad_input if needs[0] else None,
            grad_weight if weight is not None and needs[1] else None,
            grad_bias if bias is not None and needs[2] else None,
            None, None, None, None, None, None,
        )

    return backward


def _setup_backward(ctx, inputs, output):
    del output  # the gradients; the double backward rebuilds them from the inputs
    grad_output, input, weight, bias, save_mean, save_invstd, training, activation = inputs
    ctx.save_for_backward(grad_output, input, weight, bias, save_mean, save_invstd)
    ctx.training = training
    ctx.activation = activation


def _differentiable_preactivation(x, weight, bias, save_mean, save_invstd, training):
    """The normalised, scaled and shifted input (before the activation) as differentiable ATen ops, in the
    statistics' dtype (float32 for half inputs, as the kernels compute). Training: the batch mean and variance
    are functions of x. The forward's eps is not an argument of the backward op; it is recovered from the
    saved 1/sqrt(var + eps), so var + eps equals the forward's to rounding and every derivative of it is
    exact (eps is a constant)."""
    compute = save_invstd.dtype
    shape = [1, -1] + [1] * (x.dim() - 2)
    xc = x.to(compute)
    if training:
        dims = [0] + list(range(2, x.dim()))
        mean = xc.mean(dims, keepdim=True)
        var = (xc - mean).square().mean(dims)
        eps = save_invstd.reciprocal().square() - var.detach()
        invstd = (var + eps).rsqrt().view(shape)
    else:
        mean, invstd = save_mean.view(shape), save_invstd.view(shape)
    y = (xc - mean) * invstd
    if weight is not None:
        y = y * weight.to(compute).view(shape)
    if bias is not None:
        y = y + bias.to(compute).view(shape)
    return y


def _backward_grad(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Double backward, through the plain-ATen composition: rebuild the first-order gradients with
    differentiable ATen ops and differentiate them. Rarely used (gradgradcheck, gradient penalties,
    Hessian-vector products), so clarity wins over speed here."""
    grad_output, input, weight, bias, save_mean, save_invstd = ctx.saved_tensors
    with torch.enable_grad():
        go = grad_output.detach().requires_grad_(True)
        x = input.detach().requires_grad_(True)
        params = [p.detach().requires_grad_(True) if p is not None else None for p in (weight, bias)]
        preact = _differentiable_preactivation(x, *params, save_mean, save_invstd, ctx.training)
        out = _reference.ACTIVATION_FUNCTIONS[ctx.activation](preact)
        sources = [x] + [p for p in params if p is not None]
        firsts = torch.autograd.grad(out, sources, go.to(out.dtype), create_graph=True)
        grad_grads = [grad_grad_input] + [gg for p, gg in zip(params, (grad_grad_weight, grad_grad_bias))
                                          if p is not None]
        pairs = [(first, gg) for first, gg in zip(firsts, grad_grads) if gg is not None]
        if not pairs:
            return (None,) * 8
        result = torch.autograd.grad([first for first, _ in pairs], [go] + sources,
                                     [gg.to(first.dtype) for first, gg in pairs], allow_unused=True)
    d_grad_output, d_input, *d_params = result
    d_weight = d_params.pop(0) if params[0] is not None else None
    d_bias = d_params.pop(0) if params[1] is not None else None
    return (d_grad_output, d_input, d_weight, d_bias) + (None,) * 4


# --- C++ ops (CPU and CUDA kernels): fake kernels and autograd -------------------------------------------
torch.library.register_fake("fastconv::batch_norm_act")(_forward_fake)
torch.library.register_fake("fastconv::_batch_norm_act_backward")(_backward_fake)


def _register_autograd_of_mutating_op(qualname, backward, setup_context, writes):
    """torch.library.register_autograd refuses ops that mutate an input (here the running statistics), even
    though the mutated inputs are never differentiated. Register the same generated autograd kernel it would,
    plus the version-counter bump of mutated inputs that torch.library.custom_op registers for mutating ops
    (ADInplaceOrView) for the calls that write (`writes(args)`: batch_norm_act in training; eval reads the running
    statistics and writes nothing), so the Triton op behaves as the C++ op (whose kernels for both keys are in
    csrc/autograd.cpp)."""
    from torch._library import autograd as library_autograd, utils as library_utils

    op = library_utils.lookup_op(qualname)
    namespace, name = library_utils.parse_namespace(qualname)
    library = torch.library.Library(namespace, "IMPL")
    kernel = library_autograd.make_autograd_impl(op, library_autograd.Info(backward, setup_context))
    library.impl(name, kernel, "Autograd", with_keyset=True)
    mutated = [i for i, a in enumerate(op._schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    after = torch._C._after_ADInplaceOrView_keyset

    def ad_inplace_or_view(keyset, *args):
        for index in mutated if writes(args) else ():
            if index < len(args) and args[index] is not None:
                torch.autograd.graph.increment_version(args[index])
        return op.redispatch(keyset & after, *args)

    library.impl(name, ad_inplace_or_view, "ADInplaceOrView", with_keyset=True)
    return library


# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd("fastconv::_batch_norm_act_backward", _backward_grad, setup_context=_setup_backward)


def _batch_norm_act_cpp(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    return torch.ops.fastconv.batch_norm_act(
        input, weight, bias, running_mean, running_var, training, momentum, eps, activation
    )[0]


# --- Triton ops -------------------------------------------------------------------------------------------
# The forward mutates the running statistics, and torch.library.custom_op refuses autograd for mutating ops,
# so it is defined with the same schema as the C++ op on a library fragment (CPU: the interpreter; CUDA).
_TRITON_LIBRARY = torch.library.Library("fastconv", "FRAGMENT")
_TRITON_LIBRARY.define(
    "batch_norm_act_triton(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
    "Tensor(b!)? running_var, bool training, float momentum, float eps, str? activation) "
    "-> (Tensor, Tensor, Tensor)"
)


def _batch_norm_act_triton_kernel(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                  activation):
    check_batch_norm_act_args(input, weight, bias, running_mean, running_var, training, momentum, eps, activation)
    from fastconv.triton_kernels import batch_norm_act as kernels  # imports triton: only when used

    return kernels.batch_norm_act_forward(
        input, weight, bias, running_mean, running_var, training, momentum, eps, activation
    )


for _device in ("CPU", "CUDA"):
    _TRITON_LIBRARY.impl("batch_norm_act_triton", _batch_norm_act_triton_kernel, _device)
batch_norm_act_triton = torch.ops.fastconv.batch_norm_act_triton.default


@torch.library.custom_op("fastconv::_batch_norm_act_backward_triton", mutates_args=())
def batch_norm_act_backward_triton(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    save_mean: torch.Tensor,
    save_invstd: torch.Tensor,
    training: bool,
    activation: Optional[str],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastconv.triton_kernels import batch_norm_act as kernels

    return kernels.batch_norm_act_backward(
        grad_output, input, weight, bias, save_mean, save_invstd, training, activation
    )


torch.library.register_fake("fastconv::batch_norm_act_triton", lib=_TRITON_LIBRARY)(_forward_fake)
batch_norm_act_backward_triton.register_fake(_backward_fake)
_TRITON_AUTOGRAD_LIBRARY = _register_autograd_of_mutating_op(
    "fastconv::batch_norm_act_triton", _make_backward(batch_norm_act_backward_triton), _setup_context,
    writes=lambda args: args[5],  # training
)
batch_norm_act_backward_triton.register_autograd(_backward_grad, setup_context=_setup_backward)


def _batch_norm_act_triton(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    return batch_norm_act_triton(input, weight, bias, running_mean, running_var, training, momentum, eps, activation)[0]


_OP = register_op(
    "batch_norm_act",
    cpu=_batch_norm_act_cpp,
    cuda=_batch_norm_act_cpp,
    triton=_batch_norm_act_triton,
    reference=_reference.batch_norm_act,
)
