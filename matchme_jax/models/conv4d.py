"""4-D correlation ops of CATs++: separable 4-D convolution, 4-D interpolation, transpose.

A 4-D correlation is stored channels-last, ``[B, Ht, Wt, Hs, Ws, C]``: target (query) dims
first, then source (support) dims, then the channels. (The official layout is
``B C Ht Wt Hs Ws``; the converter and the parity test move the channel axis.)

The official ``Conv4d`` is separable: the sum of a 2-D convolution over the target dims and one
over the source dims. Each branch first max-pools the OTHER pair of dims when that pair is
strided, so that both branches reach the same output grid.
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Quad = tuple[int, int, int, int]

# torch's default Conv2d / Linear weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
# Uniform also compiles far faster than flax's truncated normal (no erf_inv per parameter).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

# GroupNorm eps of torch's nn.GroupNorm (flax's default is 1e-6: 0.3 cells of flow error).
GROUP_NORM_EPS = 1e-5


def transpose4d(x: jnp.ndarray) -> jnp.ndarray:
    """Swap the target and source dims: [B, Ht, Wt, Hs, Ws, C] -> [B, Hs, Ws, Ht, Wt, C]."""
    return einops.rearrange(x, "b ht wt hs ws c -> b hs ws ht wt c")


def max_pool_ceil(x: jnp.ndarray, window: tuple[int, int]) -> jnp.ndarray:
    """``nn.MaxPool2d(window, window, ceil_mode=True)`` on NHWC.

    Args:
        x: [N, H, W, C].
        window: kernel = stride (kh, kw).

    Returns:
        [N, ceil(H / kh), ceil(W / kw), C]; a partial window at the end takes the max of what
        it covers.
    """
    _, h, w, _ = x.shape
    kh, kw = window
    pad = ((0, -h % kh), (0, -w % kw))  # max_pool pads with -inf
    return nn.max_pool(x, window, strides=window, padding=pad)


def pool_source(x: jnp.ndarray, window: tuple[int, int]) -> jnp.ndarray:
    """Max-pool the source dims: [B, Ht, Wt, Hs, Ws, C] -> [B, Ht, Wt, Hs', Ws', C]."""
    b, ht, wt = x.shape[:3]
    y = max_pool_ceil(einops.rearrange(x, "b ht wt hs ws c -> (b ht wt) hs ws c"), window)
    return einops.rearrange(y, "(b ht wt) hs ws c -> b ht wt hs ws c", b=b, ht=ht, wt=wt)


def pool_target(x: jnp.ndarray, window: tuple[int, int]) -> jnp.ndarray:
    """Max-pool the target dims: [B, Ht, Wt, Hs, Ws, C] -> [B, Ht', Wt', Hs, Ws, C]."""
    return transpose4d(pool_source(transpose4d(x), window))


def resize_axis_align_corners(x: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
    """Linear interpolation along one axis with the end points aligned (align_corners=True).

    A gather of the two neighbours and a lerp: separable, so two calls make the bilinear
    ``F.interpolate(..., align_corners=True)`` (width first, as torch's kernel nests it).
    Compiles far faster than a dense interpolation matrix over a 4-D correlation.

    Args:
        x: any shape.
        axis: the axis to resize.
        size: its new length.

    Returns:
        ``x`` with ``x.shape[axis] == size``; ``x`` itself when it already has that length.
    """
    n = x.shape[axis]
    if n == size:
        return x
    scale = (n - 1) / (size - 1) if size > 1 else 0.0
    position = scale * np.arange(size)
    low = np.minimum(np.floor(position).astype(np.int32), n - 1)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = jnp.asarray(position - low, x.dtype).reshape(shape)
    return jnp.take(x, low, axis=axis) * (1 - frac) + jnp.take(x, high, axis=axis) * frac


def interpolate4d(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """Bilinear (align_corners=True) resize of the source dims, then of the target dims.

    The official ``Interpolate4d`` that the model uses (the second definition in its file).

    Args:
        x: [B, Ht, Wt, Hs, Ws, C].
        size: output side of both pairs of dims.

    Returns:
        [B, size, size, size, size, C].
    """
    for axis in (4, 3, 2, 1):  # Ws, Hs, then Wt, Ht
        x = resize_axis_align_corners(x, axis, size)
    return x


class Conv4d(nn.Module):
    """Separable 4-D convolution: a target-dims conv plus a source-dims conv, both with bias.

    Attributes:
        features: output channels.
        kernel_size: (kt, kt, ks, ks): the target conv's kernel, then the source conv's.
        strides: (st, st, ss, ss).
        padding: (pt, pt, ps, ps), symmetric zero padding.
        dtype: compute dtype (parameters stay float32).
    """

    features: int
    kernel_size: Quad = (3, 3, 3, 3)
    strides: Quad = (1, 1, 1, 1)
    padding: Quad = (1, 1, 1, 1)
    dtype: jnp.dtype = jnp.float32

    def _conv2d(self, dims: slice, name: str) -> nn.Conv:
        pad = self.padding[dims]
        return nn.Conv(
            self.features,
            self.kernel_size[dims],
            strides=self.strides[dims],
            padding=((pad[0], pad[0]), (pad[1], pad[1])),
            kernel_init=TORCH_KERNEL_INIT,
            dtype=self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, Ht, Wt, Hs, Ws, C] -> [B, Ht', Wt', Hs', Ws', features]."""
        target_stride, source_stride = self.strides[:2], self.strides[2:]
        # Each branch sees the other pair of dims max-pooled to that pair's output grid.
        x_query = pool_source(x, source_stride) if max(source_stride) > 1 else x
        x_supp = pool_target(x, target_stride) if max(target_stride) > 1 else x

        b, _, _, hs, ws, _ = x_query.shape
        y = einops.rearrange(x_query, "b ht wt hs ws c -> (b hs ws) ht wt c")
        y = self._conv2d(slice(0, 2), "query_conv")(y)
        y_query = einops.rearrange(y, "(b hs ws) ht wt c -> b ht wt hs ws c", b=b, hs=hs, ws=ws)

        _, ht, wt = x_supp.shape[:3]
        y = einops.rearrange(x_supp, "b ht wt hs ws c -> (b ht wt) hs ws c")
        y = self._conv2d(slice(2, 4), "supp_conv")(y)
        y_supp = einops.rearrange(y, "(b ht wt) hs ws c -> b ht wt hs ws c", b=b, ht=ht, wt=wt)
        return y_query + y_supp


def group_norm(dtype: jnp.dtype, name: str) -> nn.GroupNorm:
    """torch ``nn.GroupNorm(1, C)`` over a whole 4-D correlation (two-pass variance, eps 1e-5)."""
    return nn.GroupNorm(
        num_groups=1, epsilon=GROUP_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name
    )


class Encoder4d(nn.Module):
    """Conv4d -> GroupNorm(1 group) -> ReLU (the official ``Encoder4D`` with one layer).

    Attributes:
        features: output channels.
        kernel_size, strides, padding: of the Conv4d.
        dtype: compute dtype.
    """

    features: int
    kernel_size: Quad = (3, 3, 3, 3)
    strides: Quad = (2, 2, 2, 2)
    padding: Quad = (1, 1, 1, 1)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, Ht, Wt, Hs, Ws, C] -> [B, Ht', Wt', Hs', Ws', features]."""
        conv = Conv4d(
            self.features, self.kernel_size, self.strides, self.padding, self.dtype, name="conv"
        )
        return nn.relu(group_norm(self.dtype, "norm")(conv(x)))
