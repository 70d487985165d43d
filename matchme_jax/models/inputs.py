"""Model inputs: images as the models take them, ImageNet-normalised float32 [B, H, W, 3]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
