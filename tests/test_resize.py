"""Host resize: PIL bilinear to the square canvas, keypoints and boxes scaled per axis."""

import numpy as np
import pytest
from PIL import Image

from matchme_jax.data.resize import resize_example

RED = np.array([255, 0, 0], np.uint8)


def _marker_image(height: int, width: int, centres: list[tuple[int, int]]) -> np.ndarray:
    """Gray image with a 3x3 red blob centred on each (column, row) pixel."""
    image = np.full((height, width, 3), 128, np.uint8)
    for col, row in centres:
        image[row - 1 : row + 2, col - 1 : col + 2] = RED
    return image


def _red_centroid(image: np.ndarray) -> np.ndarray:
    """(x, y) continuous coordinates of the centroid of the clearly red pixels."""
    pixels = image.astype(np.float32)
    redness = pixels[..., 0] - 0.5 * (pixels[..., 1] + pixels[..., 2])
    weight = np.maximum(redness - 0.5 * redness.max(), 0.0)
    rows, cols = np.nonzero(weight)
    w = weight[rows, cols]
    return np.array([np.sum((cols + 0.5) * w), np.sum((rows + 0.5) * w)]) / w.sum()


@pytest.mark.parametrize("shape", [(90, 120), (40, 30)])
def test_keypoint_lands_on_marker(shape):
    height, width = shape
    col, row = width // 3, 2 * height // 3
    image = _marker_image(height, width, [(col, row)])
    keypoint = np.array([[col + 0.5, row + 0.5]], np.float32)
    resized, keypoints, _ = resize_example(image, keypoint, np.zeros(4, np.float32), 64)
    assert resized.shape == (64, 64, 3) and resized.dtype == np.uint8
    np.testing.assert_allclose(_red_centroid(resized), keypoints[0], atol=1.0)


def test_scaling_values_and_pil_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    keypoints = np.array([[0.0, 0.0], [40.0, 25.0], [79.5, 49.5]], np.float32)
    bbox = np.array([8.0, 5.0, 72.0, 45.0], np.float32)
    resized, moved, box = resize_example(image, keypoints, bbox, 32)
    expected = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized, expected)
    np.testing.assert_allclose(moved, keypoints * [32 / 80, 32 / 50], rtol=1e-6)
    np.testing.assert_allclose(box, [3.2, 3.2, 28.8, 28.8], rtol=1e-6)
    assert moved.dtype == np.float32 and box.dtype == np.float32


@pytest.mark.parametrize(
    "image, keypoints, bbox, size, message",
    [
        (np.zeros((8, 8), np.uint8), np.zeros((1, 2)), np.zeros(4), 4, "image"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((1, 2)), np.zeros(4), 4, "image"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((2,)), np.zeros(4), 4, "keypoints"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 2)), np.zeros(5), 4, "bbox"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 2)), np.zeros(4), 0, "size"),
    ],
)
def test_bad_input_names_the_argument(image, keypoints, bbox, size, message):
    with pytest.raises(ValueError, match=message):
        resize_example(image, keypoints, bbox, size)
