"""shuffle_cat (concat + channel shuffle of every ShuffleNetV2 unit; x0.5-x2.0, batch 1/32/256): fastconv
backends vs the reference (torch.cat + channel_shuffle, ATen) vs torch.compile of it.
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
