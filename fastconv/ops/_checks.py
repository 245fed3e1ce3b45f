"""Argument checks on the Python side (fake kernels, Triton and reference paths).

They mirror csrc/<op>.h so every backend, and torch.compile's fake tensors, raise the same RuntimeError.
"""
import torch


def check_channel_shuffle_args(input, groups):
    torch._check(
        input.dim() >= 3,
        lambda: f"channel_shuffle: input must have at least 3 dimensions (N, C, *), got sizes {list(input.shape)}",
    )
    torch._check(groups > 0, lambda: f"channel_shuffle: groups must be positive, got {groups}")
    torch._check(
        input.shape[1] % groups == 0,
        lambda: f"channel_shuffle: groups ({groups}) must divide the number of channels "
        f"(input.shape[1] = {input.shape[1]})",
    )
