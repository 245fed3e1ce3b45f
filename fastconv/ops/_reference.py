"""The plain-ATen reference of every op: the baseline every test and benchmark compares with.

These are compositions of stock PyTorch operators (cuDNN/oneDNN underneath), written for clarity.
"""
import torch.nn.functional as F

from fastconv.ops._checks import check_channel_shuffle_args, check_depthwise_conv2d_args


def channel_shuffle(input, groups):
    check_channel_shuffle_args(input, groups)
    return F.channel_shuffle(input, groups)


_ACTIVATIONS = {
    None: lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "silu": F.silu,
}


def depthwise_conv2d(input, weight, bias, stride, padding, dilation, activation):
    """F.conv2d(groups=C) then the activation; padding is the resolved (top, bottom, left, right)."""
    check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation, activation)
    top, bottom, left, right = padding
    if top == bottom and left == right:
        out = F.conv2d(input, weight, bias, stride, (top, left), dilation, groups=input.shape[1])
    else:  # asymmetric ("same" with an even kernel span): pad explicitly, as ATen itself does
        out = F.conv2d(F.pad(input, (left, right, top, bottom)), weight, bias, stride, 0, dilation,
                       groups=input.shape[1])
    return _ACTIVATIONS[activation](out)
