"""Benchmark cases and timing shared by `python -m fastconv bench` and benches/ (pytest-benchmark).

Shapes come from the real networks; timings are medians of repeated runs measured in the same process
as the baseline they are compared with.
"""
import contextlib
import dataclasses
import itertools
import json
import math
import pathlib
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
    flops: int = 0  # floating-point operations per call, for compute-bound ops (convolutions)


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


def shuffle_cat_cases(device, dtype, memory_format, batches, multipliers) -> List[OpCase]:
    """The concat + channel shuffle ending every ShuffleNetV2 unit: each branch has half the stage's channels.
    All units of a stage share the shape (the first, downsampling unit too), so one case per stage."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    for multiplier in multipliers:
        for stage, (channels, size) in enumerate(zip(SHUFFLENET_V2_STAGES[multiplier], SHUFFLENET_V2_RESOLUTIONS)):
            for batch in batches:
                shape = (batch, channels // 2, size, size)

                def make(shape=shape):
                    return tuple(
                        torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                        for _ in range(2)
                    )

                numel = batch * (channels // 2) * size * size
                label = f"shufflenet_v2_{multiplier} stage{stage + 2} 2x{list(shape)} {layout_name(memory_format)} {dtype_name(dtype)}"
                # read a + read b + write the (N, 2C, H, W) output
                cases.append(OpCase("shuffle_cat", label, make, 4 * numel * element))
    return cases


def shuffle_cat_conv_cases(device, dtype, memory_format, batches, multipliers) -> List[OpCase]:
    """The tail of every stride-1 ShuffleNetV2 unit: the branch's last 1x1 conv (BN folded) + ReLU, then
    shuffle_cat with the other half; a and the branch's input are the two halves of one tensor (the unit's
    split). Inputs: the public op's arguments (a, input, weight, bias, stride, padding, dilation, groups,
    activation): 1x1, stride 1, no padding, ReLU (shuffle_cat_conv2d_act_reference takes the same)."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    for multiplier in multipliers:
        for stage, (channels, size) in enumerate(zip(SHUFFLENET_V2_STAGES[multiplier], SHUFFLENET_V2_RESOLUTIONS)):
            half = channels // 2
            for batch in batches:
                def make(batch=batch, half=half, size=size):
                    x = torch.randn(batch, 2 * half, size, size, device=device, dtype=dtype)
                    a, branch = x.contiguous(memory_format=memory_format).chunk(2, dim=1)
                    weight = torch.randn(half, half, 1, 1, device=device, dtype=dtype) / half**0.5
                    bias = torch.randn(half, device=device, dtype=dtype)
                    return a, branch, weight, bias, 1, 0, 1, 1, "relu"

                numel = batch * half * size * size
                label = (f"shufflenet_v2_{multiplier} stage{stage + 2} tail {[batch, half, size, size]} "
                         f"{layout_name(memory_format)} {dtype_name(dtype)}")
                # read a + read the branch's input + write the (N, 2C, H, W) output + the weight
                cases.append(OpCase("shuffle_cat_conv2d_act", label, make,
                                    (4 * numel + half * (half + 1)) * element, 2 * numel * half))
    return cases


def median_seconds(fn, device_type, min_run_time=0.2):
    """Median wall time of fn(): torch.utils.benchmark on the CPU, triton's do_bench (CUDA events) on a GPU."""
    if device_type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def cuda_graph_seconds(fn_all, calls):
    """Median time of one call when `fn_all` (which makes `calls` calls) is replayed as a CUDA graph: launch
    latency, which dominates batch-1 cases, is taken out as a graph-captured deployment would. Raises if the
    work cannot be captured (host syncs, CPU work); the caller then times it eagerly."""
    import triton.testing

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture, as torch.cuda.graphs requires
        for _ in range(3):
            fn_all()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn_all()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median") * 1e-3 / calls


ROTATION_BYTES = 64 << 20  # input sets cycled through per case: more than the last-level cache of the devices


def rotating_inputs(make_inputs, bytes_moved, first=None):
    """Input sets to cycle through while timing, so repeated calls don't find their data in the cache."""
    count = max(1, min(8, -(-ROTATION_BYTES // max(bytes_moved, 1))))
    sets = [first] if first is not None else []
    return sets + [make_inputs() for _ in range(count - len(sets))]


def time_variant(fn, input_sets, device_type, graph):
    """(seconds per call, timer name) of fn(*inputs) cycling over `input_sets`."""
    if device_type == "cuda" and graph:
        try:
            return cuda_graph_seconds(lambda: [fn(*inputs) for inputs in input_sets], len(input_sets)), "cuda graph"
        except Exception:  # not capturable (e.g. autograd's CPU work): eager timing, and the row says so
            torch.cuda.synchronize()
    cycle = itertools.cycle(input_sets)
    return median_seconds(lambda: fn(*next(cycle)), device_type), "eager"


# Cases moving less than this are launch-bound on a GPU: timed as CUDA graph replays (batch-1 latency).
GRAPH_BYTES = 16 << 20


def using(backend):
    """`with using(name):` runs the block on fastconv backend `name`; `using(None)` changes nothing. Benchmarks set
    the backend around a whole measurement, never inside the timed call: `with fastconv.backend(...)` costs ~1 us a
    call, which the reference variants do not pay (a 4 us channel_shuffle measured 25 % slow for it)."""
    return fastconv.backend(backend) if backend else contextlib.nullcontext()


def fastconv_backends(op, device_type):
    """The fastconv backends (not the reference) that can run `op` on this device type, for timing.
    Triton on CPU tensors is the interpreter: a correctness tool, never timed."""
    names = _backend.available(fastconv.ops.OPS[op].backends, device_type)
    return [b for b in names if b != "reference" and not (b == "triton" and device_type == "cpu")]


def run_case(case: OpCase, device_type, public: Callable, reference: Callable, compile_reference=True):
    """Time the reference (eager), torch.compile of the reference, and each fastconv backend on one case, each
    cycling over the same rotating input sets (CUDA-graph replays for launch-bound cases on a GPU).

    Returns rows: dict(variant, seconds, speedup, gbps, max_abs_err, timer).
    """
    args = case.make_inputs()
    input_sets = rotating_inputs(case.make_inputs, case.bytes_moved, first=args)
    graph = case.bytes_moved < GRAPH_BYTES
    klass = _backend.shape_class(args[0])
    with fastconv.backend("reference"):
        expected = reference(*args)
    variants = {"reference (ATen)": (reference, None)}  # variant -> (function, fastconv backend to run it on)
    if compile_reference:
        torch._dynamo.reset()  # one specialised graph per case; stay under dynamo's recompile limit
        # A reference may say how to compile it (make_compiled), e.g. only the forward of a training step.
        make_compiled = getattr(reference, "make_compiled",
                                lambda: torch.compile(reference, fullgraph=True, dynamic=False))
        variants["torch.compile(reference)"] = (make_compiled(), None)
    for name in fastconv_backends(case.op, device_type):
        variants[f"fastconv {name}"] = (public, name)
    rows = []
    baseline = None
    for variant, (fn, backend) in variants.items():
        with using(backend):
            out = fn(*args)  # warm-up and correctness
            error = (out.double() - expected.double()).abs().max().item() if out.numel() else 0.0
            seconds, timer = time_variant(fn, input_sets, device_type, graph)
        baseline = baseline or seconds
        rows.append(dict(
            op=case.op, case=case.label, shape_class=klass, variant=variant, seconds=seconds, speedup=baseline / seconds,
            gbps=case.bytes_moved / seconds / 1e9, max_abs_err=error, timer=timer,
        ))
    return rows


def auto_choices(rows):
    """{op: {shape class: backend}} from bench rows: per shape class, the backend ("reference" included, never
    torch.compile, which "auto" cannot run) with the best geometric-mean speed-up over its cases; a backend
    missing from some case of the class is not eligible there."""
    speedups = {}  # (op, class) -> backend -> [speed-ups]
    cases = {}  # (op, class) -> set of case labels
    for row in rows:
        if row.get("kind", "op") != "op" or "shape_class" not in row:
            continue
        variant = row["variant"]
        if variant.startswith("fastconv "):
            name = variant.split()[1]
        elif variant == "reference (ATen)":
            name = "reference"
        else:
            continue
        key = (row["op"], row["shape_class"])
        speedups.setdefault(key, {}).setdefault(name, []).append(row["speedup"])
        cases.setdefault(key, set()).add(row["case"])
    choices = {}
    for (op, klass), per_backend in sorted(speedups.items()):
        complete = {b: v for b, v in per_backend.items() if len(v) == len(cases[(op, klass)])}
        geomean = {b: math.exp(sum(map(math.log, v)) / len(v)) for b, v in complete.items()}
        choices.setdefault(op, {})[klass] = max(geomean, key=geomean.get)
    return choices


def write_auto_table(path, device_key, choices, measured_on):
    """Merge `choices` for `device_key` into the table at `path` (other devices and ops are kept)."""
    path = pathlib.Path(path)
    table = json.loads(path.read_text()) if path.exists() else {}
    table.setdefault("format", 1)
    section = table.setdefault("choices", {}).setdefault(device_key, {})
    section.update(choices)
    table.setdefault("measured_on", {})[device_key] = measured_on
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


# BatchNorm layers (channels, resolution) of a 224x224 input. MobileNetV2: expanded/projected widths of the
# inverted residuals (relu6 after the expansion/depthwise BNs). ResNet-50: stem and bottleneck widths (relu).
MOBILENET_V2_BN = ((32, 112), (96, 56), (144, 56), (192, 28), (384, 14), (576, 14), (960, 7))
RESNET50_BN = ((64, 56), (256, 56), (512, 28), (1024, 14), (2048, 7))


def batch_norm_act_train_step(forward):
    """A training step through `forward` (batch_norm_act's signature plus the output gradient): forward,
    then backward to input, weight and bias. Returns grad_input (what the bench compares)."""

    def step(x, weight, bias, running_mean, running_var, training, momentum, eps, activation, grad_output):
        x = x.detach().requires_grad_(True)
        out = forward(x, weight, bias, running_mean, running_var, training, momentum, eps, activation)
        grad_x, _, _ = torch.autograd.grad(out, (x, weight, bias), grad_output)
        return grad_x

    return step


def batch_norm_act_step(forward):
    """For the op suite, where eval and training cases mix: a training case (it carries the output gradient)
    runs batch_norm_act_train_step, an eval case the forward alone."""
    train_step = batch_norm_act_train_step(forward)

    def run(*args):
        return train_step(*args) if len(args) == 10 else forward(*args)

    # torch.compile of the reference compiles the forward only: the step's autograd.grad stays eager.
    run.make_compiled = lambda: batch_norm_act_step(torch.compile(forward, fullgraph=True, dynamic=False))
    return run


def batch_norm_act_cases(device, dtype, memory_format, batches, training) -> List[OpCase]:
    """Eval: inputs of batch_norm_act (bytes: read x, write y). Training: the same plus the output gradient,
    for batch_norm_act_train_step (bytes: statistics read, apply read + write, backward reduce reads x and
    dy, apply reads x and dy and writes dx = 8 passes)."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    networks = [("mobilenet_v2", MOBILENET_V2_BN, "relu6"), ("resnet50", RESNET50_BN, "relu")]
    for network, layers, activation in networks:
        for channels, size in layers:
            for batch in batches:
                shape = (batch, channels, size, size)

                def make(shape=shape, activation=activation):
                    c = shape[1]
                    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                    params = dict(device=device, dtype=torch.float32)
                    weight = torch.rand(c, **params).add_(0.5).requires_grad_(training)
                    bias = torch.randn(c, **params).requires_grad_(training)
                    args = (x, weight, bias, torch.zeros(c, **params), torch.ones(c, **params), training, 0.1, 1e-5,
                            activation)
                    return args + (torch.randn_like(x),) if training else args

                numel = batch * channels * size * size
                mode = "train fwd+bwd" if training else "eval fwd"
                label = (f"{network} bn {channels}@{size}x{size} b{batch} {activation} {mode} "
                         f"{layout_name(memory_format)} {dtype_name(dtype)}")
                cases.append(OpCase("batch_norm_act", label, make, (8 if training else 2) * numel * element))
    return cases


# Squeeze-and-Excitation blocks of the real networks at a 224x224 input: (channels, H = W, squeeze channels).
# SE-ResNet-50 (Hu et al. 2018): one SE per bottleneck on its 4x-expanded output, reduction 16.
SE_RESNET50_BLOCKS = tuple((c, s, c // 16) for c, s in ((256, 56), (512, 28), (1024, 14), (2048, 7)))
# MobileNetV3-Large (torchvision): SE on the expanded depthwise output, squeeze = make_divisible(C / 4, 8).
MOBILENET_V3_LARGE_SE_BLOCKS = ((72, 28, 24), (120, 28, 32), (480, 14, 120), (672, 14, 168), (672, 7, 168),
                                (960, 7, 240))
# EfficientNet-B0 (torchvision): SE on the expanded output, squeeze = block input channels / 4.
EFFICIENTNET_B0_SE_BLOCKS = ((32, 112, 8), (96, 56, 4), (144, 56, 6), (240, 28, 10), (480, 14, 20), (672, 14, 28),
                             (1152, 7, 48))
# network -> (blocks, activation, gate)
SQUEEZE_EXCITE_NETWORKS = {
    "se_resnet50": (SE_RESNET50_BLOCKS, "relu", "sigmoid"),
    "mobilenet_v3_large": (MOBILENET_V3_LARGE_SE_BLOCKS, "relu", "hardsigmoid"),
    "efficientnet_b0": (EFFICIENTNET_B0_SE_BLOCKS, "silu", "sigmoid"),
}


def squeeze_excite_cases(device, dtype, memory_format, batches, networks=tuple(SQUEEZE_EXCITE_NETWORKS)) -> List[OpCase]:
    """bytes_moved = the three-pass bound: read x to pool, read x again and write out to scale."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    for network in networks:
        blocks, activation, gate = SQUEEZE_EXCITE_NETWORKS[network]
        for channels, size, squeeze in blocks:
            for batch in batches:
                shape = (batch, channels, size, size)

                def make(shape=shape, squeeze=squeeze, activation=activation, gate=gate):
                    channels = shape[1]
                    options = dict(device=device, dtype=dtype)
                    x = torch.randn(shape, **options).contiguous(memory_format=memory_format)
                    fc1_weight = torch.randn(squeeze, channels, 1, 1, **options) / channels**0.5
                    fc2_weight = torch.randn(channels, squeeze, 1, 1, **options) / squeeze**0.5
                    return (x, fc1_weight, torch.randn(squeeze, **options), fc2_weight, torch.randn(channels, **options),
                            activation, gate)

                numel = batch * channels * size * size
                label = (f"{network} se C={channels} Cr={squeeze} {list(shape)} {layout_name(memory_format)} "
                         f"{dtype_name(dtype)}")
                cases.append(OpCase("squeeze_excite", label, make, 3 * numel * element))
    return cases


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


def depthwise_conv2d_reference(input, weight, bias, stride, padding, dilation, activation):
    """The reference with the public function's argument forms (it takes the resolved 4-sided padding)."""
    from fastconv.ops import _reference
    from fastconv.ops._checks import resolve_depthwise_conv2d_args

    stride, padding, dilation = resolve_depthwise_conv2d_args(weight, stride, padding, dilation)
    return _reference.depthwise_conv2d(input, weight, bias, stride, padding, dilation, activation)


def shuffle_cat_conv2d_act_reference(a, input, weight, bias, stride, padding, dilation, groups, activation):
    """The reference with the public function's argument forms: ATen's convolution, activation, cat and
    channel_shuffle."""
    from fastconv.ops import _reference
    from fastconv.ops._checks import resolve_conv2d_act_args

    stride, padding, dilation, groups = resolve_conv2d_act_args(weight, stride, padding, dilation, groups)
    return _reference.shuffle_cat_conv2d_act(a, input, weight, bias, stride, padding, dilation, groups, activation)


def forward_backward(fn):
    """fn(*args) then backward of the sum into every input that requires grad (for fwd+bwd timings)."""
    def run(*args):
        out = fn(*args)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        torch.autograd.grad(out, inputs, torch.ones_like(out))
        return out

    return run


# DCN-ResNet-50 (Dai et al. 2017 / Zhu et al. 2019, DCNv2): the 3x3 conv2 of every Bottleneck in stages 3-5
# (layer2..layer4) is deformable, at a 224x224 input: (channels, input size, stride). The first block of a
# stage downsamples in its 3x3 (torchvision's ResNet v1.5). Plus the 3x3 of a detection neck (FPN level P3 of
# an 800x1216 image): C = 256 at 100x152.
DCN_RESNET50_LAYERS = [(128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2), (512, 7, 1)]
DETECTION_NECK = (256, (100, 152))


def deform_conv2d_cases(device, dtype, memory_format, batches, offset_groups=(1, 4), backward=False,
                        layers=tuple(DCN_RESNET50_LAYERS), neck=DETECTION_NECK, neck_batches=(1,)) -> List[OpCase]:
    """Public-function arguments (input, offset, weight, bias, stride, padding, dilation, mask) per layer, DCNv2
    (with a mask). Offsets ~ N(0, 1) pixels. With backward=True the tensors require grad (fwd+bwd timings)."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    shapes = [(c, (s, s), st, batch, f"dcn_resnet50 C{c} {s}x{s} s{st}") for c, s, st in layers for batch in batches]
    if neck is not None:
        shapes += [(neck[0], neck[1], 1, batch, f"detection_neck C{neck[0]} {neck[1][0]}x{neck[1][1]}")
                   for batch in neck_batches]
    for channels, (h, w), stride, batch, name in shapes:
        for groups in offset_groups:
            out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1

            def make(channels=channels, h=h, w=w, stride=stride, batch=batch, groups=groups, out_h=out_h,
                     out_w=out_w):
                def t(*shape, scale=1.0):
                    return (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype)

                x = t(batch, channels, h, w).contiguous(memory_format=memory_format)
                offset = t(batch, 2 * groups * 9, out_h, out_w).contiguous(memory_format=memory_format)
                mask = torch.rand(batch, groups * 9, out_h, out_w, device=device).to(dtype)
                mask = mask.contiguous(memory_format=memory_format)
                weight = t(channels, channels, 3, 3, scale=(channels * 9) ** -0.5)
                bias = t(channels)
                if backward:
                    for tensor in (x, offset, mask, weight, bias):
                        tensor.requires_grad_(True)
                return (x, offset, weight, bias, (stride, stride), (1, 1), (1, 1), mask)

            moved = (batch * channels * (h * w + out_h * out_w) + batch * groups * 27 * out_h * out_w
                     + channels * channels * 9) * element
            if backward:  # read grad_out, input, offset, mask, weight; write every gradient
                moved *= 2
            label = (f"{name} og{groups} [{batch}] {layout_name(memory_format)} {dtype_name(dtype)}"
                     f"{' fwd+bwd' if backward else ''}")
            cases.append(OpCase("deform_conv2d", label, make, moved))
    return cases


# --- conv2d_act / conv-BN-act --------------------------------------------------------------------------------
# Every convolution of the real networks at a 224x224 input, as (c_in, c_out, input size, kernel, stride, groups,
# activation after its BN), duplicates removed (a layer shape that repeats is timed once).
def _mobilenet_v2_conv_layers():
    """MobileNetV2 (Sandler et al. 2018, Table 2): stem, then per inverted residual the 1x1 expansion (relu6,
    absent for t=1), the depthwise 3x3 (relu6) and the 1x1 linear projection; the last 1x1 to 1280."""
    layers = [(3, 32, 224, 3, 2, 1, "relu6")]
    c_in, size = 32, 112
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c_in * t
            if t != 1:
                layers.append((c_in, hidden, size, 1, 1, 1, "relu6"))
            layers.append((hidden, hidden, size, 3, stride, hidden, "relu6"))
            size //= stride
            layers.append((hidden, c, size, 1, 1, 1, None))
            c_in = c
    layers.append((320, 1280, 7, 1, 1, 1, "relu6"))
    return layers


def _resnet50_conv_layers():
    """ResNet-50 (torchvision, v1.5: the stride on the 3x3): stem 7x7, per bottleneck 1x1 (relu), 3x3 (relu),
    1x1 expansion (no activation before the residual add), and the stride-s 1x1 downsample of each stage."""
    layers = [(3, 64, 224, 7, 2, 1, "relu")]
    c_in, size = 64, 56
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            layers.append((c_in, width, size, 1, 1, 1, "relu"))
            layers.append((width, width, size, 3, s, 1, "relu"))
            if i == 0:
                layers.append((c_in, width * 4, size, 1, s, 1, None))  # downsample
            size //= s
            layers.append((width, width * 4, size, 1, 1, 1, None))
            c_in = width * 4
    return layers


def _shufflenet_v2_pointwise_layers(stages=SHUFFLENET_V2_STAGES["x1.0"]):
    """ShuffleNetV2 x1.0's 1x1 convolutions (all relu): per stage the stride-2 unit's branch-1 1x1 (after its
    depthwise), branch-2 first 1x1 (before the stride) and last 1x1, the stride-1 units' 1x1s; then conv5."""
    layers = []
    c_in, size = 24, 56
    for channels in stages:
        half = channels // 2
        layers += [(c_in, half, size // 2, 1, 1, 1, "relu"), (c_in, half, size, 1, 1, 1, "relu"),
                   (half, half, size // 2, 1, 1, 1, "relu")]
        c_in, size = channels, size // 2
    layers.append((stages[-1], 1024, 7, 1, 1, 1, "relu"))
    return layers


def _unique(layers):
    return list(dict.fromkeys(layers))


CONV_LAYERS = {
    "mobilenet_v2": _unique(_mobilenet_v2_conv_layers()),
    "resnet50": _unique(_resnet50_conv_layers()),
    "shufflenet_v2_x1.0_1x1": _unique(_shufflenet_v2_pointwise_layers()),
}


def conv_layer_label(network, layer):
    c_in, c_out, size, kernel, stride, groups, activation = layer
    kind = "dw" if groups == c_in and groups > 1 else ("g" if groups > 1 else "")
    return f"{network} {kind}{kernel}x{kernel} s{stride} {c_in}->{c_out}@{size} {activation or 'linear'}"


def make_conv_bn_act_inputs(layer, batch, device, dtype, memory_format, requires_grad=False):
    """(x, weight, bn_weight, bn_bias, running_mean, running_var, folded_weight, folded_bias, stride, padding,
    groups, activation): a conv (no bias) + eval BN, and the same pair folded (fastconv.nn.fold_bn's formula)."""
    c_in, c_out, size, kernel, stride, groups, activation = layer
    options = dict(device=device, dtype=dtype)
    x = torch.randn(batch, c_in, size, size, **options).contiguous(memory_format=memory_format)
    weight = torch.randn(c_out, c_in // groups, kernel, kernel, **options) / (c_in // groups * kernel * kernel) ** 0.5
    weight = weight.contiguous(memory_format=memory_format)
    bn_weight, bn_bias = torch.rand(c_out, **options) + 0.5, torch.randn(c_out, **options)
    mean, var = torch.randn(c_out, **options) * 0.1, torch.rand(c_out, **options) + 0.5
    scale = bn_weight.double() * torch.rsqrt(var.double() + 1e-5)
    folded_weight = (weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype).contiguous(memory_format=memory_format)
    folded_bias = (bn_bias.double() - mean.double() * scale).to(dtype)
    if requires_grad:
        for t in (x, folded_weight, folded_bias):
            t.requires_grad_(True)
    return (x, weight, bn_weight, bn_bias, mean, var, folded_weight, folded_bias, stride, (kernel - 1) // 2, groups,
            activation)


_EAGER_ACTIVATIONS = {None: lambda x: x, "relu": torch.relu, "relu6": torch.nn.functional.relu6,
                      "hardswish": torch.nn.functional.hardswish, "silu": torch.nn.functional.silu}


def conv_bn_act_reference(x, weight, bn_weight, bn_bias, mean, var, folded_weight, folded_bias, stride, padding,
                          groups, activation):
    """What an unfused eval conv-BN-act runs: three ATen ops (convolution, batch_norm, activation)."""
    out = torch.nn.functional.conv2d(x, weight, None, stride, padding, 1, groups)
    out = torch.nn.functional.batch_norm(out, mean, var, bn_weight, bn_bias, False, 0.0, 1e-5)
    return _EAGER_ACTIVATIONS[activation](out)


def conv_bn_act_fused(x, weight, bn_weight, bn_bias, mean, var, folded_weight, folded_bias, stride, padding, groups,
                      activation):
    """The fused eval form: one fastconv.ops.conv2d_act on the folded parameters (folded once, as the cached
    fastconv.nn.Conv2dNormActivation does)."""
    return fastconv.ops.conv2d_act(x, folded_weight, folded_bias, stride, padding, 1, groups, activation)


def conv2d_act_cases(device, dtype, memory_format, batches, networks=tuple(CONV_LAYERS)) -> List[OpCase]:
    """Eval conv-BN-act per layer, inputs for conv_bn_act_reference / conv_bn_act_fused. bytes_moved = read x
    and the weight, write the output (the fused minimum); flops = 2 * N * H_out * W_out * C_out * K."""
    cases = []
    element = torch.empty((), dtype=dtype).element_size()
    for network in networks:
        for layer in CONV_LAYERS[network]:
            c_in, c_out, size, kernel, stride, groups, _ = layer
            for batch in batches:
                out_size = (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1
                moved = (batch * (c_in * size * size + c_out * out_size * out_size)
                         + c_out * c_in // groups * kernel * kernel) * element
                flops = 2 * batch * out_size * out_size * c_out * c_in // groups * kernel * kernel
                label = f"{conv_layer_label(network, layer)} b{batch} {layout_name(memory_format)} {dtype_name(dtype)}"
                make = (lambda layer=layer, batch=batch:
                        make_conv_bn_act_inputs(layer, batch, device, dtype, memory_format))
                cases.append(OpCase("conv2d_act", label, make, moved, flops))
    return cases
