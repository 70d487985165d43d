"""Correspondence models. ``build_model(config.model)`` is the one entry point.

A model class's dataclass fields, with their defaults, are the model fields of ``config.model``;
``config.model.name`` picks the class from ``MODEL_CLASSES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from matchme_jax.models.cats import CATs
from matchme_jax.models.catspp import CATsPP

MODEL_CLASSES: dict[str, type[nn.Module]] = {"cats": CATs, "catspp": CATsPP}

# Every flax module has these dataclass fields; they are no model settings.
_FLAX_FIELDS = ("parent", "name")
# Fields of config.model that no model class has (see defaults.model_config).
CONFIG_ONLY_FIELDS = ("name", "backbone_weights")


def model_fields(model_cls: type[nn.Module]) -> tuple[dataclasses.Field, ...]:
    """The settings of a model class: its dataclass fields less flax's ``parent`` and ``name``."""
    return tuple(f for f in dataclasses.fields(model_cls) if f.name not in _FLAX_FIELDS)


def model_defaults(model_cls: type[nn.Module]) -> dict[str, Any]:
    """Field name -> default value of every setting of ``model_cls``, in field order."""
    return {f.name: f.default for f in model_fields(model_cls)}


def model_kwargs(model_cls: type[nn.Module], model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of ``model_cls`` present in a model config.

    Fields whose default is a tuple come back as int tuples (a config or a command line may give
    lists); fields the class lacks (``name``, ``backbone_weights``) are left out.
    """
    kwargs = {}
    for field in model_fields(model_cls):
        if field.name in model_config:
            value = model_config[field.name]
            if isinstance(field.default, tuple):
                value = tuple(int(i) for i in value)
            kwargs[field.name] = value
    return kwargs


def cats_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The CATs constructor arguments present in a model config (sequences as int tuples)."""
    return model_kwargs(CATs, model_config)


def catspp_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The CATsPP constructor arguments present in a model config (sequences as int tuples)."""
    return model_kwargs(CATsPP, model_config)


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """The model a config describes.

    Args:
        model_config: ``config.model`` (an ml_collections ConfigDict or any mapping) with
            ``name`` and the model's fields; missing fields take the official defaults.

    Returns:
        An unbound Flax module; ``model.apply(variables, source=..., target=...)`` gives the
        flow [B, h, w, 2].
    """
    name = model_config.get("name", None)
    if name not in MODEL_CLASSES:
        available = ", ".join(repr(n) for n in MODEL_CLASSES)
        raise ValueError(
            f"unknown model name {name!r} in config.model.name; available: {available}"
        )
    model_cls = MODEL_CLASSES[name]
    return model_cls(**model_kwargs(model_cls, model_config))


__all__ = [
    "CONFIG_ONLY_FIELDS",
    "MODEL_CLASSES",
    "CATs",
    "CATsPP",
    "build_model",
    "catspp_kwargs",
    "cats_kwargs",
    "model_defaults",
    "model_fields",
    "model_kwargs",
]
