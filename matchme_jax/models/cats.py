"""CATs (cost aggregation with transformers, Cho et al. NeurIPS 2021) as the official code runs it.

Pipeline (shapes for the official setting: L = 8 levels, a 16 x 16 grid, S = T = 256 tokens):
ResNet hyperpixel taps, each resized to the grid -> per-level cosine correlation [B, L, S, T] ->
mutual-NN filter -> transformer aggregator (with per-level appearance projections of the raw
features) -> refined correlation [B, S, T] -> beta-softmax over the source tokens, soft-argmax ->
flow [B, h, w, 2] on the target grid, pointing into the source, in feature cells.

Module names mirror the official state dict (``proj_3``, ``decoder/blocks_0/attn/qkv``) so that
``matchme_jax.convert`` is a table.
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from matchme_jax.models import backbones, correlation, resnet
from matchme_jax.models.common import (
    ATTENTION_IMPLEMENTATIONS,
    BN_MODES,
    DTYPES,
    Attention,
    Mlp,
    check_images,
    linspace_init,
    model_flow,
    readout_window_problems,
    trunc_normal_init,
)

LAYER_NORM_EPS = 1e-6
# How the aggregator's output projection starts (`CATs.aggregator_init`).
AGGREGATOR_INITS = ("official", "identity")


def resize_bilinear_align_corners(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True)`` for NHWC.

    Args:
        x: [B, h, w, C].
        size: output height and width.

    Returns:
        [B, size, size, C]; ``x`` itself when it already has that size.
    """
    _, h, w, _ = x.shape
    if (h, w) == (size, size):
        return x
    rows = jnp.asarray(_align_corners_matrix(h, size), x.dtype)
    cols = jnp.asarray(_align_corners_matrix(w, size), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights with the corner pixels aligned."""
    matrix = np.zeros((n_out, n_in), np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for out in range(n_out):
        src = scale * out
        low = min(int(np.floor(src)), n_in - 1)
        high = min(low + 1, n_in - 1)
        frac = src - low
        matrix[out, low] += 1.0 - frac
        matrix[out, high] += frac
    return matrix


class MultiscaleBlock(nn.Module):
    """Pre-LN block: attention within each level, then across the levels at each token.

    With one level it is a plain ViT block (attn + mlp), as in the official code.
    """

    num_heads: int
    mlp_ratio: float
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: [B, L, N, E] -> [B, L, N, E]."""
        b, levels, n, e = x.shape
        hidden = int(e * self.mlp_ratio)

        def norm(name: str) -> nn.LayerNorm:
            # Two-pass variance, as torch computes it; the fast E[x^2] - E[x]^2 loses digits.
            return nn.LayerNorm(
                LAYER_NORM_EPS, use_fast_variance=False, dtype=self.dtype, name=name
            )

        def attention(name: str) -> Attention:
            return Attention(self.num_heads, self.dtype, self.attention, name=name)

        x = x.reshape(b * levels, n, e)
        x = x + attention("attn")(norm("norm1")(x))
        if levels == 1:
            x = x + Mlp(hidden, self.dtype, name="mlp")(norm("norm2")(x))
            return x.reshape(b, levels, n, e)
        x = x + Mlp(hidden, self.dtype, name="mlp2")(norm("norm4")(x))
        x = einops.rearrange(x, "(b l) n e -> (b n) l e", b=b)
        x = x + attention("attn_multiscale")(norm("norm3")(x))
        x = einops.rearrange(x, "(b n) l e -> (b l) n e", b=b)
        x = x + Mlp(hidden, self.dtype, name="mlp")(norm("norm2")(x))
        return x.reshape(b, levels, n, e)


class TransformerAggregator(nn.Module):
    """Refines the multi-level correlation with two swapped self-attention passes.

    Both passes use the same blocks and output projection, and both add back the ORIGINAL
    (filtered) correlation. With `zero_output` the output projection starts at zero, so that the
    untrained aggregator passes the filtered correlation through unchanged.
    """

    num_levels: int
    feature_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"
    zero_output: bool = False

    @nn.compact
    def __call__(self, corr: jnp.ndarray, source: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
        """Aggregate.

        Args:
            corr: [B, L, S, T] mutual-NN filtered correlation.
            source: [B, L, S, P] appearance projections of the source features.
            target: [B, L, T, P] appearance projections of the target features.

        Returns:
            refined_corr: [B, S, T], the mean over the levels.
        """
        pos = self._positional_embedding().astype(self.dtype)
        blocks = [
            MultiscaleBlock(
                self.num_heads, self.mlp_ratio, self.dtype, self.attention, name=f"blocks_{i}"
            )
            for i in range(self.depth)
        ]
        proj = nn.Dense(
            self.feature_size**2,
            kernel_init=nn.initializers.zeros if self.zero_output else trunc_normal_init,
            dtype=self.dtype,
            name="proj",
        )

        def aggregate(tokens: jnp.ndarray) -> jnp.ndarray:
            for block in blocks:
                tokens = block(tokens)
            return proj(tokens)

        # Pass 1: tokens are target positions, each carrying its column of correlations.
        x = jnp.concatenate([jnp.swapaxes(corr, -1, -2), target], axis=-1) + pos
        x = jnp.swapaxes(aggregate(x), -1, -2) + corr
        # Pass 2: tokens are source positions.
        x = jnp.concatenate([x, source], axis=-1) + pos
        x = aggregate(x) + corr
        return jnp.mean(x, axis=1)

    def _positional_embedding(self) -> jnp.ndarray:
        """[L, h * w, E]: dims [0, E/2) embed the token's x, dims [E/2, E) its y, per level."""
        n, half = self.feature_size, self.embed_dim // 2
        shape = (self.num_levels, n, half)
        pos_x = self.param("pos_embed_x", trunc_normal_init, shape, jnp.float32)
        pos_y = self.param("pos_embed_y", trunc_normal_init, shape, jnp.float32)
        grid_x = jnp.broadcast_to(pos_x[:, None, :, :], (self.num_levels, n, n, half))
        grid_y = jnp.broadcast_to(pos_y[:, :, None, :], (self.num_levels, n, n, half))
        return jnp.concatenate([grid_x, grid_y], axis=-1).reshape(self.num_levels, n * n, -1)


def _torch_linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


class CATs(nn.Module):
    """The CATs correspondence network. Defaults are those of the official ``train.py``.

    These fields, with these defaults, are ``config.model`` of a "cats" config
    (``matchme_jax.defaults.cats_model``).

    Attributes:
        backbone: "resnet101", "resnet50" or "custom" (then ``backbone_blocks`` and
            ``backbone_width`` define it); or a DINOv2 ViT: a torch-hub entry ("dinov2_vits14",
            "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", each also with "_reg"), or
            "dinov2_custom" (``backbone_width`` wide, ``backbone_blocks[0]`` blocks,
            ``backbone_heads`` heads; for tests).
        backbone_blocks: bottlenecks per stage for a custom ResNet; (depth,) for a custom ViT.
        backbone_width: stem channels of a custom ResNet (stage i width: ``width * 2**i``); the
            width of a custom ViT.
        backbone_heads: attention heads of a custom ViT (the hub entries have their own).
        hyperpixel_ids: strictly increasing tap ids. ResNet: 0 the stem, k the k-th bottleneck
            (pre-ReLU). ViT: block indices, whose patch tokens after the final norm are the taps.
        dilated_stages: ResNet stages (1 = layer2, ...) whose stride is replaced by dilation
            (torchvision's ``replace_stride_with_dilation``): their taps keep the previous
            stage's resolution, with the same parameters. Not in the official code; for small
            images, whose deepest taps would otherwise be a few cells wide.
        trainable_blocks: ViT only: fine-tune only the last this-many blocks that run (up to the
            largest hyperpixel id) and the final norm, freezing the patch embedding and the
            blocks before; 0 fine-tunes all (unless ``freeze_backbone``).
        mirror_invariant_taps: each tap, resized to the grid, is the element-wise maximum of
            the image's features and of its mirror image's features mirrored back, so a part and
            its mirror image get the same descriptor and objects facing opposite ways match.
            The backbone runs on both orientations (one call; with batch statistics they are
            pooled over both). Not in the official code; for a backbone whose features tell
            left-facing parts from right-facing ones, on pairs that often face opposite ways.
        feature_size: side of the correlation grid; every tap is resized to it (a ViT's patch
            grid, image size / 14, needs no resize when equal).
        feature_proj_dim: width of the appearance projection.
        depth: number of aggregator blocks.
        num_heads: attention heads; must divide ``feature_size**2 + feature_proj_dim``.
        mlp_ratio: MLP hidden width over the token width.
        beta: soft-argmax temperature.
        readout_window: 0, the official readout: the soft-argmax over every source cell. k
            (odd): over the k x k source cells around the peak only, so that a match split
            between neighbouring cells reads as a point between them, and a far second
            candidate does not pull it. Not in the official code; for a model trained with the
            cross-entropy (``config.train.loss``), whose distribution splits a point between its
            nearest cells, read at a temperature (``beta``) where that split still shows.
        freeze_backbone: stop gradients at the backbone features.
        bn_mode: "official" (batch statistics while training, running stats updated with
            PyTorch semantics) or "frozen" (always the running statistics).
        dtype: compute dtype of the backbone convolutions, the appearance projections and the
            aggregator: "float32", "bfloat16" for mixed precision (parameters, optimizer state,
            BatchNorm statistics, correlation, soft-argmax and loss stay float32), or "float64"
            for parity checks.
        attention: the aggregator's attention kernel: "auto" (cuDNN on GPU in bfloat16 or
            float16, else XLA), "xla" or "cudnn" (see ``common.dot_product_attention``).
        aggregator_init: "official" (the official truncated-normal output projection) or
            "identity" (a zero output projection: the untrained model matches each target cell
            to the source cells by the raw hyperpixel correlation, nearest-neighbour matching of
            the backbone features, and training starts from there). Not in the official code;
            for a pretrained backbone trained on few pairs.
        clamp_correlation: negative cosine similarities become zero before the mutual
            nearest-neighbour filter, which then stays within [0, 1]. The official filter divides
            by each row's and column's maximum: where that maximum is near zero and the row holds
            negative similarities, the quotient grows without bound. Not in the official code; for
            small backbones whose pre-ReLU taps anticorrelate (under photometric augmentation, say).
        confidence_temperature: the temperature of the softmax whose peak probability is the
            confidence (the annotator thresholds it at tau); 0 means ``beta``. A model trained at
            another temperature than its readout's (``config.train.loss_temperature``) is
            calibrated at that one. Not in the official code.
    """

    backbone: str = "resnet101"
    backbone_blocks: tuple[int, ...] = (3, 4, 23, 3)
    backbone_width: int = 64
    backbone_heads: int = 0
    hyperpixel_ids: tuple[int, ...] = (0, 8, 20, 21, 26, 28, 29, 30)
    dilated_stages: tuple[int, ...] = ()
    trainable_blocks: int = 0
    mirror_invariant_taps: bool = False
    feature_size: int = 16
    feature_proj_dim: int = 128
    depth: int = 1
    num_heads: int = 6
    mlp_ratio: float = 4.0
    beta: float = 0.02
    readout_window: int = 0
    freeze_backbone: bool = False
    bn_mode: str = "official"
    dtype: str = "float32"
    attention: str = "auto"
    aggregator_init: str = "official"
    clamp_correlation: bool = False
    confidence_temperature: float = 0.0

    def __post_init__(self) -> None:
        validate_cats_fields(self)
        super().__post_init__()

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """ResNet backbones: bottlenecks per stage of the whole backbone (not only the built
        part)."""
        return resnet.stage_blocks(self.backbone, self.backbone_blocks)

    @property
    def stem_width(self) -> int:
        """ResNet backbones: stem channels (64 for the torchvision ResNets)."""
        return resnet.stem_width(self.backbone, self.backbone_width)

    @property
    def embed_dim(self) -> int:
        """Aggregator token width: one correlation row plus the appearance projection."""
        return self.feature_size**2 + self.feature_proj_dim

    def setup(self) -> None:
        compute = jnp.dtype(self.dtype)
        self.backbone_net = backbones.build(self, name="backbone")
        self.proj = [
            nn.Dense(
                self.feature_proj_dim,
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                bias_init=_torch_linear_bias_init(channels),
                dtype=compute,
            )
            for channels in backbones.tap_channels(self)
        ]
        self.decoder = TransformerAggregator(
            num_levels=len(self.hyperpixel_ids),
            feature_size=self.feature_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dtype=compute,
            attention=self.attention,
            zero_output=self.aggregator_init == "identity",
        )
        grid = (self.feature_size,)
        self.x_normal = self.param("x_normal", linspace_init, grid, jnp.float32)
        self.y_normal = self.param("y_normal", linspace_init, grid, jnp.float32)

    def __call__(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        """Dense flow from the target to the source image.

        Args:
            source: [B, H, W, 3] ImageNet-normalised.
            target: [B, H, W, 3] ImageNet-normalised.
            train: BatchNorm uses batch statistics (bn_mode "official") and updates its running
                statistics; pass ``mutable=["batch_stats"]``.

        Returns:
            flow: [B, h, w, 2] (x, y) on the target grid pointing into the source, in cells.
        """
        refined = self._refined_correlation(source, target, train)
        return self._flow(refined)

    def correspondence(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool = False
    ) -> dict[str, jnp.ndarray]:
        """Flow plus the soft-argmax confidence, for the machine annotator.

        Args:
            source: [B, H, W, 3] ImageNet-normalised.
            target: [B, H, W, 3] ImageNet-normalised.
            train: as in ``__call__``.

        Returns:
            "flow": [B, h, w, 2]; "confidence": [B, h, w], the peak probability of the softmax
            over the source cells for each target cell, at ``confidence_temperature`` (0:
            ``beta``); "refined_corr": [B, S, T].
        """
        refined = self._refined_correlation(source, target, train)
        b, n = refined.shape[0], self.feature_size
        temperature = self.confidence_temperature or self.beta
        confidence = correlation.peak_probability(refined, temperature).reshape(b, n, n)
        return {"flow": self._flow(refined), "confidence": confidence, "refined_corr": refined}

    def _refined_correlation(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool
    ) -> jnp.ndarray:
        check_images(source, "source")
        check_images(target, "target")
        source_feats, target_feats = self._hyperpixel_pair(source, target, train)
        self.sow("intermediates", "source_feats", tuple(source_feats))

        corr_dtype = jnp.promote_types(jnp.dtype(self.dtype), jnp.float32)
        corrs, source_proj, target_proj = [], [], []
        for proj, src, trg in zip(self.proj, source_feats, target_feats, strict=True):
            src = einops.rearrange(src, "b h w c -> b (h w) c")
            trg = einops.rearrange(trg, "b h w c -> b (h w) c")
            corrs.append(
                correlation.cosine_correlation(src.astype(corr_dtype), trg.astype(corr_dtype))
            )
            # The appearance projection sees the raw, un-normalised pre-ReLU features.
            source_proj.append(proj(src))
            target_proj.append(proj(trg))
        corr = jnp.stack(corrs, axis=1)
        self.sow("intermediates", "corr_raw", corr)
        if self.clamp_correlation:
            corr = jnp.maximum(corr, 0.0)
        corr = correlation.mutual_nn_filter(corr)
        self.sow("intermediates", "corr_mnn", corr)

        refined = self.decoder(
            corr, jnp.stack(source_proj, axis=1), jnp.stack(target_proj, axis=1)
        ).astype(corr_dtype)
        self.sow("intermediates", "refined_corr", refined)
        return refined

    def _hyperpixel_pair(
        self, source: jnp.ndarray, target: jnp.ndarray, train: bool
    ) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
        """Backbone taps of both images, resized to the grid: two lists of [B, n, n, C_l]."""
        use_running_average = not train or self.bn_mode == "frozen"
        per_sample = use_running_average or backbones.is_vit(self.backbone)  # a ViT has no BN
        if per_sample and source.shape == target.shape:
            # Per-sample normalisation: one backbone call on both batches gives the same
            # features and compiles the backbone once.
            taps = self._hyperpixels(jnp.concatenate([source, target]), use_running_average)
            b = source.shape[0]
            return [t[:b] for t in taps], [t[b:] for t in taps]
        # Batch statistics: two calls, source first. Each batch is normalised with its own
        # statistics, and the target's running-stat update follows the source's.
        source_taps = self._hyperpixels(source, use_running_average)
        return source_taps, self._hyperpixels(target, use_running_average)

    def _hyperpixels(self, images: jnp.ndarray, use_running_average: bool) -> list[jnp.ndarray]:
        """[B, H, W, 3] -> one [B, n, n, C_l] per tap, at the grid's size."""
        if self.mirror_invariant_taps:
            b = images.shape[0]
            both = self._grid_taps(
                jnp.concatenate([images, jnp.flip(images, axis=2)]), use_running_average
            )
            # The mirror image's taps, mirrored back, describe the same cells.
            taps = [jnp.maximum(t[:b], jnp.flip(t[b:], axis=2)) for t in both]
        else:
            taps = self._grid_taps(images, use_running_average)
        if self.freeze_backbone:
            taps = [jax.lax.stop_gradient(t) for t in taps]
        return taps

    def _grid_taps(self, images: jnp.ndarray, use_running_average: bool) -> list[jnp.ndarray]:
        if backbones.is_vit(self.backbone):
            layers = self.backbone_net.intermediate_layers(
                images, self.hyperpixel_ids, frozen_blocks=backbones.frozen_blocks(self)
            )
            taps = [patch_tokens for patch_tokens, _ in layers]
        else:
            taps = self.backbone_net(images, use_running_average=use_running_average)
        return [resize_bilinear_align_corners(t, self.feature_size) for t in taps]

    def _flow(self, refined: jnp.ndarray) -> jnp.ndarray:
        return model_flow(self, refined)


def validate_cats_fields(model: CATs) -> None:
    """Raise one ValueError that lists every inconsistent CATs field."""
    problems = backbones.problems(model)
    if model.feature_size < 2:
        problems.append(f"feature_size={model.feature_size}: must be >= 2")
    if model.feature_proj_dim < 1:
        problems.append(f"feature_proj_dim={model.feature_proj_dim}: must be >= 1")
    embed = model.feature_size**2 + model.feature_proj_dim
    if embed % 2:
        problems.append(
            f"feature_size**2 + feature_proj_dim = {embed} must be even (the positional "
            "embedding gives half the width to x and half to y)"
        )
    if model.num_heads < 1 or embed % model.num_heads:
        problems.append(
            f"num_heads={model.num_heads} must divide feature_size**2 + feature_proj_dim = {embed}"
        )
    if model.depth < 1:
        problems.append(f"depth={model.depth}: must be >= 1")
    if model.mlp_ratio <= 0:
        problems.append(f"mlp_ratio={model.mlp_ratio}: must be > 0")
    if model.beta <= 0:
        problems.append(f"beta={model.beta}: must be > 0")
    problems += readout_window_problems(model.readout_window, model.feature_size)
    if model.confidence_temperature < 0:
        problems.append(
            f"confidence_temperature={model.confidence_temperature}: must be > 0, or 0 for beta"
        )
    if model.bn_mode not in BN_MODES:
        problems.append(f"bn_mode={model.bn_mode!r}: use one of {BN_MODES}")
    if model.dtype not in DTYPES:
        problems.append(f"dtype={model.dtype!r}: use one of {DTYPES}")
    if model.attention not in ATTENTION_IMPLEMENTATIONS:
        problems.append(f"attention={model.attention!r}: use one of {ATTENTION_IMPLEMENTATIONS}")
    if model.aggregator_init not in AGGREGATOR_INITS:
        problems.append(f"aggregator_init={model.aggregator_init!r}: use one of {AGGREGATOR_INITS}")
    if problems:
        raise ValueError("invalid CATs config: " + "; ".join(problems))
