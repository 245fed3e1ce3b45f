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


def forward_backward(fn):
    """fn(*args) then backward of the sum into every input that requires grad (for fwd+bwd timings)."""
    def run(*args):
        out = fn(*args)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        torch.autograd.grad(out, inputs, torch.ones_like(out))
        return out

    return run


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
