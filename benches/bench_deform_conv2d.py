"""deform_conv2d on DCN-ResNet-50's deformable 3x3 layers (stages 3-5, C = 128..512, 1 and 4 offset groups) and
a detection-neck 3x3 (C = 256, 100x152), DCNv2 (with a mask), forward and forward+backward.

Variants per case: "reference-eager" is torchvision.ops.deform_conv2d (the speed-up baseline in the summary),
"reference-compile" torch.compile of fastconv's plain-ATen composition (fastconv/ops/_reference.py),
"conv2d" a plain F.conv2d of the same shape (the cost of the convolution without the deformation), then every
fastconv backend that runs here ("fastconv-triton" fwd+bwd times the Triton forward and backward kernels). GPU:
batch 1/8/32, fp32/fp16/bf16, channels_last. CPU (2 shared cores): batch 1 fp32 NCHW, and the neck at half
resolution, to stay quick.
On a GPU every variant also reports its peak workspace: torch.cuda.max_memory_allocated during one call (peak
reset before it) minus what was allocated before it, i.e. everything the call allocates, its output (and, for
fwd+bwd, the saved tensors and gradients) included; the summary prints it next to torchvision's (issue 7: at
most a quarter of torchvision's).
Run: pytest benches/bench_deform_conv2d.py (see README); -k "og1 and not bwd" for a subset."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import fastconv
from fastconv import _bench
from fastconv.ops import _reference

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
if GPU:
    CONFIGS = [(torch.float32, torch.channels_last), (torch.float16, torch.channels_last),
               (torch.bfloat16, torch.channels_last)]
    BATCHES, NECK, NECK_BATCHES = (1, 8, 32), _bench.DETECTION_NECK, (1, 8)
else:
    CONFIGS = [(torch.float32, torch.contiguous_format)]
    BATCHES, NECK, NECK_BATCHES = (1,), (256, (50, 76)), (1,)

CASES = [
    pytest.param(case, id=case.label)
    for backward in (False, True)
    for dtype, fmt in CONFIGS
    for case in _bench.deform_conv2d_cases(DEVICE, dtype, fmt, BATCHES, backward=backward, neck=NECK,
                                           neck_batches=NECK_BATCHES)
]
VARIANTS = ["reference-eager", "reference-compile", "conv2d"] + [f"fastconv-{b}" for b in ("cpu", "cuda", "triton")]


def torchvision_deform(input, offset, weight, bias, stride, padding, dilation, mask):
    return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


def plain_conv(input, offset, weight, bias, stride, padding, dilation, mask):
    return F.conv2d(input, weight, bias, stride, padding, dilation)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_deform_conv2d(benchmark, timed, case, variant):
    benchmark.group = case.label
    args = case.make_inputs()
    backend = None  # a fastconv backend, set around the whole measurement
    wrap = _bench.forward_backward if "fwd+bwd" in case.label else (lambda f: f)
    if variant == "reference-eager":
        if args[0].dtype == torch.bfloat16:
            pytest.skip("torchvision's deform_conv2d has no bfloat16 kernel")
        fn = wrap(torchvision_deform)
    elif variant == "reference-compile":
        torch._dynamo.reset()
        fn = wrap(torch.compile(_reference.deform_conv2d, fullgraph=True, dynamic=False))
    elif variant == "conv2d":
        args = (args[0], args[1].detach(), *args[2:7], args[7].detach())  # offset/mask unused: no gradient
        fn = wrap(plain_conv)
    else:
        backend = variant.split("-", 1)[1]
        if backend not in _bench.fastconv_backends("deform_conv2d", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")

        fn = wrap(fastconv.ops.deform_conv2d)
    timed(lambda: fn(*args), case.bytes_moved, backend)
    if GPU:  # after timed's warm-up: compilation and caching allocations are not counted
        with _bench.using(backend):
            benchmark.extra_info["peak_workspace_bytes"] = peak_workspace_bytes(lambda: fn(*args))


def peak_workspace_bytes(call):
    """Peak CUDA memory allocated during call() above what was allocated before it (its result included)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak
