"""The official DINOv2 positional-embedding resize (``interpolate_pos_encoding``), in NumPy.

facebookresearch/dinov2 @ b8931f7bf91576930313be2c6d6af376033b35f0 resizes the trained 37 x 37
grid to the input's patch grid with ``F.interpolate``, separably, so each axis is a matrix:

* plain hub entries (``interpolate_offset`` 0.1): bicubic, Keys a = -0.75, taps past the border
  replicate it, no antialias, and the source step is ``37 / (h + 0.1)`` (the scale factor the
  official code passes), not ``37 / h``;
* ``_reg`` entries (offset 0): antialiased (PIL-style) bicubic, Keys a = -0.5, to size (h, w):
  support widened by the scale, taps cut at the border and renormalised.

``jax.image.resize`` cannot give the plain resize (its a is -0.5, and it has no offset).
"""

from __future__ import annotations

import functools
import math

import numpy as np

# Keys cubic-convolution parameter: torch's plain bicubic, and its antialiased (PIL) one.
_PLAIN_CUBIC_A = -0.75
_ANTIALIAS_CUBIC_A = -0.5


def _cubic_near(x: float, a: float) -> float:
    """Keys kernel for |x| < 1 (torch's ``cubic_convolution1``)."""
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x: float, a: float) -> float:
    """Keys kernel for 1 <= |x| < 2 (torch's ``cubic_convolution2``)."""
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x < 1.0:
        return _cubic_near(x, a)
    if x < 2.0:
        return _cubic_far(x, a)
    return 0.0


def _bicubic_matrix(n_in: int, n_out: int, step: float) -> np.ndarray:
    """[n_out, n_in] plain bicubic (a = -0.75) weights, border replicated, not renormalised.

    Output i reads source position ``step * (i + 0.5) - 0.5`` (align_corners=False).
    """
    a = _PLAIN_CUBIC_A
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = step * (i + 0.5) - 0.5
        base = min(math.floor(src), n_in - 1)
        t = min(max(src - base, 0.0), 1.0)
        weights = (_cubic_far(t + 1.0, a), _cubic_near(t, a))
        weights += (_cubic_near(1.0 - t, a), _cubic_far((1.0 - t) + 1.0, a))
        for j, weight in enumerate(weights):
            matrix[i, min(max(base - 1 + j, 0), n_in - 1)] += weight
    return matrix


def _antialiased_bicubic_matrix(n_in: int, n_out: int, step: float) -> np.ndarray:
    """[n_out, n_in] antialiased (PIL-style) bicubic (a = -0.5) weights, renormalised.

    Output i is centred on source coordinate ``step * (i + 0.5)``. When downsampling
    (step > 1) the kernel is stretched by the step; taps outside the input are dropped.
    """
    a = _ANTIALIAS_CUBIC_A
    support = 2.0 * step if step >= 1.0 else 2.0
    inverse = 1.0 / step if step >= 1.0 else 1.0
    max_taps = math.ceil(support) * 2 + 1
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = step * (i + 0.5)
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), n_in, low + max_taps)
        weights = [_cubic((j - centre + 0.5) * inverse, a) for j in range(low, high)]
        total = sum(weights)
        if total != 0.0:
            weights = [w / total for w in weights]
        matrix[i, low:high] = weights
    return matrix


def _resize_axis(n_in: int, n_out: int, antialias: bool, offset: float) -> np.ndarray:
    if offset:
        # The official call passes scale_factor (n_out + offset) / n_in; torch samples with its
        # inverse and sizes the output floor(n_in * scale_factor), which must be n_out.
        factor = (n_out + offset) / n_in
        if math.floor(n_in * factor) != n_out:
            raise ValueError(
                f"interpolate_offset={offset} gives {math.floor(n_in * factor)} positions, "
                f"not {n_out}, from {n_in} (the official code asserts the same)"
            )
        step = 1.0 / factor
    else:
        step = n_in / n_out
    if antialias:
        return _antialiased_bicubic_matrix(n_in, n_out, step)
    return _bicubic_matrix(n_in, n_out, step)


@functools.lru_cache(maxsize=64)
def pos_embed_resize_matrices(
    grid: int, out_hw: tuple[int, int], antialias: bool, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """The official positional-embedding resize as two float64 matrices.

    The resized grid is ``rows @ grid @ cols.T`` per channel, exactly the official
    ``F.interpolate(..., mode="bicubic", antialias=antialias, ...)`` call of
    ``interpolate_pos_encoding`` (computed in float64, it reproduces torch's float64 run to
    ~1e-16).

    Args:
        grid: side M of the trained square grid (37 for the released models).
        out_hw: (h, w) patch grid of the input.
        antialias: the model's ``interpolate_antialias``.
        offset: the model's ``interpolate_offset`` (0: resize to ``size=(h, w)``).

    Returns:
        rows [h, M] and cols [w, M], float64, read-only.
    """
    h, w = out_hw
    rows = _resize_axis(grid, h, antialias, offset)
    cols = _resize_axis(grid, w, antialias, offset)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def keeps_pos_embed(grid: int, out_hw: tuple[int, int]) -> bool:
    """Whether the official code uses the positional embedding unresized (a 518 x 518 input)."""
    return tuple(out_hw) == (grid, grid)
