"""DeepLabV3 (Chen, Papandreou, Schroff, Adam: "Rethinking Atrous Convolution for Semantic Image Segmentation",
2017) on a dilated ResNet-50 (output stride 8: layer3 and layer4 dilate instead of striding), with the ASPP head
and torchvision's FCN auxiliary head, torchvision's module names, state_dict keys, arguments (num_classes,
aux_loss, weights_backbone) and output: an OrderedDict {"out": ..., "aux": ...} at the input's resolution.

The backbone is fastconv.models.resnet's ResNet; the heads' flat conv-BN-ReLU runs go through
fastconv.nn.FusedSequential (BN folded into the convolution in eval).
"""
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights

from fastconv.models._layout import layout_of
from fastconv.models._registry import build, is_checkpoint_path, register_model
from fastconv.models.resnet import ResNet, resnet50
from fastconv.nn.sequential import FusedSequential

__all__ = ["DeepLabV3", "deeplabv3_resnet50"]


class ResNetBackbone(ResNet):
    """A ResNet without its classifier (avgpool, fc) returning the named feature maps of its stages: torchvision's
    ``IntermediateLayerGetter(resnet, return_layers)``, with the same keys, running fastconv's fused blocks."""

    @classmethod
    def from_resnet(cls, resnet: ResNet, return_layers: Dict[str, str]) -> "ResNetBackbone":
        del resnet.avgpool, resnet.fc
        resnet.__class__ = cls
        resnet.return_layers = dict(return_layers)
        return resnet

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = OrderedDict()
        x = self.forward_stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class ASPPConv(FusedSequential):
    """An atrous branch: 3x3 convolution with dilation `rate`, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class ASPPPooling(FusedSequential):
    """The image-level branch (section 3.3): global average pool, 1x1 conv, BN, ReLU, broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        # Bilinear upsampling of a 1x1 map is a broadcast. A broadcast view has no layout, and torch.cat picks NCHW
        # when its inputs' layouts disagree: materialised in x's layout, so ASPP's concatenation (and the head
        # after it) keep a channels_last x's layout.
        return super().forward(x).expand(-1, -1, *size).contiguous(memory_format=layout_of(x))


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (section 3.3): a 1x1 branch, one 3x3 branch per atrous rate and the
    image-level branch, concatenated and projected to `out_channels` by a 1x1 conv-BN-ReLU (then dropout)."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        branches = [FusedSequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                    nn.BatchNorm2d(out_channels), nn.ReLU())]
        branches += [ASPPConv(in_channels, out_channels, rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = FusedSequential(nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
                                       nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(FusedSequential):
    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__(ASPP(in_channels, atrous_rates), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                         nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, num_classes, 1))


class FCNHead(FusedSequential):
    """The auxiliary head on layer3 (from FCN, Long, Shelhamer, Darrell, CVPR 2015, as torchvision builds it)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        inter_channels = in_channels // 4
        super().__init__(nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(inter_channels), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(inter_channels, channels, 1))


class DeepLabV3(nn.Module):
    """backbone -> classifier (and aux_classifier on the "aux" features), each upsampled bilinearly to the input
    size; returns OrderedDict(out=..., aux=...) (aux only with an aux_classifier)."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        # The backbone may compute in channels_last (fastconv.models._layout); the maps come back in the caller's
        # layout, converted while they are small (the upsampling keeps its input's layout).
        layout = layout_of(x)
        result = OrderedDict()
        out = self.classifier(features["out"]).contiguous(memory_format=layout)
        result["out"] = F.interpolate(out, size=input_shape, mode="bilinear", align_corners=False)
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features["aux"]).contiguous(memory_format=layout)
            result["aux"] = F.interpolate(aux, size=input_shape, mode="bilinear", align_corners=False)
        return result


def _fixed(name: str, value, expected):
    """torchvision's rule for arguments that pretrained weights fix: None takes the expected value."""
    if value is not None and value != expected:
        raise ValueError(f"The parameter '{name}' expected value {expected} but got {value} instead.")
    return expected


@register_model
def deeplabv3_resnet50(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                       aux_loss: Optional[bool] = None, weights_backbone=ResNet50_Weights.IMAGENET1K_V1,
                       **kwargs) -> DeepLabV3:
    """torchvision's signature and defaults: without `weights`, the backbone starts from ImageNet weights
    (`weights_backbone=ResNet50_Weights.IMAGENET1K_V1`, fetched through torchvision; pass None offline)."""
    if weights is not None:
        weights_backbone = None
        if not is_checkpoint_path(weights):  # torchvision weights: trained with the auxiliary head
            aux_loss = _fixed("aux_loss", aux_loss, True)
    elif num_classes is None:
        num_classes = 21  # Pascal VOC's 20 classes and background

    def model_fn(num_classes: int) -> DeepLabV3:
        backbone = resnet50(weights=weights_backbone, progress=progress,
                            replace_stride_with_dilation=[False, True, True])
        return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
        backbone = ResNetBackbone.from_resnet(backbone, return_layers)
        return DeepLabV3(backbone, DeepLabHead(2048, num_classes), FCNHead(1024, num_classes) if aux_loss else None)

    return build(model_fn, weights, progress, **({} if num_classes is None else {"num_classes": num_classes}))
