"""Inception-v4 (Szegedy, Ioffe, Vanhoucke, Alemi: "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", AAAI 2017, arXiv:1602.07261), with the module names and state_dict keys of timm's
``inception_v4`` (the TF-slim port: input 299x299, BN eps 1e-3), so its checkpoints load with strict=True.

Fig. 9 of the paper: the stem (Fig. 3: ``features.0``-``features.5``), 4 x Inception-A (Fig. 4), Reduction-A
(Fig. 7), 7 x Inception-B (Fig. 5), Reduction-B (Fig. 8), 3 x Inception-C (Fig. 6), average pooling, dropout
and a linear classifier. Every convolution is unpadded unless the figure marks it "same", and each is a
conv-BN-ReLU (timm's ConvNormAct keys ``conv``/``bn``): in eval one convolution with the BN folded and the
ReLU in its epilogue, in training the convolution then fastconv.ops.batch_norm_act.
"""
from functools import partial

import torch
from torch import nn

from fastconv.models._layers import ConvBnAct, ParallelBranches, classifier, classifier_head
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model

__all__ = ["InceptionV4", "inception_v4"]

# The TF-slim BatchNorm epsilon the ported weights were trained with.
conv_bn_relu = partial(ConvBnAct, eps=1e-3, activation="relu")


def _avg_pool_3x3():
    """The pooling branch's 3x3 average pool: stride 1, "same" padding that does not count the zeros."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class Mixed3a(ParallelBranches):
    """Stem (Fig. 3), first split: 3x3 max pool | 3x3 stride-2 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = conv_bn_relu(64, 96, kernel_size=3, stride=2)


class Mixed4a(ParallelBranches):
    """Stem (Fig. 3), second split: 1x1 -> 3x3 | 1x1 -> 7x1 -> 1x7 -> 3x3."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn_relu(160, 64, kernel_size=1), conv_bn_relu(64, 96, kernel_size=3))
        self.branch1 = nn.Sequential(
            conv_bn_relu(160, 64, kernel_size=1),
            conv_bn_relu(64, 64, kernel_size=(1, 7), padding=(0, 3)),
            conv_bn_relu(64, 64, kernel_size=(7, 1), padding=(3, 0)),
            conv_bn_relu(64, 96, kernel_size=3),
        )


class Mixed5a(ParallelBranches):
    """Stem (Fig. 3), third split: 3x3 stride-2 conv | max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn_relu(192, 192, kernel_size=3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)


class InceptionA(ParallelBranches):
    """Fig. 4, the 35x35 grid: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn_relu(384, 96, kernel_size=1)
        self.branch1 = nn.Sequential(conv_bn_relu(384, 64, kernel_size=1),
                                     conv_bn_relu(64, 96, kernel_size=3, padding=1))
        self.branch2 = nn.Sequential(
            conv_bn_relu(384, 64, kernel_size=1),
            conv_bn_relu(64, 96, kernel_size=3, padding=1),
            conv_bn_relu(96, 96, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn_relu(384, 96, kernel_size=1))


class ReductionA(ParallelBranches):
    """Fig. 7 (k, l, m, n = 192, 224, 256, 384): 35x35 -> 17x17."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn_relu(384, 384, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            conv_bn_relu(384, 192, kernel_size=1),
            conv_bn_relu(192, 224, kernel_size=3, padding=1),
            conv_bn_relu(224, 256, kernel_size=3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)


class InceptionB(ParallelBranches):
    """Fig. 5, the 17x17 grid, with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn_relu(1024, 384, kernel_size=1)
        self.branch1 = nn.Sequential(
            conv_bn_relu(1024, 192, kernel_size=1),
            conv_bn_relu(192, 224, kernel_size=(1, 7), padding=(0, 3)),
            conv_bn_relu(224, 256, kernel_size=(7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            conv_bn_relu(1024, 192, kernel_size=1),
            conv_bn_relu(192, 192, kernel_size=(7, 1), padding=(3, 0)),
            conv_bn_relu(192, 224, kernel_size=(1, 7), padding=(0, 3)),
            conv_bn_relu(224, 224, kernel_size=(7, 1), padding=(3, 0)),
            conv_bn_relu(224, 256, kernel_size=(1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn_relu(1024, 128, kernel_size=1))


class ReductionB(ParallelBranches):
    """Fig. 8: 17x17 -> 8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn_relu(1024, 192, kernel_size=1),
                                     conv_bn_relu(192, 192, kernel_size=3, stride=2))
        self.branch1 = nn.Sequential(
            conv_bn_relu(1024, 256, kernel_size=1),
            conv_bn_relu(256, 256, kernel_size=(1, 7), padding=(0, 3)),
            conv_bn_relu(256, 320, kernel_size=(7, 1), padding=(3, 0)),
            conv_bn_relu(320, 320, kernel_size=3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)


class InceptionC(nn.Module):
    """Fig. 6, the 8x8 grid: two branches end in a 1x3 | 3x1 split whose outputs are concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn_relu(1536, 256, kernel_size=1)
        self.branch1_0 = conv_bn_relu(1536, 384, kernel_size=1)
        self.branch1_1a = conv_bn_relu(384, 256, kernel_size=(1, 3), padding=(0, 1))
        self.branch1_1b = conv_bn_relu(384, 256, kernel_size=(3, 1), padding=(1, 0))
        self.branch2_0 = conv_bn_relu(1536, 384, kernel_size=1)
        self.branch2_1 = conv_bn_relu(384, 448, kernel_size=(3, 1), padding=(1, 0))
        self.branch2_2 = conv_bn_relu(448, 512, kernel_size=(1, 3), padding=(0, 1))
        self.branch2_3a = conv_bn_relu(512, 256, kernel_size=(1, 3), padding=(0, 1))
        self.branch2_3b = conv_bn_relu(512, 256, kernel_size=(3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(_avg_pool_3x3(), conv_bn_relu(1536, 256, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([
            self.branch0(x),
            self.branch1_1a(x1), self.branch1_1b(x1),
            self.branch2_3a(x2), self.branch2_3b(x2),
            self.branch3(x),
        ], 1)


class InceptionV4(nn.Module):
    """Inception-v4 with timm's layout and arguments (``num_classes``, ``in_chans``, ``drop_rate``: dropout
    before ``last_linear``, default 0 as timm's). Inputs of at least 75x75 (the grid reaches 1x1)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = 1536
        self.features = nn.Sequential(
            conv_bn_relu(in_chans, 32, kernel_size=3, stride=2),
            conv_bn_relu(32, 32, kernel_size=3),
            conv_bn_relu(32, 64, kernel_size=3, padding=1),
            Mixed3a(),
            Mixed4a(),
            Mixed5a(),
            *[InceptionA() for _ in range(4)],
            ReductionA(),  # Mixed6a
            *[InceptionB() for _ in range(7)],
            ReductionB(),  # Mixed7a
            *[InceptionC() for _ in range(3)],
        )
        self.last_linear = classifier(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_head(self.features(x), self.last_linear, self.drop_rate, self.training)


@register_model
def inception_v4(*, weights=None, progress: bool = True, **kwargs) -> InceptionV4:
    """Inception-v4 for 299x299 inputs. ``weights``: a local checkpoint path, or a timm pretrained tag of
    ``inception_v4`` ("tf_in1k"), fetched through timm."""
    return build(InceptionV4, weights, progress, timm_name="inception_v4", channels_last_from_batch=ALWAYS,
                 **kwargs)
