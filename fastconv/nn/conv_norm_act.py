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


class Conv2dNormActivation(torchvision.ops.misc.Conv2dNormActivation):
    """Drop-in for ``torchvision.ops.misc.Conv2dNormActivation`` (same arguments, an ``nn.Sequential`` with
    the same state_dict keys), fused in forward.

    In eval with a BatchNorm2d, the BN is folded into the convolution and the activation applied in the
    same epilogue. The folded parameters are cached and recomputed whenever a parameter or buffer changes
    (load_state_dict, an optimizer step, ``.to()``: anything that bumps a tensor's version, storage, dtype
    or device); when gradients flow to the parameters they are folded afresh, differentiably. In training,
    the layers run in sequence (BN uses batch statistics and updates its running statistics).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._folded = None
        self._folded_key = None

    def _parts(self):
        conv = self[0]
        norm = self[1] if len(self) > 1 and isinstance(self[1], nn.BatchNorm2d) else None
        last = self[-1]
        activation = FUSABLE_ACTIVATIONS.get(type(last)) if last is not conv and last is not norm else None
        return conv, norm, activation

    def _can_fold(self, conv, norm, activation):
        """Exactly conv, an eval-mode BN with running statistics, and optionally a fusable activation."""
        unfused_modules = len(self) - 1 - (norm is not None) - (activation is not None)
        return (
            norm is not None and not norm.training and norm.track_running_stats and norm.running_mean is not None
            and isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and unfused_modules == 0
        )

    def folded_parameters(self):
        conv, norm, _ = self._parts()
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if needs_grad or torch.compiler.is_compiling():
            return fold_bn(conv, norm)  # traced or differentiated: no cache
        tensors = [t for t in (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
                   if t is not None]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors) + (norm.eps,)
        if key != self._folded_key:
            with torch.no_grad():
                self._folded = fold_bn(conv, norm)
            self._folded_key = key
        return self._folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, activation = self._parts()
        if not self._can_fold(conv, norm, activation):
            return super().forward(x)
        weight, bias = self.folded_parameters()
        return conv2d_activation(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, activation)
