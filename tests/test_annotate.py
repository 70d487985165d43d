"""The machine annotator's host-side rules: cell geometry, selection, truth, storage."""

import jax
import numpy as np
import pytest
from test_config import load

from matchme_jax import annotate, errors
from matchme_jax.models import build_model


def test_cell_centres_and_flow_in_canvas_pixels():
    flow = np.zeros((1, 2, 2, 2), np.float32)
    flow[0, 1, 0] = [1.0, -0.5]  # target cell (x=0, y=1) points one cell right, half a cell up
    target, source = annotate.cell_correspondences(flow, image_size=32)
    # Cells are 16 px; the centre of cell i sits at 16 i + 7.5 (align_corners=False).
    np.testing.assert_allclose(target[0], [[7.5, 7.5], [23.5, 7.5], [7.5, 23.5], [23.5, 23.5]])
    np.testing.assert_allclose(source[0, 2], [7.5 + 16, 23.5 - 8])
    np.testing.assert_allclose(source[0, [0, 1, 3]], target[0, [0, 1, 3]])


def _select(confidence, target, source, box, *, tau=0.5, query="bbox", max_points=10):
    """The annotation pass's selection: candidate cells, then the most confident above tau."""
    candidates = annotate.candidate_cells(target, source, box, query=query, image_size=32)
    return annotate.keep_most_confident(confidence, candidates, tau=tau, max_points=max_points)


def test_selection_by_tau_box_canvas_and_count():
    target = np.array([[[5, 5], [20, 20], [25, 25], [10, 10]]], np.float32)
    source = np.array([[[5, 5], [20, 20], [40, 5], [10, 10]]], np.float32)  # 3rd leaves the canvas
    confidence = np.array([[0.9, 0.7, 0.95, 0.49]], np.float32)
    box = np.array([[0, 0, 22, 22]], np.float32)
    np.testing.assert_array_equal(
        _select(confidence, target, source, box), [[True, True, False, False]]
    )
    # tau is inclusive, and query="all" ignores the box.
    everything = _select(confidence, target, source, box, tau=0.49, query="all")
    np.testing.assert_array_equal(everything, [[True, True, False, True]])
    # max_points keeps the most confident.
    np.testing.assert_array_equal(
        _select(confidence, target, source, box, max_points=1), [[True, False, False, False]]
    )
    with pytest.raises(ValueError, match="selftrain.query"):
        _select(confidence, target, source, box, query="centre")


def test_max_points_ranks_each_pair_on_its_own_and_ties_by_cell_order():
    confidence = np.array([[0.6, 0.9, 0.6, 0.8], [0.7, 0.7, 0.7, 0.2]], np.float32)
    candidates = np.array([[True, False, True, True], [True, True, True, True]])
    keep = annotate.keep_most_confident(confidence, candidates, tau=0.5, max_points=2)
    # Pair 0: cell 1 is no candidate; 0.8, then the first of the tied 0.6. Pair 1: the first two.
    np.testing.assert_array_equal(keep, [[True, False, False, True], [True, True, False, False]])


def test_truth_distance_reads_the_grid_point_the_target_point_falls_in():
    dense = np.zeros((4, 4, 2), np.float32)
    dense_mask = np.zeros((4, 4), bool)
    dense[1, 2] = [30.0, 40.0]
    dense_mask[1, 2] = True
    # A 40x80 (h x w) target: grid point [j=1, i=2] covers x in [40, 60), y in [10, 20).
    target = np.array([[45.0, 15.0], [5.0, 5.0]], np.float32)
    source = np.array([[33.0, 44.0], [0.0, 0.0]], np.float32)
    dist = annotate.truth_distance(target, source, np.array([40, 80]), dense, dense_mask)
    assert dist[0] == pytest.approx(5.0)
    assert np.isnan(dist[1])  # no truth there


def test_saved_pseudo_labels_round_trip_and_damage_is_reported(tmp_path):
    pseudo = {
        "index": np.array([3, 7]),
        "source_keypoints": np.ones((2, 4, 2), np.float32),
        "target_keypoints": np.zeros((2, 4, 2), np.float32),
        "confidence": np.full((2, 4), 0.8, np.float32),
        "mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool),
    }
    annotate.save(tmp_path, pseudo, {"pairs": 2})
    loaded, stats = annotate.load(tmp_path)
    assert stats == {"pairs": 2}
    for key, value in pseudo.items():
        np.testing.assert_array_equal(loaded[key], value)
    path = tmp_path / annotate.PSEUDO_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(errors.UserError, match="missing or damaged"):
        annotate.load(tmp_path)


def test_round_trip_error_by_hand():
    # 2x2 cells of 16 px. Forward: every target cell points one cell right (into the canvas for
    # the left column). A backward flow of one cell left brings every point home.
    forward = np.zeros((1, 2, 2, 2), np.float32)
    forward[..., 0] = 1.0
    target, source = annotate.cell_correspondences(forward, image_size=32)
    home = np.zeros_like(forward)
    home[..., 0] = -1.0
    np.testing.assert_allclose(annotate.round_trip_error(target, source, home, 32), 0.0)
    # A zero backward flow leaves every point one cell away from its start.
    zero = np.zeros_like(forward)
    np.testing.assert_allclose(annotate.round_trip_error(target, source, zero, 32), 1.0)
    # Read between cell centres: halfway between a backward flow of 0 and of -2 cells (in y).
    halfway = np.zeros_like(forward)
    halfway[0, :, 1, 1] = -2.0  # right column
    target = np.array([[[7.5, 7.5]]], np.float32)
    source = np.array([[[15.5, 7.5]]], np.float32)  # halfway between the two columns' centres
    # Backward flow there is (0, -1) cells: returns to (15.5, -8.5); start was (7.5, 7.5).
    expected = np.hypot(8.0, 16.0) / 16.0
    np.testing.assert_allclose(annotate.round_trip_error(target, source, halfway, 32), [[expected]])
    # Beyond the outer cell centres, even off the canvas, the border cells' flow applies.
    border = np.zeros_like(forward)
    border[0, :, 0] = [1.0, 0.0]  # left column: one cell right
    border[0, :, 1] = [0.0, -2.0]  # right column: two cells up
    source = np.array([[[-20.0, 7.5], [31.0, 40.0]]], np.float32)
    target = np.array([[[-4.0, 7.5], [31.0, 8.0]]], np.float32)
    np.testing.assert_allclose(annotate.round_trip_error(target, source, border, 32), 0.0)


def test_consistency_radius_removes_cells_whose_round_trip_fails():
    target = np.array([[[7.5, 7.5], [23.5, 7.5]]], np.float32)
    source = target.copy()
    box = np.array([[0, 0, 31, 31]], np.float32)
    round_trip = np.array([[0.4, 1.5]], np.float32)
    args = dict(query="bbox", image_size=32, round_trip=round_trip)
    np.testing.assert_array_equal(
        annotate.candidate_cells(target, source, box, consistency_radius=1.0, **args),
        [[True, False]],
    )
    np.testing.assert_array_equal(
        annotate.candidate_cells(target, source, box, consistency_radius=None, **args),
        [[True, True]],
    )


def test_annotate_step_with_consistency_also_annotates_the_swapped_pair():
    config = load("synthetic.py:tiny")
    model = build_model(config.model)
    size = config.dataset.image_size
    rng = np.random.default_rng(0)
    batch = {
        side: rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        for side in ("source_image", "target_image")
    }
    images = np.zeros((1, size, size, 3), np.float32)
    variables = model.init(jax.random.key(0), source=images, target=images)
    both = annotate.make_annotate_step(model, consistency=True)(variables, batch)
    swapped = {"source_image": batch["target_image"], "target_image": batch["source_image"]}
    forward_only = annotate.make_annotate_step(model)(variables, swapped)
    assert set(forward_only) == {"flow", "confidence"}
    np.testing.assert_allclose(both["backward_flow"], forward_only["flow"], atol=1e-5)


def test_the_oracle_annotator_gives_each_pairs_own_keypoints():
    pairs = [
        {
            "source_keypoints": np.arange(6, dtype=np.float32).reshape(3, 2),
            "target_keypoints": 10 + np.arange(6, dtype=np.float32).reshape(3, 2),
        },
        {"source_keypoints": np.zeros((0, 2), np.float32), "target_keypoints": np.zeros((0, 2))},
        {"source_keypoints": np.ones((5, 2), np.float32), "target_keypoints": np.ones((5, 2))},
    ]
    pseudo, stats = annotate.true_labels(pairs, max_points=4)
    np.testing.assert_array_equal(pseudo["index"], [0, 2])  # a pair without keypoints is dropped
    np.testing.assert_array_equal(pseudo["mask"], [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(pseudo["source_keypoints"][0, :3], pairs[0]["source_keypoints"])
    np.testing.assert_array_equal(pseudo["target_keypoints"][0, :3], pairs[0]["target_keypoints"])
    assert (stats["annotator"], stats["pairs"], stats["points"]) == ("oracle", 2, 7)
    with pytest.raises(ValueError, match="needs unlabeled pairs with annotated keypoints"):
        annotate.true_labels([{"source_image": np.zeros((4, 4, 3))}], max_points=4)


def test_the_dense_oracle_draws_visible_points_of_the_dense_truth():
    g = 4
    mask = np.zeros((g, g), bool)
    mask[1, 2] = mask[3, 0] = mask[2, 2] = True
    # The true source point of target grid point [j, i]: (100 + i, 200 + j).
    j, i = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    dense = np.stack([100.0 + i, 200.0 + j], -1).astype(np.float32)
    pair = {
        "target_image": np.zeros((40, 80, 3), np.uint8),  # H 40, W 80: cells 20 x 10 px
        "dense_correspondence": dense,
        "dense_correspondence_mask": mask,
    }
    empty = {**pair, "dense_correspondence_mask": np.zeros((g, g), bool)}
    pseudo, stats = annotate.dense_true_labels([pair, empty, pair], max_points=2)
    np.testing.assert_array_equal(pseudo["index"], [0, 2])  # no visible point: dropped
    np.testing.assert_array_equal(pseudo["mask"], [[1, 1], [1, 1]])
    for row in range(2):
        for target, source in zip(
            pseudo["target_keypoints"][row], pseudo["source_keypoints"][row], strict=True
        ):
            gi, gj = int(target[0] // 20), int(target[1] // 10)  # the grid point drawn
            assert mask[gj, gi]
            np.testing.assert_allclose(target, [(gi + 0.5) * 20, (gj + 0.5) * 10])
            np.testing.assert_allclose(source, [100 + gi, 200 + gj])
    assert (stats["annotator"], stats["pairs"], stats["points"]) == ("oracle_dense", 2, 4)
    again, _ = annotate.dense_true_labels([pair, empty, pair], max_points=2)
    np.testing.assert_array_equal(again["target_keypoints"], pseudo["target_keypoints"])
    with pytest.raises(ValueError, match="needs unlabeled pairs with the generator's dense truth"):
        annotate.dense_true_labels([{"source_image": np.zeros((4, 4, 3))}], max_points=2)
