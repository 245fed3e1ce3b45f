"""Blocks shared by several model families (kept here so no model file copies another)."""
import warnings

import torch
from torch import nn

from fastconv.models._registry import build, is_checkpoint_path
from fastconv.nn.conv_norm_act import Adoptable, FoldedConvBN, conv_bn_act


class BasicConv2d(Adoptable, nn.Module):
    """torchvision's GoogLeNet / Inception-v3 ``BasicConv2d``: conv (no bias) -> BatchNorm2d(eps=1e-3) -> ReLU,
    with its keys (conv.*, bn.*); one convolution with the BN folded and the ReLU in its epilogue in eval."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self._init_fast_state()

    def _init_fast_state(self):
        self._fold = FoldedConvBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act(x, self.conv, self.bn, "relu", self._fold)


def transform_input_to_inception_range(x: torch.Tensor) -> torch.Tensor:
    """Re-normalise an ImageNet-normalised batch (mean/std per channel) to the [-1, 1] range the ported
    Inception/GoogLeNet weights were trained on (torchvision's ``transform_input=True``)."""
    x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x_ch0, x_ch1, x_ch2), 1)


def build_with_auxiliary_heads(model_fn, weights, progress: bool, auxiliary_heads, aux_logits_default: bool,
                               channels_last_from_batch=None, **kwargs):
    """torchvision's builder rules for GoogLeNet and Inception-v3. With torchvision weights: the input
    transform defaults on, the auxiliary heads are built (the checkpoints hold them) and dropped after loading
    unless `aux_logits` was asked for. Without weights, or with a local checkpoint, kwargs are used as given."""
    pretrained = weights is not None and not is_checkpoint_path(weights)
    wants_aux_logits = kwargs.get("aux_logits", aux_logits_default)
    if pretrained:
        kwargs.setdefault("transform_input", True)
        kwargs.update(aux_logits=True, init_weights=False)
    model = build(model_fn, weights, progress, channels_last_from_batch=channels_last_from_batch, **kwargs)
    if pretrained and not wants_aux_logits:
        model.aux_logits = False
        for name in auxiliary_heads:
            setattr(model, name, None)
    elif pretrained:
        warnings.warn("auxiliary heads in the pretrained model are NOT pretrained, so make sure to train them")
    return model


def residual_relu(out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """relu(out + identity), the end of a residual block. On the CPU without autograd (eval, inference) it is
    one pass in place on `out`, which must be a fresh result the block owns: ATen's fused _add_relu_ (the
    form torchvision's `out += identity; relu(out)` takes in two). That kernel has no derivative and no CUDA
    implementation, so elsewhere it is the two-op form; nor float16/bfloat16 kernels (an internal assert: a
    bfloat16 ResNet-50 in inference, or under CPU autocast, crashed there)."""
    if (out.device.type != "cpu" or out.requires_grad or identity.requires_grad
            or out.dtype not in (torch.float32, torch.float64) or identity.dtype != out.dtype):
        return torch.relu_(out + identity)
    return torch.ops.aten._add_relu_(out, identity)
