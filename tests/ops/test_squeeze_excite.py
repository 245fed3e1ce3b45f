import functools

import pytest
import torch
import torchvision

import fastconv
from harness import CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, OpHarness, Sample, runnable
from tolerances import TOLERANCES


def reference64(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation="relu", gate="sigmoid"):
    """Independent reference: the SE block written out as means and matrix products."""
    pooled = input.mean(dim=(2, 3))  # (N, C)
    z1 = pooled @ fc1_weight.flatten(1).t()
    if fc1_bias is not None:
        z1 = z1 + fc1_bias
    hidden = z1.clamp_min(0) if activation == "relu" else z1 * (1 / (1 + torch.exp(-z1)))
    z2 = hidden @ fc2_weight.flatten(1).t()
    if fc2_bias is not None:
        z2 = z2 + fc2_bias
    scale = 1 / (1 + torch.exp(-z2)) if gate == "sigmoid" else (z2 / 6 + 0.5).clamp(0, 1)
    return input * scale[:, :, None, None]


harness = OpHarness("squeeze_excite", fastconv.ops.squeeze_excite, reference64)


def se_sample(shape, squeeze, name, activation="relu", gate="sigmoid", bias=True):
    n, c, h, w = shape
    args = (
        torch.randn(shape),
        torch.randn(squeeze, c, 1, 1) / c**0.5 * 4,  # scaled so the gate sees values across its range
        torch.randn(squeeze) if bias else None,
        torch.randn(c, squeeze, 1, 1) / squeeze**0.5 * 2,
        torch.randn(c) if bias else None,
        activation,
        gate,
    )
    grad = tuple(i for i in range(5) if args[i] is not None)
    return Sample(args, name, grad=grad)


SAMPLES = [
    se_sample((2, 32, 7, 9), 8, "se-resnet-relu-sigmoid"),
    se_sample((2, 24, 5, 5), 8, "mobilenetv3-hardsigmoid", gate="hardsigmoid"),
    se_sample((3, 20, 4, 6), 5, "efficientnet-silu", activation="silu"),
    se_sample((2, 7, 3, 5), 3, "no-bias-odd-c", bias=False),
    se_sample((3, 16, 1, 1), 4, "1x1"),
    se_sample((0, 8, 3, 3), 2, "batch0"),
    se_sample((1, 150, 3, 3), 10, "c150-channel-blocks", activation="silu", gate="hardsigmoid"),
    se_sample((1, 6, 37, 41), 3, "large-plane"),
    se_sample((6, 12, 3, 3), 4, "batch6-gemm-gate", activation="silu", gate="hardsigmoid"),  # CPU: ATen GEMMs past batch 4
    se_sample((1, 3, 112, 112), 2, "112x112"),  # MobileNetV3's first SE plane size (fp16: a 12544-term mean)
    se_sample((2, 1, 4, 3), 1, "one-channel-squeeze1"),
]
IDS = [s.name for s in SAMPLES]
BACKENDS = runnable("squeeze_excite")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_forward(backend, device, sample, dtype, layout):
    harness.check_forward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES[:4] + SAMPLES[5:7], ids=IDS[:4] + IDS[5:7])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_backward(backend, device, sample, dtype, layout):
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("the reference (plain ATen in the input dtype) rounds every intermediate of the backward "
                    "(pooled mean, both FCs, the gate) to fp16/bf16; it is the baseline, not the code under test")
    harness.check_backward(sample, backend, device, dtype, layout)


# Small shapes: gradcheck differentiates numerically, one element at a time (the Triton interpreter is slow).
GRADCHECK_SAMPLES = [
    se_sample((2, 6, 3, 4), 2, "relu-sigmoid"),
    se_sample((2, 5, 2, 3), 3, "hardsigmoid", gate="hardsigmoid"),
    se_sample((1, 6, 3, 2), 2, "silu-no-bias", activation="silu", bias=False),
]


@pytest.mark.parametrize("sample", GRADCHECK_SAMPLES, ids=[s.name for s in GRADCHECK_SAMPLES])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_gradcheck(backend, device, sample, layout):
    # The double backward of every fastconv backend is one Python composition (squeeze_excite.py); check it
    # on the C++ ops only. ATen's own F.hardsigmoid (the reference backend) has no double backward.
    gradgrad = backend in ("cpu", "cuda") and layout == "contiguous"
    harness.check_gradcheck(sample, backend, device, layout, gradgrad=gradgrad, fast_mode=True)


@pytest.mark.parametrize("sample", [SAMPLES[0], SAMPLES[3]], ids=[IDS[0], IDS[3]])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_opcheck(backend, device, sample, layout):
    harness.check_opcheck(sample, backend, device, layout)


@pytest.mark.parametrize("sample", [SAMPLES[1], SAMPLES[3]], ids=[IDS[1], IDS[3]])
@pytest.mark.parametrize(
    "backward_op",
    [torch.ops.fastconv._squeeze_excite_backward.default, torch.ops.fastconv._squeeze_excite_backward_triton.default],
    ids=["cpp", "triton"],
)
def test_backward_op_opcheck(backward_op, sample):
    if "triton" in str(backward_op) and "triton" not in [p.values[0] for p in BACKENDS]:
        pytest.skip("triton does not run here")
    args = sample.materialize("cpu", torch.float32, requires_grad=True)
    grad_output = torch.randn(args[0].shape, requires_grad=True)
    torch.library.opcheck(backward_op, (grad_output, *args))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[1], backend, device, layout)


@pytest.mark.parametrize("backend, device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_compile_backward(backend, device):
    x, w1, b1, w2, b2, act, gate = SAMPLES[2].materialize(device, torch.float32, "channels_last", requires_grad=True)
    torch._dynamo.reset()
    with fastconv.backend(backend):
        compiled = torch.compile(fastconv.ops.squeeze_excite, fullgraph=True)
        got = torch.autograd.grad(compiled(x, w1, b1, w2, b2, act, gate).square().sum(), [x, w1, b1, w2, b2])
    want = torch.autograd.grad(reference64(x, w1, b1, w2, b2, act, gate).square().sum(), [x, w1, b1, w2, b2])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_grad_output_in_another_layout(backend, device):
    x, w1, b1, w2, b2, act, gate = SAMPLES[0].materialize(device, torch.float32, "channels_last", requires_grad=True)
    grad_output = torch.randn(x.shape, device=device)  # NCHW, while the input is channels_last
    with fastconv.backend(backend):
        got = torch.autograd.grad(fastconv.ops.squeeze_excite(x, w1, b1, w2, b2, act, gate), [x, w1], grad_output)
    want = torch.autograd.grad(reference64(x, w1, b1, w2, b2, act, gate), [x, w1], grad_output)
    if backend != "reference":
        assert got[0].stride() == x.stride()
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_permuted_dense_layout_is_kept(backend, device):
    x, w1, b1, w2, b2, act, gate = SAMPLES[0].materialize(device, torch.float32)
    x = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # dense, neither NCHW nor channels_last
    with fastconv.backend(backend):
        out = fastconv.ops.squeeze_excite(x, w1, b1, w2, b2, act, gate)
    assert out.stride() == x.stride()
    torch.testing.assert_close(out, reference64(x, w1, b1, w2, b2, act, gate), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "activation, scale_activation",
    [
        (torch.nn.ReLU, torch.nn.Sigmoid),  # SE-ResNet
        (torch.nn.ReLU, torch.nn.Hardsigmoid),  # MobileNetV3
        (torch.nn.SiLU, torch.nn.Sigmoid),  # EfficientNet
    ],
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_module_loads_torchvision_state_dict_and_matches(activation, scale_activation, layout):
    theirs = torchvision.ops.SqueezeExcitation(24, 6, activation, scale_activation)
    ours = fastconv.nn.SqueezeExcitation(24, 6, activation, scale_activation)
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert repr(ours) == repr(theirs)
    x = torch.randn(2, 24, 6, 5)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x.requires_grad_(True)
    got, want = ours(x), theirs(x)
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, [x, *ours.parameters()], grad)
    want_grads = torch.autograd.grad(want, [x, *theirs.parameters()], grad)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(activation=torch.nn.GELU), dict(scale_activation=torch.nn.Tanh),
                                    dict(activation=functools.partial(torch.nn.LeakyReLU, 0.2))],
                         ids=["gelu", "tanh-gate", "partial-leaky-relu"])
def test_module_runs_other_activations_as_torchvision(kwargs):
    """Activations the fused op does not implement are accepted, as torchvision accepts them, and run
    torchvision's forward (no fused op); a hook on a member likewise."""
    torch.manual_seed(0)
    theirs = torchvision.ops.SqueezeExcitation(8, 2, **kwargs)
    ours = fastconv.nn.SqueezeExcitation(8, 2, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 8, 5, 5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        got = ours(x)
    assert not any("fastconv::" in event.name for event in profiler.events())
    torch.testing.assert_close(got, theirs(x), rtol=1e-5, atol=1e-5)


def test_module_hooks_fire():
    torch.manual_seed(0)
    theirs, ours = torchvision.ops.SqueezeExcitation(8, 2), fastconv.nn.SqueezeExcitation(8, 2)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 8, 5, 5)
    for module in (ours, theirs):
        module.fc1.register_forward_hook(lambda m, args, out: out * 3)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape, squeeze", [((1, 150, 30, 31), 10), ((1, 1024, 3, 5), 64), ((3, 40, 20, 20), 6)],
                         ids=["pixels-split", "gate-weights-split", "batch3"])
def test_cpu_work_split_over_threads(shape, squeeze, layout):
    """The CPU forward's splits over two threads: channels_last with fewer samples than threads sums each
    thread's pixels into its own slot (150 channels: a register block, a vector and a tail); gate weights of
    64K elements or more are split over the threads. float32 against the float64 reference."""
    sample = se_sample(shape, squeeze, "split")
    args = sample.args
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = args[0].contiguous(memory_format=torch.channels_last) if layout == "channels_last" else args[0]
        with fastconv.backend("cpu"):
            out = fastconv.ops.squeeze_excite(x, *args[1:])
    finally:
        torch.set_num_threads(previous)
    expected = reference64(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out.double(), expected, rtol=rtol, atol=atol)
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def _invalid_cases():
    x = torch.randn(2, 8, 3, 3)
    w1, b1, w2, b2 = torch.randn(2, 8, 1, 1), torch.randn(2), torch.randn(8, 2, 1, 1), torch.randn(8)
    return [
        ((torch.randn(8, 3, 3), w1, b1, w2, b2), {}, r"input must be 4-D \(N, C, H, W\), got sizes \[8, 3, 3\]"),
        ((x, torch.randn(2, 7, 1, 1), b1, w2, b2), {}, r"fc1_weight must have shape .* = 8, got \[2, 7, 1, 1\]"),
        ((x, torch.randn(2, 8, 3, 3), b1, w2, b2), {}, r"fc1_weight must have shape"),
        ((x, w1, b1, torch.randn(8, 3, 1, 1), b2), {}, r"fc2_weight must have shape \(C, squeeze_channels, 1, 1\) = \(8, 2, 1, 1\)"),
        ((x, w1, b1, torch.randn(7, 2, 1, 1), b2), {}, r"fc2_weight must have shape"),
        ((x, w1, torch.randn(3), w2, b2), {}, r"fc1_bias must have shape \(squeeze_channels,\) = \(2,\), got \[3\]"),
        ((x, w1, b1, w2, torch.randn(8, 1)), {}, r"fc2_bias must have shape \(C,\) = \(8,\), got \[8, 1\]"),
        ((x, w1.double(), b1, w2, b2), {}, r"fc1_weight has dtype (torch.float64|Double) but input has dtype (torch.float32|Float)"),
        ((x, w1, b1.half(), w2, b2), {}, r"fc1_bias has dtype"),
        ((x, w1, b1, w2, b2.double()), {}, r"fc2_bias has dtype"),
        ((x, w1, b1, w2, b2), dict(activation="gelu"), r"activation must be one of 'relu', 'silu', got 'gelu'"),
        ((x, w1, b1, w2, b2), dict(gate="tanh"), r"gate must be one of 'sigmoid', 'hardsigmoid', got 'tanh'"),
        ((x.int(), w1.int(), b1.int(), w2.int(), b2.int()), {}, r"input must be float16, bfloat16, float32 or float64"),
        ((torch.randn(2, 8, 0, 3), w1, b1, w2, b2), {}, r"non-empty spatial size"),
    ]


@pytest.mark.parametrize("case", range(len(_invalid_cases())))
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, case):
    args, kwargs, message = _invalid_cases()[case]
    args = [a.to(device) for a in args]
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.squeeze_excite(*args, **kwargs)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_mixed_devices_are_rejected(backend, device):
    other = "meta" if device == "cpu" else "cpu"  # a second device that exists everywhere
    x = torch.randn(2, 8, 3, 3, device=device)
    w2 = torch.randn(8, 2, 1, 1, device=device)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=f"fc1_weight is on {other}.* but input is on"):
        fastconv.ops.squeeze_excite(x, torch.randn(2, 8, 1, 1, device=other), None, w2, None)


def test_invalid_arguments_under_compile():
    compiled = torch.compile(fastconv.ops.squeeze_excite, fullgraph=True)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="fc2_weight must have shape"):
        compiled(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 1, 1), None, torch.randn(8, 3, 1, 1), None)


SUBSET_SAMPLES = [SAMPLES[i] for i in (0, 3)]  # biases; none

# The C++ ops' autograd (csrc/autograd.cpp) maps graph edges to arguments: every subset of gradients.
@pytest.mark.parametrize("sample", SUBSET_SAMPLES, ids=[s.name for s in SUBSET_SAMPLES])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    harness.check_grad_subsets(sample, backend, device)
