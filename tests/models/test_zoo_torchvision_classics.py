"""What the registry-driven tests (test_zoo.py) cannot reach for AlexNet, VGG, GoogLeNet, Inception-v3,
DenseNet, MobileNetV3 and DeepLabV3: the plain-ATen backend, auxiliary heads at their real size, DenseNet's
memory-efficient variant and legacy checkpoints, and the builders' argument rules."""
import re

import pytest
import torch
import torchvision

import fastconv
from fastconv import models
from test_zoo import output_tensors, pair, randomize_batch_norm, resolution
from tolerances import DEEP_NETWORK_GRAD_FLOAT64, TOLERANCES

ONE_PER_FAMILY = ["alexnet", "vgg11_bn", "googlenet", "inception_v3", "densenet121", "mobilenet_v3_small",
                  "deeplabv3_resnet50"]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_reference_backend_equals_torchvision(name):
    """Under fastconv.backend("reference") every fastconv op is plain ATen: the model must still run and equal
    torchvision's (in float64: random BN statistics make float32 rounding grow through deep nets)."""
    ours, reference = pair(name, num_classes=10)
    randomize_batch_norm(reference)
    ours.load_state_dict(reference.state_dict())
    ours.double(), reference.double()
    x = torch.randn(1, 3, resolution(name), resolution(name), dtype=torch.float64)
    rtol, atol = TOLERANCES[torch.float64]
    with torch.no_grad(), fastconv.backend("reference"):
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)


def assert_train_step_equal(ours, reference, *inputs):
    """Forward in training mode (same dropout masks), then the gradients of every parameter and the buffers."""
    torch.manual_seed(1)
    out = ours.train()(*inputs)
    torch.manual_seed(1)
    expected = reference.train()(*inputs)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    sum(t.square().mean() for t in output_tensors(out)).backward()
    sum(t.square().mean() for t in output_tensors(expected)).backward()
    grad_rtol, grad_atol = DEEP_NETWORK_GRAD_FLOAT64
    for (key, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"{key}: {m}")
    for (key, a), b in zip(ours.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


def test_inception_v3_train_step_under_the_reference_backend():
    """The training-mode wiring (dropout order, BN buffers, gradients) is exact; see TRAIN_CHECKED_ELSEWHERE in
    test_zoo.py for why the fastconv-kernel run of the whole net is not compared at these sizes."""
    ours, reference = pair("inception_v3", aux_logits=False)
    with fastconv.backend("reference"):
        assert_train_step_equal(ours.double(), reference.double(), torch.randn(2, 3, 75, 75, dtype=torch.float64))


def test_inception_v3_auxiliary_head_in_training():
    """The auxiliary classifier runs on Mixed_6e's 17x17 map (a 299 px input): checked on such a map."""
    ours, reference = pair("inception_v3", num_classes=10)
    assert_train_step_equal(ours.AuxLogits.double(), reference.AuxLogits.double(),
                            torch.randn(2, 768, 17, 17, dtype=torch.float64))


def test_googlenet_and_inception_outputs_in_training():
    googlenet = models.googlenet(num_classes=5).train()
    out = googlenet(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torchvision.models.GoogLeNetOutputs) and out.aux_logits1.shape == (2, 5)
    inception = models.inception_v3(num_classes=5, aux_logits=False, init_weights=False).train()
    assert isinstance(inception(torch.randn(2, 3, 75, 75)), torch.Tensor)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_transform_input_equals_torchvision(name):
    ours, reference = pair(name, transform_input=True, aux_logits=False, init_weights=False)
    x = torch.randn(1, 3, resolution(name), resolution(name))
    rtol, atol = TOLERANCES[torch.float32]
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)


def test_densenet_memory_efficient_train_step_equals_reference():
    """Checkpointed bottlenecks (recomputed in backward) give the same outputs, gradients and BN statistics."""
    # A small DenseNet (the same classes as densenet121) keeps this fast. 64 px: the last block still sees 2x2
    # maps (at 32 px its training-mode BN normalises 2 values per channel, which turns the rounding of the
    # transitions' pool-then-conv order into 1e-7 differences).
    config = dict(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16, num_classes=10,
                  memory_efficient=True)
    torch.manual_seed(0)
    reference = torchvision.models.DenseNet(**config)
    ours = models.DenseNet(**config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    assert_train_step_equal(ours.double(), reference.double(), x)


def test_densenet_loads_legacy_checkpoint_keys(tmp_path):
    """torchvision's released DenseNet weights name a layer's modules "norm.1", "conv.2", ...; they load."""
    reference = torchvision.models.densenet121(num_classes=3)
    legacy = {re.sub(r"\.(norm|conv)([12])\.(weight|bias|running_mean|running_var)$", r".\1.\2.\3", k): v
              for k, v in reference.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    path = tmp_path / "densenet121_legacy.pth"
    torch.save(legacy, path)
    ours = models.densenet121(weights=str(path), num_classes=3)
    for (key, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), key


def test_deeplabv3_builder_arguments():
    model = models.deeplabv3_resnet50(weights_backbone=None)
    assert model.aux_classifier is None and model.classifier[-1].out_channels == 21  # torchvision's defaults
    assert not hasattr(model.backbone, "fc") and model.backbone.layer4[1].conv2.dilation == (4, 4)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 20, 24))
    assert list(out) == ["out"] and out["out"].shape == (1, 21, 20, 24)


def test_vgg_features_only_weights_keep_num_classes(monkeypatch):
    """Weights without categories (VGG16's IMAGENET1K_FEATURES) leave num_classes alone; with categories it is
    checked as torchvision does."""
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES
    reference = torchvision.models.vgg16(num_classes=4, init_weights=False)
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, *a, **k: reference.state_dict())
    ours = models.vgg16(weights=weights, num_classes=4)
    assert ours.classifier[-1].out_features == 4
