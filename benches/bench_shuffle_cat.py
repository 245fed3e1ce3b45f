"""shuffle_cat (concat + channel shuffle of every ShuffleNetV2 unit; x0.5-x2.0, batch 1/32/256): fastconv
backends vs the reference (torch.cat + channel_shuffle, ATen) vs torch.compile of it.

shuffle_cat_conv2d_act (the unit's tail: the branch's last 1x1 conv + ReLU, then shuffle_cat, on the unit's
split): the fused op vs the same backend's two ops (conv2d_act, then shuffle_cat) vs the reference (ATen's
convolution, ReLU, cat and channel_shuffle) vs torch.compile of it.
Run: pytest benches/bench_shuffle_cat.py (see README)."""
import pytest
import torch

import fastconv
from fastconv import _bench
from fastconv.ops import _reference

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
CONFIGS = [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last)]
if GPU:
    CONFIGS += [(torch.float16, torch.channels_last), (torch.bfloat16, torch.channels_last)]
BATCHES = (1, 32, 256)

CASES = [
    pytest.param(case, id=case.label)
    for dtype, fmt in CONFIGS
    for case in _bench.shuffle_cat_cases(DEVICE, dtype, fmt, BATCHES, tuple(_bench.SHUFFLENET_V2_STAGES))
]
VARIANTS = ["reference-eager", "reference-compile"] + [f"fastconv-{b}" for b in ("cpu", "cuda", "triton")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_shuffle_cat(benchmark, timed, case, variant):
    benchmark.group = case.label
    args = case.make_inputs()
    backend = None  # a fastconv backend, set around the whole measurement
    if variant == "reference-eager":
        fn = lambda: _reference.shuffle_cat(*args)  # noqa: E731
    elif variant == "reference-compile":
        torch._dynamo.reset()
        compiled = torch.compile(_reference.shuffle_cat, fullgraph=True, dynamic=False)
        fn = lambda: compiled(*args)  # noqa: E731
    else:
        backend = variant.split("-", 1)[1]
        if backend not in _bench.fastconv_backends("shuffle_cat", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")

        fn = lambda: fastconv.ops.shuffle_cat(*args)  # noqa: E731
    timed(fn, case.bytes_moved, backend)


TAIL_CASES = [
    pytest.param(case, id=case.label)
    for dtype, fmt in CONFIGS
    for case in _bench.shuffle_cat_conv_cases(DEVICE, dtype, fmt, BATCHES, tuple(_bench.SHUFFLENET_V2_STAGES))
]
TAIL_VARIANTS = ["reference-eager", "reference-compile"] + [
    f"fastconv-{b}{suffix}" for b in ("cpu", "cuda", "triton") for suffix in ("", "-two-ops")]


@pytest.mark.parametrize("variant", TAIL_VARIANTS)
@pytest.mark.parametrize("case", TAIL_CASES)
def test_shuffle_cat_conv2d_act(benchmark, timed, case, variant):
    benchmark.group = case.label
    a, input, *conv_args = case.make_inputs()
    backend = None
    if variant == "reference-eager":
        fn = lambda: _bench.shuffle_cat_conv2d_act_reference(a, input, *conv_args)  # noqa: E731
    elif variant == "reference-compile":
        torch._dynamo.reset()
        compiled = torch.compile(_bench.shuffle_cat_conv2d_act_reference, fullgraph=True, dynamic=False)
        fn = lambda: compiled(a, input, *conv_args)  # noqa: E731
    else:
        backend = variant.split("-")[1]
        if backend not in _bench.fastconv_backends("shuffle_cat_conv2d_act", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")
        if variant.endswith("-two-ops"):
            fn = lambda: fastconv.ops.shuffle_cat(a, fastconv.ops.conv2d_act(input, *conv_args))  # noqa: E731
        else:
            fn = lambda: fastconv.ops.shuffle_cat_conv2d_act(a, input, *conv_args)  # noqa: E731
    timed(fn, case.bytes_moved, backend)
