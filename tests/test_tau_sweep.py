"""The tau sweep: what every confidence threshold would have kept, from one annotation pass."""

import json

import numpy as np
import pytest
from PIL import Image
from test_config import load

from matchme_jax import annotate
from matchme_jax.data import sources


def _rows_by_tau(rows):
    return {row["tau"]: row for row in rows}


@pytest.fixture
def by_hand():
    confidence = np.array([[0.95, 0.85, 0.55, 0.15], [0.75, 0.25, 0.05, 0.65]], np.float32)
    candidates = np.array([[True, True, True, False], [True, True, True, True]])
    rel_error = np.array([[0.02, 0.08, 0.3, 0.0], [np.nan, 0.2, 0.01, 0.09]])
    return annotate.sweep_tau(confidence, candidates, rel_error, max_points=2, min_points=2)


def test_sweep_counts_and_precision_by_hand(by_hand):
    rows = _rows_by_tau(by_hand)
    assert list(rows) == list(annotate.SWEEP_TAUS)
    # tau 0.1: the two most confident candidates of each pair; the 4th cell of pair 0 is not a
    # candidate, its 3rd falls to max_points. Truth known for 0.02, 0.08 and 0.09.
    assert rows[0.1] == {
        "tau": 0.1,
        "pairs": 2,
        "points": 4,
        "points_per_pair": 2.0,
        "points_with_truth": 3,
        "precision@0.05": pytest.approx(100 / 3),
        "precision@0.1": 100.0,
    }
    # tau 0.7: pair 1 keeps one point, fewer than min_points, and is dropped.
    assert (rows[0.7]["pairs"], rows[0.7]["points"]) == (1, 2)
    assert (rows[0.7]["precision@0.05"], rows[0.7]["precision@0.1"]) == (50.0, 100.0)
    # tau 0.9: nothing left, so no precision.
    assert rows[0.9]["points"] == 0 and rows[0.9]["points_per_pair"] == 0.0
    assert rows[0.9]["precision@0.1"] is None


def test_sweep_at_the_run_tau_matches_the_annotator_statistics(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.tau = 0.5
    config.selftrain.max_pseudo_points = 3  # fewer than the 4x4 cells: the cap matters
    config.selftrain.min_pseudo_points = 2
    cells = config.model.feature_size
    rng = np.random.default_rng(0)

    def teacher(variables, batch):
        """Random flow and confidence per cell, like an unsure teacher."""
        b = len(batch["target_image"])
        flow = rng.normal(0.0, 0.5, (b, cells, cells, 2)).astype(np.float32)
        confidence = rng.uniform(size=(b, cells, cells)).astype(np.float32)
        return {"flow": flow, "confidence": confidence}

    unlabeled = sources.open_split(config.dataset, config.dataset.unlabeled_split)
    pseudo, stats = annotate.annotate_pairs(
        teacher, None, unlabeled, config.dataset, config.selftrain, batch_size=4
    )
    rows = _rows_by_tau(stats["tau_sweep"])
    for key in ("pairs", "points", "points_with_truth", "precision@0.05", "precision@0.1"):
        assert rows[0.5][key] == stats[key], key
    assert rows[0.5]["points"] == pseudo["mask"].sum() > 0
    points = [rows[tau]["points"] for tau in annotate.SWEEP_TAUS]
    assert points == sorted(points, reverse=True) and points[0] > points[-1]
    assert rows[0.1]["precision@0.1"] is not None  # the synthetic pairs know their truth


def test_saved_sweep_is_a_table_and_a_plot(by_hand, tmp_path):
    annotate.save_tau_sweep(tmp_path, by_hand)
    assert json.loads((tmp_path / annotate.TAU_SWEEP_FILE).read_text()) == by_hand
    with Image.open(tmp_path / annotate.TAU_SWEEP_PLOT) as plot:
        assert plot.format == "PNG" and plot.width > 100 and plot.height > 100


def test_consistency_check_keeps_only_cells_whose_round_trip_returns(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.update(tau=0.5, query="all", consistency_radius=1.0)
    cells = config.model.feature_size
    config.selftrain.max_pseudo_points = min(cells * cells, config.dataset.max_keypoints)
    # Forward flow zero; backward flow zero on a checkerboard's even cells, 3 cells elsewhere:
    # only the even cells come back within the radius.
    j, i = np.mgrid[:cells, :cells]
    even = (i + j) % 2 == 0

    def teacher(variables, batch):
        b = len(batch["target_image"])
        backward = np.zeros((b, cells, cells, 2), np.float32)
        backward[:, ~even, 0] = 3.0
        return {
            "flow": np.zeros((b, cells, cells, 2), np.float32),
            "confidence": np.full((b, cells, cells), 0.9, np.float32),
            "backward_flow": backward,
        }

    unlabeled = sources.open_split(config.dataset, config.dataset.unlabeled_split)
    pseudo, stats = annotate.annotate_pairs(
        teacher, None, unlabeled, config.dataset, config.selftrain, batch_size=4
    )
    pairs = len(unlabeled)
    expected_points = min(int(even.sum()), config.selftrain.max_pseudo_points)
    assert stats["pairs"] == pairs and stats["points"] == pairs * expected_points
    assert stats["cells_failing_round_trip"] == pairs * int((~even).sum())
    assert stats["consistency_radius"] == 1.0


def test_the_true_keypoints_query_asks_the_teacher_at_each_pairs_own_target_keypoints(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.update(tau=0.5, query="true_keypoints")
    cells, size = config.model.feature_size, config.dataset.image_size
    # Zero flow: each target keypoint maps onto the same canvas point in the source. The
    # confidence clears tau on the left half of the grid only.
    confidence = np.zeros((cells, cells), np.float32)
    confidence[:, : cells // 2] = 0.9

    def teacher(variables, batch):
        b = len(batch["target_image"])
        return {
            "flow": np.zeros((b, cells, cells, 2), np.float32),
            "confidence": np.broadcast_to(confidence, (b, cells, cells)),
        }

    unlabeled = sources.open_split(config.dataset, config.dataset.unlabeled_split)
    pseudo, stats = annotate.annotate_pairs(
        teacher, None, unlabeled, config.dataset, config.selftrain, batch_size=4
    )
    assert stats["points"] > 0
    for row, index in enumerate(pseudo["index"]):
        example = unlabeled[int(index)]
        h, w = example["target_image"].shape[:2]
        scale = np.array([w, h], np.float32) / size
        canvas = example["target_keypoints"] / scale  # the keypoints in the canvas
        kept_canvas = pseudo["target_keypoints"][row][pseudo["mask"][row]] / scale
        # Exactly the keypoints on the confident (left) half, each one once.
        left = canvas[canvas[:, 0] + 0.5 < size / 2]
        np.testing.assert_allclose(np.sort(kept_canvas, 0), np.sort(left, 0), atol=1e-3)
        # Zero flow: the source point is the target point, in the source image's own pixels.
        source_scale = np.array(example["source_image"].shape[1::-1], np.float32) / size
        np.testing.assert_allclose(
            pseudo["source_keypoints"][row][pseudo["mask"][row]] / source_scale,
            kept_canvas,
            atol=1e-3,
        )
