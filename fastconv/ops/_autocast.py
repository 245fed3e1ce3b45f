"""Autocast (``torch.autocast``) for fastconv's ops, at the dispatcher, as ATen's own ops have it.

Without a rule a custom op runs under autocast on whatever dtypes it is handed, and a network mixes them: a
float16 activation from an ATen op meets a float32 weight, and the op raises (conv2d_act, depthwise_conv2d), so
no zoo model could train with AMP. Each forward op here gets an Autocast kernel for the CPU and CUDA dispatch
keys, on its C++ op (cpu/cuda backends) and its Triton op alike, so every caller is covered: the public
functions, the nn modules, the models and direct ``torch.ops.fastconv.*`` calls. The kernel casts the floating
point tensor arguments (never float64, as ATen) and calls the op again with the autocast key excluded; the casts
are ordinary differentiable ``.to()`` calls, so gradients reach float32 parameters in float32. The rules follow
what the ATen composition each op replaces does under autocast:

- ``lower`` (the convolutions: conv2d_act, depthwise_conv2d, deform_conv2d, shuffle_cat_conv2d_act): every
  floating tensor in the autocast dtype, as ``F.conv2d`` (torchvision's deform_conv2d upcasts to float32
  instead; fastconv's kernels accumulate in float32 at either precision, so it keeps the fast dtype).
- ``input`` (squeeze_excite): the fc weights and biases in the input's dtype. Eager SE pools the input in its
  dtype, runs the two 1x1 convolutions in the autocast dtype and scales the input by the gate, so its result
  has the input's dtype; so has the fused op's (its kernels accumulate the pooled sums in float32).
- ``promote`` (shuffle_cat): both halves in the wider dtype, as ``torch.cat`` under autocast.

The same rules also run in Python, before a call leaves fastconv's op table (``OpEntry.run`` and friends, and
conv2d_act's own routing): the Python paths check arguments and pick kernels by dtype before the dispatcher is
reached, and the reference backend's ATen compositions check them too. There the dispatcher kernel then finds
the dtypes already right and casts nothing.

No rule for batch_norm_act (like ``F.batch_norm``, it takes a float16/bfloat16 input with float32 parameters
and statistics and keeps the input's dtype) nor for channel_shuffle (a permutation). Backward ops need none:
they receive the dtypes the forward saved.
"""
import torch

_LIBRARY = torch.library.Library("fastconv", "IMPL")
_DEVICE_TYPES = ("cpu", "cuda")


def _castable(value, device_type):
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64
            and value.device.type == device_type)


def _cast_all(args, device_type, dtype):
    return tuple(a.to(dtype) if _castable(a, device_type) and a.dtype != dtype else a for a in args)


def _lower(args, device_type):
    return _cast_all(args, device_type, torch.get_autocast_dtype(device_type))


def _follow_input(args, device_type):
    input = args[0]
    if not _castable(input, device_type):
        return args
    return (input,) + _cast_all(args[1:], device_type, input.dtype)


def _promote(args, device_type):
    dtypes = [a.dtype for a in args if _castable(a, device_type)]
    if len(set(dtypes)) < 2:
        return args
    widest = dtypes[0]
    for dtype in dtypes[1:]:
        widest = torch.promote_types(widest, dtype)
    return _cast_all(args, device_type, widest)


RULES = {"lower": _lower, "input": _follow_input, "promote": _promote}


# Whether autocast is on for any device (~0.08 us): callers test it before building arguments for `cast`, which
# costs ~0.5 us a call on small inputs otherwise.
any_enabled = torch._C._is_any_autocast_enabled


def cast(rule, args):
    """`args` (the op's arguments, its main tensor first) cast by the function `rule` (a RULES value) when autocast
    is enabled for that tensor's device; as they are otherwise."""
    device_type = args[0].device.type
    return rule(args, device_type) if torch.is_autocast_enabled(device_type) else args


def register(op, rule: str):
    """Give `op` (a C++ op's ``torch.ops.fastconv.*`` packet or overload, or a ``torch.library.custom_op``) an
    Autocast kernel for the CPU and CUDA keys that casts its arguments by RULES[rule]."""
    cast = RULES[rule]
    overload = getattr(op, "_opoverload", None) or getattr(op, "default", op)
    name = overload._schema.name.split("::", 1)[1]
    for device_type in _DEVICE_TYPES:
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key_name))

        def kernel(_keyset, *args, _cast=cast, _device_type=device_type, _excluded=excluded):
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                return overload(*_cast(args, _device_type))

        _LIBRARY.impl(name, kernel, key_name, with_keyset=True)
