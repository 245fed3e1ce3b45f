"""ShuffleNet V2 (Ma, Zhang, Zheng, Sun: "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018), with torchvision's module names and state_dict keys.

Each unit splits its input in two channel halves (a free view), transforms one half, and joins the two with a
channel shuffle of 2 groups. fastconv runs the join as one op (fastconv.ops.shuffle_cat), and the next
unit's split stays a view; in eval the branch's last conv-BN-ReLU joins it too (fastconv.ops.shuffle_cat_conv2d_act:
the convolution writes the interleaved output's odd channels directly; see FusedSequential.shuffle_cat_after). The conv-BN(-ReLU) runs (stem, branches, conv5) are FusedSequential: BN folded
into the convolution in eval, BN with its ReLU as one op in training.
"""
from typing import List

import torch
from torch import nn

from fastconv import ops
from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.nn.conv_norm_act import Adoptable
from fastconv.nn.sequential import FusedSequential

__all__ = ["ShuffleNetV2", "shufflenet_v2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
           "shufflenet_v2_x2_0"]


def _join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """channel_shuffle(cat([a, b], 1), 2), the end of every ShuffleNet V2 unit, as one interleaved write."""
    return ops.shuffle_cat(a, b)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(Adoptable, nn.Module):
    """A ShuffleNet V2 unit: stride 1 (Fig. 3c) transforms half the channels; stride 2 (Fig. 3d) both copies."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(
                f"Invalid combination of stride {stride}, inp {inp} and oup {oup} values. "
                "If stride == 1 then inp should be equal to oup // 2 << 1."
            )
        if stride > 1:
            self.branch1 = FusedSequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = FusedSequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            _depthwise(branch_features, stride),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def _init_fast_state(self):
        # fastconv.optimize adopts torchvision's unit: its branches are plain nn.Sequential (same keys).
        for name in ("branch1", "branch2"):
            branch = getattr(self, name)
            if type(branch) is nn.Sequential and len(branch) > 0:
                FusedSequential.adopt(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)  # a view: the previous unit's shuffle already interleaved the halves
            return self._join_branch2(x1, x2)
        return self._join_branch2(self.branch1(x), x)

    def _join_branch2(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """shuffle_cat(a, branch2(x)); in eval the branch's last conv-BN-ReLU writes straight into the
        interleaved output where that is the faster path (FusedSequential.shuffle_cat_after)."""
        if isinstance(self.branch2, FusedSequential):
            return self.branch2.shuffle_cat_after(a, x)
        return _join(a, self.branch2(x))


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats: List[int], stages_out_channels: List[int], num_classes: int = 1000,
                 inverted_residual=InvertedResidual) -> None:
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        self._stage_out_channels = stages_out_channels
        input_channels = stages_out_channels[0]
        self.conv1 = FusedSequential(
            nn.Conv2d(3, input_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(input_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"), stages_repeats,
                                                  stages_out_channels[1:]):
            units = [inverted_residual(input_channels, output_channels, 2)]
            units += [inverted_residual(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = FusedSequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])  # global average pool
        return self.fc(x)


# Table 5 of the paper: stage repeats and output channels per width multiplier.
_REPEATS = [4, 8, 4]
_CHANNELS = {
    "x0_5": [24, 48, 96, 192, 1024],
    "x1_0": [24, 116, 232, 464, 1024],
    "x1_5": [24, 176, 352, 704, 1024],
    "x2_0": [24, 244, 488, 976, 2048],
}


def _shufflenet_v2(width, weights, progress, **kwargs):
    return build(lambda **kw: ShuffleNetV2(_REPEATS, _CHANNELS[width], **kw), weights, progress,
                 channels_last_from_batch=ALWAYS, **kwargs)


@register_model
def shufflenet_v2_x0_5(*, weights=None, progress: bool = True, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2("x0_5", weights, progress, **kwargs)


@register_model
def shufflenet_v2_x1_0(*, weights=None, progress: bool = True, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2("x1_0", weights, progress, **kwargs)


@register_model
def shufflenet_v2_x1_5(*, weights=None, progress: bool = True, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2("x1_5", weights, progress, **kwargs)


@register_model
def shufflenet_v2_x2_0(*, weights=None, progress: bool = True, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2("x2_0", weights, progress, **kwargs)


@register_model
def shufflenet_v2(*, weights=None, progress: bool = True, **kwargs) -> ShuffleNetV2:
    """The default ShuffleNet V2: the x1.0 width."""
    return shufflenet_v2_x1_0(weights=weights, progress=progress, **kwargs)
