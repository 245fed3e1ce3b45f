"""depthwise_conv2d on every depthwise layer of MobileNetV2, ShuffleNetV2 x1.0, RepLKNet-31B (31x31) and
DeepLab's dilated 3x3: fastconv backends vs the reference (ATen: oneDNN/cuDNN) vs torch.compile, forward and
forward+backward. Batch 1 and 32 on CPU (fp32 NCHW and channels_last), 1 and 128 on GPU (plus fp16/bf16
channels_last). Run: pytest benches/bench_depthwise_conv2d.py (see README); -k mobilenet_v2 for a subset."""
import pytest
import torch

import fastconv
from fastconv import _bench

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
CONFIGS = [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last)]
if GPU:
    CONFIGS += [(torch.float16, torch.channels_last), (torch.bfloat16, torch.channels_last)]
BATCHES = (1, 128) if GPU else (1, 32)

CASES = [
    pytest.param(case, id=case.label)
    for backward in (False, True)
    for dtype, fmt in CONFIGS
    for case in _bench.depthwise_conv2d_cases(DEVICE, dtype, fmt, BATCHES, backward=backward)
]
VARIANTS = ["reference-eager", "reference-compile"] + [f"fastconv-{b}" for b in ("cpu", "cuda", "triton")]


reference = _bench.depthwise_conv2d_reference


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_depthwise_conv2d(benchmark, timed, case, variant):
    benchmark.group = case.label
    args = case.make_inputs()
    wrap = _bench.forward_backward if "fwd+bwd" in case.label else (lambda f: f)
    backend = None  # a fastconv backend, set around the whole measurement
    if variant == "reference-eager":
        fn = wrap(reference)
    elif variant == "reference-compile":
        torch._dynamo.reset()
        fn = wrap(torch.compile(reference, fullgraph=True, dynamic=False))
    else:
        backend = variant.split("-", 1)[1]
        if backend not in _bench.fastconv_backends("depthwise_conv2d", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")

        fn = wrap(fastconv.ops.depthwise_conv2d)
    timed(lambda: fn(*args), case.bytes_moved, backend)
