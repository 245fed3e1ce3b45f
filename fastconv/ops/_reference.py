"""The plain-ATen reference of every op: the baseline every test and benchmark compares with.

These are compositions of stock PyTorch operators (cuDNN/oneDNN underneath), written for clarity.
"""
import torch
import torch.nn.functional as F

from fastconv.ops._checks import (
    check_batch_norm_act_args,
    check_channel_shuffle_args,
    check_conv2d_act_args,
    check_depthwise_conv2d_args,
    check_shuffle_cat_args,
    check_squeeze_excite_args,
)

# The activations fastconv fuses, as their stock functional forms.
ACTIVATION_FUNCTIONS = {
    None: lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "silu": F.silu,
}



def channel_shuffle(input, groups):
    check_channel_shuffle_args(input, groups)
    return F.channel_shuffle(input, groups)


def shuffle_cat(a, b):
    check_shuffle_cat_args(a, b)
    return F.channel_shuffle(torch.cat([a, b], 1), 2)


def batch_norm_act(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    check_batch_norm_act_args(input, weight, bias, running_mean, running_var, training, momentum, eps, activation)
    out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return ACTIVATION_FUNCTIONS[activation](out)


_SQUEEZE_ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
_SQUEEZE_GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


def squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation="relu", gate="sigmoid"):
    """torchvision.ops.SqueezeExcitation's forward: five ATen ops (pool, conv, act, conv, gate) + the scale."""
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    scale = F.adaptive_avg_pool2d(input, 1)
    scale = _SQUEEZE_ACTIVATIONS[activation](F.conv2d(scale, fc1_weight, fc1_bias))
    scale = _SQUEEZE_GATES[gate](F.conv2d(scale, fc2_weight, fc2_bias))
    return scale * input


def depthwise_conv2d(input, weight, bias, stride, padding, dilation, activation):
    """F.conv2d(groups=C) then the activation; padding is the resolved (top, bottom, left, right)."""
    check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation, activation)
    top, bottom, left, right = padding
    if top == bottom and left == right:
        out = F.conv2d(input, weight, bias, stride, (top, left), dilation, groups=input.shape[1])
    else:  # asymmetric ("same" with an even kernel span): pad explicitly, as ATen itself does
        out = F.conv2d(F.pad(input, (left, right, top, bottom)), weight, bias, stride, 0, dilation,
                       groups=input.shape[1])
    return ACTIVATION_FUNCTIONS[activation](out)


def conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation):
    """F.conv2d then the activation; padding is the resolved (top, bottom, left, right)."""
    check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
    top, bottom, left, right = padding
    if top == bottom and left == right:
        out = F.conv2d(input, weight, bias, stride, (top, left), dilation, groups)
    else:  # asymmetric ("same" with an even kernel span): pad explicitly, as ATen itself does
        out = F.conv2d(F.pad(input, (left, right, top, bottom)), weight, bias, stride, 0, dilation, groups)
    return ACTIVATION_FUNCTIONS[activation](out)
