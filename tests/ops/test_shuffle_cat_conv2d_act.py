import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import _backend
from fastconv.ops._checks import resolve_conv2d_act_args
from tolerances import tolerance
from harness import CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, OpHarness, Sample, runnable


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny cases and hundreds of gradcheck calls: one thread (see tests/ops/test_conv2d_act.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_ACTIVATIONS = {
    None: lambda x: x,
    "relu": lambda x: x.clamp_min(0),
    "relu6": lambda x: x.clamp(0, 6),
    "hardswish": lambda x: x * (x + 3).clamp(0, 6) / 6,
    "silu": lambda x: x * torch.sigmoid(x),
}


def reference64(a, input, weight, bias, stride, padding, dilation, groups, activation):
    """Independent reference: stock F.conv2d, the activation from its formula, and the interleave as a stack of
    the two halves on a new axis after the channels (output channel 2j + s is channel j of half s)."""
    branch = _ACTIVATIONS[activation](F.conv2d(input, weight, bias, stride, padding, dilation, groups))
    return torch.stack([a, branch], dim=2).flatten(1, 2)


def expected_strides(a, *rest):
    """shuffle_cat's documented layout rule, on `a`: channels_last iff a has its channels innermost, more than one
    channel and more than one pixel; always dense."""
    out = rest[-1]
    channels_last = a.shape[1] > 1 and a.shape[2] * a.shape[3] > 1 and a.stride(1) == 1
    return torch.empty(out.shape, memory_format=torch.channels_last if channels_last else torch.contiguous_format).stride()


harness = OpHarness("shuffle_cat_conv2d_act", fastconv.ops.shuffle_cat_conv2d_act, reference64,
                    expected_strides=expected_strides)


def unit(n, c_in, h, w, c_out, kernel=1, groups=1, bias=True, stride=1, padding=0, dilation=1, activation="relu",
         name=""):
    """a and the convolution's arguments; a has the convolution's output shape."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    out_h = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    fan_in = c_in // groups * kh * kw
    args = (torch.randn(n, c_out, out_h, out_w), torch.randn(n, c_in, h, w),
            torch.randn(c_out, c_in // groups, kh, kw) / fan_in**0.5, torch.randn(c_out) if bias else None,
            stride, padding, dilation, groups, activation)
    return Sample(args, name, grad=(0, 1, 2, 3) if bias else (0, 1, 2), layout_args=(0, 1))


SAMPLES = [
    unit(2, 6, 5, 7, 6, name="shufflenet-tail-1x1-relu"),
    unit(2, 16, 4, 4, 8, bias=False, activation=None, name="1x1-no-bias"),
    unit(1, 4, 9, 9, 6, 3, groups=2, stride=2, padding=1, activation="silu", name="3x3-s2-grouped-silu"),
    unit(1, 3, 6, 7, 5, 3, padding=2, dilation=2, activation="hardswish", name="dilated-hardswish"),
    unit(2, 8, 6, 6, 8, activation="relu6", name="1x1-relu6"),
    unit(0, 4, 3, 3, 4, name="batch0"),
    unit(3, 5, 1, 1, 4, name="one-pixel"),
]
IDS = [s.name for s in SAMPLES]
BACKENDS = runnable("shuffle_cat_conv2d_act")
KERNEL_BACKENDS = [p for p in BACKENDS if p.values[0] != "reference"]
TRITON_BACKENDS = [p for p in BACKENDS if p.values[0] == "triton"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_forward(backend, device, sample, dtype, layout):
    if dtype == torch.float64 and device == "cuda" and backend != "reference":
        pytest.skip("float64 is a CPU (gradcheck) dtype")
    harness.check_forward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES[:3] + SAMPLES[5:6], ids=IDS[:3] + IDS[5:6])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_backward(backend, device, sample, dtype, layout):
    harness.check_backward(sample, backend, device, dtype, layout)


GRADCHECK = [
    unit(1, 4, 3, 4, 4, name="tiny-1x1-relu"),
    unit(1, 2, 5, 4, 3, 3, padding=1, activation="hardswish", name="tiny-3x3-hardswish"),
    unit(2, 3, 3, 3, 2, bias=False, activation="silu", name="tiny-1x1-silu-no-bias"),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("sample", GRADCHECK, ids=[s.name for s in GRADCHECK])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_gradcheck(backend, device, sample, layout):
    harness.check_gradcheck(sample, backend, device, layout)


@pytest.mark.parametrize("sample", GRADCHECK[:2], ids=[s.name for s in GRADCHECK[:2]])
@pytest.mark.parametrize("backend, device", TRITON_BACKENDS)
def test_gradcheck_triton(backend, device, sample):
    """Fast mode under the interpreter. No gradgradcheck: the double backward runs conv2d_act's Triton backward,
    whose activation-derivative pass computes in float32 (so float64's finite differences disagree in the 3rd
    digit); conv2d_act's tests skip it there for the same reason, and the C++ backend's gradgradcheck above covers
    the composition."""
    harness.check_gradcheck(sample, backend, device, gradgrad=False, fast_mode=True)


@pytest.mark.parametrize("sample", GRADCHECK, ids=[s.name for s in GRADCHECK])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    """Edges: a, input, weight, then bias when given (csrc/autograd.cpp's first=1 offset)."""
    harness.check_grad_subsets(sample, backend, device)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("sample", [SAMPLES[0], SAMPLES[2]], ids=[IDS[0], IDS[2]])
def test_opcheck(backend, device, sample, layout):
    op = harness.custom_op(backend)
    a, input, weight, bias, stride, padding, dilation, groups, activation = sample.materialize(
        device, torch.float32, layout, requires_grad=True)
    stride, padding, dilation, groups = resolve_conv2d_act_args(weight, stride, padding, dilation, groups)
    torch.library.opcheck(op, (a, input, weight, bias, stride, padding, dilation, groups, activation))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[0], backend, device, layout)


def _unit_tail(backend, device, memory_format, dtype=torch.float32, requires_grad=False):
    """A ShuffleNet v2 stride-1 unit's tail as the zoo runs it: both halves are views of the previous output."""
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 6, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(requires_grad)
    weight = (torch.randn(6, 6, 1, 1, device=device, dtype=dtype) / 6**0.5).requires_grad_(requires_grad)
    bias = torch.randn(6, device=device, dtype=dtype).requires_grad_(requires_grad)
    return x, weight, bias


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_unit_split_views_in_place(backend, device, memory_format):
    """a and input are x.chunk(2, dim=1): read in place (no copy of a), output in x's layout."""
    x, weight, bias = _unit_tail(backend, device, memory_format)
    a, branch = x.chunk(2, dim=1)
    with fastconv.backend(backend):
        out = fastconv.ops.shuffle_cat_conv2d_act(a, branch, weight, bias, activation="relu")
    want = reference64(a.double(), branch.double(), weight.double(), bias.double(), 1, 0, 1, 1, "relu")
    rtol, atol = tolerance(torch.float32)
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)
    assert torch.equal(out[:, 0::2], a)  # the pass-through half is a bit-exact copy
    assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_equals_the_two_ops_it_fuses(backend, device, memory_format):
    """The same bits as shuffle_cat(a, conv2d_act(...)) on the same backend: the convolution is the same kernel."""
    x, weight, bias = _unit_tail(backend, device, memory_format)
    a, branch = x.chunk(2, dim=1)
    with fastconv.backend(backend):
        fused = fastconv.ops.shuffle_cat_conv2d_act(a, branch, weight, bias, activation="relu")
        separate = fastconv.ops.shuffle_cat(a, fastconv.ops.conv2d_act(branch, weight, bias, activation="relu"))
    assert torch.equal(fused, separate)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_unit_forward_and_backward(backend, device):
    """The unit's tail under torch.compile(fullgraph=True), forward and backward, equal to eager."""

    def tail(x, weight, bias):
        a, branch = x.chunk(2, dim=1)
        return fastconv.ops.shuffle_cat_conv2d_act(a, branch, weight, bias, activation="relu")

    x, weight, bias = _unit_tail(backend, device, torch.channels_last, requires_grad=True)
    torch._dynamo.reset()
    with fastconv.backend(backend):
        got = torch.compile(tail, fullgraph=True)(x, weight, bias)
        got_grads = torch.autograd.grad(got.square().sum(), (x, weight, bias))
        want = tail(x, weight, bias)
        want_grads = torch.autograd.grad(want.square().sum(), (x, weight, bias))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(
    "a_shape, input_shape, a_dtype, bias_shape, activation, message",
    [
        ((2, 6, 5, 5), (2, 6, 4, 5), None, (6,), "relu", r"a must have the convolution's output shape \[2, 6, 4, 5\]"),
        ((2, 4, 5, 5), (2, 6, 5, 5), None, (6,), "relu", r"a must have the convolution's output shape \[2, 6, 5, 5\]"),
        ((6, 5, 5), (2, 6, 5, 5), None, (6,), "relu", r"a must have the convolution's output shape"),
        ((2, 6, 5, 5), (2, 6, 5, 5), torch.float64, (6,), "relu", r"a must have the same dtype as input"),
        ((2, 6, 5, 5), (2, 6, 5, 5), None, (5,), "relu", r"shuffle_cat_conv2d_act: bias must have shape"),
        ((2, 6, 5, 5), (2, 6, 5, 5), None, (6,), "gelu", r"shuffle_cat_conv2d_act: activation must be None"),
        ((2, 6, 5, 5), (2, 5, 5, 5), None, (6,), "relu", r"weight.shape\[1\] \(6\) must equal input.shape\[1\]"),
        ((2, 6, 5, 5), (6, 5, 5), None, (6,), "relu", r"input must be 4-D"),
    ],
    ids=["a-spatial", "a-channels", "a-3d", "a-dtype", "bias-shape", "activation", "weight-channels", "input-3d"],
)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, a_shape, input_shape, a_dtype, bias_shape, activation, message):
    a = torch.randn(a_shape, device=device, dtype=a_dtype or torch.float32)
    input = torch.randn(input_shape, device=device)
    weight, bias = torch.randn(6, 6, 1, 1, device=device), torch.randn(bias_shape, device=device)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.shuffle_cat_conv2d_act(a, input, weight, bias, activation=activation)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if _backend.why_not(b, "cpu") is None])
def test_invalid_arguments_raise_in_the_custom_op_too(backend):
    """The custom op checks its own arguments: no out-of-bounds read when called directly."""
    op = fastconv.ops.OPS["shuffle_cat_conv2d_act"].implementations[backend]
    input, weight = torch.randn(2, 6, 5, 5), torch.randn(6, 6, 1, 1)
    with pytest.raises(RuntimeError, match=r"a must have the convolution's output shape"):
        op(torch.randn(2, 6, 5, 4), input, weight, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "relu")
    with pytest.raises(RuntimeError, match=r"padding must be four non-negative ints"):
        op(torch.randn(2, 6, 5, 5), input, weight, None, [1, 1], [0, 0, 0, -1], [1, 1], 1, "relu")


def test_invalid_arguments_under_compile():
    torch._dynamo.reset()
    compiled = torch.compile(fastconv.ops.shuffle_cat_conv2d_act, fullgraph=True)
    with pytest.raises(Exception, match=r"a must have the convolution's output shape"):
        compiled(torch.randn(2, 6, 4, 4), torch.randn(2, 6, 5, 5), torch.randn(6, 6, 1, 1))
