"""fastconv.optimize: swap torchvision (and timm) building blocks for fastconv's in a model users already have."""
import copy
import sys

import torch


def _swaps():
    """{reference class: fastconv class}. Exact types only: a user's subclass keeps its own forward."""
    import torchvision.models.densenet as tv_densenet
    import torchvision.models.inception as tv_inception
    import torchvision.models.mobilenetv2 as tv_mobilenetv2
    import torchvision.models.mobilenetv3 as tv_mobilenetv3
    import torchvision.models.resnet as tv_resnet
    import torchvision.models.segmentation.deeplabv3 as tv_deeplabv3
    import torchvision.models.segmentation.fcn as tv_fcn
    import torchvision.models.shufflenetv2 as tv_shufflenetv2
    import torchvision.models.vgg as tv_vgg
    import torchvision.ops.misc as tv_misc
    # torchvision.models.alexnet and .googlenet are the builders (they shadow their modules): import the classes.
    from torchvision.models.alexnet import AlexNet as TorchvisionAlexNet
    from torchvision.models.googlenet import BasicConv2d as TorchvisionGoogLeNetBasicConv2d

    from fastconv import nn as fnn
    from fastconv.models import _blocks, deeplabv3, densenet, mobilenetv2, mobilenetv3, resnet, shufflenetv2, vgg
    from fastconv.models.alexnet import AlexNet

    return {
        **_timm_swaps(),
        tv_misc.Conv2dNormActivation: fnn.Conv2dNormActivation,
        torch.nn.ChannelShuffle: fnn.ChannelShuffle,
        tv_shufflenetv2.InvertedResidual: shufflenetv2.InvertedResidual,
        tv_mobilenetv2.InvertedResidual: mobilenetv2.InvertedResidual,
        tv_resnet.BasicBlock: resnet.BasicBlock,
        tv_resnet.Bottleneck: resnet.Bottleneck,
        tv_resnet.ResNet: resnet.ResNet,
        tv_misc.SqueezeExcitation: fnn.SqueezeExcitation,
        tv_mobilenetv3.InvertedResidual: mobilenetv3.InvertedResidual,
        TorchvisionAlexNet: AlexNet,
        tv_vgg.VGG: vgg.VGG,
        TorchvisionGoogLeNetBasicConv2d: _blocks.BasicConv2d,
        tv_inception.BasicConv2d: _blocks.BasicConv2d,
        tv_densenet.DenseNet: densenet.DenseNet,
        tv_densenet._DenseLayer: densenet._DenseLayer,
        tv_densenet._DenseBlock: densenet._DenseBlock,
        tv_densenet._Transition: densenet._Transition,
        # Plain conv-BN-ReLU runs (ShuffleNetV2's stem and conv5, ASPP's 1x1 branch and projection): the same
        # modules, fused in forward; any other nn.Sequential runs its members as before.
        torch.nn.Sequential: fnn.FusedSequential,
        # DeepLabV3's head: nn.Sequential subclasses with the same members as the zoo's.
        tv_deeplabv3.ASPPConv: deeplabv3.ASPPConv,
        tv_deeplabv3.ASPPPooling: deeplabv3.ASPPPooling,
        tv_deeplabv3.ASPP: deeplabv3.ASPP,
        tv_deeplabv3.DeepLabHead: deeplabv3.DeepLabHead,
        tv_fcn.FCNHead: deeplabv3.FCNHead,
    }


def _timm_swaps():
    """timm's blocks, when timm is already imported (a model built with it): fastconv never imports timm."""
    if sys.modules.get("timm") is None:  # never imported (or blocked)
        return {}
    import timm.models.senet as timm_senet

    from fastconv import nn as fnn
    from fastconv.models import senet

    return {
        timm_senet.SEModule: fnn.SqueezeExcitation,
        timm_senet.SEResNetBottleneck: senet.SEResNetBottleneck,
        timm_senet.SEResNeXtBottleneck: senet.SEResNeXtBottleneck,
    }


def _channels_last_from_batch(model):
    """The batch from which the zoo's version of `model`'s network computes in channels_last on the CPU in eval
    (fastconv/models/_layout.py), or None: the torchvision (and timm) classifiers, by their top-level class."""
    import torchvision.models as tvm

    from fastconv.models._layout import ALWAYS

    classifiers = {tvm.MobileNetV2, tvm.MobileNetV3, tvm.ShuffleNetV2, tvm.GoogLeNet, tvm.Inception3, tvm.DenseNet,
                   tvm.VGG, tvm.ResNet, tvm.AlexNet}
    if sys.modules.get("timm") is not None:
        import timm.models.senet as timm_senet

        classifiers.add(timm_senet.SENet)
    return ALWAYS if type(model) in classifiers else None


def _adopt(module, target):
    if hasattr(target, "adopt"):
        return target.adopt(module)
    module.__class__ = target  # stateless drop-ins (same attributes, new forward)
    return module


def optimize(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """Return `model` with torchvision building blocks replaced by fastconv's: same parameters, same
    state_dict keys, same outputs; in eval, conv-BN pairs run as one convolution with the BN folded (in the
    blocks, and in plain ``nn.Sequential`` runs, which become fastconv.nn.FusedSequential).

    Works on models users have already built or trained (the parameters are kept, not re-initialised).
    With ``inplace=False`` (default) the model is deep-copied first. Returns the model and, as
    ``model.fastconv_swapped``, how many modules of each class were swapped. A torchvision (or timm SENet)
    classifier also computes in channels_last in eval on the CPU from the batch size where the zoo's does
    (fastconv/models/_layout.py); its outputs are the same (N, classes) logits.
    """
    if not inplace:
        model = copy.deepcopy(model)
    from_batch = _channels_last_from_batch(model)
    if from_batch is not None and not getattr(model, "fastconv_channels_last_from_batch", None):
        from fastconv.models._layout import compute_in_channels_last

        compute_in_channels_last(model, from_batch)
        model.fastconv_channels_last_from_batch = from_batch
    swaps = _swaps()
    swapped = {}
    for module in list(model.modules()):
        target = swaps.get(type(module))
        if target is not None and getattr(target, "can_adopt", lambda m: True)(module):
            name = type(module).__qualname__
            _adopt(module, target)
            swapped[name] = swapped.get(name, 0) + 1
    model.fastconv_swapped = swapped
    return model
