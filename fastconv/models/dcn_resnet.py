"""DCN-ResNet-50 (Dai et al., "Deformable Convolutional Networks", ICCV 2017; Zhu et al., "Deformable ConvNets
v2", CVPR 2019): torchvision's ResNet-50 whose Bottleneck 3x3 convolutions in stages 3-5 (layer2..layer4) are
modulated deformable convolutions (DCNv2).

Each deformable 3x3 predicts its offsets and modulation from its own input with a 3x3 convolution
`conv_offset` (same stride/padding/dilation, 3*kh*kw outputs: 2*kh*kw offsets then kh*kw mask logits). That
convolution starts at zero and the mask is 2*sigmoid(logit), so a fresh model computes exactly ResNet-50:
zero offsets sample the regular grid and the mask starts at 1 (DCNv2's plain sigmoid would start at 0.5).
State_dict keys: torchvision resnet50's, plus `layerX.Y.conv2.conv_offset.{weight,bias}`; torchvision
checkpoints load with `load_resnet50_state_dict` (or `weights=`). Registered; it has no torchvision/timm
namesake, so tests/models/test_dcn_resnet.py tests it (against resnet50) instead of the zoo's parity tests.
Its non-deformable blocks are torchvision's (eager conv + BN + ReLU), not fastconv's folded ones yet.
"""
import os

import torch
import torchvision
from torch import nn

from fastconv.models._registry import register_model
from fastconv.nn.deform_conv import DeformConv2d

__all__ = ["ModulatedDeformConv2d", "dcn_resnet50", "load_resnet50_state_dict"]


class ModulatedDeformConv2d(DeformConv2d):
    """A DCNv2 layer: DeformConv2d (weight, optional bias) plus the zero-initialised `conv_offset` that predicts
    its offsets and mask from the input. forward(input) takes the input only."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=False, offset_groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        kh, kw = self.kernel_size
        self.offset_groups = offset_groups
        self.conv_offset = nn.Conv2d(in_channels, 3 * offset_groups * kh * kw, self.kernel_size, self.stride,
                                     self.padding, self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        predicted = self.conv_offset(input)
        offset, logits = predicted.split([2 * self.offset_groups * kh * kw, self.offset_groups * kh * kw], dim=1)
        return super().forward(input, offset, 2 * torch.sigmoid(logits))


def _deformable(conv: nn.Conv2d) -> ModulatedDeformConv2d:
    layer = ModulatedDeformConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer


def load_resnet50_state_dict(model: nn.Module, state_dict) -> None:
    """Load a torchvision resnet50 state_dict: every key must match; only the conv_offset keys may be missing
    (they keep their zero initialisation)."""
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if ".conv_offset." not in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"dcn_resnet50: state_dict mismatch: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")


@register_model
def dcn_resnet50(*, weights=None, progress: bool = True, **kwargs) -> nn.Module:
    """ResNet-50 with DCNv2 in stages 3-5. `weights`: None, a torchvision ResNet50 weights enum or name, or a
    path to a resnet50 (or dcn_resnet50) state_dict; the non-deformable parts load from it."""
    model = torchvision.models.resnet50(**kwargs)
    for stage in (model.layer2, model.layer3, model.layer4):
        for block in stage:
            block.conv2 = _deformable(block.conv2)
    if weights is not None:
        if isinstance(weights, (str, os.PathLike)) and os.path.exists(weights):
            state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        else:
            if isinstance(weights, str):
                weights = torchvision.models.get_weight(weights)
            state_dict = weights.get_state_dict(progress=progress, check_hash=True)
        load_resnet50_state_dict(model, state_dict)
    return model
