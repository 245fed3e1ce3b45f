import torch

from fastconv import ops


class Conv2d(torch.nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d`` (same arguments, same state_dict). Depthwise configurations
    (groups == in_channels, out_channels a multiple of in_channels, zero padding) run
    ``fastconv.ops.depthwise_conv2d``; every other configuration runs ``torch.nn.Conv2d.forward``."""

    def is_depthwise(self) -> bool:
        return (self.groups == self.in_channels and self.out_channels % self.in_channels == 0
                and self.padding_mode == "zeros")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.is_depthwise():
            return super().forward(input)
        return ops.depthwise_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)
