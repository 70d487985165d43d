"""Correlation and soft-argmax ops of CATs, as plain jnp functions.

Token index convention: a feature map ``[B, h, w, C]`` flattens to ``[B, h * w, C]`` with token
``p = y * w + x``. Correlations are ``[..., S, T]`` with S the source and T the target tokens.
"""

from __future__ import annotations

import jax.numpy as jnp

# Added to a row or column maximum that is exactly zero, so the division stays finite.
_MNN_ZERO_GUARD = 1e-30


def l2_normalize(features: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """Per-location L2 normalisation over the channels, ``f / sqrt(sum_c f^2 + eps)``.

    The eps sits inside the square root, as in the official code.

    Args:
        features: [..., C].
        eps: added to the squared norm.

    Returns:
        [..., C], the same dtype.
    """
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True) + eps)
    return features / norm


def cosine_correlation(source: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Cosine similarity between every source and every target token.

    Args:
        source: [B, S, C] features (not normalised).
        target: [B, T, C] features (not normalised).

    Returns:
        corr: [B, S, T], values in [-1, 1].
    """
    return jnp.einsum("bsc,btc->bst", l2_normalize(source), l2_normalize(target))


def mutual_nn_filter(corr: jnp.ndarray) -> jnp.ndarray:
    """Soft mutual nearest-neighbour filter (Rocco et al., NC-Net).

    ``corr * (corr / max_T corr) * (corr / max_S corr)``: no clamp, so negative similarities keep
    their sign. A maximum that is exactly zero gets 1e-30 added, as the official code does.

    Args:
        corr: [..., S, T].

    Returns:
        [..., S, T].
    """
    max_over_target = jnp.max(corr, axis=-1, keepdims=True)
    max_over_source = jnp.max(corr, axis=-2, keepdims=True)
    max_over_target = jnp.where(max_over_target == 0, _MNN_ZERO_GUARD, max_over_target)
    max_over_source = jnp.where(max_over_source == 0, _MNN_ZERO_GUARD, max_over_source)
    return corr * ((corr / max_over_target) * (corr / max_over_source))


def softmax_with_temperature(x: jnp.ndarray, beta: float, axis: int) -> jnp.ndarray:
    """``exp((x - max) / beta)`` normalised along ``axis``.

    Args:
        x: any shape.
        beta: temperature (0.02 in CATs).
        axis: the axis that sums to one.

    Returns:
        Probabilities, the shape of ``x``.
    """
    shifted = x - jnp.max(x, axis=axis, keepdims=True)
    weights = jnp.exp(shifted / beta)
    return weights / jnp.sum(weights, axis=axis, keepdims=True)


def soft_argmax(
    corr: jnp.ndarray,
    x_normal: jnp.ndarray,
    y_normal: jnp.ndarray,
    beta: float,
    target_hw: tuple[int, int],
    window: int = 0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Expected source position of every target token under the beta-softmax over sources.

    Args:
        corr: [B, S, T] with S = hs * ws (hs = len(y_normal), ws = len(x_normal)), T = ht * wt.
        x_normal: [ws] source x coordinate of each column, normally linspace(-1, 1, ws).
        y_normal: [hs] source y coordinate of each row.
        beta: softmax temperature.
        target_hw: (ht, wt).
        window: 0, the official softmax over every source token; k (odd), the softmax over the
            k x k source tokens around each target token's peak (`peak_window`) only.

    Returns:
        (grid_x, grid_y): each [B, ht, wt], in the coordinates of x_normal / y_normal.
    """
    b = corr.shape[0]
    hs, ws = y_normal.shape[0], x_normal.shape[0]
    ht, wt = target_hw
    if window:
        corr = jnp.where(peak_window(corr, (hs, ws), window), corr, -jnp.inf)
    prob = softmax_with_temperature(corr, beta, axis=1).reshape(b, hs, ws, ht, wt)
    # Marginalise one source axis, then take the expectation over the other.
    grid_x = jnp.einsum("bxij,x->bij", jnp.sum(prob, axis=1), x_normal)
    grid_y = jnp.einsum("byij,y->bij", jnp.sum(prob, axis=2), y_normal)
    return grid_x, grid_y


def peak_window(corr: jnp.ndarray, source_hw: tuple[int, int], window: int) -> jnp.ndarray:
    """The `window` x `window` source tokens centred on each target token's peak: [B, S, T] bool.

    Near the border the window is cut, not shifted.

    Args:
        corr: [B, S, T], S = hs * ws.
        source_hw: (hs, ws).
        window: odd side, in tokens.
    """
    hs, ws = source_hw
    peak = jnp.argmax(corr, axis=1)  # [B, T]
    radius = window // 2
    rows = jnp.repeat(jnp.arange(hs), ws)[None, :, None]  # [1, S, 1]
    cols = jnp.tile(jnp.arange(ws), hs)[None, :, None]
    near_row = jnp.abs(rows - (peak // ws)[:, None, :]) <= radius
    return near_row & (jnp.abs(cols - (peak % ws)[:, None, :]) <= radius)


def peak_probability(corr: jnp.ndarray, beta: float) -> jnp.ndarray:
    """Largest probability of the beta-softmax over source tokens, for each target token.

    Args:
        corr: [B, S, T].
        beta: softmax temperature.

    Returns:
        [B, T], in (0, 1].
    """
    return jnp.max(softmax_with_temperature(corr, beta, axis=1), axis=1)


def grid_to_flow(grid_x: jnp.ndarray, grid_y: jnp.ndarray) -> jnp.ndarray:
    """Normalised source coordinates on the target grid -> flow in feature cells.

    ``map = (g + 1) * (n - 1) / 2``, then ``flow = map - (x, y)`` of the target cell. The
    official code computes ``map`` in float32 even for a float64 model; we do the same so a
    float64 run matches the official float64 output.

    Args:
        grid_x: [B, h, w] in [-1, 1].
        grid_y: [B, h, w] in [-1, 1].

    Returns:
        flow: [B, h, w, 2] (x, y), dtype ``promote(grid dtype, float32)``.
    """
    grid_x, grid_y = jnp.asarray(grid_x), jnp.asarray(grid_y)
    _, h, w = grid_x.shape
    out_dtype = jnp.promote_types(grid_x.dtype, jnp.float32)
    map_x = ((grid_x.astype(jnp.float32) + 1) * (w - 1) / 2.0).astype(out_dtype)
    map_y = ((grid_y.astype(jnp.float32) + 1) * (h - 1) / 2.0).astype(out_dtype)
    xs = jnp.arange(w, dtype=out_dtype)[None, None, :]
    ys = jnp.arange(h, dtype=out_dtype)[None, :, None]
    return jnp.stack([map_x - xs, map_y - ys], axis=-1)
