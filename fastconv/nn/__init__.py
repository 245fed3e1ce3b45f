"""Drop-in modules: same constructor arguments and state_dict keys as their torch/torchvision namesakes."""
from fastconv.nn.conv import Conv2d
from fastconv.nn.shuffle import ChannelShuffle

__all__ = ["ChannelShuffle", "Conv2d"]
