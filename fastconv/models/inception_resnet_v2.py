"""Inception-ResNet-v2 (Szegedy, Ioffe, Vanhoucke, Alemi: "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning", AAAI 2017, arXiv:1602.07261), with the module names and state_dict keys of
timm's ``inception_resnet_v2`` (the TF-slim port: input 299x299, BN eps 1e-3), so its checkpoints load with
strict=True.

Fig. 15 of the paper with TF-slim's stem (conv2d_1a ... maxpool_5a, mixed_5b), then 10 x Inception-ResNet-A
(Fig. 16, ``repeat``), Reduction-A (Fig. 7, ``mixed_6a``), 20 x Inception-ResNet-B (Fig. 17, ``repeat_1``),
Reduction-B (Fig. 18, ``mixed_7a``), 10 x Inception-ResNet-C (Fig. 19, ``repeat_2`` and the final
``block8`` without ReLU), a 1x1 conv to 1536 channels, average pooling, dropout and a linear classifier.

Each residual block concatenates its branches, projects them back to the input width with a linear 1x1
convolution, scales that by 0.17 / 0.10 / 0.20 (Section 3.3: scaling the residuals stabilises training) and
adds the input in one pass. Every conv-BN-ReLU (timm's ConvNormAct keys ``conv``/``bn``) is one convolution
with the BN folded in eval, the convolution then fastconv.ops.batch_norm_act in training.
"""
from functools import partial

import torch
from torch import nn

from fastconv.models._layers import ConvBnAct, ParallelBranches, classifier, classifier_head
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model

__all__ = ["InceptionResnetV2", "inception_resnet_v2"]

# The TF-slim BatchNorm epsilon the ported weights were trained with.
conv_bn_relu = partial(ConvBnAct, eps=1e-3, activation="relu")


class Mixed5b(ParallelBranches):
    """The stem's last Inception module (35x35, 192 -> 320 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn_relu(192, 96, kernel_size=1)
        self.branch1 = nn.Sequential(conv_bn_relu(192, 48, kernel_size=1),
                                     conv_bn_relu(48, 64, kernel_size=5, padding=2))
        self.branch2 = nn.Sequential(
            conv_bn_relu(192, 64, kernel_size=1),
            conv_bn_relu(64, 96, kernel_size=3, padding=1),
            conv_bn_relu(96, 96, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                     conv_bn_relu(192, 64, kernel_size=1))


class Mixed6a(ParallelBranches):
    """Reduction-A (Fig. 7, k, l, m, n = 256, 256, 384, 384): 35x35 -> 17x17."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = conv_bn_relu(320, 384, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            conv_bn_relu(320, 256, kernel_size=1),
            conv_bn_relu(256, 256, kernel_size=3, padding=1),
            conv_bn_relu(256, 384, kernel_size=3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)


class Mixed7a(ParallelBranches):
    """Reduction-B (Fig. 18): 17x17 -> 8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv_bn_relu(1088, 256, kernel_size=1),
                                     conv_bn_relu(256, 384, kernel_size=3, stride=2))
        self.branch1 = nn.Sequential(conv_bn_relu(1088, 256, kernel_size=1),
                                     conv_bn_relu(256, 288, kernel_size=3, stride=2))
        self.branch2 = nn.Sequential(
            conv_bn_relu(1088, 256, kernel_size=1),
            conv_bn_relu(256, 288, kernel_size=3, padding=1),
            conv_bn_relu(288, 320, kernel_size=3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)


class ScaledResidualBlock(nn.Module):
    """The shared forward of the Inception-ResNet blocks: relu(x + scale * conv2d(cat(branches(x)))), the ReLU
    left out when ``apply_relu`` is False. Subclasses set ``branch*`` and the linear 1x1 ``conv2d``."""

    def __init__(self, scale: float, apply_relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.apply_relu = apply_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [module(x) for name, module in self.named_children() if name.startswith("branch")]
        out = torch.add(x, self.conv2d(torch.cat(branches, 1)), alpha=self.scale)  # the scaled residual, one pass
        return torch.relu_(out) if self.apply_relu else out


class Block35(ScaledResidualBlock):
    """Inception-ResNet-A (Fig. 16), 35x35 x 320."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.branch0 = conv_bn_relu(320, 32, kernel_size=1)
        self.branch1 = nn.Sequential(conv_bn_relu(320, 32, kernel_size=1),
                                     conv_bn_relu(32, 32, kernel_size=3, padding=1))
        self.branch2 = nn.Sequential(
            conv_bn_relu(320, 32, kernel_size=1),
            conv_bn_relu(32, 48, kernel_size=3, padding=1),
            conv_bn_relu(48, 64, kernel_size=3, padding=1),
        )
        self.conv2d = nn.Conv2d(128, 320, kernel_size=1)


class Block17(ScaledResidualBlock):
    """Inception-ResNet-B (Fig. 17), 17x17 x 1088, with a factorised 7x7 branch."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.branch0 = conv_bn_relu(1088, 192, kernel_size=1)
        self.branch1 = nn.Sequential(
            conv_bn_relu(1088, 128, kernel_size=1),
            conv_bn_relu(128, 160, kernel_size=(1, 7), padding=(0, 3)),
            conv_bn_relu(160, 192, kernel_size=(7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1088, kernel_size=1)


class Block8(ScaledResidualBlock):
    """Inception-ResNet-C (Fig. 19), 8x8 x 2080, with a factorised 3x3 branch; the last one has no ReLU."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False) -> None:
        super().__init__(scale, apply_relu=not no_relu)
        self.branch0 = conv_bn_relu(2080, 192, kernel_size=1)
        self.branch1 = nn.Sequential(
            conv_bn_relu(2080, 192, kernel_size=1),
            conv_bn_relu(192, 224, kernel_size=(1, 3), padding=(0, 1)),
            conv_bn_relu(224, 256, kernel_size=(3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(448, 2080, kernel_size=1)


class InceptionResnetV2(nn.Module):
    """Inception-ResNet-v2 with timm's layout and arguments (``num_classes``, ``in_chans``, ``drop_rate``:
    dropout before ``classif``, default 0 as timm's). Inputs of at least 75x75 (the grid reaches 1x1)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = 1536
        self.conv2d_1a = conv_bn_relu(in_chans, 32, kernel_size=3, stride=2)
        self.conv2d_2a = conv_bn_relu(32, 32, kernel_size=3)
        self.conv2d_2b = conv_bn_relu(32, 64, kernel_size=3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = conv_bn_relu(64, 80, kernel_size=1)
        self.conv2d_4a = conv_bn_relu(80, 192, kernel_size=3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*[Block35(scale=0.17) for _ in range(10)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17(scale=0.10) for _ in range(20)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8(scale=0.20) for _ in range(9)])
        self.block8 = Block8(no_relu=True)
        self.conv2d_7b = conv_bn_relu(2080, self.num_features, kernel_size=1)
        self.classif = classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool_3a(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))
        x = self.maxpool_5a(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat(self.mixed_5b(x))
        x = self.repeat_1(self.mixed_6a(x))
        x = self.block8(self.repeat_2(self.mixed_7a(x)))
        return self.conv2d_7b(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_head(self.forward_features(x), self.classif, self.drop_rate, self.training)


@register_model
def inception_resnet_v2(*, weights=None, progress: bool = True, **kwargs) -> InceptionResnetV2:
    """Inception-ResNet-v2 for 299x299 inputs. ``weights``: a local checkpoint path, or a timm pretrained tag of
    ``inception_resnet_v2`` ("tf_in1k", "tf_ens_adv_in1k"), fetched through timm."""
    return build(InceptionResnetV2, weights, progress, timm_name="inception_resnet_v2",
                 channels_last_from_batch=ALWAYS, **kwargs)
