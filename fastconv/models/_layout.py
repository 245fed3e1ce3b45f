"""The memory layout the zoo computes in.

The models take NCHW input like torchvision's. In eval on the CPU most of them compute in channels_last: a
forward pre-hook that their builders install converts a 4-D input once, and every later layer keeps that
layout (fastconv's ops return their input's layout, and so do oneDNN's convolutions, pooling and batch norm).
channels_last is the layout fastconv's CPU depthwise kernel is fastest in (vectorised over channels, each
loaded pixel feeding several outputs), and it spares oneDNN the NCHW -> blocked -> NCHW reorders it runs around
every NCHW convolution. Whether that pays depends on the network and the batch; a builder names the smallest
batch from which its network converts (ALWAYS or FROM_BATCH_4). Measured on this project's 2-core AMD EPYC
CPU (AVX-512), 2 threads, fastconv's model, NCHW time / channels_last time (benches/RESULTS.md):
  - ALWAYS: MobileNetV2 26.9 -> 12.1 ms, ShuffleNetV2 x1.0 13.7 -> 9.0, MobileNetV3-Large 14.8 -> 11.3,
    ShuffleNetV1 14.3 -> 9.3 (batch 1, an earlier session); GoogLeNet 1.75x at batch 1 and 1.93x at 32,
    DenseNet-121 1.19x at 1, 4 and 32, VGG-11-BN 1.15x at 1, Inception-v3 1.19x, Inception-v4 1.12x,
    Xception 1.22x at 1.
  - FROM_BATCH_4 (slower in channels_last at batch 1, faster from batch 4): ResNet-50 0.88x at batch 1, 0.96x
    at 2, 1.06x at 4, 1.13x at 8, 1.20x at 32; ResNet-18 0.97x / 1.07x / 1.16x at 1 / 4 / 8, ResNeXt-50
    0.84x / 1.07x / 1.12x, Wide-ResNet-50-2 0.85x / 1.02x / 1.02x, SE-ResNet-50 0.96x / 1.03x / 1.10x, AlexNet
    0.97x / 1.17x / 1.14x, MobileNetV1 0.89x / 1.05x / 1.20x.
DeepLabV3 keeps the caller's layout: its output is a dense map, which would come back channels_last.
The classifiers' outputs are (N, classes) logits either way.

Training keeps the caller's layout: dropout draws its mask in memory order, so a channels_last run would drop
other activations than torchvision's NCHW run with the same seed. CUDA keeps it too (not measured yet).
"""
import torch

CHANNELS_LAST_DEVICES = ("cpu",)


def wants_channels_last(x) -> bool:
    """A 4-D floating-point tensor on a device where the zoo computes in channels_last."""
    return (isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()
            and x.device.type in CHANNELS_LAST_DEVICES)


# The smallest batch from which a network computes in channels_last (see the module docstring).
ALWAYS = 1
FROM_BATCH_4 = 4


class _ToChannelsLast:
    """Forward pre-hook, in eval: the first positional argument in channels_last (a no-op when it already is)
    once its batch reaches `min_batch`."""

    def __init__(self, min_batch: int):
        self.min_batch = min_batch

    def __call__(self, module, args):
        if not module.training and args and wants_channels_last(args[0]) and args[0].shape[0] >= self.min_batch:
            return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
        return None


def compute_in_channels_last(model: torch.nn.Module, min_batch: int = ALWAYS) -> torch.nn.Module:
    """Install the conversion on `model` (see the module docstring); returns `model`."""
    model.register_forward_pre_hook(_ToChannelsLast(min_batch))
    return model
