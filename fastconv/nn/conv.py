from typing import Optional

import torch

from fastconv import ops
from fastconv.nn.conv_norm_act import _APPLY
from fastconv.ops._checks import check_activation


class Conv2d(torch.nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d`` (same arguments, same state_dict), plus an optional fused
    ``activation`` (None, "relu", "relu6", "hardswish", "silu"; default None, i.e. exactly Conv2d), applied in
    the convolution's epilogue.

    Depthwise configurations (groups == in_channels, out_channels a multiple of in_channels, zero padding) run
    ``fastconv.ops.depthwise_conv2d``; other zero-padded configurations with an activation run
    ``fastconv.ops.conv2d_act``; the rest runs ``torch.nn.Conv2d.forward`` (then the activation).
    """

    activation: Optional[str] = None  # also for modules whose class was swapped in place

    def __init__(self, *args, activation: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        check_activation(activation, "Conv2d")
        self.activation = activation

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"

    def is_depthwise(self) -> bool:
        return (self.groups == self.in_channels and self.out_channels % self.in_channels == 0
                and self.padding_mode == "zeros")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.is_depthwise():
            return ops.depthwise_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                        self.activation)
        if self.activation is not None and self.padding_mode == "zeros":
            return ops.conv2d_act(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                  self.groups, self.activation)
        out = super().forward(input)
        return out if self.activation is None else _APPLY[self.activation](out)
