import math

import pytest
import torch

import fastconv
from harness import CPP_BACKENDS, GPU, OpHarness, Sample, runnable, to_layout
from tolerances import tolerance

ACTIVATIONS = [None, "relu", "relu6", "hardswish", "silu"]
BACKENDS = runnable("batch_norm_act")
FAST_BACKENDS = [p for p in BACKENDS if p.values[0] != "reference"]


def reference64(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    """Independent float64 reference: statistics by hand, activation by hand. Returns
    (output, expected running_mean, expected running_var) without touching the given running stats."""
    input = input.double()
    channels = input.shape[1]
    dims = [0] + list(range(2, input.dim()))
    shape = [1, channels] + [1] * (input.dim() - 2)
    new_mean = new_var = None
    if training:
        count = input.numel() // channels
        mean = input.mean(dims)
        var = ((input - mean.view(shape)) ** 2).sum(dims) / count
        if running_mean is not None:
            new_mean = (1 - momentum) * running_mean.double() + momentum * mean
            new_var = (1 - momentum) * running_var.double() + momentum * var * count / (count - 1)
    else:
        mean, var = running_mean.double(), running_var.double()
        new_mean, new_var = running_mean.double(), running_var.double()
    y = (input - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.double().view(shape)
    if bias is not None:
        y = y + bias.double().view(shape)
    if activation == "relu":
        y = torch.where(y > 0, y, torch.zeros_like(y))
    elif activation == "relu6":
        y = torch.where(y > 6, torch.full_like(y, 6.0), torch.where(y > 0, y, torch.zeros_like(y)))
    elif activation == "hardswish":
        y = y * torch.where(y + 3 > 6, torch.full_like(y, 6.0), torch.where(y + 3 > 0, y + 3, torch.zeros_like(y))) / 6
    elif activation == "silu":
        y = y / (1 + torch.exp(-y))
    return y, new_mean, new_var


def make_args(shape, dtype=torch.float32, device="cpu", layout="contiguous", affine=True, running=True,
              param_dtype=None, training=True, activation=None, momentum=0.1, eps=1e-5, requires_grad=False):
    channels = shape[1]
    param_dtype = param_dtype or dtype
    x = to_layout((torch.randn(shape) * 2 + 0.5).to(device=device, dtype=dtype), layout)
    weight = (torch.rand(channels) + 0.5).to(device=device, dtype=param_dtype) if affine else None
    bias = torch.randn(channels).to(device=device, dtype=param_dtype) if affine else None
    if requires_grad:
        x.requires_grad_(True)
        if affine:
            weight.requires_grad_(True)
            bias.requires_grad_(True)
    rm = (torch.randn(channels) * 0.3).to(device=device, dtype=param_dtype) if running else None
    rv = (torch.rand(channels) + 0.5).to(device=device, dtype=param_dtype) if running else None
    return [x, weight, bias, rm, rv, training, momentum, eps, activation]


def run(backend, args):
    with fastconv.backend(backend):
        return fastconv.ops.batch_norm_act(*args)


def check_against_reference(backend, args, dtype, grad=False):
    rm0 = None if args[3] is None else args[3].clone()
    rv0 = None if args[4] is None else args[4].clone()
    ref_args = list(args)
    ref_args[3], ref_args[4] = rm0, rv0
    ref_inputs = [a.detach().double().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                  for a in ref_args]
    out = run(backend, args)
    expected, new_mean, new_var = reference64(*ref_inputs)
    rtol, atol = tolerance(dtype)
    assert out.dtype == args[0].dtype and out.shape == args[0].shape
    if backend != "reference" and args[0].dim() == 4:
        assert out.stride() == torch.empty_like(args[0]).stride(), "output must keep the input's memory format"
    torch.testing.assert_close(out.double(), expected.detach(), rtol=rtol, atol=atol)
    if args[3] is not None:
        stat_tol = tolerance(args[3].dtype)
        torch.testing.assert_close(args[3].double(), new_mean.detach(), rtol=stat_tol[0], atol=stat_tol[1])
        torch.testing.assert_close(args[4].double(), new_var.detach(), rtol=stat_tol[0], atol=stat_tol[1])
    if grad:
        grad_out = torch.randn_like(out)
        positions = [i for i in (0, 1, 2) if isinstance(args[i], torch.Tensor) and args[i].requires_grad]
        got = torch.autograd.grad(out, [args[i] for i in positions], grad_out)
        want = torch.autograd.grad(expected, [ref_inputs[i] for i in positions], grad_out.double())
        for position, g, w in zip(positions, got, want):
            assert g.dtype == args[position].dtype
            # grad_weight / grad_bias are sums over N*H*W terms: their scale grows like sqrt(count)
            scale = 1.0 if position == 0 else math.sqrt(args[0].numel() / args[0].shape[1])
            torch.testing.assert_close(g.double(), w, rtol=rtol, atol=atol * scale, msg=lambda m: f"arg {position}: {m}")


SHAPES = [
    pytest.param((2, 6, 5, 7), id="odd-hw"),
    pytest.param((1, 4, 3, 5), id="batch1"),
    pytest.param((8, 6), id="2d"),
    pytest.param((2, 5, 9), id="3d"),
    pytest.param((2, 3, 2, 3, 2), id="5d"),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_forward_backward_dtypes_layouts(backend, device, dtype, layout, training):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bfloat16 wrongly; this path is tested on a GPU")
    if device == "cuda" and dtype == torch.float64 and backend != "reference":
        pytest.skip("float64 runs on the CPU kernels")
    # silu: smooth, so float16 rounding of the pre-activation cannot flip a kink's derivative (relu at 0)
    args = make_args((3, 6, 5, 7), dtype, device, layout, training=training, activation="silu", requires_grad=True)
    check_against_reference(backend, args, dtype, grad=True)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_activations(backend, device, layout, training, activation):
    args = make_args((2, 5, 4, 6), torch.float32, device, layout, training=training, activation=activation,
                     requires_grad=True)
    check_against_reference(backend, args, torch.float32, grad=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine, running", [(True, True), (False, True), (True, False), (False, False)],
                         ids=["affine-running", "running", "affine", "bare"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_shapes_optional_arguments(backend, device, shape, affine, running):
    args = make_args(shape, torch.float32, device, affine=affine, running=running, activation="hardswish",
                     requires_grad=True)
    check_against_reference(backend, args, torch.float32, grad=True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_mixed_precision_float32_params(backend, device, dtype, training):
    """float16/bfloat16 input with float32 weight, bias and running statistics, as cuDNN and F.batch_norm."""
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bfloat16 wrongly; this path is tested on a GPU")
    args = make_args((2, 6, 5, 7), dtype, device, "channels_last", param_dtype=torch.float32, training=training,
                     activation="silu", requires_grad=True)
    check_against_reference(backend, args, dtype, grad=True)
    assert args[3].dtype == torch.float32


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((2, 130, 64, 64), "channels_last"),  # > 64 row blocks: every level of the merge runs
        ((2, 3, 70, 70), "contiguous"),  # planes longer than one in-cache block
        ((64, 5, 7, 7), "contiguous"),  # many small planes per block
    ],
    ids=["cl-many-blocks", "nchw-long-planes", "nchw-small-planes"],
)
def test_cpu_large_shapes(shape, layout):
    # smooth activation: with 10^6 elements some pre-activation would sit within float32 rounding of a kink
    args = make_args(shape, torch.float32, "cpu", layout, activation="silu", requires_grad=True)
    check_against_reference("cpu", args, torch.float32, grad=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_statistics_are_numerically_stable(backend, device, layout):
    """A large common offset: E[x^2] - E[x]^2 in float32 would lose every digit of the variance."""
    x = to_layout((torch.randn(4, 8, 16, 16) * 0.01 + 3000.0).to(device), layout)
    rm, rv = torch.zeros(8, device=device), torch.ones(8, device=device)
    run(backend, [x, None, None, rm, rv, True, 1.0, 1e-5, None])
    x64 = x.double()
    expected_var = x64.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(rv.double(), expected_var, rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_batch0(backend, device):
    # eval: an empty output
    args = make_args((0, 4, 3, 3), torch.float32, device, training=False, activation="relu", requires_grad=True)
    out = run(backend, args)
    assert out.shape == (0, 4, 3, 3)
    out.sum().backward()
    assert args[0].grad.shape == (0, 4, 3, 3)
    # training: F.batch_norm returns an empty output and leaves the running statistics untouched
    args = make_args((0, 4, 3, 3), torch.float32, device, training=True, requires_grad=True)
    rm, rv = args[3].clone(), args[4].clone()
    out = run(backend, args)
    assert out.shape == (0, 4, 3, 3)
    torch.testing.assert_close(args[3], rm, rtol=0, atol=0)
    torch.testing.assert_close(args[4], rv, rtol=0, atol=0)
    out.sum().backward()
    assert torch.count_nonzero(args[1].grad) == 0


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_gradcheck(backend, device, layout, training):
    if device == "cuda":
        pytest.skip("float64 gradcheck runs on the CPU kernels")
    interpreter = backend == "triton" and device == "cpu"
    if interpreter and (layout, training) in (("contiguous", False), ("channels_last", True)):
        pytest.skip("the Triton interpreter is slow: two of the four combinations suffice there")
    shape = (2, 2, 2, 3) if interpreter else (2, 3, 3, 4)
    args = make_args(shape, torch.float64, device, layout, training=training, activation="silu",
                     requires_grad=True)

    def fn(x, weight, bias):
        full = list(args)
        full[:3] = [x, weight, bias]
        full[3], full[4] = args[3].clone(), args[4].clone()
        return run(backend, full)

    assert torch.autograd.gradcheck(fn, tuple(args[:3]), fast_mode=interpreter)


# The double backward rebuilds the first-order gradients from differentiable ATen ops (it used to be missing:
# the backward op had no autograd, so a double backward silently gave zeros). Eval normalises with the
# running statistics; training differentiates through the batch statistics, with eps recovered from the
# saved 1/sqrt(var + eps).
@pytest.mark.parametrize("activation", ["silu", "relu6"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_gradgradcheck(backend, device, affine, training, activation):
    if device == "cuda":
        pytest.skip("float64 gradgradcheck runs on the CPU kernels")
    interpreter = backend == "triton" and device == "cpu"
    if interpreter and (affine, activation) != (True, "silu"):
        pytest.skip("the Triton interpreter is slow: the affine silu case suffices there")
    args = make_args((2, 3, 2, 3), torch.float64, device, "channels_last", affine=affine, training=training,
                     activation=activation, eps=1e-3, requires_grad=True)
    inputs = tuple(a for a in args[:3] if a is not None)

    def fn(*differentiable):
        full = list(args)
        full[:3] = list(differentiable) + [None] * (3 - len(differentiable))
        full[3], full[4] = args[3].clone(), args[4].clone()
        return run(backend, full)

    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=interpreter)


def _op_for(backend):
    return torch.ops.fastconv.batch_norm_act_triton.default if backend == "triton" else \
        torch.ops.fastconv.batch_norm_act.default


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_opcheck(backend, device, layout, training):
    args = make_args((2, 4, 3, 5), torch.float32, device, layout, training=training, activation="hardswish",
                     requires_grad=True)
    torch.library.opcheck(_op_for(backend), tuple(args))


@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_opcheck_optional_none_and_backward_op(backend, device):
    args = make_args((2, 4, 3, 5), torch.float32, device, affine=False, running=False, requires_grad=True)
    torch.library.opcheck(_op_for(backend), tuple(args))
    x = torch.randn(2, 4, 3, 5, device=device)
    mean, invstd = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
    backward = (torch.ops.fastconv._batch_norm_act_backward_triton.default if backend == "triton"
                else torch.ops.fastconv._batch_norm_act_backward.default)
    torch.library.opcheck(backward, (torch.randn_like(x), x, torch.rand(4, device=device), None, mean, invstd,
                                     True, "relu"))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_compile_fullgraph(backend, device, layout, training):
    args = make_args((2, 4, 3, 5), torch.float32, device, layout, training=training, activation="relu6",
                     requires_grad=True)
    eager_args = list(args)
    eager_args[3], eager_args[4] = args[3].clone(), args[4].clone()
    torch._dynamo.reset()
    with fastconv.backend(backend):
        compiled = torch.compile(fastconv.ops.batch_norm_act, fullgraph=True)
        got = compiled(*args)
        want = fastconv.ops.batch_norm_act(*eager_args)
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(args[3], eager_args[3])  # running statistics mutated under compile too
    torch.testing.assert_close(args[4], eager_args[4])
    grad = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, args[:3], grad), torch.autograd.grad(want, args[:3], grad))


# --- the module -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batchnorm2d_module_matches_torch(layout, momentum, backend, device):
    with fastconv.backend(backend):
        _check_batchnorm2d_module(layout, momentum, device)


def _check_batchnorm2d_module(layout, momentum, device):
    torch_bn = torch.nn.BatchNorm2d(6, momentum=momentum)
    ours = fastconv.nn.BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        torch_bn.weight.uniform_(0.5, 1.5)
        torch_bn.bias.normal_()
    ours.load_state_dict(torch_bn.state_dict(), strict=True)
    assert ours.state_dict().keys() == torch_bn.state_dict().keys()
    assert repr(ours) == repr(torch_bn)
    torch_bn.to(device), ours.to(device)
    for step in range(3):
        x = to_layout(torch.randn(4, 6, 5, 5, device=device) * (step + 1) + step, layout)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = torch_bn(xa), ours(xb)
        torch.testing.assert_close(yb, ya)
        grad = torch.randn_like(ya)
        ya.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(xb.grad, xa.grad)
        torch.testing.assert_close(ours.weight.grad, torch_bn.weight.grad)
        torch.testing.assert_close(ours.bias.grad, torch_bn.bias.grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(torch_bn, name))
    torch_bn.eval()
    ours.eval()
    x = to_layout(torch.randn(2, 6, 5, 5, device=device), layout)
    torch.testing.assert_close(ours(x), torch_bn(x))


def test_batchnorm2d_module_without_running_stats_and_activation():
    torch_bn = torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False).eval()
    ours = fastconv.nn.BatchNorm2d(3, affine=False, track_running_stats=False, activation="relu").eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), torch.relu(torch_bn(x)))
    assert "activation='relu'" in repr(ours)
    with pytest.raises(ValueError, match="unknown activation"):
        fastconv.nn.BatchNorm2d(3, activation="gelu")


# --- invalid arguments ------------------------------------------------------------------------------------------
def _invalid_cases():
    c = 4
    x = torch.randn(2, c, 3, 3)
    good = dict(input=x, weight=torch.ones(c), bias=torch.zeros(c), running_mean=torch.zeros(c),
                running_var=torch.ones(c), training=True, momentum=0.1, eps=1e-5, activation=None)
    cases = [
        (dict(weight=torch.ones(c + 1)), RuntimeError, r"weight must have shape \(C,\) = \(4,\), got \[5\]"),
        (dict(bias=torch.zeros(c, 1)), RuntimeError, r"bias must have shape \(C,\)"),
        (dict(running_mean=torch.zeros(3)), RuntimeError, r"running_mean must have shape \(C,\)"),
        (dict(running_var=torch.ones(5)), RuntimeError, r"running_var must have shape \(C,\)"),
        (dict(running_var=None), RuntimeError, "running_mean and running_var must both be given"),
        (dict(eps=0.0), ValueError, "eps must be positive, got 0"),
        (dict(eps=-1e-3), ValueError, "eps must be positive"),
        (dict(activation="gelu"), ValueError, "unknown activation 'gelu'"),
        (dict(input=torch.randn(1, c, 1, 1)), ValueError, "Expected more than 1 value per channel when training"),
        (dict(input=torch.randn(1, c)), ValueError, "Expected more than 1 value per channel when training"),
        (dict(input=torch.randn(4)), RuntimeError, "input must have at least 2 dimensions"),
        (dict(weight=torch.ones(c, dtype=torch.float64)), RuntimeError, "weight must have the input's dtype"),
        (dict(input=x.half(), running_mean=torch.zeros(c, dtype=torch.float64), weight=None, bias=None),
         RuntimeError, "running_mean must have the input's dtype"),
        (dict(input=x.int()), RuntimeError, "input must be float32, float16, bfloat16 or float64"),
        (dict(training=False, running_mean=None, running_var=None), RuntimeError,
         "running_mean must be defined in evaluation mode"),
    ]
    if GPU:
        cases.append((dict(weight=torch.ones(c, device="cuda")), RuntimeError, "weight must be on the input's device"))
    return [(dict(good, **change), error, message) for change, error, message in cases]


@pytest.mark.parametrize("kwargs, error, message", _invalid_cases())
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_invalid_arguments(backend, device, kwargs, error, message):
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) and k == "input" else v for k, v in kwargs.items()}
    if device != "cpu":
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with fastconv.backend(backend), pytest.raises(error, match=message):
        fastconv.ops.batch_norm_act(**kwargs)


def test_invalid_arguments_under_compile():
    compiled = torch.compile(fastconv.ops.batch_norm_act, fullgraph=True)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"weight must have shape \(C,\)"):
        compiled(torch.randn(2, 4, 3, 3), torch.ones(5), None, None, None, True, 0.1, 1e-5, None)


# --- fold_bn ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups, conv_bias, affine", [(1, True, True), (2, False, True), (4, False, False)])
def test_fold_bn_equals_conv_then_bn_in_eval(groups, conv_bias, affine):
    conv = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=conv_bias).double()
    bn = torch.nn.BatchNorm2d(8, affine=affine).double()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    bn.eval()
    fused = fastconv.nn.fold_bn(conv, bn)
    assert isinstance(fused, torch.nn.Conv2d) and fused.bias is not None and fused is not conv
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-10, atol=1e-10)


def test_fold_bn_invalid():
    conv = torch.nn.Conv2d(4, 8, 3)
    with pytest.raises(ValueError, match=r"bn.num_features \(6\) must equal conv.out_channels \(8\)"):
        fastconv.nn.fold_bn(conv, torch.nn.BatchNorm2d(6))
    with pytest.raises(ValueError, match="no running statistics"):
        fastconv.nn.fold_bn(conv, torch.nn.BatchNorm2d(8, track_running_stats=False))
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d"):
        fastconv.nn.fold_bn(torch.nn.Linear(4, 8), torch.nn.BatchNorm2d(8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape, channels", [((2, 20, 5, 7), 13), ((1, 33, 4, 1), 17), ((3, 9, 1, 1), 4)],
                         ids=["batch2", "batch1-width1", "1x1-maps"])
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_cpu_eval_reads_a_channel_prefix_of_a_wider_channels_last_tensor(shape, channels, dtype, activation):
    """Eval on the CPU reads a channels_last channel slice (DenseNet's block buffer: each layer normalises a prefix
    of it) in place, row by row, with no copy of the input, and writes a dense channels_last output; against
    float64. Training still works on such a view (it copies it dense first)."""
    whole = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    whole[:, channels:] = float("nan")  # never read
    x = whole[:, :channels]
    args = make_args(x.shape, dtype=dtype, training=False, activation=activation)
    args[0] = x
    with fastconv.backend("cpu"), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                         record_shapes=True) as prof:
        fastconv.ops.batch_norm_act(*args)
    copies = [e.input_shapes for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
    assert not any(list(x.shape) in shapes for shapes in copies), copies  # (the running statistics are copied)
    check_against_reference("cpu", args, dtype)
    assert fastconv.ops.batch_norm_act(*args).is_contiguous(memory_format=torch.channels_last) or channels == 1
    train_args = make_args(x.shape, dtype=dtype, training=True, activation=activation)
    train_args[0] = x
    check_against_reference("cpu", train_args, dtype)


@pytest.mark.parametrize("grad_mode", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("backend, device", FAST_BACKENDS)
def test_eval_writes_nothing_and_training_bumps_versions(backend, device, grad_mode):
    """Eval writes nothing: the running statistics keep their values and versions (the version-bump kernels bump
    only where the op writes), and the output matches float64; training writes them and bumps their versions,
    as F.batch_norm does, with or without grad mode."""
    args = make_args((2, 6, 5, 7), device=device, training=False, activation="relu", requires_grad=grad_mode)
    rm, rv = args[3], args[4]
    before = (rm.clone(), rv.clone(), rm._version, rv._version)
    with torch.set_grad_enabled(grad_mode):
        check_against_reference(backend, args, torch.float32, grad=grad_mode)
    assert (rm._version, rv._version) == before[2:]
    torch.testing.assert_close(rm, before[0], rtol=0, atol=0)
    torch.testing.assert_close(rv, before[1], rtol=0, atol=0)
    args[5] = True
    with torch.set_grad_enabled(grad_mode):
        run(backend, args)
    assert rm._version > before[2] and rv._version > before[3]


def _subset_sample(weight, bias, running, training, name):
    channels = 3
    args = (torch.randn(2, channels, 3, 4) * 2 + 0.5, torch.rand(channels) + 0.5 if weight else None,
            torch.randn(channels) if bias else None, torch.randn(channels) if running else None,
            torch.rand(channels) + 0.5 if running else None, training, 0.1, 1e-5, "silu")
    return Sample(args, name, grad=tuple(i for i in range(3) if args[i] is not None))


SUBSET_SAMPLES = [
    _subset_sample(True, True, True, True, "affine-train"),
    _subset_sample(False, True, True, True, "bias-only-train"),  # bias is the second edge, not the third
    _subset_sample(True, False, False, True, "weight-only-no-running"),
    _subset_sample(True, True, True, False, "affine-eval"),
]
SUBSET_HARNESS = OpHarness("batch_norm_act", fastconv.ops.batch_norm_act, lambda *args: reference64(*args)[0])


# The C++ op's autograd (csrc/autograd.cpp) maps graph edges to arguments: every subset of gradients.
@pytest.mark.parametrize("sample", SUBSET_SAMPLES, ids=[s.name for s in SUBSET_SAMPLES])
@pytest.mark.parametrize("backend, device", CPP_BACKENDS)
def test_grad_subsets(backend, device, sample):
    SUBSET_HARNESS.check_grad_subsets(sample, backend, device)
