"""Conv2d + BatchNorm2d + activation blocks: `fold_bn` and a drop-in `Conv2dNormActivation`."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# Activation modules a fused op can apply in its epilogue, by the op's activation name.
FUSABLE_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}
_APPLY = {
    "relu": lambda x: F.relu(x, inplace=True),
    "relu6": lambda x: F.hardtanh(x, 0.0, 6.0, inplace=True),
    "hardswish": lambda x: F.hardswish(x, inplace=True),
    "silu": lambda x: F.silu(x, inplace=True),
}


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of one convolution equal to ``bn(conv(x))`` with bn in eval mode.

    weight = conv.weight * gamma / sqrt(running_var + eps) per output channel, and
    bias = (conv.bias - running_mean) * gamma / sqrt(running_var + eps) + beta. Computed in float32 (or the
    parameters' dtype if wider) and returned in conv.weight's dtype. Differentiable in the parameters.
    """
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("fold_bn: the BatchNorm has no running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_bn: bn.num_features ({bn.num_features}) must equal conv.out_channels "
                         f"({conv.out_channels})")
    dtype = torch.promote_types(conv.weight.dtype, torch.float32)
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if conv.bias is not None:
        shift = shift + conv.bias.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    weight = conv.weight.to(dtype) * scale.reshape(-1, 1, 1, 1)
    return weight.to(conv.weight.dtype), shift.to(conv.weight.dtype)


def conv2d_activation(x, weight, bias, stride, padding, dilation, groups, activation: Optional[str]):
    """Convolution with bias and activation in the epilogue (the eval form of conv-BN-act)."""
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return out if activation is None else _APPLY[activation](out)


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


class FoldedConvBN:
    """The folded (weight, bias) of a conv + eval-mode BN pair, cached.

    Recomputed whenever a parameter or buffer changes (load_state_dict, an optimizer step, ``.to()``:
    anything that bumps a tensor's version, storage, dtype or device). When gradients flow to the
    parameters, or under torch.compile, it folds afresh (differentiable, traceable) instead. Not a Module,
    so holding one adds nothing to a state_dict.
    """

    def __init__(self):
        self._key = None
        self._value = None

    def __call__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        tensors = [t for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
                   if t is not None]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if needs_grad or torch.compiler.is_compiling():
            return fold_bn(conv, bn)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors) + (bn.eps,)
        if key != self._key:
            with torch.no_grad():
                self._value = fold_bn(conv, bn)
            self._key = key
        return self._value


def can_fold(conv: nn.Module, bn: Optional[nn.Module]) -> bool:
    return (
        isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(bn, nn.BatchNorm2d)
        and not bn.training and bn.track_running_stats and bn.running_mean is not None
    )


def conv_bn_act(x, conv: nn.Conv2d, bn: nn.BatchNorm2d, activation: Optional[str], fold: FoldedConvBN):
    """act(bn(conv(x))): one fused convolution in eval (BN folded), the three layers in training."""
    if not can_fold(conv, bn):
        out = bn(conv(x))
        return out if activation is None else _APPLY[activation](out)
    weight, bias = fold(conv, bn)
    return conv2d_activation(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, activation)


class Conv2dNormActivation(Adoptable, torchvision.ops.misc.Conv2dNormActivation):
    """Drop-in for ``torchvision.ops.misc.Conv2dNormActivation`` (same arguments, an ``nn.Sequential`` with
    the same state_dict keys), fused in forward.

    In eval with a BatchNorm2d, the BN is folded into the convolution (see FoldedConvBN for the cache) and
    the activation applied in the same epilogue. In training, the layers run in sequence (BN uses batch
    statistics and updates its running statistics).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast_state()

    def _init_fast_state(self):
        self._fold = FoldedConvBN()
        last = self[-1]
        self._activation = FUSABLE_ACTIVATIONS.get(type(last)) if len(self) > 1 else None
        norm = self[1] if len(self) > 1 and isinstance(self[1], nn.BatchNorm2d) else None
        # Fusable: exactly conv, BN and optionally an activation the epilogue implements.
        self._fusable = norm is not None and len(self) == 2 + (self._activation is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable or not can_fold(self[0], self[1]):
            return super().forward(x)
        return conv_bn_act(x, self[0], self[1], self._activation, self._fold)
