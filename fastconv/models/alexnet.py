"""AlexNet (Krizhevsky, Sutskever, Hinton: "ImageNet Classification with Deep Convolutional Neural Networks",
NeurIPS 2012), in torchvision's single-tower variant ("One weird trick for parallelizing convolutional neural
networks", Krizhevsky 2014: 64-192-384-256-256 filters), with torchvision's module names and state_dict keys.

The five conv-ReLU pairs run as one convolution with the ReLU in its epilogue (fastconv.nn.FusedSequential).
"""
import torch
from torch import nn

from fastconv.models._layout import ALWAYS
from fastconv.models._registry import build, register_model
from fastconv.nn.conv_norm_act import Adoptable
from fastconv.nn.sequential import FusedSequential

__all__ = ["AlexNet", "alexnet"]


class AlexNet(Adoptable, nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        self._init_fast_state()

    def _init_fast_state(self):
        if type(self.features) is nn.Sequential:  # a user's own feature module keeps its forward
            FusedSequential.adopt(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model
def alexnet(*, weights=None, progress: bool = True, **kwargs) -> AlexNet:
    return build(AlexNet, weights, progress, channels_last_from_batch=ALWAYS, **kwargs)
