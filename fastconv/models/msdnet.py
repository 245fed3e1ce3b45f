"""MSDNet: Gao Huang, Danlu Chen, Tianhong Li, Felix Wu, Laurens van der Maaten, Kilian Q. Weinberger,
"Multi-Scale Dense Networks for Resource Efficient Image Classification", ICLR 2018 (arXiv:1703.09844);
the CIFAR form of the network, with the authors' code (github.com/gaohuang/MSDNet, its PyTorch port
kalviny/MSDNet-PyTorch) as the reference for what the paper leaves to it.

* Multi-scale feature maps (Sec. 4). The network keeps ``num_scales`` maps at once, each half the
  resolution and ``scale_widths[s]`` times the channels of the finer one. The first layer makes them all:
  a 3x3 conv-BN-ReLU at the input's resolution (CIFAR: stride 1), then one strided 3x3 conv-BN-ReLU per
  coarser scale, each from the scale above it.
* Dense connectivity across depth and scale. Every later layer adds, at each scale, new maps to the old ones
  (concatenation, as DenseNet): half from a regular conv of the same scale, half from a strided conv of the
  finer scale (the finest scale has only the regular one: ``growth * scale_widths[s]`` new maps in all).
  Each conv is a bottleneck, a 1x1 conv-BN-ReLU to at most ``bottleneck_widths[s]`` times its output
  channels then a 3x3 conv-BN-ReLU (:class:`MSDConv`; ``bottleneck=False``: the 3x3 alone).
* Classifiers at the coarsest scale (Sec. 4, "Classifiers"): after every block, two strided 3x3
  conv-BN-ReLU (``classifier_channels`` each; 128 in the paper's CIFAR models), average pooling, linear.
  ``model(x)`` returns the list of their logits, earliest first.
* Dropping scales (Sec. 4, "Network reduction and lazy evaluation"; the code's ``prune='max'``): the total
  of layers is cut into ``num_scales`` equal spans and each span keeps one scale fewer than the one before,
  losing its finest: maps that no later classifier could reach are not computed. When a layer drops a scale,
  a transition layer (a 1x1 conv-BN-ReLU per scale) shrinks the channels by ``reduction`` (0.5).
  ``drop_scales=False`` keeps every scale in every layer (and has no transitions).
* Blocks: block k has ``steps[k]`` layers (the code's ``--base`` for the first, ``--step`` after, or
  ``steps=`` given outright); the first block also runs the first layer.
* Anytime and budgeted inference: ``model.predict(x, threshold)`` stops each sample at the first classifier
  whose softmax confidence reaches the threshold (one, or one per exit from
  ``fastconv.models._anytime.budgeted_thresholds``: the paper's budgeted batch classification), and later
  blocks run only on the samples still going; ``model.exit_costs((C, H, W))`` gives the multiply-adds to
  reach each exit. Both are shared with SmartNet (:class:`fastconv.models._anytime.AnytimeNetwork`).

Measured against SmartNet at equal multiply-adds on scikit-learn's digits (``examples/anytime_digits.py``;
the README's "SmartNet vs MSDNet" has the tables): far better at the first exit (98.3 % vs 86.2 %, 3 seeds),
within about two test images of it (slightly behind) from ~4 M multiply-adds on. Digits, not CIFAR.

Not here: the ImageNet first layer (7x7 stride 2 + max pool) and its classifiers (the CIFAR ones are used
whatever ``num_scales``); the authors' initialisation (He-normal conv weights by fan-out): the weights start
from PyTorch's defaults, as SmartNet's do, so the comparison differs in architecture only. State_dict keys
are fastconv's own (no published MSDNet checkpoint is loaded).

fastconv: every conv-BN-ReLU is a fastconv.nn.Conv2dNormActivation (folded and run by fastconv.ops.conv2d_act
in eval; conv + fastconv.ops.batch_norm_act in training).
"""
import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from fastconv.models._anytime import AnytimeNetwork
from fastconv.models._registry import build, register_model
from fastconv.nn import Conv2dNormActivation

__all__ = ["MSDConv", "MSDFirstLayer", "MSDLayer", "MSDTransition", "MSDClassifier", "MSDNet", "msdnet",
           "scale_schedule"]


class MSDConv(nn.Sequential):
    """The paper's conv unit: [1x1 conv-BN-ReLU to min(in, ``bottleneck_width`` * out) channels], then a
    3x3 conv-BN-ReLU with ``stride`` (2: from the finer scale)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bottleneck_width: Optional[int]) -> None:
        layers = []
        channels = in_channels
        if bottleneck_width is not None:
            channels = min(in_channels, bottleneck_width * out_channels)
            layers.append(Conv2dNormActivation(in_channels, channels, 1))
        layers.append(Conv2dNormActivation(channels, out_channels, 3, stride=stride))
        super().__init__(*layers)


class MSDFirstLayer(nn.ModuleList):
    """Makes every scale from the input: a 3x3 conv-BN-ReLU, then a strided one per coarser scale."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__([Conv2dNormActivation(in_channels, channels[0], 3)] +
                         [Conv2dNormActivation(finer, coarser, 3, stride=2)
                          for finer, coarser in zip(channels, channels[1:])])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        maps = []
        for conv in self:
            x = conv(x)
            maps.append(x)
        return maps


class MSDScaleUnit(nn.Module):
    """New maps at one scale, concatenated to the old: ``[same, strided(finer), regular(same)]`` (the finest
    kept scale, ``finer_channels=None``: ``[same, regular(same)]``)."""

    def __init__(self, finer_channels: Optional[int], same_channels: int, new_channels: int,
                 finer_bottleneck: Optional[int], same_bottleneck: Optional[int]) -> None:
        super().__init__()
        from_finer = 0 if finer_channels is None else new_channels // 2
        self.strided = (None if finer_channels is None
                        else MSDConv(finer_channels, from_finer, 2, finer_bottleneck))
        self.regular = MSDConv(same_channels, new_channels - from_finer, 1, same_bottleneck)

    def forward(self, finer: Optional[torch.Tensor], same: torch.Tensor) -> torch.Tensor:
        if self.strided is None:
            return torch.cat([same, self.regular(same)], 1)
        return torch.cat([same, self.strided(finer), self.regular(same)], 1)


class MSDLayer(nn.Module):
    """One layer across scales: ``in_scales`` coarsest maps in, ``out_scales`` out (one fewer when it drops
    the finest, which then only feeds the next scale's strided conv). ``channels[s]``: the channels at
    scale s (of all ``num_scales``) before the layer; ``growths[s]`` the new ones."""

    def __init__(self, channels: Sequence[int], growths: Sequence[int], bottleneck_widths: Sequence[Optional[int]],
                 in_scales: int, out_scales: int) -> None:
        super().__init__()
        num_scales = len(channels)
        if not 0 <= in_scales - out_scales <= 1 or not 1 <= out_scales <= in_scales <= num_scales:
            raise ValueError(f"MSDLayer: {in_scales} scales in, {out_scales} out: drops at most one scale")
        self.drops_scale = in_scales > out_scales
        first = num_scales - out_scales  # the finest scale it outputs
        self.units = nn.ModuleList(
            MSDScaleUnit(None if s == first and not self.drops_scale else channels[s - 1], channels[s], growths[s],
                         bottleneck_widths[s - 1] if s > 0 else None, bottleneck_widths[s])
            for s in range(first, num_scales))

    def forward(self, maps: List[torch.Tensor]) -> List[torch.Tensor]:
        finer: List[Optional[torch.Tensor]] = [None] + list(maps[:-1])
        if self.drops_scale:  # the finest input is read (by the strided conv) but not passed on
            finer, maps = finer[1:], maps[1:]
        return [unit(f, m) for unit, f, m in zip(self.units, finer, maps)]


class MSDTransition(nn.ModuleList):
    """A 1x1 conv-BN-ReLU per scale (after a layer that dropped a scale): compresses the channels."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__(Conv2dNormActivation(i, o, 1) for i, o in zip(in_channels, out_channels))

    def forward(self, maps: List[torch.Tensor]) -> List[torch.Tensor]:
        return [conv(m) for conv, m in zip(self, maps)]


class MSDClassifier(nn.Module):
    """Two strided 3x3 conv-BN-ReLU on the coarsest maps, average pool, linear (the paper's CIFAR exit; its
    AvgPool2d(2) on the 2x2 maps a 32x32 input leaves is the mean over whatever size is left)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_classes: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(Conv2dNormActivation(in_channels, hidden_channels, 3, stride=2),
                                   Conv2dNormActivation(hidden_channels, hidden_channels, 3, stride=2))
        self.fc = nn.Linear(hidden_channels, num_classes)

    def forward(self, coarsest: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(coarsest).mean((2, 3)))


def scale_schedule(total_layers: int, num_scales: int, drop_scales: bool = True) -> List[int]:
    """The scales each of the ``total_layers`` layers outputs (layers numbered from 1; the first layer not
    counted): with ``drop_scales``, ``num_scales - floor((n - 1) / ceil(total_layers / num_scales))`` (the
    authors' ``prune='max'``), else ``num_scales`` throughout."""
    if not drop_scales:
        return [num_scales] * total_layers
    span = math.ceil(total_layers / num_scales)
    return [num_scales - (n - 1) // span for n in range(1, total_layers + 1)]


class MSDNet(AnytimeNetwork):
    """An exit after each of ``len(steps)`` blocks of ``steps[k]`` layers, ``num_scales`` scales (the
    input's resolution, then halved each), ``channels * scale_widths[s]`` channels per scale after the first
    layer, ``growth * scale_widths[s]`` new ones per layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, steps: Sequence[int] = (2, 2, 2, 2),
                 num_scales: int = 3, growth: int = 4, channels: int = 6, scale_widths: Sequence[int] = (1, 2, 4),
                 bottleneck: bool = True, bottleneck_widths: Sequence[int] = (1, 2, 4), classifier_channels: int = 32,
                 reduction: float = 0.5, drop_scales: bool = True) -> None:
        super().__init__()
        if not steps or min(steps) < 1:
            raise ValueError(f"MSDNet: steps needs one positive layer count per block, got {steps}")
        if len(scale_widths) != num_scales or len(bottleneck_widths) != num_scales:
            raise ValueError(f"MSDNet: scale_widths and bottleneck_widths need {num_scales} entries (num_scales), "
                             f"got {scale_widths} and {bottleneck_widths}")
        self.num_classes = num_classes
        self.config = dict(num_classes=num_classes, in_channels=in_channels, steps=tuple(steps),
                           num_scales=num_scales, growth=growth, channels=channels, scale_widths=tuple(scale_widths),
                           bottleneck=bottleneck, bottleneck_widths=tuple(bottleneck_widths),
                           classifier_channels=classifier_channels, reduction=reduction, drop_scales=drop_scales)
        widths = [w if bottleneck else None for w in bottleneck_widths]
        self.first_layer = MSDFirstLayer(in_channels, [channels * w for w in scale_widths])
        schedule = scale_schedule(sum(steps), num_scales, drop_scales)
        self.scales_per_layer = schedule
        blocks, exits = [], []
        scales = num_scales
        layer = 0
        for block_layers in steps:
            block = []
            for _ in range(block_layers):
                out_scales = schedule[layer]
                layer += 1
                block.append(MSDLayer([channels * w for w in scale_widths], [growth * w for w in scale_widths],
                                      widths, scales, out_scales))
                channels += growth
                if out_scales < scales and reduction > 0:
                    kept = scale_widths[num_scales - out_scales:]
                    reduced = math.floor(reduction * channels)
                    block.append(MSDTransition([channels * w for w in kept], [reduced * w for w in kept]))
                    channels = reduced
                scales = out_scales
            blocks.append(nn.Sequential(*block))
            exits.append(MSDClassifier(channels * scale_widths[-1], classifier_channels, num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.exits = nn.ModuleList(exits)

    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    def start(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.first_layer(x)

    def step(self, index: int, maps: List[torch.Tensor]) -> torch.Tensor:
        """Run block ``index`` (replacing ``maps``, finest first, by its output), return exit ``index``'s logits."""
        maps[:] = self.blocks[index](maps)
        return self.exits[index](maps[-1])

    def keep(self, maps: List[torch.Tensor], rows: torch.Tensor) -> List[torch.Tensor]:
        return [m.index_select(0, rows) for m in maps]

    def exit_modules(self, index: int) -> List[nn.Module]:
        """Block ``index`` and classifier ``index`` (and the first layer, with the first exit)."""
        return [self.blocks[index], self.exits[index]] + ([self.first_layer] if index == 0 else [])


@register_model
def msdnet(*, weights=None, progress: bool = True, **kwargs) -> MSDNet:
    """A small 4-exit, 3-scale MSDNet for 32x32 inputs (``num_classes=10``, ``in_channels=3``; the digits
    example uses ``in_channels=1``), sized to SmartNet's multiply-adds at the last exit on digits. The
    authors' CIFAR anytime model (their run_anytime_cifar.sh: 10 blocks, base 4, step 2, 16 channels, growth
    6): ``msdnet(steps=(4,) + (2,) * 9, channels=16, growth=6, classifier_channels=128)``."""
    return build(MSDNet, weights, progress, **kwargs)
