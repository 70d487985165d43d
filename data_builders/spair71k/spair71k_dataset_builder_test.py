"""Builds SPair-71k from dummy_data (extracted folder and archive) and checks every value."""

import json
import pathlib
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders import common, testing
from data_builders.spair71k import spair71k_dataset_builder as spair

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
ROOT = DUMMY / "SPair-71k"


def _build(manual_dir: pathlib.Path, data_dir: pathlib.Path) -> spair.Spair71k:
    builder = spair.Spair71k(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return _build(DUMMY, tmp_path_factory.mktemp("spair_data"))


def test_registered_name():
    import data_builders

    data_builders.register()

    assert tfds.builder_cls("spair71k") is spair.Spair71k


def test_split_sizes(builder):
    # test.txt has no trailing newline: its last pair is kept (the official loader drops it).
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"train": 3, "validation": 2, "test": 2}


def test_no_image_pair_is_in_two_splits(builder):
    testing.assert_no_image_pair_in_two_splits(builder)


def test_first_pair_values(builder):
    example = testing.examples(builder, "train")["000001-2008_000585-2008_004704:aeroplane"]
    np.testing.assert_array_equal(example["source_keypoints"], [[2, 2], [4, 3], [6, 4]])
    np.testing.assert_array_equal(example["target_keypoints"], [[20, 4], [19, 5], [18, 6]])
    np.testing.assert_array_equal(example["source_bbox"], [1, 3, 24, 16])
    np.testing.assert_array_equal(example["target_bbox"], [3, 2, 24, 20])
    assert spair.CATEGORIES[example["category"]] == "aeroplane"
    assert example["source_image_name"] == b"2008_000585.jpg"
    assert example["target_image_name"] == b"2008_004704.jpg"
    assert example["source_image"].shape == (26, 40, 3)
    assert example["target_image"].shape == (24, 32, 3)
    assert example["source_keypoints"].dtype == np.float32
    assert not example["flip"]
    difficulty = [example[k] for k in ("viewpoint_variation", "scale_variation")]
    difficulty += [example[k] for k in ("truncation", "occlusion")]
    assert difficulty == [1, 2, 1, 2]


@pytest.mark.parametrize("split,folder", list(spair.SPLITS.items()))
def test_every_pair_matches_its_json(builder, split, folder):
    examples = testing.examples(builder, split)
    lines = (ROOT / "Layout" / "large" / f"{folder}.txt").read_text().split()
    assert sorted(examples) == sorted(lines)
    for pair_id, example in examples.items():
        ann = json.loads((ROOT / "PairAnnotation" / folder / f"{pair_id}.json").read_text())
        np.testing.assert_array_equal(example["source_keypoints"], ann["src_kps"])
        np.testing.assert_array_equal(example["target_keypoints"], ann["trg_kps"])
        np.testing.assert_array_equal(example["source_bbox"], ann["src_bndbox"])
        np.testing.assert_array_equal(example["target_bbox"], ann["trg_bndbox"])
        assert spair.CATEGORIES[example["category"]] == ann["category"]
        assert example["source_image_name"].decode() == ann["src_imname"]
        assert example["source_image"].shape == (ann["src_imsize"][1], ann["src_imsize"][0], 3)
        assert example["occlusion"] == ann["occlusion"]


def test_pixels_are_the_jpeg_pixels(builder):
    example = testing.examples(builder, "test")["000006-2007_000123-2007_000456:bottle"]
    from PIL import Image

    with Image.open(ROOT / "JPEGImages" / "bottle" / "2007_000123.jpg") as image:
        np.testing.assert_array_equal(example["source_image"], np.asarray(image))


def test_training_images_are_distinct_and_carry_boxes(builder):
    images = common.training_images(builder)
    names = sorted((image.category, image.image_name) for image in images)
    assert names == [
        ("aeroplane", "2008_000585.jpg"),
        ("aeroplane", "2008_004704.jpg"),
        ("aeroplane", "2009_000387.jpg"),
        ("cat", "2010_001069.jpg"),
        ("cat", "2011_000013.jpg"),
    ]
    by_name = {image.image_name: image for image in images}
    np.testing.assert_array_equal(by_name["2008_000585.jpg"].bbox, [1, 3, 24, 16])
    np.testing.assert_array_equal(by_name["2009_000387.jpg"].bbox, [1, 3, 22, 18])
    for image in images:
        example = builder.as_data_source("train")[image.pair_index]
        assert example[f"{image.side}_image_name"].decode() == image.image_name
    from_dir = common.training_images(builder.data_dir)
    assert [image.image_name for image in from_dir] == [image.image_name for image in images]


def test_archive_in_manual_dir_builds(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "SPair-71k.tar.gz", "w:gz") as archive:
        archive.add(ROOT, arcname="SPair-71k")
    builder = _build(manual, tmp_path / "data")
    assert builder.info.splits["train"].num_examples == 3
    assert len(builder.as_data_source("test")) == 2


def test_truncated_archive_is_named(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "SPair-71k.tar.gz", "w:gz") as archive:
        archive.add(ROOT, arcname="SPair-71k")
    _truncate(manual / "SPair-71k.tar.gz")
    builder = spair.Spair71k(data_dir=str(tmp_path / "data"), file_format="array_record")
    with pytest.raises(common.DatasetFileError, match=r"SPair-71k\.tar\.gz: cannot be extracted"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    assert not builder.is_prepared()


def test_empty_manual_dir_names_what_to_put_there(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "notes.txt").write_text("nothing here")
    with pytest.raises(common.DatasetFileError, match=r"SPair-71k\.tar\.gz"):
        _build(tmp_path / "manual", tmp_path / "data")


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _remove(path: pathlib.Path) -> None:
    path.unlink()


def _garble(path: pathlib.Path) -> None:
    path.write_text('{"src_kps": [[1, 2]')


def _bad_line(path: pathlib.Path) -> None:
    path.write_text("000001-2008_000585:aeroplane\n")


_TRAIN_JSON = "PairAnnotation/trn/000003-2010_001069-2011_000013:cat.json"


@pytest.mark.parametrize(
    "relative,breaker",
    [
        ("Layout/large/val.txt", _remove),
        ("Layout/large/test.txt", _bad_line),
        (_TRAIN_JSON, _remove),
        (_TRAIN_JSON, _garble),
        ("JPEGImages/cat/2011_000013.jpg", _remove),
        ("JPEGImages/cat/2011_000013.jpg", _truncate),
    ],
    ids=["missing-txt", "bad-txt", "missing-json", "bad-json", "missing-jpg", "truncated-jpg"],
)
def test_malformed_file_is_named_and_nothing_looks_prepared(tmp_path, relative, breaker):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    breaker(manual / "SPair-71k" / relative)
    builder = spair.Spair71k(data_dir=str(tmp_path / "data"), file_format="array_record")
    with pytest.raises(common.DatasetFileError, match=pathlib.Path(relative).name):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    assert not builder.is_prepared()


def test_json_with_mismatched_keypoints_is_named(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    path = manual / "SPair-71k" / _TRAIN_JSON
    annotation = json.loads(path.read_text())
    annotation["trg_kps"] = annotation["trg_kps"][:1]
    path.write_text(json.dumps(annotation))
    with pytest.raises(common.DatasetFileError, match="trg_kps"):
        _build(manual, tmp_path / "data")


def test_prepare_command_builds_from_the_shell(tmp_path):
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "data_builders.prepare", "--dataset=spair71k"]
    command += [f"--data_dir={data_dir}", f"--manual_dir={DUMMY}"]
    repo = pathlib.Path(__file__).parents[2]
    subprocess.run(command, cwd=repo, check=True, capture_output=True, timeout=120)
    source = tfds.data_source("spair71k", split="validation", data_dir=str(data_dir))
    assert len(source) == 2
