"""The plain-ATen reference of every op: the baseline every test and benchmark compares with.

These are compositions of stock PyTorch operators (cuDNN/oneDNN underneath), written for clarity.
"""
import torch
import torch.nn.functional as F

from fastconv.ops._checks import (
    check_batch_norm_act_args,
    check_channel_shuffle_args,
    check_deform_conv2d_args,
    check_conv2d_act_args,
    check_depthwise_conv2d_args,
    check_shuffle_cat_args,
    check_shuffle_cat_conv2d_act_args,
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


def _bilinear_columns(input, offset, kernel_size, stride, padding, dilation, mask, offset_groups):
    """The deformable im2col of torchvision: (N, C, kh*kw, H_out*W_out) bilinear samples times the mask, as
    differentiable ATen ops (floor, gather, where). Zero outside (-1, H) x (-1, W); each corner zero outside
    the image."""
    n, channels, height, width = input.shape
    kh, kw = kernel_size
    out_h, out_w = offset.shape[2:]
    taps = kh * kw
    off = offset.reshape(n, offset_groups, taps, 2, out_h * out_w)
    tap_y = (torch.arange(kh, device=input.device) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=input.device) * dilation[1]).repeat(kh)
    grid_y = (torch.arange(out_h, device=input.device) * stride[0] - padding[0]).repeat_interleave(out_w)
    grid_x = (torch.arange(out_w, device=input.device) * stride[1] - padding[1]).repeat(out_h)
    y = (tap_y[:, None] + grid_y[None, :]).to(input.dtype) + off[:, :, :, 0]  # (N, G, kk, P)
    x = (tap_x[:, None] + grid_x[None, :]).to(input.dtype) + off[:, :, :, 1]
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    y0, x0 = torch.floor(y.detach()), torch.floor(x.detach())
    ly, lx = y - y0, x - x0
    planes = input.reshape(n, offset_groups, channels // offset_groups, height * width)
    columns = 0
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        cy, cx = y0 + dy, x0 + dx
        valid = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
        index = torch.where(valid, cy * width + cx, 0).long().reshape(n, offset_groups, 1, taps * out_h * out_w)
        values = torch.gather(planes, 3, index.expand(-1, -1, planes.shape[2], -1))
        values = values.reshape(n, offset_groups, -1, taps, out_h * out_w)
        factor = torch.where(valid & inside, weight, 0)
        columns = columns + values * factor[:, :, None]
    if mask is not None:
        columns = columns * mask.reshape(n, offset_groups, 1, taps, out_h * out_w)
    return columns.reshape(n, channels, taps, out_h * out_w)


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask):
    """torchvision.ops.deform_conv2d as plain ATen: bilinear im2col (the whole column matrix) then a grouped
    matrix product. stride/padding/dilation are (int, int) pairs."""
    (n, out_channels, out_h, out_w), groups, offset_groups = check_deform_conv2d_args(
        input, offset, weight, bias, stride, padding, dilation, mask)
    dtype = input.dtype
    if dtype in (torch.float16, torch.bfloat16):  # float32 math, like the convolution libraries' accumulation
        input, offset, weight = input.float(), offset.float(), weight.float()
        bias = bias.float() if bias is not None else None
        mask = mask.float() if mask is not None else None
    columns = _bilinear_columns(input, offset, weight.shape[2:], stride, padding, dilation, mask, offset_groups)
    columns = columns.reshape(n, groups, -1, out_h * out_w)  # (N, groups, C/groups*kk, P)
    out = torch.einsum("gok,ngkp->ngop", weight.reshape(groups, out_channels // groups, -1), columns)
    out = out.reshape(n, out_channels, out_h, out_w)
    return (out if bias is None else out + bias[:, None, None]).to(dtype)


def conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation):
    """F.conv2d then the activation; padding is the resolved (top, bottom, left, right)."""
    check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
    top, bottom, left, right = padding
    if top == bottom and left == right:
        out = F.conv2d(input, weight, bias, stride, (top, left), dilation, groups)
    else:  # asymmetric ("same" with an even kernel span): pad explicitly, as ATen itself does
        out = F.conv2d(F.pad(input, (left, right, top, bottom)), weight, bias, stride, 0, dilation, groups)
    return ACTIVATION_FUNCTIONS[activation](out)


def shuffle_cat_conv2d_act(a, input, weight, bias, stride, padding, dilation, groups, activation):
    """shuffle_cat(a, conv2d_act(input, ...)): the two ops it fuses, each as plain ATen."""
    check_shuffle_cat_conv2d_act_args(a, input, weight, bias, stride, padding, dilation, groups, activation)
    return shuffle_cat(a, conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation))
