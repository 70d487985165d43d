"""Official PyTorch checkpoints -> Flax variables.

* ``cats_from_torch``: an official CATs state dict (``feature_extraction.backbone.*``, ``proj.*``,
  ``decoder.*``, ``x_normal``, ``y_normal`` and the BatchNorm buffers) -> ``(model, variables)``;
  ``cats_to_torch`` maps variables back to those keys and layouts.
* ``catspp_from_torch``: an official CATs++ (``CATsImproved``) state dict (``backbone.*``,
  ``hpn_learner.*``) -> ``(model, variables)``; ``catspp_to_torch`` maps variables back.
* ``backbone_from_torchvision``: torchvision ResNet ImageNet weights (``conv1.weight``,
  ``layer1.0.bn1.running_mean``, ...) -> the ``backbone`` subtree of the CATs variables;
  ``backbone_to_torchvision`` writes a whole ResNet in that naming (matchme_jax/pretrain.py).
* ``dinov2_from_torch``: an official DINOv2 state dict, in the torch-hub layout (``cls_token``,
  ``blocks.0.attn.qkv.weight``, ...) or the Hugging Face ``Dinov2Model`` /
  ``Dinov2WithRegistersModel`` layout (``embeddings.cls_token``, ``encoder.layer.0.*``, ...) ->
  ``(DinoVisionTransformer, variables)``; ``dinov2_to_torch`` and ``dinov2_to_huggingface`` map
  variables back to either layout.
* ``load_state_dict_file``: ``.npz``, ``.safetensors``, and ``.pth``/``.pt`` when torch is
  installed -> ``{torch key: numpy array}``.

The table between the two namings is derived from the Flax parameter tree itself: a Flax path
``backbone/layer3_12/downsample_bn/scale`` is the torch key
``feature_extraction.backbone.layer3.12.downsample.1.weight``. Layouts: conv OIHW -> HWIO, linear
[out, in] -> [in, out], positional embeddings drop their singleton axes. Keys the official model
holds but never uses in its output (torchvision ``fc``, the ResNet blocks past the last hyperpixel,
``decoder.norm``) must be there and are dropped; ``num_batches_tracked`` may be there and is
dropped. Any other unknown, missing or mis-shaped key fails with one ValueError that lists them
all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from matchme_jax import errors
from matchme_jax.models import (
    CONFIG_ONLY_FIELDS,
    backbones,
    build_model,
    cats_kwargs,
    catspp_kwargs,
    model_fields,
)
from matchme_jax.models.cats import CATs, MultiscaleBlock
from matchme_jax.models.catspp import CATsPP, catspp_backbone
from matchme_jax.models.dinov2 import (
    HUB,
    DinoVisionTransformer,
    hub_entry,
    swiglu_hidden_features,
)
from matchme_jax.models.resnet import RESNET_STAGE_BLOCKS, ResNet

BACKBONE_PREFIX = "feature_extraction.backbone."
_FC_KEYS = ("fc.weight", "fc.bias")
# config.model fields that are not CATs fields (accepted and ignored by cats_from_torch).
_UNUSED_HEAD_KEYS = ("decoder.norm.weight", "decoder.norm.bias")
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
_INDEXED_MODULE = re.compile(r"^(layer\d+|proj|blocks)_(\d+)$")
# Image side used to trace parameter shapes; no parameter shape depends on it.
_TRACE_IMAGE_SIZE = 64


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One Flax leaf and the torch tensor it comes from."""

    collection: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    torch_key: str
    torch_shape: tuple[int, ...]


def _torch_module_name(name: str) -> str:
    if name in _MODULE_NAMES:
        return _MODULE_NAMES[name]
    return _INDEXED_MODULE.sub(r"\1.\2", name)


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:  # HWIO <- OIHW
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    if leaf == "kernel" and len(shape) == 2:  # [in, out] <- [out, in]
        return shape[::-1]
    if leaf == "pos_embed_x":  # [L, w, d] <- [1, L, 1, w, d]
        return (1, shape[0], 1, shape[1], shape[2])
    if leaf == "pos_embed_y":  # [L, h, d] <- [1, L, h, 1, d]
        return (1, shape[0], shape[1], 1, shape[2])
    if leaf == "pos_embed":  # CATs++ [S, d] <- [1, S, 1, d]
        return (1, shape[0], 1, shape[1])
    return shape


def _to_flax(leaf: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if leaf == "kernel" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value.reshape(shape)


def _to_torch(leaf: str, value: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``_to_flax``; keeps the dtype (a float64 run stays float64)."""
    value = np.asarray(value)
    if leaf == "kernel" and value.ndim == 4:  # HWIO -> OIHW
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if leaf == "kernel" and value.ndim == 2:  # [in, out] -> [out, in]
        return np.ascontiguousarray(value.T)
    return value.reshape(torch_shape)


def _entries(
    shapes: Mapping[str, Any], prefix: str = "", roots: Mapping[str, str] | None = None
) -> list[_Entry]:
    """Every leaf of a variables shape tree with its torch key.

    Args:
        shapes: {collection: tree of arrays or ShapeDtypeStructs}.
        prefix: prepended to every torch key.
        roots: top-level Flax modules whose name is replaced by a torch prefix
            (``{"backbone": "feature_extraction.backbone."}``).
    """
    roots = roots or {}
    entries = []
    for collection, tree in shapes.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            if path[0] in roots:
                head, modules = roots[path[0]], path[1:-1]
            else:
                head, modules = prefix, path[:-1]
            names = [_torch_module_name(m) for m in modules]
            torch_key = head + ".".join([*names, _LEAF_NAMES.get(path[-1], path[-1])])
            shape = tuple(leaf.shape)
            entries.append(
                _Entry(collection, path, shape, torch_key, _torch_shape(path[-1], shape))
            )
    return entries


def _batchnorm_buffer_keys(entries: list[_Entry]) -> set[str]:
    """``num_batches_tracked`` of every BatchNorm among ``entries`` (PyTorch keeps a counter)."""
    return {
        e.torch_key.removesuffix("running_mean") + "num_batches_tracked"
        for e in entries
        if e.torch_key.endswith(".running_mean")
    }


def _backbone_shapes(backbone: ResNet) -> dict[str, Any]:
    images = jax.ShapeDtypeStruct((1, _TRACE_IMAGE_SIZE, _TRACE_IMAGE_SIZE, 3), jnp.float32)
    return jax.eval_shape(
        lambda x: backbone.init(jax.random.key(0), x, use_running_average=True), images
    )


def _model_backbone(model: CATs | CATsPP) -> ResNet:
    """The (unbound) ResNet backbone of a CATs or CATs++ model."""
    if backbones.is_vit(model.backbone):
        raise ValueError(
            f"backbone={model.backbone!r} is a DINOv2 ViT, not a torchvision ResNet: its weights "
            "convert with dinov2_from_torch / backbone_from_dinov2"
        )
    return catspp_backbone(model) if isinstance(model, CATsPP) else backbones.build(model)


def _full_backbone_entries(model: CATs | CATsPP, prefix: str) -> list[_Entry]:
    """Entries of the whole ResNet, every stage built, as the official model holds it."""
    full = _model_backbone(model).clone(tap_ids=(sum(model.stage_blocks),))
    return _entries(_backbone_shapes(full), prefix)


def _unused_backbone_keys(model: CATs | CATsPP, used: set[str], prefix: str) -> tuple[set, set]:
    """(unused keys a complete ResNet state dict holds, optional ``num_batches_tracked``)."""
    full = _full_backbone_entries(model, prefix)
    unused = {e.torch_key for e in full} - used
    return unused | {prefix + k for k in _FC_KEYS}, _batchnorm_buffer_keys(full)


def _unused_single_level_keys(model: CATs, used: set[str]) -> set[str]:
    """With one level the official block still holds its cross-level layers, unused."""
    if len(model.hyperpixel_ids) > 1:
        return set()
    block = MultiscaleBlock(model.num_heads, model.mlp_ratio)
    tokens = jax.ShapeDtypeStruct((1, 2, model.feature_size**2, model.embed_dim), jnp.float32)
    shapes = jax.eval_shape(lambda x: block.init(jax.random.key(0), x), tokens)
    keys = set()
    for i in range(model.depth):
        keys |= {e.torch_key for e in _entries(shapes, f"decoder.blocks.{i}.")}
    return keys - used


@dataclasses.dataclass(frozen=True)
class _Table:
    """What a checkpoint for one model config must hold.

    Attributes:
        entries: the keys that become Flax variables.
        unused: keys the official model holds but never uses: required, then dropped.
        optional: keys that may be absent and are dropped: ``num_batches_tracked`` (PyTorch
            added it in 0.4; older checkpoints, torchvision's ImageNet ResNets among them, lack it).
    """

    entries: tuple[_Entry, ...]
    unused: frozenset[str]
    optional: frozenset[str]


def _assemble(table: _Table, state_dict: Mapping[str, np.ndarray], what: str) -> dict[str, Any]:
    """Validate ``state_dict`` against ``table`` and build the variables, or raise once."""
    expected = {e.torch_key for e in table.entries}
    missing = sorted((expected | table.unused) - set(state_dict))
    unexpected = sorted(set(state_dict) - expected - table.unused - table.optional)
    wrong_shape = [
        f"{e.torch_key}: {tuple(np.shape(state_dict[e.torch_key]))}, expected {e.torch_shape}"
        for e in table.entries
        if e.torch_key in state_dict and tuple(np.shape(state_dict[e.torch_key])) != e.torch_shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if wrong_shape:
        problems.append(f"wrong shapes ({len(wrong_shape)}): " + "; ".join(wrong_shape))
    if problems:
        raise ValueError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    flat = {
        (e.collection, *e.path): jnp.asarray(_to_flax(e.path[-1], state_dict[e.torch_key], e.shape))
        for e in table.entries
    }
    return traverse_util.unflatten_dict(flat)


@functools.lru_cache(maxsize=16)
def _cats_table(model: CATs) -> _Table:
    """The official CATs state dict of one config."""
    entries = _entries(_trace_variables(model), roots={"backbone": BACKBONE_PREFIX})
    used = {e.torch_key for e in entries}
    unused, optional = _unused_backbone_keys(model, used, BACKBONE_PREFIX)
    unused |= _unused_single_level_keys(model, used) | set(_UNUSED_HEAD_KEYS)
    return _Table(tuple(entries), frozenset(unused), frozenset(optional))


@functools.lru_cache(maxsize=16)
def _torchvision_table(model: CATs | CATsPP) -> _Table:
    """The torchvision ResNet state dict for the backbone of one config."""
    entries = _entries(_backbone_shapes(_model_backbone(model)))
    unused, optional = _unused_backbone_keys(model, {e.torch_key for e in entries}, "")
    return _Table(tuple(entries), frozenset(unused), frozenset(optional))


def _count_indexed(keys: list[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_cats_fields(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """CATs fields that an official state dict determines.

    Depth, backbone (stages and width), feature size, projection width and MLP ratio are read
    from the keys and shapes. The hyperpixel ids (beyond their count), the number of heads and
    beta are not stored in a state dict; they keep the official defaults unless overridden.

    Args:
        state_dict: torch key -> array.

    Returns:
        A dict of CATs constructor arguments (only those it could infer).
    """
    keys = list(state_dict)
    fields: dict[str, Any] = {}
    depth = _count_indexed(keys, r"^decoder\.blocks\.(\d+)\.")
    if depth:
        fields["depth"] = depth
    stage_pattern = re.escape(BACKBONE_PREFIX) + r"layer{}\.(\d+)\.conv1\.weight$"
    stages = []
    while blocks := _count_indexed(keys, stage_pattern.format(len(stages) + 1)):
        stages.append(blocks)
    stem = state_dict.get(BACKBONE_PREFIX + "conv1.weight")
    if stages and stem is not None:
        fields.update(_backbone_fields(tuple(stages), int(np.shape(stem)[0])))
    if "x_normal" in state_dict:
        fields["feature_size"] = int(np.shape(state_dict["x_normal"])[0])
    if "proj.0.weight" in state_dict:
        fields["feature_proj_dim"] = int(np.shape(state_dict["proj.0.weight"])[0])
    fc1 = state_dict.get("decoder.blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        hidden, embed = np.shape(fc1)
        fields["mlp_ratio"] = hidden / embed
    return fields


def _backbone_fields(stages: tuple[int, ...], width: int) -> dict[str, Any]:
    for name, blocks in RESNET_STAGE_BLOCKS.items():
        if stages == blocks and width == 64:
            return {"backbone": name}
    return {"backbone": "custom", "backbone_blocks": stages, "backbone_width": width}


def _trace_variables(model: CATs | CATsPP) -> dict[str, Any]:
    # CATs++ parameter shapes depend on the grid: trace it at its own image size.
    side = 16 * model.feature_size if isinstance(model, CATsPP) else _TRACE_IMAGE_SIZE
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    return jax.eval_shape(
        lambda s, t: model.init(jax.random.key(0), source=s, target=t), images, images
    )


def _checked_overrides(
    model_overrides: Mapping[str, Any], model_cls: type, name: str, label: str
) -> None:
    """Raises when the overrides name another model or a field neither model nor config has."""
    given = model_overrides.get("name", name)
    if given != name:
        raise ValueError(f"{name}_from_torch builds {label}; got name={given!r}")
    field_names = set(CONFIG_ONLY_FIELDS) | {f.name for f in model_fields(model_cls)}
    unknown = sorted(set(model_overrides) - field_names)
    if unknown:
        raise ValueError(f"unknown {label} fields {unknown}; known: {sorted(field_names)}")


def _cats_overrides(model_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise the overrides: CATs fields, plus the non-CATs config.model fields."""
    _checked_overrides(model_overrides, CATs, "cats", "CATs")
    return cats_kwargs(model_overrides)


def cats_from_torch(
    state_dict: Mapping[str, np.ndarray], **model_overrides: Any
) -> tuple[CATs, dict[str, Any]]:
    """Official CATs state dict -> ``(model, variables)``.

    Args:
        state_dict: torch key -> array, as ``load_state_dict_file`` returns it (the official
            ``model.state_dict()``, BatchNorm buffers included).
        **model_overrides: CATs fields that override what is inferred (see
            ``infer_cats_fields``), e.g. ``hyperpixel_ids=...``, ``num_heads=...``, ``dtype=...``.
            A whole ``config.model`` may be passed: its ``name`` must be "cats" and its
            ``backbone_weights`` is ignored (the checkpoint holds the backbone).

    Returns:
        The CATs module and ``{"params": ..., "batch_stats": ...}`` (float32), ready for
        ``model.apply(variables, source=..., target=...)``.

    Raises:
        ValueError: an unknown override, an invalid config, or keys that are missing,
            unexpected or mis-shaped (all listed in one message).
    """
    overrides = _cats_overrides(model_overrides)
    fields = {**infer_cats_fields(state_dict), **overrides}
    levels = _count_indexed(list(state_dict), r"^proj\.(\d+)\.weight$")
    default_ids = CATs.hyperpixel_ids
    if "hyperpixel_ids" not in fields and levels and levels != len(default_ids):
        raise ValueError(
            f"the checkpoint has {levels} hyperpixel levels, the default ids {default_ids} "
            f"have {len(default_ids)}: pass hyperpixel_ids=(...) with {levels} ids"
        )
    model = CATs(**fields)
    variables = _assemble(_cats_table(model), state_dict, f"the CATs model {fields}")
    return model, variables


def cats_to_torch(model: CATs, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax CATs variables -> the official state-dict keys and layouts (inverse of the converter).

    Only the tensors our model holds come back: the unused official entries (``fc``, the blocks
    past the last hyperpixel, ``decoder.norm``) and the ``num_batches_tracked`` counters do not
    exist here. Used to compare trained weights with the official training.

    Args:
        model: the CATs module the variables belong to.
        variables: ``{"params": ..., "batch_stats": ...}`` of ``model``.

    Returns:
        ``{torch key: numpy array}`` in PyTorch layouts and the variables' own dtypes.
    """
    return {
        e.torch_key: _to_torch(e.path[-1], _leaf(variables, (e.collection, *e.path)), e.torch_shape)
        for e in _cats_table(model).entries
    }


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


# ---- CATs++ ----

CATSPP_BACKBONE_PREFIX = "backbone."
CATSPP_HEAD_PREFIX = "hpn_learner."
# Flax module path (under params) -> official module path under ``hpn_learner.``; first match.
_CATSPP_MODULES = (
    (r"^early_conv_(\d+)/conv/", r"early_conv.\1.conv4d.0.0."),
    (r"^early_conv_(\d+)/norm/", r"early_conv.\1.conv4d.0.1."),
    (r"^affinity_proj_(\d+)/", r"affinity_proj.\1.0."),
    (r"^transformers_(\d+)/qk_conv/", r"transformers.\1.layer.0.qk.conv.0."),
    (r"^transformers_(\d+)/qk_norm/", r"transformers.\1.layer.0.qk.conv.1."),
    (r"^transformers_(\d+)/qk_linear/", r"transformers.\1.layer.0.qk.linear."),
    (r"^transformers_(\d+)/v_conv/", r"transformers.\1.layer.0.v.0."),
    (r"^transformers_(\d+)/v_norm/", r"transformers.\1.layer.0.v.1."),
    (r"^transformers_(\d+)/mlp_in/", r"transformers.\1.layer.0.mlp.mlp.0."),
    (r"^transformers_(\d+)/mlp_out/", r"transformers.\1.layer.0.mlp.mlp.2."),
    (r"^transformers_(\d+)/", r"transformers.\1.layer.0."),  # norm1, norm2, pos_embed
)


def _catspp_head_key(path: tuple[str, ...]) -> str:
    """``("transformers_2", "qk_conv", "query_conv", "kernel")`` ->
    ``hpn_learner.transformers.2.layer.0.qk.conv.0.query_conv.weight``."""
    flax_path = "/".join(path[:-1]) + "/"
    for pattern, replacement in _CATSPP_MODULES:
        if re.match(pattern, flax_path):
            flax_path = re.sub(pattern, replacement, flax_path, count=1)
            break
    module = flax_path.replace("/", ".").strip(".")
    leaf = _LEAF_NAMES.get(path[-1], path[-1])
    return CATSPP_HEAD_PREFIX + (f"{module}.{leaf}" if module else leaf)


def _catspp_entries(shapes: Mapping[str, Any]) -> list[_Entry]:
    """Every leaf of the CATs++ variables with its official key: backbone, then head."""
    backbone = {
        c: {"backbone": tree["backbone"]} for c, tree in shapes.items() if "backbone" in tree
    }
    entries = _entries(backbone, roots={"backbone": CATSPP_BACKBONE_PREFIX})
    for collection, tree in shapes.items():
        head = {k: v for k, v in tree.items() if k != "backbone"}
        for path, leaf in traverse_util.flatten_dict(head).items():
            shape = tuple(leaf.shape)
            entries.append(
                _Entry(
                    collection,
                    path,
                    shape,
                    _catspp_head_key(path),
                    _torch_shape(path[-1], shape),
                )
            )
    return entries


@functools.lru_cache(maxsize=16)
def _catspp_table(model: CATsPP) -> _Table:
    """The official CATs++ state dict of one config."""
    entries = _catspp_entries(_trace_variables(model))
    used = {e.torch_key for e in entries}
    unused, optional = _unused_backbone_keys(model, used, CATSPP_BACKBONE_PREFIX)
    return _Table(tuple(entries), frozenset(unused), frozenset(optional))


def infer_catspp_fields(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """CATs++ fields that an official state dict determines.

    Backbone (stages and width), flow grid side, head count, projection widths and MLP ratio
    are read from the keys and shapes; the dropout rate, beta and the modes are not stored.

    Args:
        state_dict: torch key -> array.

    Returns:
        A dict of CATsPP constructor arguments (only those it could infer).
    """
    keys = list(state_dict)
    fields: dict[str, Any] = {}
    stage_pattern = re.escape(CATSPP_BACKBONE_PREFIX) + r"layer{}\.(\d+)\.conv1\.weight$"
    stages = []
    while blocks := _count_indexed(keys, stage_pattern.format(len(stages) + 1)):
        stages.append(blocks)
    stem = state_dict.get(CATSPP_BACKBONE_PREFIX + "conv1.weight")
    if stages and stem is not None:
        fields.update(_backbone_fields(tuple(stages), int(np.shape(stem)[0])))
    head = CATSPP_HEAD_PREFIX
    shape = {k: np.shape(v) for k, v in state_dict.items()}
    if head + "x_normal" in shape:
        fields["feature_size"] = int(shape[head + "x_normal"][0])
    if (key := head + "early_conv.0.conv4d.0.0.query_conv.weight") in shape:
        fields["num_heads"] = int(shape[key][0])
    if (key := head + "transformers.0.layer.0.qk.linear.weight") in shape:
        fields["qk_dim"] = int(shape[key][0]) // 2
    if (key := head + "affinity_proj.0.0.weight") in shape:
        fields["affinity_dim"] = int(shape[key][0])
    if (key := head + "transformers.0.layer.0.mlp.mlp.0.query_conv.weight") in shape:
        fields["mlp_ratio"] = shape[key][0] / shape[key][1]
    return fields


def _catspp_overrides(model_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise the overrides: CATsPP fields, plus the non-model config fields."""
    _checked_overrides(model_overrides, CATsPP, "catspp", "CATs++")
    return catspp_kwargs(model_overrides)


def catspp_from_torch(
    state_dict: Mapping[str, np.ndarray], **model_overrides: Any
) -> tuple[CATsPP, dict[str, Any]]:
    """Official CATs++ (``CATsImproved``) state dict -> ``(model, variables)``.

    Args:
        state_dict: torch key -> array (``backbone.*`` with its BatchNorm buffers,
            ``hpn_learner.*``), as ``load_state_dict_file`` returns it.
        **model_overrides: CATsPP fields that override what is inferred (see
            ``infer_catspp_fields``), e.g. ``dtype="bfloat16"``. A whole ``config.model`` may
            be passed: its ``name`` must be "catspp"; ``backbone_weights`` is ignored.

    Returns:
        The CATsPP module and ``{"params": ..., "batch_stats": ...}`` (float32), ready for
        ``model.apply(variables, source=..., target=...)``.

    Raises:
        ValueError: an unknown override, an invalid config, or keys that are missing,
            unexpected or mis-shaped (all listed in one message).
    """
    fields = {**infer_catspp_fields(state_dict), **_catspp_overrides(model_overrides)}
    model = CATsPP(**fields)
    variables = _assemble(_catspp_table(model), state_dict, f"the CATs++ model {fields}")
    return model, variables


def catspp_to_torch(model: CATsPP, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax CATs++ variables -> the official state-dict keys and layouts (inverse converter).

    Only the tensors our model holds come back (no torchvision ``fc``, no
    ``num_batches_tracked``).

    Args:
        model: the CATsPP module the variables belong to.
        variables: ``{"params": ..., "batch_stats": ...}`` of ``model``.

    Returns:
        ``{torch key: numpy array}`` in PyTorch layouts and the variables' own dtypes.
    """
    return {
        e.torch_key: _to_torch(e.path[-1], _leaf(variables, (e.collection, *e.path)), e.torch_shape)
        for e in _catspp_table(model).entries
    }


def backbone_from_torchvision(
    state_dict: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """torchvision ResNet weights -> the backbone variables of the model ``model_cfg`` builds.

    Args:
        state_dict: torchvision keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...),
            e.g. ``resnet101-5d3b4d8f.pth`` read with ``load_state_dict_file``.
        model_cfg: ``config.model``.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` for the backbone alone: put them under
        ``variables["params"]["backbone"]`` and ``variables["batch_stats"]["backbone"]``.

    Raises:
        ValueError: keys that are missing, unexpected or mis-shaped (all listed).
    """
    model = build_model(model_cfg)
    return _assemble(_torchvision_table(model), state_dict, f"the {model.backbone} backbone")


def backbone_to_torchvision(
    variables: Mapping[str, Any], model_cfg: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The whole ResNet of ``model_cfg``'s backbone -> torchvision keys (no ``fc``).

    The inverse of ``backbone_from_torchvision`` for a ResNet with every stage built (as
    torchvision holds it, whatever ``hyperpixel_ids`` the model taps).

    Args:
        variables: ``{"params": ..., "batch_stats": ...}`` of a ``ResNet`` with the stages,
            width and all blocks of ``model_cfg``'s backbone (``tap_ids`` = the last block).
        model_cfg: ``config.model``.

    Returns:
        ``{torch key: array}`` in torchvision layouts; add ``fc.weight`` and ``fc.bias`` for a
        file ``backbone_from_torchvision`` reads.
    """
    model = build_model(model_cfg)
    full = _model_backbone(model).clone(tap_ids=(sum(model.stage_blocks),))
    return {
        e.torch_key: _to_torch(e.path[-1], _leaf(variables, (e.collection, *e.path)), e.torch_shape)
        for e in _entries(_backbone_shapes(full))
    }


# ---- DINOv2 ----

# Prefixes of the Hugging Face task models (``Dinov2ForImageClassification`` and the like).
_DINOV2_HF_PREFIXES = ("dinov2.", "dinov2_with_registers.")
_DINOV2_HF_ROOTS = ("embeddings.", "encoder.layer.", "layernorm.")
# Official key -> Hugging Face key, first match. The fused qkv is split apart separately.
_DINOV2_TO_HF = (
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^register_tokens$", "embeddings.register_tokens"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.ls(\d)\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.mlp\.w12\.", r"encoder.layer.\1.mlp.weights_in."),
    (r"^blocks\.(\d+)\.mlp\.w3\.", r"encoder.layer.\1.mlp.weights_out."),
    (r"^blocks\.(\d+)\.", r"encoder.layer.\1."),  # norm1, norm2, mlp.fc1, mlp.fc2
    (r"^norm\.", "layernorm."),
)
_DINOV2_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
# Per layout: a block's key prefix, and the key that only a SwiGLU block holds.
_DINOV2_BLOCK_KEYS = {
    "torch": (r"^blocks\.(\d+)\.", r"^blocks\.\d+\.mlp\.w12\."),
    "huggingface": (r"^encoder\.layer\.(\d+)\.", r"^encoder\.layer\.\d+\.mlp\.weights_in\."),
}


@dataclasses.dataclass(frozen=True)
class _DinoEntry:
    """One Flax parameter (under ``params``) and the official torch-hub tensor it comes from."""

    path: tuple[str, ...]
    torch_key: str
    torch_shape: tuple[int, ...]

    @property
    def flax_shape(self) -> tuple[int, ...]:
        if self.path[-1] == "kernel" and len(self.torch_shape) == 4:  # OIHW -> HWIO
            cout, cin, kh, kw = self.torch_shape
            return (kh, kw, cin, cout)
        if self.path[-1] == "kernel":  # [out, in] -> [in, out]
            return self.torch_shape[::-1]
        return self.torch_shape


def _dinov2_linear(path: tuple[str, ...], key: str, shape: tuple[int, ...]) -> list[_DinoEntry]:
    """A torch Linear / Conv2d ``key`` of weight ``shape`` -> kernel and bias entries."""
    return [
        _DinoEntry((*path, "kernel"), f"{key}.weight", shape),
        _DinoEntry((*path, "bias"), f"{key}.bias", (shape[0],)),
    ]


def _dinov2_norm(path: tuple[str, ...], key: str, width: int) -> list[_DinoEntry]:
    return [
        _DinoEntry((*path, "scale"), f"{key}.weight", (width,)),
        _DinoEntry((*path, "bias"), f"{key}.bias", (width,)),
    ]


def _dinov2_entries(model: DinoVisionTransformer) -> list[_DinoEntry]:
    """Every parameter of ``model``, in the official state-dict order."""
    c, p, grid = model.embed_dim, model.patch_size, model.pos_embed_grid
    entries = [
        _DinoEntry(("cls_token",), "cls_token", (1, 1, c)),
        _DinoEntry(("pos_embed",), "pos_embed", (1, 1 + grid * grid, c)),
    ]
    if model.num_register_tokens:
        shape = (1, model.num_register_tokens, c)
        entries.append(_DinoEntry(("register_tokens",), "register_tokens", shape))
    entries.append(_DinoEntry(("mask_token",), "mask_token", (1, c)))
    entries += _dinov2_linear(("patch_embed", "proj"), "patch_embed.proj", (c, 3, p, p))
    for i in range(model.depth):
        module, key = f"blocks_{i}", f"blocks.{i}"
        entries += _dinov2_norm((module, "norm1"), f"{key}.norm1", c)
        entries += _dinov2_linear((module, "attn", "qkv"), f"{key}.attn.qkv", (3 * c, c))
        entries += _dinov2_linear((module, "attn", "proj"), f"{key}.attn.proj", (c, c))
        entries.append(_DinoEntry((module, "ls1", "gamma"), f"{key}.ls1.gamma", (c,)))
        entries += _dinov2_norm((module, "norm2"), f"{key}.norm2", c)
        if model.ffn_layer == "swiglufused":
            hidden = swiglu_hidden_features(c, model.mlp_ratio)
            entries += _dinov2_linear((module, "mlp", "w12"), f"{key}.mlp.w12", (2 * hidden, c))
            entries += _dinov2_linear((module, "mlp", "w3"), f"{key}.mlp.w3", (c, hidden))
        else:
            hidden = int(c * model.mlp_ratio)
            entries += _dinov2_linear((module, "mlp", "fc1"), f"{key}.mlp.fc1", (hidden, c))
            entries += _dinov2_linear((module, "mlp", "fc2"), f"{key}.mlp.fc2", (c, hidden))
        entries.append(_DinoEntry((module, "ls2", "gamma"), f"{key}.ls2.gamma", (c,)))
    entries += _dinov2_norm(("norm",), "norm", c)
    return entries


def _dinov2_hf_keys(torch_key: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """The Hugging Face key(s) and shape(s) of one official tensor: three for a fused qkv."""
    if match := _DINOV2_QKV.match(torch_key):
        block, leaf = match.groups()
        part = (shape[0] // 3, *shape[1:])
        prefix = f"encoder.layer.{block}.attention.attention"
        return [(f"{prefix}.{name}.{leaf}", part) for name in ("query", "key", "value")]
    for pattern, replacement in _DINOV2_TO_HF:
        if re.match(pattern, torch_key):
            return [(re.sub(pattern, replacement, torch_key, count=1), shape)]
    raise KeyError(f"no Hugging Face name for the DINOv2 key {torch_key}")


def _dinov2_layout(state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """("torch" or "huggingface", the state dict without a Hugging Face task-model prefix)."""
    state_dict = dict(state_dict)
    for prefix in _DINOV2_HF_PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
            break
    hf = any(k.startswith(_DINOV2_HF_ROOTS) for k in state_dict)
    return ("huggingface" if hf else "torch"), state_dict


def _dinov2_shapes(state_dict: Mapping[str, np.ndarray], layout: str) -> dict[str, tuple]:
    """Shapes of the tensors the inference reads, under their official names (when present)."""
    wanted = ("cls_token", "pos_embed", "register_tokens", "norm.weight", "patch_embed.proj.weight")
    shapes = {}
    for key in wanted:
        name = key if layout == "torch" else _dinov2_hf_keys(key, ())[0][0]
        if name in state_dict:
            shapes[key] = tuple(np.shape(state_dict[name]))
    block, swiglu = _DINOV2_BLOCK_KEYS[layout]
    fc1 = re.compile(block + r"mlp\.fc1\.weight$")
    for name, value in state_dict.items():
        if fc1.match(name):
            shapes.setdefault("fc1", tuple(np.shape(value)))
    return shapes


def _infer_dinov2_fields(state_dict: Mapping[str, np.ndarray], layout: str) -> dict[str, Any]:
    """Width, depth, FFN, MLP ratio, registers, grid and patch size from the keys and shapes.

    Raises:
        ValueError: the width or depth cannot be read, or the positional embedding is not a
            square grid plus the cls position.
    """
    shapes = _dinov2_shapes(state_dict, layout)
    widths = [shapes[k][-1] for k in ("cls_token", "pos_embed", "norm.weight") if k in shapes]
    if "patch_embed.proj.weight" in shapes:
        widths.append(shapes["patch_embed.proj.weight"][0])
    block, swiglu = _DINOV2_BLOCK_KEYS[layout]
    depth = _count_indexed(list(state_dict), block)
    if not widths or not depth:
        raise ValueError(
            f"not a DINOv2 state dict ({layout} layout): no "
            + ("width (cls_token, pos_embed, norm)" if not widths else "transformer blocks")
            + f" found among its {len(state_dict)} keys"
        )
    width = int(widths[0])
    fields: dict[str, Any] = {"embed_dim": width, "depth": depth}
    fields["ffn_layer"] = "swiglufused" if any(re.match(swiglu, k) for k in state_dict) else "mlp"
    if fields["ffn_layer"] == "mlp" and "fc1" in shapes:
        fields["mlp_ratio"] = _mlp_ratio(shapes["fc1"][0], width)
    fields["num_register_tokens"] = int(shapes.get("register_tokens", (1, 0))[1])
    if "pos_embed" in shapes:
        positions = shapes["pos_embed"][1] - 1
        grid = math.isqrt(max(positions, 0))
        if grid * grid != positions or grid < 1:
            raise ValueError(
                f"pos_embed {shapes['pos_embed']}: expected 1 + M*M positions (a square grid)"
            )
        fields["pos_embed_grid"] = grid
    if "patch_embed.proj.weight" in shapes:
        fields["patch_size"] = int(shapes["patch_embed.proj.weight"][-1])
    return fields


def _mlp_ratio(hidden: int, width: int) -> float:
    """A ratio with ``int(width * ratio) == hidden`` (hidden / width can round just below)."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _dinov2_heads(width: int, name: str, num_heads: int | None) -> int:
    entry = hub_entry(name)
    if num_heads is not None:
        return int(num_heads)
    if width != entry.embed_dim:
        raise ValueError(
            f"the weights are {width} wide, {name} is {entry.embed_dim} wide: pass num_heads=... "
            "(a state dict does not store the number of attention heads)"
        )
    return entry.num_heads


def _check_dinov2_registers(registers: int, name: str) -> None:
    expected = hub_entry(name).num_register_tokens
    if registers == expected:
        return
    twin = name.removesuffix("_reg") if name.endswith("_reg") else f"{name}_reg"
    hint = f": use {twin}" if HUB.get(twin) and HUB[twin].num_register_tokens == registers else ""
    raise ValueError(
        f"the weights hold {registers} register tokens, but the hub entry {name} has "
        f"{expected}{hint}"
    )


def _dinov2_key_problems(
    expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, np.ndarray]
) -> list[str]:
    """Missing, unexpected and mis-shaped keys, in the wording of ``_assemble``."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{key}: {tuple(np.shape(state_dict[key]))}, expected {shape}"
        for key, shape in expected.items()
        if key in state_dict and tuple(np.shape(state_dict[key])) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if wrong_shape:
        problems.append(f"wrong shapes ({len(wrong_shape)}): " + "; ".join(wrong_shape))
    return problems


def _dinov2_expected(model: DinoVisionTransformer, layout: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} a state dict of ``model`` holds in ``layout``."""
    entries = _dinov2_entries(model)
    if layout == "torch":
        return {e.torch_key: e.torch_shape for e in entries}
    return dict(kv for e in entries for kv in _dinov2_hf_keys(e.torch_key, e.torch_shape))


def _dinov2_official(
    model: DinoVisionTransformer, state_dict: Mapping[str, np.ndarray], layout: str
) -> dict[str, np.ndarray]:
    """A checked state dict of ``model`` in the official layout (q, k and v fused back)."""
    if layout == "torch":
        return dict(state_dict)
    official = {}
    for e in _dinov2_entries(model):
        parts = [np.asarray(state_dict[k]) for k, _ in _dinov2_hf_keys(e.torch_key, e.torch_shape)]
        official[e.torch_key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return official


def dinov2_from_torch(
    state_dict: Mapping[str, np.ndarray],
    name: str = "dinov2_vitb14",
    *,
    num_heads: int | None = None,
    model_overrides: Mapping[str, Any] | None = None,
) -> tuple[DinoVisionTransformer, dict[str, Any]]:
    """An official DINOv2 state dict -> ``(model, variables)``.

    Args:
        state_dict: the official torch-hub layout (``cls_token``, ``blocks.0.attn.qkv.weight``,
            ``blocks.0.ls1.gamma``, ...) or the Hugging Face ``Dinov2Model`` /
            ``Dinov2WithRegistersModel`` layout (``embeddings.cls_token``,
            ``encoder.layer.0.attention.attention.query.weight``, ``layer_scale1.lambda1``,
            ``layernorm.weight``, ...; a ``dinov2.`` or ``dinov2_with_registers.`` prefix is
            removed), told apart by the keys.
        name: the hub entry (``matchme_jax.models.dinov2.HUB``): it sets the register count the
            weights must hold and how the positional embedding is resized. Width, depth, FFN
            kind, patch size and positional grid come from the weights.
        num_heads: needed when the width is not the hub entry's (the state dict does not hold
            it); by default the hub entry's.
        model_overrides: other ``DinoVisionTransformer`` fields, e.g. ``{"dtype": "bfloat16"}``.

    Returns:
        The module and ``{"params": ...}`` with numpy float32 leaves.

    Raises:
        ValueError: an unknown name or override, a register count that is not the hub
            entry's, an unknown head count, or keys that are missing, unexpected or mis-shaped
            (all listed in one message).
    """
    entry = hub_entry(name)
    layout, state_dict = _dinov2_layout(state_dict)
    fields = _infer_dinov2_fields(state_dict, layout)
    _check_dinov2_registers(fields["num_register_tokens"], name)
    fields["num_heads"] = _dinov2_heads(fields["embed_dim"], name, num_heads)
    fields["interpolate_antialias"] = entry.interpolate_antialias
    fields["interpolate_offset"] = entry.interpolate_offset
    overrides = dict(model_overrides or {})
    known = {f.name for f in model_fields(DinoVisionTransformer)}
    if unknown := sorted(set(overrides) - known):
        raise ValueError(f"unknown DinoVisionTransformer fields {unknown}; known: {sorted(known)}")
    model = DinoVisionTransformer(**{**fields, **overrides})
    problems = _dinov2_key_problems(_dinov2_expected(model, layout), state_dict)
    if problems:
        what = (
            f"the DINOv2 model {name} ({layout} layout, width {model.embed_dim}, depth "
            f"{model.depth}, {model.num_register_tokens} registers, ffn {model.ffn_layer})"
        )
        raise ValueError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    official = _dinov2_official(model, state_dict, layout)
    flat = {
        e.path: _to_flax(e.path[-1], official[e.torch_key], e.flax_shape)
        for e in _dinov2_entries(model)
    }
    return model, {"params": traverse_util.unflatten_dict(flat)}


def dinov2_to_torch(model: DinoVisionTransformer, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Flax DINOv2 variables -> the official torch-hub state dict (inverse of the converter).

    Returns:
        ``{key: numpy array}`` in the official order and layouts, the variables' own dtypes.
    """
    params = variables["params"]
    return {
        e.torch_key: _to_torch(e.path[-1], _leaf(params, e.path), e.torch_shape)
        for e in _dinov2_entries(model)
    }


def dinov2_to_huggingface(
    model: DinoVisionTransformer, variables: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Flax DINOv2 variables -> the Hugging Face ``Dinov2Model`` (or, with registers,
    ``Dinov2WithRegistersModel``) state dict: q, k and v split, renamed keys.

    Returns:
        ``{key: numpy array}``, the variables' own dtypes.
    """
    state_dict = {}
    for key, value in dinov2_to_torch(model, variables).items():
        names = [k for k, _ in _dinov2_hf_keys(key, value.shape)]
        parts = np.split(value, len(names), axis=0) if len(names) > 1 else [value]
        state_dict.update({k: np.ascontiguousarray(v) for k, v in zip(names, parts, strict=True)})
    return state_dict


def backbone_from_dinov2(
    state_dict: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """Official DINOv2 weights -> the ViT backbone variables of the CATs model ``model_cfg``
    builds (``config.model.backbone_weights`` of a DINOv2 config).

    Args:
        state_dict: the torch-hub or Hugging Face layout (see ``dinov2_from_torch``), e.g.
            ``dinov2_vitb14_pretrain.pth`` or ``facebook/dinov2-base``'s ``model.safetensors``
            read with ``load_state_dict_file``.
        model_cfg: ``config.model``, whose ``backbone`` names the hub entry (its registers and
            positional-embedding resize).

    Returns:
        ``{"params": ...}`` for the backbone alone, to go under ``variables["params"]["backbone"]``:
        the blocks up to the last hyperpixel id and the final norm; the later blocks, which the
        model never runs, are left out.

    Raises:
        ValueError: weights of another size than the config's (both named), or keys that are
            missing, unexpected or mis-shaped (all listed).
    """
    model = build_model(model_cfg)
    want = backbones.vit_settings(model)
    # A custom ViT resizes its positional embedding as the plain hub entries do.
    name = model.backbone if model.backbone in HUB else "dinov2_vits14"
    layout, stripped = _dinov2_layout(state_dict)
    fields = _infer_dinov2_fields(stripped, layout)
    have = (fields["embed_dim"], fields["depth"], fields["num_register_tokens"])
    if have != (want.embed_dim, want.depth, want.num_register_tokens):
        like = [n for n, e in HUB.items() if (e.embed_dim, e.depth, e.num_register_tokens) == have]
        raise ValueError(
            f"the weights are a {have[0]} wide, {have[1]}-block ViT with {have[2]} registers"
            + (f" ({like[0]})" if like else "")
            + f", but config.model.backbone={model.backbone!r} is {want.embed_dim} wide with "
            f"{want.depth} blocks and {want.num_register_tokens} registers"
            + (f": set config.model.backbone={like[0]!r}" if like else "")
        )
    _, variables = dinov2_from_torch(state_dict, name, num_heads=want.num_heads)
    last = max(model.hyperpixel_ids)
    return {
        "params": {
            key: value
            for key, value in variables["params"].items()
            if not (key.startswith("blocks_") and int(key.removeprefix("blocks_")) > last)
        }
    }


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a checkpoint file into ``{torch key: numpy array}``.

    ``.npz`` and ``.safetensors`` need no torch; ``.pth``/``.pt`` need torch installed. A
    checkpoint dict that wraps the weights under ``"state_dict"`` is unwrapped, and the
    ``module.`` prefix of ``nn.DataParallel`` is removed.

    Args:
        path: the file.

    Returns:
        The state dict.

    Raises:
        FileNotFoundError: no such file (an ``errors.MissingFileError``).
        ValueError: an unsupported extension, a damaged or cut-short file, a .pth that needs
            full unpickling, no tensors (each an ``errors.UserError`` naming the file).
        ImportError: a ``.pth`` file without torch installed (``errors.MissingPackageError``).
    """
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(f"checkpoint file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors", ".pth", ".pt"):
        raise errors.UserError(
            f"{path}: unsupported checkpoint extension {suffix!r}; use .npz, .safetensors, "
            ".pth or .pt"
        )
    try:
        raw = _read_checkpoint_file(path, suffix)
    except errors.UserError:
        raise
    except Exception as e:  # numpy, zipfile, safetensors and torch each raise their own kinds
        raise errors.UserError(
            f"{path} is not a readable {suffix} checkpoint, it is damaged or cut short "
            f"({errors.gist(e)}); download or save it again."
        ) from e
    return _unwrap_state_dict(raw, path)


def _read_checkpoint_file(path: Path, suffix: str) -> Mapping[str, Any]:
    """{key: array} of a .npz, .safetensors or .pth/.pt file, as its library reads it."""
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):  # numpy would speak of pickles and allow_pickle
            raise zipfile.BadZipFile("not a zip archive, as every .npz file is")
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    return _load_torch_file(path)


def _load_torch_file(path: Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError as err:
        raise errors.MissingPackageError(
            f"reading {path} needs torch (pip install torch); or save the state dict as .npz "
            "or .safetensors where torch is installed"
        ) from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise errors.UserError(
            f"{path}: torch.load(weights_only=True) refused it ({errors.gist(err)}). If you "
            "trust the file, save its state dict alone: torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'clean.pth')"
        ) from err
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    # A state dict holds only tensors; bfloat16 has no numpy dtype, hence .float().
    return {
        k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        for k, v in checkpoint.items()
        if isinstance(v, torch.Tensor)
    }


def _unwrap_state_dict(raw: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    if isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    state_dict = {k.removeprefix("module."): np.asarray(v) for k, v in raw.items()}
    if not state_dict:
        raise errors.UserError(f"{path}: no tensors found")
    if len(state_dict) != len(raw):
        raise errors.UserError(f"{path}: keys collide once the 'module.' prefix is removed")
    return state_dict


__all__ = [
    "backbone_from_dinov2",
    "backbone_from_torchvision",
    "cats_from_torch",
    "cats_to_torch",
    "catspp_from_torch",
    "catspp_to_torch",
    "dinov2_from_torch",
    "dinov2_to_huggingface",
    "dinov2_to_torch",
    "infer_cats_fields",
    "infer_catspp_fields",
    "load_state_dict_file",
]
