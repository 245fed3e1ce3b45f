"""Convolutional highway networks (Srivastava, Greff, Schmidhuber: "Training Very Deep Networks", NeurIPS
2015; first as "Highway Networks", arXiv:1505.00387).

A highway layer (eq. 3 with the coupled carry gate C = 1 - T)::

    y = H(x) * T(x) + x * (1 - T(x)),   H(x) = ReLU(conv_H(x)),   T(x) = sigmoid(conv_T(x))

with 3x3 convolutions for H and T and the transform gate's bias initialised negative (the paper's -1 to -3;
-1 here by default), so every layer starts close to carrying its input through. The output is computed as
``torch.lerp(x, H(x), T(x))`` = x + T * (H - x), one pass.

``highway_net`` is the paper's CIFAR-10 "Highway B" (Table 1: 19 layers, ~2.3M parameters), the FitNet-4
layout of Romero et al. (ICLR 2015) with its convolutions made highway layers: 3x3 layers of widths
32, 32, 32, 48, 48 | max-pool | 80 x 6 | max-pool | 128 x 6, then a global pool and the classifier
(17 convolutional layers + pool/classifier = 19). A layer that changes the width cannot carry its input, so
it is a plain conv-ReLU; the other 13 are highway layers (2,274,186 parameters with 10 classes).
"""
from typing import Sequence

import torch
from torch import nn

from fastconv.models._registry import build, register_model
from fastconv.nn import Conv2dNormActivation

__all__ = ["HighwayConv2d", "HighwayNet", "highway_net"]


def _conv_relu(in_channels: int, out_channels: int) -> Conv2dNormActivation:
    return Conv2dNormActivation(in_channels, out_channels, 3, norm_layer=None, activation_layer=nn.ReLU)


class HighwayConv2d(nn.Module):
    """One convolutional highway layer: ``x + T(x) * (H(x) - x)``, same width in and out."""

    def __init__(self, channels: int, gate_bias: float = -1.0) -> None:
        super().__init__()
        self.transform = _conv_relu(channels, channels)  # H
        self.gate = nn.Conv2d(channels, channels, 3, padding=1)  # T, before the sigmoid
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lerp(x, self.transform(x), torch.sigmoid(self.gate(x)))


class HighwayNet(nn.Module):
    """Stages of 3x3 layers separated by 2x2 max-pooling; each stage's first layer sets its width (a plain
    conv-ReLU when the width changes, else a highway layer), the rest are highway layers."""

    def __init__(self, stage_widths: Sequence[Sequence[int]], num_classes: int = 10, in_channels: int = 3,
                 gate_bias: float = -1.0) -> None:
        super().__init__()
        stages = []
        channels = in_channels
        for widths in stage_widths:
            layers = []
            for width in widths:
                layers.append(HighwayConv2d(width, gate_bias) if width == channels else _conv_relu(channels, width))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, stage in enumerate(self.stages):
            if index > 0:
                x = self.pool(x)
            x = stage(x)
        return self.fc(x.mean((2, 3)))


# Highway B / FitNet-4: five layers at 32-48 channels, six at 80, six at 128.
_HIGHWAY_B = [[32, 32, 32, 48, 48], [80] * 6, [128] * 6]


@register_model
def highway_net(*, weights=None, progress: bool = True, **kwargs) -> HighwayNet:
    """The 19-layer convolutional highway network for 32x32 CIFAR inputs (``num_classes=10``)."""
    return build(lambda **kw: HighwayNet(_HIGHWAY_B, **kw), weights, progress, **kwargs)
