"""fastconv.models: drop-in builders with torchvision's names, arguments and state_dict keys."""
from fastconv.models import mobilenetv2, resnet, shufflenetv2  # noqa: F401  (register their builders)
from fastconv.models import inception_resnet_v2, inception_v4, mobilenetv1, senet, xception  # noqa: F401
from fastconv.models._registry import get_model, list_models, register_model
from fastconv.models.inception_resnet_v2 import InceptionResnetV2, inception_resnet_v2  # noqa: F401
from fastconv.models.inception_v4 import InceptionV4, inception_v4  # noqa: F401
from fastconv.models.mobilenetv1 import MobileNetV1, mobilenetv1_100  # noqa: F401
from fastconv.models.dcn_resnet import dcn_resnet50, load_resnet50_state_dict  # noqa: F401
from fastconv.models import highway, lenet, msdnet, pyramidnet, shufflenetv1, smartnet, zfnet  # noqa: F401
from fastconv.models.highway import HighwayNet, highway_net  # noqa: F401
from fastconv.models.lenet import LeNet5, lenet5  # noqa: F401
from fastconv.models.msdnet import MSDNet, msdnet  # noqa: F401
from fastconv.models.pyramidnet import (  # noqa: F401
    PyramidNet, pyramidnet, pyramidnet110_a48, pyramidnet200_a300, pyramidnet272_a200,
)
from fastconv.models.shufflenetv1 import (  # noqa: F401
    ShuffleNetV1, shufflenet_v1, shufflenet_v1_x0_5, shufflenet_v1_x1_0, shufflenet_v1_x1_5, shufflenet_v1_x2_0,
)
from fastconv.models.smartnet import SmartNet, exit_loss, smartnet  # noqa: F401
from fastconv.models.zfnet import ZFNet, zfnet  # noqa: F401
from fastconv.models.mobilenetv2 import MobileNetV2, mobilenet_v2  # noqa: F401
from fastconv.models.resnet import (  # noqa: F401
    ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, resnext101_32x8d, wide_resnet50_2,
    wide_resnet101_2,
)
from fastconv.models.senet import (  # noqa: F401
    SENet, legacy_seresnet50, legacy_seresnet101, legacy_seresnet152, legacy_seresnext50_32x4d,
)
from fastconv.models.shufflenetv2 import (  # noqa: F401
    ShuffleNetV2,
    shufflenet_v2,
    shufflenet_v2_x0_5,
    shufflenet_v2_x1_0,
    shufflenet_v2_x1_5,
    shufflenet_v2_x2_0,
)
from fastconv.models.xception import Xception, legacy_xception  # noqa: F401

__all__ = resnet.__all__ + [
    "MobileNetV2", "ShuffleNetV2", "dcn_resnet50", "get_model", "load_resnet50_state_dict", "mobilenet_v2", "list_models", "register_model", "shufflenet_v2", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "HighwayNet", "LeNet5", "MSDNet", "PyramidNet", "ShuffleNetV1", "SmartNet", "ZFNet", "exit_loss", "highway_net", "lenet5",
    "msdnet", "pyramidnet", "pyramidnet110_a48", "pyramidnet200_a300", "pyramidnet272_a200", "shufflenet_v1",
    "shufflenet_v1_x0_5", "shufflenet_v1_x1_0", "shufflenet_v1_x1_5", "shufflenet_v1_x2_0", "smartnet", "zfnet",
]

# Model zoo part 1: the rest of torchvision's classic networks. The modules' __all__ are read before the
# builders named like their module (alexnet, googlenet) replace the module names here, as in torchvision.
from fastconv.models import alexnet, deeplabv3, densenet, googlenet, inception, mobilenetv3, vgg  # noqa: E402
__all__ += (alexnet.__all__ + deeplabv3.__all__ + densenet.__all__ + googlenet.__all__ + inception.__all__
            + mobilenetv3.__all__ + vgg.__all__)
from fastconv.models.alexnet import AlexNet, alexnet  # noqa: E402,F401
from fastconv.models.deeplabv3 import DeepLabV3, deeplabv3_resnet50  # noqa: E402,F401
from fastconv.models.densenet import DenseNet, densenet121, densenet161, densenet169, densenet201  # noqa: E402,F401
from fastconv.models.googlenet import GoogLeNet, GoogLeNetOutputs, googlenet  # noqa: E402,F401
from fastconv.models.inception import Inception3, InceptionOutputs, inception_v3  # noqa: E402,F401
from fastconv.models.mobilenetv3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small  # noqa: E402,F401
from fastconv.models.vgg import (  # noqa: E402,F401
    VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn,
)
__all__ += [  # the timm-compatible networks
    "InceptionResnetV2", "InceptionV4", "MobileNetV1", "SENet", "Xception", "inception_resnet_v2", "inception_v4",
    "legacy_seresnet50", "legacy_seresnet101", "legacy_seresnet152", "legacy_seresnext50_32x4d", "legacy_xception",
    "mobilenetv1_100",
]
