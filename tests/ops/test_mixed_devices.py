"""A tensor on another device than the op's main input raises a clear error (the op's own check, or the backend
switch's when the first tensor is the stray one), never a crash, on every backend. "meta" stands in for a second
device on a CPU-only host. squeeze_excite and shuffle_cat have theirs in their own files; channel_shuffle takes
one tensor."""
import pytest
import torch

import fastconv
from harness import runnable

ops = fastconv.ops

# op -> {stray argument: call(x, d, o)}, x the main input on device d, the stray tensor on device o.
CALLS = {
    "depthwise_conv2d": {
        "weight": lambda x, d, o: ops.depthwise_conv2d(x, torch.randn(4, 1, 3, 3, device=o)),
        "bias": lambda x, d, o: ops.depthwise_conv2d(x, torch.randn(4, 1, 3, 3, device=d), torch.randn(4, device=o)),
    },
    "conv2d_act": {
        "weight": lambda x, d, o: ops.conv2d_act(x, torch.randn(6, 4, 3, 3, device=o)),
        "bias": lambda x, d, o: ops.conv2d_act(x, torch.randn(6, 4, 3, 3, device=d), torch.randn(6, device=o)),
    },
    "shuffle_cat_conv2d_act": {
        "a": lambda x, d, o: ops.shuffle_cat_conv2d_act(torch.randn(2, 6, 5, 5, device=o), x,
                                                        torch.randn(6, 4, 1, 1, device=d)),
        "weight": lambda x, d, o: ops.shuffle_cat_conv2d_act(torch.randn(2, 6, 5, 5, device=d), x,
                                                             torch.randn(6, 4, 1, 1, device=o)),
    },
    "deform_conv2d": {
        "offset": lambda x, d, o: ops.deform_conv2d(x, torch.zeros(2, 18, 3, 3, device=o),
                                                    torch.randn(6, 4, 3, 3, device=d)),
        "weight": lambda x, d, o: ops.deform_conv2d(x, torch.zeros(2, 18, 3, 3, device=d),
                                                    torch.randn(6, 4, 3, 3, device=o)),
        "mask": lambda x, d, o: ops.deform_conv2d(x, torch.zeros(2, 18, 3, 3, device=d),
                                                  torch.randn(6, 4, 3, 3, device=d),
                                                  mask=torch.ones(2, 9, 3, 3, device=o)),
    },
    "batch_norm_act": {
        "weight": lambda x, d, o: ops.batch_norm_act(x, torch.ones(4, device=o), None, None, None, True, 0.1, 1e-5,
                                                     None),
        "running_mean": lambda x, d, o: ops.batch_norm_act(x, None, None, torch.zeros(4, device=o),
                                                           torch.ones(4, device=d), True, 0.1, 1e-5, None),
    },
}
CASES = [pytest.param(name, backend, device, stray, id=f"{name}-{backend}-{device}-{stray}")
         for name, calls in CALLS.items() for backend, device in (p.values for p in runnable(name)) for stray in calls]


def test_every_op_is_covered():
    assert set(CALLS) | {"channel_shuffle", "squeeze_excite", "shuffle_cat"} == set(fastconv.ops.OPS)


@pytest.mark.parametrize("name, backend, device, stray", CASES)
def test_mixed_devices_are_rejected(name, backend, device, stray):
    other = "meta" if device == "cpu" else "cpu"
    x = torch.randn(2, 4, 5, 5, device=device)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match="device|meta tensors"):
        CALLS[name][stray](x, device, other)
