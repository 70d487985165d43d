"""The machine annotator's host-side rules: cell geometry, selection, truth, storage."""

import numpy as np
import pytest

from matchme_jax import annotate


def test_cell_centres_and_flow_in_canvas_pixels():
    flow = np.zeros((1, 2, 2, 2), np.float32)
    flow[0, 1, 0] = [1.0, -0.5]  # target cell (x=0, y=1) points one cell right, half a cell up
    target, source = annotate.cell_correspondences(flow, image_size=32)
    # Cells are 16 px; the centre of cell i sits at 16 i + 7.5 (align_corners=False).
    np.testing.assert_allclose(target[0], [[7.5, 7.5], [23.5, 7.5], [7.5, 23.5], [23.5, 23.5]])
    np.testing.assert_allclose(source[0, 2], [7.5 + 16, 23.5 - 8])
    np.testing.assert_allclose(source[0, [0, 1, 3]], target[0, [0, 1, 3]])


def _select(confidence, target, source, box, **kw):
    args = dict(tau=0.5, query="bbox", max_points=10, image_size=32)
    args.update(kw)
    return annotate.select_points(confidence, target, source, box, **args)


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
    with pytest.raises(RuntimeError, match="missing or damaged"):
        annotate.load(tmp_path)
