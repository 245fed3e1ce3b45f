"""Convolution with the bias and activation fused in its epilogue: ``fastconv.ops.conv2d_act``.

The eval form of conv-BN-act: fold the BN into the convolution (``fastconv.nn.fold_bn``), then one
``conv2d_act``. Backends: CPU = ATen's convolution (oneDNN, bias inside it) + one vectorised activation pass;
CUDA = a templated implicit-GEMM kernel (WMMA tensor cores for float16/bfloat16); Triton = an implicit GEMM
with tl.dot. Depthwise configurations (groups == C_in, C_out a multiple of C_in) run on the CUDA and Triton
backends through ``depthwise_conv2d``'s kernels and fused epilogue, and on the CPU when the input is
channels_last or the CPU kernels run their AVX-512 variant (where they beat oneDNN's; with AVX2, oneDNN's is the
faster one in NCHW: benches/RESULTS.md).

Autograd: the forward saves only what the requested gradients need (weight always; input for grad_weight or
hardswish/silu; the output for relu/relu6). The backward is the activation derivative in one elementwise
pass, then ATen's convolution_backward. hardswish/silu need the pre-activation: the backward recomputes it
(one convolution) rather than keep a second activation-sized tensor alive from the forward, and rather than
give the op a second, usually empty, output; the same trade as ``depthwise_conv2d``. Training conv-BN-act
(``Conv2dNormActivation``) runs conv + ``batch_norm_act`` and never pays it.
"""
import functools
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch._prims_common import suggest_memory_format

from fastconv import _backend
from fastconv.ops import _autocast, _reference
from fastconv.ops._checks import (
    check_conv2d_act_args,
    check_conv2d_act_backward_args,
    resolve_conv2d_act_args,
)
from fastconv.ops._registry import register_op
from fastconv.ops.depthwise_conv2d import _OP as _DEPTHWISE_OP
from fastconv.ops.depthwise_conv2d import _activation_derivative

_PairOrInt = Union[int, Sequence[int]]

# Backends whose depthwise configurations run through depthwise_conv2d's kernels: always on CUDA and Triton; on
# the CPU for channels_last input up to batch _CPU_CHANNELS_LAST_DEPTHWISE_MAX_BATCH, and for NCHW input where the
# CPU kernels run their AVX-512 variant (its row and channel-blocked paths: 1.1-1.9x oneDNN on every MobileNetV2
# layer; with AVX2, oneDNN stays faster on the two large stride-1 layers, so NCHW keeps oneDNN there;
# benches/RESULTS.md). channels_last, fused ReLU6, against oneDNN on a prepacked weight with the same post-op,
# summed over MobileNetV2's depthwise layers (2 threads; 1 thread): batch 1 1.37x (1.28x), 2 1.08x, 4 1.09x
# (0.97x), 8 1.00x, 16 0.86x, 32 0.89x (0.83x). In NCHW the kernel stays 2.2-2.5x ahead up to batch 32.
_DEPTHWISE_ROUTED = ("cuda", "triton")
_CPU_CHANNELS_LAST_DEPTHWISE_MAX_BATCH = 4


@functools.lru_cache(maxsize=None)
def _cpu_nchw_depthwise_routed() -> bool:
    import fastconv

    return fastconv.BUILD_INFO["binary"].get("cpu_isa") == "avx512"


def _routes_to_depthwise(backend, input, weight, groups):
    if not _is_depthwise(input, weight, groups):
        return False
    if backend in _DEPTHWISE_ROUTED:
        return True
    if backend != "cpu":
        return False
    if _memory_format(input) == torch.channels_last:
        return input.shape[0] <= _CPU_CHANNELS_LAST_DEPTHWISE_MAX_BATCH
    return _cpu_nchw_depthwise_routed()


def conv2d_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _PairOrInt = 1,
    padding: Union[str, _PairOrInt] = 0,
    dilation: _PairOrInt = 1,
    groups: int = 1,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``F.conv2d(input, weight, bias, stride, padding, dilation, groups)`` followed by ``activation``.

    Args:
        input: ``(N, C_in, H, W)``, float32/float16/bfloat16 (float64 on the CPU), NCHW or channels_last.
        weight: ``(C_out, C_in / groups, kh, kw)``, the input's dtype and device.
        bias: optional ``(C_out,)``.
        stride, dilation: int or pair, positive.
        padding: int, pair, ``"valid"`` or ``"same"`` (stride 1 only, split like F.conv2d).
        groups: positive, dividing C_in and C_out.
        activation: None, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``.

    Returns:
        ``(N, C_out, H_out, W_out)`` in the input's memory format (channels_last stays channels_last).
    """
    stride, padding, dilation, groups = resolve_conv2d_act_args(weight, stride, padding, dilation, groups)
    return conv2d_act_resolved(input, weight, bias, stride, padding, dilation, groups, activation)


def conv2d_act_resolved(input, weight, bias, stride, padding, dilation, groups, activation):
    """conv2d_act with its arguments already in the kernels' form (resolve_conv2d_act_args: stride and dilation
    pairs, padding (top, bottom, left, right)). Modules that call it on every forward resolve once (see
    fastconv.nn.conv_norm_act.FoldedConvBN.prepared); every argument is still checked by the kernel."""
    if _autocast.any_enabled():  # cast here, before the routing below reads the dtypes (fastconv.ops._autocast)
        input, weight, bias = _autocast.cast(_OP.autocast, (input, weight, bias))
    backend = _backend.resolve(_OP.name, _OP.backends, input.device.type, input)
    return _run(backend, input, weight, bias, stride, padding, dilation, groups, activation)


def _run(backend, input, weight, bias, stride, padding, dilation, groups, activation):
    if _routes_to_depthwise(backend, input, weight, groups):
        check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
        return _DEPTHWISE_OP.run_backend(backend, input, weight, bias, stride, padding, dilation, activation)
    return _OP.run_backend(backend, input, weight, bias, stride, padding, dilation, groups, activation)


# --- CPU inference with a constant weight: oneDNN's convolution on a prepacked weight --------------------------
# ATen's CPU convolution hands oneDNN the weight in PyTorch's plain layout, and oneDNN reorders it into its
# blocked layout on every call: at batch 1 that reorder is up to half the convolution (ResNet-50's 512x512 3x3,
# 9.4 MB: 5.5 ms against 2.2 ms; benches/RESULTS.md). A module whose weight is constant in inference (the folded
# conv-BN of fastconv.nn.conv_norm_act) keeps the reordered copy and runs oneDNN's convolution with the
# activation as its post-op, as inductor does for frozen graphs. Only for float32 channels_last input: in NCHW,
# oneDNN's path with a blocked weight measured slower on half of MobileNetV2's 1x1 layers.
_ONEDNN_POST_OPS = {
    None: ("none", []),
    "relu": ("relu", []),
    "relu6": ("hardtanh", [0.0, 6.0]),
    "hardswish": ("hardswish", []),
    "silu": ("swish", []),
}


class PackedWeight:
    """oneDNN's reordered copy of one constant convolution weight, made for the shape, dtype and device of the
    input it last served (a new input shape repacks: one reorder, which ATen pays on every call). Hold one per
    constant weight and drop it when the weight changes. Copies and pickles of it are empty (an opaque oneDNN
    tensor has no storage to copy): they pack again on first use."""

    __slots__ = ("_entry", "_call")

    def __init__(self):
        self._entry = (None, None)  # (key, packed weight), replaced as one, so concurrent callers see a pair
        self._call = (None, None)  # (call key, runner): conv2d_act_constant's dispatch, decided once per input kind

    def __reduce__(self):
        return PackedWeight, ()

    def get(self, input, weight, bias, stride, padding, dilation, groups, activation):
        key = (input.shape, input.dtype, input.device, activation)
        cached_key, packed = self._entry
        if key != cached_key:
            # The checks hold for every later input with this key: the weight and bias are constant.
            check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, [padding[0], padding[2]], list(stride), list(dilation), groups, list(input.shape))
            self._entry = (key, packed)
        return packed


def _aten_uses_onednn(input, weight, stride, dilation, groups) -> bool:
    """Whether ATen's CPU convolution would run oneDNN for this float32 call (ConvParams::use_mkldnn in
    aten/src/ATen/native/Convolution.cpp). Where it does not (a 1x1 convolution on one thread; a batch-1 input
    of at most 20480 elements with a kernel of at most 3x3 and no groups), its native path is the faster one:
    each oneDNN call costs ~50 us of setup here (measured on a 1x8x2x2 input: 55 us against 10 us for F.conv2d),
    which a prepacked weight does not save (ShuffleNetV2 x0.5 at batch 1 ran 25 % slower prepacked everywhere)."""
    n, c, h, w = input.shape
    kh, kw = weight.shape[-2:]
    return ((stride != (1, 1) or dilation != (1, 1) or n >= 16 or (kh, kw) != (1, 1) or torch.get_num_threads() > 1)
            and (groups > 1 or (kh > 3 and kw > 3) or n > 1 or n * c * h * w > 20480))


# The CPU kernel runs a pointwise convolution on channels_last float input as one GEMM over the pixels
# (csrc/cpu/conv2d_act.cpp). Up to this many multiply-adds that beat oneDNN's call on a prepacked weight, whose
# setup is a fixed ~25 us; above it oneDNN won. Measured at batch 1 on this project's AVX-512 host, prepacked
# time / GEMM time, 2 threads (1 thread): ShuffleNetV2's 1x1 layers at 0.45M-2.6M multiply-adds 1.3-2.4
# (1.4-2.2); MobileNetV2's at 4.8M 0.95-1.35 (0.99-1.3), at 7.5M-11M 0.86-1.11 (0.65-1.07); ResNet-50's (26M and
# up) 0.55-0.9. The kernel itself keeps to the same bound (csrc/cpu/conv2d_act.cpp: kGemmMaxMacs).
_GEMM_MAX_MACS = 1 << 22


def _small_pointwise(input, weight, stride, padding, groups) -> bool:
    """A 1x1 convolution the CPU kernel runs as a GEMM, at most _GEMM_MAX_MACS multiply-adds."""
    return (weight.shape[2] == 1 and weight.shape[3] == 1 and groups == 1 and stride[0] == 1 and stride[1] == 1
            and not any(padding) and input.numel() * weight.shape[0] <= _GEMM_MAX_MACS)


def _prepackable(input, weight, stride, padding, dilation, groups) -> bool:
    """Whether the CPU backend runs this call on a prepacked weight (see PackedWeight)."""
    return (input.dtype == torch.float32 and input.dim() == 4 and input.device.type == "cpu"
            and padding[0] == padding[1] and padding[2] == padding[3] and _memory_format(input) == torch.channels_last
            and torch._C._get_mkldnn_enabled() and torch.backends.mkldnn.is_available()
            and not _routes_to_depthwise("cpu", input, weight, groups)
            and not _small_pointwise(input, weight, stride, padding, groups)
            and _aten_uses_onednn(input, weight, tuple(stride), tuple(dilation), groups))


def conv2d_act_constant(input, weight, bias, stride, padding, dilation, groups, activation, packed: PackedWeight):
    """conv2d_act_resolved for a weight and bias that stay constant while `packed` is held, without autograd
    (the caller runs it only in inference: grad mode off, outside torch.compile). On the CPU backend, float32
    channels_last input runs oneDNN on `packed`'s reordered weight with the activation fused (a channels_last view
    that is not dense, such as ShuffleNetV2's channel split, is copied dense first, as ATen's convolution does);
    everything else is conv2d_act_resolved.

    What to run depends only on the input's kind (shape, strides, dtype, device), the backend setting, the thread
    count and whether oneDNN is enabled, and the arguments are constant: it is decided on the first call of each
    kind, its checks run then, and later calls of that kind go straight to the op (the decision and checks cost
    ~10 us of Python a call, as much as a small convolution; ShuffleNetV2 x0.5 runs 56 of these per image)."""
    if _autocast.any_enabled() and torch.is_autocast_enabled(input.device.type):
        # The prepacked weight and the cached runner are float32; autocast runs the call in its dtype.
        return conv2d_act_resolved(input, weight, bias, stride, padding, dilation, groups, activation)
    key = (input.shape, input.stride(), input.dtype, input.device, activation, _backend.get_backend(),
           _backend.auto_choices(), torch.get_num_threads(), torch._C._get_mkldnn_enabled())
    cached_key, run = packed._call
    if key != cached_key:
        run = _constant_call(input, weight, bias, stride, padding, dilation, groups, activation, packed)
        packed._call = (key, run)
    return run(input)


def _constant_call(input, weight, bias, stride, padding, dilation, groups, activation, packed: PackedWeight):
    """The runner conv2d_act_constant uses for inputs of `input`'s kind: a function of the input alone."""
    backend = _backend.resolve(_OP.name, _OP.backends, input.device.type, input)
    if (backend == "cpu" and activation in _ONEDNN_POST_OPS
            and _prepackable(input, weight, stride, padding, dilation, groups)):
        attr, scalars = _ONEDNN_POST_OPS[activation]
        weight_packed = packed.get(input, weight, bias, stride, padding, dilation, groups, activation)
        op = torch.ops.mkldnn._convolution_pointwise.default
        args = (weight_packed, bias, [padding[0], padding[2]], list(stride), list(dilation), groups, attr, scalars, "")
        if input.is_contiguous(memory_format=torch.channels_last):
            return lambda x: op(x, *args)
        return lambda x: op(x.contiguous(memory_format=torch.channels_last), *args)
    if _routes_to_depthwise(backend, input, weight, groups):  # (as _run, with the checks run once here)
        check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
        return _DEPTHWISE_OP.runner(backend, weight, bias, stride, padding, dilation, activation)
    return _OP.runner(backend, weight, bias, stride, padding, dilation, groups, activation)


def _is_depthwise(input, weight, groups):
    channels = input.shape[1] if input.dim() == 4 else -1
    return groups == channels and weight.dim() == 4 and weight.shape[1] == 1 and weight.shape[0] % channels == 0


def _memory_format(tensor):
    """The layout the kernels write (csrc/conv2d_act.h: conv2d_act_memory_format)."""
    # The strides flags are cached on the tensor: a dense channels_last tensor that is not also NCHW-dense is
    # unambiguous, and skips suggest_memory_format's stride walk (a few microseconds, on every call).
    if tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous():
        return torch.channels_last
    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _forward_fake(input, weight, bias, stride, padding, dilation, groups, activation):
    out_shape = check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
    return torch.empty(out_shape, dtype=input.dtype, device=input.device, memory_format=_memory_format(input))


def _backward_fake(grad_output, input, weight, bias, output, input_size, stride, padding, dilation, groups,
                   activation, output_mask):
    check_conv2d_act_backward_args(grad_output, input, weight, bias, output, input_size, stride, padding, dilation,
                                   groups, activation, output_mask)
    layout = _memory_format(input if input is not None else grad_output)
    grad_input = (torch.empty(input_size, dtype=weight.dtype, device=weight.device, memory_format=layout)
                  if output_mask[0] else None)
    grad_weight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


torch.library.register_fake("fastconv::conv2d_act")(_forward_fake)
torch.library.register_fake("fastconv::_conv2d_act_backward")(_backward_fake)


# --- autograd of the Triton op (the C++ op's forward is in csrc/autograd.cpp, the same contract) and of both
# backward ops (the double backward) ----------------------------------------------------------------------------
def _setup_forward(ctx, inputs, output):
    save_for_conv_backward(ctx, ctx.needs_input_grad[:3], inputs, output)


def save_for_conv_backward(ctx, wants, conv_inputs, output):
    """Saves what conv2d_act's backward needs for the gradients `wants` (input, weight, bias): the weight always,
    the input for grad_weight or hardswish/silu, the bias for hardswish/silu, `output` for relu/relu6; and
    ctx.input_size, ctx.has_bias, ctx.conv_args. The same contract as csrc/autograd.cpp's save_conv_inputs."""
    input, weight, bias, stride, padding, dilation, groups, activation = conv_inputs
    any_grad = any(wants)
    preact = activation in ("hardswish", "silu")
    ctx.input_size = tuple(input.shape)
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation, groups, activation)
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
                None, None, None, None, None)

    return grad


def _setup_backward(ctx, inputs, output):
    del output  # the gradients; the double backward rebuilds them from the inputs
    (grad_output, input, weight, bias, forward_output, input_size, stride, padding, dilation, groups, activation,
     mask) = inputs
    ctx.save_for_backward(grad_output, input, weight, bias, forward_output)
    ctx.input_size = input_size
    ctx.conv_args = (stride, padding, dilation, groups, activation)
    ctx.output_mask = mask


def _backward_grad(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Double backward through the plain-ATen composition (as depthwise_conv2d's): rebuild the backward with
    differentiable ATen ops and differentiate it. Rarely used, so clarity wins over speed here."""
    grad_output, input, weight, bias, output = ctx.saved_tensors
    stride, padding, dilation, groups, activation = ctx.conv_args
    with torch.enable_grad():
        go = grad_output.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        # The vjp of the convolution with respect to its input does not depend on the input's values.
        x = (input if input is not None else weight.new_zeros(ctx.input_size)).detach().requires_grad_(True)
        b = bias.detach().requires_grad_(True) if bias is not None else None
        preact = None
        if activation in ("hardswish", "silu"):
            preact = _reference.conv2d_act(x, w, b, stride, padding, dilation, groups, None)
        factor = _activation_derivative(activation, preact, output)
        grad_preact = go if factor is None else go * factor
        linear = _reference.conv2d_act(x, w, None, stride, padding, dilation, groups, None)
        grad_x, grad_w = torch.autograd.grad(linear, [x, w], grad_preact, create_graph=True)
        grads = [grad_x, grad_w, grad_preact.sum((0, 2, 3))]
        pairs = [(g, gg) for g, gg, wanted in zip(grads, (grad_grad_input, grad_grad_weight, grad_grad_bias),
                                                  ctx.output_mask) if wanted and gg is not None]
        sources = [go, x, w] + ([b] if b is not None else [])
        if not pairs:
            return (None,) * 12
        result = torch.autograd.grad([g for g, _ in pairs], sources, [gg for _, gg in pairs], allow_unused=True)
    d_grad_output, d_input, d_weight = result[:3]
    d_bias = result[3] if b is not None else None
    return (d_grad_output, d_input if input is not None else None, d_weight, d_bias) + (None,) * 8


# The forward op's autograd is C++ (csrc/autograd.cpp); the backward op's, its double backward, is this.
torch.library.register_autograd("fastconv::_conv2d_act_backward", _backward_grad, setup_context=_setup_backward)


# --- Triton ops ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fastconv::conv2d_act_triton", mutates_args=())
def conv2d_act_triton(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    activation: Optional[str],
) -> torch.Tensor:
    check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
    from fastconv.triton_kernels import conv2d_act as kernels  # imports triton: only when used

    return kernels.conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation)


@torch.library.custom_op("fastconv::_conv2d_act_backward_triton", mutates_args=())
def _conv2d_act_backward_triton(
    grad_output: torch.Tensor,
    input: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    output: Optional[torch.Tensor],
    input_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    activation: Optional[str],
    output_mask: List[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like _conv2d_act_backward, but an unrequested gradient is an empty tensor (a custom_op cannot return
    None); the autograd wrapper drops it."""
    check_conv2d_act_backward_args(grad_output, input, weight, bias, output, input_size, stride, padding, dilation,
                                   groups, activation, output_mask)
    from fastconv.triton_kernels import conv2d_act as kernels

    grads = kernels.conv2d_act_backward(grad_output, input, weight, bias, output, input_size, stride, padding,
                                        dilation, groups, activation, output_mask)
    return tuple(g if g is not None else weight.new_empty(0) for g in grads)


conv2d_act_triton.register_fake(_forward_fake)


@_conv2d_act_backward_triton.register_fake
def _conv2d_act_backward_triton_fake(*args):
    grads = _backward_fake(*args)
    return tuple(g if g is not None else args[2].new_empty(0) for g in grads)


conv2d_act_triton.register_autograd(_make_forward_grad(_conv2d_act_backward_triton), setup_context=_setup_forward)
_conv2d_act_backward_triton.register_autograd(_backward_grad, setup_context=_setup_backward)


_OP = register_op(
    "conv2d_act",
    autocast="lower",
    cpu=torch.ops.fastconv.conv2d_act,
    cuda=torch.ops.fastconv.conv2d_act,
    triton=conv2d_act_triton,
    reference=_reference.conv2d_act,
)
