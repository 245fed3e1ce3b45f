"""The model registry: builders named and shaped like torchvision's (timm's where only timm has the net).

`weights=` takes a torchvision weights enum or its name ("ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1",
"DEFAULT" is not accepted without the enum), fetched through torchvision (so it works wherever torchvision
has network), or a local checkpoint path. State_dict keys equal the reference's, so its checkpoints load with
strict=True.
"""
import os
from typing import Callable, Dict, List

import torch

_MODELS: Dict[str, Callable] = {}


def register_model(builder: Callable) -> Callable:
    """Register `builder` under its function name; registering a name twice raises."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"fastconv.models: a model named {name!r} is already registered")
    _MODELS[name] = builder
    return builder


def list_models() -> List[str]:
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> torch.nn.Module:
    if name not in _MODELS:
        raise ValueError(f"fastconv.models: unknown model {name!r}; see fastconv.models.list_models()")
    return _MODELS[name](**kwargs)


def _resolve_torchvision_weights(weights):
    import torchvision

    if isinstance(weights, str):
        return torchvision.models.get_weight(weights)
    return weights


def is_checkpoint_path(weights) -> bool:
    """Whether `weights` names a local checkpoint file (rather than a torchvision weights enum or name)."""
    return isinstance(weights, (str, os.PathLike)) and os.path.exists(weights)


def build(model_fn: Callable[..., torch.nn.Module], weights, progress: bool, **kwargs) -> torch.nn.Module:
    """Construct with `kwargs`, then load `weights` (None, a torchvision weights enum or name, or a path).

    With torchvision weights, `num_classes` is checked against the weights' categories, as torchvision does.
    """
    state_dict = None
    if weights is not None:
        if is_checkpoint_path(weights):
            state_dict = torch.load(weights, map_location="cpu", weights_only=True)
            state_dict = state_dict.get("state_dict", state_dict)
        else:
            weights = _resolve_torchvision_weights(weights)
            if weights.meta["categories"] is not None:  # None: features-only weights (VGG16 IMAGENET1K_FEATURES)
                categories = len(weights.meta["categories"])
                if kwargs.setdefault("num_classes", categories) != categories:
                    raise ValueError(f"The parameter 'num_classes' expected value {categories} but got "
                                     f"{kwargs['num_classes']} instead.")
            state_dict = weights.get_state_dict(progress=progress, check_hash=True)
    model = model_fn(**kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model
