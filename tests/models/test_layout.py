"""The zoo's compute layout (fastconv/models/_layout.py): the depthwise/grouped nets compute in channels_last in
eval on the CPU and in the caller's layout in training; the dense-convolution nets keep the caller's layout."""
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


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x0_5", "mobilenet_v3_small", "shufflenet_v1_x0_5"])
def test_eval_on_the_cpu_computes_in_channels_last(name):
    model = models.get_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    assert first_conv_input_layout(model.eval(), x), "eval: the NCHW input should run in channels_last"
    assert not first_conv_input_layout(model.train(), x), "training keeps the caller's layout"
    assert x.is_contiguous(), "the caller's tensor is not modified"


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv1_100"])
def test_dense_convolution_nets_keep_the_callers_layout(name):
    model = models.get_model(name, num_classes=10).eval()
    assert not first_conv_input_layout(model, torch.randn(2, 3, 64, 64))
