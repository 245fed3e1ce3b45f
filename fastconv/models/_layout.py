"""The memory layout the zoo computes in.

The models take NCHW input like torchvision's. In eval on the CPU most of them compute in channels_last: a
forward pre-hook that their builders install converts a 4-D input once, and every later layer keeps that
layout (fastconv's ops return their input's layout, and so do oneDNN's convolutions, pooling and batch norm).
channels_last is the layout fastconv's CPU depthwise kernel is fastest in (vectorised over channels, each
loaded pixel feeding several outputs); it spares oneDNN the NCHW -> blocked -> NCHW reorders it runs around
every NCHW convolution; and in it eval convolutions run oneDNN on weights reordered once and kept
(fastconv.ops.conv2d_act.PackedWeight), where ATen reorders the weight on every call. Whether the layout pays
depends on the network and the batch, so a builder names the smallest batch from which its network converts
(`min_batch`; ALWAYS = from batch 1). Measured on this project's 2-core AMD EPYC CPU (AVX-512), 2 threads,
fastconv's model, NCHW time / channels_last time at batch 1 (benches/RESULTS.md):
  - MobileNetV2 26.9 -> 12.1 ms, ShuffleNetV2 x1.0 13.7 -> 9.0, MobileNetV3-Large 14.8 -> 11.3, ShuffleNetV1
    14.3 -> 9.3 (an earlier session); GoogLeNet 1.75x (1.93x at batch 32), DenseNet-121 1.19x, VGG-11-BN 1.15x,
    Inception-v3 1.19x, Inception-v4 1.12x, Xception 1.22x.
  - With the prepacked weights: ResNet-50 1.39x, ResNet-18 1.51x, ResNeXt-50 1.23x, Wide-ResNet-50-2 1.33x,
    SE-ResNet-50 1.32x, AlexNet 1.40x, MobileNetV1 1.35x, VGG-11 1.23x. Before them (ATen's convolution in
    both layouts) these lost at batch 1 (ResNet-50 0.88x, AlexNet 0.97x, MobileNetV1 0.89x) and converted
    only from batch 4.
So every network converts from batch 1 now.
DeepLabV3 computes in channels_last too (ASPP's concatenation keeps it), and its dense output maps come back in
the caller's layout, converted at the head's resolution before the upsampling.
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


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where a 4-D x is channels_last and not also NCHW-contiguous (C == 1 or 1x1 maps are both),
    else contiguous_format: the layout to give a tensor built from x (DeepLabV3's outputs, DenseNet's buffers)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# The smallest batch from which a network computes in channels_last (see the module docstring).
ALWAYS = 1


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
