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
