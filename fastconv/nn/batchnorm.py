import functools
from typing import Optional

import torch
import torch.nn.functional as F

from fastconv import ops
from fastconv.ops._checks import check_activation

# Each fused activation as a function, out of place (for the output of a module with hooks, which a hook may
# have kept) and in place (_APPLY: applied to a fresh result).
APPLY_OUT_OF_PLACE = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}
_APPLY = {name: functools.partial(function, inplace=True) for name, function in APPLY_OUT_OF_PLACE.items()}


def has_hooks(module: torch.nn.Module) -> bool:
    """Whether `module` has forward hooks or pre-hooks (pruning and the old weight_norm are pre-hooks): a fused
    call that skips its forward would skip them, so such a module runs as itself."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """Drop-in for ``torch.nn.BatchNorm2d`` (same arguments, buffers and state_dict keys, including
    ``num_batches_tracked``) running ``fastconv.ops.batch_norm_act``.

    ``momentum=None`` gives torch's cumulative moving average: the op is passed ``1 / num_batches_tracked``.
    ``activation`` (None, "relu", "relu6", "hardswish", "silu"; default None, i.e. exactly BatchNorm2d) is
    applied in the same pass, so a Conv2dNormActivation can fuse its activation into the norm.
    """

    def __init__(self, num_features, eps=1e-5, momentum: Optional[float] = 0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, activation: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        check_activation(activation, "BatchNorm2d")
        self.activation = activation

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input, self.activation)


def batch_norm_module(bn: torch.nn.modules.batchnorm._BatchNorm, input: torch.Tensor,
                      activation: Optional[str]) -> torch.Tensor:
    """``activation(bn(input))`` for any torch BatchNorm module, through fastconv.ops.batch_norm_act; a module
    with hooks runs as ``bn(input)`` (its hooks fire), then the activation.

    Mirrors torch.nn.modules.batchnorm._BatchNorm.forward line by line (num_batches_tracked, momentum=None
    as a cumulative average, batch statistics in eval when there are no running statistics).
    """
    if has_hooks(bn):
        out = bn(input)
        return out if activation is None else APPLY_OUT_OF_PLACE[activation](out)
    return _batch_norm_forward(bn, input, activation)


def _batch_norm_forward(bn, input, activation):
    bn._check_input_dim(input)
    exponential_average_factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            exponential_average_factor = 1.0 / float(bn.num_batches_tracked)
        else:
            exponential_average_factor = bn.momentum
    # Batch statistics in training, and in eval when there are no running statistics.
    bn_training = True if bn.training else (bn.running_mean is None and bn.running_var is None)
    # Buffers are passed only when they are updated (training with tracking) or used (eval).
    use_buffers = not bn.training or bn.track_running_stats
    return ops.batch_norm_act(
        input,
        bn.weight,
        bn.bias,
        bn.running_mean if use_buffers else None,
        bn.running_var if use_buffers else None,
        bn_training,
        exponential_average_factor,
        bn.eps,
        activation,
    )
