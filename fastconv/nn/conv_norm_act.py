"""Conv2d + BatchNorm2d + activation blocks: `fold_bn` and a drop-in `Conv2dNormActivation`."""
import copy
from typing import Optional, Tuple

import torch
import torchvision
from torch import nn

from fastconv import ops
from fastconv.ops._checks import resolve_conv2d_act_args
from fastconv.ops.conv2d_act import PackedWeight, conv2d_act_constant
from fastconv.nn.batchnorm import _APPLY, batch_norm_module, has_hooks

# Activation modules a fused op can apply in its epilogue, by the op's activation name.
FUSABLE_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}


def fold_bn_parameters(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of one convolution equal to ``bn(conv(x))`` with bn in eval mode.

    weight = conv.weight * s per output channel and bias = (conv.bias - running_mean) * s + beta, with
    s = gamma / sqrt(running_var + eps). Computed in float64, returned in conv.weight's dtype;
    differentiable in the parameters.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fold_bn: conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fold_bn: bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn has no running statistics (track_running_stats=False): nothing to fold")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_bn: bn.num_features ({bn.num_features}) must equal conv.out_channels "
                         f"({conv.out_channels})")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    return weight.to(conv.weight.dtype), shift.to(conv.weight.dtype)


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` equal to ``bn(conv(x))`` with ``bn`` in eval mode (its running statistics), like
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``; ``conv`` and ``bn`` are left untouched. The result always
    has a bias. Works for any groups/stride/padding/dilation (the fold is per output channel). For
    inference: training-mode BN normalises with batch statistics, which no convolution equals.
    """
    weight, bias = fold_bn_parameters(conv, bn)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    fused.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
    return fused


def conv2d_activation(x, weight, bias, stride, padding, dilation, groups, activation: Optional[str]):
    """Convolution with bias and activation in the epilogue (the eval form of conv-BN-act):
    fastconv.ops.conv2d_act, which routes depthwise configurations to depthwise_conv2d on CUDA/Triton."""
    return ops.conv2d_act(x, weight, bias, stride, padding, dilation, groups, activation)


class Adoptable:
    """Mixin: ``cls.adopt(module)`` turns an existing module of the reference class (same attributes and
    submodules) into this class in place, then sets up its fused-forward state (``_init_fast_state``)."""

    @classmethod
    def adopt(cls, module: nn.Module) -> nn.Module:
        module.__class__ = cls
        module._init_fast_state()
        return module

    def _init_fast_state(self):
        pass


def _identities(tensors):
    """Each tensor's storage and version: what a cache of values computed from them is keyed on. Inference tensors
    (a model converted inside torch.inference_mode) have no version counter: their storage alone (they cannot
    be written in place outside inference mode)."""
    try:
        return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)
    except RuntimeError:  # "Inference tensors do not track version counter" (checked only then: ~0.1 us a tensor)
        return tuple(None if t is None else (t.data_ptr(), None if t.is_inference() else t._version) for t in tensors)


class FoldedConvBN:
    """The folded (weight, bias) of a conv + eval-mode BN pair, cached.

    Recomputed whenever a parameter or buffer changes (load_state_dict, an optimizer step, ``.to()``:
    anything that bumps a tensor's version, storage, dtype or device), and after any training-mode call.
    In-place writes through ``.data`` bump no version: made between two eval calls, with no training call
    between, they are not seen (call ``invalidate``, or write without ``.data`` under ``torch.no_grad()``).
    When gradients flow to the
    parameters, or under torch.compile, it folds afresh (differentiable, traceable) instead. Not a Module,
    so holding one adds nothing to a state_dict. In inference it also holds oneDNN's reordered copy of the
    folded weight (``packed``; see fastconv.ops.conv2d_act.PackedWeight), dropped with the fold.
    """

    def __init__(self):
        self._key = None
        self._value = None
        self._prepared = None
        self.packed = PackedWeight()

    @staticmethod
    def _tensors(conv: nn.Conv2d, bn: nn.BatchNorm2d):
        # The modules' own dicts: nn.Module.__getattr__ costs ~0.4 us an attribute, and this runs every call.
        cp, bp, bb = conv._parameters, bn._parameters, bn._buffers
        return (cp["weight"], cp.get("bias"), bp.get("weight"), bp.get("bias"), bb.get("running_mean"),
                bb.get("running_var"))

    def _current_key(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        """What the folded value depends on: each tensor's storage and version, the dtype, the device, eps, and
        the convolution's geometry (which `prepared` resolves)."""
        tensors = self._tensors(conv, bn)
        weight = tensors[0]
        return (_identities(tensors), weight.dtype, weight.device, bn.eps, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.padding_mode)

    def __call__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        tensors = self._tensors(conv, bn)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        if needs_grad or torch.compiler.is_compiling():
            return fold_bn_parameters(conv, bn)
        return self._cached(conv, bn)

    def invalidate(self):
        """Drop the fold: the next inference call folds afresh. Run on every training-mode call, so that writes
        the version counters do not see (through ``.data``) during training are picked up by the next eval."""
        self._key = None

    def _cached(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        key = self._current_key(conv, bn)
        if key != self._key:
            with torch.no_grad():
                self._value = fold_bn_parameters(conv, bn)
            self._prepared = None
            self.packed = PackedWeight()
            self._key = key
        return self._value

    def prepared(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        """``(weight, bias, stride, padding, dilation, groups)`` for ``conv2d_act_constant``: the folded
        parameters with the convolution's arguments resolved once. Only without grad mode and outside
        torch.compile (the caller checks), where the cached fold is always the one to use."""
        weight, bias = self._cached(conv, bn)
        if self._prepared is None:
            self._prepared = (weight, bias) + resolve_conv2d_act_args(weight, conv.stride, conv.padding,
                                                                      conv.dilation, conv.groups)
        return self._prepared


class ConvWeights:
    """A convolution's own (weight, bias) for inference, with its arguments resolved once and oneDNN's prepacked
    copy (``packed``): the BN-less twin of FoldedConvBN, refreshed on the same changes."""

    def __init__(self):
        self._key = None
        self._prepared = None
        self.packed = PackedWeight()

    def invalidate(self):
        """Drop the prepared weights (as FoldedConvBN.invalidate)."""
        self._key = None

    def prepared(self, conv: nn.Conv2d):
        """``(weight, bias, stride, padding, dilation, groups)`` for ``conv2d_act_constant``."""
        params = conv._parameters
        weight, bias = params["weight"], params.get("bias")
        key = (_identities((weight, bias)), weight.dtype, weight.device, conv.stride, conv.padding, conv.dilation,
               conv.groups)
        if key != self._key:
            self._prepared = (weight, bias) + resolve_conv2d_act_args(weight, conv.stride, conv.padding,
                                                                      conv.dilation, conv.groups)
            self.packed = PackedWeight()
            self._key = key
        return self._prepared


def conv_constant(x: torch.Tensor, conv: nn.Conv2d, weights: ConvWeights) -> torch.Tensor:
    """``conv(x)``; in inference, for a plain zero-padded ``nn.Conv2d`` without hooks, through conv2d_act_constant on
    `weights` (the convolution's cache: prepacked on the CPU)."""
    if (not torch.is_grad_enabled() and not torch.compiler.is_compiling() and type(conv) is nn.Conv2d
            and conv.padding_mode == "zeros" and not has_hooks(conv)):
        return conv2d_act_constant(x, *weights.prepared(conv), None, weights.packed)
    weights.invalidate()
    return conv(x)


def can_fold(conv: nn.Module, bn: Optional[nn.Module]) -> bool:
    """Whether bn(conv(x)) runs as one convolution on folded parameters: an eval-mode BN with running statistics
    after a zero-padded convolution whose weight is its own parameter (not computed by a parametrization), neither
    with hooks (which the fused call would skip)."""
    return (
        isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(bn, nn.BatchNorm2d)
        and not bn.training and bn.track_running_stats and bn._buffers.get("running_mean") is not None
        and "weight" in conv._parameters and not has_hooks(conv) and not has_hooks(bn)
    )


def conv_bn_act(x, conv: nn.Conv2d, bn: nn.BatchNorm2d, activation: Optional[str], fold: FoldedConvBN):
    """act(bn(conv(x))): one fused convolution in eval (BN folded); in training the convolution, then BN
    with the activation fused (fastconv.ops.batch_norm_act)."""
    if not can_fold(conv, bn):
        fold.invalidate()
        if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
            return batch_norm_module(bn, conv(x), activation)
        out = bn(conv(x))
        return out if activation is None else _APPLY[activation](out)
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # Inference: the arguments were resolved with the fold (the same call, minus ~10 us of Python), and
        # the folded weight is constant until the fold changes: the CPU may run it prepacked.
        return conv2d_act_constant(x, *fold.prepared(conv, bn), activation, fold.packed)
    weight, bias = fold(conv, bn)
    return conv2d_activation(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, activation)


class Conv2dNormActivation(Adoptable, torchvision.ops.misc.Conv2dNormActivation):
    """Drop-in for ``torchvision.ops.misc.Conv2dNormActivation`` (same arguments, an ``nn.Sequential`` with
    the same state_dict keys), fused in forward.

    In eval with a BatchNorm2d, the BN is folded into the convolution (see FoldedConvBN for the cache) and
    the activation applied in the same epilogue (fastconv.ops.conv2d_act). In training, the convolution, then
    BN with the activation fused (fastconv.ops.batch_norm_act: batch statistics, running statistics updated
    as torch's BatchNorm2d does).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast_state()

    def _init_fast_state(self):
        self._fold = FoldedConvBN()
        self._members = tuple(self._modules.values())
        last = self[-1]
        self._activation = FUSABLE_ACTIVATIONS.get(type(last)) if len(self) > 1 else None
        norm = self[1] if len(self) > 1 and isinstance(self[1], nn.BatchNorm2d) else None
        # Fusable: exactly conv, BN and optionally an activation the epilogue implements.
        self._fusable = norm is not None and len(self) == 2 + (self._activation is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members = tuple(self._modules.values())
        if not torch.compiler.is_compiling() and members != self._members:
            self._init_fast_state()  # a member was replaced, appended or deleted since construction
        if not self._fusable or not isinstance(members[0], nn.Conv2d) or (
                self._activation is not None and has_hooks(members[-1])):
            return super().forward(x)
        return conv_bn_act(x, members[0], members[1], self._activation, self._fold)
