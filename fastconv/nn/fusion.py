import copy

import torch


@torch.no_grad()
def fold_bn(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.nn.Conv2d:
    """A new ``nn.Conv2d`` equal to ``bn(conv(x))`` with ``bn`` in eval mode (its running statistics), like
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``; ``conv`` and ``bn`` are left untouched.

    ``weight' = weight * s`` per output channel and ``bias' = (bias - running_mean) * s + bn.bias`` with
    ``s = bn.weight / sqrt(running_var + eps)``, computed in float64 and stored in the conv's dtype. The
    result always has a bias. Works for any ``groups``/stride/padding/dilation (the fold is per output
    channel). Use it for inference: training-mode BN normalises with batch statistics, which no conv equals.
    """
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"fold_bn: conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fold_bn: bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn has no running statistics (track_running_stats=False): nothing to fold")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"fold_bn: bn.num_features ({bn.num_features}) must equal conv.out_channels ({conv.out_channels})"
        )
    fused = copy.deepcopy(conv)
    weight = conv.weight.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    fused.weight = torch.nn.Parameter((weight * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype),
                                      requires_grad=conv.weight.requires_grad)
    fused.bias = torch.nn.Parameter(((bias - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype),
                                    requires_grad=conv.weight.requires_grad)
    return fused
