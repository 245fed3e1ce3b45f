"""The memory layout the zoo computes in.

The models take NCHW input like torchvision's. The depthwise and grouped-convolution nets (MobileNet v2/v3,
ShuffleNet v1/v2) compute in channels_last in eval on the CPU: a forward pre-hook that their builders install
converts a 4-D input once, and every later layer keeps that layout (fastconv's ops return their input's layout,
and so do oneDNN's convolutions, pooling and batch norm). channels_last is the layout fastconv's CPU depthwise
kernel is fastest in (vectorised over channels, each loaded pixel feeding several outputs), and it spares oneDNN
the NCHW -> blocked -> NCHW reorders it runs around every NCHW convolution. Measured on this project's 2-core
CPU, batch 1, 2 threads, the model's own time in NCHW vs channels_last: MobileNetV2 26.9 -> 12.1 ms,
ShuffleNetV2 x1.0 13.7 -> 9.0, MobileNetV3-Large 14.8 -> 11.3, ShuffleNetV1 14.3 -> 9.3; but ResNet-50 67.6 ->
70.1 and MobileNetV1 12.2 -> 12.5, so the dense-convolution nets keep the caller's layout (benches/RESULTS.md).
The outputs are (N, classes) logits either way.

Training keeps the caller's layout: dropout draws its mask in memory order, so a channels_last run would drop
other activations than torchvision's NCHW run with the same seed. CUDA keeps it too (not measured yet).
"""
import torch

CHANNELS_LAST_DEVICES = ("cpu",)


def wants_channels_last(x) -> bool:
    """A 4-D floating-point tensor on a device where the zoo computes in channels_last."""
    return (isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()
            and x.device.type in CHANNELS_LAST_DEVICES)


def _to_channels_last(module, args):
    """Forward pre-hook, in eval: the first positional argument in channels_last (a no-op when it already is)."""
    if not module.training and args and wants_channels_last(args[0]):
        return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
    return None


def compute_in_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Install the conversion on `model` (see the module docstring); returns `model`."""
    model.register_forward_pre_hook(_to_channels_last)
    return model
