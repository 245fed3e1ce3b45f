"""The plain-ATen reference of every op: the baseline every test and benchmark compares with.

These are compositions of stock PyTorch operators (cuDNN/oneDNN underneath), written for clarity.
"""
import torch
import torch.nn.functional as F

from fastconv.ops._checks import check_channel_shuffle_args, check_squeeze_excite_args


def channel_shuffle(input, groups):
    check_channel_shuffle_args(input, groups)
    return F.channel_shuffle(input, groups)


_SQUEEZE_ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
_SQUEEZE_GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


def squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation="relu", gate="sigmoid"):
    """torchvision.ops.SqueezeExcitation's forward: five ATen ops (pool, conv, act, conv, gate) + the scale."""
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    scale = F.adaptive_avg_pool2d(input, 1)
    scale = _SQUEEZE_ACTIVATIONS[activation](F.conv2d(scale, fc1_weight, fc1_bias))
    scale = _SQUEEZE_GATES[gate](F.conv2d(scale, fc2_weight, fc2_bias))
    return scale * input
