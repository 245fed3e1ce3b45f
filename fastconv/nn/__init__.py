"""Drop-in modules: same constructor arguments and state_dict keys as their torch/torchvision namesakes."""
from fastconv.nn.batchnorm import BatchNorm2d
from fastconv.nn.conv_norm_act import Conv2dNormActivation, fold_bn
from fastconv.nn.conv import Conv2d
from fastconv.nn.deform_conv import DeformConv2d
from fastconv.nn.sequential import FusedSequential
from fastconv.nn.shuffle import ChannelShuffle
from fastconv.nn.squeeze_excite import SqueezeExcitation

__all__ = ["BatchNorm2d", "ChannelShuffle", "Conv2d", "Conv2dNormActivation", "DeformConv2d", "FusedSequential",
           "SqueezeExcitation", "fold_bn"]
