"""The zoo's compute layout (fastconv/models/_layout.py): in eval on the CPU the networks compute in channels_last
(from batch 1: every builder measured faster that way); training keeps the caller's layout."""
import pytest
import torch
import torchvision

from fastconv import models
from fastconv.models._layout import compute_in_channels_last
from tolerances import TOLERANCES


def first_conv_input_layout(model, x):
    """Whether the model's layers get a channels_last input: a pre-hook registered after the one the builder
    installs sees what the model's forward receives."""
    seen = []
    handle = model.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x0_5", "mobilenet_v3_small", "shufflenet_v1_x0_5"])
def test_eval_on_the_cpu_computes_in_channels_last(name):
    model = models.get_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    assert first_conv_input_layout(model.eval(), x), "eval: the NCHW input should run in channels_last"
    assert not first_conv_input_layout(model.train(), x), "training keeps the caller's layout"
    assert x.is_contiguous(), "the caller's tensor is not modified"


@pytest.mark.parametrize("name", ["googlenet", "densenet121", "vgg11_bn", "inception_v3", "legacy_xception",
                                  "resnet18", "mobilenetv1_100", "alexnet", "legacy_seresnet50"])
def test_dense_and_residual_nets_use_channels_last_from_batch_1(name):
    model = models.get_model(name, num_classes=10).eval()
    assert first_conv_input_layout(model, torch.randn(1, 3, 80, 80))


def test_channels_last_from_a_batch_size_gives_the_nchw_outputs():
    """A conversion from batch 4 on (compute_in_channels_last's min_batch) leaves batches 1-3 in NCHW and gives the
    same logits whichever layout the batch is computed in: each sample alone (NCHW) and the four together
    (channels_last). float64, so only summation order may differ."""
    model = torchvision.models.resnet18(num_classes=10)
    compute_in_channels_last(model, 4)
    model.eval().double()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    assert not first_conv_input_layout(model, x[:1]) and first_conv_input_layout(model, x)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(batched, single, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_deeplabv3_computes_in_channels_last_and_returns_the_callers_layout(layout):
    """The backbone converts to channels_last and the ASPP head keeps it (its image-level branch is a broadcast,
    which torch.cat would otherwise turn NCHW); the dense output maps come back in the input's layout."""
    model = models.deeplabv3_resnet50(weights_backbone=None, num_classes=3, aux_loss=True).eval()
    seen = []
    model.classifier[0].register_forward_hook(  # ASPP
        lambda module, args, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(1, 3, 48, 40).contiguous(memory_format=layout)
    with torch.no_grad():
        result = model(x)
    assert seen == [True], "ASPP should give the head a channels_last map"
    for name in ("out", "aux"):
        assert result[name].shape == (1, 3, 48, 40)
        assert result[name].is_contiguous(memory_format=layout), name
