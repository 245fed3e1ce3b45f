"""fastconv.models: drop-in builders with torchvision's names, arguments and state_dict keys."""
from fastconv.models import mobilenetv2, resnet, shufflenetv2  # noqa: F401  (register their builders)
from fastconv.models._registry import get_model, list_models, register_model
from fastconv.models.dcn_resnet import dcn_resnet50, load_resnet50_state_dict  # noqa: F401  (no torchvision namesake: not registered)
from fastconv.models.mobilenetv2 import MobileNetV2, mobilenet_v2  # noqa: F401
from fastconv.models.resnet import (  # noqa: F401
    ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, resnext101_32x8d, wide_resnet50_2,
    wide_resnet101_2,
)
from fastconv.models.shufflenetv2 import (  # noqa: F401
    ShuffleNetV2,
    shufflenet_v2,
    shufflenet_v2_x0_5,
    shufflenet_v2_x1_0,
    shufflenet_v2_x1_5,
    shufflenet_v2_x2_0,
)

__all__ = resnet.__all__ + [
    "MobileNetV2", "ShuffleNetV2", "dcn_resnet50", "get_model", "load_resnet50_state_dict", "mobilenet_v2", "list_models", "register_model", "shufflenet_v2", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
]
