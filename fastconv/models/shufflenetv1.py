"""ShuffleNet (v1) (Zhang, Zhou, Lin, Sun: "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018).

A ShuffleNet unit (Fig. 2b/c) is a bottleneck of two pointwise *group* convolutions around a 3x3 depthwise
one, with a channel shuffle after the first so that information crosses the groups:

    1x1 GConv (g groups) - BN - ReLU - channel shuffle (g) - 3x3 DWConv (stride) - BN - 1x1 GConv - BN

stride 1: ``ReLU(x + unit(x))``; stride 2: ``ReLU(concat(3x3 avg-pool stride 2 (x), unit(x)))``, the unit
producing only the channels the concatenation adds. The bottleneck is 1/4 of the unit's output channels; the
first pointwise layer of Stage 2 is not grouped (its 24 input channels are too few, Sec. 3.3).

Table 1 (224x224 input): Conv1 3x3 stride 2, 24 channels; 3x3 max-pool stride 2; Stages 2/3/4 of 4/8/4 units;
global pool; FC. Output channels per group count g = 1, 2, 3, 4, 8:
144/288/576, 200/400/800, 240/480/960, 272/544/1088, 384/768/1536. "ShuffleNet s x" scales every stage's
channels by s (rounded to a multiple of 4g here, so that the bottleneck splits into g groups); the stem has
12/24/24/48 channels at s = 0.5/1/1.5/2 (the authors' released models), rounded up to a multiple of g.
ShuffleNet 1x, g=3 counts ~140 MFLOPs (multiply-adds; Table 2), measured by tests/models/test_own_models.py.

fastconv: the shuffle is fastconv.ops.channel_shuffle (fastconv.nn.ChannelShuffle); every conv-BN(-ReLU) is
a fastconv.nn.Conv2dNormActivation (folded in eval), with the unit's closing ReLU fused into the last one
where exact (stride 2: the pooled shortcut is already non-negative, so ReLU(concat(a, b)) = concat(a, ReLU(b))).
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from fastconv.models._blocks import residual_relu
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.nn import ChannelShuffle, Conv2dNormActivation

__all__ = ["ShuffleNetV1", "ShuffleNetV1Unit", "shufflenet_v1", "shufflenet_v1_x0_5", "shufflenet_v1_x1_0",
           "shufflenet_v1_x1_5", "shufflenet_v1_x2_0"]

# Table 1: output channels of Stages 2, 3, 4 of ShuffleNet 1x, per number of groups.
STAGE_CHANNELS: Dict[int, List[int]] = {
    1: [144, 288, 576], 2: [200, 400, 800], 3: [240, 480, 960], 4: [272, 544, 1088], 8: [384, 768, 1536],
}
STAGE_REPEATS = [4, 8, 4]
STEM_CHANNELS = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


class ShuffleNetV1Unit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int,
                 group_first_conv: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleNetV1Unit: stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"ShuffleNetV1Unit: a stride-1 unit keeps its width, got {in_channels} -> {out_channels}")
        self.stride = stride
        bottleneck = out_channels // 4
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        self.compress = Conv2dNormActivation(in_channels, bottleneck, 1, groups=groups if group_first_conv else 1)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.depthwise = Conv2dNormActivation(bottleneck, bottleneck, 3, stride, groups=bottleneck,
                                              activation_layer=None)
        self.expand = Conv2dNormActivation(bottleneck, branch_channels, 1, groups=groups,
                                           activation_layer=nn.ReLU if stride == 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 1:
            return residual_relu(out, x)
        return torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        if groups not in STAGE_CHANNELS:
            raise ValueError(f"ShuffleNetV1: groups must be one of {sorted(STAGE_CHANNELS)}, got {groups}")
        if width_mult not in STEM_CHANNELS:
            raise ValueError(f"ShuffleNetV1: width_mult must be one of {sorted(STEM_CHANNELS)}, got {width_mult}")
        stem_channels = _round_up(STEM_CHANNELS[width_mult], groups)
        self.stage_channels = [_round_up(c * width_mult, 4 * groups) for c in STAGE_CHANNELS[groups]]
        self.conv1 = Conv2dNormActivation(in_channels, stem_channels, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = stem_channels
        for index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, self.stage_channels)):
            units = [ShuffleNetV1Unit(channels, out_channels, groups, 2, group_first_conv=index > 0)]
            units += [ShuffleNetV1Unit(out_channels, out_channels, groups, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index + 2}", nn.Sequential(*units))
            channels = out_channels
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean((2, 3)))


def _shufflenet_v1(width_mult, weights, progress, groups=3, **kwargs):
    return build(lambda **kw: ShuffleNetV1(groups, width_mult, **kw), weights, progress,
                 channels_last_from_batch=ALWAYS, **kwargs)


@register_model
def shufflenet_v1_x0_5(*, weights=None, progress: bool = True, groups: int = 3, **kwargs) -> ShuffleNetV1:
    return _shufflenet_v1(0.5, weights, progress, groups, **kwargs)


@register_model
def shufflenet_v1_x1_0(*, weights=None, progress: bool = True, groups: int = 3, **kwargs) -> ShuffleNetV1:
    return _shufflenet_v1(1.0, weights, progress, groups, **kwargs)


@register_model
def shufflenet_v1_x1_5(*, weights=None, progress: bool = True, groups: int = 3, **kwargs) -> ShuffleNetV1:
    return _shufflenet_v1(1.5, weights, progress, groups, **kwargs)


@register_model
def shufflenet_v1_x2_0(*, weights=None, progress: bool = True, groups: int = 3, **kwargs) -> ShuffleNetV1:
    return _shufflenet_v1(2.0, weights, progress, groups, **kwargs)


@register_model
def shufflenet_v1(*, weights=None, progress: bool = True, groups: int = 3, width_mult: float = 1.0,
                  **kwargs) -> ShuffleNetV1:
    """ShuffleNet ``width_mult`` x (0.5, 1.0, 1.5, 2.0) with ``groups`` in 1, 2, 3, 4, 8; default 1x, g = 3."""
    return _shufflenet_v1(width_mult, weights, progress, groups, **kwargs)
