"""On-device augmentation that keeps every keypoint on the pixel it labels.

Runs inside the jitted train step, vmapped over the batch. Teacher and student run the same compiled
code: how strongly they augment is an `AugmentStrength` of float32 scalars, passed as an argument.

Order, per image (source and target draw independently):
  1. the PF-PASCAL horizontal flip, where the pair's `flip` flag is set (both images of the pair);
  2. photometric ops, each with probability `photometric_p`, in the official albumentations order:
     grayscale, posterize, equalize, sharpen, brightness/contrast, solarize, colour jitter;
  3. one geometric warp: the official box-preserving random crop, a random affine and a thin-plate
     spline, composed into a single sampling map and applied with one bilinear resampling.

The official code flips after cropping; flipping first is the same distribution, because the crop
ranges of a mirrored box are the mirrored crop ranges.

Coordinates are continuous pixel coordinates: pixel `i` covers `[i, i + 1)`, so its centre is
`i + 0.5`. This is the convention in which the official formulas are exact: the resize
`x * size / W`, the crop `(x - left) * size / crop_size` and the flip `x <- W - x`.

Every geometric op is a *sampling map*: an output point `p` takes the colour of the input point
`S(p)`. Keypoints move with the exact inverse `S^-1` (Newton iterations for the spline). A keypoint
that leaves the canvas is masked out; the official crop instead clamps its keypoints to the canvas,
and so do we. A box moves to the extent of its moved corners, clipped to the canvas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as OpenCV's and PIL's grayscale
# Pixel coordinates need full float32 products: TPU/GPU default matmul precision (bf16/TF32) would
# move a point at x = 200 by a tenth of a pixel.
_HIGHEST = jax.lax.Precision.HIGHEST

# Thin-plate-spline control points: a regular grid of this many points per side over the canvas.
_TPS_GRID = 4
_TPS_NEWTON_STEPS = 8
# A spline keypoint whose inverse misses by more than this (pixels) is masked out: the warp folds.
_TPS_TOLERANCE_PX = 0.01

_PROBABILITIES = ("photometric_p", "crop_p", "affine_p", "tps_p")

_PRESETS: dict[str, dict[str, float]] = {
    "none": dict(
        photometric_p=0.0,
        photometric_magnitude=0.0,
        crop_p=0.0,
        affine_p=0.0,
        rotation_deg=0.0,
        scale=0.0,
        shear_deg=0.0,
        translate=0.0,
        tps_p=0.0,
        tps_magnitude=0.0,
    ),
    # The official CATs training augmentation (reference §2).
    "weak": dict(
        photometric_p=0.2,
        photometric_magnitude=1.0,
        crop_p=0.5,
        affine_p=0.0,
        rotation_deg=0.0,
        scale=0.0,
        shear_deg=0.0,
        translate=0.0,
        tps_p=0.0,
        tps_magnitude=0.0,
    ),
    # The student's. MatchMe gives no values; these are ours: stronger photometric ops, and warps
    # mild enough that almost every keypoint stays on the canvas.
    "strong": dict(
        photometric_p=0.4,
        photometric_magnitude=1.5,
        crop_p=0.5,
        affine_p=0.5,
        rotation_deg=15.0,
        scale=0.15,
        shear_deg=8.0,
        translate=0.05,
        tps_p=0.5,
        tps_magnitude=0.04,
    ),
}


@struct.dataclass
class AugmentStrength:
    """How strongly to augment; every field is a float32 scalar so that strengths share one trace.

    Build with `none()`, `weak()`, `strong()`, `create()` or `from_config()`, which convert the
    values to float32 arrays (plain Python floats would trace differently).

    Attributes:
        photometric_p: probability of each photometric op, drawn independently per op.
        photometric_magnitude: scales every photometric range; 1.0 is the official albumentations
            default ranges.
        crop_p: probability of the official box-preserving random crop.
        affine_p: probability of a random affine warp.
        rotation_deg: rotation drawn from U(-rotation_deg, rotation_deg).
        scale: zoom factor exp(U(-scale, scale)) (a log range).
        shear_deg: horizontal shear angle drawn from U(-shear_deg, shear_deg).
        translate: shift per axis drawn from U(-translate, translate) times the canvas side.
        tps_p: probability of a thin-plate-spline warp.
        tps_magnitude: control-point displacement drawn from U(-m, m) times the canvas side.
    """

    photometric_p: jax.Array
    photometric_magnitude: jax.Array
    crop_p: jax.Array
    affine_p: jax.Array
    rotation_deg: jax.Array
    scale: jax.Array
    shear_deg: jax.Array
    translate: jax.Array
    tps_p: jax.Array
    tps_magnitude: jax.Array

    @classmethod
    def create(cls, preset: str = "none", **overrides: float) -> AugmentStrength:
        """A preset's values with some fields overridden (host side: values must be concrete).

        Args:
            preset: "none", "weak" or "strong".
            **overrides: field name -> value.
        """
        if preset not in _PRESETS:
            raise ValueError(
                f"Unknown augmentation preset {preset!r}; use one of {sorted(_PRESETS)}."
            )
        unknown = sorted(set(overrides) - set(_PRESETS[preset]))
        if unknown:
            raise ValueError(
                f"Unknown augmentation field(s) {unknown}; the fields are {list(_PRESETS['none'])}."
            )
        values = {**_PRESETS[preset], **overrides}
        for name, value in values.items():
            _check_field(name, float(value))
        return cls(**{name: jnp.asarray(value, jnp.float32) for name, value in values.items()})

    @classmethod
    def none(cls) -> AugmentStrength:
        """No augmentation: the identity (evaluation, tests)."""
        return cls.create("none")

    @classmethod
    def weak(cls) -> AugmentStrength:
        """The official CATs set: photometric ops at p=0.2 each, box-preserving crop at p=0.5."""
        return cls.create("weak")

    @classmethod
    def strong(cls) -> AugmentStrength:
        """The student's: stronger photometric ops, the crop, random affine and spline warps."""
        return cls.create("strong")

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict | str) -> AugmentStrength:
        """A strength from a config entry.

        Args:
            cfg: a preset name ("weak"), or a ConfigDict with an optional `preset` field plus any
                fields of this class; without `preset`, it must give every field.
        """
        if isinstance(cfg, str):
            return cls.create(cfg)
        values = dict(cfg.to_dict())
        preset = values.pop("preset", None)
        if preset is None:
            missing = sorted(set(_PRESETS["none"]) - set(values))
            if missing:
                raise ValueError(
                    f"Augmentation config lacks {missing}; give every field or a `preset` "
                    f"(one of {sorted(_PRESETS)}) to start from."
                )
            preset = "none"
        return cls.create(preset, **values)


def _check_field(name: str, value: float) -> None:
    """Raises a ValueError naming the field when its value is out of range."""
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(f"Augmentation field {name}={value} must be a finite number >= 0.")
    if name in _PROBABILITIES and value > 1.0:
        raise ValueError(f"Augmentation field {name}={value} is a probability; use [0, 1].")
    if name == "shear_deg" and value >= 90.0:
        raise ValueError(f"Augmentation field shear_deg={value} must be below 90 degrees.")


def normalize_images(images01: jax.Array) -> jax.Array:
    """ImageNet normalisation.

    Args:
        images01: [..., 3] float in [0, 1].

    Returns:
        [..., 3] float32, `(x - mean) / std` per channel.
    """
    if jnp.asarray(images01).dtype == jnp.uint8:
        # 0-255 values would pass silently and wreck every prediction.
        raise TypeError("normalize_images takes floats in [0, 1]; use normalize_uint8 for uint8.")
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (jnp.asarray(images01, jnp.float32) - mean) / std


def normalize_uint8(images: jax.Array) -> jax.Array:
    """[..., 3] uint8 -> ImageNet-normalised float32, as the official ToTensor + Normalize."""
    return normalize_images(jnp.asarray(images, jnp.float32) / 255.0)


# --------------------------------------------------------------------------------------------
# Photometric ops: image [H, W, 3] float32 in [0, 1] -> same.


def to_grayscale(image: jax.Array) -> jax.Array:
    """Luma replicated over the three channels."""
    gray = jnp.sum(image * jnp.asarray(_LUMA, image.dtype), axis=-1)
    return jnp.broadcast_to(gray[..., None], image.shape)


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
    """Keeps the top `bits` bits (1..8) of each 8-bit channel value."""
    step = 2.0 ** (8.0 - bits)
    levels = jnp.round(image * 255.0)
    return jnp.floor(levels / step) * step / 255.0


def equalize(image: jax.Array) -> jax.Array:
    """Histogram equalisation of each channel over its 256 levels.

    Level v maps to round(255 (cdf(v) - cdf_min) / (N - cdf_min)), where cdf_min is the count of
    the darkest level present; a constant channel is left as it is.
    """
    levels = jnp.round(image * 255.0).astype(jnp.int32).reshape(-1, 3)
    total = levels.shape[0]
    hist = jnp.zeros((256, 3), jnp.int32).at[levels, jnp.arange(3)].add(1)
    cdf = jnp.cumsum(hist, axis=0)
    cdf_min = jnp.min(jnp.where(hist > 0, cdf, total), axis=0)
    span = total - cdf_min
    lut = jnp.round((cdf - cdf_min) * 255.0 / jnp.maximum(span, 1)) / 255.0
    out = jnp.take_along_axis(jnp.clip(lut, 0.0, 1.0), levels, axis=0).reshape(image.shape)
    return jnp.where(span > 0, out, image)


def sharpen(image: jax.Array, alpha: jax.Array, lightness: jax.Array) -> jax.Array:
    """Blends the image with a 3x3 Laplacian sharpening of itself.

    The kernel is (1 - alpha) * identity + alpha * [[-1, -1, -1], [-1, 8 + lightness, -1],
    [-1, -1, -1]], the albumentations `Sharpen` kernel; borders repeat the edge pixel.
    """
    height, width = image.shape[:2]
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    # Nine shifted views (kernel taps, not pixels) sum the 3x3 neighbourhood.
    box = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    neighbours = box - image
    return jnp.clip(image + alpha * ((7.0 + lightness) * image - neighbours), 0.0, 1.0)


def brightness_contrast(image: jax.Array, brightness: jax.Array, contrast: jax.Array) -> jax.Array:
    """`x * (1 + contrast) + brightness`, clipped (albumentations RandomBrightnessContrast)."""
    return jnp.clip(image * (1.0 + contrast) + brightness, 0.0, 1.0)


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
    """Inverts the values at or above `threshold`."""
    return jnp.where(image >= threshold, 1.0 - image, image)


def _rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[..., 3] RGB in [0, 1] -> hue (turns, [0, 1)), saturation, value, each [...]."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.max(image, axis=-1)
    chroma = value - jnp.min(image, axis=-1)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(chroma > 0, chroma, 1.0)  # the where keeps 0/0 out of the unused branches
    sector = jnp.where(
        value == red,
        (green - blue) / safe,
        jnp.where(value == green, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe),
    )
    hue = jnp.where(chroma > 0, jnp.mod(sector / 6.0, 1.0), 0.0)
    return hue, saturation, value


def _hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
    """Inverse of `_rgb_to_hsv`: channel n in (5, 3, 1) is v - v s clip(min(k, 4 - k), 0, 1)."""
    n = jnp.asarray([5.0, 3.0, 1.0])
    k = jnp.mod(n + hue[..., None] * 6.0, 6.0)
    ramp = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[..., None] * (1.0 - saturation[..., None] * ramp)


def shift_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotates the hue by `delta` turns (1.0 is a full turn)."""
    hue, saturation, value = _rgb_to_hsv(image)
    return _hsv_to_rgb(jnp.mod(hue + delta, 1.0), saturation, value)


def color_jitter(
    image: jax.Array,
    brightness: jax.Array,
    contrast: jax.Array,
    saturation: jax.Array,
    hue: jax.Array,
) -> jax.Array:
    """torchvision-style colour jitter with given factors, in a fixed order.

    Args:
        image: [H, W, 3] in [0, 1].
        brightness: factor multiplying the image.
        contrast: factor blending with the mean gray level (1.0 keeps the image).
        saturation: factor blending with the grayscale image (1.0 keeps the image).
        hue: hue shift in turns.
    """
    image = jnp.clip(image * brightness, 0.0, 1.0)
    mean = jnp.mean(to_grayscale(image)[..., 0])
    image = jnp.clip((image - mean) * contrast + mean, 0.0, 1.0)
    gray = to_grayscale(image)
    image = jnp.clip(gray + saturation * (image - gray), 0.0, 1.0)
    return shift_hue(image, hue)


def _symmetric(key: jax.Array, limit: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """U(-limit, limit)."""
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) * limit


def _random_grayscale(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    del key, magnitude  # grayscale has no parameter
    return to_grayscale(image)


def _random_posterize(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    del key  # albumentations' default keeps a fixed 4 bits; magnitude drops more of them
    return posterize(image, jnp.clip(jnp.round(8.0 - 4.0 * magnitude), 1.0, 8.0))


def _random_equalize(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    del key, magnitude  # equalisation has no parameter
    return equalize(image)


def _random_sharpen(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    alpha_key, lightness_key = jax.random.split(key)
    alpha = jax.random.uniform(alpha_key, minval=0.2, maxval=0.5) * magnitude
    lightness = jax.random.uniform(lightness_key, minval=0.5, maxval=1.0)
    return sharpen(image, jnp.clip(alpha, 0.0, 1.0), lightness)


def _random_brightness_contrast(
    key: jax.Array, image: jax.Array, magnitude: jax.Array
) -> jax.Array:
    brightness_key, contrast_key = jax.random.split(key)
    limit = 0.2 * magnitude
    return brightness_contrast(
        image, _symmetric(brightness_key, limit), _symmetric(contrast_key, limit)
    )


def _random_solarize(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    del key  # albumentations' default threshold is the fixed 128/255; magnitude lowers it
    threshold = 1.0 - (1.0 - 128.0 / 255.0) * magnitude
    return solarize(image, jnp.clip(threshold, 0.0, 1.0))


def _random_color_jitter(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    factor_key, hue_key = jax.random.split(key)
    factors = 1.0 + _symmetric(factor_key, jnp.minimum(0.2 * magnitude, 1.0), (3,))
    hue = _symmetric(hue_key, jnp.minimum(0.2 * magnitude, 0.5))
    return color_jitter(image, factors[0], factors[1], factors[2], hue)


PhotometricOp = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# (name, op(key, image, magnitude) -> image), in the official albumentations order.
PHOTOMETRIC_OPS: tuple[tuple[str, PhotometricOp], ...] = (
    ("grayscale", _random_grayscale),
    ("posterize", _random_posterize),
    ("equalize", _random_equalize),
    ("sharpen", _random_sharpen),
    ("brightness_contrast", _random_brightness_contrast),
    ("solarize", _random_solarize),
    ("color_jitter", _random_color_jitter),
)


def apply_photometric(key: jax.Array, image: jax.Array, strength: AugmentStrength) -> jax.Array:
    """Each photometric op with probability `strength.photometric_p`, in the official order.

    Args:
        key: PRNG key.
        image: [H, W, 3] float32 in [0, 1].
        strength: the augmentation strength.

    Returns:
        [H, W, 3] float32 in [0, 1].
    """
    keys = jax.random.split(key, 2 * len(PHOTOMETRIC_OPS))
    for index, (_, op) in enumerate(PHOTOMETRIC_OPS):
        apply = jax.random.uniform(keys[2 * index]) < strength.photometric_p
        changed = op(keys[2 * index + 1], image, strength.photometric_magnitude)
        image = jnp.where(apply, changed, image)
    return image


# --------------------------------------------------------------------------------------------
# Geometry. Points are [..., 2] (x, y) continuous pixel coordinates; maps are 3x3 homogeneous.


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` in full float32 precision."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def _apply_matrix(matrix: jax.Array, points: jax.Array) -> jax.Array:
    """[3, 3] affine matrix applied to points [..., 2]."""
    return _matmul(points, matrix[:2, :2].T) + matrix[:2, 2]


def _invert_affine(matrix: jax.Array) -> jax.Array:
    """Closed-form inverse of an affine [3, 3] matrix (exact for the identity)."""
    a, b, c, d = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    det = a * d - b * c
    linear = jnp.array([[d, -b], [-c, a]]) / det
    shift = -_matmul(linear, matrix[:2, 2])
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
    rotation = jnp.deg2rad(_symmetric(keys[1], strength.rotation_deg))
    zoom = jnp.exp(_symmetric(keys[2], strength.scale))
    shear = jnp.deg2rad(_symmetric(keys[3], strength.shear_deg))
    size = jnp.array([width, height], jnp.float32)
    shift = _symmetric(keys[4], strength.translate, (2,)) * size
    cos, sin = jnp.cos(rotation), jnp.sin(rotation)
    rotate = jnp.array([[cos, -sin], [sin, cos]])
    skew = jnp.array([[1.0, jnp.tan(shear)], [0.0, 1.0]])
    linear = jnp.where(apply, _matmul(rotate, skew) * zoom, jnp.eye(2))
    centre = size / 2.0
    translation = jnp.where(apply, centre + shift - _matmul(linear, centre), 0.0)
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
    return _matmul(jnp.asarray(_tps_solver()), displacements)


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
    return points + _matmul(_tps_features(points / size), coefficients) * size


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
    displacements = jnp.where(apply, _symmetric(shift_key, strength.tps_magnitude, shape), 0.0)
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


def _inside_canvas(points: jax.Array, height: int, width: int) -> jax.Array:
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


def _move_points(
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


def _move_box(
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
    moved, _ = _move_points(corners, crop, jnp.array(False), affine, coefficients, height, width)
    size = jnp.array([width, height], bbox.dtype)
    low = jnp.clip(jnp.min(moved, axis=0), 0.0, size)
    high = jnp.clip(jnp.max(moved, axis=0), 0.0, size)
    return jnp.concatenate([low, high])


def augment_view(
    key: jax.Array,
    image: jax.Array,
    keypoints: jax.Array,
    bbox: jax.Array,
    strength: AugmentStrength,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Photometric ops then one geometric warp of one image, with its keypoints and box.

    Args:
        key: PRNG key.
        image: [H, W, 3] float32 in [0, 1].
        keypoints: [K, 2] (x, y) canvas pixels.
        bbox: [4] (x1, y1, x2, y2) canvas pixels.
        strength: the augmentation strength.

    Returns:
        image [H, W, 3] in [0, 1], keypoints [K, 2], bbox [4], valid [K] (still on the canvas).
    """
    height, width = image.shape[:2]
    photo_key, crop_key, affine_key, tps_key = jax.random.split(key, 4)
    image = apply_photometric(photo_key, image, strength)
    crop, cropped = random_crop_map(crop_key, bbox, strength.crop_p, height, width)
    affine = random_affine_map(affine_key, strength, height, width)
    coefficients = random_tps_coefficients(tps_key, strength)
    image = warp_image(image, _matmul(crop, affine), coefficients)
    moved, converged = _move_points(keypoints, crop, cropped, affine, coefficients, height, width)
    valid = converged & _inside_canvas(moved, height, width)
    return image, moved, _move_box(bbox, crop, affine, coefficients, height, width), valid


_IMAGE_KEYS = ("source_image", "target_image")
_POINT_KEYS = ("source_keypoints", "target_keypoints")
_BOX_KEYS = ("source_bbox", "target_bbox")


def _check_batch(batch: Mapping[str, jax.Array]) -> None:
    """Raises one ValueError naming the key whose presence, shape or dtype is wrong."""
    required = _IMAGE_KEYS + _POINT_KEYS + _BOX_KEYS + ("keypoint_mask",)
    missing = [key for key in required if key not in batch]
    if missing:
        raise ValueError(f"augment_batch: the batch lacks {missing}.")
    b, h, w, _ = batch["source_image"].shape
    k = batch["keypoint_mask"].shape[-1]
    expected = {
        "source_image": ((b, h, w, 3), jnp.uint8),
        "target_image": ((b, h, w, 3), jnp.uint8),
        "source_keypoints": ((b, k, 2), jnp.float32),
        "target_keypoints": ((b, k, 2), jnp.float32),
        "source_bbox": ((b, 4), jnp.float32),
        "target_bbox": ((b, 4), jnp.float32),
        "keypoint_mask": ((b, k), jnp.bool_),
        "flip": ((b,), jnp.bool_),
    }
    for key, (shape, dtype) in expected.items():
        if key not in batch:
            continue
        value = batch[key]
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"augment_batch: {key} must be {jnp.dtype(dtype).name} {list(shape)}, got "
                f"{value.dtype} {list(value.shape)}; source and target images share one canvas."
            )


def augment_batch(
    rng: jax.Array, batch: Mapping[str, jax.Array], strength: AugmentStrength
) -> dict[str, jax.Array]:
    """Augments every pair of a batch; source and target draw independently.

    Args:
        rng: PRNG key.
        batch: `source_image`, `target_image` uint8 [B, H, W, 3]; `source_keypoints`,
            `target_keypoints` float32 [B, K, 2] (x, y) canvas pixels; `keypoint_mask` bool
            [B, K]; `source_bbox`, `target_bbox` float32 [B, 4]; optionally `flip` bool [B] (the
            PF-PASCAL flip of both images of a pair). Other keys pass through.
        strength: the augmentation strength.

    Returns:
        The batch with images float32 [B, H, W, 3] in [0, 1] (not yet normalised), keypoints and
        boxes moved, and `keypoint_mask` True only where the point is still on both canvases.
    """
    _check_batch(batch)
    batch_size = batch["source_image"].shape[0]
    out = dict(batch)
    valid = batch["keypoint_mask"]
    for view_key, image_key, point_key, box_key in zip(
        jax.random.split(rng), _IMAGE_KEYS, _POINT_KEYS, _BOX_KEYS, strict=True
    ):
        image = batch[image_key].astype(jnp.float32) / 255.0
        points, box = batch[point_key], batch[box_key]
        if "flip" in batch:
            image, points, box = flip_horizontal(image, points, box, batch["flip"])
        keys = jax.random.split(view_key, batch_size)
        image, points, box, on_canvas = jax.vmap(augment_view, in_axes=(0, 0, 0, 0, None))(
            keys, image, points, box, strength
        )
        out[image_key], out[point_key], out[box_key] = image, points, box
        valid = valid & on_canvas
    out["keypoint_mask"] = valid
    return out
