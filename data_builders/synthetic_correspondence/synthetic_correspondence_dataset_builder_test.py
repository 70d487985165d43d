"""Tests of the synthetic correspondence builder ("tiny" config) and its renderer."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pytest

from data_builders.synthetic_correspondence import SyntheticCorrespondence, generator
from data_builders.synthetic_correspondence import (
    synthetic_correspondence_dataset_builder as builder_module,
)
from data_builders.synthetic_correspondence.synthetic_correspondence_dataset_builder import (
    seeded_config_name,
)

TINY_SIZES = {"train": 10, "unlabeled": 20, "validation": 10, "test": 10}
TINY_IMAGE_SIZE = (48, 64)
DEFAULT_IMAGE_SIZE = (112, 160)


def _build(data_dir: str) -> SyntheticCorrespondence:
    builder = SyntheticCorrespondence(config="tiny", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder


def _stored(builder: SyntheticCorrespondence) -> dict[str, list[dict[str, Any]]]:
    """Every example of every split in the order of its files (which follows the keys)."""
    sources = {split: builder.as_data_source(split) for split in TINY_SIZES}
    return {split: [source[i] for i in range(len(source))] for split, source in sources.items()}


def _read_all(builder: SyntheticCorrespondence) -> dict[str, list[dict[str, Any]]]:
    """Every example of every split, sorted by pair id."""
    return {
        split: sorted(examples, key=lambda example: example["pair_id"])
        for split, examples in _stored(builder).items()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return _read_all(_build(str(tmp_path_factory.mktemp("tiny"))))


def _examples(tiny: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [example for examples in tiny.values() for example in examples]


def _assert_records_equal(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_split_sizes_are_exact(tiny):
    assert {split: len(examples) for split, examples in tiny.items()} == TINY_SIZES


def test_worker_processes_write_the_same_files(tmp_path, monkeypatch):
    here = _stored(_build(str(tmp_path / "here")))
    # Default-sized splits render in one process per core; here every tiny split does, in two.
    monkeypatch.setattr(builder_module, "_render_workers", lambda size: 2)
    in_workers = _stored(_build(str(tmp_path / "workers")))
    for split, examples in here.items():
        assert len(in_workers[split]) == len(examples) == TINY_SIZES[split]
        for first, second in zip(examples, in_workers[split], strict=True):
            _assert_records_equal(first, second)


def test_two_builds_are_identical(tiny, tmp_path):
    again = _read_all(_build(str(tmp_path)))
    for split, examples in tiny.items():
        assert len(again[split]) == len(examples)
        for first, second in zip(examples, again[split], strict=True):
            _assert_records_equal(first, second)


def test_generator_is_deterministic():
    first = generator.generate_pair(7, "test", 3, DEFAULT_IMAGE_SIZE)
    second = generator.generate_pair(7, "test", 3, DEFAULT_IMAGE_SIZE)
    _assert_records_equal(first, second)


def test_different_seeds_give_different_data():
    first = generator.generate_pair(0, "train", 0, TINY_IMAGE_SIZE)
    second = generator.generate_pair(1, "train", 0, TINY_IMAGE_SIZE)
    assert first["category"] == second["category"]
    assert not np.array_equal(first["source_image"], second["source_image"])
    assert not np.array_equal(first["dense_correspondence"], second["dense_correspondence"])


def test_seeded_configs_are_the_named_ones_with_another_seed():
    tiny = SyntheticCorrespondence.get_builder_config("tiny")
    seeded = SyntheticCorrespondence.get_builder_config(seeded_config_name("tiny", 3))
    assert seeded.name == "tiny_seed3" and seeded.seed == 3 and tiny.seed == 0
    assert seeded.split_sizes() == tiny.split_sizes() == TINY_SIZES
    assert (seeded.min_image_size, seeded.max_image_size) == TINY_IMAGE_SIZE
    # The same object every time: TFDS refuses a config equal to, but not, the one it looks up.
    assert SyntheticCorrespondence.get_builder_config("tiny_seed3") is seeded
    assert seeded_config_name("default", 0) == "default"  # seed 0: the named config itself
    for name in ("tiny_seed0", "tiny_seed03", "huge_seed1", "tiny_seed3_seed4"):
        assert SyntheticCorrespondence.get_builder_config(name) is None, name
    with pytest.raises(ValueError, match="0 or more"):
        seeded_config_name("tiny", -1)


def test_no_image_is_shared_between_pairs_or_splits(tiny):
    digests = [
        hashlib.sha256(example[key].tobytes()).hexdigest()
        for example in _examples(tiny)
        for key in ("source_image", "target_image")
    ]
    assert len(set(digests)) == len(digests)


def test_images_are_rgb_within_the_size_range(tiny):
    low, high = TINY_IMAGE_SIZE
    for example in _examples(tiny):
        for key in ("source_image", "target_image"):
            image = example[key]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert low <= image.shape[0] <= high and low <= image.shape[1] <= high


def test_keypoints_lie_inside_their_images_and_boxes(tiny):
    for example in _examples(tiny):
        for side in ("source", "target"):
            height, width = example[f"{side}_image"].shape[:2]
            points = example[f"{side}_keypoints"]
            x1, y1, x2, y2 = example[f"{side}_bbox"]
            assert points.dtype == np.float32 and points.shape[1] == 2
            assert np.all((points >= 0.0) & (points <= [width - 1.0, height - 1.0]))
            assert 0.0 <= x1 < x2 <= width - 1.0 and 0.0 <= y1 < y2 <= height - 1.0
            assert np.all((points >= [x1, y1]) & (points <= [x2, y2]))


def test_pairs_have_matching_keypoint_counts_and_valid_labels(tiny):
    for example in _examples(tiny):
        count = len(example["source_keypoints"])
        assert count == len(example["target_keypoints"]) >= generator.MIN_COMMON_KEYPOINTS
        category = example["category"]
        assert 0 <= category < len(generator.CATEGORIES)
        assert count <= len(generator.CATEGORIES[category].keypoints)
        assert not example["flip"]
        assert example["viewpoint_variation"] in (0, 1, 2)
        assert example["scale_variation"] in (0, 1, 2)
        assert example["truncation"] >= 0 and example["occlusion"] >= 0


def test_every_split_covers_every_category(tiny):
    for split in ("train", "unlabeled", "validation", "test"):
        categories = {example["category"] for example in tiny[split]}
        assert categories == set(range(len(generator.CATEGORIES))), split


def test_dense_correspondence_maps_target_keypoints_onto_source_keypoints():
    for index in range(10):
        source, target = generator.sample_instances(3, "validation", index, DEFAULT_IMAGE_SIZE)
        common = source.visible & target.visible
        mapped, on_target, visible = generator.correspond(
            source, target, target.keypoints[common].astype(np.float64)
        )
        assert np.all(on_target) and np.all(visible)
        np.testing.assert_allclose(mapped, source.keypoints[common], atol=1e-3)


def test_stored_dense_grid_agrees_with_keypoints(tiny):
    """At the grid cell nearest to each target keypoint the stored flow lands near the source one.

    A cell centre is at most half a cell (about 1 px here) from the keypoint, so the mapped point
    is within a few px unless the cell centre falls on a neighbouring part.
    """
    errors = []
    for example in _examples(tiny):
        height, width = example["target_image"].shape[:2]
        grid = generator.GRID_SIZE
        for source_point, (x, y) in zip(
            example["source_keypoints"], example["target_keypoints"], strict=True
        ):
            i = min(int(x * grid / width), grid - 1)
            j = min(int(y * grid / height), grid - 1)
            if example["dense_correspondence_mask"][j, i]:
                errors.append(np.linalg.norm(example["dense_correspondence"][j, i] - source_point))
    errors = np.asarray(errors)
    assert len(errors) >= 100
    assert np.median(errors) < 1.5
    assert np.mean(errors < 3.0) >= 0.9


def test_dense_mask_marks_only_visible_object_points(tiny):
    for example in _examples(tiny):
        mask = example["dense_correspondence_mask"]
        flow = example["dense_correspondence"]
        height, width = example["source_image"].shape[:2]
        assert mask.dtype == np.bool_ and mask.shape == (generator.GRID_SIZE,) * 2
        assert mask.any()
        inside = flow[mask]
        assert np.all((inside >= 0.0) & (inside <= [width - 1.0, height - 1.0]))


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="Unknown split 'training'"):
        generator.generate_pair(0, "training", 0, TINY_IMAGE_SIZE)


def test_correspond_rejects_instances_of_different_categories():
    source, _ = generator.sample_instances(0, "train", 0, TINY_IMAGE_SIZE)
    _, target = generator.sample_instances(0, "train", 1, TINY_IMAGE_SIZE)
    with pytest.raises(ValueError, match="same category"):
        generator.correspond(source, target, np.zeros((1, 2)))


def test_default_size_rendering_speed(record_property):
    """Measures (does not assert) the render time of default-size pairs; checks their sizes."""
    start = time.perf_counter()
    records = [generator.generate_pair(0, "unlabeled", i, DEFAULT_IMAGE_SIZE) for i in range(10)]
    seconds = (time.perf_counter() - start) / len(records)
    record_property("seconds_per_default_pair", seconds)
    print(f"default-size pair rendered in {1000 * seconds:.1f} ms")
    low, high = DEFAULT_IMAGE_SIZE
    for record in records:
        for key in ("source_image", "target_image"):
            assert low <= min(record[key].shape[:2]) and max(record[key].shape[:2]) <= high
