import pytest
import torch

import fastconv
from harness import CPP_BACKENDS, FLOAT_DTYPES, LAYOUTS, OpHarness, Sample, runnable


def reference64(input, groups):
    """Independent reference: view channels as (groups, C // groups) and transpose."""
    n, c, *rest = input.shape
    return input.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(input.shape)


harness = OpHarness(
    "channel_shuffle", fastconv.ops.channel_shuffle, reference64, exact=True, interpreter_bf16=True
)

SAMPLES = [
    Sample((torch.randn(2, 6, 5, 7), 3), "odd-hw"),
    Sample((torch.randn(2, 116, 7, 7), 2), "shufflenet-stage4"),
    Sample((torch.randn(0, 4, 3, 3), 2), "batch0"),
    Sample((torch.randn(3, 12, 1, 1), 4), "1x1"),
    Sample((torch.randn(1, 5, 2, 3), 5), "groups-eq-channels"),
    Sample((torch.randn(2, 6, 3, 3), 1), "one-group"),
    Sample((torch.randn(2, 8, 9), 2), "3d"),
    Sample((torch.randn(1, 6, 2, 3, 2), 3), "5d"),
]
IDS = [s.name for s in SAMPLES]
BACKENDS = runnable("channel_shuffle")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float64, torch.int32, torch.uint8], ids=str)
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


@pytest.mark.parametrize("sample", [SAMPLES[0], SAMPLES[6]], ids=[IDS[0], IDS[6]])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_gradcheck(backend, device, sample):
    harness.check_gradcheck(sample, backend, device)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_opcheck(backend, device, layout):
    harness.check_opcheck(SAMPLES[0], backend, device, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compile_fullgraph(backend, device, layout):
    harness.check_compile(SAMPLES[0], backend, device, layout)


def test_backward_op_opcheck():
    grad = torch.randn(2, 6, 5, 7, requires_grad=True)
    torch.library.opcheck(torch.ops.fastconv._channel_shuffle_backward.default, (grad, 3))


def test_equals_torch_channel_shuffle_and_module():
    x = torch.randn(4, 24, 5, 5)
    module = fastconv.nn.ChannelShuffle(4)
    assert repr(module) == repr(torch.nn.ChannelShuffle(4))
    assert module.state_dict().keys() == torch.nn.ChannelShuffle(4).state_dict().keys()
    torch.testing.assert_close(module(x), torch.nn.functional.channel_shuffle(x, 4), rtol=0, atol=0)


def test_permuted_dense_layout_is_kept():
    x = torch.randn(2, 6, 4, 5).permute(0, 1, 3, 2)  # dense, neither NCHW nor channels_last
    out = fastconv.ops.channel_shuffle(x, 2)
    assert out.stride() == x.stride()
    torch.testing.assert_close(out, reference64(x, 2), rtol=0, atol=0)


@pytest.mark.parametrize(
    "shape, groups, message",
    [
        ((2, 6, 3, 3), 4, r"groups \(4\) must divide the number of channels \(input.shape\[1\] = 6\)"),
        ((2, 6, 3, 3), 0, "groups must be positive, got 0"),
        ((2, 6, 3, 3), -3, "groups must be positive, got -3"),
        ((2, 6), 2, r"at least 3 dimensions \(N, C, \*\), got sizes \[2, 6\]"),
    ],
)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, shape, groups, message):
    x = torch.randn(shape, device=device)
    with fastconv.backend(backend), pytest.raises(RuntimeError, match=message):
        fastconv.ops.channel_shuffle(x, groups)
    # torch raises the same exception type for the same mistake
    with pytest.raises(RuntimeError):
        torch.nn.functional.channel_shuffle(x, groups)


def test_invalid_arguments_under_compile():
    compiled = torch.compile(fastconv.ops.channel_shuffle, fullgraph=True)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="must divide the number of channels"):
        compiled(torch.randn(2, 6, 3, 3), 4)


# The C++ op's autograd (csrc/autograd.cpp): the one gradient, with the input alone requiring grad.
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device):
    harness.check_grad_subsets(SAMPLES[0], backend, device)
