"""Match pictures (sizes, colours at known pixels, masking) and the per-generation plot."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from matchme_jax import visualize
from matchme_jax.data import pipeline
from matchme_jax.visualize import CORRECT_COLOUR, WRONG_COLOUR


def _black(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def _one_match(correct: bool, scale: int = 1) -> np.ndarray:
    # Target keypoint (40, 32) sits at x = 64 + 40 in the picture; its prediction at (10, 32):
    # a horizontal line along y = 32 from x = 10 to x = 104.
    return visualize.draw_matches(
        _black(64, 64),
        _black(64, 64),
        predicted_source_kps=np.array([[10.0, 32.0]]),
        true_source_kps=np.array([[10.0, 32.0]]),
        target_kps=np.array([[40.0, 32.0]]),
        mask=np.array([True]),
        correct=np.array([correct]),
        scale=scale,
    )


def test_picture_holds_both_images_side_by_side_at_scale():
    source = np.full((20, 30, 3), 10, np.uint8)
    target = np.full((24, 16, 3), 200, np.uint8)
    none = np.zeros(0, bool)
    picture = visualize.draw_matches(
        source, target, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), none, none, scale=3
    )
    assert picture.shape == (72, 138, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[:60, :90], 10)
    np.testing.assert_array_equal(picture[60:, :90], 0)  # below the shorter source
    np.testing.assert_array_equal(picture[:, 90:], 200)


@pytest.mark.parametrize("correct, colour", [(True, CORRECT_COLOUR), (False, WRONG_COLOUR)])
def test_match_is_drawn_in_its_colour_at_the_expected_pixels(correct, colour):
    picture = _one_match(correct)
    for x in (30, 60, 90):  # on the line, away from the dots
        assert tuple(picture[32, x]) == colour
    assert tuple(picture[32, 104]) == colour  # target dot
    assert tuple(picture[32, 10]) == colour  # predicted source dot
    assert tuple(picture[10, 60]) == (0, 0, 0)  # off the line
    other = WRONG_COLOUR if correct else CORRECT_COLOUR
    assert not np.all(picture == np.array(other, np.uint8), axis=-1).any()


def test_scale_moves_the_keypoints_with_the_pixels():
    picture = _one_match(True, scale=2)
    assert picture.shape == (128, 256, 3)
    assert tuple(picture[64, 120]) == CORRECT_COLOUR
    assert tuple(picture[64, 208]) == CORRECT_COLOUR  # target dot at (64 + 40) * 2
    assert tuple(picture[32, 120]) == (0, 0, 0)


def test_true_source_point_is_a_ring_joined_to_the_prediction():
    picture = visualize.draw_matches(
        _black(64, 64),
        _black(64, 64),
        predicted_source_kps=np.array([[10.0, 10.0]]),
        true_source_kps=np.array([[10.0, 50.0]]),
        target_kps=np.array([[10.0, 10.0]]),
        mask=np.array([True]),
        correct=np.array([False]),
        radius=3,
    )
    assert tuple(picture[30, 10]) == WRONG_COLOUR  # the error segment
    assert tuple(picture[50, 6]) == WRONG_COLOUR  # the ring (radius 4)
    assert tuple(picture[50, 8]) == (0, 0, 0)  # hollow (the segment ends at its centre)


def test_masked_out_points_are_not_drawn():
    source, target = _black(48, 48), _black(48, 48)
    predicted = np.array([[5.0, 5.0], [40.0, 40.0]])
    true = np.array([[6.0, 6.0], [20.0, 30.0]])
    target_kps = np.array([[30.0, 10.0], [10.0, 40.0]])
    both = np.array([True, True])
    first_only = visualize.draw_matches(
        source, target, predicted, true, target_kps, np.array([True, False]), both
    )
    alone = visualize.draw_matches(
        source, target, predicted[:1], true[:1], target_kps[:1], both[:1], both[:1]
    )
    np.testing.assert_array_equal(first_only, alone)
    nothing = visualize.draw_matches(source, target, predicted, true, target_kps, ~both, both)
    np.testing.assert_array_equal(nothing, 0)


def test_bad_inputs_name_the_argument():
    kps, flags = np.zeros((1, 2)), np.ones(1, bool)
    with pytest.raises(ValueError, match="source_image must be uint8"):
        visualize.draw_matches(np.zeros((8, 8, 3)), _black(8, 8), kps, kps, kps, flags, flags)
    with pytest.raises(ValueError, match="mask must be a bool"):
        visualize.draw_matches(_black(8, 8), _black(8, 8), kps, kps, kps, np.ones(1), flags)
    with pytest.raises(ValueError, match=r"target_kps must be \[K, 2\]"):
        visualize.draw_matches(_black(8, 8), _black(8, 8), kps, kps, np.zeros((2, 2)), flags, flags)
    with pytest.raises(ValueError, match="predicted_source_kps has non-finite"):
        nan = np.full((1, 2), np.nan)
        visualize.draw_matches(_black(8, 8), _black(8, 8), nan, kps, kps, flags, flags)


def _pair(category: int) -> dict:
    rng = np.random.default_rng(category)
    # Keypoint 0 has its true source point where a zero flow sends it (correct); keypoint 1's
    # true source point is 20 px away, beyond 0.1 * the 16-px box (wrong).
    target_kps = np.array([[4.0, 4.0], [12.0, 24.0]], np.float32)
    source_kps = np.array([[4.0, 4.0], [12.0, 4.0]], np.float32)
    return {
        "source_image": rng.integers(0, 255, (32, 32, 3), np.uint8),
        "target_image": rng.integers(0, 255, (32, 32, 3), np.uint8),
        "source_keypoints": source_kps,
        "target_keypoints": target_kps,
        "source_bbox": np.array([8.0, 8.0, 24.0, 24.0], np.float32),
        "target_bbox": np.array([8.0, 8.0, 24.0, 24.0], np.float32),
        "category": np.int32(category),
    }


def _configs():
    dataset_cfg = ml_collections.ConfigDict(dict(image_size=32, max_keypoints=4, num_workers=0))
    eval_cfg = ml_collections.ConfigDict(
        dict(batch_size=2, threshold="bbox", flow_to_keypoints="official")
    )
    return dataset_cfg, eval_cfg


def test_save_match_pictures_writes_the_first_pairs(tmp_path):
    dataset_cfg, eval_cfg = _configs()
    seen = []

    def zero_flow(variables, batch):
        seen.append({k: (v.dtype, v.shape) for k, v in batch.items()})
        return np.zeros((len(batch["valid"]), 4, 4, 2), np.float32)

    paths = visualize.save_match_pictures(
        zero_flow,
        None,
        [_pair(c) for c in range(3)],
        dataset_cfg,
        eval_cfg,
        tmp_path / "matches",
        num_pairs=3,
        category_names=["cat", "potted plant", "dog"],
        min_side=64,
    )
    assert [p.name for p in paths] == ["00000_cat.png", "00001_potted_plant.png", "00002_dog.png"]
    assert len(seen) == 2  # three pairs in batches of two, the last one padded
    assert set(seen[0]) == set(pipeline.DEVICE_KEYS)
    assert seen[0]["source_image"] == (np.dtype(np.uint8), (2, 32, 32, 3))
    for path in paths:
        picture = np.asarray(Image.open(path))
        assert picture.shape == (64, 128, 3)  # 32-px canvas upscaled by 2 for min_side=64
        assert tuple(picture[8, 8]) == CORRECT_COLOUR  # keypoint 0's predicted source dot
        assert tuple(picture[48, 24]) == WRONG_COLOUR  # keypoint 1's predicted source dot
        assert tuple(picture[48, 88]) == WRONG_COLOUR  # keypoint 1's target dot


def test_save_match_pictures_stops_at_num_pairs(tmp_path):
    dataset_cfg, eval_cfg = _configs()

    def zero_flow(variables, batch):
        return np.zeros((len(batch["valid"]), 4, 4, 2), np.float32)

    source = [_pair(c) for c in range(5)]
    paths = visualize.save_match_pictures(
        zero_flow, None, source, dataset_cfg, eval_cfg, tmp_path, num_pairs=3
    )
    assert [p.name for p in paths] == [f"0000{i}_category{i}.png" for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]
    eval_cfg.threshold = "kp"
    with pytest.raises(ValueError, match="config.eval.threshold='kp'"):
        visualize.save_match_pictures(zero_flow, None, source, dataset_cfg, eval_cfg, tmp_path)


def test_make_flow_fn_normalises_uint8_images_and_runs_in_inference_mode():
    class Recorder:
        def apply(self, variables, *, source, target, train):
            assert train is False
            return jnp.stack([source[..., 0], target[..., 1]], axis=-1)

    flow_fn = visualize.make_flow_fn(Recorder())
    white = np.full((1, 4, 4, 3), 255, np.uint8)
    black = np.zeros((1, 4, 4, 3), np.uint8)
    flow = np.asarray(flow_fn({}, {"source_image": white, "target_image": black}))
    assert flow.dtype == np.float32 and flow.shape == (1, 4, 4, 2)
    # ImageNet normalisation: white red is (1 - 0.485) / 0.229, black green (0 - 0.456) / 0.224.
    np.testing.assert_allclose(flow[0, 0, 0], [0.515 / 0.229, -0.456 / 0.224], rtol=1e-5)


def _results() -> dict:
    return {
        "generations": [
            {
                "generation": 0,
                "role": "teacher",
                "test": {"pck@0.05": 20.0, "pck@0.1": 40.0, "pck@0.15": 55.0},
                "pseudo_labels": None,
            },
            {
                "generation": 1,
                "role": "student",
                "test": {"pck@0.05": 25.0, "pck@0.1": 46.0, "pck@0.15": 60.0},
                "pseudo_labels": {"pairs": 8, "precision@0.1": 70.0},
            },
        ]
    }


def test_plot_generations_writes_a_png(tmp_path):
    path = visualize.plot_generations(_results(), tmp_path / "plots" / "pck.png")
    assert path == tmp_path / "plots" / "pck.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 400)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # lines, text, not a blank page


def test_plot_generations_refuses_results_without_generations(tmp_path):
    with pytest.raises(ValueError, match="results has no 'generations'"):
        visualize.plot_generations({"generations": []}, tmp_path / "pck.png")
    results = _results()
    del results["generations"][1]["test"]["pck@0.15"]
    with pytest.raises(ValueError, match=r"no test 'pck@0.15' for generations \[1\]"):
        visualize.plot_generations(results, tmp_path / "pck.png")
    assert not (tmp_path / "pck.png").exists()


def test_plot_tau_sweep_writes_a_png_with_gaps_where_truth_is_missing(tmp_path):
    rows = [
        {"tau": 0.1, "points": 40, "precision@0.1": 60.0},
        {"tau": 0.5, "points": 12, "precision@0.1": 80.0},
        {"tau": 0.9, "points": 0, "precision@0.1": None},  # nothing kept: no precision
    ]
    path = visualize.plot_tau_sweep(rows, tmp_path / "gen_1" / "tau_sweep.png")
    assert path == tmp_path / "gen_1" / "tau_sweep.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 350)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # lines, text, not a blank page
