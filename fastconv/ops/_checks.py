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


DEPTHWISE_ACTIVATIONS = (None, "relu", "relu6", "hardswish", "silu")


def _int_pair(value, name):
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(isinstance(v, int) for v in value):
        return (value[0], value[-1])
    raise RuntimeError(f"depthwise_conv2d: {name} must be an int or a pair of ints, got {value!r}")


def resolve_depthwise_conv2d_args(weight, stride, padding, dilation):
    """F.conv2d's stride/padding/dilation forms -> (stride, (top, bottom, left, right), dilation).

    padding: int, (ph, pw), "valid" (no padding) or "same" (stride 1 only, as F.conv2d; the odd extra
    element of an even total goes to the bottom/right, exactly as ATen's _convolution_mode splits it).
    """
    stride = _int_pair(stride, "stride")
    dilation = _int_pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            return stride, (0, 0, 0, 0), dilation
        if padding != "same":
            raise RuntimeError(f"depthwise_conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if stride != (1, 1):
            raise RuntimeError("depthwise_conv2d: padding='same' is not supported for strided convolutions "
                               f"(stride={stride})")
        if weight.dim() != 4:
            raise RuntimeError(f"depthwise_conv2d: weight must have shape (C*m, 1, kh, kw), got {list(weight.shape)}")
        pads = []
        for d, k in zip(dilation, weight.shape[2:]):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return stride, tuple(pads), dilation
    ph, pw = _int_pair(padding, "padding")
    return stride, (ph, ph, pw, pw), dilation


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
