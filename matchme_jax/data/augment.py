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

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from matchme_jax.data.photometric import apply_photometric
from matchme_jax.data.strength import AugmentStrength
from matchme_jax.data.warps import (
    compose,
    flip_horizontal,
    inside_canvas,
    move_box,
    move_points,
    random_affine_map,
    random_crop_map,
    random_tps_coefficients,
    warp_image,
)

__all__ = ["AugmentStrength", "augment_batch", "augment_view"]


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
    image = warp_image(image, compose(crop, affine), coefficients)
    moved, converged = move_points(keypoints, crop, cropped, affine, coefficients, height, width)
    valid = converged & inside_canvas(moved, height, width)
    return image, moved, move_box(bbox, crop, affine, coefficients, height, width), valid


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
        The batch with images float32 [B, H, W, 3] in [0, 1] (not yet normalised: see
        `models.inputs.normalize_images`), keypoints and boxes moved, and `keypoint_mask` True
        only where the point is still on both canvases.
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
