"""On-device augmentation: keypoints stay on the pixels they label; strengths share one trace."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from matchme_jax.data import augment, photometric, warps
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.data.strength import _PRESETS
from matchme_jax.models import inputs

SIZE = 64
BATCH = 4
# Marker colours and the pixels (column, row) their 3x3 blobs are centred on.
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
CENTRES = np.array([[20, 22], [41, 25], [30, 42]])
BOX = np.array([14.0, 16.0, 48.0, 48.0], np.float32)
GRAY = 128

TRACES: list[int] = []


def _counted_augment(rng, batch, strength):
    TRACES.append(1)  # runs only while jax traces the function
    return augment.augment_batch(rng, batch, strength)


AUGMENT = jax.jit(_counted_augment)


def _marker_batch(flip: tuple[bool, ...] = (True, False, True, False)) -> dict[str, np.ndarray]:
    """Gray canvases with one coloured 3x3 blob per keypoint; keypoints at the blob centres."""
    image = np.full((SIZE, SIZE, 3), GRAY, np.uint8)
    for colour, (col, row) in zip(COLOURS, CENTRES, strict=True):
        image[row - 1 : row + 2, col - 1 : col + 2] = colour
    images = np.repeat(image[None], BATCH, axis=0)
    keypoints = np.repeat((CENTRES + 0.5).astype(np.float32)[None], BATCH, axis=0)
    boxes = np.repeat(BOX[None], BATCH, axis=0)
    return dict(
        source_image=images,
        target_image=images.copy(),
        source_keypoints=keypoints,
        target_keypoints=keypoints.copy(),
        keypoint_mask=np.ones((BATCH, len(CENTRES)), bool),
        source_bbox=boxes,
        target_bbox=boxes.copy(),
        flip=np.array(flip),
        pair_id=np.arange(BATCH),
    )


def _marker_centroid(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(x, y) centroid of the pixels that are mostly `colour` (projection onto gray -> colour)."""
    direction = colour / 255.0 - GRAY / 255.0
    alpha = (np.asarray(image) - GRAY / 255.0) @ direction / (direction @ direction)
    weight = np.maximum(alpha - 0.5, 0.0)
    rows, cols = np.nonzero(weight)
    assert rows.size, "marker vanished"
    w = weight[rows, cols]
    return np.array([np.sum((cols + 0.5) * w), np.sum((rows + 0.5) * w)]) / w.sum()


def _assert_keypoints_on_markers(out: dict, min_valid: int) -> None:
    checked = 0
    for view in ("source", "target"):
        images = np.asarray(out[f"{view}_image"])
        points = np.asarray(out[f"{view}_keypoints"])
        for b in range(BATCH):
            for k, colour in enumerate(COLOURS):
                if out["keypoint_mask"][b, k]:
                    centroid = _marker_centroid(images[b], colour)
                    np.testing.assert_allclose(centroid, points[b, k], atol=1.0)
                    checked += 1
    assert checked >= min_valid


GEOMETRIC = {
    "crop": AugmentStrength.create(crop_p=1.0),
    "affine": AugmentStrength.create(
        affine_p=1.0, rotation_deg=30.0, scale=0.25, shear_deg=10.0, translate=0.1
    ),
    "tps": AugmentStrength.create(tps_p=1.0, tps_magnitude=0.05),
    "all": AugmentStrength.create("strong", photometric_p=0.0, crop_p=1.0, affine_p=1.0, tps_p=1.0),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_keypoints_land_on_markers(name):
    batch = _marker_batch()
    out = AUGMENT(jax.random.key(3), batch, GEOMETRIC[name])
    _assert_keypoints_on_markers(out, min_valid=2 * BATCH * len(CENTRES) - 2)
    moved = np.abs(np.asarray(out["source_keypoints"]) - batch["source_keypoints"]) > 0.5
    flipped = batch["flip"][:, None, None]
    assert np.any(moved & ~flipped), f"{name} did not move any keypoint"


def test_identity_strength_returns_the_input():
    batch = _marker_batch(flip=(False,) * BATCH)
    rng = np.random.default_rng(0)
    batch["source_image"] = rng.integers(0, 256, batch["source_image"].shape, dtype=np.uint8)
    out = AUGMENT(jax.random.key(0), batch, AugmentStrength.none())
    for view in ("source", "target"):
        images = np.asarray(out[f"{view}_image"])
        np.testing.assert_array_equal(np.round(images * 255.0), batch[f"{view}_image"])
        np.testing.assert_allclose(images, batch[f"{view}_image"] / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(out[f"{view}_keypoints"], batch[f"{view}_keypoints"])
        np.testing.assert_array_equal(out[f"{view}_bbox"], batch[f"{view}_bbox"])
    np.testing.assert_array_equal(out["keypoint_mask"], batch["keypoint_mask"])
    np.testing.assert_array_equal(out["pair_id"], batch["pair_id"])
    assert out["source_image"].dtype == jnp.float32


def test_flip_flag_mirrors_both_images_of_the_pair():
    batch = _marker_batch()
    out = AUGMENT(jax.random.key(0), batch, AugmentStrength.none())
    _assert_keypoints_on_markers(out, min_valid=2 * BATCH * len(CENTRES))
    for view in ("source", "target"):
        x = np.asarray(out[f"{view}_keypoints"])[..., 0]
        expected = np.where(batch["flip"][:, None], SIZE - batch[f"{view}_keypoints"][..., 0], x)
        np.testing.assert_array_equal(x, expected)
        box = np.asarray(out[f"{view}_bbox"])
        np.testing.assert_array_equal(box[0], [SIZE - BOX[2], BOX[1], SIZE - BOX[0], BOX[3]])
        np.testing.assert_array_equal(box[1], BOX)


def test_weak_strong_and_none_share_one_trace():
    batch = _marker_batch()
    AUGMENT(jax.random.key(0), batch, AugmentStrength.weak())
    traces = len(TRACES)
    assert traces >= 1
    for strength in (AugmentStrength.strong(), AugmentStrength.none(), GEOMETRIC["tps"]):
        AUGMENT(jax.random.key(1), batch, strength)
    assert len(TRACES) == traces


def test_deterministic_for_a_fixed_rng_and_views_draw_independently():
    batch = _marker_batch(flip=(False,) * BATCH)
    strength = AugmentStrength.strong()
    first = AUGMENT(jax.random.key(7), batch, strength)
    second = AUGMENT(jax.random.key(7), batch, strength)
    other = AUGMENT(jax.random.key(8), batch, strength)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["source_image"], other["source_image"])
    # Source and target start identical, so any difference comes from independent draws.
    assert not np.array_equal(first["source_image"], first["target_image"])


def test_keypoints_leaving_the_canvas_are_masked_out():
    batch = _marker_batch(flip=(False,) * BATCH)
    batch["source_keypoints"][:, 0] = [1.0, 1.0]  # near a corner: a shift can push it off
    strength = AugmentStrength.create(affine_p=1.0, rotation_deg=20.0, translate=0.3)
    masks = []
    for seed in range(3):
        out = AUGMENT(jax.random.key(seed), batch, strength)
        points = np.concatenate([out["source_keypoints"], out["target_keypoints"]], axis=-1)
        on_canvas = np.all((points >= 0) & (points < SIZE), axis=-1)
        np.testing.assert_array_equal(out["keypoint_mask"], on_canvas)
        masks.append(np.asarray(out["keypoint_mask"]))
    assert not np.all(masks) and np.any(masks)


def test_affine_box_holds_the_moved_points_inside_it():
    batch = _marker_batch(flip=(False,) * BATCH)
    out = AUGMENT(jax.random.key(5), batch, GEOMETRIC["affine"])
    for view in ("source", "target"):
        box = np.asarray(out[f"{view}_bbox"])[:, None]
        points = np.asarray(out[f"{view}_keypoints"])
        assert np.all(points >= box[..., :2]) and np.all(points <= box[..., 2:])
        assert np.all(box[..., :2] >= 0) and np.all(box[..., 2:] <= SIZE)


def test_crop_follows_the_official_ranges():
    keys = jax.random.split(jax.random.key(0), 400)
    box = jnp.array([10.3, 20.0, 40.0, 50.6])
    crop = jax.jit(jax.vmap(lambda k: warps.random_crop_map(k, box, 1.0, SIZE, SIZE)[0]))(keys)
    left, top = np.asarray(crop[:, 0, 2]), np.asarray(crop[:, 1, 2])
    right = left + np.asarray(crop[:, 0, 0]) * SIZE
    bottom = top + np.asarray(crop[:, 1, 1]) * SIZE
    np.testing.assert_allclose(right, np.round(right), atol=1e-4)  # integer crops
    assert set(np.unique(left)) == set(range(11))  # U{0..floor(x1)}
    assert set(np.unique(top)) == set(range(21))
    assert set(np.unique(np.round(right))) == set(range(40, 65))  # U{ceil(x2)..W}
    assert set(np.unique(np.round(bottom))) == set(range(51, 65))


def test_crop_clamps_keypoints_outside_the_crop_like_the_official():
    batch = _marker_batch(flip=(False,) * BATCH)
    batch["source_keypoints"][:, 0] = [0.5, 0.5]  # outside the box: most crops cut it off
    out = AUGMENT(jax.random.key(2), batch, GEOMETRIC["crop"])
    corner = np.asarray(out["source_keypoints"])[:, 0]
    assert np.all((corner >= 0) & (corner <= SIZE - 1))
    assert np.any(corner == 0.0)
    assert np.all(out["keypoint_mask"][:, 0])


def test_tps_inverse_converges():
    key = jax.random.key(4)
    displacements = jax.random.uniform(key, (warps._TPS_GRID**2, 2), minval=-0.08, maxval=0.08)
    coefficients = warps.tps_coefficients(displacements)
    targets = jax.random.uniform(jax.random.key(5), (50, 2), maxval=SIZE)
    invert = jax.jit(warps.invert_tps, static_argnums=(2, 3, 4))
    residuals = [
        float(jnp.max(invert(targets, coefficients, SIZE, SIZE, steps)[1]))
        for steps in (0, 1, 2, 4)
    ]
    assert residuals[0] > 0.05  # the fixed-point start alone is off by a visible amount
    assert residuals[1] < residuals[0] and residuals[2] < residuals[1]
    assert residuals[3] < 1e-3  # pixels


def test_tps_interpolates_the_control_displacements():
    displacements = jax.random.uniform(jax.random.key(1), (warps._TPS_GRID**2, 2), maxval=0.05)
    coefficients = warps.tps_coefficients(displacements)
    controls = jnp.asarray(warps._tps_control_points(), jnp.float32) * SIZE
    moved = warps.tps_map(controls, coefficients, SIZE, SIZE)
    np.testing.assert_allclose(moved - controls, displacements * SIZE, atol=1e-3)


def test_flip_horizontal_official_formula_and_marker():
    batch = _marker_batch()
    image = batch["source_image"][0] / 255.0
    points = batch["source_keypoints"][0]
    flipped, moved, box = warps.flip_horizontal(image, points, BOX, jnp.array(True), SIZE)
    np.testing.assert_array_equal(moved[:, 0], SIZE - points[:, 0])
    np.testing.assert_array_equal(moved[:, 1], points[:, 1])
    np.testing.assert_array_equal(box, [SIZE - BOX[2], BOX[1], SIZE - BOX[0], BOX[3]])
    for k, colour in enumerate(COLOURS):
        np.testing.assert_allclose(_marker_centroid(flipped, colour), moved[k], atol=1.0)
    with pytest.raises(ValueError, match="width"):
        warps.flip_horizontal(image, points, BOX, jnp.array(True), SIZE + 1)


# --------------------------------------------------------------------------------------------
# Photometric ops.


def _textured_image() -> jax.Array:
    """A colourful, mid-contrast random image in [0.2, 0.8] (so every op has room to act)."""
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.uniform(0.2, 0.8, (SIZE, SIZE, 3)), jnp.float32)


@pytest.mark.parametrize(
    "name, op", photometric.PHOTOMETRIC_OPS, ids=[n for n, _ in photometric.PHOTOMETRIC_OPS]
)
def test_each_photometric_op_changes_the_image_and_keeps_range(name, op):
    image = _textured_image()
    out = jax.jit(op)(jax.random.key(0), image, jnp.float32(1.0))
    assert out.shape == image.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(jnp.mean(jnp.abs(out - image))) > 1e-3, f"{name} left the image unchanged"


def test_photometric_probability_gates_the_ops():
    image = _textured_image()
    apply = jax.jit(photometric.apply_photometric)
    unchanged = apply(jax.random.key(0), image, AugmentStrength.none())
    np.testing.assert_array_equal(unchanged, image)
    changed = apply(jax.random.key(0), image, AugmentStrength.create("weak", photometric_p=1.0))
    assert float(jnp.mean(jnp.abs(changed - image))) > 1e-2


def test_photometric_reference_values():
    red = jnp.zeros((1, 1, 3)).at[..., 0].set(1.0)
    np.testing.assert_allclose(
        photometric.shift_hue(red, 1.0 / 3.0), [[[0.0, 1.0, 0.0]]], atol=1e-6
    )
    np.testing.assert_allclose(photometric.to_grayscale(red), [[[0.299] * 3]], atol=1e-6)
    levels = jnp.arange(256.0).reshape(16, 16, 1).repeat(3, axis=-1) / 255.0
    posterized = np.asarray(photometric.posterize(levels, 4.0)) * 255.0
    np.testing.assert_allclose(posterized, 16.0 * np.round(posterized / 16.0), atol=1e-3)
    assert len(np.unique(np.round(posterized))) == 16
    np.testing.assert_allclose(
        photometric.solarize(jnp.array([0.2, 0.7]), 0.5), [0.2, 0.3], atol=1e-6
    )
    # A low-contrast image equalises to the full range with (near) uniform level counts.
    narrow = 0.4 + 0.2 * _textured_image()
    equalised = np.asarray(jax.jit(photometric.equalize)(narrow))
    assert equalised.min() == 0.0 and equalised.max() == 1.0
    np.testing.assert_allclose(np.mean(equalised, axis=(0, 1)), 0.5, atol=0.02)
    flat = jnp.full((4, 4, 3), 0.3)
    np.testing.assert_array_equal(photometric.equalize(flat), flat)
    np.testing.assert_allclose(photometric.sharpen(flat, 0.5, 1.0), flat, atol=1e-6)


def test_normalize_images():
    out = inputs.normalize_images(jnp.asarray(inputs.IMAGENET_MEAN).reshape(1, 1, 3))
    np.testing.assert_allclose(out, 0.0, atol=1e-7)
    one = inputs.normalize_images(jnp.ones((1, 1, 3)))
    np.testing.assert_allclose(
        one[0, 0], (1.0 - np.array(inputs.IMAGENET_MEAN)) / inputs.IMAGENET_STD, rtol=1e-6
    )


# --------------------------------------------------------------------------------------------
# Strength construction and input checks.


def test_presets_and_config():
    weak = AugmentStrength.weak()
    assert float(weak.photometric_p) == pytest.approx(0.2) and float(weak.crop_p) == 0.5
    assert float(weak.affine_p) == 0.0 and float(weak.tps_p) == 0.0
    assert all(v.dtype == jnp.float32 and v.shape == () for v in jax.tree.leaves(weak))
    assert AugmentStrength.from_config("strong") == AugmentStrength.strong()
    cfg = ml_collections.ConfigDict(dict(preset="weak", tps_p=0.3))
    assert float(AugmentStrength.from_config(cfg).tps_p) == pytest.approx(0.3)
    full = ml_collections.ConfigDict({name: 0.0 for name in _PRESETS["none"]})
    assert AugmentStrength.from_config(full) == AugmentStrength.none()


@pytest.mark.parametrize(
    "cfg, message",
    [
        ("medium", "preset"),
        (dict(preset="weak", crop=0.5), "crop"),
        (dict(preset="weak", crop_p=1.5), "crop_p"),
        (dict(preset="weak", rotation_deg=-1.0), "rotation_deg"),
        (dict(crop_p=0.5), "preset"),
    ],
)
def test_bad_config_raises_a_clear_error(cfg, message):
    if isinstance(cfg, dict):
        cfg = ml_collections.ConfigDict(cfg)
    with pytest.raises(ValueError, match=message):
        AugmentStrength.from_config(cfg)


def test_bad_batch_names_the_key():
    batch = _marker_batch()
    batch["target_image"] = batch["target_image"].astype(np.float32)
    with pytest.raises(ValueError, match="target_image"):
        augment.augment_batch(jax.random.key(0), batch, AugmentStrength.none())
    batch = _marker_batch()
    del batch["keypoint_mask"]
    with pytest.raises(ValueError, match="keypoint_mask"):
        augment.augment_batch(jax.random.key(0), batch, AugmentStrength.none())
