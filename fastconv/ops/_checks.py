"""Argument checks on the Python side (fake kernels, Triton and reference paths).

They mirror csrc/<op>.h so every backend, and torch.compile's fake tensors, raise the same RuntimeError.
Plain `if ...: raise` rather than torch._check: dynamo cannot trace torch._check's message closures.
"""
import torch


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


ACTIVATIONS = (None, "relu", "relu6", "hardswish", "silu")


def check_activation(activation, op):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{op}: unknown activation {activation!r}; expected one of None, 'relu', 'relu6', 'hardswish', 'silu'"
        )


def _check_channel_param(input, param, name):
    channels = input.shape[1]
    if param.dim() != 1 or param.shape[0] != channels:
        raise RuntimeError(
            f"batch_norm_act: {name} must have shape (C,) = ({channels},), got {list(param.shape)}"
        )
    if param.device != input.device:
        raise RuntimeError(f"batch_norm_act: {name} must be on the input's device ({input.device}), got {param.device}")
    reduced = input.dtype in (torch.float16, torch.bfloat16)
    if not (param.dtype == input.dtype or (reduced and param.dtype == torch.float32)):
        raise RuntimeError(
            f"batch_norm_act: {name} must have the input's dtype ({input.dtype}) or float32 with a "
            f"float16/bfloat16 input, got {param.dtype}"
        )


def check_batch_norm_act_args(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    """Mirrors check_batch_norm_act_args in csrc/batch_norm_act.h (same exception types and messages)."""
    if input.dim() < 2:
        raise RuntimeError(
            f"batch_norm_act: input must have at least 2 dimensions (N, C, *), got sizes {list(input.shape)}"
        )
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise RuntimeError(f"batch_norm_act: input must be float32, float16, bfloat16 or float64, got {input.dtype}")
    check_activation(activation, "batch_norm_act")
    for name, param in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
        if param is not None:
            _check_channel_param(input, param, name)
    if (running_mean is None) != (running_var is None):
        raise RuntimeError("batch_norm_act: running_mean and running_var must both be given or both be None")
    if not isinstance(momentum, (int, float)):
        raise ValueError(
            f"batch_norm_act: momentum must be a float, got {momentum!r} (for a cumulative moving average pass "
            f"1 / num_batches_tracked, as fastconv.nn.BatchNorm2d does)"
        )
    if not eps > 0:
        raise ValueError(f"batch_norm_act: eps must be positive, got {eps}")
    if not training and running_mean is None:
        raise RuntimeError("batch_norm_act: running_mean must be defined in evaluation mode (training=False)")
    if training:
        per_channel = input.shape[0]
        for size in input.shape[2:]:
            per_channel *= size
        if per_channel == 1:
            raise ValueError(
                f"batch_norm_act: Expected more than 1 value per channel when training, got input size "
                f"{list(input.shape)}"
            )
