"""conv2d_act / conv-BN-act on every convolution of MobileNetV2 and ResNet-50 and the 1x1 convolutions of
ShuffleNetV2 x1.0 (fastconv/_bench.py: CONV_LAYERS).

- eval, per layer: fastconv.ops.conv2d_act on the folded parameters vs the unfused reference (convolution,
  batch_norm, activation: three ATen ops) and vs torch.compile of that reference;
- eval, module: fastconv.nn.Conv2dNormActivation vs torchvision's (the target: >= 1.2x at batch 1 on the
  MobileNetV2 layers on the CPU; the summary prints the ratio);
- training forward + backward, module: fastconv's (conv + batch_norm_act) vs torchvision's (eager).

GPU: batch 1/32/128, fp16 and bf16 channels_last and fp32 NCHW. CPU (2 shared cores here): batch 1 (and 32
for the per-layer eval), fp32 NCHW, and the modules in fp32 channels_last too. Run: pytest
benches/bench_conv_bn_act.py (see README); -k mobilenet_v2.
"""
import pytest
import torch
import torchvision

import fastconv
from fastconv import _bench

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
CONFIGS = [(torch.float32, torch.contiguous_format)]
if GPU:
    CONFIGS += [(torch.float16, torch.channels_last), (torch.bfloat16, torch.channels_last)]
BATCHES = (1, 32, 128) if GPU else (1, 32)
MODULE_BATCHES = (1, 32, 128) if GPU else (1,)
# The modules also in float32 channels_last on the CPU: the layout the zoo computes in there, where eval runs
# oneDNN on prepacked weights (fastconv.ops.conv2d_act.PackedWeight).
MODULE_CONFIGS = CONFIGS if GPU else CONFIGS + [(torch.float32, torch.channels_last)]

EVAL_CASES = [
    pytest.param(case, id=case.label)
    for dtype, fmt in CONFIGS
    for case in _bench.conv2d_act_cases(DEVICE, dtype, fmt, BATCHES)
]
VARIANTS = ["reference-eager", "reference-compile"] + [f"fastconv-{b}" for b in ("cpu", "cuda", "triton")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", EVAL_CASES)
def test_conv_bn_act_eval(benchmark, timed, case, variant):
    benchmark.group = case.label
    args = case.make_inputs()
    backend = None  # a fastconv backend, set around the whole measurement
    if variant == "reference-eager":
        fn = _bench.conv_bn_act_reference
    elif variant == "reference-compile":
        torch._dynamo.reset()
        fn = torch.compile(_bench.conv_bn_act_reference, fullgraph=True, dynamic=False)
    else:
        backend = variant.split("-", 1)[1]
        if backend not in _bench.fastconv_backends("conv2d_act", DEVICE):
            pytest.skip(f"fastconv backend {backend!r} does not run (or is not timed) on {DEVICE} here")

        fn = _bench.conv_bn_act_fused
    benchmark.extra_info["flops"] = case.flops
    with torch.no_grad():
        timed(lambda: fn(*args), case.bytes_moved, backend)


def _modules(layer, dtype, fmt):
    """torchvision's Conv2dNormActivation for `layer` with random BN statistics, and fastconv's with the same
    state_dict, both in eval (or train: the caller switches), on DEVICE."""
    c_in, c_out, size, kernel, stride, groups, activation = layer
    act = {None: None, "relu": torch.nn.ReLU, "relu6": torch.nn.ReLU6}[activation]
    kwargs = dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, groups=groups,
                  activation_layer=act)
    reference = torchvision.ops.misc.Conv2dNormActivation(**kwargs)
    with torch.no_grad():
        bn = reference[1]
        bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
    ours = fastconv.nn.Conv2dNormActivation(**kwargs)
    ours.load_state_dict(reference.state_dict())
    return [m.to(device=DEVICE, dtype=dtype, memory_format=fmt) for m in (reference, ours)]


MODULE_CASES = [
    pytest.param(network, layer, batch, dtype, fmt,
                 id=f"{_bench.conv_layer_label(network, layer)} b{batch} {_bench.layout_name(fmt)} "
                    f"{_bench.dtype_name(dtype)}")
    for dtype, fmt in MODULE_CONFIGS
    for network in ("mobilenet_v2", "resnet50")
    for layer in _bench.CONV_LAYERS[network]
    for batch in MODULE_BATCHES
]


@pytest.mark.parametrize("variant", ["reference-eager", "fastconv"])
@pytest.mark.parametrize("network, layer, batch, dtype, fmt", MODULE_CASES)
def test_conv_norm_act_module_eval(benchmark, timed, network, layer, batch, dtype, fmt, variant):
    """Module-level eval: torchvision.ops.misc.Conv2dNormActivation vs fastconv.nn.Conv2dNormActivation
    (BN folded once and cached, conv2d_act)."""
    benchmark.group = f"module eval {_bench.conv_layer_label(network, layer)} b{batch} {_bench.layout_name(fmt)} {_bench.dtype_name(dtype)}"
    reference, ours = (m.eval() for m in _modules(layer, dtype, fmt))
    module = reference if variant == "reference-eager" else ours
    x = torch.randn(batch, layer[0], layer[2], layer[2], device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
    element = x.element_size()
    with torch.no_grad():
        out = module(x)
        moved = (x.numel() + out.numel() + module[0].weight.numel()) * element
        timed(lambda: module(x), moved)


@pytest.mark.parametrize("variant", ["reference-eager", "fastconv"])
@pytest.mark.parametrize("network, layer, batch, dtype, fmt", MODULE_CASES)
def test_conv_norm_act_module_train(benchmark, timed, network, layer, batch, dtype, fmt, variant):
    """Module-level training step (forward + backward to the input and every parameter): torchvision's
    (conv, BN, activation) vs fastconv's (conv, then batch_norm_act with the activation fused)."""
    if batch == 1 and layer[5] == 1 and layer[2] <= 7 and not GPU:
        pytest.skip("batch statistics of a 1x1-pixel-per-channel map are degenerate")
    benchmark.group = f"module train {_bench.conv_layer_label(network, layer)} b{batch} {_bench.layout_name(fmt)} {_bench.dtype_name(dtype)}"
    reference, ours = (m.train() for m in _modules(layer, dtype, fmt))
    module = reference if variant == "reference-eager" else ours
    x = torch.randn(batch, layer[0], layer[2], layer[2], device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    parameters = [x] + list(module.parameters())
    out = module(x)
    grad = torch.randn_like(out)
    moved = 3 * (x.numel() + out.numel()) * x.element_size()

    def step():
        torch.autograd.grad(module(x), parameters, grad)

    timed(step, moved)
