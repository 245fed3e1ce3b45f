"""The model registry: builders named and shaped like torchvision's (timm's where only timm has the net).

`weights=` takes a torchvision weights enum or its name, as torchvision's builders do
("ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", "IMAGENET1K_V1", "DEFAULT"; another model's enum raises), fetched
through torchvision (so it works wherever torchvision has network), or a local checkpoint path. For the
timm-compatible models (builders that pass `timm_name`), a string that is not a file is a timm pretrained tag
("tf_in1k" or "legacy_xception.tf_in1k"), fetched through timm (an optional dependency: imported only then).
State_dict keys equal the reference's, so its checkpoints load with strict=True.
"""
import functools
import os
from typing import Callable, Dict, List, Optional

import torch

from fastconv.models._layout import compute_in_channels_last

_MODELS: Dict[str, Callable] = {}


def _torchvision_weights_class(name: str):
    """torchvision's weights enum for its builder `name`, or None where torchvision has no such builder."""
    import torchvision

    if name not in torchvision.models.list_models():
        return None
    return torchvision.models.get_model_weights(name)


def register_model(builder: Callable) -> Callable:
    """Register `builder` under its function name; registering a name twice raises. For a builder torchvision
    also has, the registered (and returned) builder first resolves a torchvision `weights=` as torchvision's own
    does (the weights enum's `verify`): short names such as "DEFAULT" are accepted and another model's weights
    raise before any download."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"fastconv.models: a model named {name!r} is already registered")
    weights_class = _torchvision_weights_class(name)
    if weights_class is not None:
        builder = _verifying_weights(builder, weights_class)
    _MODELS[name] = builder
    return builder


def _verifying_weights(builder: Callable, weights_class) -> Callable:
    @functools.wraps(builder)
    def with_verified_weights(*, weights=None, **kwargs):
        if weights is not None and not is_checkpoint_path(weights):
            try:
                weights = weights_class.verify(weights)
            except KeyError:
                raise ValueError(f"{builder.__name__}: weights={weights!r} is neither a local file nor a weight of "
                                 f"{weights_class.__name__} ({', '.join(['DEFAULT'] + [w.name for w in weights_class])})"
                                 ) from None
        return builder(weights=weights, **kwargs)

    return with_verified_weights


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


def _check_num_classes(kwargs, categories: int) -> None:
    if kwargs.setdefault("num_classes", categories) != categories:
        raise ValueError(
            f"The parameter 'num_classes' expected value {categories} but got {kwargs['num_classes']} instead."
        )


def _timm_state_dict(timm_name: str, tag: str, kwargs) -> Dict[str, torch.Tensor]:
    """The state_dict of timm's pretrained `timm_name` with `tag`, fetched (and cached) by timm."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"weights={tag!r} is not a file, so it names timm pretrained weights of {timm_name}: "
                          "fetching them needs timm (pip install timm), or pass a local checkpoint path") from error
    name = tag if tag.startswith(timm_name + ".") else f"{timm_name}.{tag}"
    available = timm.list_pretrained(timm_name + ".*")
    if name not in available:
        raise ValueError(f"weights={tag!r} is neither a file nor a timm pretrained tag of {timm_name} "
                         f"(available: {', '.join(available) or 'none'})")
    _check_num_classes(kwargs, timm.models.get_pretrained_cfg(name).num_classes)
    # in_chans != 3: timm adapts the first convolution's pretrained weights, as timm.create_model does.
    return timm.create_model(name, pretrained=True, num_classes=kwargs["num_classes"],
                             in_chans=kwargs.get("in_chans", 3)).state_dict()


def build(model_fn: Callable[..., torch.nn.Module], weights, progress: bool, timm_name: Optional[str] = None,
          channels_last_from_batch: Optional[int] = None, **kwargs) -> torch.nn.Module:
    """Construct with `kwargs`, then load `weights` (None, a torchvision weights enum or name, a path, or, for
    a model with a `timm_name`, a timm pretrained tag).

    With torchvision or timm weights, `num_classes` is checked against the weights' categories, as
    torchvision does. With `channels_last_from_batch` (a batch size; _layout.ALWAYS = 1) the model computes in
    channels_last in eval on the CPU from that batch size on (see _layout.py: measured per network).
    """
    state_dict = None
    if weights is not None:
        if is_checkpoint_path(weights):
            state_dict = torch.load(weights, map_location="cpu", weights_only=True)
            state_dict = state_dict.get("state_dict", state_dict)
        elif timm_name is not None and isinstance(weights, str):
            state_dict = _timm_state_dict(timm_name, weights, kwargs)
        else:
            weights = _resolve_torchvision_weights(weights)
            if weights.meta["categories"] is not None:  # None: features-only weights (VGG16 IMAGENET1K_FEATURES)
                _check_num_classes(kwargs, len(weights.meta["categories"]))
            state_dict = weights.get_state_dict(progress=progress, check_hash=True)
    model = model_fn(**kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    if channels_last_from_batch is None:
        return model
    return compute_in_channels_last(model, channels_last_from_batch)
