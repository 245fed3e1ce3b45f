"""The zoo's compute layout (fastconv/models/_layout.py): channels_last in eval on the CPU, the caller's layout
in training; dense outputs come back in the caller's layout."""
import pytest
import torch

from fastconv import models


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


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x0_5", "resnet18"])
def test_eval_on_the_cpu_computes_in_channels_last(name):
    model = models.get_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    assert first_conv_input_layout(model.eval(), x), "eval: the NCHW input should run in channels_last"
    assert not first_conv_input_layout(model.train(), x), "training keeps the caller's layout"
    assert x.is_contiguous(), "the caller's tensor is not modified"


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dense_outputs_keep_the_callers_layout(memory_format):
    model = models.deeplabv3_resnet50(weights_backbone=None, num_classes=3, aux_loss=True).eval()
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=memory_format)
    assert first_conv_input_layout(model.backbone, x)
    with torch.no_grad():
        out = model(x)
    for key in ("out", "aux"):
        assert out[key].shape == (1, 3, 32, 32)
        assert out[key].is_contiguous(memory_format=memory_format), key
