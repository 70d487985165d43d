"""Unlabeled pairs from a folder of the user's own images (selftrain.unlabeled_pairs="folder")."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_config import load

from matchme_jax import annotate
from matchme_jax.data import folder_copy, sources


@pytest.fixture(scope="module")
def config_and_folder(tmp_path_factory, tfds_dir):
    """The tiny synthetic config, and a folder of 3 + 2 images under two of its categories."""
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    categories = sources.category_names(config.dataset)
    folder = tmp_path_factory.mktemp("my_photos")
    rng = np.random.default_rng(0)
    for category, count in ((categories[0], 3), (categories[1], 2)):
        (folder / category).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / category / f"{i}.png")
    config.selftrain.update(unlabeled_pairs="folder", unlabeled_folder=str(folder))
    config.selftrain.num_unlabeled_pairs = 6
    return config, folder, categories


def test_pairs_are_two_distinct_images_of_one_category(config_and_folder, tmp_path):
    config, folder, categories = config_and_folder
    pairs = sources.draw_unlabeled_pairs(config, 1, tmp_path)
    assert len(pairs) == 6
    images = {
        path.parent.name: [np.asarray(Image.open(p)) for p in sorted(path.parent.glob("*.png"))]
        for path in folder.glob("*/0.png")
    }
    for i in range(len(pairs)):
        example = pairs[i]
        category = categories[example["category"]]
        found = [
            [np.array_equal(example[side], image) for image in images[category]]
            for side in ("source_image", "target_image")
        ]
        assert sum(found[0]) == sum(found[1]) == 1 and found[0] != found[1]
        height, width = example["target_image"].shape[:2]
        np.testing.assert_array_equal(example["target_bbox"], [0, 0, width - 1, height - 1])
        assert example["source_keypoints"].shape == (0, 2)


def test_the_teacher_annotates_them(config_and_folder, tmp_path):
    config, _, _ = config_and_folder
    pairs = sources.draw_unlabeled_pairs(config, 1, tmp_path)
    cells = config.model.feature_size

    def teacher(variables, batch):
        b = len(batch["target_image"])
        return {
            "flow": np.zeros((b, cells, cells, 2), np.float32),
            "confidence": np.full((b, cells, cells), 0.9, np.float32),
        }

    pseudo, stats = annotate.annotate_pairs(
        teacher, None, pairs, config.dataset, config.selftrain, batch_size=4
    )
    assert stats["pairs_annotated"] == 6 and len(pseudo["index"]) == 6
    assert "precision@0.1" not in stats  # nobody knows the truth of the user's photos


def test_a_folder_named_after_no_category_is_refused(config_and_folder, tmp_path):
    config, folder, _ = config_and_folder
    config = config.copy_and_resolve_references()
    other = tmp_path / "photos"
    (other / "unicorn").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "unicorn" / name)
    config.selftrain.unlabeled_folder = str(other)
    with pytest.raises(ValueError, match=r"category folders \['unicorn'\]"):
        sources.draw_unlabeled_pairs(config, 1, tmp_path / "run")


def _photos(folder, categories: dict) -> None:
    """`folder/<category>/<i>.png`, `categories[category]` images each."""
    rng = np.random.default_rng(1)
    for category, count in categories.items():
        (folder / category).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (16, 20 + i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / category / f"{i}.png")


def test_the_copy_is_built_again_when_the_folder_changed(config_and_folder, tmp_path):
    """After the user fixes what the error named, the rerun reads the fixed folder."""
    config, _, categories = config_and_folder
    config = config.copy_and_resolve_references()
    photos = tmp_path / "photos"
    _photos(photos, {categories[0]: 3, "unicorn": 2})
    config.selftrain.unlabeled_folder = str(photos)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"category folders \['unicorn'\]"):
        sources.draw_unlabeled_pairs(config, 1, workdir)
    copy = workdir / "unlabeled_images"
    assert len(folder_copy.listing(photos)["files"]) == 5
    assert json.loads((copy / folder_copy.SOURCE_FILE).read_text()) == folder_copy.listing(photos)

    shutil.rmtree(photos / "unicorn")  # the fix
    pairs = sources.draw_unlabeled_pairs(config, 1, workdir)
    assert {pairs[i]["category"] for i in range(len(pairs))} == {0}
    assert len(sources.prepare_unlabeled_folder(photos, copy).as_data_source("train")) == 3

    _photos(photos, {categories[1]: 2})  # images added
    builder = sources.prepare_unlabeled_folder(photos, copy)
    assert len(builder.as_data_source("train")) == 5
    assert sorted(p.name for p in workdir.iterdir()) == ["unlabeled_images"]


def test_an_unchanged_folder_is_not_built_again(config_and_folder, tmp_path):
    _, folder, _ = config_and_folder
    copy = tmp_path / "unlabeled_images"
    sources.prepare_unlabeled_folder(folder, copy)
    record = copy / folder_copy.SOURCE_FILE
    built = record.stat().st_mtime_ns
    sources.prepare_unlabeled_folder(folder, copy)
    assert record.stat().st_mtime_ns == built


def test_a_failed_build_leaves_no_copy_that_looks_complete(config_and_folder, tmp_path):
    _, _, categories = config_and_folder
    photos = tmp_path / "photos"
    _photos(photos, {categories[0]: 2})
    copy = tmp_path / "run" / "unlabeled_images"
    sources.prepare_unlabeled_folder(photos, copy)
    (photos / categories[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png: not a complete image"):
        sources.prepare_unlabeled_folder(photos, copy)
    # The previous copy is left as it was, recorded as the copy of the folder before.
    assert sorted(p.name for p in copy.parent.iterdir()) == ["unlabeled_images"]
    assert json.loads((copy / folder_copy.SOURCE_FILE).read_text()) != folder_copy.listing(photos)
    (photos / categories[0] / "broken.png").unlink()
    assert len(sources.prepare_unlabeled_folder(photos, copy).as_data_source("train")) == 2
