"""Building blocks shared by the timm-compatible model families (Xception, Inception v4, Inception-ResNet v2,
SENet, MobileNet v1): timm's module names, fastconv's fused forward.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastconv import ops
from fastconv.nn import Conv2d
from fastconv.nn.conv_norm_act import Adoptable, FoldedConvBN, can_fold
from fastconv.nn.conv_norm_act import conv_bn_act as _dense_conv_bn_act


def conv_bn_act(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, activation: Optional[str],
                fold: FoldedConvBN) -> torch.Tensor:
    """act(bn(conv(x))) as fastconv.nn.conv_norm_act.conv_bn_act, except that a depthwise ``conv`` (a
    fastconv.nn.Conv2d whose is_depthwise() holds) also runs fastconv.ops.depthwise_conv2d in eval, with the
    BN folded into its weight and bias and the activation in its epilogue. (In training the depthwise conv
    already runs the op, through fastconv.nn.Conv2d.forward.)"""
    if isinstance(conv, Conv2d) and conv.is_depthwise() and can_fold(conv, bn):
        weight, bias = fold(conv, bn)
        return ops.depthwise_conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, activation)
    return _dense_conv_bn_act(x, conv, bn, activation, fold)


class ConvBnAct(Adoptable, nn.Module):
    """Convolution (no bias), BatchNorm, activation with the key layout of timm's ``ConvNormAct``
    (``conv.weight``, ``bn.weight``/``bias``/``running_*``): one fused convolution in eval (BN folded, the
    activation in the epilogue), the convolution then fastconv.ops.batch_norm_act in training.

    Args:
        eps: the BatchNorm epsilon (timm's Inception nets use 1e-3).
        activation: None or a fastconv activation name ("relu", "relu6", ...).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, groups: int = 1,
                 eps: float = 1e-5, activation: Optional[str] = "relu") -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.activation = activation
        self._init_fast_state()

    def _init_fast_state(self):
        self._fold = FoldedConvBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act(x, self.conv, self.bn, self.activation, self._fold)


def classifier(num_features: int, num_classes: int) -> nn.Module:
    """timm's classifier layer: a Linear, or the identity for ``num_classes=0`` (pooled features out)."""
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def classifier_head(x: torch.Tensor, fc: nn.Module, drop_rate: float, training: bool) -> torch.Tensor:
    """timm's ``forward_head``: global average pool, dropout with probability ``drop_rate``, classifier."""
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    if drop_rate > 0.0:
        x = F.dropout(x, drop_rate, training)
    return fc(x)


def init_like_timm_cnn(model: nn.Module) -> None:
    """The initialisation timm's legacy CNN ports use: Kaiming-normal (fan_out, relu) convolutions, BN 1/0
    (Linear layers keep torch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ParallelBranches(nn.Module):
    """An Inception module: every child (a branch, in the order they are registered) sees the same input,
    and their outputs are concatenated along the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)
