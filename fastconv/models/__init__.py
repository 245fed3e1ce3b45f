"""fastconv.models: drop-in builders with torchvision's names, arguments and state_dict keys."""
from fastconv.models import shufflenetv2  # noqa: F401  (registers its builders)
from fastconv.models._registry import get_model, list_models, register_model
from fastconv.models.shufflenetv2 import (  # noqa: F401
    ShuffleNetV2,
    shufflenet_v2,
    shufflenet_v2_x0_5,
    shufflenet_v2_x1_0,
    shufflenet_v2_x1_5,
    shufflenet_v2_x2_0,
)

__all__ = [
    "ShuffleNetV2", "get_model", "list_models", "register_model", "shufflenet_v2", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
]
