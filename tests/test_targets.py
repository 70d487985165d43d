"""keypoints_to_flow: the official KeypointToFlow fixture and hand-computed cases."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matchme_jax.data.targets import keypoints_to_flow
from matchme_jax.losses import official_valid_cells

FIXTURE = Path(__file__).parent / "fixtures" / "eval_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _cats_targets(src, trg, mask, weight=None):
    return keypoints_to_flow(
        jnp.asarray(src, jnp.float32),
        jnp.asarray(trg, jnp.float32),
        jnp.asarray(mask),
        feature_size=16,
        image_size=256,
        weight=weight,
    )


@pytest.mark.parametrize("prefix", ["k2f", "k2f512"])
def test_matches_official_fixture_exactly(ref, prefix):
    receptive_field, _, feature_size, image_size = (int(v) for v in ref[f"{prefix}/config"])
    targets = jax.jit(
        functools.partial(
            keypoints_to_flow,
            feature_size=feature_size,
            image_size=image_size,
            receptive_field=receptive_field,
        )
    )
    flow, valid, cell_weight = targets(
        ref[f"{prefix}/src_kps"], ref[f"{prefix}/trg_kps"], ref[f"{prefix}/mask"]
    )
    assert flow.dtype == jnp.float32 and valid.dtype == jnp.bool_
    np.testing.assert_array_equal(flow, ref[f"{prefix}/flow"])
    np.testing.assert_array_equal(valid, ref[f"{prefix}/kps_per_cell"] > 0)
    np.testing.assert_array_equal(cell_weight, valid.astype(np.float32))


def test_single_keypoint_covers_its_inclusive_boxes():
    # Cell x owns [16x - 9, 16x + 25]: x = 40 lies in cells 1, 2, 3; y = 60 in cells 3, 4.
    src = [[[100.0, 20.0]]]
    trg = [[[40.0, 60.0]]]
    flow, valid, _ = _cats_targets(src, trg, [[True]])
    expected_valid = np.zeros((1, 16, 16), bool)
    expected_valid[0, 3:5, 1:4] = True
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(flow[valid], np.tile([[60.0 / 16, -40.0 / 16]], (6, 1)))
    assert not np.any(flow[~valid])


def test_last_keypoint_wins_a_shared_cell_and_carries_its_weight():
    # Both target keypoints fall in cell (y=3, x=2)'s box; keypoint 1 is the later one.
    # A masked-out keypoint 2 in the same box must neither win nor enter the mean.
    src = [[[200.0, 100.0], [10.0, 30.0], [0.0, 0.0]]]
    trg = [[[40.0, 60.0], [46.0, 58.0], [44.0, 57.0]]]
    weight = jnp.array([[0.9, 0.4, 0.7]])
    flow, valid, cell_weight = _cats_targets(src, trg, [[True, True, False]], weight)
    mean = np.array([43.0, 59.0])
    np.testing.assert_allclose(flow[0, 3, 2], (np.array([10.0, 30.0]) - mean) / 16, rtol=1e-6)
    np.testing.assert_allclose(cell_weight[0, 3, 2], 0.4)
    # Cell (3, 1)'s box [7, 41] x [39, 73] holds keypoint 0 only: it keeps keypoint 0.
    np.testing.assert_allclose(flow[0, 3, 1], (np.array([200.0, 100.0]) - [40.0, 60.0]) / 16)
    np.testing.assert_allclose(cell_weight[0, 3, 1], 0.9)
    assert not np.any(cell_weight[~np.asarray(valid)])
    # Swapping the order swaps the winner: the rule is about k, not about position.
    swapped, _, swapped_weight = _cats_targets(
        [src[0][1::-1]], [trg[0][1::-1]], [[True, True]], weight[:, 1::-1]
    )
    np.testing.assert_allclose(swapped[0, 3, 2], (np.array([200.0, 100.0]) - mean) / 16)
    np.testing.assert_allclose(swapped_weight[0, 3, 2], 0.9)


def test_zero_flow_cell_is_valid_by_box_but_not_by_the_official_rule():
    # Source = target: the covered cells (6, 7, 8 on each axis) get a flow of exactly (0, 0).
    flow, valid, _ = _cats_targets([[[120.0, 120.0]]], [[[120.0, 120.0]]], [[True]])
    assert np.asarray(valid).sum() == 9
    assert not np.any(official_valid_cells(flow))


def test_empty_pair_gives_no_valid_cell():
    flow, valid, cell_weight = _cats_targets(
        np.full((1, 2, 2), -1.0), np.full((1, 2, 2), -1.0), [[False, False]]
    )
    assert not np.any(valid) and not np.any(flow) and not np.any(cell_weight)


def test_rejects_bad_input():
    kps = jnp.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="bool"):
        keypoints_to_flow(kps, kps, jnp.ones((1, 2)), feature_size=16, image_size=256)
    with pytest.raises(ValueError, match="multiple"):
        keypoints_to_flow(kps, kps, jnp.ones((1, 2), bool), feature_size=15, image_size=256)
    with pytest.raises(ValueError, match="weight"):
        keypoints_to_flow(
            kps, kps, jnp.ones((1, 2), bool), feature_size=16, image_size=256, weight=jnp.ones(2)
        )
