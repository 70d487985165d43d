"""What the models share: field choices, initialisers, attention and the timm ViT attention and
MLP (CATs' aggregator, DINOv2), input checks, the flow head."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from matchme_jax.models import correlation

BACKBONES = ("resnet101", "resnet50", "custom")
BN_MODES = ("official", "frozen")
DTYPES = ("float32", "float64", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")

# timm's trunc_normal_(std=.02) cuts at +-2 absolute, i.e. +-100 std: in effect a plain normal.
trunc_normal_init = nn.initializers.normal(stddev=0.02)


def linspace_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jnp.ndarray:
    """[n] evenly spaced from -1 to 1: the soft-argmax grid coordinates (``x_normal``)."""
    del key
    return jnp.linspace(-1.0, 1.0, shape[0], dtype=dtype)


def check_images(images: jnp.ndarray, role: str) -> None:
    """Raise a ValueError naming ``role`` unless ``images`` is [B, H, W, 3]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{role} images must be [B, H, W, 3] (NHWC, ImageNet-normalised); got {images.shape}"
        )


def soft_argmax_flow(
    refined: jnp.ndarray,
    x_normal: jnp.ndarray,
    y_normal: jnp.ndarray,
    beta: float,
    feature_size: int,
    window: int = 0,
) -> jnp.ndarray:
    """The flow a refined correlation gives: beta-softmax over the source, soft-argmax.

    Args:
        refined: [B, S, T] with S = T = feature_size**2.
        x_normal, y_normal: [feature_size] grid coordinates in [-1, 1].
        beta: soft-argmax temperature.
        feature_size: side n of the square grids.
        window: 0 (official) or the side of the source window around the peak that the
            softmax covers (`correlation.soft_argmax`).

    Returns:
        flow: [B, n, n, 2] (x, y) on the target grid pointing into the source, in cells.
    """
    n = feature_size
    grid_x, grid_y = correlation.soft_argmax(
        refined,
        x_normal.astype(refined.dtype),
        y_normal.astype(refined.dtype),
        beta,
        target_hw=(n, n),
        window=window,
    )
    return correlation.grid_to_flow(grid_x, grid_y)


def model_flow(model, refined: jnp.ndarray) -> jnp.ndarray:
    """`soft_argmax_flow` by a CATs or CATs++ model's readout: its soft-argmax grids (setup
    params), ``beta``, ``feature_size`` and ``readout_window``."""
    return soft_argmax_flow(
        refined,
        model.x_normal,
        model.y_normal,
        model.beta,
        model.feature_size,
        window=model.readout_window,
    )


def readout_window_problems(window: int, feature_size: int) -> list[str]:
    """What is wrong with a ``readout_window`` (0, or odd and at most 2 * feature_size - 1)."""
    if window == 0 or (window > 0 and window % 2 and window < 2 * feature_size):
        return []
    return [
        f"readout_window={window}: 0 (the official soft-argmax over every source cell) or an "
        f"odd side of at most {2 * feature_size - 1} cells"
    ]


def dot_product_attention(
    query: jnp.ndarray,
    key: jnp.ndarray,
    value: jnp.ndarray,
    scale: float,
    implementation: str = "auto",
) -> jnp.ndarray:
    """softmax(q k^T * scale) v through ``jax.nn.dot_product_attention``.

    ``implementation``: "xla", "cudnn" (cuDNN's fused kernel: GPU, float16/bfloat16 only), or
    "auto": cuDNN where those hold and it accepts the shapes, XLA otherwise (in jax <= 0.11,
    ``implementation=None`` always means XLA). float64 runs a plain einsum attention instead,
    because ``jax.nn.dot_product_attention`` runs its softmax in float32, which would cap a
    float64 parity run at float32 accuracy; so do value heads wider or narrower than the query
    heads (CATs++), which ``jax.nn`` refuses.

    Args:
        query: [B, N, H, D].
        key: [B, M, H, D].
        value: [B, M, H, Dv].
        scale: logit scale (1 / sqrt(D) in ViT attention).
        implementation: one of ``ATTENTION_IMPLEMENTATIONS``.

    Returns:
        [B, N, H, Dv].
    """
    if query.dtype == jnp.float64 or value.shape[-1] != query.shape[-1]:
        return _einsum_attention(query, key, value, scale)
    if implementation == "auto":
        if not _cudnn_may_apply(query.dtype):
            return jax.nn.dot_product_attention(query, key, value, scale=scale)
        try:
            return jax.nn.dot_product_attention(
                query, key, value, scale=scale, implementation="cudnn"
            )
        # cuDNN refuses some shapes and versions while tracing; XLA takes any.
        except (NotImplementedError, RuntimeError, ValueError):
            return jax.nn.dot_product_attention(query, key, value, scale=scale)
    return jax.nn.dot_product_attention(
        query, key, value, scale=scale, implementation=implementation
    )


def _cudnn_may_apply(dtype: jnp.dtype) -> bool:
    return jax.default_backend() == "gpu" and dtype in (jnp.bfloat16, jnp.float16)


def _einsum_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, scale: float
) -> jnp.ndarray:
    """The math of ``dot_product_attention``, softmax in float32 or the inputs' wider precision.

    Args:
        query: [B, N, H, D]; key: [B, M, H, D]; value: [B, M, H, Dv].

    Returns:
        [B, N, H, Dv].
    """
    logits_dtype = jnp.promote_types(query.dtype, jnp.float32)
    logits = jnp.einsum("bnhd,bmhd->bhnm", query, key).astype(logits_dtype) * scale
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return jnp.einsum("bhnm,bmhd->bnhd", probs, value)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (timm Mlp)."""

    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[..., E] -> [..., E]."""
        dense = dict(kernel_init=trunc_normal_init, dtype=self.dtype)
        y = nn.Dense(self.hidden, name="fc1", **dense)(x)
        y = nn.gelu(y, approximate=False)
        return nn.Dense(x.shape[-1], name="fc2", **dense)(y)


class Attention(nn.Module):
    """timm ViT multi-head self-attention: fused qkv Linear with bias, output Linear."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, N, E] -> [B, N, E]."""
        b, n, e = x.shape
        head_dim = e // self.num_heads
        dense = dict(kernel_init=trunc_normal_init, dtype=self.dtype)
        qkv = nn.Dense(3 * e, name="qkv", **dense)(x)
        q, k, v = einops.rearrange(
            qkv, "b n (three h d) -> three b n h d", three=3, h=self.num_heads
        )
        out = dot_product_attention(q, k, v, head_dim**-0.5, self.attention)
        return nn.Dense(e, name="proj", **dense)(out.reshape(b, n, e))
