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


DEPTHWISE_ACTIVATIONS = (None, "relu", "relu6", "hardswish", "silu")


def _int_pair(value, name, op="depthwise_conv2d"):
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(isinstance(v, int) for v in value):
        return (value[0], value[-1])
    raise RuntimeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")


def resolve_conv_args(weight, stride, padding, dilation, op, weight_form):
    """F.conv2d's stride/padding/dilation forms -> (stride, (top, bottom, left, right), dilation).

    padding: int, (ph, pw), "valid" (no padding) or "same" (stride 1 only, as F.conv2d; the odd extra
    element of an even total goes to the bottom/right, exactly as ATen's _convolution_mode splits it).
    `op` and `weight_form` (e.g. "have shape (C*m, 1, kh, kw)") word the errors.
    """
    stride = _int_pair(stride, "stride", op)
    dilation = _int_pair(dilation, "dilation", op)
    if isinstance(padding, str):
        if padding == "valid":
            return stride, (0, 0, 0, 0), dilation
        if padding != "same":
            raise RuntimeError(f"{op}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if stride != (1, 1):
            raise RuntimeError(f"{op}: padding='same' is not supported for strided convolutions (stride={stride})")
        if weight.dim() != 4:
            raise RuntimeError(f"{op}: weight must {weight_form}, got {list(weight.shape)}")
        pads = []
        for d, k in zip(dilation, weight.shape[2:]):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return stride, tuple(pads), dilation
    ph, pw = _int_pair(padding, "padding", op)
    return stride, (ph, ph, pw, pw), dilation


def resolve_depthwise_conv2d_args(weight, stride, padding, dilation):
    return resolve_conv_args(weight, stride, padding, dilation, "depthwise_conv2d", "have shape (C*m, 1, kh, kw)")


def _depthwise_geometry(input_size, weight, stride, padding, dilation):
    """Mirror of depthwise_geometry (csrc/depthwise_conv2d.h); returns the output shape."""
    if len(input_size) != 4:
        raise RuntimeError(f"depthwise_conv2d: input must be 4-D (N, C, H, W), got sizes {list(input_size)}")
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise RuntimeError(f"depthwise_conv2d: weight must have shape (C*m, 1, kh, kw), got {list(weight.shape)}")
    n, channels, h, w = input_size
    out_channels, _, kh, kw = weight.shape
    if channels <= 0 or out_channels <= 0 or out_channels % channels != 0:
        raise RuntimeError(
            f"depthwise_conv2d: weight.shape[0] ({out_channels}) must be a positive multiple of the input channels "
            f"(input.shape[1] = {channels})"
        )
    if kh <= 0 or kw <= 0:
        raise RuntimeError(f"depthwise_conv2d: weight kernel size must be positive, got {list(weight.shape)}")
    if len(stride) != 2 or stride[0] <= 0 or stride[1] <= 0:
        raise RuntimeError(f"depthwise_conv2d: stride must be two positive ints, got {list(stride)}")
    if len(dilation) != 2 or dilation[0] <= 0 or dilation[1] <= 0:
        raise RuntimeError(f"depthwise_conv2d: dilation must be two positive ints, got {list(dilation)}")
    if len(padding) != 4 or any(p < 0 for p in padding):
        raise RuntimeError(
            f"depthwise_conv2d: padding must be four non-negative ints (top, bottom, left, right), got {list(padding)}"
        )

    def size(length, pad_sum, d, k, s):
        span = length + pad_sum - d * (k - 1) - 1
        return 0 if span < 0 else span // s + 1

    out_h = size(h, padding[0] + padding[1], dilation[0], kh, stride[0])
    out_w = size(w, padding[2] + padding[3], dilation[1], kw, stride[1])
    if out_h <= 0 or out_w <= 0:
        raise RuntimeError(
            f"depthwise_conv2d: the output size is empty: input (H, W) = ({h}, {w}) with padding {list(padding)}, "
            f"dilation {list(dilation)} and kernel ({kh}, {kw}) gives ({out_h}, {out_w})"
        )
    return (n, out_channels, out_h, out_w)


def _check_same_device_dtype(other, weight, name):
    if other.device != weight.device:
        raise RuntimeError(
            f"depthwise_conv2d: {name} must be on the same device as weight ({weight.device}), got {other.device}"
        )
    if other.dtype != weight.dtype:
        raise RuntimeError(
            f"depthwise_conv2d: {name} must have the same dtype as weight ({weight.dtype}), got {other.dtype}"
        )


def check_depthwise_activation(activation, op="depthwise_conv2d"):
    if activation not in DEPTHWISE_ACTIVATIONS:
        raise RuntimeError(
            f'{op}: activation must be None, "relu", "relu6", "hardswish" or "silu", got "{activation}"'
        )


def check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation, activation):
    """Mirror of check_depthwise_conv2d_args (csrc/depthwise_conv2d.h), on resolved arguments.
    Returns the output shape."""
    if input.dim() != 4:
        raise RuntimeError(f"depthwise_conv2d: input must be 4-D (N, C, H, W), got sizes {list(input.shape)}")
    if input.device != weight.device:
        raise RuntimeError(
            f"depthwise_conv2d: input and weight must be on the same device, got {input.device} and {weight.device}"
        )
    if input.dtype != weight.dtype:
        raise RuntimeError(
            f"depthwise_conv2d: input and weight must have the same dtype, got {input.dtype} and {weight.dtype}"
        )
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"depthwise_conv2d: input must be floating point, got {input.dtype}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise RuntimeError(
                f"depthwise_conv2d: bias must have shape ({weight.shape[0]},), got {list(bias.shape)}"
            )
        _check_same_device_dtype(bias, weight, "bias")
    check_depthwise_activation(activation)
    return _depthwise_geometry(tuple(input.shape), weight, stride, padding, dilation)


def check_depthwise_conv2d_backward_args(grad_output, input, weight, bias, output, input_size, stride, padding,
                                         dilation, activation, output_mask):
    """Mirror of check_depthwise_backward_args (csrc/depthwise_conv2d.h)."""
    op = "_depthwise_conv2d_backward"
    check_depthwise_activation(activation, op)
    if input is None and (output_mask[1] or activation in ("hardswish", "silu")):
        raise RuntimeError(f"{op}: input is required for grad_weight and for the hardswish/silu derivative")
    if input is not None:
        if tuple(input.shape) != tuple(input_size):
            raise RuntimeError(f"{op}: input has sizes {list(input.shape)} but input_size is {list(input_size)}")
        out_shape = check_depthwise_conv2d_args(input, weight, bias, stride, padding, dilation, activation)
    else:
        out_shape = _depthwise_geometry(tuple(input_size), weight, stride, padding, dilation)
    if tuple(grad_output.shape) != tuple(out_shape):
        raise RuntimeError(f"{op}: grad_output must have shape {list(out_shape)}, got {list(grad_output.shape)}")
    _check_same_device_dtype(grad_output, weight, "grad_output")
    if activation in ("relu", "relu6"):
        if output is None or tuple(output.shape) != tuple(grad_output.shape):
            raise RuntimeError(
                f"{op}: output (the forward result) is required for relu/relu6 and must have grad_output's shape"
            )
        _check_same_device_dtype(output, weight, "output")


def _deform_companion(other, input, name):
    if other.device != input.device:
        raise RuntimeError(f"deform_conv2d: {name} must be on input's device ({input.device}), got {other.device}")
    if other.dtype != input.dtype:
        raise RuntimeError(f"deform_conv2d: {name} must have input's dtype ({input.dtype}), got {other.dtype}")


def _positive_pair(value, name, minimum):
    if len(value) != 2 or any(v < minimum for v in value):
        kind = "positive" if minimum > 0 else "non-negative"
        raise RuntimeError(f"deform_conv2d: {name} must be two {kind} ints, got {list(value)}")


def check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask):
    """Mirror of check_deform_conv2d_args (csrc/deform_conv2d.h), on (int, int) stride/padding/dilation.
    Returns (output shape, weight groups, offset groups)."""
    op = "deform_conv2d"
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must be 4-D (N, C, H, W), got sizes {list(input.shape)}")
    if offset.dim() != 4:
        raise RuntimeError(
            f"{op}: offset must be 4-D (N, 2*offset_groups*kh*kw, H_out, W_out), got sizes {list(offset.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(f"{op}: weight must be 4-D (C_out, C_in / groups, kh, kw), got sizes {list(weight.shape)}")
    if mask is not None and mask.dim() != 4:
        raise RuntimeError(
            f"{op}: mask must be 4-D (N, offset_groups*kh*kw, H_out, W_out), got sizes {list(mask.shape)}"
        )
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{op}: input must be floating point, got {input.dtype}")
    _deform_companion(offset, input, "offset")
    _deform_companion(weight, input, "weight")
    if mask is not None:
        _deform_companion(mask, input, "mask")
    if bias is not None:
        _deform_companion(bias, input, "bias")
    _positive_pair(stride, "stride", 1)
    _positive_pair(padding, "padding", 0)
    _positive_pair(dilation, "dilation", 1)
    n, channels, h, w = input.shape
    out_channels, per_group, kh, kw = weight.shape
    if kh <= 0 or kw <= 0:
        raise RuntimeError(f"{op}: weight kernel size must be positive, got weight sizes {list(weight.shape)}")
    if per_group <= 0 or channels % per_group != 0:
        raise RuntimeError(
            f"{op}: weight.shape[1] ({per_group}) must divide input.shape[1] ({channels}): "
            "weight groups = C_in / weight.shape[1]"
        )
    groups = channels // per_group
    if out_channels % groups != 0:
        raise RuntimeError(
            f"{op}: weight.shape[0] ({out_channels}) must be divisible by the weight groups ({groups} = "
            "input.shape[1] / weight.shape[1])"
        )
    taps = kh * kw
    if offset.shape[1] <= 0 or offset.shape[1] % (2 * taps) != 0:
        raise RuntimeError(
            f"{op}: offset.shape[1] is not valid: got {offset.shape[1]}, expected 2*offset_groups*kh*kw, "
            f"a positive multiple of 2*{kh}*{kw} = {2 * taps}"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if channels % offset_groups != 0:
        raise RuntimeError(
            f"{op}: input.shape[1] ({channels}) must be divisible by offset_groups ({offset_groups} = "
            "offset.shape[1] / (2*kh*kw))"
        )
    if mask is not None and mask.shape[1] != offset_groups * taps:
        raise RuntimeError(
            f"{op}: mask.shape[1] is not valid: got {mask.shape[1]}, expected offset_groups*kh*kw = "
            f"{offset_groups}*{kh}*{kw} = {offset_groups * taps}"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise RuntimeError(f"{op}: bias must have shape ({out_channels},), got {list(bias.shape)}")
    span_h = h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)
    span_w = w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)
    out_h = span_h // stride[0] + 1
    out_w = span_w // stride[1] + 1
    if span_h < 0 or span_w < 0 or out_h <= 0 or out_w <= 0:
        raise RuntimeError(
            f"{op}: the output size is empty: input (H, W) = ({h}, {w}) with padding {list(padding)}, "
            f"dilation {list(dilation)} and kernel ({kh}, {kw})"
        )
    if offset.shape[0] != n:
        raise RuntimeError(f"{op}: offset.shape[0] is not valid: got {offset.shape[0]}, expected input.shape[0] = {n}")
    if tuple(offset.shape[2:]) != (out_h, out_w):
        raise RuntimeError(
            f"{op}: offset spatial size is not valid: got ({offset.shape[2]}, {offset.shape[3]}), expected the "
            f"output size ({out_h}, {out_w})"
        )
    if mask is not None:
        if mask.shape[0] != n:
            raise RuntimeError(f"{op}: mask.shape[0] is not valid: got {mask.shape[0]}, expected input.shape[0] = {n}")
        if tuple(mask.shape[2:]) != (out_h, out_w):
            raise RuntimeError(
                f"{op}: mask spatial size is not valid: got ({mask.shape[2]}, {mask.shape[3]}), expected the "
                f"output size ({out_h}, {out_w})"
            )
    return (n, out_channels, out_h, out_w), groups, offset_groups


def check_deform_conv2d_backward_args(grad_output, input, offset, weight, mask, stride, padding, dilation):
    """Mirror of check_deform_conv2d_backward_args (csrc/deform_conv2d.h)."""
    out_shape, _, _ = check_deform_conv2d_args(input, offset, weight, None, stride, padding, dilation, mask)
    if grad_output.dim() != 4 or tuple(grad_output.shape) != tuple(out_shape):
        raise RuntimeError(
            f"_deform_conv2d_backward: grad_output must have shape {list(out_shape)}, got {list(grad_output.shape)}"
        )
    _deform_companion(grad_output, input, "grad_output")


def deform_pair(value, name):
    """torchvision's _pair for stride/padding/dilation: an int or a pair of ints."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    raise RuntimeError(f"deform_conv2d: {name} must be an int or a pair of ints, got {value!r}")


# --- conv2d_act ----------------------------------------------------------------------------------------------
def resolve_conv2d_act_args(weight, stride, padding, dilation, groups):
    """resolve_conv_args for conv2d_act, plus groups (a positive int)."""
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise RuntimeError(f"conv2d_act: groups must be an int, got {groups!r}")
    stride, padding, dilation = resolve_conv_args(weight, stride, padding, dilation, "conv2d_act",
                                                  "be 4-D (C_out, C_in / groups, kh, kw)")
    return stride, padding, dilation, groups


def _conv_output_size(length, pad_sum, dilation, kernel, stride):
    span = length + pad_sum - dilation * (kernel - 1) - 1
    return 0 if span < 0 else span // stride + 1


def conv2d_act_geometry(input_size, weight, stride, padding, dilation, groups, op="conv2d_act"):
    """Mirror of conv2d_act_geometry (csrc/conv2d_act.h); returns the output shape."""
    if len(input_size) != 4:
        raise RuntimeError(f"{op}: input must be 4-D (N, C, H, W), got sizes {list(input_size)}")
    if weight.dim() != 4:
        raise RuntimeError(f"{op}: weight must be 4-D (C_out, C_in / groups, kh, kw), got sizes {list(weight.shape)}")
    if groups <= 0:
        raise RuntimeError(f"{op}: groups must be positive, got {groups}")
    n, in_channels, h, w = input_size
    out_channels, per_group, kh, kw = weight.shape
    if in_channels % groups != 0:
        raise RuntimeError(
            f"{op}: groups ({groups}) must divide the input channels (input.shape[1] = {in_channels})"
        )
    if out_channels <= 0 or out_channels % groups != 0:
        raise RuntimeError(
            f"{op}: groups ({groups}) must divide the output channels (weight.shape[0] = {out_channels})"
        )
    if per_group * groups != in_channels:
        raise RuntimeError(
            f"{op}: weight.shape[1] ({per_group}) must equal input.shape[1] / groups ({in_channels} / {groups})"
        )
    if kh <= 0 or kw <= 0:
        raise RuntimeError(f"{op}: weight kernel size must be positive, got {list(weight.shape)}")
    if len(stride) != 2 or stride[0] <= 0 or stride[1] <= 0:
        raise RuntimeError(f"{op}: stride must be two positive ints, got {list(stride)}")
    if len(dilation) != 2 or dilation[0] <= 0 or dilation[1] <= 0:
        raise RuntimeError(f"{op}: dilation must be two positive ints, got {list(dilation)}")
    if len(padding) != 4 or any(p < 0 for p in padding):
        raise RuntimeError(
            f"{op}: padding must be four non-negative ints (top, bottom, left, right), got {list(padding)}"
        )
    out_h = _conv_output_size(h, padding[0] + padding[1], dilation[0], kh, stride[0])
    out_w = _conv_output_size(w, padding[2] + padding[3], dilation[1], kw, stride[1])
    if out_h <= 0 or out_w <= 0:
        raise RuntimeError(
            f"{op}: the output size is empty: input (H, W) = ({h}, {w}) with padding {list(padding)}, "
            f"dilation {list(dilation)} and kernel ({kh}, {kw}) gives ({out_h}, {out_w})"
        )
    return (n, out_channels, out_h, out_w)


def _check_conv2d_act_same_device_dtype(other, weight, name, op="conv2d_act"):
    if other.device != weight.device:
        raise RuntimeError(f"{op}: {name} must be on the same device as weight ({weight.device}), got {other.device}")
    if other.dtype != weight.dtype:
        raise RuntimeError(f"{op}: {name} must have the same dtype as weight ({weight.dtype}), got {other.dtype}")


def check_conv2d_act_activation(activation, op="conv2d_act"):
    if activation not in DEPTHWISE_ACTIVATIONS:
        raise RuntimeError(
            f'{op}: activation must be None, "relu", "relu6", "hardswish" or "silu", got "{activation}"'
        )


def check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation, op="conv2d_act"):
    """Mirror of check_conv2d_act_args (csrc/conv2d_act.h), on resolved arguments. Returns the output shape."""
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must be 4-D (N, C, H, W), got sizes {list(input.shape)}")
    if input.device != weight.device:
        raise RuntimeError(f"{op}: input and weight must be on the same device, got {input.device} and {weight.device}")
    if input.dtype != weight.dtype:
        raise RuntimeError(f"{op}: input and weight must have the same dtype, got {input.dtype} and {weight.dtype}")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{op}: input must be floating point, got {input.dtype}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise RuntimeError(
                f"{op}: bias must have shape (weight.shape[0],) = ({weight.shape[0]},), got {list(bias.shape)}"
            )
        _check_conv2d_act_same_device_dtype(bias, weight, "bias", op)
    check_conv2d_act_activation(activation, op)
    return conv2d_act_geometry(tuple(input.shape), weight, stride, padding, dilation, groups, op)


def check_shuffle_cat_conv2d_act_args(a, input, weight, bias, stride, padding, dilation, groups, activation):
    """Mirror of check_shuffle_cat_conv2d_act_args (csrc/conv2d_act.h). Returns the convolution's output shape."""
    op = "shuffle_cat_conv2d_act"
    check_conv2d_act_activation(activation, op)
    out_shape = check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation, op)
    if tuple(a.shape) != tuple(out_shape):
        raise RuntimeError(f"{op}: a must have the convolution's output shape {list(out_shape)}, got {list(a.shape)}")
    if a.device != input.device:
        raise RuntimeError(f"{op}: a must be on the same device as input ({input.device}), got {a.device}")
    if a.dtype != input.dtype:
        raise RuntimeError(f"{op}: a must have the same dtype as input ({input.dtype}), got {a.dtype}")
    return out_shape


def check_conv2d_act_backward_args(grad_output, input, weight, bias, output, input_size, stride, padding, dilation,
                                   groups, activation, output_mask):
    """Mirror of check_conv2d_act_backward_args (csrc/conv2d_act.h)."""
    op = "_conv2d_act_backward"
    check_conv2d_act_activation(activation, op)
    if input is None and (output_mask[1] or activation in ("hardswish", "silu")):
        raise RuntimeError(f"{op}: input is required for grad_weight and for the hardswish/silu derivative")
    if input is not None:
        if tuple(input.shape) != tuple(input_size):
            raise RuntimeError(f"{op}: input has sizes {list(input.shape)} but input_size is {list(input_size)}")
        out_shape = check_conv2d_act_args(input, weight, bias, stride, padding, dilation, groups, activation)
    else:
        out_shape = conv2d_act_geometry(tuple(input_size), weight, stride, padding, dilation, groups)
    if tuple(grad_output.shape) != tuple(out_shape):
        raise RuntimeError(f"{op}: grad_output must have shape {list(out_shape)}, got {list(grad_output.shape)}")
    _check_conv2d_act_same_device_dtype(grad_output, weight, "grad_output", op)
    if activation in ("relu", "relu6"):
        if output is None or tuple(output.shape) != tuple(grad_output.shape):
            raise RuntimeError(
                f"{op}: output (the forward result) is required for relu/relu6 and must have grad_output's shape"
            )
        _check_conv2d_act_same_device_dtype(output, weight, "output", op)
