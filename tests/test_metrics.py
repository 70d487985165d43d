"""PCK, keypoint transfer, thresholds and aggregation: official fixture and hand-computed cases."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matchme_jax import metrics

pytestmark = pytest.mark.full_optimization  # compares with the official code's outputs

FIXTURE = Path(__file__).parent / "fixtures" / "eval_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("prefix", ["flow2kps", "flow2kps512"])
def test_flow_to_keypoints_official_matches_fixture_exactly(ref, prefix):
    transfer = jax.jit(metrics.flow_to_keypoints, static_argnames=("image_size", "mode"))
    out = transfer(
        ref[f"{prefix}/flow"], ref[f"{prefix}/trg_kps"], image_size=int(ref[f"{prefix}/img_size"])
    )
    mask = ref[f"{prefix}/mask"]
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out)[mask], ref[f"{prefix}/pred_src_kps"][mask])


def test_flow_to_keypoints_official_truncates_and_clamps():
    # Flow of +1 cell in x everywhere: a keypoint moves by image_size / h = 4 pixels in x.
    flow = jnp.zeros((1, 2, 2, 2)).at[..., 0].set(1.0)
    kps = jnp.array([[[-0.3, 2.9], [7.7, 1.2], [9.0, -5.0]]])
    out = metrics.flow_to_keypoints(flow, kps, image_size=8)
    np.testing.assert_array_equal(out, [[[4.0, 2.0], [11.0, 1.0], [11.0, 0.0]]])


def test_flow_to_keypoints_official_interpolates_with_half_pixel_centres():
    # 2 x 2 flow upsampled to 4 x 4: pixel 1 sits at cell 0.25, pixel 0 is clamped to cell 0.
    flow = jnp.zeros((1, 2, 2, 2)).at[0, :, 1, 0].set(1.0).at[0, 1, :, 1].set(1.0)
    kps = jnp.array([[[0.0, 0.0], [1.0, 2.0], [3.0, 3.0]]])
    out = metrics.flow_to_keypoints(flow, kps, image_size=4)
    # x-flow at pixel x: 0, 0.25, 0.75, 1 cells; y-flow likewise in y; 1 cell = 2 px.
    np.testing.assert_array_equal(out, [[[0.0, 0.0], [1.5, 3.5], [5.0, 5.0]]])


def test_flow_to_keypoints_bilinear_agrees_on_integers_and_interpolates_between(ref):
    flow, kps = ref["flow2kps/flow"], ref["flow2kps/trg_kps"]
    inside = np.clip(np.trunc(kps), 0, 255)
    official = metrics.flow_to_keypoints(flow, inside, 256)
    bilinear = metrics.flow_to_keypoints(flow, inside, 256, mode="bilinear")
    np.testing.assert_array_equal(bilinear, official)

    # A flow linear in x (x-flow = 0.5 * cell index) is reproduced exactly between cell centres:
    # pixel x is at cell (x + 0.5) / 16 - 0.5.
    linear = jnp.zeros((1, 16, 16, 2)).at[..., 0].set(0.5 * jnp.arange(16.0))
    kps = jnp.array([[[100.25, 40.5], [0.0, 0.0]]])
    out = metrics.flow_to_keypoints(linear, kps, 256, mode="bilinear")
    cell = (100.25 + 0.5) / 16 - 0.5
    np.testing.assert_allclose(out[0, 0], [100.25 + 16 * 0.5 * cell, 40.5], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 1], [0.0, 0.0])  # left of cell 0's centre: clamped


def test_flow_to_keypoints_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        metrics.flow_to_keypoints(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 3, 2)), 8, mode="cubic")
    with pytest.raises(ValueError, match="same B"):
        metrics.flow_to_keypoints(jnp.zeros((2, 2, 2, 2)), jnp.zeros((1, 3, 2)), 8)


def test_pck_matches_fixture_exactly(ref):
    args = (ref["pck/pred_kps"], ref["pck/gt_kps"], ref["pck/mask"], ref["pck/threshold"])
    for i, alpha in enumerate(ref["pck/alphas"]):
        correct = jax.jit(metrics.correct_keypoints, static_argnums=4)(*args, float(alpha))
        np.testing.assert_array_equal(correct, ref["pck/correct"][i])
        num_correct, num_points = metrics.pck_counts(*args, float(alpha))
        np.testing.assert_array_equal(num_points, ref["pck/n_pts"])
        expected_correct = np.rint(ref["pck/per_pair_pct"][i] * ref["pck/n_pts"] / 100)
        np.testing.assert_array_equal(num_correct, expected_correct)
        per_pair = jax.jit(functools.partial(metrics.pck, alpha=float(alpha)))(*args)
        assert per_pair.dtype == jnp.float32
        np.testing.assert_allclose(100 * per_pair, ref["pck/per_pair_pct"][i], rtol=1e-6)
        np.testing.assert_allclose(100 * np.mean(per_pair), ref["pck/mean_pct"][i], rtol=1e-6)


def test_pck_thresholds_match_fixture_exactly(ref):
    spair = ref["pck/kind"] == "spair_bbox"
    np.testing.assert_array_equal(
        metrics.bbox_threshold(ref["pck/src_bbox"][spair]), ref["pck/threshold"][spair]
    )
    kps = ref["willow/src_kps"]
    mask = np.ones(kps.shape[:2], bool)
    np.testing.assert_array_equal(
        metrics.willow_cats_threshold(kps, mask), ref["willow/thr_bbox_cats"]
    )
    np.testing.assert_array_equal(
        metrics.bbox_kp_threshold(kps, mask), ref["willow/thr_bbox_kp_catspp"]
    )
    np.testing.assert_array_equal(metrics.img_threshold(256), ref["willow/thr_img_cats"][0])


def test_pck_boundary_is_inclusive_with_float32_alpha():
    # float32(100) * float32(0.15) = 15.000000953674316, not 15.
    bound = np.float32(100) * np.float32(0.15)
    above = np.nextafter(bound, np.float32(np.inf))
    gt = jnp.zeros((1, 4, 2))
    pred = jnp.array([[[15.0, 0.0], [bound, 0.0], [above, 0.0], [3.0, 4.0]]])
    mask = jnp.ones((1, 4), bool)
    correct = metrics.correct_keypoints(pred, gt, mask, jnp.array([100.0]), 0.15)
    np.testing.assert_array_equal(correct, [[True, True, False, True]])
    # dist 5 == 50 * 0.1 (in float32): on the boundary, so correct.
    five = metrics.correct_keypoints(pred[:, 3:], gt[:, 3:], mask[:, 3:], jnp.array([50.0]), 0.1)
    np.testing.assert_array_equal(five, [[True]])


def test_pck_ignores_padding_and_scores_empty_pairs_zero():
    gt = jnp.zeros((3, 3, 2))
    # Pair 0: one good point, one bad point, a padded slot that would be correct.
    # Pair 1: only padding (would be correct). Pair 2: all bad.
    pred = jnp.array(
        [
            [[1.0, 0.0], [50.0, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[30.0, 0.0], [0.0, 40.0], [30.0, 40.0]],
        ]
    )
    mask = jnp.array([[True, True, False], [False, False, False], [True, True, True]])
    threshold = metrics.img_threshold(100)  # a scalar broadcasts over the batch
    np.testing.assert_array_equal(metrics.pck(pred, gt, mask, threshold, 0.1), [0.5, 0.0, 0.0])
    num_correct, num_points = metrics.pck_counts(pred, gt, mask, threshold, 0.1)
    np.testing.assert_array_equal(num_correct, [1, 0, 0])
    np.testing.assert_array_equal(num_points, [2, 0, 3])


def test_pck_rejects_sentinel_masks():
    with pytest.raises(ValueError, match="bool"):
        metrics.pck(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), jnp.ones((1, 2)), 1.0, 0.1)


def test_thresholds_by_hand():
    bbox = jnp.array([[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 30.0, 90.5]])
    np.testing.assert_array_equal(metrics.bbox_threshold(bbox), [100.0, 90.5])
    kps = jnp.array(
        [[[10.0, 20.0], [50.0, 30.0], [900.0, 900.0]], [[5.0, 60.0], [7.0, 2.0], [0, 0]]]
    )
    mask = jnp.array([[True, True, False], [True, True, False]])
    # CATs PF-WILLOW quirk: max(max_x, max_y) + 1, the padded slot ignored.
    np.testing.assert_array_equal(metrics.willow_cats_threshold(kps, mask), [51.0, 61.0])
    # CATs++ bbox-kp: the longer side of the keypoint extent.
    np.testing.assert_array_equal(metrics.bbox_kp_threshold(kps, mask), [40.0, 58.0])
    assert metrics.img_threshold(512).dtype == jnp.float32


def test_pck_accumulator_counts_every_pair_once():
    acc = metrics.PCKAccumulator(["cat", "dog", "cow"])
    acc.update(np.array([1.0, 0.5, 0.0]), np.array([True, True, True]), np.array([0, 0, 1]))
    # A padded last batch: the third example is a copy that must not count.
    acc.update(np.array([0.25, 1.0, 0.25]), np.array([True, True, False]), np.array([1, 2, 1]))
    result = acc.result()
    assert result["num_pairs"] == 5
    assert result["overall"] == pytest.approx(100 * (1.0 + 0.5 + 0.0 + 0.25 + 1.0) / 5)
    assert result["per_category"] == pytest.approx({"cat": 75.0, "dog": 12.5, "cow": 100.0})
    assert result["pairs_per_category"] == {"cat": 2, "dog": 2, "cow": 1}
    assert result["mean_over_categories"] == pytest.approx((75.0 + 12.5 + 100.0) / 3)


def test_pck_accumulator_without_names_uses_ids_and_rejects_bad_input():
    acc = metrics.PCKAccumulator()
    with pytest.raises(ValueError, match="before any valid pair"):
        acc.result()
    with pytest.raises(ValueError, match="bool"):
        acc.update(np.array([1.0]), np.array([1]), np.array([4]))
    acc.update(np.array([1.0, 0.0]), np.array([True, False]), np.array([4, 4]))
    assert acc.result()["per_category"] == {4: 100.0}
