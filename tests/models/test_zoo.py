"""Registry-driven model tests: every registered fastconv model that has a reference is checked against it
because it is registered. The reference is torchvision's builder of the same name (REFERENCE_NAMES maps
aliases), else timm's. Models defined only here (lenet5, smartnet, ...) are tested in test_own_models.py."""
import pytest
import torch
import torchvision

import fastconv
from fastconv import models
from tolerances import DEEP_NETWORK_GRAD_FLOAT64, TOLERANCES

REFERENCE_NAMES = {"shufflenet_v2": "shufflenet_v2_x1_0"}
# Small inputs keep the file fast on 2 cores; every listed net reduces 64 px to at least 2x2 before pooling.
RESOLUTION = 64


def reference_builder(name):
    """torchvision's builder for `name`, else timm's, else None (a model fastconv defines itself)."""
    reference_name = REFERENCE_NAMES.get(name, name)
    if reference_name in torchvision.models.list_models():
        return lambda **kwargs: torchvision.models.get_model(reference_name, **kwargs)
    try:
        import timm
    except ImportError:
        return None
    if reference_name in timm.list_models():
        return lambda **kwargs: timm.create_model(reference_name, pretrained=False, **kwargs)
    return None


NAMES = [name for name in models.list_models() if reference_builder(name) is not None]
# The deepest and widest variants share their blocks with a smaller registered model: their keys and eval
# outputs are checked, the (slow on 2 cores) training step and layout variants are left to the small ones.
# Inception v4, Inception-ResNet v2 and Xception have no small sibling (timm's float64 depthwise convolutions
# alone take a minute for Xception's step): test_timm_models.py trains each of their blocks.
HEAVY = {"resnet101", "resnet152", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2",
         "legacy_seresnet101", "legacy_seresnet152", "legacy_seresnext50_32x4d", "inception_v4", "inception_resnet_v2",
         "legacy_xception"}
LIGHT = [n for n in NAMES if n not in HEAVY]
# Inputs other than the defaults (RESOLUTION, 32 px for HEAVY ones). Inception v4 and Inception-ResNet v2 do
# not pad their stems: 75 px, their minimum, reaches a 1x1 grid; 48 px keeps a 2x2 grid before pooling in
# Xception and the SENets at about half the cost of 64 px.
RESOLUTIONS = {"inception_v4": 75, "inception_resnet_v2": 75, "legacy_xception": 48, "legacy_seresnet50": 48,
               "legacy_seresnext50_32x4d": 48}


def input_size(name):
    return RESOLUTIONS.get(name, 32 if name in HEAVY else RESOLUTION)


def pair(name, **kwargs):
    """(fastconv model, torchvision model) with the torchvision weights loaded into ours, strict."""
    torch.manual_seed(0)
    reference = reference_builder(name)(**kwargs)
    ours = models.get_model(name, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def randomize_batch_norm(model):
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity.

    The variances keep each BN's gain weight / sqrt(var) mostly below 1: with gains up to 2 (var from 0.5),
    the activations of SE-ResNet-152 grow to ~1e4 and its SE gates (a sigmoid of them) amplify a 1e-16
    relative change of the input to 1e-5 of the logits, so no float64 comparison could be meaningful."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(1.0, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_equal_reference(name):
    ours, reference = pair(name)
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())


@pytest.mark.parametrize("name", NAMES)
def test_eval_output_equals_reference(name):
    """In float64: deep nets with random BN statistics amplify float32 rounding (resnet101's output moves by
    ~1e-6 relative under a 1e-7 relative input change), which would hide real differences in noise. The
    float32 eval check is test_num_classes_and_channels_last, on the shallower models."""
    ours, reference = pair(name)
    randomize_batch_norm(reference)
    ours.load_state_dict(reference.state_dict())
    ours.double(), reference.double()
    batch = 1 if name in HEAVY else 2  # float64 convs are slow on the CPU
    x = torch.randn(batch, 3, input_size(name), input_size(name), dtype=torch.float64)
    with torch.no_grad():
        rtol, atol = TOLERANCES[torch.float64]
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", LIGHT)
def test_train_step_equals_reference(name):
    """In float64, for the reason given in test_eval_output_equals_reference: fastconv's BN statistics
    (batch_norm_act) sum in another order than ATen's, and deep nets amplify float32 rounding."""
    ours, reference = pair(name)
    ours.double(), reference.double()
    x = torch.randn(2, 3, input_size(name), input_size(name), dtype=torch.float64)
    torch.manual_seed(1)  # the same dropout masks in both
    out = ours.train()(x)
    torch.manual_seed(1)
    expected = reference.train()(x)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    out.square().mean().backward()
    expected.square().mean().backward()
    grad_rtol, grad_atol = DEEP_NETWORK_GRAD_FLOAT64
    for (key, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"grad of {key}: {m}")
    for (key, a), b in zip(ours.named_buffers(), reference.buffers()):  # BN running statistics
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"buffer {key}: {m}")


@pytest.mark.parametrize("name", LIGHT)
def test_num_classes_and_channels_last(name):
    ours, reference = pair(name, num_classes=10)
    x = torch.randn(1, 3, input_size(name), input_size(name)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = ours.eval()(x)
        rtol, atol = TOLERANCES[torch.float32]
        torch.testing.assert_close(out, reference.eval()(x), rtol=rtol, atol=atol)
    assert out.shape == (1, 10)


def test_reference_backend_runs_plain_aten():
    model = models.shufflenet_v2_x0_5().eval()
    x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad(), fastconv.backend("reference"):
        expected = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_weights_from_a_local_file_and_num_classes_check(tmp_path):
    reference = torchvision.models.shufflenet_v2_x0_5(num_classes=7)
    path = tmp_path / "checkpoint.pth"
    torch.save(reference.state_dict(), path)
    ours = models.shufflenet_v2_x0_5(weights=str(path), num_classes=7)
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    weights = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
    with pytest.raises(ValueError, match="'num_classes' expected value 1000 but got 7"):
        models.shufflenet_v2_x0_5(weights=weights, num_classes=7)


def test_registry():
    assert "shufflenet_v2" in models.list_models()
    assert isinstance(models.get_model("shufflenet_v2"), models.ShuffleNetV2)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(models.shufflenet_v2_x1_0)
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("resnet9000")


def test_compile_fullgraph_shufflenet_v2():
    model = models.shufflenet_v2_x0_5().eval()
    x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        rtol, atol = TOLERANCES[torch.float32]
        torch.testing.assert_close(compiled(x), model(x), rtol=rtol, atol=atol)
