"""SE-ResNet and SE-ResNeXt (Hu, Shen, Albanie, Sun, Wu: "Squeeze-and-Excitation Networks", CVPR 2018 /
TPAMI 2019, arXiv:1709.01507), with the module names and state_dict keys of timm's ``legacy_se*`` models (the
Caffe port by Cadene: layer0/pool0, ``se_module.fc1``/``fc2``, ``last_linear``), so their checkpoints load
with strict=True.

Fig. 3 of the paper: a ResNet bottleneck whose residual branch is rescaled per channel before the addition,
by sigmoid(W2 relu(W1 mean_hw(u))) with a reduction ratio r = 16 (Table 1's SE-ResNet-50 and
SE-ResNeXt-50 (32x4d)). The SE block runs fastconv.ops.squeeze_excite (fastconv.nn.SqueezeExcitation: two
passes over the activations, no (N, C, H, W) intermediate), and in eval every conv-BN pair runs as one
convolution with the BN folded and the ReLU in its epilogue. As in the Caffe models, SE-ResNet strides the
first 1x1 convolution of a block, SE-ResNeXt the grouped 3x3; the stem's max pool uses ceil_mode.
"""
import math
from collections import OrderedDict
from typing import List, Optional

import torch
from torch import nn

from fastconv.models._blocks import residual_relu
from fastconv.models._layers import classifier, classifier_head, conv_bn_act, init_like_timm_cnn
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.nn import SqueezeExcitation
from fastconv.nn.conv_norm_act import Adoptable, FoldedConvBN

__all__ = ["SENet", "legacy_seresnet50", "legacy_seresnet101", "legacy_seresnet152", "legacy_seresnext50_32x4d"]


class SEBottleneckBase(Adoptable, nn.Module):
    """The shared forward of the SE bottlenecks: three conv-BN(-ReLU) stages, the SE rescaling, plus the
    (downsampled) identity, then ReLU. Subclasses set conv1..3, bn1..3, se_module and downsample."""

    expansion = 4

    def _init_fast_state(self):
        self._folds = [FoldedConvBN() for _ in range(4)]  # three stages and the downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(x, self.conv1, self.bn1, "relu", self._folds[0])
        out = conv_bn_act(out, self.conv2, self.bn2, "relu", self._folds[1])
        out = conv_bn_act(out, self.conv3, self.bn3, None, self._folds[2])
        shortcut = x if self.downsample is None else conv_bn_act(x, *self.downsample, None, self._folds[3])
        return residual_relu(self.se_module(out), shortcut)


class SEResNetBottleneck(SEBottleneckBase):
    """SE-ResNet bottleneck, Caffe style: the stride is on the first 1x1 convolution."""

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SqueezeExcitation(planes * 4, planes * 4 // reduction)
        self.downsample = downsample
        self.stride = stride
        self._init_fast_state()


class SEResNeXtBottleneck(SEBottleneckBase):
    """SE-ResNeXt bottleneck (type C): the stride is on the grouped 3x3 convolution, width
    floor(planes * base_width / 64) * groups."""

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, base_width: int = 4) -> None:
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False, stride=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SqueezeExcitation(planes * 4, planes * 4 // reduction)
        self.downsample = downsample
        self.stride = stride
        self._init_fast_state()


class SENet(Adoptable, nn.Module):
    """The legacy SENet trunk: a 7x7 stem (``layer0``: conv1, bn1, relu1), a ceil-mode 3x3 max pool
    (``pool0``), four stages of SE bottlenecks, global average pooling, dropout (``drop_rate``, 0.2 by
    default as in timm's legacy models) and ``last_linear``.

    Args:
        block: SEResNetBottleneck or SEResNeXtBottleneck.
        layers: blocks per stage.
        groups: groups of the 3x3 convolutions (1 for SE-ResNet, 32 for SE-ResNeXt).
        reduction: the SE reduction ratio r.
    """

    def __init__(self, block, layers: List[int], groups: int, reduction: int, drop_rate: float = 0.2,
                 in_chans: int = 3, inplanes: int = 64, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.layer0 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, inplanes, kernel_size=7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(inplanes)),
            ("relu1", nn.ReLU(inplace=True)),
        ]))
        self.pool0 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # ceil_mode, not padding: the Caffe weights' geometry
        self.layer1 = self._make_layer(block, 64, layers[0], groups, reduction)
        self.layer2 = self._make_layer(block, 128, layers[1], groups, reduction, stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], groups, reduction, stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], groups, reduction, stride=2)
        self.num_features = 512 * block.expansion
        self.last_linear = classifier(self.num_features, num_classes)
        init_like_timm_cnn(self)
        self._init_fast_state()

    def _init_fast_state(self):
        self._stem = FoldedConvBN()

    def _make_layer(self, block, planes: int, blocks: int, groups: int, reduction: int, stride: int = 1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, groups, reduction, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(conv_bn_act(x, self.layer0.conv1, self.layer0.bn1, "relu", self._stem))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_head(self.forward_features(x), self.last_linear, self.drop_rate, self.training)


def _senet(block, layers, groups, weights, progress, timm_name, **kwargs) -> SENet:
    return build(lambda **kw: SENet(block, layers, groups, reduction=16, **kw), weights, progress,
                 timm_name=timm_name, channels_last_from_batch=ALWAYS, **kwargs)


@register_model
def legacy_seresnet50(*, weights=None, progress: bool = True, **kwargs) -> SENet:
    """SE-ResNet-50 (224x224). ``weights``: a checkpoint path or timm's tag "in1k"."""
    return _senet(SEResNetBottleneck, [3, 4, 6, 3], 1, weights, progress, "legacy_seresnet50", **kwargs)


@register_model
def legacy_seresnet101(*, weights=None, progress: bool = True, **kwargs) -> SENet:
    """SE-ResNet-101 (224x224). ``weights``: a checkpoint path or timm's tag "in1k"."""
    return _senet(SEResNetBottleneck, [3, 4, 23, 3], 1, weights, progress, "legacy_seresnet101", **kwargs)


@register_model
def legacy_seresnet152(*, weights=None, progress: bool = True, **kwargs) -> SENet:
    """SE-ResNet-152 (224x224). ``weights``: a checkpoint path or timm's tag "in1k"."""
    return _senet(SEResNetBottleneck, [3, 8, 36, 3], 1, weights, progress, "legacy_seresnet152", **kwargs)


@register_model
def legacy_seresnext50_32x4d(*, weights=None, progress: bool = True, **kwargs) -> SENet:
    """SE-ResNeXt-50 (32x4d) (224x224). ``weights``: a checkpoint path or timm's tag "in1k"."""
    return _senet(SEResNeXtBottleneck, [3, 4, 6, 3], 32, weights, progress, "legacy_seresnext50_32x4d", **kwargs)
