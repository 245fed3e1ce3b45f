"""squeeze_excite on the SE blocks of SE-ResNet-50, MobileNetV3-Large and EfficientNet-B0 (batch 1 and 32):
fastconv backends vs the reference (torchvision's five ATen ops) vs torch.compile of the reference.
GB/s counts the three-pass bound: x read twice, out written once. Run: pytest benches/bench_squeeze_excite.py"""
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
BATCHES = (1, 32)

CASES = [
    pytest.param(case, id=case.label)
    for dtype, fmt in CONFIGS
    for case in _bench.squeeze_excite_cases(DEVICE, dtype, fmt, BATCHES)
]
VARIANTS = ["reference-eager", "reference-compile"] + [f"fastconv-{b}" for b in ("cpu", "cuda", "triton")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_squeeze_excite(benchmark, timed, case, variant):
    benchmark.group = case.label
    args = case.make_inputs()
    backend = None  # a fastconv backend, set around the whole measurement
    if variant == "reference-eager":
        fn = lambda: _reference.squeeze_excite(*args)  # noqa: E731
    elif variant == "reference-compile":
        torch._dynamo.reset()
        compiled = torch.compile(_reference.squeeze_excite, fullgraph=True, dynamic=False)
        fn = lambda: compiled(*args)  # noqa: E731
    else:
        backend = variant.split("-", 1)[1]
        if backend not in _bench.fastconv_backends("squeeze_excite", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")

        fn = lambda: fastconv.ops.squeeze_excite(*args)  # noqa: E731
    timed(fn, case.bytes_moved, backend)
