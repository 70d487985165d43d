"""Official DINOv2 weights, in the torch-hub or the Hugging Face layout <-> Flax variables.

The torch-hub layout is the official state dict (``cls_token``, ``blocks.0.attn.qkv.weight``,
``blocks.0.ls1.gamma``, ...); the Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel``
layout renames the keys and splits the fused qkv (``embeddings.cls_token``,
``encoder.layer.0.attention.attention.query.weight``, ``layer_scale1.lambda1``, ...). The size
comes from the weights, the register count and positional-embedding resize from the hub entry's
name; any missing, unexpected or mis-shaped key fails with one ValueError that lists them all.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from matchme_jax.convert.common import count_indexed, key_problems, to_flax, to_torch, tree_leaf
from matchme_jax.models import (
    backbones,
    build_model,
    model_fields,
)
from matchme_jax.models.dinov2 import (
    HUB,
    DinoVisionTransformer,
    hub_entry,
    swiglu_hidden_features,
)

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
    depth = count_indexed(list(state_dict), block)
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
    problems = key_problems(_dinov2_expected(model, layout), state_dict)
    if problems:
        what = (
            f"the DINOv2 model {name} ({layout} layout, width {model.embed_dim}, depth "
            f"{model.depth}, {model.num_register_tokens} registers, ffn {model.ffn_layer})"
        )
        raise ValueError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    official = _dinov2_official(model, state_dict, layout)
    flat = {
        e.path: to_flax(e.path[-1], official[e.torch_key], e.flax_shape)
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
        e.torch_key: to_torch(e.path[-1], tree_leaf(params, e.path), e.torch_shape)
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
