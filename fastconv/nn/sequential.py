"""FusedSequential: an ``nn.Sequential`` (same keys) whose conv -> BN -> activation runs execute as fused ops.

Classic networks (AlexNet, VGG, DenseNet transitions, segmentation heads) keep their conv, BatchNorm2d and
ReLU as flat siblings of one ``nn.Sequential`` (``features.0`` conv, ``features.1`` BN, ``features.2`` ReLU),
so their state_dict keys leave no room for a nested Conv2dNormActivation. This container keeps that layout
and fuses at run time instead.
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

from fastconv import ops
from fastconv.nn.batchnorm import APPLY_OUT_OF_PLACE, BatchNorm2d, batch_norm_module, has_hooks
from fastconv.nn.conv import Conv2d
from fastconv.nn.conv_norm_act import _APPLY, FUSABLE_ACTIVATIONS, Adoptable, ConvWeights, FoldedConvBN, \
    can_fold, conv2d_activation, conv_bn_act
from fastconv.ops.conv2d_act import _GEMM_MAX_MACS, conv2d_act_constant
from fastconv.ops.shuffle_cat_conv2d_act import _OP as _SHUFFLE_CAT_CONV_OP

# Exact types only: a user's subclass may override forward, and must then run as it is.
_CONVS = (nn.Conv2d, Conv2d)


def _is_plain_batch_norm(module: nn.Module) -> bool:
    return type(module) is nn.BatchNorm2d or (type(module) is BatchNorm2d and module.activation is None)


def conv_activation(x: torch.Tensor, conv: nn.Conv2d, activation: Optional[str],
                    weights: Optional[ConvWeights] = None) -> torch.Tensor:
    """activation(conv(x)) in one call: depthwise convolutions of a fastconv.nn.Conv2d through
    fastconv.ops.depthwise_conv2d, every other zero-padded convolution through conv2d_activation; in inference,
    with `weights` (the convolution's cache), through conv2d_act_constant (prepacked on the CPU)."""
    if has_hooks(conv):
        out = conv(x)
        return out if activation is None else APPLY_OUT_OF_PLACE[activation](out)
    if isinstance(conv, Conv2d) and conv.is_depthwise():
        return ops.depthwise_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, activation)
    if conv.padding_mode != "zeros":
        out = conv(x)
        return out if activation is None else _APPLY[activation](out)
    if weights is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return conv2d_act_constant(x, *weights.prepared(conv), activation, weights.packed)
    return conv2d_activation(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                             activation)


def _fuses_into_shuffle_cat(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether shuffle_cat(a, conv-BN-act(x)) runs as one shuffle_cat_conv2d_act. On the GPU kernels, always (the
    convolution's epilogue writes the interleaved output). On the CPU, where the fused op computes the convolution
    the way conv2d_act does, only where that is the small channels_last pointwise GEMM (ShuffleNetV2's 1x1 layers
    at small batch): larger convolutions run oneDNN on a prepacked weight in inference (conv2d_act_constant),
    which the fused op does not have."""
    if x.device.type != "cpu":
        return True
    return (x.dim() == 4 and x.dtype in (torch.float32, torch.float64) and x.stride(1) == 1 and type(conv) in _CONVS
            and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding in ((0, 0), "valid") and x.numel() * conv.out_channels <= _GEMM_MAX_MACS)


def _conv_bn_act_shuffle_cat(a, x, conv, bn, activation, fold: FoldedConvBN):
    """shuffle_cat(a, conv_bn_act(x, conv, bn, activation, fold)) as one op, BN folded (the caller checked
    can_fold)."""
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        weight, bias, stride, padding, dilation, groups = fold.prepared(conv, bn)  # resolved once, cached
        return _SHUFFLE_CAT_CONV_OP.run(a, x, weight, bias, stride, padding, dilation, groups, activation)
    weight, bias = fold(conv, bn)
    return ops.shuffle_cat_conv2d_act(a, x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                                      activation)


# One step of the plan: (first index, one past the last index, kind, activation); kind is "conv_bn",
# "conv", "bn" or "module".
_Step = Tuple[int, int, str, Optional[str]]


def _plan(layers: List[nn.Module]) -> List[_Step]:
    steps: List[_Step] = []
    i = 0
    while i < len(layers):
        layer, end = layers[i], i + 1
        if type(layer) in _CONVS or _is_plain_batch_norm(layer):
            kind = "conv" if type(layer) in _CONVS else "bn"
            if kind == "conv" and end < len(layers) and _is_plain_batch_norm(layers[end]):
                kind, end = "conv_bn", end + 1
            activation = FUSABLE_ACTIVATIONS.get(type(layers[end])) if end < len(layers) else None
            end += activation is not None
            if kind == "conv" and activation is None:
                kind = "module"  # a lone convolution: nothing to fuse
            steps.append((i, end, kind, activation))
        else:
            steps.append((i, end, "module", None))
        i = end
    return steps


class FusedSequential(Adoptable, nn.Sequential):
    """Drop-in for ``torch.nn.Sequential`` (same constructor, same state_dict keys) that runs its
    ``Conv2d -> BatchNorm2d [-> activation]``, ``Conv2d -> activation`` and ``BatchNorm2d [-> activation]``
    runs as one fused call each; every other module runs as usual.

    Conv-BN folds the BN into the convolution in eval (see FoldedConvBN) and runs BN with its activation
    through fastconv.ops.batch_norm_act in training; BN-activation (pre-activation nets) always runs through
    batch_norm_act. Activations: ReLU, ReLU6, Hardswish, SiLU (exact types). The outputs equal
    ``nn.Sequential``'s. A member with forward hooks (or pre-hooks: pruning) runs as itself, so its hooks fire.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self._init_fast_state()

    def _init_fast_state(self):
        self._replan()

    def _replan(self):
        layers = list(self._modules.values())
        self._steps = _plan(layers)
        self._planned = tuple(id(layer) for layer in layers)
        self._folds = {start: FoldedConvBN() for start, _, kind, _ in self._steps if kind == "conv_bn"}
        self._weights = {start: ConvWeights() for start, _, kind, _ in self._steps if kind == "conv"}

    def _layers(self) -> List[nn.Module]:
        layers = list(self._modules.values())
        if not torch.compiler.is_compiling() and tuple(map(id, layers)) != self._planned:
            self._replan()  # layers were appended, inserted or replaced since the last plan
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self._layers(), self._steps)

    def shuffle_cat_after(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``fastconv.ops.shuffle_cat(a, self(x))``: the end of a ShuffleNet v2 unit. When this container ends with
        a conv-BN-activation that folds (eval), and that convolution runs as the fused op's fast path
        (_fuses_into_shuffle_cat), its result is written straight into the interleaved output by
        fastconv.ops.shuffle_cat_conv2d_act instead of making a round trip of its own."""
        layers = self._layers()
        steps = self._steps
        if steps and steps[-1][2] == "conv_bn":
            start, _, _, activation = steps[-1]
            conv, bn = layers[start], layers[start + 1]
            if can_fold(conv, bn):
                x = self._run(x, layers, steps[:-1])
                if _fuses_into_shuffle_cat(x, conv):
                    return _conv_bn_act_shuffle_cat(a, x, conv, bn, activation, self._folds[start])
                return ops.shuffle_cat(a, conv_bn_act(x, conv, bn, activation, self._folds[start]))
        return ops.shuffle_cat(a, self._run(x, layers, steps))

    def _run(self, x: torch.Tensor, layers: List[nn.Module], steps: List[_Step]) -> torch.Tensor:
        for start, end, kind, activation in steps:
            # An activation module with hooks runs as itself, after the rest of its step.
            hooked_activation = activation is not None and has_hooks(layers[end - 1])
            if hooked_activation:
                activation = None
            if kind == "conv_bn":
                x = conv_bn_act(x, layers[start], layers[start + 1], activation, self._folds[start])
            elif kind == "conv":
                x = conv_activation(x, layers[start], activation, self._weights[start])
            elif kind == "bn":
                x = batch_norm_module(layers[start], x, activation)
            else:
                x = layers[start](x)
            if hooked_activation:
                x = layers[end - 1](x)
        return x
