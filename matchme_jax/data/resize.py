"""Host-side resize of one image with its keypoints and box to the square training canvas.

This is the official evaluation's `Resize((size, size))` (PIL, bilinear, aspect ratio not kept)
with keypoints and boxes scaled per axis, `x * size / W` and `y * size / H`. That scaling is exact
in continuous pixel coordinates, where pixel `i` covers `[i, i + 1)`: PIL maps the point `x` of
the original to `x * size / W` of the resized image. The on-device augmentation
(matchme_jax/data/augment.py) uses the same convention.
"""

import numpy as np
from PIL import Image


def _check_inputs(image: np.ndarray, keypoints: np.ndarray, bbox: np.ndarray, size: int) -> None:
    """Raises one clear ValueError for inputs `resize_example` cannot handle."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"resize_example: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}; "
            "decode images to RGB uint8 before resizing."
        )
    if keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise ValueError(
            f"resize_example: keypoints must be [N, 2] (x, y), got shape {keypoints.shape}."
        )
    if bbox.shape != (4,):
        raise ValueError(f"resize_example: bbox must be [4] (x1, y1, x2, y2), got {bbox.shape}.")
    if not isinstance(size, int | np.integer) or size <= 0:
        raise ValueError(f"resize_example: size must be a positive int, got {size!r}.")


def resize_example(
    image: np.ndarray, keypoints: np.ndarray, bbox: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resizes an image to `size` x `size` and scales its keypoints and box to match.

    Args:
        image: [H, W, 3] uint8.
        keypoints: [N, 2] (x, y) in pixels of `image`.
        bbox: [4] (x1, y1, x2, y2) in pixels of `image`.
        size: side of the square output canvas.

    Returns:
        image: [size, size, 3] uint8, PIL bilinear resize.
        keypoints: [N, 2] float32, `x * size / W`, `y * size / H`.
        bbox: [4] float32, scaled like the keypoints.
    """
    image = np.asarray(image)
    keypoints = np.asarray(keypoints, np.float32)
    bbox = np.asarray(bbox, np.float32)
    _check_inputs(image, keypoints, bbox, size)
    height, width = image.shape[:2]
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    scale = np.array([size / width, size / height], np.float32)
    return resized, keypoints * scale, bbox * np.tile(scale, 2)
