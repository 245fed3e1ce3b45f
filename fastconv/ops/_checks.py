"""Argument checks on the Python side (fake kernels, Triton and reference paths).

They mirror csrc/<op>.h so every backend, and torch.compile's fake tensors, raise the same RuntimeError.
Plain `if ...: raise` rather than torch._check: dynamo cannot trace torch._check's message closures.
"""


def check_channel_shuffle_args(input, groups):
    if input.dim() < 3:
        raise RuntimeError(
            f"channel_shuffle: input must have at least 3 dimensions (N, C, *), got sizes {list(input.shape)}"
        )
    if groups <= 0:
        raise RuntimeError(f"channel_shuffle: groups must be positive, got {groups}")
    if input.shape[1] % groups != 0:
        raise RuntimeError(
            f"channel_shuffle: groups ({groups}) must divide the number of channels "
            f"(input.shape[1] = {input.shape[1]})"
        )


def check_shuffle_cat_args(a, b):
    if a.dim() < 3:
        raise RuntimeError(f"shuffle_cat: a must have at least 3 dimensions (N, C, *), got sizes {list(a.shape)}")
    if b.shape != a.shape:
        raise RuntimeError(f"shuffle_cat: b.shape {list(b.shape)} must equal a.shape {list(a.shape)}")
    if b.dtype != a.dtype:
        raise RuntimeError(f"shuffle_cat: b.dtype ({b.dtype}) must equal a.dtype ({a.dtype})")
    if b.device != a.device:
        raise RuntimeError(f"shuffle_cat: b.device ({b.device}) must equal a.device ({a.device})")


def check_shuffle_cat_backward_args(grad_output):
    if grad_output.dim() < 3:
        raise RuntimeError(
            "shuffle_cat backward: grad_output must have at least 3 dimensions (N, 2C, *), "
            f"got sizes {list(grad_output.shape)}"
        )
    if grad_output.shape[1] % 2 != 0:
        raise RuntimeError(f"shuffle_cat backward: grad_output.shape[1] must be even (2C), got {grad_output.shape[1]}")
