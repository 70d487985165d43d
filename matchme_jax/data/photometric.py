"""Photometric ops of the augmentation: image [H, W, 3] float32 in [0, 1] -> same.

The official albumentations set (grayscale, posterize, equalize, sharpen, brightness/contrast,
solarize, colour jitter), each a pure function of its parameters, plus its random version that
draws the parameters from a magnitude; `apply_photometric` runs them in the official order.
dm-pix computes the ops whose semantics equal the official ones (tests/test_photometric.py checks
both that and, for the hand-written rest, how dm-pix's namesake differs).
"""

from __future__ import annotations

from collections.abc import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp

from matchme_jax.data.strength import AugmentStrength, symmetric_uniform

# ITU-R 601 weights, as OpenCV's and PIL's grayscale; dm-pix's rgb_to_grayscale uses TensorFlow's
# 0.2989 for red, not 0.299.
_LUMA = (0.299, 0.587, 0.114)


def to_grayscale(image: jax.Array) -> jax.Array:
    """Luma replicated over the three channels."""
    gray = jnp.sum(image * jnp.asarray(_LUMA, image.dtype), axis=-1)
    return jnp.broadcast_to(gray[..., None], image.shape)


# dm-pix has no posterize, equalize or sharpen.
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
    # Not pix.adjust_contrast: that blends with the per-channel mean, albumentations just scales.
    return jnp.clip(pix.adjust_brightness(image * (1.0 + contrast), brightness), 0.0, 1.0)


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
    """Inverts the values at or above `threshold`."""
    return pix.solarize(image, threshold)


def shift_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotates the HSV hue by `delta` turns (1.0 is a full turn)."""
    return pix.adjust_hue(image, delta)


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
    # dm-pix's adjust_brightness adds (not multiplies), adjust_contrast blends with the per-channel
    # mean (not the gray mean) and adjust_saturation scales HSV saturation (not a gray blend).
    image = jnp.clip(image * brightness, 0.0, 1.0)
    mean = jnp.mean(to_grayscale(image)[..., 0])
    image = jnp.clip((image - mean) * contrast + mean, 0.0, 1.0)
    gray = to_grayscale(image)
    image = jnp.clip(gray + saturation * (image - gray), 0.0, 1.0)
    return shift_hue(image, hue)


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
        image, symmetric_uniform(brightness_key, limit), symmetric_uniform(contrast_key, limit)
    )


def _random_solarize(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    del key  # albumentations' default threshold is the fixed 128/255; magnitude lowers it
    threshold = 1.0 - (1.0 - 128.0 / 255.0) * magnitude
    return solarize(image, jnp.clip(threshold, 0.0, 1.0))


def _random_color_jitter(key: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    factor_key, hue_key = jax.random.split(key)
    factors = 1.0 + symmetric_uniform(factor_key, jnp.minimum(0.2 * magnitude, 1.0), (3,))
    hue = symmetric_uniform(hue_key, jnp.minimum(0.2 * magnitude, 0.5))
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
