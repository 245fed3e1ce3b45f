import pytest
import torch
import torchvision

import fastconv
from fastconv.models.dcn_resnet import ModulatedDeformConv2d, dcn_resnet50, load_resnet50_state_dict


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    model = dcn_resnet50().eval()
    load_resnet50_state_dict(model, reference.state_dict())
    return reference, model


def test_keys_are_resnet50s_plus_conv_offset(pair):
    reference, model = pair
    keys, reference_keys = set(model.state_dict()), set(reference.state_dict())
    assert reference_keys <= keys
    extra = keys - reference_keys
    assert extra and all(".conv2.conv_offset." in k for k in extra)
    assert {k.split(".")[0] for k in extra} == {"layer2", "layer3", "layer4"}
    assert len(extra) == 2 * (4 + 6 + 3)  # weight and bias of every Bottleneck conv2 in stages 3-5


def test_starts_equal_to_resnet50(pair):
    reference, model = pair
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_offsets_learn():
    """The zero-initialised offset branch receives gradient, so training moves the sampling points."""
    layer = ModulatedDeformConv2d(8, 8, 3, padding=1)
    out = layer(torch.randn(1, 8, 6, 6))
    out.square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0


def test_rejects_foreign_state_dict():
    model = dcn_resnet50()
    bad = torchvision.models.resnet50().state_dict()
    bad.pop("fc.bias")
    with pytest.raises(RuntimeError, match="missing \\['fc.bias'\\]"):
        load_resnet50_state_dict(model, bad)


def test_registered_and_tested_here_not_in_the_parity_zoo():
    """Registered like every builder; it has no torchvision/timm namesake, so test_zoo's parity tests skip it
    and this file compares it with resnet50 instead."""
    from test_zoo import NAMES

    assert "dcn_resnet50" in fastconv.models.list_models()
    assert isinstance(fastconv.models.get_model("dcn_resnet50"), torch.nn.Module)
    assert "dcn_resnet50" not in NAMES
