"""Image classifiers from a config node: ``_target_: bixt.models.factory.image_classifier``.

Every BiXT model config sets the encoder the same way, through an ``encoder`` sub-node whose keys
are :class:`~bixt.core.BiXTEncoder` constructor arguments (``model.encoder.depth=4``,
``model.encoder.num_latents=32``). The image models take them as the timm constructor's flat
arguments; :func:`encoder_kwargs` is the one translation (``dim`` is timm's ``embed_dim``).
"""
from __future__ import annotations

from typing import Annotated, Any, Mapping, Optional

import timm
from torch import nn

from bixt.constraints import Node, Range
from bixt.core import BiXTEncoder
from bixt.models.bixt_image import BiXT

__all__ = ["image_classifier", "encoder_kwargs"]

#: BiXTEncoder argument -> the image models' (timm) argument, where the names differ
_IMAGE_NAMES = {"dim": "embed_dim"}


def encoder_kwargs(encoder: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """BiXTEncoder arguments as the image models' constructor arguments."""
    return {_IMAGE_NAMES.get(k, k): v for k, v in (encoder or {}).items()}


def image_classifier(*, num_classes: Annotated[int, Range(min=0)], model_name: Optional[str] = None,
                     img_size: Annotated[int, Range(min=1)] = 224,
                     patch_size: Optional[Annotated[int, Range(min=1)]] = None,
                     drop_path_rate: Annotated[float, Range(min=0.0, max=1.0)] = 0.0,
                     encoder: Optional[Annotated[Mapping[str, Any], Node(BiXTEncoder)]] = None,
                     pretrained: Optional[str] = None, checkpoint: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, ...)`` (a registered variant, e.g. ``bixt_ti_l64_p16``), or,
    with ``model_name`` null, a :class:`~bixt.models.bixt_image.BiXT` of exactly the given architecture.

    ``pretrained``: a weights file for the backbone (the classifier is re-initialised if the classes
    differ); ``checkpoint``: the exact weights to start from or evaluate, loaded by the engine
    (``trainer.checkpoint`` follows it), not here. ``kwargs``: further constructor arguments
    (``stride``, ``tokenizer``, ``drop_rate``, ...).
    """
    kwargs = {**kwargs, **encoder_kwargs(encoder), "img_size": img_size, "drop_path_rate": drop_path_rate}
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    if model_name is None:
        if pretrained:
            raise ValueError("model.pretrained needs a registered model.model_name whose weights it holds")
        return BiXT(num_classes=num_classes, **kwargs)
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained))
    try:
        return timm.create_model(model_name, pretrained=bool(pretrained), num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown model.model_name={model_name!r}; BiXT models: "
                             f"{timm.list_models('bixt*')}") from None
        raise
