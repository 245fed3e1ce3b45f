"""ZFNet (Zeiler & Fergus: "Visualizing and Understanding Convolutional Networks", ECCV 2014, Fig. 3), the
ILSVRC-2013 winner: AlexNet with a 7x7 stride-2 first layer (AlexNet: 11x11 stride 4), a stride-2 second
layer, and dense 384/384/256 layers 3-5 (one GPU, no grouped convolutions).

    layer 1: 96 x 7x7 conv, stride 2 -> 110x110, ReLU, 3x3 max-pool stride 2 -> 55x55, contrast norm.
    layer 2: 256 x 5x5 conv, stride 2 -> 26x26, ReLU, 3x3 max-pool stride 2 -> 13x13, contrast norm.
    layers 3, 4, 5: 384, 384, 256 x 3x3 conv, stride 1 -> 13x13, ReLU; 3x3 max-pool stride 2 -> 6x6.
    layers 6, 7: 4096 fully connected, ReLU, dropout 0.5; output: num_classes.

The sizes of Fig. 3 need one pixel of padding in layer 1 and ceil-mode pooling (Caffe's rounding). The
"contrast normalization across feature maps" uses AlexNet's local response normalisation constants (the
paper gives none). Weights are initialised as the paper says: N(0, 1e-2), biases 0. Module names follow
torchvision's AlexNet (features / avgpool / classifier); like it, an adaptive 6x6 pool makes any input size
above ~63 px valid. Convolution + ReLU pairs are fastconv.nn.Conv2dNormActivation blocks without a norm.
"""
from typing import Optional

import torch
from torch import nn

from fastconv.models._registry import build, register_model
from fastconv.nn import Conv2dNormActivation

__all__ = ["ZFNet", "zfnet"]


def _conv_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, stride, padding, norm_layer=None,
                                activation_layer=nn.ReLU)


def _contrast_norm() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


def _max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class ZFNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, init_std: Optional[float] = 1e-2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_relu(3, 96, 7, stride=2, padding=1), _max_pool(), _contrast_norm(),
            _conv_relu(96, 256, 5, stride=2, padding=0), _max_pool(), _contrast_norm(),
            _conv_relu(256, 384, 3, stride=1, padding=1),
            _conv_relu(384, 384, 3, stride=1, padding=1),
            _conv_relu(384, 256, 3, stride=1, padding=1), _max_pool(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        if init_std is not None:  # "All weights are initialized to 10^-2 and biases are set to 0" (Sec. 3)
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(module.weight, 0.0, init_std)
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model
def zfnet(*, weights=None, progress: bool = True, **kwargs) -> ZFNet:
    """ZFNet for 224x224 ImageNet inputs. ``weights``: a local checkpoint path."""
    return build(ZFNet, weights, progress, **kwargs)
