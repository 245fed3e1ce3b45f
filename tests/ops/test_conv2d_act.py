import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv
from harness import (CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, SAVES_CASES, OpHarness, Sample,
                     check_saves_only_what_the_gradients_need, runnable)
from tolerances import TOLERANCES, scaled_to_output, tolerance
from fastconv.ops._checks import resolve_conv2d_act_args


@pytest.fixture(autouse=True)
def _one_thread():
    """Most cases here are tiny and the gradchecks call the op hundreds of times. On a machine shared with other
    jobs, every OpenMP parallel region ATen opens for a small convolution can wait a whole scheduler quantum
    (measured: 60-160 ms per 1x4x5x5 convolution at 2 threads under load, 10 us at 1), so the file runs on
    one thread; test_parallel_forward_equals_one_thread covers the multi-threaded passes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _activate(x, activation):
    if activation is None:
        return x
    if activation == "relu":
        return x.clamp_min(0)
    if activation == "relu6":
        return x.clamp(0, 6)
    if activation == "hardswish":
        return x * (x + 3).clamp(0, 6) / 6
    if activation == "silu":
        return x * torch.sigmoid(x)
    raise ValueError(activation)


def reference64(input, weight, bias, stride, padding, dilation, groups, activation):
    """Independent reference: stock F.conv2d (which resolves 'same'/'valid' itself), activation from formulas."""
    return _activate(F.conv2d(input, weight, bias, stride, padding, dilation, groups), activation)


def _output_strides(input, out):
    layout = torch.channels_last if input.is_contiguous(memory_format=torch.channels_last) and not \
        input.is_contiguous() else torch.contiguous_format
    return torch.empty(out.shape, memory_format=layout).stride()


harness = OpHarness("conv2d_act", fastconv.ops.conv2d_act, reference64,
                    expected_strides=lambda input, *rest: _output_strides(input, rest[-1]))


def conv(n, c_in, h, w, c_out, kernel, groups=1, bias=True, stride=1, padding=0, dilation=1, activation=None,
         name=""):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    fan_in = c_in // groups * kh * kw
    args = (torch.randn(n, c_in, h, w), torch.randn(c_out, c_in // groups, kh, kw) / fan_in**0.5,
            torch.randn(c_out) if bias else None, stride, padding, dilation, groups, activation)
    return Sample(args, name, grad=(0, 1, 2) if bias else (0, 1))


SAMPLES = [
    conv(2, 8, 9, 9, 12, 3, padding=1, name="3x3"),
    conv(2, 16, 7, 6, 24, 1, activation="relu", name="1x1-relu"),
    conv(2, 6, 10, 9, 8, 3, stride=2, padding=1, activation="relu6", name="3x3-s2-relu6"),
    conv(1, 8, 8, 7, 12, 3, groups=4, padding=1, activation="hardswish", name="grouped-hardswish"),
    conv(1, 4, 11, 12, 6, 3, padding=2, dilation=2, activation="silu", name="dilation2-silu"),
    conv(1, 3, 7, 8, 5, 4, padding="same", activation="relu", bias=False, name="same-even-kernel"),
    conv(2, 3, 7, 9, 4, (2, 3), stride=(2, 1), padding="valid", name="valid-nonsquare-stride"),
    conv(1, 3, 13, 13, 8, 7, stride=2, padding=3, activation="relu", name="7x7-stem"),
    conv(2, 6, 8, 8, 6, 3, groups=6, padding=1, activation="relu6", name="depthwise"),
    conv(1, 4, 6, 7, 8, 3, groups=4, padding=1, activation="silu", name="depthwise-m2"),
    conv(1, 5, 6, 5, 7, (1, 3), stride=(1, 2), padding=(0, 1), name="1x3-odd"),
    conv(0, 4, 6, 6, 8, 3, padding=1, activation="relu", name="batch0"),
    conv(1, 1, 1, 1, 1, 1, name="1x1x1"),
]
IDS = [s.name for s in SAMPLES]
BACKENDS = runnable("conv2d_act")
KERNEL_BACKENDS = [p for p in BACKENDS if p.values[0] != "reference"]
CPU_BACKENDS = [p for p in BACKENDS if p.values[0] == "cpu" or (p.values[1] == "cuda" and p.values[0] != "reference")]
TRITON_BACKENDS = [p for p in BACKENDS if p.values[0] == "triton"]
# The Triton interpreter runs each program as Python: a few tiny samples cover its code paths (pointwise,
# strided, grouped, asymmetric padding, depthwise routing, batch 0, no activation).
TRITON_SAMPLES = [SAMPLES[i] for i in (0, 1, 2, 3, 5, 8, 11)]


def _cases(backends, samples):
    return [pytest.param(b.values[0], b.values[1], s, id=f"{b.id}-{s.name}") for b in backends for s in samples]


ALL_CASES = _cases(CPU_BACKENDS, SAMPLES) + _cases(TRITON_BACKENDS, TRITON_SAMPLES)
REFERENCE_CASES = _cases([p for p in BACKENDS if p.values[0] == "reference"], [SAMPLES[0], SAMPLES[5]])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("backend, device, sample", ALL_CASES + REFERENCE_CASES)
def test_forward(backend, device, sample, dtype, layout):
    if dtype == torch.float64 and device == "cuda" and backend != "reference":
        pytest.skip("float64 is a CPU (gradcheck) dtype")
    harness.check_forward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend, device, sample", ALL_CASES)
def test_backward(backend, device, sample, dtype, layout):
    harness.check_backward(sample, backend, device, dtype, layout)


# gradcheck/gradgradcheck perturb every element: tiny shapes, each activation, the odd geometries.
GRADCHECK = [
    conv(1, 4, 5, 5, 4, 3, groups=2, stride=2, padding=1, activation="relu", name="grouped-s2-relu"),
    conv(1, 2, 5, 4, 3, (2, 3), padding="same", dilation=(2, 1), activation="hardswish", name="same-hardswish"),
    conv(2, 3, 4, 4, 2, 1, bias=False, activation="silu", name="1x1-silu"),
    conv(1, 2, 4, 5, 3, 3, padding=1, activation="relu6", name="3x3-relu6"),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("sample", GRADCHECK, ids=[s.name for s in GRADCHECK])
def test_gradcheck(sample, layout):
    harness.check_gradcheck(sample, "cpu", "cpu", layout)


@pytest.mark.parametrize("sample", GRADCHECK[:3], ids=[s.name for s in GRADCHECK[:3]])
@pytest.mark.parametrize("backend, device", TRITON_BACKENDS)
def test_gradcheck_triton(backend, device, sample):
    """Fast mode under the interpreter (random projections); the double backward is the shared ATen
    composition, covered by the C++ backend's gradgradcheck."""
    harness.check_gradcheck(sample, backend, device, gradgrad=False, fast_mode=True)


def _resolved(sample, device, layout, dtype=torch.float32):
    input, weight, bias, stride, padding, dilation, groups, activation = sample.materialize(device, dtype, layout, True)
    stride, padding, dilation, groups = resolve_conv2d_act_args(weight, stride, padding, dilation, groups)
    return input, weight, bias, stride, padding, dilation, groups, activation


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device, sample", _cases(KERNEL_BACKENDS, [SAMPLES[3], SAMPLES[5]]))
def test_opcheck(backend, device, sample, layout):
    torch.library.opcheck(harness.custom_op(backend), _resolved(sample, device, layout))


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_backward_op_opcheck(backend, device, activation):
    input, weight, bias, stride, padding, dilation, groups, _ = _resolved(SAMPLES[3], device, "channels_last")
    op = harness.custom_op(backend)
    output = op(input, weight, bias, stride, padding, dilation, groups, activation).detach()
    grad = torch.randn_like(output)
    backward = (torch.ops.fastconv._conv2d_act_backward.default if backend != "triton"
                else torch.ops.fastconv._conv2d_act_backward_triton.default)
    for mask in ([True, True, True], [True, False, False]):
        keep_input = mask[1] or activation == "silu"
        args = (grad, input.detach() if keep_input else None, weight.detach(), bias.detach(), output,
                list(input.shape), stride, padding, dilation, groups, activation, mask)
        torch.library.opcheck(backward, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)  # the reference is plain ATen: inductor's business
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[3], backend, device, layout)


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_compile_backward(backend, device):
    sample = SAMPLES[4]  # dilation, silu: recomputed pre-activation
    args = sample.materialize(device, torch.float32, "channels_last", requires_grad=True)
    torch._dynamo.reset()
    with fastconv.backend(backend):
        compiled = torch.compile(fastconv.ops.conv2d_act, fullgraph=True)
        out = compiled(*args)
        grads = torch.autograd.grad(out.square().sum(), [args[i] for i in sample.grad])
    args64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    want = reference64(*args64)
    want_grads = torch.autograd.grad(want.square().sum(), [args64[i] for i in sample.grad])
    assert out.stride() == _output_strides(args[0], out)
    rtol, atol = tolerance(torch.float32)
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)
    for got, expected in zip(grads, want_grads):  # reductions: tests/tolerances.py, scaled_to_output
        torch.testing.assert_close(*scaled_to_output(got.double(), expected), rtol=rtol, atol=atol)


def test_output_keeps_the_input_layout_whatever_the_weight():
    """ATen picks a convolution's layout from the weight too: a channels_last weight must not make an NCHW
    input's output channels_last (nor the reverse)."""
    x, w = torch.randn(2, 8, 6, 6), torch.randn(16, 8, 3, 3)
    out = fastconv.ops.conv2d_act(x, w.contiguous(memory_format=torch.channels_last), None, 1, 1)
    assert out.is_contiguous()
    out = fastconv.ops.conv2d_act(x.contiguous(memory_format=torch.channels_last), w, None, 1, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, w, None, 1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", TRITON_BACKENDS)
def test_depthwise_configurations_route_to_depthwise_conv2d(backend, device, monkeypatch):
    module = sys.modules["fastconv.ops.conv2d_act"]  # the attribute fastconv.ops.conv2d_act is the function

    calls = []
    implementations = dict(module._DEPTHWISE_OP.implementations)
    original = implementations[backend]
    implementations[backend] = lambda *args: calls.append(args) or original(*args)
    monkeypatch.setattr(module._DEPTHWISE_OP, "implementations", implementations)
    x, w = torch.randn(1, 4, 6, 6, device=device), torch.randn(8, 1, 3, 3, device=device)
    with fastconv.backend(backend):
        out = fastconv.ops.conv2d_act(x, w, None, 1, 1, 1, 4, "relu")
        fastconv.ops.conv2d_act(torch.randn(1, 4, 6, 6, device=device), torch.randn(8, 2, 3, 3, device=device),
                                None, 1, 1, 1, 2)  # grouped, not depthwise: the implicit GEMM
    assert len(calls) == 1
    torch.testing.assert_close(out, F.conv2d(x, w, None, 1, 1, 1, 4).relu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout, isa, batch, routed", [
    ("channels_last", "avx2", 1, True), ("contiguous", "avx2", 1, False),
    ("channels_last", "avx512", 1, True), ("contiguous", "avx512", 1, True),
    ("channels_last", "avx512", 4, True), ("channels_last", "avx512", 5, False), ("channels_last", "avx2", 5, False),
    ("contiguous", "avx512", 5, True),
])
def test_cpu_routes_depthwise_to_depthwise_conv2d(layout, isa, batch, routed, monkeypatch):
    """On the CPU, channels_last depthwise configurations up to batch 4 take depthwise_conv2d's kernel (oneDNN's is
    faster on larger batches), and NCHW ones when the CPU kernels run their AVX-512 variant (with AVX2, NCHW runs
    oneDNN's)."""
    module = sys.modules["fastconv.ops.conv2d_act"]
    monkeypatch.setattr(module, "_cpu_nchw_depthwise_routed", lambda: isa == "avx512")
    calls = []
    implementations = dict(module._DEPTHWISE_OP.implementations)
    original = implementations["cpu"]
    implementations["cpu"] = lambda *args: calls.append(args) or original(*args)
    monkeypatch.setattr(module._DEPTHWISE_OP, "implementations", implementations)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(batch, 4, 6, 6).contiguous(memory_format=memory_format)
    w, b = torch.randn(4, 1, 3, 3), torch.randn(4)
    with fastconv.backend("cpu"):
        out = fastconv.ops.conv2d_act(x, w, b, 2, 1, 1, 4, "relu6")
    assert len(calls) == int(routed)
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, F.conv2d(x, w, b, 2, 1, 1, 4).clamp(0, 6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight_grad, activation, input_saved, output_saved", SAVES_CASES)
def test_saves_only_what_the_gradients_need(weight_grad, activation, input_saved, output_saved):
    check_saves_only_what_the_gradients_need(fastconv.ops.conv2d_act, (8, 4, 3, 3), weight_grad, activation, input_saved, output_saved)


@pytest.mark.parametrize("padding, kernel, dilation", [("same", 4, 1), ("same", 3, 2), ("same", (2, 5), (3, 1)),
                                                       ("valid", 3, 1), ((1, 2), 3, 1), (2, 1, 1)])
def test_padding_forms_equal_conv2d(padding, kernel, dilation):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, w = torch.randn(2, 4, 9, 10), torch.randn(6, 2, kh, kw)
    got = fastconv.ops.conv2d_act(x, w, None, 1, padding, dilation, 2)
    torch.testing.assert_close(got, F.conv2d(x, w, None, 1, padding, dilation, 2), rtol=1e-5, atol=1e-5)


def _bad(message, *args, **kwargs):
    return pytest.param(args, kwargs, message, id=message[:40])


X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 2, 3, 3)


@pytest.mark.parametrize("args, kwargs, message", [
    _bad(r"groups \(3\) must divide the input channels \(input.shape\[1\] = 4\)", X, torch.randn(6, 1, 3, 3),
         groups=3),
    _bad(r"groups \(4\) must divide the output channels \(weight.shape\[0\] = 6\)", X, torch.randn(6, 1, 3, 3),
         groups=4),
    _bad(r"weight.shape\[1\] \(3\) must equal input.shape\[1\] / groups \(4 / 2\)", X, torch.randn(6, 3, 3, 3),
         groups=2),
    _bad("groups must be positive", X, W, groups=0),
    _bad("groups must be an int", X, W, groups=2.0),
    _bad(r"weight must be 4-D", X, torch.randn(6, 4, 3)),
    _bad(r"input must be 4-D", torch.randn(4, 8, 8), W, groups=2),
    _bad("input and weight must have the same dtype", X, W.double(), groups=2),
    _bad(r"bias must have shape \(weight.shape\[0\],\) = \(6,\)", X, W, torch.randn(4), groups=2),
    _bad("bias must have the same dtype as weight", X, W, torch.randn(6).double(), groups=2),
    _bad("stride must be two positive ints", X, W, None, 0, groups=2),
    _bad("dilation must be two positive ints", X, W, None, 1, 1, 0, groups=2),
    _bad("padding must be four non-negative ints", X, W, None, 1, -1, groups=2),
    _bad("the output size is empty", X, torch.randn(6, 2, 9, 9), groups=2),
    _bad("activation must be None", X, W, groups=2, activation="gelu"),
    _bad("padding='same' is not supported for strided convolutions", X, W, stride=2, padding="same", groups=2),
    _bad("padding must be an int, a pair, 'same' or 'valid'", X, W, padding="full", groups=2),
    _bad("stride must be an int or a pair of ints", X, W, stride=(1, 2, 3), groups=2),
])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, args, kwargs, message):
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.conv2d_act(*args, **kwargs)


@pytest.mark.parametrize("backend", [b.values[0] for b in KERNEL_BACKENDS])
def test_invalid_arguments_raise_in_the_custom_op_too(backend):
    """Every backend's op checks its own arguments (the C++ messages equal the Python ones)."""
    op = harness.custom_op(backend)
    with pytest.raises(RuntimeError, match="padding must be four non-negative ints"):
        op(X, W, None, [1, 1], [1, 1, -1, 1], [1, 1], 2, None)
    with pytest.raises(RuntimeError, match=r"groups \(3\) must divide the input channels"):
        op(X, torch.randn(6, 1, 3, 3), None, [1, 1], [1, 1, 1, 1], [1, 1], 3, None)
    with pytest.raises(RuntimeError, match="activation must be None"):
        op(X, W, None, [1, 1], [1, 1, 1, 1], [1, 1], 2, "gelu")
    with pytest.raises(RuntimeError, match="bias must have the same dtype as weight"):
        op(X, W, torch.randn(6).half(), [1, 1], [1, 1, 1, 1], [1, 1], 2, None)


def test_invalid_arguments_under_compile():
    compiled = torch.compile(fastconv.ops.conv2d_act, fullgraph=True)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="must divide the input channels"):
        compiled(X, torch.randn(6, 1, 3, 3), None, 1, 0, 1, 3)


def test_backward_op_rejects_bad_grad_output():
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        torch.ops.fastconv._conv2d_act_backward(torch.randn(2, 6, 7, 7), X, W, None, None, [2, 4, 8, 8], [1, 1],
                                                [1, 1, 1, 1], [1, 1], 2, None, [True, True, False])
    with pytest.raises(RuntimeError, match="output .* is required for relu"):
        torch.ops.fastconv._conv2d_act_backward(torch.randn(2, 6, 8, 8), X, W, None, None, [2, 4, 8, 8], [1, 1],
                                                [1, 1, 1, 1], [1, 1], 2, "relu", [True, True, False])


@pytest.mark.parametrize("activation", ["relu6", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_parallel_forward_equals_one_thread(activation, dtype):
    """The activation and derivative passes split the output across threads (at::parallel_for, 32768-element
    grains): with 2 threads and a 4-grain output the results equal the one-thread run."""
    x = torch.randn(2, 16, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = (torch.randn(32, 16, 1, 1) / 4).to(dtype).requires_grad_(True)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = fastconv.ops.conv2d_act(x, w, None, 1, 0, 1, 1, activation)
        runs.append((out,) + torch.autograd.grad(out, x, torch.ones_like(out)))
    rtol, atol = TOLERANCES[dtype]
    for single, parallel in zip(*runs):
        torch.testing.assert_close(single, parallel, rtol=rtol, atol=atol)
    torch.testing.assert_close(runs[1][0].double(), reference64(x.double(), w.double(), None, 1, 0, 1, 1, activation),
                               rtol=rtol, atol=atol)


# Two channels, both exact in the dtype, whose sum is just above 3 and halfway between two representable values
# there, so the dtype rounds it (to even) down to exactly 3.0: bfloat16 spacing near 3 is 2^-6, float16's 2^-9.
JUST_ABOVE_3 = {torch.bfloat16: (1.5, 1.5078125), torch.float16: (1.5, 1.5009765625)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_hardswish_backward_uses_the_unrounded_preactivation(backend, device, dtype):
    """hardswish' jumps from 1.5 to 1 at 3. The two channels sum to just above 3, which the dtype rounds to 3.0:
    a backward that recomputes the pre-activation in the input dtype takes the wrong side of the jump (1.5); the
    true derivative is 1."""
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bfloat16 wrongly; this path is tested on a GPU")
    x = torch.tensor(JUST_ABOVE_3[dtype], dtype=dtype, device=device).reshape(1, 2, 1, 1).requires_grad_()
    weight = torch.ones(1, 2, 1, 1, dtype=dtype, device=device)
    with fastconv.backend(backend):
        out = fastconv.ops.conv2d_act(x, weight, None, activation="hardswish")
    (grad,) = torch.autograd.grad(out.sum(), [x])
    torch.testing.assert_close(grad.float(), torch.ones(1, 2, 1, 1, device=device))


# --- conv2d_act_constant: a weight held constant (inference), prepacked for oneDNN on the CPU ----------------
_CONV2D_ACT_MODULE = sys.modules["fastconv.ops.conv2d_act"]


def _constant_call(sample, layout, packed, batch=None):
    """(input, output) of conv2d_act_constant on `sample` in `layout` (another batch of the input when given)."""
    x, w, b, stride, padding, dilation, groups, activation = sample.args
    if batch is not None:
        x = torch.randn((batch,) + tuple(x.shape[1:]))
    x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    resolved = resolve_conv2d_act_args(w, stride, padding, dilation, groups)
    with torch.no_grad():
        return x, _CONV2D_ACT_MODULE.conv2d_act_constant(x, w, b, *resolved, activation, packed)


def _check_constant(sample, x, out):
    _, w, b, stride, padding, dilation, groups, activation = sample.args
    want = reference64(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups,
                       activation)
    assert out.stride() == _output_strides(x, out)
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)


def _kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fn()
    return {event.name for event in profiler.events()}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_constant_weight_forward(sample, layout):
    """Every sample through the constant-weight entry (the prepacked oneDNN path for float32 channels_last with
    symmetric padding, conv2d_act otherwise), against float64; then another batch, which packs afresh."""
    packed = _CONV2D_ACT_MODULE.PackedWeight()
    for batch in (None, 3, None):
        _check_constant(sample, *_constant_call(sample, layout, packed, batch))


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hardswish", "silu"])
def test_constant_weight_runs_prepacked_on_the_cpu(activation):
    """float32 channels_last on the CPU backend runs oneDNN's convolution on the reordered weight with the activation
    as its post-op, and no ATen convolution; NCHW input, the reference backend and oneDNN switched off do not."""
    sample = conv(2, 8, 9, 9, 12, 3, padding=1, activation=activation)
    sample.args[0].mul_(8)  # outputs of about N(0, 8^2): every piece of each activation is exercised
    packed = _CONV2D_ACT_MODULE.PackedWeight()
    with fastconv.backend("cpu"):
        names = _kernel_names(lambda: _constant_call(sample, "channels_last", packed))
        assert "mkldnn::_convolution_pointwise" in names
        assert not any(n in names for n in ("aten::convolution", "fastconv::conv2d_act"))
        _check_constant(sample, *_constant_call(sample, "channels_last", packed))
        assert "mkldnn::_convolution_pointwise" not in _kernel_names(lambda: _constant_call(sample, "contiguous",
                                                                                             packed))
        with torch.backends.mkldnn.flags(enabled=False):
            assert "mkldnn::_convolution_pointwise" not in _kernel_names(
                lambda: _check_constant(sample, *_constant_call(sample, "channels_last", packed)))
    with fastconv.backend("reference"):
        assert "mkldnn::_convolution_pointwise" not in _kernel_names(
            lambda: _constant_call(sample, "channels_last", packed))


def test_constant_weight_channel_slice_input():
    """A channel slice of a channels_last tensor (ShuffleNetV2's split) also runs prepacked, copied dense first, and
    gives a dense channels_last output."""
    whole = torch.randn(2, 16, 7, 9).contiguous(memory_format=torch.channels_last)
    x, w, b = whole[:, 8:], torch.randn(12, 8, 3, 3) / 72**0.5, torch.randn(12)
    packed = _CONV2D_ACT_MODULE.PackedWeight()
    resolved = resolve_conv2d_act_args(w, 1, 1, 1, 1)
    with torch.no_grad(), fastconv.backend("cpu"):
        names = _kernel_names(lambda: _CONV2D_ACT_MODULE.conv2d_act_constant(x, w, b, *resolved, "relu", packed))
        out = _CONV2D_ACT_MODULE.conv2d_act_constant(x, w, b, *resolved, "relu", packed)
    assert "mkldnn::_convolution_pointwise" in names
    assert out.is_contiguous(memory_format=torch.channels_last)
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out.double(), reference64(x.double(), w.double(), b.double(), 1, 1, 1, 1, "relu"),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape, kernel, groups, threads, prepacked", [
    ((1, 8, 50, 50), 3, 1, 1, False),  # batch 1, 20000 elements, 3x3: ATen's native path
    ((1, 8, 52, 52), 3, 1, 1, True),  # 21632 elements: oneDNN
    ((2, 8, 4, 4), 3, 1, 1, True),  # batch 2
    ((1, 8, 4, 4), 5, 1, 1, True),  # a kernel above 3x3
    ((1, 8, 4, 4), 3, 2, 1, True),  # groups
    ((1, 8, 60, 60), 1, 1, 1, False),  # 1x1 on one thread: native (a GEMM)
    ((1, 8, 60, 60), 1, 1, 2, False),  # ... on two ATen runs oneDNN, but 230K multiply-adds: the kernel's GEMM
    ((1, 8, 260, 260), 1, 1, 2, True),  # 4.3M multiply-adds (above _GEMM_MAX_MACS): oneDNN
])
def test_constant_weight_prepacks_where_aten_runs_onednn(shape, kernel, groups, threads, prepacked):
    """The prepacked path takes the calls ATen's convolution would give oneDNN, and leaves the small ones, where
    oneDNN's per-call setup outweighs the convolution, to ATen or, for 1x1, to the kernel's GEMM."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 8 // groups, kernel, kernel)
    resolved = resolve_conv2d_act_args(w, 1, kernel // 2, 1, groups)
    torch.set_num_threads(threads)
    with torch.no_grad(), fastconv.backend("cpu"):
        names = _kernel_names(lambda: _CONV2D_ACT_MODULE.conv2d_act_constant(
            x, w, None, *resolved, None, _CONV2D_ACT_MODULE.PackedWeight()))
    assert ("mkldnn::_convolution_pointwise" in names) == prepacked


def test_constant_weight_invalid_input_raises():
    """The prepacked path checks the input like conv2d_act before oneDNN sees it."""
    packed = _CONV2D_ACT_MODULE.PackedWeight()
    w = torch.randn(6, 4, 3, 3)
    resolved = resolve_conv2d_act_args(w, 1, 1, 1, 1)
    for x, message in ((torch.randn(1, 5, 8, 8), r"weight.shape\[1\] \(4\) must equal input.shape\[1\] / groups"),
                       (torch.randn(1, 4, 8, 8).double(), "input and weight must have the same dtype")):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), pytest.raises(RuntimeError, match=message):
            _CONV2D_ACT_MODULE.conv2d_act_constant(x, w, None, *resolved, "relu", packed)


def test_constant_weight_decides_again_when_the_call_changes():
    """conv2d_act_constant decides its path once per kind of call and reuses it: one PackedWeight decides again when
    the thread count or the input's strides change (ATen runs oneDNN for this 1x1 convolution on two threads, not
    on one; a channel slice is copied dense first), and an input that does not fit still raises."""
    w, b = torch.randn(8, 8, 1, 1) / 8**0.5, torch.randn(8)
    resolved = resolve_conv2d_act_args(w, 1, 0, 1, 1)
    packed = _CONV2D_ACT_MODULE.PackedWeight()
    # 4.3M multiply-adds: above the kernel's GEMM rule (_GEMM_MAX_MACS), so ATen's use_mkldnn decides
    whole = torch.randn(1, 16, 260, 260).contiguous(memory_format=torch.channels_last)
    rtol, atol = TOLERANCES[torch.float32]
    previous = torch.get_num_threads()
    try:
        with torch.no_grad(), fastconv.backend("cpu"):
            for threads, x, prepacked in ((1, whole[:, 8:], False), (2, whole[:, 8:], True),
                                          (2, whole[:, :8].contiguous(memory_format=torch.channels_last), True),
                                          (1, whole[:, :8], False)):
                torch.set_num_threads(threads)
                call = lambda: _CONV2D_ACT_MODULE.conv2d_act_constant(x, w, b, *resolved, "relu", packed)  # noqa
                assert ("mkldnn::_convolution_pointwise" in _kernel_names(call)) == prepacked, (threads, x.stride())
                torch.testing.assert_close(call().double(), reference64(x.double(), w.double(), b.double(), 1, 0, 1,
                                                                        1, "relu"), rtol=rtol, atol=atol)
            with pytest.raises(RuntimeError, match=r"weight.shape\[1\] \(8\) must equal input.shape\[1\] / groups"):
                _CONV2D_ACT_MODULE.conv2d_act_constant(whole, w, b, *resolved, "relu", packed)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("view", ["dense", "channel-slice", "batch-1-slice"])
def test_cpu_pointwise_channels_last_runs_as_one_gemm(view, bias, dtype):
    """The CPU kernel runs a 1x1 convolution on channels_last input as one GEMM over the pixels, reading a channel
    slice of a wider tensor in place (no ATen convolution, no copy of the input), against float64."""
    batch = 1 if view == "batch-1-slice" else 3
    whole = torch.randn(batch, 20, 5, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x = whole[:, :12] if view == "dense" else whole[:, 8:]
    if view == "dense":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(9, 12, 1, 1, dtype=dtype) / 12**0.5
    b = torch.randn(9, dtype=dtype) if bias else None
    with torch.no_grad(), fastconv.backend("cpu"):
        call = lambda: fastconv.ops.conv2d_act(x, w, b, activation="relu6")  # noqa: E731
        names = _kernel_names(call)
        out = call()
    # (addmm itself copies the bias into its output first: a copy_, but of the bias)
    assert not any(n in names for n in ("aten::convolution", "aten::clone", "aten::contiguous")), names
    assert ("aten::addmm" if bias else "aten::mm") in names, names
    assert out.is_contiguous(memory_format=torch.channels_last)
    want = reference64(x.double(), w.double(), None if b is None else b.double(), 1, 0, 1, 1, "relu6")
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("width, gemm", [(1024, True), (1025, False)])
def test_cpu_pointwise_gemm_keeps_to_its_bound(width, gemm):
    """The kernel's GEMM takes 1x1 convolutions of up to 2^22 multiply-adds (kGemmMaxMacs, mirrored by
    _GEMM_MAX_MACS), and leaves larger ones to ATen's convolution."""
    assert _CONV2D_ACT_MODULE._GEMM_MAX_MACS == 1 << 22
    x = torch.randn(1, 64, 1, width).contiguous(memory_format=torch.channels_last)  # 64 * width * 64 MACs
    w, b = torch.randn(64, 64, 1, 1) / 8, torch.randn(64)
    with torch.no_grad(), fastconv.backend("cpu"):
        names = _kernel_names(lambda: fastconv.ops.conv2d_act(x, w, b, activation="relu"))
        out = fastconv.ops.conv2d_act(x, w, b, activation="relu")
    assert ("aten::convolution" not in names) == gemm
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out.double(), reference64(x.double(), w.double(), b.double(), 1, 0, 1, 1, "relu"),
                               rtol=rtol, atol=atol)


SUBSET_SAMPLES = [SAMPLES[i] for i in (0, 1, 3, 5)]  # bias; relu (saves the output); hardswish; no bias

# The C++ ops' autograd (csrc/autograd.cpp) maps graph edges to arguments: every subset of gradients.
@pytest.mark.parametrize("sample", SUBSET_SAMPLES, ids=[s.name for s in SUBSET_SAMPLES])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    harness.check_grad_subsets(sample, backend, device)
