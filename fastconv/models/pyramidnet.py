"""PyramidNet (Han, Kim, Kim: "Deep Pyramidal Residual Networks", CVPR 2017), additive widening.

Instead of doubling the width at each downsampling, every residual unit widens by the same step: with N
units in all and widening factor alpha, unit k has ``round(16 + k * alpha / N)`` channels on CIFAR
(``64 + ...`` on ImageNet), eq. (2). Units are pre-activation without the first ReLU (Fig. 6d):

    basic:      BN - 3x3 conv - BN - ReLU - 3x3 conv - BN
    bottleneck: BN - 1x1 conv - BN - ReLU - 3x3 conv - BN - ReLU - 1x1 conv (x4) - BN

and the shortcut is the identity (2x2 average pooling when the unit downsamples) zero-padded to the wider
output (Fig. 5). Module names follow the authors' PyTorch code (conv1/bn1, layerN.M.bnK/convK, bn_final, fc).

Variants as published (the paper counts conv and FC weights, not BN's): ``pyramidnet110_a48`` (CIFAR,
basic, 1.7M, Table 4; 1.76M counted here), ``pyramidnet272_a200`` (CIFAR, bottleneck, 26.0M) and
``pyramidnet200_a300`` (ImageNet, bottleneck, 62.1M, Table 5); ``pyramidnet(depth=, alpha=, bottleneck=,
dataset=)`` builds any other.

fastconv: every conv followed by a BN runs as one conv with the BN folded in eval (the ReLU in its
epilogue) and as conv + fused BN-ReLU (fastconv.ops.batch_norm_act) in training; the BN that opens each
unit, and the final BN-ReLU, run as fastconv.ops.batch_norm_act.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastconv.models._registry import build, register_model
from fastconv.nn.batchnorm import batch_norm_module
from fastconv.nn.conv_norm_act import FoldedConvBN, conv_bn_act

__all__ = ["PyramidNet", "pyramidnet", "pyramidnet110_a48", "pyramidnet200_a300", "pyramidnet272_a200"]


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)


class _PyramidalUnit(nn.Module):
    """Shared forward: BN, then a chain of (conv, BN, activation) stages, plus the padded shortcut."""

    expansion = 1

    def _stages(self):
        raise NotImplementedError

    def _init_folds(self, count: int):
        self._folds = [FoldedConvBN() for _ in range(count)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = batch_norm_module(self.bn1, x, None)
        for (conv, bn, activation), fold in zip(self._stages(), self._folds):
            out = conv_bn_act(out, conv, bn, activation, fold)
        shortcut = x if self.stride == 1 else F.avg_pool2d(x, 2, 2, ceil_mode=True)
        extra_channels = out.shape[1] - shortcut.shape[1]
        if extra_channels > 0:  # zero-padded identity (the paper's shortcut "(b)")
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra_channels))
        return out + shortcut


class BasicUnit(_PyramidalUnit):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv(in_channels, channels, 3, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _conv(channels, channels, 3)
        self.bn3 = nn.BatchNorm2d(channels)
        self._init_folds(2)

    def _stages(self):
        return [(self.conv1, self.bn2, "relu"), (self.conv2, self.bn3, None)]


class BottleneckUnit(_PyramidalUnit):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv(in_channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _conv(channels, channels, 3, stride)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv3 = _conv(channels, channels * self.expansion, 1)
        self.bn4 = nn.BatchNorm2d(channels * self.expansion)
        self._init_folds(3)

    def _stages(self):
        return [(self.conv1, self.bn2, "relu"), (self.conv2, self.bn3, "relu"), (self.conv3, self.bn4, None)]


class PyramidNet(nn.Module):
    """``units_per_stage`` residual units per stage (the first of stages 2+ downsamples), widening by
    ``alpha / sum(units_per_stage)`` channels per unit from ``base_channels``."""

    def __init__(self, units_per_stage: List[int], alpha: float, bottleneck: bool, imagenet_stem: bool,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        unit = BottleneckUnit if bottleneck else BasicUnit
        base_channels = 64 if imagenet_stem else 16
        self.imagenet_stem = imagenet_stem
        if imagenet_stem:  # 7x7 stride-2 conv, BN, ReLU, 3x3 max-pool: ResNet's ImageNet stem
            self.conv1 = nn.Conv2d(in_channels, base_channels, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:  # 3x3 conv, BN (no ReLU: the first unit opens with its own BN)
            self.conv1 = _conv(in_channels, base_channels, 3)
        self.bn1 = nn.BatchNorm2d(base_channels)
        step = alpha / sum(units_per_stage)
        width, in_planes = float(base_channels), base_channels
        for index, count in enumerate(units_per_stage):
            units = []
            for position in range(count):
                width += step
                stride = 2 if index > 0 and position == 0 else 1
                units.append(unit(in_planes, int(round(width)), stride))
                in_planes = int(round(width)) * unit.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*units))
        self.num_stages = len(units_per_stage)
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self._stem_fold = FoldedConvBN()
        for module in self.modules():  # the authors' initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn_act(x, self.conv1, self.bn1, "relu" if self.imagenet_stem else None, self._stem_fold)
        if self.imagenet_stem:
            x = self.maxpool(x)
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        x = batch_norm_module(self.bn_final, x, "relu")
        return self.fc(x.mean((2, 3)))


# ImageNet depths of the authors' code (ResNet's stage layouts; 200 is ResNet-200's).
_IMAGENET_UNITS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3],
                   200: [3, 24, 36, 3]}


def _units(depth: int, bottleneck: bool, dataset: str) -> List[int]:
    if dataset == "imagenet":
        if depth not in _IMAGENET_UNITS:
            raise ValueError(f"pyramidnet: ImageNet depth must be one of {sorted(_IMAGENET_UNITS)}, got {depth}")
        return _IMAGENET_UNITS[depth]
    if dataset != "cifar":
        raise ValueError(f"pyramidnet: dataset must be 'cifar' or 'imagenet', got {dataset!r}")
    layers_per_unit = 3 if bottleneck else 2
    if (depth - 2) % (3 * layers_per_unit) != 0:
        raise ValueError(f"pyramidnet: CIFAR depth must be 6n+2 (basic) or 9n+2 (bottleneck), got {depth}")
    return [(depth - 2) // (3 * layers_per_unit)] * 3


@register_model
def pyramidnet(*, weights=None, progress: bool = True, depth: int = 110, alpha: float = 48,
               bottleneck: Optional[bool] = None, dataset: str = "cifar", **kwargs) -> PyramidNet:
    """PyramidNet of any depth/alpha. ``dataset="cifar"`` (32x32, 3 stages, default 10 classes) or
    ``"imagenet"`` (224x224, 4 stages, 1000 classes). ``bottleneck`` defaults to basic units on CIFAR and,
    as in ResNet, bottlenecks on ImageNet from depth 50."""
    if bottleneck is None:
        bottleneck = dataset == "imagenet" and depth >= 50
    if dataset == "imagenet":
        kwargs.setdefault("num_classes", 1000)
    units = _units(depth, bottleneck, dataset)
    return build(lambda **kw: PyramidNet(units, alpha, bottleneck, dataset == "imagenet", **kw), weights, progress,
                 **kwargs)


@register_model
def pyramidnet110_a48(*, weights=None, progress: bool = True, **kwargs) -> PyramidNet:
    return pyramidnet(weights=weights, progress=progress, depth=110, alpha=48, bottleneck=False, **kwargs)


@register_model
def pyramidnet272_a200(*, weights=None, progress: bool = True, **kwargs) -> PyramidNet:
    return pyramidnet(weights=weights, progress=progress, depth=272, alpha=200, bottleneck=True, **kwargs)


@register_model
def pyramidnet200_a300(*, weights=None, progress: bool = True, **kwargs) -> PyramidNet:
    return pyramidnet(weights=weights, progress=progress, depth=200, alpha=300, bottleneck=True, dataset="imagenet",
                      **kwargs)
