import pytest
import torch

import fastconv
from fastconv import _backend
from harness import CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, OpHarness, Sample, runnable


def reference64(a, b):
    """Independent reference: stack the halves on a new axis after the channels, then merge the two axes,
    so output channel 2j + s is channel j of half s."""
    return torch.stack([a, b], dim=2).flatten(1, 2)


def expected_strides(a, b, out):
    """The documented layout contract: channels_last iff a is 4-D with its channels innermost (more than one
    channel and more than one pixel), else contiguous; always dense."""
    channels_last = a.dim() == 4 and a.shape[1] > 1 and a.shape[2] * a.shape[3] > 1 and a.stride(1) == 1
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(out.shape, memory_format=memory_format).stride()


harness = OpHarness(
    "shuffle_cat", fastconv.ops.shuffle_cat, reference64, exact=True, interpreter_bf16=True,
    expected_strides=expected_strides,
)


def pair(*shape, name):
    return Sample((torch.randn(shape), torch.randn(shape)), name, grad=(0, 1), layout_args=(0, 1))


SAMPLES = [
    pair(2, 3, 5, 7, name="odd-hw"),
    pair(2, 58, 7, 7, name="shufflenet-x1.0-branch"),
    pair(0, 4, 3, 3, name="batch0"),
    pair(3, 6, 1, 1, name="1x1"),
    pair(2, 1, 3, 3, name="one-channel"),
    pair(2, 5, 4, 4, name="odd-channels"),
    pair(2, 4, 9, name="3d"),
    pair(1, 3, 2, 3, 2, name="5d"),
]
IDS = [s.name for s in SAMPLES]
BACKENDS = runnable("shuffle_cat")
KERNEL_BACKENDS = [p for p in BACKENDS if p.values[0] != "reference"]


@pytest.mark.parametrize("layout", LAYOUTS)
# One dtype per element size the kernels distinguish (8, 4, 2, 1 bytes), plus float16 and bfloat16.
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64, torch.uint8], ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_forward(backend, device, sample, dtype, layout):
    harness.check_forward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES[:3], ids=IDS[:3])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_backward(backend, device, sample, dtype, layout):
    harness.check_backward(sample, backend, device, dtype, layout)


# gradcheck perturbs every input element (and gradgradcheck every gradient element) and runs the op for
# each: tiny shapes keep the Triton interpreter fast.
GRADCHECK_SAMPLES = [pair(1, 2, 2, 3, name="tiny"), pair(1, 3, 2, name="tiny-3d")]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("sample", GRADCHECK_SAMPLES, ids=[s.name for s in GRADCHECK_SAMPLES])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_gradcheck(backend, device, sample, layout):
    harness.check_gradcheck(sample, backend, device, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_opcheck(backend, device, layout):
    harness.check_opcheck(SAMPLES[0], backend, device, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[0], backend, device, layout)


def _backward_ops():
    ops = [pytest.param(torch.ops.fastconv._shuffle_cat_backward.default, id="cpp")]
    if any(p.values[0] == "triton" for p in BACKENDS):
        ops.append(pytest.param(torch.ops.fastconv._shuffle_cat_backward_triton.default, id="triton"))
    return ops


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("op", _backward_ops())
def test_backward_op(op, memory_format):
    grad = torch.randn(2, 6, 5, 7).contiguous(memory_format=memory_format)
    grad_a, grad_b = op(grad)
    assert torch.equal(grad_a, grad[:, 0::2]) and torch.equal(grad_b, grad[:, 1::2])
    assert grad_a.is_contiguous(memory_format=memory_format) and grad_b.is_contiguous(memory_format=memory_format)
    torch.library.opcheck(op, (grad.requires_grad_(),))


def _layouts_of_a_unit():
    """(a, b) pairs as a ShuffleNet unit and its users produce them: mixed formats, slices, expanded batch."""
    torch.manual_seed(1)
    cl = torch.channels_last
    x = torch.randn(2, 10, 5, 6).contiguous(memory_format=cl)  # the previous unit's output
    split_a, split_b = x.chunk(2, dim=1)  # views with a block stride of 10 channels, not dense
    nchw = torch.randn(2, 10, 5, 6)
    return {
        "cl-chunks": (split_a, split_b),
        "cl-chunk-and-dense-cl": (split_a, torch.randn(2, 5, 5, 6).contiguous(memory_format=cl)),
        "cl-and-nchw": (torch.randn(2, 5, 5, 6).contiguous(memory_format=cl), torch.randn(2, 5, 5, 6)),
        "nchw-and-cl": (torch.randn(2, 5, 5, 6), torch.randn(2, 5, 5, 6).contiguous(memory_format=cl)),
        "nchw-chunks": nchw.chunk(2, dim=1),
        "nchw-chunk-and-crop": (nchw[:, :5], torch.randn(2, 5, 7, 8)[:, :, 1:-1, 1:-1]),
        "cl-spatial-crop": (torch.randn(2, 5, 7, 8).contiguous(memory_format=cl)[:, :, 1:-1, 1:-1],
                            torch.randn(2, 5, 5, 6)),
        "expanded-batch": (torch.randn(1, 5, 5, 6).expand(2, -1, -1, -1), torch.randn(2, 5, 5, 6)),
        "expanded-pixels-cl": (torch.randn(2, 5, 1, 1).expand(-1, -1, 5, 6), split_b),
        "same-tensor": (split_a, split_a),
    }


LAYOUT_PAIRS = _layouts_of_a_unit()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(LAYOUT_PAIRS))
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_mixed_and_strided_inputs(backend, device, name, dtype):
    a, b = (t.to(device=device, dtype=dtype) if t.dtype != dtype else t.to(device) for t in LAYOUT_PAIRS[name])
    with fastconv.backend(backend):
        out = fastconv.ops.shuffle_cat(a, b)
    assert torch.equal(out, reference64(a, b))
    assert out.stride() == expected_strides(a, b, out)


def _copies(fn):
    """Names of the copy ops run inside fn (including those called from C++ kernels)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return [e.name for e in profile.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_next_unit_split_is_a_free_view(backend, device, memory_format):
    a = torch.randn(2, 6, 5, 7, device=device).contiguous(memory_format=memory_format)
    b = torch.randn(2, 6, 5, 7, device=device).contiguous(memory_format=memory_format)
    with fastconv.backend(backend):
        out = fastconv.ops.shuffle_cat(a, b)
        first, second = out.chunk(2, dim=1)  # the next ShuffleNet unit's split
        assert first._base is out and second._base is out
        assert first.data_ptr() == out.data_ptr()
        assert second.data_ptr() == out.data_ptr() + 6 * out.stride(1) * out.element_size()
        torch.testing.assert_close(first, reference64(a, b)[:, :6], rtol=0, atol=0)
        # ... and the next unit's shuffle_cat reads those views in place: no copy, same layout out.
        # (The Triton interpreter copies every argument to run the kernel on the host: not checked there.)
        if not (backend == "triton" and _backend.TRITON_INTERPRET):
            assert _copies(lambda: fastconv.ops.shuffle_cat(first, second)) == []
        again = fastconv.ops.shuffle_cat(first, second)
    assert again.is_contiguous(memory_format=memory_format)
    assert torch.equal(again, reference64(first, second))


def test_equals_cat_then_channel_shuffle():
    for memory_format in (torch.contiguous_format, torch.channels_last):
        a = torch.randn(4, 24, 5, 5).contiguous(memory_format=memory_format)
        b = torch.randn(4, 24, 5, 5).contiguous(memory_format=memory_format)
        want = torch.nn.functional.channel_shuffle(torch.cat([a, b], 1), 2)
        torch.testing.assert_close(fastconv.ops.shuffle_cat(a, b), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_unit_forward_and_backward(backend, device):
    """A ShuffleNet v2 unit's tail under torch.compile(fullgraph=True), forward and backward."""

    def unit(x, weight):
        shortcut, branch = x.chunk(2, dim=1)
        return fastconv.ops.shuffle_cat(shortcut, branch * weight)

    x = torch.randn(2, 8, 5, 5, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(1, 4, 1, 1, device=device, requires_grad=True)
    torch._dynamo.reset()
    with fastconv.backend(backend):
        compiled = torch.compile(unit, fullgraph=True)
        got = compiled(x, weight)
        got_grads = torch.autograd.grad(got.square().sum(), (x, weight))
        want = unit(x, weight)
        want_grads = torch.autograd.grad(want.square().sum(), (x, weight))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(
    "a_shape, b_shape, b_dtype, b_device, message",
    [
        ((2, 6, 3, 3), (2, 5, 3, 3), None, None, r"b.shape \[2, 5, 3, 3\] must equal a.shape \[2, 6, 3, 3\]"),
        ((2, 6, 3, 3), (2, 6, 3), None, None, r"b.shape \[2, 6, 3\] must equal a.shape \[2, 6, 3, 3\]"),
        ((2, 6), (2, 6), None, None, r"a must have at least 3 dimensions \(N, C, \*\), got sizes \[2, 6\]"),
        ((2, 6, 3, 3), (2, 6, 3, 3), torch.float64, None,
         r"b.dtype \(torch.float64\) must equal a.dtype \(torch.float32\)"),
        ((2, 6, 3, 3), (2, 6, 3, 3), None, "meta", r"b.device \(meta\) must equal a.device \(cpu\)"),
    ],
    ids=["channels", "dims", "too-few-dims", "dtype", "device"],
)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, a_shape, b_shape, b_dtype, b_device, message):
    a = torch.randn(a_shape, device=device)
    b = torch.randn(b_shape, device=b_device or device, dtype=b_dtype or torch.float32)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.shuffle_cat(a, b)


@pytest.mark.parametrize("op", _backward_ops())
def test_backward_op_invalid_arguments(op):
    with pytest.raises(RuntimeError, match=r"grad_output.shape\[1\] must be even \(2C\), got 5"):
        op(torch.randn(2, 5, 3, 3))
    with pytest.raises(RuntimeError, match=r"grad_output must have at least 3 dimensions"):
        op(torch.randn(2, 6))


def test_invalid_arguments_under_compile():
    torch._dynamo.reset()
    compiled = torch.compile(fastconv.ops.shuffle_cat, fullgraph=True)
    with pytest.raises(Exception, match=r"b.shape \[2, 4, 3, 3\] must equal a.shape \[2, 6, 3, 3\]"):
        compiled(torch.randn(2, 6, 3, 3), torch.randn(2, 4, 3, 3))


SUBSET_SAMPLES = GRADCHECK_SAMPLES

# The C++ ops' autograd (csrc/autograd.cpp) maps graph edges to arguments: every subset of gradients.
@pytest.mark.parametrize("sample", SUBSET_SAMPLES, ids=[s.name for s in SUBSET_SAMPLES])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    harness.check_grad_subsets(sample, backend, device)
