"""fastconv ops: each a custom op (``torch.ops.fastconv.*``) with autograd, a fake kernel and per-backend
kernels, behind one public function that follows the backend switch (``fastconv.set_backend``)."""
from fastconv.ops._registry import OPS
from fastconv.ops.batch_norm_act import batch_norm_act
from fastconv.ops.channel_shuffle import channel_shuffle
from fastconv.ops.deform_conv2d import deform_conv2d
from fastconv.ops.conv2d_act import conv2d_act
from fastconv.ops.depthwise_conv2d import depthwise_conv2d
from fastconv.ops.shuffle_cat import shuffle_cat
from fastconv.ops.shuffle_cat_conv2d_act import shuffle_cat_conv2d_act
from fastconv.ops.squeeze_excite import squeeze_excite

__all__ = ["OPS", "batch_norm_act", "channel_shuffle", "conv2d_act", "deform_conv2d", "depthwise_conv2d", "shuffle_cat",
           "shuffle_cat_conv2d_act", "squeeze_excite"]
