"""fastconv.nn.FusedSequential equals torch.nn.Sequential (same keys, outputs, gradients and BN buffers)."""
import copy

import pytest
import torch
from torch import nn

import fastconv
from fastconv.nn import FusedSequential
from tolerances import TOLERANCES


def layers(case):
    torch.manual_seed(0)
    return {
        "conv-bn-relu-pool": [nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                              nn.MaxPool2d(2)],
        "conv-relu6": [nn.Conv2d(4, 8, 3, stride=2, bias=False), nn.ReLU6()],
        "bn-relu-conv (pre-activation)": [nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 1, bias=False)],
        "depthwise-bn-hardswish": [fastconv.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4),
                                   nn.Hardswish()],
        "conv-bn (no activation), silu after dropout": [nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.Dropout(0.5),
                                                         nn.SiLU()],
        "reflect padding, unfusable sigmoid": [nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"),
                                               nn.BatchNorm2d(8), nn.Sigmoid()],
    }[case]


CASES = ["conv-bn-relu-pool", "conv-relu6", "bn-relu-conv (pre-activation)", "depthwise-bn-hardswish",
         "conv-bn (no activation), silu after dropout", "reflect padding, unfusable sigmoid"]


def pair(case):
    reference = nn.Sequential(*layers(case)).double()
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    ours = FusedSequential(*copy.deepcopy(list(reference)))
    assert list(ours.state_dict()) == list(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_equals_sequential(case, channels_last):
    ours, reference = pair(case)
    rtol, atol = TOLERANCES[torch.float64]
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)
    x.requires_grad_(True)
    torch.manual_seed(1)
    out = ours.train()(x)
    (grad_x,) = torch.autograd.grad(out.square().sum(), x)
    torch.manual_seed(1)
    expected = reference.train()(x)
    (expected_grad_x,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=rtol, atol=atol)
    for a, b in zip(ours.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", CASES[:4])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_hooks_on_members_fire(case, training):
    """A forward hook on any member fires and its returned value counts, as in nn.Sequential: a fused step
    with a hooked member runs that member as itself."""
    ours, reference = pair(case)
    rtol, atol = TOLERANCES[torch.float64]
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    for index in range(min(3, len(reference))):
        for model in (ours, reference):
            model.train(training)
        with torch.no_grad():
            ours(x)  # plan and cache before the hook
        calls = []
        handles = [model[index].register_forward_hook(lambda m, args, out: calls.append(m) or out * 2)
                   for model in (ours, reference)]
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x), rtol=rtol, atol=atol, msg=lambda m: f"member {index}: {m}")
        assert len(calls) == 2
        for handle in handles:
            handle.remove()


def test_plan_fuses_the_runs_and_follows_later_changes():
    ours = FusedSequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4),
                           nn.ReLU6(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.SiLU())
    assert [kind for _, _, kind, _ in ours._steps] == ["conv_bn", "module", "bn", "module", "conv"]
    assert [activation for *_, activation in ours._steps] == ["relu", None, "relu6", None, "silu"]
    ours.append(nn.Hardswish())  # the plan must see the new layer: it now applies after the fused conv-silu
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), nn.Sequential(*ours)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_float32_channels_last_inference_equals_sequential(case):
    """float32 channels_last inference on the CPU runs the conv steps on oneDNN's prepacked weights: still equal to
    the float64 Sequential, for another input shape and after an in-place parameter update (which repacks)."""
    ours, reference = pair(case)
    ours.float().eval(), reference.eval()
    rtol, atol = TOLERANCES[torch.float32]
    with torch.no_grad():
        for shape in ((2, 4, 9, 10), (1, 4, 7, 7), (1, 4, 7, 7)):
            x = torch.randn(shape).to(memory_format=torch.channels_last)
            torch.testing.assert_close(ours(x).double(), reference(x.double()), rtol=rtol, atol=atol)
            for a, b in zip(ours.parameters(), reference.parameters()):  # an optimizer-like in-place update
                a.add_(0.25), b.add_(0.25)


@pytest.mark.parametrize("case", ["conv-bn-relu-pool", "conv-relu6"])
def test_inference_runs_prepacked_convolutions(case):
    ours, _ = pair(case)
    ours.float().eval()
    x = torch.randn(2, 4, 9, 10).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        ours(x)
    names = {event.name for event in profiler.events()}
    assert "mkldnn::_convolution_pointwise" in names and "aten::convolution" not in names, sorted(names)


def test_copies_after_inference():
    """After a channels_last inference call the fused steps hold oneDNN tensors, which have no storage: deepcopy
    and torch.save still work (the copies pack again) and give the same outputs."""
    import io

    ours, _ = pair("conv-bn-relu-pool")
    ours.float().eval()
    x = torch.randn(1, 4, 9, 10).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = ours(x)
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        for copied in (copy.deepcopy(ours), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(copied(x), expected, rtol=0, atol=0)


def _shufflenet_branch():
    """A ShuffleNet v2 stride-1 branch (1x1-BN-ReLU, depthwise-BN, 1x1-BN-ReLU) with non-trivial BN statistics."""
    torch.manual_seed(0)
    branch = FusedSequential(nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                             fastconv.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6),
                             nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
    with torch.no_grad():
        for m in branch.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return branch


def _ops_run(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return {e.name for e in profile.events() if e.name.startswith("fastconv::")}


@pytest.mark.parametrize("grad_mode", [False, True], ids=["inference", "grad"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_shuffle_cat_after_fuses_the_last_conv_in_eval(training, grad_mode):
    """shuffle_cat_after(a, x) == shuffle_cat(a, branch(x)). In eval, on a small channels_last input (the CPU GEMM
    path), the last conv-BN-ReLU runs inside shuffle_cat_conv2d_act; in training, conv + batch_norm_act +
    shuffle_cat (batch statistics cannot be folded)."""
    branch = _shufflenet_branch().train(training)
    reference = copy.deepcopy(branch)
    x = torch.randn(2, 12, 5, 6).contiguous(memory_format=torch.channels_last)
    a, b = x.chunk(2, dim=1)
    with torch.set_grad_enabled(grad_mode):
        ran = _ops_run(lambda: branch.shuffle_cat_after(a, b))
        got = branch.shuffle_cat_after(a, b)
        want = fastconv.ops.shuffle_cat(a, nn.Sequential.forward(reference, b))
    rtol, atol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    assert ("fastconv::shuffle_cat_conv2d_act" in ran) == (not training), ran
    assert ("fastconv::shuffle_cat" in ran) == training, ran


def test_shuffle_cat_after_keeps_prepacked_convolutions_on_the_cpu():
    """Above the CPU GEMM's size bound the convolution runs oneDNN prepacked in inference: not fused there."""
    branch = _shufflenet_branch().eval()
    x = torch.randn(64, 12, 112, 112).contiguous(memory_format=torch.channels_last)[:1].expand(40, -1, -1, -1)
    a, b = x.chunk(2, dim=1)
    with torch.inference_mode():
        ran = _ops_run(lambda: branch.shuffle_cat_after(a, b))
    assert "fastconv::shuffle_cat_conv2d_act" not in ran and "fastconv::shuffle_cat" in ran, ran
