"""Xception (François Chollet: "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017,
arXiv:1610.02357), with the module names and state_dict keys of timm's ``legacy_xception`` (the Keras port:
input 299x299, mean = std = 0.5), so its checkpoints load with strict=True.

Fig. 5 of the paper: an entry flow (two 3x3 convolutions and three strided residual blocks), a middle flow of
eight 728-channel residual blocks, an exit flow (one strided block, two separable convolutions), global
average pooling and a linear classifier. Every separable convolution is a depthwise 3x3
(fastconv.nn.Conv2d, i.e. fastconv.ops.depthwise_conv2d) followed by a pointwise 1x1; in eval the BN after it
is folded into the pointwise convolution and the ReLU that follows runs in the same epilogue.
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

from fastconv.models._layers import classifier, classifier_head, conv_bn_act, init_like_timm_cnn
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.nn import Conv2d
from fastconv.nn.conv_norm_act import Adoptable, FoldedConvBN

__all__ = ["Xception", "legacy_xception"]


class SeparableConv2d(nn.Module):
    """Depthwise kxk convolution (``conv1``, fastconv's depthwise op) then pointwise 1x1 (``pointwise``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation, groups=in_channels,
                            bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, 1, 0, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))

    def forward_bn_act(self, x: torch.Tensor, bn: nn.BatchNorm2d, activation: Optional[str],
                       fold: FoldedConvBN) -> torch.Tensor:
        """activation(bn(self(x))): the BN folded into the pointwise convolution in eval."""
        return conv_bn_act(self.conv1(x), self.pointwise, bn, activation, fold)


class Block(Adoptable, nn.Module):
    """A residual block: ``reps`` x (ReLU, separable 3x3, BN), a 3x3 max pool when strided, plus the identity or
    a strided 1x1 conv + BN shortcut. ``rep`` keeps timm's layout (ReLU, SeparableConv2d, BN, ..., MaxPool)."""

    def __init__(self, in_channels: int, out_channels: int, reps: int, strides: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        if out_channels != in_channels or strides != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        rep: List[nn.Module] = []
        for i in range(reps):
            if grow_first:  # the first separable conv widens to out_channels
                inc, outc = (in_channels if i == 0 else out_channels), out_channels
            else:  # the last one does (the exit flow's block)
                inc, outc = in_channels, (in_channels if i < reps - 1 else out_channels)
            rep += [nn.ReLU(inplace=True), SeparableConv2d(inc, outc, 3, stride=1, padding=1), nn.BatchNorm2d(outc)]
        if not start_with_relu:
            rep = rep[1:]
        else:
            rep[0] = nn.ReLU(inplace=False)  # the block input is also the shortcut
        if strides != 1:
            rep.append(nn.MaxPool2d(3, strides, 1))
        self.rep = nn.Sequential(*rep)
        self._init_fast_state()

    def _init_fast_state(self):
        layers = list(self.rep)
        self._starts_with_relu = isinstance(layers[0], nn.ReLU)
        # (separable conv, BN, the activation after it: the ReLU that starts the next unit, if any)
        self._units: List[Tuple[SeparableConv2d, nn.BatchNorm2d, Optional[str]]] = [
            (layer, layers[i + 1], "relu" if i + 2 < len(layers) and isinstance(layers[i + 2], nn.ReLU) else None)
            for i, layer in enumerate(layers) if isinstance(layer, SeparableConv2d)
        ]
        self._pool = layers[-1] if isinstance(layers[-1], nn.MaxPool2d) else None
        self._folds = [FoldedConvBN() for _ in range(len(self._units) + 1)]  # the units and the shortcut

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = torch.relu(inp) if self._starts_with_relu else inp
        for (separable, bn, activation), fold in zip(self._units, self._folds):
            x = separable.forward_bn_act(x, bn, activation, fold)
        if self._pool is not None:
            x = self._pool(x)
        skip = inp if self.skip is None else conv_bn_act(inp, self.skip, self.skipbn, None, self._folds[-1])
        return x + skip


class Xception(Adoptable, nn.Module):
    """Xception with timm's ``legacy_xception`` layout and arguments (``num_classes``, ``in_chans``,
    ``drop_rate``: dropout before the classifier, default 0 as timm's)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = 2048
        # Entry flow: the stem
        self.conv1 = nn.Conv2d(in_chans, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        # Entry flow: three strided blocks
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        # Middle flow: eight identity-shortcut blocks
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(728, 728, 3, 1))
        # Exit flow
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(1536, self.num_features, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(self.num_features)
        self.act4 = nn.ReLU(inplace=True)
        self.fc = classifier(self.num_features, num_classes)
        init_like_timm_cnn(self)
        self._init_fast_state()

    def _init_fast_state(self):
        self._folds = [FoldedConvBN() for _ in range(4)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn_act(x, self.conv1, self.bn1, "relu", self._folds[0])
        x = conv_bn_act(x, self.conv2, self.bn2, "relu", self._folds[1])
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = self.conv3.forward_bn_act(x, self.bn3, "relu", self._folds[2])
        return self.conv4.forward_bn_act(x, self.bn4, "relu", self._folds[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_head(self.forward_features(x), self.fc, self.drop_rate, self.training)


@register_model
def legacy_xception(*, weights=None, progress: bool = True, **kwargs) -> Xception:
    """Xception for 299x299 inputs (any size >= 71 px runs). ``weights``: a local checkpoint path, or a timm
    pretrained tag of ``legacy_xception`` ("tf_in1k"), fetched through timm."""
    return build(Xception, weights, progress, timm_name="legacy_xception", channels_last_from_batch=ALWAYS,
                 **kwargs)
