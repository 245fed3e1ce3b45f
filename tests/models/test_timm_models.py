"""The timm-compatible networks beyond what test_zoo.py checks for every registered model: the Inception and
Xception blocks trained one step against timm's (the whole nets are HEAVY there, eval only), MobileNet v1's
width and resolution multipliers, timm pretrained tags through weights=, torch.compile, and fastconv without
timm."""
import importlib
import subprocess
import sys
from functools import partial

import pytest
import torch

from fastconv import models
from test_zoo import randomize_batch_norm
from tolerances import DEEP_NETWORK_GRAD_FLOAT64, TOLERANCES

timm = pytest.importorskip("timm")
# The modules, not the builders of the same name that their packages export.
timm_v4 = importlib.import_module("timm.models.inception_v4")
timm_irv2 = importlib.import_module("timm.models.inception_resnet_v2")
timm_xception = importlib.import_module("timm.models.xception")
v4 = importlib.import_module("fastconv.models.inception_v4")
irv2 = importlib.import_module("fastconv.models.inception_resnet_v2")
xception = importlib.import_module("fastconv.models.xception")

# timm's Inception conv block (as InceptionV4/InceptionResnetV2 build it): conv, BN eps 1e-3, ReLU.
timm_conv_block = partial(timm.layers.ConvNormAct, padding=0, norm_layer="batchnorm2d", act_layer="relu",
                          norm_kwargs=dict(eps=1e-3), act_kwargs=dict(inplace=True))

# (ours, timm's, constructor kwargs, input channels): every block type of both Inception nets.
INCEPTION_BLOCKS = {
    "v4.Mixed3a": (v4.Mixed3a, timm_v4.Mixed3a, {}, 64),
    "v4.Mixed4a": (v4.Mixed4a, timm_v4.Mixed4a, {}, 160),
    "v4.Mixed5a": (v4.Mixed5a, timm_v4.Mixed5a, {}, 192),
    "v4.InceptionA": (v4.InceptionA, timm_v4.InceptionA, {}, 384),
    "v4.ReductionA": (v4.ReductionA, timm_v4.ReductionA, {}, 384),
    "v4.InceptionB": (v4.InceptionB, timm_v4.InceptionB, {}, 1024),
    "v4.ReductionB": (v4.ReductionB, timm_v4.ReductionB, {}, 1024),
    "v4.InceptionC": (v4.InceptionC, timm_v4.InceptionC, {}, 1536),
    "irv2.Mixed5b": (irv2.Mixed5b, timm_irv2.Mixed_5b, {}, 192),
    "irv2.Block35": (irv2.Block35, timm_irv2.Block35, {"scale": 0.17}, 320),
    "irv2.Mixed6a": (irv2.Mixed6a, timm_irv2.Mixed_6a, {}, 320),
    "irv2.Block17": (irv2.Block17, timm_irv2.Block17, {"scale": 0.10}, 1088),
    "irv2.Mixed7a": (irv2.Mixed7a, timm_irv2.Mixed_7a, {}, 1088),
    "irv2.Block8": (irv2.Block8, timm_irv2.Block8, {"scale": 0.20}, 2080),
    "irv2.Block8_no_relu": (irv2.Block8, timm_irv2.Block8, {"no_relu": True}, 2080),
}


@pytest.mark.parametrize("block", INCEPTION_BLOCKS)
def test_inception_block_train_step_and_eval_equal_timm(block):
    ours_class, timm_class, kwargs, channels = INCEPTION_BLOCKS[block]
    reference = timm_class(conv_block=timm_conv_block, **kwargs).double()
    randomize_batch_norm(reference)
    ours = ours_class(**kwargs).double()
    # 5x5: every unpadded/strided 3x3 still fits
    check_train_step_and_eval(ours, reference, torch.randn(2, channels, 5, 5, dtype=torch.float64))


def check_train_step_and_eval(ours, reference, x):
    """Strict load and equal keys, then equal eval outputs, train outputs, gradients and BN buffers (float64)."""
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    rtol, atol = TOLERANCES[torch.float64]
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)
    out, expected = ours.train()(x), reference.train()(x)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    out.square().mean().backward()
    expected.square().mean().backward()
    grad_rtol, grad_atol = DEEP_NETWORK_GRAD_FLOAT64
    for (key, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"grad of {key}: {m}")
    for (key, a), b in zip(ours.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"buffer {key}: {m}")


# Xception's three kinds of block: (constructor arguments, input channels, input size).
XCEPTION_BLOCKS = {
    "entry_block1": ((64, 128, 2, 2), {"start_with_relu": False}, 64, 7),
    "middle": ((728, 728, 3, 1), {}, 728, 4),
    "exit_block12": ((728, 1024, 2, 2), {"grow_first": False}, 728, 4),
}


@pytest.mark.parametrize("block", XCEPTION_BLOCKS)
def test_xception_block_train_step_and_eval_equal_timm(block):
    args, kwargs, channels, size = XCEPTION_BLOCKS[block]
    reference = timm_xception.Block(*args, **kwargs).double()
    randomize_batch_norm(reference)
    ours = xception.Block(*args, **kwargs).double()
    check_train_step_and_eval(ours, reference, torch.randn(2, channels, size, size, dtype=torch.float64))


def test_xception_num_classes_and_channels_last():
    torch.manual_seed(0)
    reference = timm.create_model("legacy_xception", num_classes=10)
    randomize_batch_norm(reference)
    ours = models.legacy_xception(num_classes=10)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 48, 48).to(memory_format=torch.channels_last)
    with torch.no_grad():
        rtol, atol = TOLERANCES[torch.float32]
        out = ours.eval()(x)
        torch.testing.assert_close(out, reference.eval()(x), rtol=rtol, atol=atol)
    assert out.shape == (1, 10)


def timm_mobilenet_v1(width_multiplier):
    """timm's MobileNet v1 generator at any width (timm registers only a few widths)."""
    from timm.models.efficientnet import _gen_mobilenet_v1

    return _gen_mobilenet_v1("mobilenetv1_100", width_multiplier)


@pytest.mark.parametrize("alpha", [0.5, 0.75])
def test_mobilenet_v1_width_multiplier_equals_timm(alpha):
    torch.manual_seed(0)
    reference = timm_mobilenet_v1(alpha)
    randomize_batch_norm(reference)
    ours = models.mobilenetv1_100(alpha=alpha)
    assert ours.width_multiplier == alpha
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = 8 * torch.randn(1, 3, 64, 64, dtype=torch.float64)  # large enough that ReLU6 clips: a ReLU in its place fails
    with torch.no_grad():
        rtol, atol = TOLERANCES[torch.float64]
        torch.testing.assert_close(ours.double().eval()(x), reference.double().eval()(x), rtol=rtol, atol=atol)
    same = models.mobilenetv1_100(width_multiplier=alpha)
    assert [t.shape for t in same.state_dict().values()] == [t.shape for t in ours.state_dict().values()]


def test_mobilenet_v1_resolution_multiplier_only_sets_the_input_size():
    default, smaller = models.mobilenetv1_100(), models.mobilenetv1_100(rho=4 / 7)
    assert default.input_size == (3, 224, 224) and smaller.input_size == (3, 128, 128)
    assert models.mobilenetv1_100(resolution_multiplier=6 / 7).input_size == (3, 192, 192)
    assert [t.shape for t in smaller.state_dict().values()] == [t.shape for t in default.state_dict().values()]
    with pytest.raises(ValueError, match="width_multiplier=0.5 and alpha=0.75 disagree"):
        models.mobilenetv1_100(width_multiplier=0.5, alpha=0.75)
    with pytest.raises(ValueError, match="rho must be positive|resolution_multiplier must be positive"):
        models.mobilenetv1_100(rho=0)


def test_weights_timm_tag_is_fetched_through_timm(monkeypatch, tmp_path):
    """A timm tag goes through timm.create_model(<name>.<tag>, pretrained=True); stubbed here (no network) by a
    random timm model whose weights must come out in ours, strict. num_classes is checked before fetching."""
    fetched = []

    def create_model_offline(name, pretrained=False, **kwargs):
        fetched.append((name, pretrained))
        return timm.models.efficientnet._gen_mobilenet_v1("mobilenetv1_100", 1.0, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model_offline)
    torch.manual_seed(0)
    ours = models.mobilenetv1_100(weights="ra4_e3600_r224_in1k")
    assert fetched == [("mobilenetv1_100.ra4_e3600_r224_in1k", True)]
    torch.manual_seed(0)
    expected = create_model_offline("mobilenetv1_100").state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, expected[key]), key
    models.mobilenetv1_100(weights="mobilenetv1_100.ra4_e3600_r224_in1k")  # the full name works too
    with pytest.raises(ValueError, match="'num_classes' expected value 1000 but got 10"):
        models.mobilenetv1_100(weights="ra4_e3600_r224_in1k", num_classes=10)
    with pytest.raises(ValueError, match="neither a file nor a timm pretrained tag of mobilenetv1_100"):
        models.mobilenetv1_100(weights="no_such_tag")
    assert len(fetched) == 3  # the failing calls fetched nothing
    path = tmp_path / "checkpoint.pth"
    torch.save(ours.state_dict(), path)  # a local file is loaded, not looked up in timm
    assert torch.equal(models.mobilenetv1_100(weights=str(path)).classifier.weight, ours.classifier.weight)


def test_compile_fullgraph_legacy_xception():
    """One graph, no breaks, through the fake kernels of the depthwise op. aot_eager, not inductor: inductor's
    C++ code generation for Xception's ~60 fused regions takes 2+ minutes on 2 shared cores, and inductor
    with fastconv's ops is covered by test_zoo.py's ShuffleNet compile test."""
    model = models.legacy_xception(num_classes=10).eval()
    randomize_batch_norm(model)
    x = torch.randn(1, 3, 48, 48)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        rtol, atol = TOLERANCES[torch.float32]
        torch.testing.assert_close(compiled(x), model(x), rtol=rtol, atol=atol)


def test_fastconv_works_without_timm():
    """timm is a test-only dependency: with it unimportable, fastconv imports, builds and runs these models."""
    script = (
        "import sys; sys.modules['timm'] = None\n"
        "import torch, fastconv\n"
        "model = fastconv.models.legacy_seresnet50(num_classes=3).eval()\n"
        "assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)\n"
        "fastconv.optimize(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))\n"
        "try:\n"
        "    fastconv.models.legacy_xception(weights='tf_in1k')\n"
        "except ImportError as error:\n"
        "    assert 'pip install timm' in str(error)\n"
        "else:\n"
        "    raise AssertionError('expected an ImportError naming timm')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
