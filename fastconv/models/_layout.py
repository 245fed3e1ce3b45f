"""The memory layout the zoo computes in.

The models take NCHW input like torchvision's, but in eval on the CPU they compute in channels_last: the first
module (a forward pre-hook that `build` installs on every registered model) converts a 4-D NCHW input once, and every
later layer keeps that layout (fastconv's ops return their input's layout; oneDNN's convolutions, pooling and
batch norm do too). channels_last is the layout fastconv's CPU kernels are written for (depthwise convolution
vectorises over channels with each loaded pixel feeding several outputs), and it spares oneDNN the
NCHW -> blocked -> NCHW reorders it runs around every NCHW convolution. On this project's 2-core CPU, batch 1,
one thread: MobileNetV2 23.0 -> 14.4 ms and ShuffleNetV2 x1.0 12.3 -> 9.7 ms with only the input converted
(converting the weights too changed nothing), ResNet-50 unchanged (benches/RESULTS.md).

Outputs are values, not layouts: classifiers return (N, classes) either way; a model with a dense output
(DeepLabV3) hands it back in its caller's layout. On CUDA the input's layout is kept: the gain there is not
measured yet. In training too: dropout draws its mask in memory order, so a channels_last run would drop other
activations than torchvision's NCHW run with the same seed (and float64 convolutions sum in another order).
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


def in_layout_of(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`tensor` (4-D) in `reference`'s layout: channels_last if the reference is (and is not also plain
    contiguous, as a tensor with one channel or one pixel is), else contiguous."""
    channels_last = reference.is_contiguous(memory_format=torch.channels_last) and not reference.is_contiguous()
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
