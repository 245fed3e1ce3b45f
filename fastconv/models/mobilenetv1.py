"""MobileNet v1 (Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam: "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861, 2017), with the module names
and state_dict keys of timm's ``mobilenetv1_100`` (conv_stem, bn1, blocks.<stage>.<i>.conv_dw/bn1/conv_pw/bn2,
classifier), so its checkpoints load with strict=True.

Table 1 of the paper: a strided 3x3 convolution, then 13 depthwise separable convolutions (Fig. 3: depthwise
3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), global average pooling and a linear classifier. timm's version,
followed here, uses ReLU6 and puts the 13 layers in five stages that start with the strided ones.

In eval every depthwise conv-BN-ReLU6 runs as one fastconv.ops.depthwise_conv2d with the BN folded into its
weight and bias and the ReLU6 in its epilogue, and every pointwise conv-BN-ReLU6 as one convolution (BN folded).
In training the depthwise convolution runs the same op (fastconv.nn.Conv2d) and BN + ReLU6 run as one
fastconv.ops.batch_norm_act.

The two hyper-parameters of Sections 3.3 and 3.4:

- the width multiplier alpha (``width_multiplier`` or ``alpha``, default 1.0) thins every layer to alpha x
  its channels, rounded to a multiple of 8 as timm does (never more than 10% down);
- the resolution multiplier rho (``resolution_multiplier`` or ``rho``, default 1.0) only sets the input size
  the network is meant for, 224 * rho (224, 192, 160, 128 for rho = 1, 6/7, 5/7, 4/7): the network is fully
  convolutional up to a global pool, so its layers and weights are the same for every rho. It is recorded as
  ``model.input_size`` (C, H, W) and changes nothing else; feed images of that size.
"""
import math
from typing import Optional

import torch
from torch import nn

from fastconv.models._layers import classifier, classifier_head, conv_bn_act
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.models.mobilenetv2 import _make_divisible
from fastconv.nn import Conv2d
from fastconv.nn.conv_norm_act import Adoptable, FoldedConvBN

__all__ = ["MobileNetV1", "mobilenetv1_100"]

# (output channels, repeats, stride of the first) per stage: Table 1's 13 depthwise separable layers.
_STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


class DepthwiseSeparableConv(Adoptable, nn.Module):
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 + BN + ReLU6 (Fig. 3, right), no residual."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_dw = Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self._init_fast_state()

    def _init_fast_state(self):
        self._folds = (FoldedConvBN(), FoldedConvBN())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn_act(x, self.conv_dw, self.bn1, "relu6", self._folds[0])
        return conv_bn_act(x, self.conv_pw, self.bn2, "relu6", self._folds[1])


def _multiplier(value: float, alias: Optional[float], name: str, alias_name: str) -> float:
    if alias is not None and alias != value and value != 1.0:
        raise ValueError(f"MobileNetV1: {name}={value} and {alias_name}={alias} disagree; pass one of them")
    value = value if alias is None else alias
    if not value > 0:
        raise ValueError(f"MobileNetV1: {name} must be positive, got {value}")
    return value


class MobileNetV1(Adoptable, nn.Module):
    """MobileNet v1 with timm's layout.

    Args:
        num_classes: classifier outputs (0: no classifier, the pooled features are returned, as in timm).
        width_multiplier (alias ``alpha``): the paper's alpha; channels are alpha x (32, 64, ..., 1024), rounded
            to multiples of 8.
        resolution_multiplier (alias ``rho``): the paper's rho; only recorded: ``input_size`` is
            (in_chans, 224 * rho, 224 * rho), the layers do not depend on it.
        in_chans: input channels.
        drop_rate: dropout before the classifier (timm's default for mobilenetv1_100: 0).
    """

    def __init__(self, num_classes: int = 1000, width_multiplier: float = 1.0, resolution_multiplier: float = 1.0,
                 in_chans: int = 3, drop_rate: float = 0.0, *, alpha: Optional[float] = None,
                 rho: Optional[float] = None) -> None:
        super().__init__()
        self.width_multiplier = _multiplier(width_multiplier, alpha, "width_multiplier", "alpha")
        self.resolution_multiplier = _multiplier(resolution_multiplier, rho, "resolution_multiplier", "rho")
        resolution = int(round(224 * self.resolution_multiplier))
        self.input_size = (in_chans, resolution, resolution)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        def channels(c: int) -> int:
            return _make_divisible(c * self.width_multiplier, 8)

        stem_channels = channels(32)
        self.conv_stem = nn.Conv2d(in_chans, stem_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        stages, in_channels = [], stem_channels
        for out_channels, repeats, stride in _STAGES:
            out_channels = channels(out_channels)
            blocks = []
            for i in range(repeats):
                blocks.append(DepthwiseSeparableConv(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = in_channels
        self.classifier = classifier(self.num_features, num_classes)
        self._init_weights()
        self._init_fast_state()

    def _init_weights(self):
        """timm's (TensorFlow's) initialisation: N(0, 2 / fan_out) convolutions with the fan-out per group,
        BN 1/0, U(+-1/sqrt(classes)) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.size(0))
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def _init_fast_state(self):
        self._stem = FoldedConvBN()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(conv_bn_act(x, self.conv_stem, self.bn1, "relu6", self._stem))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_head(self.forward_features(x), self.classifier, self.drop_rate, self.training)


@register_model
def mobilenetv1_100(*, weights=None, progress: bool = True, **kwargs) -> MobileNetV1:
    """MobileNet v1 with width multiplier 1.0 (override with ``width_multiplier``/``alpha``) for 224x224 inputs
    (``resolution_multiplier``/``rho`` records another size). ``weights``: a local checkpoint path, or a timm
    pretrained tag of ``mobilenetv1_100`` ("ra4_e3600_r224_in1k"), fetched through timm."""
    return build(MobileNetV1, weights, progress, timm_name="mobilenetv1_100",
                 channels_last_from_batch=ALWAYS, **kwargs)
