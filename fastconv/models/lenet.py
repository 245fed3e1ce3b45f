"""LeNet-5 (LeCun, Bottou, Bengio, Haffner: "Gradient-Based Learning Applied to Document Recognition",
Proceedings of the IEEE 86(11), 1998, Section II.B and Fig. 2), for 32x32 single-channel images.

    C1: 6 maps, 5x5 conv (28x28)  ->  S2: 2x2 subsampling (14x14)
    C3: 16 maps, 5x5 conv (10x10) ->  S4: 2x2 subsampling (5x5)
    C5: 120 maps, 5x5 conv (1x1)  ->  F6: 84 units  ->  output: one unit per class

Two forms, by the ``classic`` flag:

* modern (default): ReLU and 2x2 max-pooling;
* classic: the paper's squashing function ``f(a) = A tanh(S a)`` with A = 1.7159, S = 2/3 (Appendix A) and
  2x2 average-pooling subsampling.

Both have 61,706 parameters with 10 classes. Like every modern re-implementation they simplify three details
of the paper: C3 connects every map to all six S2 maps (the paper's Table I connects each to a subset: 1,516
instead of 2,416 parameters), S2/S4 have no trainable coefficient and bias, and the output layer is linear
(trained with softmax cross-entropy) instead of Euclidean RBF units.

C1 reads one input channel, so it *is* a depthwise convolution with depth multiplier 6: it runs
``fastconv.ops.depthwise_conv2d`` (the custom op, forward and backward) with the ReLU fused in its epilogue.
"""
import torch
from torch import nn

from fastconv import nn as fnn
from fastconv import ops
from fastconv.models._registry import build, register_model

__all__ = ["LeNet5", "ScaledTanh", "lenet5"]


class ScaledTanh(nn.Module):
    """LeCun's squashing function ``A * tanh(S * x)``, A = 1.7159, S = 2/3 (1998, Appendix A): f(1) ~= 1."""

    amplitude = 1.7159
    slope = 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, classic: bool = False) -> None:
        super().__init__()
        self.classic = classic
        self.c1 = fnn.Conv2d(in_channels, 6, kernel_size=5)
        self.c3 = nn.Conv2d(6, 16, kernel_size=5)
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)  # a convolution over the 5x5 S4 maps (fully connected)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)
        self.activation = ScaledTanh() if classic else nn.ReLU(inplace=True)
        pool = nn.AvgPool2d if classic else nn.MaxPool2d
        self.s2 = pool(kernel_size=2, stride=2)
        self.s4 = pool(kernel_size=2, stride=2)

    def _c1(self, x: torch.Tensor) -> torch.Tensor:
        if self.classic or not self.c1.is_depthwise():
            return self.activation(self.c1(x))
        c1 = self.c1
        return ops.depthwise_conv2d(x, c1.weight, c1.bias, c1.stride, c1.padding, c1.dilation, activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self._c1(x))
        x = self.s4(self.activation(self.c3(x)))
        x = self.activation(self.c5(x))
        x = self.activation(self.f6(torch.flatten(x, 1)))
        return self.output(x)


@register_model
def lenet5(*, weights=None, progress: bool = True, **kwargs) -> LeNet5:
    """LeNet-5 for 32x32 inputs (``num_classes=10``, ``in_channels=1``; ``classic=True`` for tanh/avg-pool).
    ``weights``: a local checkpoint path (there are no published weights)."""
    return build(LeNet5, weights, progress, **kwargs)
