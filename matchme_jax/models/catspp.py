"""CATs++ (Cho et al., TPAMI 2022) as the official ``CATsImproved`` runs it.

Pipeline (shapes for the official setting: 512-px images, ResNet-101, ``feature_size`` f = 32):

* backbone taps: every bottleneck output of the last three stages, before its final ReLU
  (layer2: 4 maps at 64^2, layer3: 23 at 32^2, layer4: 3 at 16^2);
* per map, the cosine correlation ``f / (||f|| + 1e-5)`` clamped at 0, stacked per stage:
  [B, 16, 16, 16, 16, 3], [B, 32^4, 23], [B, 64^4, 4] (target dims first, channels last);
* early 4-D conv encoders (stride 2 on all four dims, GroupNorm, ReLU) -> 4 channels at
  8^4, 16^4, 32^4;
* coarse to fine, per level: ``c + T(c, source affinity) + T^T(c^T, target affinity)`` with one
  transformer layer T that attends over source tokens (T^T: the same layer on the transposed
  correlation, attending over target tokens), then a 4-D bilinear upsampling added to the next
  level;
* the mean over channels of the finest level is the refined correlation [B, S, T], S = T = f^2;
  a beta-softmax over S and a soft-argmax give the flow [B, f, f, 2] (target grid -> source, in
  cells of 16 px).

Module names follow the official state dict (``early_conv_0``, ``transformers_2/qk_linear``,
``affinity_proj_1``); ``matchme_jax.convert.catspp_from_torch`` maps them.
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from matchme_jax.models import correlation, resnet
from matchme_jax.models.common import (
    BACKBONES,
    BN_MODES,
    DTYPES,
    check_images,
    dot_product_attention,
    linspace_init,
    model_flow,
    readout_window_problems,
    trunc_normal_init,
)
from matchme_jax.models.conv4d import (
    TORCH_KERNEL_INIT,
    Conv4d,
    Encoder4d,
    Quad,
    group_norm,
    interpolate4d,
    transpose4d,
)
from matchme_jax.models.resnet import ResNet

CORR_EPS = 1e-5  # added to the norm, outside the square root (unlike CATs)
# Per level (coarse to fine): the transformer's 4-D kernel, target stride and padding. The
# target stride brings every level's query/key projection to a (f/4)^2 target grid.
LEVEL_KERNELS: tuple[Quad, Quad, Quad] = ((3, 3, 3, 3), (3, 3, 3, 3), (5, 5, 3, 3))
LEVEL_TARGET_STRIDES = (1, 2, 4)
LEVEL_PADDINGS: tuple[Quad, Quad, Quad] = ((1, 1, 1, 1), (1, 1, 1, 1), (2, 2, 1, 1))


def unit_normalise(features: jnp.ndarray) -> jnp.ndarray:
    """``f / (||f||_2 + 1e-5)`` over the last axis (CATs++: eps outside the square root)."""
    return features / (jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True)) + CORR_EPS)


def clamped_correlation(source: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """CATs++ correlation of L normalised feature-map pairs (one stage), one batched product.

    Args:
        source: [B, L, Hs, Ws, C] unit-normalised features.
        target: [B, L, Ht, Wt, C] unit-normalised features.

    Returns:
        corr: [B, Ht, Wt, Hs, Ws, L], the dot products clamped at 0, in the inputs' dtype.
    """
    corr = jnp.einsum("blijc,blkmc->bijkml", target, source)
    return jnp.maximum(corr, 0)


class TransformerLayer4d(nn.Module):
    """One CATs++ transformer layer: attention over source tokens, then a 4-D conv MLP.

    The correlation has ``num_heads`` channels; head h carries channel h's whole target slice
    as its value. Queries and keys are a linear map of the strided, normalised correlation of
    each source token concatenated with its appearance (affinity) vector, plus a learned
    positional embedding.

    Attributes:
        num_heads: attention heads, also the number of correlation channels.
        qk_dim: width of the query (and the key) projection; head dim ``qk_dim / num_heads``.
        mlp_ratio: hidden channels of the MLP over ``num_heads``.
        kernel_size, target_stride, padding: of the 4-D convs (stride 1 for the value and MLP).
        dtype: compute dtype.
    """

    num_heads: int
    qk_dim: int
    mlp_ratio: float
    kernel_size: Quad
    target_stride: int
    padding: Quad
    dtype: jnp.dtype = jnp.float32

    def _conv(self, features: int, stride: int, name: str) -> Conv4d:
        strides = (stride, stride, 1, 1)
        return Conv4d(features, self.kernel_size, strides, self.padding, self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jnp.ndarray, affinity: jnp.ndarray) -> jnp.ndarray:
        """Refine a 4-D correlation (the residual included).

        Args:
            x: [B, Ht, Wt, Hs, Ws, C] with C = num_heads.
            affinity: [B, Hs, Ws, A] appearance of the source tokens.

        Returns:
            [B, Ht, Wt, Hs, Ws, C].
        """
        _, ht, wt, hs, ws, c = x.shape
        heads = self.num_heads
        h = group_norm(self.dtype, "norm1")(x)

        y = group_norm(self.dtype, "qk_norm")(self._conv(c, self.target_stride, "qk_conv")(h))
        tokens = jnp.concatenate(
            [
                einops.rearrange(y, "b ht wt hs ws c -> b (hs ws) (c ht wt)"),
                einops.rearrange(affinity.astype(y.dtype), "b hs ws a -> b (hs ws) a"),
            ],
            axis=-1,
        )
        qk = nn.Dense(
            2 * self.qk_dim, kernel_init=TORCH_KERNEL_INIT, dtype=self.dtype, name="qk_linear"
        )(tokens)
        head_dim = self.qk_dim // heads
        pos = self.param("pos_embed", trunc_normal_init, (hs * ws, head_dim), jnp.float32)
        # The official split puts the head index INNERMOST: channel j is head j % heads.
        q, k = (
            einops.rearrange(t, "b s (d h) -> b s h d", h=heads) + pos[:, None, :].astype(t.dtype)
            for t in jnp.split(qk, 2, axis=-1)
        )

        v = group_norm(self.dtype, "v_norm")(self._conv(c, 1, "v_conv")(h))
        v = einops.rearrange(v, "b ht wt hs ws (h c) -> b (hs ws) h (c ht wt)", h=heads)
        out = dot_product_attention(q, k, v, scale=head_dim**-0.5)
        x = x + einops.rearrange(
            out, "b (hs ws) h (c ht wt) -> b ht wt hs ws (h c)", hs=hs, ws=ws, ht=ht, wt=wt
        )

        y = group_norm(self.dtype, "norm2")(x)
        y = self._conv(int(c * self.mlp_ratio), 1, "mlp_in")(y)
        y = self._conv(c, 1, "mlp_out")(nn.gelu(y, approximate=False))
        return x + y


class CATsPP(nn.Module):
    """The CATs++ correspondence network (official ``CATsImproved(backbone, freeze=False)``).

    These fields, with these defaults, are ``config.model`` of a "catspp" config
    (``matchme_jax.defaults.catspp_model``).

    Attributes:
        backbone: "resnet101", "resnet50" or "custom" (four stages: ``backbone_blocks``,
            ``backbone_width``).
        backbone_blocks: bottlenecks per stage for a custom backbone.
        backbone_width: stem channels of a custom backbone.
        feature_size: side f of the flow grid; images must be 16 f px (32 at 512 px). Stage 2,
            3 and 4 maps are 2f, f and f/2; f must be a multiple of 4.
        num_heads: attention heads and correlation channels after the encoders.
        qk_dim: query/key projection width (official 512).
        affinity_dim: appearance projection width (official 128).
        mlp_ratio: MLP hidden channels over ``num_heads``.
        affinity_dropout: Dropout2d rate on the appearance projections while training (needs
            a "dropout" rng then).
        beta: soft-argmax temperature.
        readout_window: 0 (official) or the odd side of the source window around the peak
            that the soft-argmax covers (as ``CATs.readout_window``). Not in the official code.
        freeze_backbone: stop gradients at the backbone features.
        bn_mode: "official" (batch statistics while training) or "frozen".
        dtype: compute dtype of the backbone, the 4-D ops and the attention; parameters stay
            float32; soft-argmax in at least float32. "bfloat16" holds the 4-D correlations
            and the attention at half the bytes.
    """

    backbone: str = "resnet101"
    backbone_blocks: tuple[int, ...] = (3, 4, 23, 3)
    backbone_width: int = 64
    feature_size: int = 32
    num_heads: int = 4
    qk_dim: int = 512
    affinity_dim: int = 128
    mlp_ratio: float = 4.0
    affinity_dropout: float = 0.5
    beta: float = 0.02
    readout_window: int = 0
    freeze_backbone: bool = False
    bn_mode: str = "official"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validate_catspp_fields(self)
        super().__post_init__()

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """Bottlenecks per stage of the whole backbone."""
        return resnet.stage_blocks(self.backbone, self.backbone_blocks)

    @property
    def stem_width(self) -> int:
        """Stem channels (64 for the torchvision ResNets)."""
        return resnet.stem_width(self.backbone, self.backbone_width)

    @property
    def feat_ids(self) -> tuple[int, ...]:
        """Tap ids: every bottleneck of stages 2-4 (official ``range(4, 34)`` for ResNet-101)."""
        first = self.stage_blocks[0] + 1
        return tuple(range(first, sum(self.stage_blocks) + 1))

    def setup(self) -> None:
        compute = jnp.dtype(self.dtype)
        self.backbone_net = catspp_backbone(self, name="backbone")
        self.early_conv = [
            Encoder4d(self.num_heads, dtype=compute, name=f"early_conv_{j}") for j in range(3)
        ]
        self.affinity_proj = [
            nn.Conv(
                self.affinity_dim,
                (3, 3),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                kernel_init=TORCH_KERNEL_INIT,
                dtype=compute,
                name=f"affinity_proj_{j}",
            )
            for j in range(3)
        ]
        self.affinity_drop = nn.Dropout(self.affinity_dropout, broadcast_dims=(1, 2))
        self.transformers = [
            TransformerLayer4d(
                num_heads=self.num_heads,
                qk_dim=self.qk_dim,
                mlp_ratio=self.mlp_ratio,
                kernel_size=LEVEL_KERNELS[j],
                target_stride=LEVEL_TARGET_STRIDES[j],
                padding=LEVEL_PADDINGS[j],
                dtype=compute,
                name=f"transformers_{j}",
            )
            for j in range(3)
        ]
        grid = (self.feature_size,)
        self.x_normal = self.param("x_normal", linspace_init, grid, jnp.float32)
        self.y_normal = self.param("y_normal", linspace_init, grid, jnp.float32)

    def __call__(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        """Dense flow from the target to the source image.

        Args:
            source: [B, 16 f, 16 f, 3] ImageNet-normalised.
            target: [B, 16 f, 16 f, 3] ImageNet-normalised.
            train: BatchNorm uses batch statistics (bn_mode "official", pass
                ``mutable=["batch_stats"]``) and the affinity dropout is on (pass
                ``rngs={"dropout": key}``).

        Returns:
            flow: [B, f, f, 2] (x, y) on the target grid pointing into the source, in cells.
        """
        return self._flow(self._refined_correlation(source, target, train))

    def correspondence(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool = False
    ) -> dict[str, jnp.ndarray]:
        """Flow plus the soft-argmax confidence, for the machine annotator.

        Args:
            source: [B, 16 f, 16 f, 3] ImageNet-normalised.
            target: [B, 16 f, 16 f, 3] ImageNet-normalised.
            train: as in ``__call__``.

        Returns:
            "flow": [B, f, f, 2]; "confidence": [B, f, f], the peak probability of the beta
            softmax over the source cells; "refined_corr": [B, S, T].
        """
        refined = self._refined_correlation(source, target, train)
        b, n = refined.shape[0], self.feature_size
        confidence = correlation.peak_probability(refined, self.beta).reshape(b, n, n)
        return {"flow": self._flow(refined), "confidence": confidence, "refined_corr": refined}

    def _refined_correlation(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool
    ) -> jnp.ndarray:
        """[B, S, T]: the mean over channels of the finest aggregated level."""
        check_images(source, "source")
        check_images(target, "target")
        source_taps, target_taps = self._tap_pair(source, target, train)
        self.sow("intermediates", "source_feats", tuple(source_taps))
        return self.aggregate(source_taps, target_taps, train)

    def aggregate(self, source_taps: list, target_taps: list, train: bool = False) -> jnp.ndarray:
        """The head: backbone taps of both images -> refined correlation.

        Args:
            source_taps: one [B, h_k, w_k, C_k] per tap id in ``feat_ids`` order (source).
            target_taps: the same for the target images.
            train: the affinity dropout is on.

        Returns:
            refined_corr: [B, S, T], the mean over channels of the finest level.
        """
        source_levels = _split_levels(source_taps, self.stage_blocks)
        target_levels = _split_levels(target_taps, self.stage_blocks)
        self._check_level_sizes(source_levels)

        corrs = [
            self._stacked_correlation(s, t)
            for s, t in zip(source_levels, target_levels, strict=True)
        ]
        self.sow("intermediates", "corr", tuple(corrs))
        corrs = [encoder(c) for encoder, c in zip(self.early_conv, corrs, strict=True)]
        self.sow("intermediates", "early_conv", tuple(corrs))
        # Source and target go through the shared layers as one batch (every op is per
        # sample): the affinity projections, and each transformer's two passes.
        b = corrs[0].shape[0]
        affinities = self._affinities(
            [
                jnp.concatenate([s[-1], t[-1]])
                for s, t in zip(source_levels, target_levels, strict=True)
            ],
            train,
        )
        self.sow("intermediates", "source_affinity", tuple(a[:b] for a in affinities))

        x = None
        for j, (corr, transformer) in enumerate(zip(corrs, self.transformers, strict=True)):
            if x is not None:
                corr = corr + interpolate4d(x, corr.shape[1])
            # Pass 1 attends over source tokens; pass 2 runs on the transposed correlation with
            # the target's affinity, so it attends over target tokens.
            both = transformer(jnp.concatenate([corr, transpose4d(corr)]), affinities[j])
            x = corr + both[:b] + transpose4d(both[b:])
            self.sow("intermediates", "stage_out", x)
        out_dtype = jnp.promote_types(x.dtype, jnp.float32)
        refined = einops.rearrange(
            jnp.mean(x.astype(out_dtype), axis=-1), "b ht wt hs ws -> b (hs ws) (ht wt)"
        )
        self.sow("intermediates", "refined_corr", refined)
        return refined

    def _stacked_correlation(self, source: list, target: list) -> jnp.ndarray:
        """One stage's maps -> [B, Ht, Wt, Hs, Ws, L] in the compute dtype.

        Normalised in at least float32, then correlated in the compute dtype, so in bfloat16
        the 64^4 level, which fills the memory, never exists in float32.
        """
        compute = jnp.dtype(self.dtype)
        corr_dtype = jnp.promote_types(compute, jnp.float32)
        features = [jnp.stack(maps, axis=1).astype(corr_dtype) for maps in (source, target)]
        source_n, target_n = (unit_normalise(f).astype(compute) for f in features)
        return clamped_correlation(source_n, target_n)

    def _affinities(self, last_maps: list[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
        """Appearance of each level's last map: [N, h, w, C] -> [N, h/2, w/2, affinity_dim]."""
        return [
            self.affinity_drop(nn.relu(proj(x)), deterministic=not train)
            for proj, x in zip(self.affinity_proj, last_maps, strict=True)
        ]

    def _tap_pair(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool
    ) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
        """Backbone taps of both images: two lists of [B, h_k, w_k, C_k] in feat_ids order."""
        use_running_average = not train or self.bn_mode == "frozen"
        if use_running_average and source.shape == target.shape:
            # Per-sample normalisation: one call on both batches gives the same features.
            taps = self._taps(jnp.concatenate([source, target]), use_running_average)
            b = source.shape[0]
            return [t[:b] for t in taps], [t[b:] for t in taps]
        # Batch statistics: two calls, source first, as the official forward.
        source_taps = self._taps(source, use_running_average)
        return source_taps, self._taps(target, use_running_average)

    def _taps(self, images: jnp.ndarray, use_running_average: bool) -> list[jnp.ndarray]:
        taps = self.backbone_net(images, use_running_average=use_running_average)
        if self.freeze_backbone:
            taps = [jax.lax.stop_gradient(t) for t in taps]
        return taps

    def _check_level_sizes(self, levels: list[list[jnp.ndarray]]) -> None:
        f = self.feature_size
        got = tuple(maps[0].shape[1] for maps in levels)
        if got != (f // 2, f, 2 * f):
            raise ValueError(
                f"CATs++ with feature_size={f} needs {16 * f}-px images (stage 4/3/2 maps of "
                f"{f // 2}/{f}/{2 * f}); got maps of {got}: resize the "
                "images or set model.feature_size = image_size // 16"
            )

    def _flow(self, refined: jnp.ndarray) -> jnp.ndarray:
        return model_flow(self, refined)


def _split_levels(taps: list[jnp.ndarray], stage_blocks: tuple[int, ...]) -> list[list]:
    """Taps of stages 2-4 -> [stage 4 maps, stage 3 maps, stage 2 maps] (coarse to fine)."""
    levels, start = [], 0
    for blocks in stage_blocks[1:]:
        levels.append(taps[start : start + blocks])
        start += blocks
    return levels[::-1]


def catspp_backbone(model: CATsPP, name: str | None = None) -> ResNet:
    """The backbone module of a CATs++ configuration."""
    return ResNet(
        stage_blocks=model.stage_blocks,
        tap_ids=model.feat_ids,
        width=model.stem_width,
        dtype=jnp.dtype(model.dtype),
        name=name,
    )


def validate_catspp_fields(model: CATsPP) -> None:
    """Raise one ValueError that lists every inconsistent CATs++ field."""
    problems = []
    if model.backbone not in BACKBONES:
        problems.append(f"backbone={model.backbone!r}: use one of {BACKBONES}")
    elif model.backbone == "custom":
        blocks = tuple(model.backbone_blocks)
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            problems.append(
                f"backbone_blocks={blocks}: CATs++ needs four stages with >= 1 block each"
            )
        if model.backbone_width < 1:
            problems.append(f"backbone_width={model.backbone_width}: must be >= 1")
    if model.feature_size < 4 or model.feature_size % 4:
        problems.append(f"feature_size={model.feature_size}: must be a positive multiple of 4")
    if model.num_heads < 1 or model.qk_dim % max(model.num_heads, 1):
        problems.append(f"num_heads={model.num_heads} must divide qk_dim={model.qk_dim}")
    if model.affinity_dim < 1:
        problems.append(f"affinity_dim={model.affinity_dim}: must be >= 1")
    if model.mlp_ratio <= 0:
        problems.append(f"mlp_ratio={model.mlp_ratio}: must be > 0")
    if not 0.0 <= model.affinity_dropout < 1.0:
        problems.append(f"affinity_dropout={model.affinity_dropout}: must be in [0, 1)")
    if model.beta <= 0:
        problems.append(f"beta={model.beta}: must be > 0")
    problems += readout_window_problems(model.readout_window, model.feature_size)
    if model.bn_mode not in BN_MODES:
        problems.append(f"bn_mode={model.bn_mode!r}: use one of {BN_MODES}")
    if model.dtype not in DTYPES:
        problems.append(f"dtype={model.dtype!r}: use one of {DTYPES}")
    if problems:
        raise ValueError("invalid CATs++ config: " + "; ".join(problems))
