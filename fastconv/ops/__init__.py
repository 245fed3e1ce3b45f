"""fastconv ops: each a custom op (``torch.ops.fastconv.*``) with autograd, a fake kernel and per-backend
kernels, behind one public function that follows the backend switch (``fastconv.set_backend``)."""
from fastconv.ops._registry import OPS
from fastconv.ops.channel_shuffle import channel_shuffle
from fastconv.ops.depthwise_conv2d import depthwise_conv2d

__all__ = ["OPS", "channel_shuffle", "depthwise_conv2d"]
