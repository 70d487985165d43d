"""Builds PF-PASCAL from dummy_data (extracted folder and archive) and checks every value."""

import csv
import pathlib
import shutil
import tarfile

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from data_builders import common, testing
from data_builders.pf_pascal import pf_pascal_dataset_builder as pf_pascal

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
ROOT = DUMMY / "PF-PASCAL"


def _build(manual_dir: pathlib.Path, data_dir: pathlib.Path) -> pf_pascal.PfPascal:
    builder = pf_pascal.PfPascal(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return _build(DUMMY, tmp_path_factory.mktemp("pf_pascal_data"))


def test_registered_name():
    import data_builders

    data_builders.register()

    assert tfds.builder_cls("pf_pascal") is pf_pascal.PfPascal


def test_split_sizes(builder):
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"train": 3, "validation": 2, "test": 2}


def test_no_image_pair_is_in_two_splits(builder):
    testing.assert_no_image_pair_in_two_splits(builder)


def test_nan_rows_are_dropped_and_flip_is_kept(builder):
    examples = testing.examples(builder, "train")
    # Source row 1 and target row 2 are NaN: rows 0 and 3 remain, in annotation order.
    for pair_id, flip in (("trn-00000", False), ("trn-00001", True)):
        example = examples[pair_id]
        np.testing.assert_array_equal(example["source_keypoints"], [[2, 3], [11, 9]])
        np.testing.assert_array_equal(example["target_keypoints"], [[3, 3], [12, 9]])
        np.testing.assert_array_equal(example["source_bbox"], [1, 2, 20, 18])
        np.testing.assert_array_equal(example["target_bbox"], [2, 2, 21, 18])
        assert pf_pascal.CATEGORIES[example["category"]] == "aeroplane"
        assert example["source_image_name"] == b"2007_000032.jpg"
        assert example["target_image_name"] == b"2008_000033.jpg"
        assert example["source_image"].shape == (22, 30, 3)
        assert bool(example["flip"]) is flip
        assert example["occlusion"] == 0
    assert pf_pascal.CATEGORIES[examples["trn-00002"]["category"]] == "cat"


@pytest.mark.parametrize("split,name", list(pf_pascal.SPLITS.items()))
def test_every_pair_matches_its_csv_and_mat_files(builder, split, name):
    examples = testing.examples(builder, split)
    with open(ROOT / f"{name}_pairs.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(examples) == [f"{name}-{i:05d}" for i in range(len(rows))]
    for index, row in enumerate(rows):
        example = examples[f"{name}-{index:05d}"]
        category = pf_pascal.CATEGORIES[int(row[2]) - 1]
        assert pf_pascal.CATEGORIES[example["category"]] == category
        mats = [
            scipy.io.loadmat(ROOT / "Annotations" / category / (pathlib.Path(p).stem + ".mat"))
            for p in row[:2]
        ]
        keep = ~(np.isnan(mats[0]["kps"]).any(1) | np.isnan(mats[1]["kps"]).any(1))
        np.testing.assert_array_equal(example["source_keypoints"], mats[0]["kps"][keep])
        np.testing.assert_array_equal(example["target_keypoints"], mats[1]["kps"][keep])
        np.testing.assert_array_equal(example["source_bbox"], mats[0]["bbox"][0])
        np.testing.assert_array_equal(example["target_bbox"], mats[1]["bbox"][0])
        assert not np.isnan(example["source_keypoints"]).any()
        assert bool(example["flip"]) == (len(row) > 3 and row[3] == "1")


def test_training_images_are_distinct(builder):
    images = common.training_images(builder)
    names = sorted((image.category, image.image_name) for image in images)
    assert names == [
        ("aeroplane", "2007_000032.jpg"),
        ("aeroplane", "2008_000033.jpg"),
        ("cat", "2008_000060.jpg"),
        ("cat", "2010_000468.jpg"),
    ]


def test_archive_in_manual_dir_builds(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "PF-PASCAL.tar.gz", "w:gz") as archive:
        archive.add(ROOT, arcname="PF-PASCAL")
    builder = _build(manual, tmp_path / "data")
    assert builder.info.splits["train"].num_examples == 3


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _remove(path: pathlib.Path) -> None:
    path.unlink()


def _garble(path: pathlib.Path) -> None:
    path.write_bytes(b"this is not a MATLAB file\n" * 8)


def _bad_class(path: pathlib.Path) -> None:
    path.write_text(path.read_text().replace(",8\n", ",21\n"))


def _short_row(path: pathlib.Path) -> None:
    path.write_text(path.read_text() + "PF-dataset-PASCAL/JPEGImages/2007_000032.jpg\n")


@pytest.mark.parametrize(
    "relative,breaker",
    [
        ("val_pairs.csv", _remove),
        ("val_pairs.csv", _bad_class),
        ("test_pairs.csv", _short_row),
        ("Annotations/cat/2010_000468.mat", _remove),
        ("Annotations/cat/2010_000468.mat", _garble),
        ("JPEGImages/2011_000234.jpg", _remove),
        ("JPEGImages/2011_000234.jpg", _truncate),
    ],
    ids=[
        "missing-csv",
        "bad-class",
        "short-row",
        "missing-mat",
        "bad-mat",
        "missing-jpg",
        "truncated-jpg",
    ],
)
def test_malformed_file_is_named_and_nothing_looks_prepared(tmp_path, relative, breaker):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    breaker(manual / "PF-PASCAL" / relative)
    builder = pf_pascal.PfPascal(data_dir=str(tmp_path / "data"), file_format="array_record")
    with pytest.raises(common.DatasetFileError, match=pathlib.Path(relative).name):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    assert not builder.is_prepared()


def test_mat_without_kps_is_named(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    path = manual / "PF-PASCAL" / "Annotations" / "bottle" / "2008_000144.mat"
    scipy.io.savemat(path, {"bbox": np.array([[1.0, 2.0, 3.0, 4.0]])})
    with pytest.raises(common.DatasetFileError, match="2008_000144.mat.*kps"):
        _build(manual, tmp_path / "data")
