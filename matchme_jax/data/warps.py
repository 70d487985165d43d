"""Geometric ops of the augmentation, as sampling maps that keypoints follow exactly.

Points are [..., 2] (x, y) continuous pixel coordinates (pixel `i` covers `[i, i + 1)`); maps are
3x3 homogeneous matrices, plus a thin-plate spline. Every op is a *sampling map*: an output point
`p` takes the colour of the input point `S(p)`; keypoints move with the exact inverse `S^-1`
(Newton iterations for the spline).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from matchme_jax.data.strength import AugmentStrength, symmetric_uniform

# Pixel coordinates need full float32 products: TPU/GPU default matmul precision (bf16/TF32) would
# move a point at x = 200 by a tenth of a pixel.
_HIGHEST = jax.lax.Precision.HIGHEST

# Thin-plate-spline control points: a regular grid of this many points per side over the canvas.
_TPS_GRID = 4
_TPS_NEWTON_STEPS = 8
# A spline keypoint whose inverse misses by more than this (pixels) is masked out: the warp folds.
_TPS_TOLERANCE_PX = 0.01


def compose(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` in full float32 precision."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def _apply_matrix(matrix: jax.Array, points: jax.Array) -> jax.Array:
    """[3, 3] affine matrix applied to points [..., 2]."""
    return compose(points, matrix[:2, :2].T) + matrix[:2, 2]


def _invert_affine(matrix: jax.Array) -> jax.Array:
    """Closed-form inverse of an affine [3, 3] matrix (exact for the identity)."""
    a, b, c, d = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    det = a * d - b * c
    linear = jnp.array([[d, -b], [-c, a]]) / det
    shift = -compose(linear, matrix[:2, 2])
    return jnp.eye(3).at[:2, :2].set(linear).at[:2, 2].set(shift)


def _scale_shift_matrix(sx: jax.Array, sy: jax.Array, tx: jax.Array, ty: jax.Array) -> jax.Array:
    """[3, 3] for (x, y) -> (sx x + tx, sy y + ty)."""
    return jnp.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])


def random_crop_map(
    key: jax.Array, bbox: jax.Array, p: jax.Array, height: int, width: int
) -> tuple[jax.Array, jax.Array]:
    """The official box-preserving random crop, resized back to the canvas, as a sampling map.

    left ~ U{0..x1}, top ~ U{0..y1}, right ~ U{x2..W}, bottom ~ U{y2..H}; the output point p
    samples the input at `offset + p * crop_size / canvas_size`.

    Args:
        key: PRNG key.
        bbox: [4] (x1, y1, x2, y2) canvas pixels; the crop always contains it.
        p: probability of cropping at all.
        height: canvas height H.
        width: canvas width W.

    Returns:
        matrix: [3, 3] sampling map (the identity when not cropping).
        cropped: bool scalar.
    """
    apply_key, low_key, high_key = jax.random.split(key, 3)
    size = jnp.array([width, height], jnp.float32)
    low = jnp.clip(jnp.floor(bbox[:2]), 0.0, size)
    high = jnp.clip(jnp.ceil(bbox[2:]), low, size)
    # floor(u * (n + 1)) is uniform over {0..n}; the clip guards u's rounding up to 1.
    start = jnp.minimum(jnp.floor(jax.random.uniform(low_key, (2,)) * (low + 1.0)), low)
    end = high + jnp.minimum(
        jnp.floor(jax.random.uniform(high_key, (2,)) * (size - high + 1.0)), size - high
    )
    crop_size = jnp.maximum(end - start, 1.0)
    cropped = jax.random.uniform(apply_key) < p
    scale = jnp.where(cropped, crop_size / size, 1.0)
    offset = jnp.where(cropped, start, 0.0)
    return _scale_shift_matrix(scale[0], scale[1], offset[0], offset[1]), cropped


def random_affine_map(
    key: jax.Array, strength: AugmentStrength, height: int, width: int
) -> jax.Array:
    """A random affine warp about the canvas centre, as a sampling map.

    The forward map (how points move) is centre + shift + R(rotation) Shear(shear) zoom (x -
    centre); the sampling map is its inverse.

    Returns:
        [3, 3] sampling map (the identity when not applied).
    """
    keys = jax.random.split(key, 5)
    apply = jax.random.uniform(keys[0]) < strength.affine_p
    rotation = jnp.deg2rad(symmetric_uniform(keys[1], strength.rotation_deg))
    zoom = jnp.exp(symmetric_uniform(keys[2], strength.scale))
    shear = jnp.deg2rad(symmetric_uniform(keys[3], strength.shear_deg))
    size = jnp.array([width, height], jnp.float32)
    shift = symmetric_uniform(keys[4], strength.translate, (2,)) * size
    cos, sin = jnp.cos(rotation), jnp.sin(rotation)
    rotate = jnp.array([[cos, -sin], [sin, cos]])
    skew = jnp.array([[1.0, jnp.tan(shear)], [0.0, 1.0]])
    linear = jnp.where(apply, compose(rotate, skew) * zoom, jnp.eye(2))
    centre = size / 2.0
    translation = jnp.where(apply, centre + shift - compose(linear, centre), 0.0)
    forward = jnp.eye(3).at[:2, :2].set(linear).at[:2, 2].set(translation)
    return _invert_affine(forward)


@functools.cache
def _tps_control_points() -> np.ndarray:
    """[n, 2] control points on a regular grid over the unit square (normalised canvas)."""
    axis = np.linspace(0.0, 1.0, _TPS_GRID)
    xs, ys = np.meshgrid(axis, axis)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def _tps_radial(squared_distance: jax.Array) -> jax.Array:
    """The TPS kernel r^2 log r^2, 0 at r = 0 (with a gradient that stays finite there)."""
    positive = squared_distance > 0
    safe = jnp.where(positive, squared_distance, 1.0)
    return jnp.where(positive, squared_distance * jnp.log(safe), 0.0)


def _tps_features(points: jax.Array) -> jax.Array:
    """[..., 2] normalised points -> [..., n + 3]: kernels to each control point, then 1, x, y."""
    controls = jnp.asarray(_tps_control_points(), points.dtype)
    squared = jnp.sum((points[..., None, :] - controls) ** 2, axis=-1)
    ones = jnp.ones(points.shape[:-1] + (1,), points.dtype)
    return jnp.concatenate([_tps_radial(squared), ones, points], axis=-1)


@functools.cache
def _tps_solver() -> np.ndarray:
    """[n + 3, n]: maps control-point displacements to the spline's coefficients.

    The coefficients solve [[K, P], [P^T, 0]] c = [d, 0], the interpolating thin-plate spline
    with K_ij = U(|c_i - c_j|) and P = [1, x, y]; only the columns that multiply d are kept.
    """
    controls = _tps_control_points()
    n = len(controls)
    squared = np.sum((controls[:, None] - controls[None]) ** 2, axis=-1)
    kernel = np.where(squared > 0, squared * np.log(np.where(squared > 0, squared, 1.0)), 0.0)
    poly = np.concatenate([np.ones((n, 1)), controls], axis=1)
    system = np.block([[kernel, poly], [poly.T, np.zeros((3, 3))]])
    return np.linalg.inv(system)[:, :n].astype(np.float32)


def tps_coefficients(displacements: jax.Array) -> jax.Array:
    """Spline coefficients from displacements of the control points.

    Args:
        displacements: [n, 2] normalised displacement (fraction of the canvas) at each control
            point, n = `_TPS_GRID ** 2`, row-major over the grid.

    Returns:
        [n + 3, 2] coefficients; all zero (the identity map) for zero displacements.
    """
    return compose(jnp.asarray(_tps_solver()), displacements)


def tps_map(points: jax.Array, coefficients: jax.Array, height: int, width: int) -> jax.Array:
    """The spline sampling map T(p) = p + D(p).

    Args:
        points: [..., 2] canvas pixels.
        coefficients: [n + 3, 2] from `tps_coefficients`.
        height: canvas height H.
        width: canvas width W.

    Returns:
        [..., 2] canvas pixels.
    """
    size = jnp.array([width, height], points.dtype)
    return points + compose(_tps_features(points / size), coefficients) * size


def _solve_2x2(matrices: jax.Array, vectors: jax.Array) -> jax.Array:
    """Solves [..., 2, 2] x = [..., 2] by Cramer's rule (elementwise, so exact on every backend)."""
    a, b = matrices[..., 0, 0], matrices[..., 0, 1]
    c, d = matrices[..., 1, 0], matrices[..., 1, 1]
    u, v = vectors[..., 0], vectors[..., 1]
    det = a * d - b * c
    return jnp.stack([d * u - b * v, a * v - c * u], axis=-1) / det[..., None]


def invert_tps(
    points: jax.Array,
    coefficients: jax.Array,
    height: int,
    width: int,
    iterations: int = _TPS_NEWTON_STEPS,
) -> tuple[jax.Array, jax.Array]:
    """Solves T(q) = points for q with Newton's method.

    Args:
        points: [K, 2] canvas pixels.
        coefficients: [n + 3, 2] from `tps_coefficients`.
        height: canvas height H.
        width: canvas width W.
        iterations: Newton steps after the fixed-point start q = p - D(p).

    Returns:
        inverse: [K, 2] canvas pixels.
        residual: [K] |T(inverse) - points| in pixels.
    """

    def spline(q: jax.Array) -> jax.Array:
        return tps_map(q, coefficients, height, width)

    jacobian = jax.vmap(jax.jacfwd(spline))

    def newton_step(_: int, q: jax.Array) -> jax.Array:
        error = spline(q) - points
        return q - _solve_2x2(jacobian(q), error)

    start = 2.0 * points - spline(points)
    inverse = jax.lax.fori_loop(0, iterations, newton_step, start)
    residual = jnp.linalg.norm(spline(inverse) - points, axis=-1)
    return inverse, residual


def random_tps_coefficients(key: jax.Array, strength: AugmentStrength) -> jax.Array:
    """Coefficients of a random spline: control points move by U(-m, m) of the canvas side.

    Returns:
        [n + 3, 2]; all zero (the identity) when the spline is not applied.
    """
    apply_key, shift_key = jax.random.split(key)
    apply = jax.random.uniform(apply_key) < strength.tps_p
    shape = (_TPS_GRID**2, 2)
    displacements = jnp.where(
        apply, symmetric_uniform(shift_key, strength.tps_magnitude, shape), 0.0
    )
    return tps_coefficients(displacements)


def bilinear_sample(image: jax.Array, points: jax.Array) -> jax.Array:
    """Samples an image at continuous pixel coordinates.

    Points within the canvas [0, W] x [0, H] are interpolated between pixel centres (repeating the
    border pixel in the half-pixel margin); points outside it are black.

    Args:
        image: [H, W, C].
        points: [..., 2] (x, y) continuous pixel coordinates.

    Returns:
        [..., C].
    """
    height, width = image.shape[:2]
    x, y = points[..., 0], points[..., 1]
    inside = (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    x = jnp.clip(x - 0.5, 0.0, width - 1.0)
    y = jnp.clip(y - 0.5, 0.0, height - 1.0)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, width - 1), jnp.minimum(y0 + 1, height - 1)
    flat = image.reshape(height * width, -1)

    def pixel(yi: jax.Array, xi: jax.Array) -> jax.Array:
        return flat[yi * width + xi]

    top = pixel(y0, x0) * (1.0 - fx) + pixel(y0, x1) * fx
    bottom = pixel(y1, x0) * (1.0 - fx) + pixel(y1, x1) * fx
    return jnp.where(inside[..., None], top * (1.0 - fy) + bottom * fy, 0.0)


def pixel_centres(height: int, width: int) -> jax.Array:
    """[H, W, 2] (x, y) of every pixel centre."""
    ys, xs = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
    return jnp.stack([xs, ys], axis=-1).astype(jnp.float32)


def warp_image(image: jax.Array, matrix: jax.Array, coefficients: jax.Array) -> jax.Array:
    """Resamples an image through the sampling map `matrix(tps(p))`.

    Args:
        image: [H, W, C].
        matrix: [3, 3] affine sampling map, applied after the spline.
        coefficients: [n + 3, 2] spline coefficients (zeros: no spline).

    Returns:
        [H, W, C].
    """
    height, width = image.shape[:2]
    points = tps_map(pixel_centres(height, width), coefficients, height, width)
    return bilinear_sample(image, _apply_matrix(matrix, points))


def inside_canvas(points: jax.Array, height: int, width: int) -> jax.Array:
    """[..., 2] -> [...] bool: the point lies on the canvas [0, W) x [0, H)."""
    size = jnp.array([width, height], points.dtype)
    return jnp.all((points >= 0) & (points < size), axis=-1)


def flip_horizontal(
    image: jax.Array,
    keypoints: jax.Array,
    bbox: jax.Array,
    flip: jax.Array,
    width: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The PF-PASCAL horizontal flip, with the official keypoint formula x <- W - x.

    The official code writes `x <- W - x`, not `W - 1 - x`. That is the exact mirror in continuous
    pixel coordinates (pixel i covers [i, i + 1)), the convention of this module, so the "quirk"
    needs no correction here; it would be off by one pixel for integer pixel-centre coordinates.
    Works on one example or a batch (leading axes of `flip`).

    Args:
        image: [..., H, W, C].
        keypoints: [..., K, 2] (x, y).
        bbox: [..., 4] (x1, y1, x2, y2).
        flip: [...] bool; where False, the example is returned unchanged.
        width: canvas width W; defaults to the image width and must equal it when given.

    Returns:
        The (possibly) flipped image, keypoints and bbox.
    """
    image_width = image.shape[-2]
    if width is not None and width != image_width:
        raise ValueError(f"flip_horizontal: width={width} but the image is {image_width} wide.")
    image, keypoints, bbox = jnp.asarray(image), jnp.asarray(keypoints), jnp.asarray(bbox)
    flip = jnp.asarray(flip, bool)
    image = jnp.where(flip[..., None, None, None], image[..., ::-1, :], image)
    flipped_x = image_width - keypoints[..., 0]
    keypoints = keypoints.at[..., 0].set(jnp.where(flip[..., None], flipped_x, keypoints[..., 0]))
    mirrored = jnp.stack(
        [image_width - bbox[..., 2], bbox[..., 1], image_width - bbox[..., 0], bbox[..., 3]],
        axis=-1,
    )
    return image, keypoints, jnp.where(flip[..., None], mirrored, bbox)


def move_points(
    points: jax.Array,
    crop: jax.Array,
    clamp: jax.Array,
    affine: jax.Array,
    coefficients: jax.Array,
    height: int,
    width: int,
) -> tuple[jax.Array, jax.Array]:
    """Moves points [K, 2] with the inverse of `crop(affine(tps(p)))`; returns them and converged.

    Where `clamp` is set (a crop happened), points are clamped to the canvas like the official crop.
    """
    points = _apply_matrix(_invert_affine(crop), points)
    limit = jnp.array([width - 1.0, height - 1.0], points.dtype)
    points = jnp.where(clamp, jnp.clip(points, 0.0, limit), points)
    points = _apply_matrix(_invert_affine(affine), points)
    points, residual = invert_tps(points, coefficients, height, width)
    return points, residual <= _TPS_TOLERANCE_PX


def move_box(
    bbox: jax.Array,
    crop: jax.Array,
    affine: jax.Array,
    coefficients: jax.Array,
    height: int,
    width: int,
) -> jax.Array:
    """[4] box -> [4] extent of its moved corners, clipped to the canvas."""
    x1, y1, x2, y2 = bbox
    corners = jnp.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]])
    moved, _ = move_points(corners, crop, jnp.array(False), affine, coefficients, height, width)
    size = jnp.array([width, height], bbox.dtype)
    low = jnp.clip(jnp.min(moved, axis=0), 0.0, size)
    high = jnp.clip(jnp.max(moved, axis=0), 0.0, size)
    return jnp.concatenate([low, high])
