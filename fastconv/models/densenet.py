"""DenseNet-BC (Huang, Liu, van der Maaten, Weinberger: "Densely Connected Convolutional Networks", CVPR 2017),
with torchvision's module names and state_dict keys (features.denseblock<i>.denselayer<j>.norm1, ...); the
memory-efficient variant (Pleiss et al.: "Memory-Efficient Implementation of DenseNets", 2017) recomputes the
concatenation and bottleneck in the backward pass.

Pre-activation BN-ReLU pairs run as one pass (fastconv.ops.batch_norm_act); in eval each layer's 1x1
bottleneck convolution absorbs the BN that follows it (norm2), with the ReLU in its epilogue, and each dense
block writes its layers' maps into one preallocated output instead of concatenating them per layer. A transition
average-pools before its 1x1 convolution instead of after (both are linear and commute): 4x fewer FLOPs.
"""
import re
from collections import OrderedDict
from typing import List, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from fastconv.models._layout import ALWAYS, layout_of
from fastconv.models._registry import build, register_model
from fastconv.nn.batchnorm import batch_norm_module
from fastconv.nn.conv_norm_act import Adoptable, ConvWeights, FoldedConvBN, conv_bn_act, conv_constant
from fastconv.nn.sequential import FusedSequential

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201"]


class _DenseLayer(Adoptable, nn.Module):
    """BN-ReLU-conv1x1 (bottleneck to bn_size * k channels), BN-ReLU-conv3x3 (k new feature maps)."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient
        self._init_fast_state()

    def _init_fast_state(self):
        self._bottleneck = FoldedConvBN()
        self._conv2 = ConvWeights()

    def _normalized_input(self, *features: torch.Tensor) -> torch.Tensor:
        """relu1(norm1(cat(features))); one tensor is taken as it is (the block's buffer in inference)."""
        return batch_norm_module(self.norm1, features[0] if len(features) == 1 else torch.cat(features, 1), "relu")

    def _bottleneck_output(self, *features: torch.Tensor) -> torch.Tensor:
        """conv1(relu1(norm1(cat(features)))): what the memory-efficient variant recomputes in backward."""
        return self.conv1(self._normalized_input(*features))

    def forward(self, input) -> torch.Tensor:
        features: List[torch.Tensor] = [input] if isinstance(input, torch.Tensor) else input
        if self.memory_efficient and any(t.requires_grad for t in features):
            x = cp.checkpoint(self._bottleneck_output, *features, use_reentrant=False)
            x = batch_norm_module(self.norm2, x, "relu")
        else:  # relu2(norm2(conv1(...))) as one call: norm2 folded into conv1 in eval
            x = conv_bn_act(self._normalized_input(*features), self.conv1, self.norm2, "relu", self._bottleneck)
        x = conv_constant(x, self.conv2, self._conv2)  # prepacked in CPU inference
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class _DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block input and every earlier layer's output."""

    _version = 2

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate=growth_rate, bn_size=bn_size,
                                drop_rate=drop_rate, memory_efficient=memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        layers = list(self.values())
        if (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and all(type(layer) is _DenseLayer for layer in layers)):
            return self._forward_into_buffer(init_features, layers)
        features = [init_features]
        for layer in layers:
            features.append(layer(features))
        return torch.cat(features, 1)

    @staticmethod
    def _forward_into_buffer(x: torch.Tensor, layers: List["_DenseLayer"]) -> torch.Tensor:
        """Inference: the block's output is allocated once and each layer writes its new maps into it, reading
        the channels before them as a view: no concatenation per layer (each copies every earlier map: the
        block's traffic grows with the square of its depth). In channels_last the view's pixels are rows of the
        whole buffer, which norm1's BN-ReLU pass reads in place (fastconv.ops.batch_norm_act on the CPU)."""
        channels = x.shape[1]
        total = channels + sum(layer.conv2.out_channels for layer in layers)
        out = torch.empty((x.shape[0], total, *x.shape[2:]), dtype=x.dtype, device=x.device,
                          memory_format=layout_of(x))
        out[:, :channels].copy_(x)
        for layer in layers:
            new = layer(out[:, :channels])
            out[:, channels:channels + new.shape[1]].copy_(new)
            channels += new.shape[1]
        return out


class _Transition(Adoptable, nn.Sequential):
    """BN-ReLU, 1x1 convolution (halving the channels), 2x2 average pool; the pool runs before the
    convolution (they commute), on 4x fewer pixels."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self._init_fast_state()

    def _init_fast_state(self):
        self._conv = ConvWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_constant(self.pool(batch_norm_module(self.norm, x, "relu")), self.conv, self._conv)


# Old checkpoints (and torchvision's released weights) name a dense layer's modules "norm.1", "conv.2", ...
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _rename_legacy_keys(state_dict, prefix, *args):
    for key in [k for k in state_dict if k.startswith(prefix)]:
        match = _LEGACY_KEY.match(key)
        if match:
            state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)


class DenseNet(Adoptable, nn.Module):
    def __init__(self, growth_rate: int = 32, block_config: Tuple[int, int, int, int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0, num_classes: int = 1000,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers=num_layers, num_input_features=num_features, bn_size=bn_size,
                                growth_rate=growth_rate, drop_rate=drop_rate, memory_efficient=memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        self._init_fast_state()
        for m in self.modules():  # torchvision's initialisation ("official init from torch repo")
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def _init_fast_state(self):
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)
        FusedSequential.adopt(self.features)  # the stem: conv0-norm0-relu0 as one call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *layers, norm5 = self.features
        for layer in layers:
            x = layer(x)
        x = batch_norm_module(norm5, x, "relu")  # the final BN and the ReLU of the head, one pass
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


def _densenet(growth_rate, block_config, num_init_features, weights, progress, **kwargs) -> DenseNet:
    return build(lambda **kw: DenseNet(growth_rate, block_config, num_init_features, **kw), weights, progress,
                 channels_last_from_batch=ALWAYS, **kwargs)


@register_model
def densenet121(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 24, 16), 64, weights, progress, **kwargs)


@register_model
def densenet161(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(48, (6, 12, 36, 24), 96, weights, progress, **kwargs)


@register_model
def densenet169(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 32, 32), 64, weights, progress, **kwargs)


@register_model
def densenet201(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 48, 32), 64, weights, progress, **kwargs)
