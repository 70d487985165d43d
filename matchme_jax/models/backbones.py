"""The backbones CATs taps: a torchvision ResNet or a DINOv2 ViT, chosen by `CATs.backbone`.

A ResNet's hyperpixel ids count its bottlenecks (0: the stem); a ViT's are block indices, whose
patch tokens, after the final LayerNorm as in the official `get_intermediate_layers`, are the
taps. A ViT's feature grid is its patch grid: 224 px give 16 x 16 with 14-px patches.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from matchme_jax.models import dinov2, resnet
from matchme_jax.models.common import BACKBONES as RESNETS

# A DINOv2-architecture ViT of any size, trained from scratch (tests; `backbone_width` wide,
# `backbone_blocks[0]` blocks, `backbone_heads` heads, no registers).
CUSTOM_VIT = "dinov2_custom"
VITS = (*dinov2.HUB, CUSTOM_VIT)
BACKBONES = (*RESNETS, *VITS)


def is_vit(backbone: str) -> bool:
    """Whether `backbone` names a DINOv2 ViT (else a ResNet)."""
    return backbone in VITS


def vit_settings(model) -> dinov2.HubEntry:
    """The ViT a CATs config describes: its hub entry, or the custom size of its fields."""
    if model.backbone != CUSTOM_VIT:
        return dinov2.HUB[model.backbone]
    return dinov2.HubEntry(
        embed_dim=model.backbone_width,
        depth=int(model.backbone_blocks[0]),
        num_heads=model.backbone_heads,
        ffn_layer="mlp",
        num_register_tokens=0,
        interpolate_antialias=False,
        interpolate_offset=0.1,
    )


def num_tap_ids(model) -> int:
    """How many tap ids the backbone has: blocks + 1 for a ResNet (the stem is 0), blocks for a
    ViT."""
    if is_vit(model.backbone):
        return vit_settings(model).depth
    return sum(resnet.stage_blocks(model.backbone, model.backbone_blocks)) + 1


def tap_channels(model) -> tuple[int, ...]:
    """Channels of each of the model's hyperpixel taps, in `hyperpixel_ids` order."""
    if is_vit(model.backbone):
        return (vit_settings(model).embed_dim,) * len(model.hyperpixel_ids)
    stages = resnet.stage_blocks(model.backbone, model.backbone_blocks)
    channels = resnet.tap_channels(stages, resnet.stem_width(model.backbone, model.backbone_width))
    return tuple(channels[i] for i in model.hyperpixel_ids)


def frozen_blocks(model) -> int | None:
    """ViT blocks that get no gradient, with the token embedding, in front of the
    `trainable_blocks` fine-tuned ones; None when the whole ViT trains (or `freeze_backbone`
    stops it at the taps)."""
    if not model.trainable_blocks:
        return None
    return max(model.hyperpixel_ids) + 1 - model.trainable_blocks


def is_trainable(model, path: tuple[str, ...]) -> bool:
    """Whether the backbone parameter at `path` (below `params/backbone`) is fine-tuned.

    Every one is, unless `trainable_blocks` limits a ViT's fine-tuning to its last blocks (then
    those blocks and the final norm are); `freeze_backbone` is the optimizer's business.
    """
    if not (is_vit(model.backbone) and model.trainable_blocks):
        return True
    if path[0] == "norm":
        return True
    prefix, _, index = path[0].partition("_")
    return prefix == "blocks" and int(index) >= frozen_blocks(model)


def build(model, name: str | None = None) -> nn.Module:
    """The backbone module of a CATs configuration (unbound when called outside a module)."""
    dtype = jnp.dtype(model.dtype)
    if is_vit(model.backbone):
        settings = dataclasses.asdict(vit_settings(model))
        return dinov2.DinoVisionTransformer(
            **settings, dtype=model.dtype, attention=model.attention, name=name
        )
    return resnet.ResNet(
        stage_blocks=resnet.stage_blocks(model.backbone, model.backbone_blocks),
        tap_ids=tuple(model.hyperpixel_ids),
        width=resnet.stem_width(model.backbone, model.backbone_width),
        dtype=dtype,
        dilated_stages=tuple(model.dilated_stages),
        name=name,
    )


def problems(model) -> list[str]:
    """What is wrong with a CATs config's backbone fields (an empty list when nothing is)."""
    found = []
    if model.backbone not in BACKBONES:
        return [f"backbone={model.backbone!r}: use one of {BACKBONES}"]
    blocks = tuple(model.backbone_blocks)
    if model.backbone == "custom":
        if not blocks or any(int(n) < 1 for n in blocks):
            found.append(f"backbone_blocks={blocks}: need >= 1 block in every stage")
        if model.backbone_width < 1:
            found.append(f"backbone_width={model.backbone_width}: must be >= 1")
    if model.backbone == CUSTOM_VIT:
        if len(blocks) != 1 or int(blocks[0]) < 1:
            found.append(f"backbone_blocks={blocks}: a custom ViT takes one entry, its depth")
        heads = model.backbone_heads
        if heads < 1 or model.backbone_width < 1 or model.backbone_width % heads:
            found.append(
                f"backbone_width={model.backbone_width}, backbone_heads={heads}: a custom ViT "
                "needs heads >= 1 that divide its width"
            )
    if found:
        return found
    found += _tap_problems(tuple(model.hyperpixel_ids), num_tap_ids(model), model.backbone)
    dilated = tuple(model.dilated_stages)
    if dilated and is_vit(model.backbone):
        found.append(f"dilated_stages={dilated}: a ViT has no strided stages; use ()")
    elif dilated:
        stages = len(resnet.stage_blocks(model.backbone, model.backbone_blocks))
        if any(not 1 <= s < stages for s in dilated) or list(dilated) != sorted(set(dilated)):
            found.append(
                f"dilated_stages={dilated}: increasing stage indices in [1, {stages - 1}] "
                "(stage 0 has no stride to replace)"
            )
    if model.trainable_blocks:
        if not is_vit(model.backbone):
            found.append("trainable_blocks applies to ViT backbones; a ResNet fine-tunes whole")
        elif model.freeze_backbone:
            found.append(
                f"trainable_blocks={model.trainable_blocks} with freeze_backbone=True: set "
                "freeze_backbone=False to fine-tune the last blocks"
            )
        elif not found and not 0 < model.trainable_blocks <= max(model.hyperpixel_ids) + 1:
            running = max(model.hyperpixel_ids) + 1
            found.append(
                f"trainable_blocks={model.trainable_blocks}: between 0 and the {running} blocks "
                "that run (up to the largest hyperpixel id)"
            )
    return found


def _tap_problems(ids: tuple[int, ...], count: int, backbone: str) -> list[str]:
    if not ids:
        return ["hyperpixel_ids is empty: give at least one tap id"]
    if any(not 0 <= i < count for i in ids):
        what = "block indices" if is_vit(backbone) else "tap ids"
        return [f"hyperpixel_ids={ids}: {what} must lie in [0, {count - 1}] for this backbone"]
    if any(a >= b for a, b in zip(ids[:-1], ids[1:], strict=True)):
        return [f"hyperpixel_ids={ids}: ids must be strictly increasing"]
    return []
