"""Correspondence models. ``build_model(config.model)`` is the one entry point."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from matchme_jax.models.cats import CATs
from matchme_jax.models.catspp import CATsPP

# Config fields read by CATs; other fields of config.model (backbone_weights, ...) belong to
# the code that loads weights.
_CATS_FIELDS = (
    "backbone",
    "backbone_blocks",
    "backbone_width",
    "hyperpixel_ids",
    "feature_size",
    "feature_proj_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "beta",
    "freeze_backbone",
    "bn_mode",
    "dtype",
    "attention",
)
_SEQUENCE_FIELDS = ("backbone_blocks", "hyperpixel_ids")
# Config fields read by CATs++.
_CATSPP_FIELDS = (
    "backbone",
    "backbone_blocks",
    "backbone_width",
    "feature_size",
    "num_heads",
    "qk_dim",
    "affinity_dim",
    "mlp_ratio",
    "affinity_dropout",
    "beta",
    "freeze_backbone",
    "bn_mode",
    "dtype",
)


def cats_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The CATs constructor arguments present in a model config (sequences as int tuples)."""
    kwargs = {k: model_config[k] for k in _CATS_FIELDS if k in model_config}
    for k in _SEQUENCE_FIELDS:
        if k in kwargs:
            kwargs[k] = tuple(int(i) for i in kwargs[k])
    return kwargs


def catspp_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The CATsPP constructor arguments present in a model config."""
    kwargs = {k: model_config[k] for k in _CATSPP_FIELDS if k in model_config}
    if "backbone_blocks" in kwargs:
        kwargs["backbone_blocks"] = tuple(int(i) for i in kwargs["backbone_blocks"])
    return kwargs


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
    if name == "cats":
        return CATs(**cats_kwargs(model_config))
    if name == "catspp":
        return CATsPP(**catspp_kwargs(model_config))
    raise ValueError(
        f"unknown model name {name!r} in config.model.name; available: 'cats', 'catspp'"
    )


__all__ = ["CATs", "CATsPP", "build_model", "catspp_kwargs", "cats_kwargs"]
