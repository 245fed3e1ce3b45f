"""batch_norm_act on the BatchNorm layers of MobileNetV2 and ResNet-50 (batch 1 and 32), eval forward and
training forward+backward: fastconv backends vs the reference (F.batch_norm + activation, eager) vs
torch.compile of the reference. Run: pytest benches/bench_batch_norm_act.py (see README); -k to select."""
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
    pytest.param(case, training, id=case.label)
    for training in (False, True)
    for dtype, fmt in CONFIGS
    for case in _bench.batch_norm_act_cases(DEVICE, dtype, fmt, BATCHES, training)
]
VARIANTS = ["reference-eager", "reference-compile"] + [f"fastconv-{b}" for b in ("cpu", "cuda", "triton")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case, training", CASES)
def test_batch_norm_act(benchmark, timed, case, training, variant):
    benchmark.group = case.label
    args = case.make_inputs()
    backend = None  # a fastconv backend, set around the whole measurement
    if variant == "reference-eager":
        forward = _reference.batch_norm_act
    elif variant == "reference-compile":
        torch._dynamo.reset()
        forward = torch.compile(_reference.batch_norm_act, fullgraph=True, dynamic=False)
    else:
        backend = variant.split("-", 1)[1]
        if backend not in _bench.fastconv_backends("batch_norm_act", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")
        forward = fastconv.ops.batch_norm_act
    fn = _bench.batch_norm_act_train_step(forward) if training else forward
    # correctness next to speed: the forward output equals the reference's (gradients are checked by the
    # tests: with 10^7 elements a few pre-activations sit within rounding of relu's kink, where any two
    # implementations may legitimately disagree on the derivative)
    forward_args = args[:9]
    with _bench.using(backend):
        got = forward(*forward_args).detach()
    torch.testing.assert_close(got, _reference.batch_norm_act(*forward_args).detach(), rtol=1e-4, atol=1e-4)
    timed(lambda: fn(*args), case.bytes_moved, backend)
