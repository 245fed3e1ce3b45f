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


SQUEEZE_EXCITE_ACTIVATIONS = ("relu", "silu")
SQUEEZE_EXCITE_GATES = ("sigmoid", "hardsigmoid")
_SQUEEZE_EXCITE_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


def _check_same_dtype_device(input, other, name):
    if other.dtype != input.dtype:
        raise RuntimeError(
            f"squeeze_excite: {name} has dtype {other.dtype} but input has dtype {input.dtype}; they must match"
        )
    if other.device != input.device:
        raise RuntimeError(
            f"squeeze_excite: {name} is on {other.device} but input is on {input.device}; "
            "they must be on the same device"
        )


def check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    """Mirrors check_squeeze_excite_args in csrc/squeeze_excite.h."""
    if input.dim() != 4:
        raise RuntimeError(f"squeeze_excite: input must be 4-D (N, C, H, W), got sizes {list(input.shape)}")
    if str(input.dtype) not in _SQUEEZE_EXCITE_DTYPES:
        raise RuntimeError(f"squeeze_excite: input must be float16, bfloat16, float32 or float64, got {input.dtype}")
    channels = input.shape[1]
    if fc1_weight.dim() != 4 or fc1_weight.shape[1] != channels or fc1_weight.shape[2:] != (1, 1):
        raise RuntimeError(
            f"squeeze_excite: fc1_weight must have shape (squeeze_channels, C, 1, 1) with C = input.shape[1] = "
            f"{channels}, got {list(fc1_weight.shape)}"
        )
    squeeze = fc1_weight.shape[0]
    if fc2_weight.dim() != 4 or tuple(fc2_weight.shape) != (channels, squeeze, 1, 1):
        raise RuntimeError(
            f"squeeze_excite: fc2_weight must have shape (C, squeeze_channels, 1, 1) = ({channels}, {squeeze}, 1, 1), "
            f"got {list(fc2_weight.shape)}"
        )
    _check_same_dtype_device(input, fc1_weight, "fc1_weight")
    _check_same_dtype_device(input, fc2_weight, "fc2_weight")
    if fc1_bias is not None:
        if fc1_bias.dim() != 1 or fc1_bias.shape[0] != squeeze:
            raise RuntimeError(
                f"squeeze_excite: fc1_bias must have shape (squeeze_channels,) = ({squeeze},), "
                f"got {list(fc1_bias.shape)}"
            )
        _check_same_dtype_device(input, fc1_bias, "fc1_bias")
    if fc2_bias is not None:
        if fc2_bias.dim() != 1 or fc2_bias.shape[0] != channels:
            raise RuntimeError(
                f"squeeze_excite: fc2_bias must have shape (C,) = ({channels},), got {list(fc2_bias.shape)}"
            )
        _check_same_dtype_device(input, fc2_bias, "fc2_bias")
    if activation not in SQUEEZE_EXCITE_ACTIVATIONS:
        raise RuntimeError(f"squeeze_excite: activation must be one of 'relu', 'silu', got '{activation}'")
    if gate not in SQUEEZE_EXCITE_GATES:
        raise RuntimeError(f"squeeze_excite: gate must be one of 'sigmoid', 'hardsigmoid', got '{gate}'")
    if input.shape[0] != 0 and input.shape[2] * input.shape[3] == 0:
        raise RuntimeError(
            f"squeeze_excite: input must have a non-empty spatial size (H * W > 0), got sizes {list(input.shape)}"
        )
