"""The plain-ATen reference of every op: the baseline every test and benchmark compares with.

These are compositions of stock PyTorch operators (cuDNN/oneDNN underneath), written for clarity.
"""
import torch
import torch.nn.functional as F

from fastconv.ops._checks import check_channel_shuffle_args, check_shuffle_cat_args


def channel_shuffle(input, groups):
    check_channel_shuffle_args(input, groups)
    return F.channel_shuffle(input, groups)


def shuffle_cat(a, b):
    check_shuffle_cat_args(a, b)
    return F.channel_shuffle(torch.cat([a, b], 1), 2)
