import pytest
import torch
import torchvision
from torch import nn

import fastconv
from fastconv.nn import Conv2dNormActivation
from fastconv.nn.conv_norm_act import fold_bn_parameters
from tolerances import TOLERANCES

RTOL, ATOL = TOLERANCES[torch.float32]

CONFIGS = {
    "3x3": dict(in_channels=8, out_channels=16),
    "3x3-s2-relu6": dict(in_channels=8, out_channels=16, stride=2, activation_layer=nn.ReLU6),
    "depthwise-relu6": dict(in_channels=12, out_channels=12, groups=12, activation_layer=nn.ReLU6),
    "1x1-linear": dict(in_channels=8, out_channels=24, kernel_size=1, activation_layer=None),
    "1x1-hardswish": dict(in_channels=8, out_channels=24, kernel_size=1, activation_layer=nn.Hardswish),
    "5x5-dilated-silu": dict(in_channels=8, out_channels=8, kernel_size=5, dilation=2, activation_layer=nn.SiLU),
    "unfusable-sigmoid": dict(in_channels=8, out_channels=8, activation_layer=nn.Sigmoid, inplace=None),
    "no-norm": dict(in_channels=8, out_channels=8, norm_layer=None),
}


def randomize(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)


def pair(config):
    torch.manual_seed(0)
    reference = torchvision.ops.misc.Conv2dNormActivation(**CONFIGS[config])
    randomize(reference)
    ours = Conv2dNormActivation(**CONFIGS[config])
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


@pytest.mark.parametrize("config", CONFIGS)
def test_eval_equals_torchvision(config):
    ours, reference = pair(config)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, ours[0].in_channels, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=RTOL, atol=ATOL)
        x_cl = x.to(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(x_cl), reference(x_cl), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("config", ["3x3", "depthwise-relu6"])
def test_train_steps_equal_torchvision(config):
    ours, reference = pair(config)
    ours.train(), reference.train()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(4, ours[0].in_channels, 7, 7)
        for model, opt in ((ours, opt_ours), (reference, opt_ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for (key, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_folded_cache_follows_parameter_changes(layout):
    """The cached fold (and, for channels_last on the CPU, oneDNN's prepacked copy of it) follows every change."""
    ours, reference = pair("3x3")
    ours.eval(), reference.eval()
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=layout)
    with torch.no_grad():
        ours(x)  # fills the cache
        reference[1].running_var.mul_(3)  # a buffer changes (load_state_dict copies in place)
        ours.load_state_dict(reference.state_dict())
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)
        for model in (ours, reference):
            model[0].weight.add_(0.5)  # an optimizer-like in-place update
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)
        for model in (ours, reference):
            model[0].padding = (0, 0)  # the geometry the cached call resolved
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)
        x = torch.randn(3, 8, 7, 5).contiguous(memory_format=layout)  # another input shape
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)
        ours.double(), reference.double()
        torch.testing.assert_close(ours(x.double()), reference(x.double()))


def test_eval_with_gradients_flows_to_parameters():
    ours, reference = pair("3x3-s2-relu6")
    ours.eval(), reference.eval()
    x = torch.randn(2, 8, 9, 9)
    ours(x).sum().backward()
    reference(x).sum().backward()
    for (key, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=RTOL, atol=ATOL, msg=lambda m: f"grad {key}: {m}")


def test_fold_bn_float64():
    conv = nn.Conv2d(3, 5, 3, bias=True).double()
    bn = nn.BatchNorm2d(5).double()
    randomize(bn)
    bn.eval()
    weight, bias = fold_bn_parameters(conv, bn)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, weight, bias), bn(conv(x)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="must equal conv.out_channels"):
        fold_bn_parameters(nn.Conv2d(3, 4, 1), bn)


def test_compile_fullgraph_eval():
    ours, _ = pair("depthwise-relu6")
    ours.eval()
    x = torch.randn(1, 12, 8, 8)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = ours(x)
        torch.testing.assert_close(torch.compile(ours, fullgraph=True)(x), expected, rtol=RTOL, atol=ATOL)


def test_reference_backend_matches():
    ours, reference = pair("1x1-hardswish")
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad(), fastconv.backend("reference"):
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("training", [True, False])
def test_runs_the_fused_ops(training):
    """Eval: one conv2d_act on the folded parameters. Training: the convolution, then batch_norm_act (batch
    statistics and the activation in one op), not ATen's batch_norm."""
    ours, _ = pair("3x3-s2-relu6")
    ours.train(training)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        ours(torch.randn(2, 8, 9, 9))
    names = {event.name for event in profiler.events()}
    expected = "fastconv::batch_norm_act" if training else "fastconv::conv2d_act"
    assert expected in names, sorted(n for n in names if "fastconv" in n or "batch_norm" in n)
    assert not any(n.startswith("aten::batch_norm") or n == "aten::native_batch_norm" for n in names)


def test_conv_constant_prepacks_in_inference_and_keeps_hooks():
    """conv_constant (DenseNet's lone convolutions): in float32 channels_last inference it runs prepacked and equals
    the float64 convolution, follows an in-place weight update, and leaves a convolution with hooks to its module
    call (the hook fires)."""
    from fastconv.nn.conv_norm_act import ConvWeights, conv_constant

    torch.manual_seed(0)
    conv, weights = nn.Conv2d(8, 6, 3, padding=1), ConvWeights()
    x = torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            out = conv_constant(x, conv, weights)
        assert "mkldnn::_convolution_pointwise" in {event.name for event in profiler.events()}
        expected = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        torch.testing.assert_close(out.double(), expected, rtol=RTOL, atol=ATOL)
        with torch.no_grad():
            conv.weight.mul_(-2)
    seen = []
    conv.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad():
        conv_constant(x, conv, weights)
    assert seen == [(2, 6, 7, 7)]


def _hook_doubling(module):
    calls = []

    def hook(mod, args, output):
        calls.append(mod)
        return output * 2

    module.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("member", [0, 1, 2])
def test_hooks_on_members_fire_and_change_the_output(member):
    """A forward hook on the conv, the BN or the activation fires and its returned value counts, as in
    torchvision's block: the fused call (which would skip the members' forwards) steps aside."""
    ours, reference = pair("3x3-s2-relu6")
    ours.eval(), reference.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        ours(x)  # fold and cache first: the hook must be seen after that
        calls, _ = _hook_doubling(ours[member]), _hook_doubling(reference[member])
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["weight_norm", "prune"])
def test_parametrized_or_pruned_convolution(kind):
    """torch.nn.utils.parametrizations (weight computed, not a parameter) and pruning (a pre-hook) used to raise
    KeyError 'weight' in eval."""
    from torch.nn.utils import parametrizations, prune

    ours, reference = pair("3x3")
    for block in (ours, reference):
        if kind == "weight_norm":
            parametrizations.weight_norm(block[0])
        else:
            prune.l1_unstructured(block[0], "weight", 0.5)
        block.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)


def test_replaced_member_is_used():
    ours, reference = pair("3x3")
    ours.eval(), reference.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        ours(x)
        ours[2], reference[2] = nn.GELU(), nn.GELU()
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)


def test_writes_through_data_are_seen_after_a_training_call():
    """In-place writes through .data bump no version counter (old-style training loops). A training-mode call
    drops the fold, so the next eval call folds the written values; between eval calls, invalidate() does."""
    ours, reference = pair("3x3")
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        ours.eval()(x)
        for block in (ours, reference):
            block.train()(x)
            block[0].weight.data.mul_(-1.5)
            block[1].running_var.data.mul_(3)
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=RTOL, atol=ATOL)
        for block in (ours, reference):
            block[0].weight.data.add_(0.25)
        ours._fold.invalidate()
        torch.testing.assert_close(ours(x), reference(x), rtol=RTOL, atol=ATOL)
