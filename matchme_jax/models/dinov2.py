"""DINOv2 ViT as the official ``DinoVisionTransformer`` computes it, in Flax.

Written from facebookresearch/dinov2 @ b8931f7bf91576930313be2c6d6af376033b35f0
(``dinov2/models/vision_transformer.py``, ``dinov2/layers/*.py``, ``dinov2/hub/backbones.py``), in
eval mode (no drop path, no masks). The forward:

1. ``patch_embed.proj``: a patch_size x patch_size conv with that stride; tokens row-major
   (p = y * w + x).
2. Prepend ``cls_token``; add the positional embedding, resized to the patch grid
   (``interpolate_pos_encoding``, below).
3. Insert the ``register_tokens`` between cls and the patches, after the positional embedding
   (registers get none): [cls, reg_0 .. reg_R-1, patches].
4. Blocks: ``x += ls1 * attn(norm1(x))``, ``x += ls2 * mlp(norm2(x))``. LayerNorm eps 1e-6, one
   fused qkv Linear (rows [q | k | v], head-major), exact-erf GELU (or SwiGLU for ViT-g).
5. Final ``norm``.

Positional embedding (official ``interpolate_pos_encoding``): a 518 x 518 input (the 37 x 37
grid the embedding was trained at) takes the parameter unchanged. Otherwise the 37 x 37 grid is
resized, separably, in float32 whatever the run's dtype (the official ``.float()``), as
``models/pos_embed.py`` says.

Module and parameter names mirror the official state dict (``blocks_3/attn/qkv``, ``ls1/gamma``)
so that ``matchme_jax.convert.dinov2_from_torch`` is a table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from matchme_jax.models.common import (
    ATTENTION_IMPLEMENTATIONS,
    DTYPES,
    Attention,
    Mlp,
    check_images,
    trunc_normal_init,
)
from matchme_jax.models.pos_embed import keeps_pos_embed, pos_embed_resize_matrices

LAYER_NORM_EPS = 1e-6
PATCH_SIZE = 14  # every released DINOv2 model
FFN_LAYERS = ("mlp", "swiglufused")


@dataclasses.dataclass(frozen=True)
class HubEntry:
    """The settings the official torch-hub constructor (``dinov2/hub/backbones.py``) gives."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn_layer: str  # "mlp" or "swiglufused"
    num_register_tokens: int
    interpolate_antialias: bool
    interpolate_offset: float


def _hub_entries() -> dict[str, HubEntry]:
    # vit_small / vit_base / vit_large / vit_giant2 at patch 14; ViT-g uses SwiGLU.
    sizes = {
        "s": (384, 12, 6, "mlp"),
        "b": (768, 12, 12, "mlp"),
        "l": (1024, 24, 16, "mlp"),
        "g": (1536, 40, 24, "swiglufused"),
    }
    hub = {}
    for size, (dim, depth, heads, ffn) in sizes.items():
        hub[f"dinov2_vit{size}14"] = HubEntry(dim, depth, heads, ffn, 0, False, 0.1)
        hub[f"dinov2_vit{size}14_reg"] = HubEntry(dim, depth, heads, ffn, 4, True, 0.0)
    return hub


HUB: dict[str, HubEntry] = _hub_entries()


def hub_entry(name: str) -> HubEntry:
    """The hub entry ``name``; a ValueError listing the known names otherwise."""
    if name not in HUB:
        raise ValueError(f"unknown DINOv2 hub entry {name!r}; known: {', '.join(HUB)}")
    return HUB[name]


def hub_model(name: str, **overrides) -> DinoVisionTransformer:
    """The model of a hub entry (e.g. ``hub_model("dinov2_vitb14_reg", dtype="bfloat16")``)."""
    entry = hub_entry(name)
    return DinoVisionTransformer(**{**dataclasses.asdict(entry), **overrides})


def swiglu_hidden_features(embed_dim: int, mlp_ratio: float) -> int:
    """Hidden width of the official ``SwiGLUFFNFused`` (4096 for ViT-g)."""
    return (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _layer_norm(dtype: jnp.dtype, name: str | None = None) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it; eps 1e-6 (torch's default 1e-5 is wrong here).
    return nn.LayerNorm(LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


class PatchEmbed(nn.Module):
    """``patch_embed``: a non-overlapping conv (official ``PatchEmbed.proj``)."""

    embed_dim: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        """[B, H, W, 3] -> [B, H / p, W / p, C]."""
        p = self.patch_size
        conv = nn.Conv(
            self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj"
        )
        return conv(images)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (official ``LayerScale``, hub init value 1.0)."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[..., C] -> [..., C]."""
        gamma = self.param("gamma", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


class SwiGLUFFN(nn.Module):
    """Official ``SwiGLUFFNFused`` (ViT-g): ``w3(silu(x1) * x2)`` with ``[x1 | x2] = w12(x)``."""

    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[..., C] -> [..., C]."""
        dense = dict(kernel_init=trunc_normal_init, dtype=self.dtype)
        x12 = nn.Dense(2 * self.hidden, name="w12", **dense)(x)
        x1, x2 = jnp.split(x12, 2, axis=-1)
        return nn.Dense(x.shape[-1], name="w3", **dense)(nn.silu(x1) * x2)


class Block(nn.Module):
    """Pre-LN ViT block with LayerScale (official ``NestedTensorBlock`` in eval mode)."""

    num_heads: int
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, N, C] -> [B, N, C]."""
        dim = x.shape[-1]
        attn = Attention(self.num_heads, self.dtype, self.attention, name="attn")
        x = x + LayerScale(name="ls1")(attn(_layer_norm(self.dtype, "norm1")(x)))
        if self.ffn_layer == "swiglufused":
            mlp = SwiGLUFFN(swiglu_hidden_features(dim, self.mlp_ratio), self.dtype, name="mlp")
        else:
            mlp = Mlp(int(dim * self.mlp_ratio), self.dtype, name="mlp")
        return x + LayerScale(name="ls2")(mlp(_layer_norm(self.dtype, "norm2")(x)))


class DinoVisionTransformer(nn.Module):
    """The official DINOv2 ``DinoVisionTransformer`` (eval mode), channels-last.

    ``hub_model(name)`` builds a hub entry (``HUB``); the defaults are ViT-S/14 without
    registers. Parameters are float32; ``dtype`` is the compute dtype (LayerNorm statistics and
    softmax stay at least float32). The positional-embedding resize runs in float32 in every
    dtype, as the official ``.float()`` does, so a float64 run carries its float32 rounding
    just like the official float64 run.

    Attributes:
        embed_dim, depth, num_heads, mlp_ratio: the transformer's width, blocks, heads, MLP ratio.
        ffn_layer: "mlp" (fc1, exact GELU, fc2) or "swiglufused" (ViT-g's SwiGLU).
        num_register_tokens: extra learned tokens after cls (4 in the ``_reg`` entries).
        interpolate_antialias, interpolate_offset: how the positional embedding is resized.
        patch_size: patch side in pixels (14).
        pos_embed_grid: side of the positional-embedding grid (official img_size 518 // 14).
        dtype: "float32", "bfloat16", "float16" or "float64".
        attention: ``common.dot_product_attention`` implementation.
    """

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    patch_size: int = PATCH_SIZE
    pos_embed_grid: int = 37
    dtype: str = "float32"
    attention: str = "auto"

    def __post_init__(self) -> None:
        validate_dinov2_fields(self)
        super().__post_init__()

    def setup(self) -> None:
        compute = jnp.dtype(self.dtype)
        c, grid = self.embed_dim, self.pos_embed_grid
        self.patch_embed = PatchEmbed(c, self.patch_size, compute)
        # Official init: cls and registers N(0, 1e-6), pos_embed trunc-normal 0.02, mask zero.
        tiny = nn.initializers.normal(1e-6)
        self.cls_token = self.param("cls_token", tiny, (1, 1, c), jnp.float32)
        self.pos_embed = self.param(
            "pos_embed", trunc_normal_init, (1, 1 + grid**2, c), jnp.float32
        )
        if self.num_register_tokens:
            shape = (1, self.num_register_tokens, c)
            self.register_tokens = self.param("register_tokens", tiny, shape, jnp.float32)
        # Used only with masks (training); kept so that the state dict converts one to one.
        self.mask_token = self.param("mask_token", nn.initializers.zeros, (1, c), jnp.float32)
        self.blocks = [
            Block(self.num_heads, self.mlp_ratio, self.ffn_layer, compute, self.attention)
            for _ in range(self.depth)
        ]
        self.norm = _layer_norm(compute)

    def __call__(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Official ``forward_features`` (no masks).

        Args:
            images: [B, H, W, 3] ImageNet-normalised, H and W multiples of ``patch_size``.

        Returns:
            "x_norm_clstoken" [B, C], "x_norm_regtokens" [B, R, C], "x_norm_patchtokens"
            [B, h*w, C] (row-major, p = y * w + x), "x_prenorm" [B, 1 + R + h*w, C] (the last
            block's output before the final norm).
        """
        x, _ = self._prepare_tokens(images)
        for block in self.blocks:
            x = block(x)
        r = self.num_register_tokens
        x_norm = self.norm(x)
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : 1 + r],
            "x_norm_patchtokens": x_norm[:, 1 + r :],
            "x_prenorm": x,
        }

    def intermediate_layers(
        self,
        images: jnp.ndarray,
        block_ids: Sequence[int],
        norm: bool = True,
        frozen_blocks: int | None = None,
    ) -> list[tuple[jnp.ndarray, jnp.ndarray]]:
        """Official ``get_intermediate_layers(reshape=True, return_class_token=True)``.

        Only blocks 0..max(block_ids) run, so a model initialised through this method has no
        parameters for the later blocks (nor for the final norm when ``norm`` is False).

        Args:
            images: [B, H, W, 3] ImageNet-normalised, H and W multiples of ``patch_size``.
            block_ids: 0-based block indices to return (any order; returned sorted).
            norm: apply the final norm to each block output.
            frozen_blocks: k >= 0 stops gradients after the token embedding (patch embedding,
                cls, positional embedding, registers) and after each of blocks 0..k-1, so none
                of those get a gradient; None freezes nothing.

        Returns:
            For each block i in sorted ``block_ids``: (patch tokens [B, h, w, C], cls [B, C]) of
            block i's output.
        """
        ids = self._checked_block_ids(block_ids, frozen_blocks)
        x, (h, w) = self._prepare_tokens(images)
        frozen = -1 if frozen_blocks is None else frozen_blocks  # -1: not even the embedding
        if frozen >= 0:
            x = jax.lax.stop_gradient(x)
        outputs = []
        for i in range(ids[-1] + 1):
            x = self.blocks[i](x)
            if i < frozen:
                x = jax.lax.stop_gradient(x)
            if i in ids:
                outputs.append(x)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        b, c = x.shape[0], x.shape[-1]
        first_patch = 1 + self.num_register_tokens
        return [(out[:, first_patch:].reshape(b, h, w, c), out[:, 0]) for out in outputs]

    def interpolate_pos_encoding(self, grid_hw: tuple[int, int]) -> jnp.ndarray:
        """The positional embedding for an (h, w) patch grid (official method of that name).

        Returns:
            [1, 1 + h*w, C]: the ``pos_embed`` parameter itself for the trained grid (a 518 x 518
            input), else the resized one in float32 (see the module docstring).
        """
        grid = self.pos_embed_grid
        if keeps_pos_embed(grid, grid_hw):
            return self.pos_embed
        rows, cols = pos_embed_resize_matrices(
            grid, tuple(grid_hw), self.interpolate_antialias, self.interpolate_offset
        )
        pos = self.pos_embed.astype(jnp.float32)
        c = pos.shape[-1]
        # Full float32 matmuls: a TF32 or bfloat16-pass resize would shift every position.
        precise = dict(precision=jax.lax.Precision.HIGHEST)
        patch = pos[0, 1:].reshape(grid, grid, c)
        patch = jnp.einsum("hwc,pw->hpc", patch, jnp.asarray(cols, jnp.float32), **precise)
        patch = jnp.einsum("oh,hpc->opc", jnp.asarray(rows, jnp.float32), patch, **precise)
        return jnp.concatenate([pos[:, :1], patch.reshape(1, -1, c)], axis=1)

    def _prepare_tokens(self, images: jnp.ndarray) -> tuple[jnp.ndarray, tuple[int, int]]:
        """Images -> ([B, 1 + R + h*w, C] tokens [cls, registers, patches], (h, w))."""
        check_images(images, "DINOv2")
        _, height, width, _ = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"DINOv2 images must have sides that are multiples of the patch size {p}; "
                f"got {height} x {width}"
            )
        compute = jnp.dtype(self.dtype)
        patches = self.patch_embed(images.astype(compute))
        b, h, w, c = patches.shape
        cls = jnp.broadcast_to(self.cls_token.astype(compute), (b, 1, c))
        x = jnp.concatenate([cls, patches.reshape(b, h * w, c)], axis=1)
        x = x + self.interpolate_pos_encoding((h, w)).astype(compute)
        if self.num_register_tokens:
            shape = (b, self.num_register_tokens, c)
            registers = jnp.broadcast_to(self.register_tokens.astype(compute), shape)
            x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
        return x, (h, w)

    def _checked_block_ids(self, block_ids: Sequence[int], frozen_blocks: int | None) -> list[int]:
        ids = sorted({int(i) for i in block_ids})
        if not ids or ids[0] < 0 or ids[-1] >= self.depth:
            raise ValueError(
                f"block_ids={tuple(block_ids)}: give at least one block index in "
                f"[0, {self.depth - 1}]"
            )
        if frozen_blocks is not None and not 0 <= frozen_blocks <= self.depth:
            raise ValueError(f"frozen_blocks={frozen_blocks}: must lie in [0, {self.depth}]")
        return ids


def validate_dinov2_fields(model: DinoVisionTransformer) -> None:
    """Raise one ValueError that lists every inconsistent DinoVisionTransformer field."""
    problems = []
    if model.embed_dim < 1 or model.num_heads < 1 or model.embed_dim % model.num_heads:
        problems.append(
            f"num_heads={model.num_heads} must divide embed_dim={model.embed_dim} (both >= 1)"
        )
    if model.depth < 1:
        problems.append(f"depth={model.depth}: must be >= 1")
    if model.mlp_ratio <= 0:
        problems.append(f"mlp_ratio={model.mlp_ratio}: must be > 0")
    if model.ffn_layer not in FFN_LAYERS:
        problems.append(f"ffn_layer={model.ffn_layer!r}: use one of {FFN_LAYERS}")
    if model.num_register_tokens < 0:
        problems.append(f"num_register_tokens={model.num_register_tokens}: must be >= 0")
    if not 0 <= model.interpolate_offset < 1:
        problems.append(f"interpolate_offset={model.interpolate_offset}: must lie in [0, 1)")
    if model.patch_size < 1:
        problems.append(f"patch_size={model.patch_size}: must be >= 1")
    if model.pos_embed_grid < 1:
        problems.append(f"pos_embed_grid={model.pos_embed_grid}: must be >= 1")
    if model.dtype not in DTYPES:
        problems.append(f"dtype={model.dtype!r}: use one of {DTYPES}")
    if model.attention not in ATTENTION_IMPLEMENTATIONS:
        problems.append(f"attention={model.attention!r}: use one of {ATTENTION_IMPLEMENTATIONS}")
    if problems:
        raise ValueError("invalid DINOv2 config: " + "; ".join(problems))
