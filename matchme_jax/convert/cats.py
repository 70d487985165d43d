"""Official CATs and CATs++ checkpoints and torchvision ResNet weights <-> Flax variables.

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
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from matchme_jax.convert.common import count_indexed, key_problems, to_flax, to_torch, tree_leaf
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
from matchme_jax.models.resnet import RESNET_STAGE_BLOCKS, ResNet

BACKBONE_PREFIX = "feature_extraction.backbone."
_FC_KEYS = ("fc.weight", "fc.bias")
# Official CATs keys the flow never depends on: required, then dropped.
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
    expected = {e.torch_key: e.torch_shape for e in table.entries}
    problems = key_problems(expected, state_dict, required=table.unused, optional=table.optional)
    if problems:
        raise ValueError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    flat = {
        (e.collection, *e.path): jnp.asarray(to_flax(e.path[-1], state_dict[e.torch_key], e.shape))
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
    depth = count_indexed(keys, r"^decoder\.blocks\.(\d+)\.")
    if depth:
        fields["depth"] = depth
    stage_pattern = re.escape(BACKBONE_PREFIX) + r"layer{}\.(\d+)\.conv1\.weight$"
    stages = []
    while blocks := count_indexed(keys, stage_pattern.format(len(stages) + 1)):
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
    levels = count_indexed(list(state_dict), r"^proj\.(\d+)\.weight$")
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
        e.torch_key: to_torch(
            e.path[-1], tree_leaf(variables, (e.collection, *e.path)), e.torch_shape
        )
        for e in _cats_table(model).entries
    }


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
    while blocks := count_indexed(keys, stage_pattern.format(len(stages) + 1)):
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
        e.torch_key: to_torch(
            e.path[-1], tree_leaf(variables, (e.collection, *e.path)), e.torch_shape
        )
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
        e.torch_key: to_torch(
            e.path[-1], tree_leaf(variables, (e.collection, *e.path)), e.torch_shape
        )
        for e in _entries(_backbone_shapes(full))
    }
