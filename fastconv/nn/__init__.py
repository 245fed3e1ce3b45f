"""Drop-in modules: same constructor arguments and state_dict keys as their torch/torchvision namesakes."""
from fastconv.nn.shuffle import ChannelShuffle
from fastconv.nn.squeeze_excite import SqueezeExcitation

__all__ = ["ChannelShuffle", "SqueezeExcitation"]
