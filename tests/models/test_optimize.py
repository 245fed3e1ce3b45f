"""fastconv.optimize on torchvision models: blocks swapped, parameters kept, outputs unchanged."""
import pytest
import torch
import torchvision

import fastconv
from test_zoo import HEAVY, randomize_batch_norm, resolution
from tolerances import TOLERANCES

# builder -> module classes that must have been swapped (every other model: at least one swap)
MODELS = {
    "shufflenet_v2_x0_5": {"InvertedResidual", "Sequential"},
    "mobilenet_v2": {"Conv2dNormActivation", "InvertedResidual"},
    "mobilenet_v3_small": {"Conv2dNormActivation"},
    "resnet18": {"BasicBlock", "ResNet"},
    "resnext50_32x4d": {"Bottleneck", "ResNet"},
    "alexnet": {"AlexNet"},
    "vgg11_bn": {"VGG"},
    "googlenet": {"BasicConv2d"},
    "inception_v3": {"BasicConv2d"},
    "densenet121": {"DenseNet", "_DenseBlock", "_DenseLayer", "_Transition"},
    "mobilenet_v3_large": {"Conv2dNormActivation", "InvertedResidual", "SqueezeExcitation"},
    "deeplabv3_resnet50": {"Bottleneck", "DeepLabHead", "ASPP", "ASPPConv", "ASPPPooling", "FCNHead", "Sequential"},
}
KWARGS = {"deeplabv3_resnet50": dict(weights_backbone=None, aux_loss=True)}
# Registry-driven: every zoo model that torchvision builds too.
NAMES = [name for name in fastconv.models.list_models() if name in torchvision.models.list_models()]


def _outputs(output):
    return list(output.values()) if isinstance(output, dict) else [output]


@pytest.mark.parametrize("name", NAMES)
def test_optimize_keeps_outputs(name):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, num_classes=10, **KWARGS.get(name, {}))
    randomize_batch_norm(reference)
    optimized = fastconv.optimize(reference)
    assert set(optimized.fastconv_swapped) >= MODELS.get(name, set()) and optimized.fastconv_swapped
    assert not hasattr(reference, "fastconv_swapped"), "inplace=False must leave the original alone"
    assert list(optimized.state_dict()) == list(reference.state_dict())
    batch = 1 if name in HEAVY else 2  # float64 convolutions are slow on the CPU (as test_zoo)
    x = torch.randn(batch, 3, resolution(name), resolution(name), dtype=torch.float64)
    optimized.double().eval(), reference.double().eval()
    with torch.no_grad():
        rtol, atol = TOLERANCES[torch.float64]
        for got, want in zip(_outputs(optimized(x)), _outputs(reference(x)), strict=True):
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def test_optimize_trained_model_in_place_and_train_mode():
    model = torchvision.models.resnet18(num_classes=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):  # "a model the user has already trained"
        optimizer.zero_grad()
        model(torch.randn(4, 3, 32, 32)).sum().backward()
        optimizer.step()
    reference = __import__("copy").deepcopy(model)
    same = fastconv.optimize(model, inplace=True)
    assert same is model and type(model).__module__ == "fastconv.models.resnet"
    x = torch.randn(3, 3, 32, 32)
    rtol, atol = TOLERANCES[torch.float32]
    torch.manual_seed(0)
    torch.testing.assert_close(model.train()(x), reference.train()(x), rtol=rtol, atol=atol)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)


def test_optimize_timm_legacy_seresnet50():
    """timm's SENet blocks: SEModule becomes fastconv.nn.SqueezeExcitation (fastconv.ops.squeeze_excite), the
    SE bottlenecks fastconv's (BN folded in eval); parameters, keys and outputs unchanged."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("legacy_seresnet50", pretrained=False, num_classes=10)
    randomize_batch_norm(reference)
    optimized = fastconv.optimize(reference)
    assert optimized.fastconv_swapped == {"SEModule": 16, "SEResNetBottleneck": 16, "Sequential": 9}
    assert all(isinstance(block.se_module, fastconv.nn.SqueezeExcitation) for block in optimized.layer3)
    assert list(optimized.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, resolution("legacy_seresnet50"), resolution("legacy_seresnet50"), dtype=torch.float64)
    optimized.double().eval(), reference.double().eval()
    with torch.no_grad():
        rtol, atol = TOLERANCES[torch.float64]
        torch.testing.assert_close(optimized(x), reference(x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name, from_batch", [("resnet18", 1), ("googlenet", 1), ("mobilenet_v2", 1)])
def test_optimize_computes_in_channels_last_like_the_zoo(name, from_batch):
    """The optimized torchvision classifier converts its input in eval on the CPU from the batch where the zoo's
    model does (fastconv/models/_layout.py); training keeps the caller's layout."""
    model = fastconv.optimize(torchvision.models.get_model(name, num_classes=10))
    assert model.fastconv_channels_last_from_batch == from_batch
    seen = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
        model.eval()(torch.randn(4, 3, 64, 64))
        model.train()(torch.randn(4, 3, 64, 64))
    assert seen == [from_batch == 1, True, False]
    again = fastconv.optimize(model, inplace=True)
    assert len(again._forward_pre_hooks) == 2, "a second optimize installs no second conversion"
