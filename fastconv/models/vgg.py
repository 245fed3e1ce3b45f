"""VGG (Simonyan & Zisserman: "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015),
configurations A (VGG-11), B (13), D (16) and E (19) of Table 1, with and without batch normalisation (Ioffe &
Szegedy, ICML 2015), with torchvision's module names and state_dict keys (features.<i>, classifier.<i>).

Each 3x3 conv(-BN)-ReLU of `features` runs as one fused call (fastconv.nn.FusedSequential): in eval the BN is
folded into the convolution and the ReLU applied in its epilogue.
"""
from typing import List, Union

import torch
from torch import nn

from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.nn.conv_norm_act import Adoptable
from fastconv.nn.sequential import FusedSequential

__all__ = ["VGG", "make_layers", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

# Table 1 of the paper: output channels of each 3x3 convolution, "M" a 2x2 max-pool.
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(Adoptable, nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        self._init_fast_state()
        if init_weights:  # torchvision's initialisation
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def _init_fast_state(self):
        if type(self.features) is nn.Sequential:  # a user's own feature module keeps its forward
            FusedSequential.adopt(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def make_layers(cfg: List[Union[str, int]], batch_norm: bool = False) -> FusedSequential:
    """The convolutional part of a VGG configuration: [conv3x3, (BN,) ReLU] per number, a max-pool per "M"."""
    layers: List[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return FusedSequential(*layers)


def _vgg(config: str, batch_norm: bool, weights, progress: bool, **kwargs) -> VGG:
    if weights is not None:
        kwargs.setdefault("init_weights", False)  # as torchvision: the weights overwrite it anyway
    return build(lambda **kw: VGG(make_layers(CONFIGS[config], batch_norm), **kw), weights, progress,
                 channels_last_from_batch=ALWAYS, **kwargs)


@register_model
def vgg11(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("A", False, weights, progress, **kwargs)


@register_model
def vgg11_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("A", True, weights, progress, **kwargs)


@register_model
def vgg13(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("B", False, weights, progress, **kwargs)


@register_model
def vgg13_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("B", True, weights, progress, **kwargs)


@register_model
def vgg16(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("D", False, weights, progress, **kwargs)


@register_model
def vgg16_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("D", True, weights, progress, **kwargs)


@register_model
def vgg19(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("E", False, weights, progress, **kwargs)


@register_model
def vgg19_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("E", True, weights, progress, **kwargs)
