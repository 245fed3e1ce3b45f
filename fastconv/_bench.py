"""Benchmark cases and timing shared by `python -m fastconv bench` and benches/ (pytest-benchmark).

Shapes come from the real networks; timings are medians of repeated runs measured in the same process
as the baseline they are compared with.
"""
import dataclasses
from typing import Callable, List

import torch

import fastconv
from fastconv import _backend

# ShuffleNetV2 stage output channels (stages 2, 3, 4) per width multiplier (Ma et al. 2018, Table 5), at the
# 28x28, 14x14, 7x7 resolutions of a 224x224 input. The shuffle runs on the concatenation of both branches.
SHUFFLENET_V2_STAGES = {
    "x0.5": (48, 96, 192),
    "x1.0": (116, 232, 464),
    "x1.5": (176, 352, 704),
    "x2.0": (244, 488, 976),
}
SHUFFLENET_V2_RESOLUTIONS = (28, 14, 7)


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def layout_name(memory_format):
    return "channels_last" if memory_format == torch.channels_last else "NCHW"


@dataclasses.dataclass
class OpCase:
    op: str
    label: str
    make_inputs: Callable[[], tuple]  # fresh inputs on the target device
    bytes_moved: int  # minimum bytes a kernel must read + write


def channel_shuffle_cases(device, dtype, memory_format, batches, multipliers) -> List[OpCase]:
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    for multiplier in multipliers:
        for stage, (channels, size) in enumerate(zip(SHUFFLENET_V2_STAGES[multiplier], SHUFFLENET_V2_RESOLUTIONS)):
            for batch in batches:
                shape = (batch, channels, size, size)

                def make(shape=shape):
                    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                    return (x, 2)

                numel = batch * channels * size * size
                label = f"shufflenet_v2_{multiplier} stage{stage + 2} {list(shape)} {layout_name(memory_format)} {dtype_name(dtype)}"
                cases.append(OpCase("channel_shuffle", label, make, 2 * numel * element))
    return cases


def median_seconds(fn, device_type, min_run_time=0.2):
    """Median wall time of fn(): torch.utils.benchmark on the CPU, triton's do_bench (CUDA events) on a GPU."""
    if device_type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def fastconv_backends(op, device_type):
    """The fastconv backends (not the reference) that can run `op` on this device type, for timing.
    Triton on CPU tensors is the interpreter: a correctness tool, never timed."""
    names = _backend.available(fastconv.ops.OPS[op].backends, device_type)
    return [b for b in names if b != "reference" and not (b == "triton" and device_type == "cpu")]


def run_case(case: OpCase, device_type, public: Callable, reference: Callable, compile_reference=True):
    """Time the reference (eager), torch.compile of the reference, and each fastconv backend on one case.

    Returns rows: dict(variant, seconds, speedup, gbps, max_abs_err).
    """
    args = case.make_inputs()
    with fastconv.backend("reference"):
        expected = reference(*args)
    variants = {"reference (ATen)": lambda: reference(*args)}
    if compile_reference:
        torch._dynamo.reset()  # one specialised graph per case; stay under dynamo's recompile limit
        compiled = torch.compile(reference, fullgraph=True, dynamic=False)
        variants["torch.compile(reference)"] = lambda: compiled(*args)
    for name in fastconv_backends(case.op, device_type):
        def run(name=name):
            with fastconv.backend(name):
                return public(*args)

        variants[f"fastconv {name}"] = run
    rows = []
    baseline = None
    for variant, fn in variants.items():
        out = fn()  # warm-up and correctness
        error = (out.double() - expected.double()).abs().max().item() if out.numel() else 0.0
        seconds = median_seconds(fn, device_type)
        baseline = baseline or seconds
        rows.append(dict(
            op=case.op, case=case.label, variant=variant, seconds=seconds, speedup=baseline / seconds,
            gbps=case.bytes_moved / seconds / 1e9, max_abs_err=error,
        ))
    return rows


# Depthwise layers of the real networks at a 224x224 input: (channels, input size, stride, kernel, dilation).
DEPTHWISE_LAYERS = {
    # MobileNetV2 (Sandler et al. 2018, Table 2): every inverted-residual depthwise 3x3 (expanded channels).
    "mobilenet_v2": [
        (32, 112, 1, 3, 1), (96, 112, 2, 3, 1), (144, 56, 1, 3, 1), (144, 56, 2, 3, 1), (192, 28, 1, 3, 1),
        (192, 28, 2, 3, 1), (384, 14, 1, 3, 1), (576, 14, 1, 3, 1), (576, 14, 2, 3, 1), (960, 7, 1, 3, 1),
    ],
    # ShuffleNetV2 x1.0 (Ma et al. 2018): the stride-2 units' two depthwise convs, then the stride-1 units.
    "shufflenet_v2_x1.0": [
        (24, 56, 2, 3, 1), (58, 56, 2, 3, 1), (58, 28, 1, 3, 1), (116, 28, 2, 3, 1), (116, 14, 1, 3, 1),
        (232, 14, 2, 3, 1), (232, 7, 1, 3, 1),
    ],
    # RepLKNet-31B (Ding et al. 2022): 31x31 depthwise per stage.
    "replknet_31b": [(128, 56, 1, 31, 1), (256, 28, 1, 31, 1), (512, 14, 1, 31, 1), (1024, 7, 1, 31, 1)],
    # DeepLabv3 on MobileNetV2 (output stride 8): dilated depthwise 3x3 in the last stages.
    "deeplab_dilated": [(576, 28, 1, 3, 2), (960, 28, 1, 3, 4)],
}


def depthwise_conv2d_cases(device, dtype, memory_format, batches, networks=tuple(DEPTHWISE_LAYERS),
                           backward=False) -> List[OpCase]:
    """Public-function arguments (input, weight, bias, stride, padding, dilation, activation) per layer.
    With backward=True the inputs require grad (time forward + backward)."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    for network in networks:
        for channels, size, stride, kernel, dilation in DEPTHWISE_LAYERS[network]:
            for batch in batches:
                padding = dilation * (kernel - 1) // 2
                shape = (batch, channels, size, size)

                def make(shape=shape, channels=channels, kernel=kernel, stride=stride, padding=padding,
                         dilation=dilation):
                    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                    w = torch.randn(channels, 1, kernel, kernel, device=device, dtype=dtype) / kernel
                    b = torch.randn(channels, device=device, dtype=dtype)
                    if backward:
                        for t in (x, w, b):
                            t.requires_grad_(True)
                    return (x, w, b, stride, padding, dilation, None)

                out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
                moved = (batch * channels * (size * size + out * out) + channels * kernel * kernel) * element
                if backward:  # read grad_out, input, output-sized grad_pre; write grad_input and grad_weight
                    moved *= 3
                label = (f"{network} dw{kernel}x{kernel} s{stride} d{dilation} {list(shape)} "
                         f"{layout_name(memory_format)} {dtype_name(dtype)}{' fwd+bwd' if backward else ''}")
                cases.append(OpCase("depthwise_conv2d", label, make, moved))
    return cases


def forward_backward(fn):
    """fn(*args) then backward of the sum into every input that requires grad (for fwd+bwd timings)."""
    def run(*args):
        out = fn(*args)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        torch.autograd.grad(out, inputs, torch.ones_like(out))
        return out

    return run
