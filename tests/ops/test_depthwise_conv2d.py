import pytest
import torch
import torch.nn.functional as F

import fastconv
from harness import (CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, SAVES_CASES, OpHarness, Sample,
                     check_saves_only_what_the_gradients_need, runnable, to_layout)
from fastconv.ops._checks import resolve_depthwise_conv2d_args
from tolerances import scaled_to_output, tolerance


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


def reference64(input, weight, bias, stride, padding, dilation, activation):
    """Independent reference: stock F.conv2d (which resolves 'same'/'valid' itself), activation from formulas."""
    return _activate(F.conv2d(input, weight, bias, stride, padding, dilation, groups=input.shape[1]), activation)


def _output_strides(input, out):
    layout = torch.channels_last if input.is_contiguous(memory_format=torch.channels_last) and not \
        input.is_contiguous() else torch.contiguous_format
    return torch.empty(out.shape, memory_format=layout).stride()


harness = OpHarness("depthwise_conv2d", fastconv.ops.depthwise_conv2d, reference64, expected_strides=lambda input, *rest: _output_strides(input, rest[-1]))


def dw(n, c, h, w, kernel, m=1, bias=True, stride=1, padding=0, dilation=1, activation=None, name=""):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    args = (torch.randn(n, c, h, w), torch.randn(c * m, 1, kh, kw) / (kh * kw) ** 0.5,
            torch.randn(c * m) if bias else None, stride, padding, dilation, activation)
    return Sample(args, name, grad=(0, 1, 2) if bias else (0, 1))


SAMPLES = [
    dw(2, 5, 9, 11, 3, padding=1, name="3x3-s1"),
    dw(2, 6, 10, 9, 3, stride=2, padding=1, activation="relu", name="3x3-s2-relu"),
    dw(1, 4, 11, 12, 5, padding=2, activation="relu6", name="5x5-relu6"),
    dw(2, 3, 13, 13, 7, padding=3, bias=False, activation="hardswish", name="7x7-hardswish-nobias"),
    dw(1, 2, 9, 8, 31, padding=15, name="31x31-small"),
    dw(2, 4, 9, 12, (1, 7), padding=(0, 3), activation="silu", name="1x7"),
    dw(1, 3, 12, 11, 3, padding=2, dilation=2, name="dilation2"),
    dw(1, 3, 13, 14, 3, padding=4, dilation=4, activation="relu", name="dilation4"),
    dw(2, 3, 8, 9, 3, m=2, padding=1, activation="silu", name="multiplier2"),
    dw(1, 4, 13, 11, 3, stride=3, padding=1, name="stride3"),
    dw(1, 3, 7, 8, 4, padding="same", activation="hardswish", name="same-even-kernel"),
    dw(1, 3, 7, 8, (3, 2), padding="same", dilation=(1, 3), name="same-asymmetric-dilated"),
    dw(2, 3, 7, 9, (2, 3), stride=(2, 1), padding="valid", bias=False, name="valid-nonsquare-stride"),
    dw(1, 3, 5, 7, 3, m=3, stride=(1, 2), padding=(2, 0), dilation=(2, 1), activation="relu6", name="mixed"),
    dw(0, 4, 6, 6, 3, padding=1, name="batch0"),
    dw(1, 1, 1, 1, 1, name="1x1x1"),
    dw(1, 3, 17, 18, 3, stride=4, padding=1, activation="relu", name="stride4"),
    dw(2, 2, 9, 17, 5, stride=(1, 4), padding=2, name="stride1x4-5x5"),
]
IDS = [s.name for s in SAMPLES]
BACKENDS = runnable("depthwise_conv2d")
# The reference backend is the baseline, not code under test: the sample-wide checks run on the kernels.
CPU_BACKENDS = [p for p in BACKENDS if p.values[0] == "cpu" or (p.values[1] == "cuda" and p.values[0] != "reference")]
# The Triton interpreter runs each program as Python: a few tiny samples cover its code paths.
TRITON_SAMPLES = [SAMPLES[i] for i in (1, 3, 5, 8, 11, 13, 14, 17)]
TRITON_BACKENDS = [p for p in BACKENDS if p.values[0] == "triton"]


def _cases(backends, samples):
    return [pytest.param(b.values[0], b.values[1], s, id=f"{b.id}-{s.name}") for b in backends for s in samples]


ALL_CASES = _cases(CPU_BACKENDS, SAMPLES) + _cases(TRITON_BACKENDS, TRITON_SAMPLES)
REFERENCE_CASES = _cases([p for p in BACKENDS if p.values[0] == "reference"], [SAMPLES[0], SAMPLES[10]])


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


# Shapes that reach every path of the CUDA forward (csrc/cuda/depthwise_conv2d.cu; GPU only, the CPU kernels
# have SAMPLES): channels_last vectors of 16 bytes (fp32 C % 4 == 0, fp16/bf16 C % 8 == 0), of 8 bytes (C % 2,
# C % 4) and of one element; NCHW tiles with partial right/bottom edges and several small planes per block;
# the unrolled 3x3/5x5 stride 1/2 instances; the runtime instance (large kernels, dilation, odd strides, 1xk)
# with more than one tile each way and shared memory past 48 KiB; m > 1.
CUDA_PATH_SAMPLES = [
    dw(2, 16, 13, 11, 3, padding=1, activation="relu6", name="c16-3x3-s1"),  # 16-byte vectors in every dtype
    dw(2, 12, 12, 13, 3, stride=2, padding=1, name="c12-3x3-s2"),  # fp32 16 bytes, fp16/bf16 8 bytes
    dw(1, 24, 11, 14, 5, padding=2, activation="hardswish", name="c24-5x5-s1"),
    dw(2, 40, 14, 13, 5, stride=2, padding=(2, 1), activation="silu", name="c40-5x5-s2"),
    dw(1, 6, 37, 45, 3, padding=1, name="tiles-partial-3x3"),  # 2x2 NCHW tiles; fp32 8-byte, fp16 1-element
    dw(1, 5, 35, 70, 3, stride=2, padding=(1, 0), name="tiles-partial-3x3-s2"),  # 5: one-element vectors
    dw(3, 7, 7, 7, 3, padding=1, activation="relu", name="small-planes"),  # 21 planes, 16 per block
    dw(1, 8, 40, 70, 7, padding=3, name="7x7-tiles"),  # runtime instance, sliding window, 2x2 tiles of 64x32
    dw(1, 4, 33, 66, 31, padding=15, activation="relu", name="31x31-tiles"),
    dw(2, 8, 15, 16, 13, stride=2, padding=6, name="13x13-s2"),
    dw(1, 16, 20, 21, 3, padding=4, dilation=4, name="dilation4-c16"),
    dw(1, 2, 30, 40, 3, padding=40, dilation=40, name="dilation40"),  # NCHW tile past 48 KiB: opted in
    dw(2, 8, 9, 12, (1, 7), padding=(0, 3), activation="silu", name="1x7-c8"),
    dw(1, 8, 13, 11, 3, stride=3, padding=1, name="stride3-c8"),
    dw(2, 6, 11, 10, 3, m=2, stride=2, padding=1, activation="hardswish", name="m2-s2"),
    dw(2, 4, 14, 14, 5, m=4, padding=2, name="m4-5x5"),
    dw(1, 264, 5, 9, 3, padding=1, name="c264"),  # 66 fp32 vectors: 3 channel blocks of 22
]
CUDA_BACKENDS = [p for p in BACKENDS if p.values[0] == "cuda" and p.values[1] == "cuda"]
# The backward's recomputed float pre-activation (hardswish/silu) runs the tiled kernels with float output;
# at stride 1 and multiplier 1 grad_input runs them too (float grad in, the dtype out), so the stride-1 samples
# include channel counts for each channels_last vector width of float input (4, 2 and 1 floats: C = 16, 6, 5).
# Small planes only: grad_weight sums over every pixel, and float32 must stay within its 1e-5 tolerance.
CUDA_BACKWARD_SAMPLES = [s for s in CUDA_PATH_SAMPLES if s.name in (
    "c16-3x3-s1", "c24-5x5-s1", "c40-5x5-s2", "1x7-c8", "m2-s2")] + [
    dw(2, 6, 9, 10, 3, padding=1, activation="relu", name="c6-3x3-s1"),
    dw(1, 5, 8, 11, 7, padding=3, name="c5-7x7-s1"),
    dw(2, 5, 9, 8, 3, padding=3, name="c5-pad-past-reach"),  # pad > (k - 1) * dilation: the gather kernel
]
# float64 on the GPU (the tiled forward does not take it; the backward's reductions do): larger shapes whose
# grad_weight is split into many row chunks, channels_last channel tiles with a partial last one, a runtime
# kernel wider than one block of row taps (11 > 8), rows wider than a block of threads, and a multiplier.
CUDA_GRAD_WEIGHT_SAMPLES = [
    dw(3, 40, 30, 29, 3, padding=1, name="c40-3x3-chunks"),
    dw(2, 36, 23, 20, 5, stride=2, padding=2, activation="relu6", name="c36-5x5-s2"),
    dw(2, 6, 17, 19, 11, padding=5, activation="relu", name="c6-11x11"),
    dw(1, 3, 5, 300, 3, padding=1, name="wide-rows"),
    dw(2, 4, 12, 11, 3, m=3, padding=(1, 2), dilation=(1, 2), name="m3-dilated"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend, device, sample", _cases(CUDA_BACKENDS, CUDA_PATH_SAMPLES))
def test_forward_cuda_paths(backend, device, sample, dtype, layout):
    harness.check_forward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend, device, sample", _cases(CUDA_BACKENDS, CUDA_BACKWARD_SAMPLES))
def test_backward_cuda_paths(backend, device, sample, dtype, layout):
    harness.check_backward(sample, backend, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device, sample", _cases(CUDA_BACKENDS, CUDA_GRAD_WEIGHT_SAMPLES))
def test_backward_cuda_float64(backend, device, sample, layout):
    harness.check_backward(sample, backend, device, torch.float64, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", CUDA_BACKENDS)
def test_cuda_weight_grad_is_deterministic(backend, device, layout):
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(8, 48, 28, 28, device=device).contiguous(memory_format=memory_format)
    w = torch.randn(48, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(48, device=device, requires_grad=True)
    grad_out = torch.randn(8, 48, 28, 28, device=device).contiguous(memory_format=memory_format)
    with fastconv.backend(backend):
        runs = [torch.autograd.grad(fastconv.ops.depthwise_conv2d(x, w, b, 1, 1), [w, b], grad_out)
                for _ in range(2)]
    assert all(torch.equal(first, second) for first, second in zip(*runs))


@pytest.mark.parametrize("offset", [1, 2, 4])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend, device", CUDA_BACKENDS)
def test_cuda_channels_last_unaligned_storage(backend, device, dtype, offset):
    """A dense channels_last input that starts `offset` elements into its storage: the CUDA kernel must pick a
    vector narrower than 16 bytes for it (8 bytes for fp32 at 2 and fp16 at 4, one element at 1), not fault on
    a misaligned load."""
    n, c, h, w = 2, 16, 9, 10
    storage = torch.randn(n * c * h * w + offset, device=device).to(dtype)
    x = storage[offset:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.storage_offset() == offset
    weight = torch.randn(c, 1, 3, 3, device=device).to(dtype)
    bias = torch.randn(c, device=device).to(dtype)
    with fastconv.backend(backend):
        out = fastconv.ops.depthwise_conv2d(x, weight, bias, 1, 1, 1, "relu")
    want = reference64(x.double(), weight.double(), bias.double(), 1, 1, 1, "relu")
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend, device", CUDA_BACKENDS)
def test_cuda_channels_last_grid_stride_loop(backend, device, dtype):
    """More column groups than the channels_last kernel's grid has threads (8 blocks per SM; on an H200's 132
    SMs 8448 groups of 4 columns for 256 fp16 channels, 4224 for fp32), so its grid-stride loop turns: 16384
    groups here. Made on the GPU inside the test: 17M elements."""
    x = torch.randn(1, 256, 256, 256, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(256, 1, 3, 3, device=device) / 3).to(dtype)
    with fastconv.backend(backend):
        out = fastconv.ops.depthwise_conv2d(x, weight, None, 1, 1)
    want = reference64(x.double(), weight.double(), None, 1, 1, 1, None)
    assert out.is_contiguous(memory_format=torch.channels_last)
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)


# gradcheck/gradgradcheck perturb every element: tiny shapes, each activation, the odd geometries.
GRADCHECK = [
    dw(1, 2, 5, 6, 3, stride=2, padding=1, activation="relu", name="s2-relu"),
    dw(1, 2, 6, 5, (2, 3), padding="same", dilation=(2, 1), activation="hardswish", name="same-hardswish"),
    dw(1, 2, 4, 5, 3, m=2, padding=1, bias=False, activation="silu", name="m2-silu"),
    dw(2, 1, 5, 5, (1, 3), stride=(1, 2), padding=(0, 1), activation="relu6", name="1x3-relu6"),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device, sample",
                         [c for c in _cases(BACKENDS, GRADCHECK) if c.values[0] == "cpu" and c.values[1] == "cpu"])
def test_gradcheck(backend, device, sample, layout):
    harness.check_gradcheck(sample, backend, device, layout)


# The CPU's NCHW channel-blocked path (csrc/cpu/depthwise_conv2d.cpp): several channel blocks and a tail block
# (blocks of 8 float / 4 double lanes on AVX2, 16 / 8 on AVX-512, 4 / 2 on the baseline), planes tall enough for
# several bands of rows, odd sizes with stride 2, narrow planes (a chunk of pixels spans rows), dilation, m > 1
# (a block's lanes repeat input channels), asymmetric padding, every activation.
BLOCKED = [
    dw(1, 19, 31, 29, 3, stride=2, padding=1, activation="relu6", name="blocked-s2-odd"),
    dw(2, 21, 70, 66, 3, padding=1, activation="hardswish", name="blocked-bands"),
    dw(1, 37, 7, 7, 3, padding=1, activation="relu", name="blocked-7x7-plane"),
    dw(1, 18, 15, 17, 3, padding=2, dilation=2, activation="silu", name="blocked-dilation"),
    dw(1, 7, 11, 9, 3, m=3, stride=2, padding=1, activation="relu", name="blocked-m3"),
    dw(2, 33, 9, 10, 5, padding=2, name="blocked-5x5"),
    dw(1, 17, 13, 12, (1, 7), padding=(0, 3), bias=False, activation="hardswish", name="blocked-1x7"),
    dw(1, 20, 12, 13, (4, 2), padding="same", activation="silu", name="blocked-same-asymmetric"),
    dw(1, 9, 14, 15, 3, stride=3, padding=1, activation="relu6", name="blocked-stride3"),
    dw(1, 16, 20, 20, 31, padding=15, name="blocked-31x31"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("sample", BLOCKED, ids=[f"cpu-cpu-{s.name}" for s in BLOCKED])
def test_forward_nchw_channel_blocks(sample, dtype):
    harness.check_forward(sample, "cpu", "cpu", dtype, "contiguous")


# The backward's hardswish/silu recompute the pre-activation with the forward kernel. Small planes: grad_weight
# sums over every output pixel, and a float32 sum of thousands of terms drifts past float32's tolerance.
BLOCKED_BACKWARD = [BLOCKED[i] for i in (0, 2, 3, 4, 6)]


@pytest.mark.parametrize("sample", BLOCKED_BACKWARD, ids=[f"cpu-cpu-{s.name}" for s in BLOCKED_BACKWARD])
def test_backward_nchw_channel_blocks(sample):
    harness.check_backward(sample, "cpu", "cpu", torch.float32, "contiguous")


# The CPU's NCHW row path (AVX-512 hosts; the channel-blocked path takes these shapes elsewhere): stride_w 1 and
# dilation_w 1 with output rows wider than one vector. Whole and partial vectors per row (up to 4 per step, then
# the rest), row counts that leave a remainder after the 4-row groups, several bands, the compile-time 3/5/7
# kernels and a runtime (non-square) one, the one-row path (stride_h 2, dilation_h 2), m > 1, "valid" and
# "same" with an even kernel, every activation.
ROWS = [
    dw(2, 5, 37, 41, 3, padding=1, activation="relu6", name="rows-3x3"),
    dw(1, 3, 23, 70, 5, padding=2, activation="silu", name="rows-5x5"),
    dw(1, 4, 19, 40, 7, padding=3, name="rows-7x7"),
    dw(1, 3, 21, 37, (3, 5), padding=(1, 2), activation="hardswish", name="rows-3x5-runtime"),
    dw(1, 4, 30, 35, 3, stride=(2, 1), padding=1, activation="relu", name="rows-stride-h2"),
    dw(1, 3, 26, 34, 3, padding=(2, 1), dilation=(2, 1), name="rows-dilation-h2"),
    dw(1, 3, 20, 33, 3, m=2, padding=1, activation="relu", name="rows-m2"),
    dw(1, 2, 9, 150, 3, padding=(0, 1), bias=False, name="rows-wide-short"),
    dw(1, 2, 300, 40, 3, padding=1, activation="hardswish", name="rows-tall-bands"),
    dw(1, 3, 20, 40, 3, padding="valid", name="rows-valid"),
    dw(1, 3, 17, 36, (2, 4), padding="same", activation="silu", name="rows-same-even"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("sample", ROWS, ids=[f"cpu-cpu-{s.name}" for s in ROWS])
def test_forward_nchw_rows(sample, dtype):
    harness.check_forward(sample, "cpu", "cpu", dtype, "contiguous")


# The CPU's channels_last row-reuse path writes outputs of 16 MiB and more with streaming stores (float32, channel
# counts that fill whole vectors): 3x3 and 5x5 at stride 1, 3x3 at stride 2, each with pixels left for the 4-, 2-
# and 1-pixel steps and edge columns on the ordinary path.
STREAMING = [
    dw(1, 64, 263, 267, 3, padding=1, activation="relu6", name="streaming-3x3"),
    dw(1, 64, 262, 265, 5, padding=2, activation="silu", name="streaming-5x5"),
    dw(4, 32, 373, 371, 3, stride=2, padding=1, name="streaming-3x3-s2"),
]


@pytest.mark.parametrize("sample", STREAMING, ids=[f"cpu-cpu-{s.name}" for s in STREAMING])
def test_forward_channels_last_streaming(sample):
    harness.check_forward(sample, "cpu", "cpu", torch.float32, "channels_last")


ROWS_BACKWARD = [ROWS[i] for i in (0, 3, 4, 6)]


@pytest.mark.parametrize("sample", ROWS_BACKWARD, ids=[f"cpu-cpu-{s.name}" for s in ROWS_BACKWARD])
def test_backward_nchw_rows(sample):
    harness.check_backward(sample, "cpu", "cpu", torch.float32, "contiguous")


@pytest.mark.parametrize("sample", GRADCHECK[:2], ids=[s.name for s in GRADCHECK[:2]])
@pytest.mark.parametrize("backend, device", TRITON_BACKENDS)
def test_gradcheck_triton(backend, device, sample):
    """Under the interpreter a full gradcheck takes minutes: fast mode (random projections) instead. The double
    backward is the shared ATen composition, covered by the C++ backend's gradgradcheck."""
    args = sample.materialize(device, torch.float64, "contiguous", requires_grad=True)

    def fn(*differentiable):
        full = list(args)
        for position, tensor in zip(sample.grad, differentiable):
            full[position] = tensor
        with fastconv.backend(backend):
            return fastconv.ops.depthwise_conv2d(*full)

    assert torch.autograd.gradcheck(fn, tuple(args[i] for i in sample.grad), fast_mode=True)


# More output pixels than one Triton tile (1024 under the interpreter, 64 on a GPU): the weight gradient is
# summed in several chunks, then over the chunks. float64, so a wrong or missing chunk cannot hide in rounding.
TRITON_CHUNKED_SAMPLES = [
    dw(2, 3, 40, 40, 3, padding=1, activation="relu", name="chunked-3x3"),
    dw(1, 2, 34, 33, 5, m=2, padding=2, name="chunked-5x5-m2"),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device, sample", _cases(TRITON_BACKENDS, TRITON_CHUNKED_SAMPLES))
def test_backward_triton_weight_grad_chunks(backend, device, sample, layout):
    harness.check_backward(sample, backend, device, torch.float64, layout)


def _resolved(sample, device, layout, dtype=torch.float32):
    input, weight, bias, stride, padding, dilation, activation = sample.materialize(device, dtype, layout, True)
    stride, padding, dilation = resolve_depthwise_conv2d_args(weight, stride, padding, dilation)
    return input, weight, bias, stride, padding, dilation, activation


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device, sample",
                         _cases([b for b in BACKENDS if b.values[0] != "reference"], [SAMPLES[1], SAMPLES[8]]))
def test_opcheck(backend, device, sample, layout):
    torch.library.opcheck(harness.custom_op(backend), _resolved(sample, device, layout))


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("backend, device", [b for b in BACKENDS if b.values[0] != "reference"])
def test_backward_op_opcheck(backend, device, activation):
    input, weight, bias, stride, padding, dilation, _ = _resolved(SAMPLES[1], device, "channels_last")
    op = harness.custom_op(backend)
    output = op(input, weight, bias, stride, padding, dilation, activation).detach()
    grad = torch.randn_like(output)
    backward = (torch.ops.fastconv._depthwise_conv2d_backward.default if backend != "triton"
                else torch.ops.fastconv._depthwise_conv2d_backward_triton.default)
    for mask in ([True, True, True], [True, False, False]):
        keep_input = mask[1] or activation == "silu"
        args = (grad, input.detach() if keep_input else None, weight.detach(), bias.detach(), output,
                list(input.shape), stride, padding, dilation, activation, mask)
        torch.library.opcheck(backward, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[8], backend, device, layout)


@pytest.mark.parametrize("backend, device", [b for b in BACKENDS if b.values[0] != "reference"])
def test_compile_backward(backend, device):
    sample = SAMPLES[10]  # "same" padding, hardswish: recomputed pre-activation
    args = sample.materialize(device, torch.float32, "channels_last", requires_grad=True)
    torch._dynamo.reset()
    with fastconv.backend(backend):
        compiled = torch.compile(fastconv.ops.depthwise_conv2d, fullgraph=True)
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


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_weight_grad_is_deterministic(backend, layout):
    """The weight gradient's reduction has a fixed order: bit-identical across runs and thread counts."""
    if backend == "triton" and not any(p.values[0] == "triton" for p in BACKENDS):
        pytest.skip("no Triton backend here")
    x = to_layout(torch.randn(4, 16, 20, 20), layout).requires_grad_(True)
    w = torch.randn(16, 1, 3, 3, requires_grad=True)
    grads = []
    for threads in (1, 2, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with fastconv.backend(backend):
                out = fastconv.ops.depthwise_conv2d(x, w, None, 1, 1)
                grads.append(torch.autograd.grad(out, w, torch.ones_like(out))[0])
        finally:
            torch.set_num_threads(previous)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[1], grads[2])


@pytest.mark.parametrize("weight_grad, activation, input_saved, output_saved", SAVES_CASES)
def test_saves_only_what_the_gradients_need(weight_grad, activation, input_saved, output_saved):
    check_saves_only_what_the_gradients_need(fastconv.ops.depthwise_conv2d, (4, 1, 3, 3), weight_grad, activation, input_saved, output_saved)


@pytest.mark.parametrize("padding, kernel, dilation", [("same", 4, 1), ("same", 3, 2), ("same", (2, 5), (3, 1)),
                                                       ("valid", 3, 1), ((1, 2), 3, 1), (2, 1, 1)])
def test_padding_forms_equal_conv2d(padding, kernel, dilation):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, w = torch.randn(2, 3, 9, 10), torch.randn(3, 1, kh, kw)
    got = fastconv.ops.depthwise_conv2d(x, w, None, 1, padding, dilation)
    torch.testing.assert_close(got, F.conv2d(x, w, None, 1, padding, dilation, groups=3), rtol=1e-5, atol=1e-5)


def _bad(message, *args, **kwargs):
    return pytest.param(args, kwargs, message, id=message[:40])


X = torch.randn(2, 4, 8, 8)
W = torch.randn(4, 1, 3, 3)


@pytest.mark.parametrize("args, kwargs, message", [
    _bad(r"weight must have shape \(C\*m, 1, kh, kw\)", X, torch.randn(4, 2, 3, 3)),
    _bad(r"weight must have shape \(C\*m, 1, kh, kw\)", X, torch.randn(4, 3, 3)),
    _bad(r"weight.shape\[0\] \(6\) must be a positive multiple of the input channels", X, torch.randn(6, 1, 3, 3)),
    _bad(r"input must be 4-D", torch.randn(4, 8, 8), W),
    _bad("input and weight must have the same dtype", X, W.double()),
    _bad(r"bias must have shape \(4,\)", X, W, torch.randn(3)),
    _bad("stride must be two positive ints", X, W, None, 0),
    _bad("stride must be two positive ints", X, W, None, (1, -1)),
    _bad("dilation must be two positive ints", X, W, None, 1, 1, 0),
    _bad("padding must be four non-negative ints", X, W, None, 1, -1),
    _bad("the output size is empty", X, torch.randn(4, 1, 9, 9)),
    _bad("activation must be None", X, W, activation="gelu"),
    _bad("padding='same' is not supported for strided convolutions", X, W, stride=2, padding="same"),
    _bad("padding must be an int, a pair, 'same' or 'valid'", X, W, padding="full"),
    _bad("stride must be an int or a pair of ints", X, W, stride=(1, 2, 3)),
])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, args, kwargs, message):
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.depthwise_conv2d(*args, **kwargs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_invalid_arguments_raise_in_the_custom_op_too(backend):
    """Every backend's op checks its own arguments: nothing reaches a kernel unchecked."""
    op = harness.custom_op(backend)
    with pytest.raises(RuntimeError, match="padding must be four non-negative ints"):
        op(X, W, None, [1, 1], [1, 1, -1, 1], [1, 1], None)
    with pytest.raises(RuntimeError, match="weight.shape"):
        op(X, torch.randn(5, 1, 3, 3), None, [1, 1], [1, 1, 1, 1], [1, 1], None)


def test_invalid_arguments_under_compile():
    compiled = torch.compile(fastconv.ops.depthwise_conv2d, fullgraph=True)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="must be a positive multiple of the input channels"):
        compiled(X, torch.randn(6, 1, 3, 3))


def test_backward_op_rejects_bad_grad_output():
    with pytest.raises(RuntimeError, match="grad_output must have shape"):
        torch.ops.fastconv._depthwise_conv2d_backward(torch.randn(2, 4, 7, 7), X, W, None, None, [2, 4, 8, 8],
                                                      [1, 1], [1, 1, 1, 1], [1, 1], None, [True, True, False])
    with pytest.raises(RuntimeError, match="output .* is required for relu"):
        torch.ops.fastconv._depthwise_conv2d_backward(torch.randn(2, 4, 8, 8), X, W, None, None, [2, 4, 8, 8],
                                                      [1, 1], [1, 1, 1, 1], [1, 1], "relu", [True, True, False])


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    dict(in_channels=4, out_channels=8, kernel_size=(1, 5), stride=2, padding="valid", groups=4, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", dilation=2, groups=4),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),  # dense: torch's own forward
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4, padding_mode="reflect"),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6, activation="relu6"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, activation="hardswish"),  # dense: conv2d_act
])
def test_conv2d_module_is_a_drop_in(kwargs):
    """fastconv.nn.Conv2d equals nn.Conv2d (then the activation) and routes depthwise configurations to
    fastconv::depthwise_conv2d, dense ones with an activation to fastconv::conv2d_act, the rest to torch."""
    kwargs = dict(kwargs)
    activation = kwargs.pop("activation", None)
    torch_conv = torch.nn.Conv2d(**kwargs)
    conv = fastconv.nn.Conv2d(**kwargs, activation=activation)
    conv.load_state_dict(torch_conv.state_dict(), strict=True)
    assert conv.state_dict().keys() == torch_conv.state_dict().keys()
    depthwise = kwargs.get("groups", 1) == kwargs["in_channels"] and kwargs.get("padding_mode", "zeros") == "zeros"
    assert conv.is_depthwise() == depthwise
    x = torch.randn(2, kwargs["in_channels"], 11, 10, requires_grad=True)
    with fastconv.backend("cpu"), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = conv(x)
    ran = {event.name for event in prof.events() if event.name.startswith("fastconv::")}
    expected_op = ("fastconv::depthwise_conv2d" if depthwise else
                   "fastconv::conv2d_act" if activation is not None and kwargs.get("padding_mode", "zeros") == "zeros"
                   else None)
    assert ran == ({expected_op} if expected_op else set()), ran
    want = _activate(torch_conv(x), activation)
    rtol, atol = tolerance(torch.float32)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    got_grad = torch.autograd.grad(got.sum(), conv.weight)[0].double()
    want_grad = torch.autograd.grad(want.sum(), torch_conv.weight)[0].double()
    torch.testing.assert_close(*scaled_to_output(got_grad, want_grad), rtol=rtol, atol=atol)


SUBSET_SAMPLES = [SAMPLES[i] for i in (1, 3, 8)]  # relu (saves the output); no bias, hardswish; silu, multiplier 2

# The C++ ops' autograd (csrc/autograd.cpp) maps graph edges to arguments: every subset of gradients.
@pytest.mark.parametrize("sample", SUBSET_SAMPLES, ids=[s.name for s in SUBSET_SAMPLES])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    harness.check_grad_subsets(sample, backend, device)
