"""The photometric ops against the official formulas written out in NumPy, and dm-pix.

Where `photometric` calls dm-pix (solarize, the brightness shift, the hue shift) the test pins the
official formula, so a dm-pix change of semantics fails here. Where it keeps its own code, a test
shows that dm-pix's namesake differs by more than rounding, so the reason to keep it stays true.
"""

import colorsys

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matchme_jax.data import photometric

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, OpenCV's and PIL's grayscale
# Black, white, grey, primaries, secondaries, near-ties of the max channel, near-greys.
EDGE_PIXELS = [
    [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
    [0, 1, 1], [1, 0, 1], [1, 0, 1e-7], [1, 1e-7, 0], [1, 0, 0.999], [0.3, 0.3, 0.2],
    [0.2, 0.3, 0.3], [1e-8, 0, 0], [128 / 255, 64 / 255, 200 / 255],
]  # fmt: skip


def _image(seed: int = 0) -> np.ndarray:
    """[16, 17, 3] float32: random values, random 8-bit levels and the edge pixels."""
    rng = np.random.default_rng(seed)
    pixels = np.concatenate(
        [rng.uniform(0, 1, (136, 3)), rng.integers(0, 256, (120, 3)) / 255.0, EDGE_PIXELS]
    )
    return pixels.astype(np.float32).reshape(16, 17, 3)


def _shift_hue_reference(image: np.ndarray, delta: float) -> np.ndarray:
    """HSV hue rotation, pixel by pixel in float64 (colorsys: the hexcone HSV of OpenCV)."""
    out = [
        colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
        for h, s, v in (colorsys.rgb_to_hsv(*p) for p in image.reshape(-1, 3).astype(np.float64))
    ]
    return np.asarray(out).reshape(image.shape)


# --------------------------------------------------------------------------------------------
# Ops computed by dm-pix: equal to the official formula.


def test_solarize_inverts_at_or_above_threshold():
    image = _image()
    for threshold in [0.0, 0.3, 128 / 255, 1.0]:
        t = np.float32(threshold)
        expected = np.where(image >= t, 1.0 - image, image)
        out = jax.jit(photometric.solarize)(jnp.asarray(image), t)
        np.testing.assert_array_equal(out, expected)
    # Inclusive: a value equal to the threshold is inverted.
    level = np.float32(128 / 255)
    assert float(photometric.solarize(jnp.full((1, 1, 3), level), level)[0, 0, 0]) == 1 - level


def test_brightness_contrast_is_scale_then_shift():
    image = _image()
    for brightness, contrast in [(0.13, -0.1), (-0.2, 0.2), (0.5, 0.0)]:
        expected = np.clip(image * (1.0 + contrast) + brightness, 0.0, 1.0)
        out = photometric.brightness_contrast(jnp.asarray(image), brightness, contrast)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("delta", [0.0, 1 / 3, -0.2, 0.5, 0.97, -1.0, 1.25])
def test_shift_hue_rotates_hsv_hue(delta):
    image = _image()
    out = jax.jit(photometric.shift_hue)(jnp.asarray(image), jnp.float32(delta))
    np.testing.assert_allclose(out, _shift_hue_reference(image, delta), rtol=0, atol=2e-6)


# --------------------------------------------------------------------------------------------
# Ops kept hand-written: the official formula, and how dm-pix's namesake differs.


def test_grayscale_uses_601_weights_not_dm_pix_ones():
    image = _image()
    out = np.asarray(photometric.to_grayscale(jnp.asarray(image)))
    np.testing.assert_allclose(out, np.repeat(image @ LUMA, 3).reshape(image.shape), atol=1e-6)
    red = jnp.asarray([[[1.0, 0.0, 0.0]]])
    theirs = float(pix.rgb_to_grayscale(red)[0, 0, 0])  # TensorFlow's 0.2989
    assert abs(theirs - float(photometric.to_grayscale(red)[0, 0, 0])) > 5e-5


def test_contrast_scales_while_dm_pix_blends_with_the_mean():
    image = jnp.asarray(_image())
    ours = photometric.brightness_contrast(image, 0.0, 0.2)
    theirs = jnp.clip(pix.adjust_contrast(image, 1.2), 0.0, 1.0)
    assert float(jnp.max(jnp.abs(ours - theirs))) > 0.05


def test_color_jitter_formula_and_dm_pix_differences():
    image = _image()
    brightness, contrast, saturation, hue = 1.1, 0.8, 1.3, 0.15
    # torchvision order: multiply, blend with the gray mean, blend with gray, rotate the hue.
    x = np.clip(image.astype(np.float64) * brightness, 0, 1)
    mean = np.mean(x @ LUMA)
    x = np.clip((x - mean) * contrast + mean, 0, 1)
    gray = (x @ LUMA)[..., None]
    x = np.clip(gray + saturation * (x - gray), 0, 1)
    expected = _shift_hue_reference(x.astype(np.float32), hue)
    out = photometric.color_jitter(jnp.asarray(image), brightness, contrast, saturation, hue)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)

    # dm-pix's brightness adds, its contrast uses each channel's mean, its saturation is HSV's.
    cast = jnp.asarray(image * np.array([1.0, 0.6, 0.2], np.float32))  # a colour cast
    cases = [
        ((1.2, 1.0, 1.0), pix.adjust_brightness(cast, 0.2)),
        ((1.0, 1.3, 1.0), pix.adjust_contrast(cast, 1.3)),
        ((1.0, 1.0, 1.3), pix.adjust_saturation(cast, 1.3)),
    ]
    for factors, theirs in cases:
        ours = photometric.color_jitter(cast, *factors, 0.0)
        assert float(jnp.max(jnp.abs(ours - jnp.clip(theirs, 0, 1)))) > 0.01, factors


def test_dm_pix_lacks_posterize_equalize_sharpen():
    assert not any(hasattr(pix, name) for name in ["posterize", "equalize", "sharpen"])
