import pytest
import torch
import torch.nn.functional as F
import torchvision

import fastconv
from harness import CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, OpHarness, Sample, runnable


def reference64(input, offset, weight, bias, stride, padding, dilation, mask):
    """Independent oracle: torchvision's own deform_conv2d kernels (run in float64 by the harness)."""
    return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


def _output_strides(input, *rest):
    out = rest[-1]
    layout = torch.channels_last if input.is_contiguous(memory_format=torch.channels_last) and not \
        input.is_contiguous() else torch.contiguous_format
    return torch.empty(out.shape, memory_format=layout).stride()


harness = OpHarness("deform_conv2d", fastconv.ops.deform_conv2d, reference64, expected_strides=_output_strides)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def deform(n, c_in, c_out, h, w, kernel=3, stride=1, padding=1, dilation=1, groups=1, offset_groups=1, mask=True,
           bias=True, offset_scale=2.0, name=""):
    kh, kw = _pair(kernel)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    args = (
        torch.randn(n, c_in, h, w),
        torch.randn(n, 2 * offset_groups * kh * kw, out_h, out_w) * offset_scale,
        torch.randn(c_out, c_in // groups, kh, kw) / (c_in // groups * kh * kw) ** 0.5,
        torch.randn(c_out) if bias else None,
        stride, padding, dilation,
        torch.rand(n, offset_groups * kh * kw, out_h, out_w) if mask else None,
    )
    grad = (0, 1, 2) + ((3,) if bias else ()) + ((7,) if mask else ())
    return Sample(args, name, grad=grad, layout_args=(0, 1, 7) if mask else (0, 1))


SAMPLES = [
    deform(2, 4, 6, 6, 7, name="dcnv2-3x3"),
    deform(2, 4, 5, 9, 8, stride=2, mask=False, name="dcnv1-stride2"),
    deform(1, 6, 4, 7, 6, groups=2, offset_groups=2, name="groups2-offset-groups2"),
    deform(1, 8, 4, 8, 8, padding=2, dilation=2, offset_groups=4, bias=False, name="offset-groups4-dilation2"),
    deform(2, 3, 4, 7, 9, kernel=(2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1), name="nonsquare-mixed"),
    deform(1, 6, 3, 5, 6, groups=3, offset_groups=3, name="groups3-offset-groups3"),
    deform(1, 4, 4, 5, 5, offset_scale=20.0, name="offsets-outside"),
    deform(2, 3, 5, 6, 6, kernel=1, padding=0, name="1x1"),
    deform(0, 4, 6, 6, 7, name="batch0"),
    deform(33, 2, 3, 3, 3, name="batch33"),
]
BACKENDS = runnable("deform_conv2d")
KERNEL_BACKENDS = [p for p in BACKENDS if p.values[0] != "reference" and p.values[0] != "triton"]
TRITON_BACKENDS = [p for p in BACKENDS if p.values[0] == "triton"]
# The Triton interpreter runs each program as Python (~2 s a call here): a few samples x a few dtype/layout
# combinations cover its code paths (groups, offset groups, odd geometry, every layout and dtype once).
TRITON_SAMPLES = [SAMPLES[i] for i in (2, 4, 8)]
TRITON_COMBOS = [(torch.float32, "contiguous"), (torch.float32, "strided"), (torch.float16, "channels_last"),
                 (torch.bfloat16, "channels_last"), (torch.float64, "contiguous")]  # bfloat16: on a GPU only


def _cases(backends, samples):
    return [pytest.param(b.values[0], b.values[1], s, id=f"{b.id}-{s.name}") for b in backends for s in samples]


ALL_CASES = _cases(KERNEL_BACKENDS, SAMPLES)
REFERENCE_CASES = _cases([p for p in BACKENDS if p.values[0] == "reference"], [SAMPLES[0], SAMPLES[3]])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("backend, device, sample", ALL_CASES + REFERENCE_CASES)
def test_forward(backend, device, sample, dtype, layout):
    if dtype == torch.float64 and device == "cuda" and backend != "reference":
        pytest.skip("float64 is a CPU (gradcheck) dtype")
    harness.check_forward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("dtype, layout", TRITON_COMBOS, ids=str)
@pytest.mark.parametrize("backend, device, sample", _cases(TRITON_BACKENDS, TRITON_SAMPLES))
def test_forward_triton(backend, device, sample, dtype, layout):
    _skip_float64_on_gpu(device, dtype)
    harness.check_forward(sample, backend, device, dtype, layout)


def _skip_float64_on_gpu(device, dtype):
    # float64 is the CPU's gradcheck dtype (the interpreter); on sm_90 the float64 forward's tiles need 272 KiB
    # of shared memory, more than a CTA gets (scripts/triton_sm90_check.py).
    if dtype == torch.float64 and device == "cuda":
        pytest.skip("float64 is a CPU (gradcheck) dtype")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("backend, device, sample", _cases(KERNEL_BACKENDS, SAMPLES) + REFERENCE_CASES)
def test_backward(backend, device, sample, dtype, layout):
    """Every gradient (input, offset, weight, bias, mask) against torchvision's backward in float64."""
    if dtype == torch.float64 and device == "cuda":
        pytest.skip("float64 is a CPU (gradcheck) dtype")
    if backend == "reference" and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("the baseline's autograd differs from torchvision where a coarse low-precision offset lands a "
                    "sample exactly on y or x = -1 (torchvision's offset gradient is one-sided there)")
    if layout == "strided" and backend != "cpu":
        pytest.skip("strided views: the C++ kernels' addressing; the other paths share it or are ATen")
    harness.check_backward(sample, backend, device, dtype, layout)


def _backward_ops_run(fn):
    """fn() under the profiler: the names of the fastconv backward ops it ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return {event.name for event in profile.events() if event.name.startswith("fastconv::_deform_conv2d_backward")}


# Wide channels: several channel tiles per offset group and output tiles per weight group (BLOCK_CHANNELS and
# BLOCK_OUT are 32 under the interpreter), an offset group spanning two weight groups and a weight group
# spanning two offset groups, neither a multiple of the tile.
TRITON_WIDE_SAMPLES = [
    deform(1, 70, 66, 5, 4, groups=2, offset_groups=1, name="wide-groups2-offset-groups1"),
    deform(1, 70, 34, 4, 5, groups=1, offset_groups=2, mask=False, name="wide-offset-groups2"),
]
TRITON_BACKWARD_CASES = (
    [pytest.param(*c.values, torch.float32, "contiguous", id=f"{c.id}-float32-contiguous")
     for c in _cases(TRITON_BACKENDS, SAMPLES + TRITON_WIDE_SAMPLES)]
    + [pytest.param(*c.values, dtype, layout, id=f"{c.id}-{dtype}-{layout}")
       for c in _cases(TRITON_BACKENDS, TRITON_SAMPLES) for dtype, layout in TRITON_COMBOS
       if (dtype, layout) != (torch.float32, "contiguous")]
)


@pytest.mark.parametrize("backend, device, sample, dtype, layout", TRITON_BACKWARD_CASES)
def test_backward_triton(backend, device, sample, dtype, layout):
    """The Triton backward kernels (not the C++ op) against torchvision's backward in float64: every sample in
    float32, the interpreter-sized subset in every runnable dtype and layout (bfloat16 only on a GPU)."""
    _skip_float64_on_gpu(device, dtype)
    ran = _backward_ops_run(lambda: harness.check_backward(sample, backend, device, dtype, layout))
    if sample.args[0].shape[0] > 0:
        assert ran == {"fastconv::_deform_conv2d_backward_triton"}, ran


def off_grid(sample):
    """The sample with every offset at least 0.1 from the integer grid, where bilinear sampling has its kinks
    (the sampling positions' integer parts are whole numbers, the image border included). Left to the random
    draw, an offset within gradcheck's eps (1e-6) of an integer makes its finite differences straddle a kink:
    1 draw in ~2000 of gc-groups2 did (seed 2217: an offset 6e-7 from an integer), and CI hit one."""
    offset = sample.args[1]
    whole = offset.floor()
    offset.copy_(whole + 0.1 + 0.8 * (offset - whole))
    return sample


# gradcheck perturbs every element: tiny shapes, offsets off the integer grid.
GRADCHECK = [off_grid(s) for s in [
    deform(1, 2, 2, 3, 4, offset_groups=2, name="gc-dcnv2-og2"),
    deform(1, 2, 2, 5, 6, kernel=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), mask=False, name="gc-dcnv1"),
    deform(2, 4, 2, 3, 3, groups=2, offset_groups=1, bias=False, name="gc-groups2"),
]]


@pytest.mark.parametrize("sample, layout", [pytest.param(s, layout, id=f"{s.name}-{layout}") for s, layout in
                                            [(GRADCHECK[0], "contiguous"), (GRADCHECK[0], "channels_last"),
                                             (GRADCHECK[1], "contiguous"), (GRADCHECK[2], "channels_last")]])
def test_gradcheck(sample, layout):
    harness.check_gradcheck(sample, "cpu", "cpu", layout, gradgrad=False)


def test_gradgradcheck():
    """The double backward (through the plain-ATen composition) against finite differences of the C++
    backward; torchvision has none."""
    sample = off_grid(deform(1, 2, 2, 4, 3, padding=0, offset_groups=2, name="gg"))
    args = sample.materialize("cpu", torch.float64, requires_grad=True)

    def fn(*differentiable):
        full = list(args)
        for position, tensor in zip(sample.grad, differentiable):
            full[position] = tensor
        with fastconv.backend("cpu"):
            return fastconv.ops.deform_conv2d(*full)

    assert torch.autograd.gradgradcheck(fn, tuple(args[i] for i in sample.grad), fast_mode=True)


@pytest.mark.parametrize("sample, layout", [pytest.param(s, layout, id=f"{s.name}-{layout}") for s, layout in
                                            [(GRADCHECK[0], "contiguous"), (GRADCHECK[1], "channels_last")]])
@pytest.mark.parametrize("backend, device", TRITON_BACKENDS)
def test_gradcheck_triton(backend, device, sample, layout):
    """The Triton kernels in float64 (the interpreter runs them in float64; fast mode: it is slow) against
    finite differences of the Triton forward. The double backward is the shared ATen composition, covered by
    test_gradgradcheck."""
    _skip_float64_on_gpu(device, torch.float64)
    args = sample.materialize(device, torch.float64, layout, requires_grad=True)

    def fn(*differentiable):
        full = list(args)
        for position, tensor in zip(sample.grad, differentiable):
            full[position] = tensor
        with fastconv.backend(backend):
            return fastconv.ops.deform_conv2d(*full)

    assert torch.autograd.gradcheck(fn, tuple(args[i] for i in sample.grad), fast_mode=True)


def _op_args(sample, device, layout, dtype=torch.float32):
    input, offset, weight, bias, stride, padding, dilation, mask = sample.materialize(device, dtype, layout, True)
    return input, offset, weight, bias, list(stride), list(padding), list(dilation), mask


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device, sample",
                         _cases([b for b in BACKENDS if b.values[0] != "reference"], [SAMPLES[2], SAMPLES[1]]))
def test_opcheck(backend, device, sample, layout):
    torch.library.opcheck(harness.custom_op(backend), _op_args(sample, device, layout))


BACKWARD_OPS = {"cpu": torch.ops.fastconv._deform_conv2d_backward.default,
                "cuda": torch.ops.fastconv._deform_conv2d_backward.default,
                "triton": torch.ops.fastconv._deform_conv2d_backward_triton.default}


@pytest.mark.parametrize("output_mask", [[True] * 5, [True, False, False, False, False], [False, True, True, True, False]])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS + TRITON_BACKENDS)
def test_backward_op_opcheck(backend, device, output_mask):
    input, offset, weight, bias, stride, padding, dilation, mask = _op_args(SAMPLES[2], device, "channels_last")
    out = torch.ops.fastconv.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask).detach()
    args = (torch.randn_like(out), input.detach(), offset.detach(), weight.detach(), mask.detach(), stride, padding,
            dilation, output_mask)
    torch.library.opcheck(BACKWARD_OPS[backend], args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS + TRITON_BACKENDS)
def test_backward_op_returns_only_what_is_asked(backend, device):
    """output_mask is honoured: the unwanted gradients are None (grad_mask also without a mask), the wanted
    ones equal those of a full call, in the layouts of the tensors they belong to."""
    input, offset, weight, bias, stride, padding, dilation, mask = _op_args(SAMPLES[2], device, "channels_last")
    input, offset, weight, mask = (t.detach() for t in (input, offset, weight, mask))
    grad_output = torch.randn(1, 4, 7, 6, device=device)
    op = BACKWARD_OPS[backend]
    full = op(grad_output, input, offset, weight, mask, stride, padding, dilation, [True] * 5)
    for layout_of, grad in zip((input, offset, mask, weight), full):
        assert grad.stride() == torch.empty_like(layout_of).stride()
    for output_mask in ([True, False, False, False, False], [False, True, True, True, False],
                        [False, False, False, False, True]):
        some = op(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask)
        for wanted, got, want in zip(output_mask, some, full):
            if wanted:
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            else:
                assert got is None
    no_mask = op(grad_output, input, offset, weight, None, stride, padding, dilation, [True] * 5)
    assert no_mask[2] is None and all(g is not None for i, g in enumerate(no_mask) if i != 2)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[2], backend, device, layout)


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS + TRITON_BACKENDS)
def test_compile_backward(backend, device):
    sample = SAMPLES[0]
    args = sample.materialize(device, torch.float32, "channels_last", requires_grad=True)
    torch._dynamo.reset()
    with fastconv.backend(backend):
        compiled = torch.compile(fastconv.ops.deform_conv2d, fullgraph=True)
        out = compiled(*args)
        grads = torch.autograd.grad(out.square().sum(), [args[i] for i in sample.grad])
    args64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    want = reference64(*args64)
    want_grads = torch.autograd.grad(want.square().sum(), [args64[i] for i in sample.grad])
    assert out.stride() == _output_strides(args[0], out)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_zero_offsets_equal_conv2d(backend, device, use_mask):
    x = torch.randn(2, 6, 9, 8, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    b = torch.randn(4, device=device)
    offset = torch.zeros(2, 18, 5, 3, device=device)
    mask = torch.ones(2, 9, 5, 3, device=device) if use_mask else None
    with fastconv.backend(backend):
        got = fastconv.ops.deform_conv2d(x, offset, w, b, stride=2, padding=1, dilation=(1, 2), mask=mask)
    want = F.conv2d(x, w, b, stride=2, padding=1, dilation=(1, 2), groups=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [(1, 0), (-2, 1), (0, -1), (3, 3)])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_integer_offsets_equal_shifted_conv2d(backend, device, shift):
    """A constant integer offset (dy, dx) samples input[h + dy, w + dx] exactly (zero outside)."""
    dy, dx = shift
    x = torch.randn(1, 4, 7, 6, device=device)
    w = torch.randn(5, 4, 3, 3, device=device)
    offset = torch.tensor([float(dy), float(dx)], device=device).repeat(9)[None, :, None, None].expand(1, 18, 7, 6)
    with fastconv.backend(backend):
        got = fastconv.ops.deform_conv2d(x, offset, w, None, padding=1)
    # out[oh, ow] = sum w[i, j] x[oh - 1 + i + dy, ow - 1 + j + dx] (zero outside): a valid convolution of the
    # zero-padded input cropped at (dy, dx), the padding region included.
    h, width = x.shape[2:]
    padded = F.pad(x, (4, 4, 4, 4))
    crop = padded[..., 3 + dy:3 + dy + h + 2, 3 + dx:3 + dx + width + 2]
    torch.testing.assert_close(got, F.conv2d(crop, w), rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic_on_cpu():
    """Every CPU gradient runs in an order fixed by the shapes: bit-identical for any thread count, and
    allowed under torch.use_deterministic_algorithms(True)."""
    sample = deform(3, 64, 32, 12, 12, offset_groups=2, name="det")
    grads = []
    previous_threads, previous_mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            args = sample.materialize("cpu", torch.float32, requires_grad=True)
            with fastconv.backend("cpu"):
                out = fastconv.ops.deform_conv2d(*args)
            grads.append(torch.autograd.grad(out, [args[i] for i in sample.grad], torch.ones_like(out)))
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_mode)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_backward_raises_under_deterministic_mode():
    sample = SAMPLES[0]
    args = sample.materialize("cuda", torch.float32, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with fastconv.backend("cuda"):
            out = fastconv.ops.deform_conv2d(*args)
        with pytest.raises(RuntimeError, match="deform_conv2d backward on CUDA"):
            torch.autograd.grad(out.sum(), args[0])
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("backend, device", TRITON_BACKENDS)
def test_triton_backward_under_deterministic_mode(backend, device):
    """grad_input is a scatter with atomic adds: under torch.use_deterministic_algorithms(True) a backward that
    needs it raises (like the CUDA backward); grad_offset, grad_mask, grad_weight and grad_bias are
    deterministic (one program owns each output element and sums in a fixed order): with an input that does not
    require grad, allowed and bit-identical run to run."""
    sample = SAMPLES[3]  # offset groups 4
    args = sample.materialize(device, torch.float32, requires_grad=True)
    frozen_input = (args[0].detach(),) + args[1:]
    not_input = [args[i] for i in sample.grad if i != 0]
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with fastconv.backend(backend):
            out = fastconv.ops.deform_conv2d(*args)
            out_frozen = fastconv.ops.deform_conv2d(*frozen_input)
        with pytest.raises(RuntimeError, match="deform_conv2d backward in Triton"):
            torch.autograd.grad(out.sum(), args[0])
        grad_out = torch.randn_like(out)
        first = torch.autograd.grad(out_frozen, not_input, grad_out, retain_graph=True)
        second = torch.autograd.grad(out_frozen, not_input, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_autocast_runs_in_the_low_precision_dtype():
    """Under autocast every tensor runs in the autocast dtype (float32 accumulation inside), not float32."""
    input, offset, weight, bias, stride, padding, dilation, mask = SAMPLES[0].args
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fastconv.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    assert got.dtype == torch.bfloat16
    cast = [t.to(torch.bfloat16).double() for t in (input, offset, weight, bias, mask)]
    want = reference64(cast[0], cast[1], cast[2], cast[3], stride, padding, dilation, cast[4])
    torch.testing.assert_close(got.double(), want, rtol=1.6e-2, atol=1.6e-2)


def _bad(message, **overrides):
    return pytest.param(overrides, message, id=message[:48])


def _valid_args():
    return dict(input=torch.randn(2, 4, 6, 6), offset=torch.randn(2, 18, 6, 6), weight=torch.randn(6, 4, 3, 3),
                bias=None, stride=1, padding=1, dilation=1, mask=torch.rand(2, 9, 6, 6))


@pytest.mark.parametrize("overrides, message", [
    _bad(r"offset.shape\[1\] is not valid: got 20, expected 2\*offset_groups\*kh\*kw, a positive multiple of "
         r"2\*3\*3 = 18", offset=torch.randn(2, 20, 6, 6)),
    _bad(r"mask.shape\[1\] is not valid: got 18, expected offset_groups\*kh\*kw = 1\*3\*3 = 9",
         mask=torch.rand(2, 18, 6, 6)),
    _bad(r"input.shape\[1\] \(4\) must be divisible by offset_groups \(3", offset=torch.randn(2, 54, 6, 6), mask=None),
    _bad(r"weight.shape\[1\] \(3\) must divide input.shape\[1\] \(4\)", weight=torch.randn(6, 3, 3, 3)),
    _bad(r"weight.shape\[0\] \(5\) must be divisible by the weight groups \(2", weight=torch.randn(5, 2, 3, 3)),
    _bad(r"offset.shape\[0\] is not valid: got 1, expected input.shape\[0\] = 2", offset=torch.randn(1, 18, 6, 6)),
    _bad(r"offset spatial size is not valid: got \(5, 6\), expected the output size \(6, 6\)",
         offset=torch.randn(2, 18, 5, 6)),
    _bad(r"mask.shape\[0\] is not valid: got 1", mask=torch.rand(1, 9, 6, 6)),
    _bad(r"mask spatial size is not valid", mask=torch.rand(2, 9, 6, 5)),
    _bad(r"input must be 4-D", input=torch.randn(4, 6, 6)),
    _bad(r"offset must be 4-D", offset=torch.randn(2, 18, 36)),
    _bad(r"weight must be 4-D", weight=torch.randn(6, 4, 9)),
    _bad(r"mask must be 4-D", mask=torch.rand(2, 9, 36)),
    _bad(r"bias must have shape \(6,\)", bias=torch.randn(5)),
    _bad(r"offset must have input's dtype", offset=torch.randn(2, 18, 6, 6, dtype=torch.float64)),
    _bad(r"weight must have input's dtype", weight=torch.randn(6, 4, 3, 3, dtype=torch.float64)),
    _bad(r"stride must be two positive ints", stride=0),
    _bad(r"padding must be two non-negative ints", padding=-1),
    _bad(r"dilation must be two positive ints", dilation=(1, 0)),
    _bad(r"the output size is empty", weight=torch.randn(6, 4, 9, 9), offset=torch.randn(2, 162, 1, 1), mask=None),
    _bad(r"stride must be an int or a pair of ints", stride=(1, 2, 3)),
])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, overrides, message):
    kwargs = {**_valid_args(), **overrides}
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.deform_conv2d(**kwargs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_invalid_arguments_raise_in_the_custom_op_too(backend):
    """Every backend's op checks its own arguments: nothing reaches a kernel unchecked."""
    op = harness.custom_op(backend)
    a = _valid_args()
    with pytest.raises(RuntimeError, match=r"offset.shape\[1\] is not valid"):
        op(a["input"], torch.randn(2, 20, 6, 6), a["weight"], None, [1, 1], [1, 1], [1, 1], None)
    with pytest.raises(RuntimeError, match=r"mask.shape\[1\] is not valid"):
        op(a["input"], a["offset"], a["weight"], None, [1, 1], [1, 1], [1, 1], torch.rand(2, 8, 6, 6))


def test_backward_op_rejects_bad_grad_output():
    a = _valid_args()
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        torch.ops.fastconv._deform_conv2d_backward(torch.randn(2, 6, 5, 6), a["input"], a["offset"], a["weight"],
                                                   a["mask"], [1, 1], [1, 1], [1, 1], [True] * 5)


def test_invalid_arguments_under_compile():
    compiled = torch.compile(fastconv.ops.deform_conv2d, fullgraph=True)
    torch._dynamo.reset()
    a = _valid_args()
    with pytest.raises(Exception, match=r"offset.shape\[1\] is not valid"):
        compiled(a["input"], torch.randn(2, 20, 6, 6), a["weight"], padding=1)


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(2, 1), groups=2,
         bias=False),
])
def test_deform_conv2d_module_is_a_drop_in(kwargs):
    tv = torchvision.ops.DeformConv2d(**kwargs)
    mine = fastconv.nn.DeformConv2d(**kwargs)
    assert mine.state_dict().keys() == tv.state_dict().keys()
    mine.load_state_dict(tv.state_dict(), strict=True)
    assert repr(mine).split("(", 1)[1] == repr(tv).split("(", 1)[1]
    x = torch.randn(2, kwargs["in_channels"], 9, 8)
    kh, kw = _pair(kwargs["kernel_size"])
    with torch.no_grad():
        plain = torch.nn.functional.conv2d(x, tv.weight, None, tv.stride, tv.padding, tv.dilation, tv.groups)
    offset = torch.randn(2, 2 * kh * kw, *plain.shape[2:])
    mask = torch.rand(2, kh * kw, *plain.shape[2:])
    for m in (None, mask):
        torch.testing.assert_close(mine(x, offset, m), tv(x, offset, m), rtol=1e-5, atol=1e-5)


SUBSET_SAMPLES = [SAMPLES[i] for i in (0, 1, 3)]  # bias and mask; no mask; mask without bias

# The C++ ops' autograd (csrc/autograd.cpp) maps graph edges to arguments: every subset of gradients.
@pytest.mark.parametrize("sample", SUBSET_SAMPLES, ids=[s.name for s in SUBSET_SAMPLES])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    harness.check_grad_subsets(sample, backend, device)
