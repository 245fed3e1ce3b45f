"""Multiply-add counts, the "FLOPs" the papers report (ShuffleNet, MSDNet, ... count one multiply-add as one
FLOP), measured by running the code: ``torch.utils.flop_counter.FlopCounterMode`` sees every convolution
and matrix product at dispatch, whatever module structure or fused path (folded BN) issued it.

fastconv's convolution ops are custom ops the counter does not know; their formulas are registered here
(depthwise: a grouped convolution with one input channel per group; conv2d_act, which eval conv-BN-act runs
on the folded parameters, and oneDNN's convolution it runs on prepacked weights in CPU inference: any grouped
convolution).
"""
import contextlib
from typing import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula


@register_flop_formula(torch.ops.fastconv.depthwise_conv2d)
def _depthwise_conv2d_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    kernel_height, kernel_width = weight_shape[-2:]
    batch, out_channels, out_height, out_width = out_shape
    return 2 * batch * out_channels * out_height * out_width * kernel_height * kernel_width


def _grouped_conv_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """2 * N * C_out * H_out * W_out * (C_in / groups) * kh * kw, from the weight (C_out, C_in / groups, kh, kw)."""
    _, in_per_group, kernel_height, kernel_width = weight_shape
    batch, out_channels, out_height, out_width = out_shape
    return 2 * batch * out_channels * out_height * out_width * in_per_group * kernel_height * kernel_width


for _op in (torch.ops.fastconv.conv2d_act, torch.ops.fastconv.conv2d_act_triton):
    register_flop_formula(_op)(_grouped_conv_flops)

# oneDNN's convolution with a post-op, which conv2d_act_constant runs on prepacked weights in CPU inference (the
# packed weight reports its logical (C_out, C_in / groups, kh, kw) sizes). Registering takes the whole overload
# packet; its "binary" overload (input, other, weight, ...) has other arguments and is never run: unregistered.
if torch.backends.mkldnn.is_available():
    register_flop_formula(torch.ops.mkldnn._convolution_pointwise)(_grouped_conv_flops)
    flop_registry.pop(torch.ops.mkldnn._convolution_pointwise.binary, None)


@contextlib.contextmanager
def multiply_add_counter() -> Iterator[Callable[[], int]]:
    """``with multiply_add_counter() as count: ...``: ``count()`` is the multiply-adds run so far in the
    block (which runs without autograd)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        yield lambda: counter.get_total_flops() // 2


def multiply_adds(fn: Callable, *args, **kwargs) -> int:
    """Multiply-adds of the convolutions and matrix products ``fn(*args, **kwargs)`` runs."""
    with multiply_add_counter() as count:
        fn(*args, **kwargs)
    return count()
