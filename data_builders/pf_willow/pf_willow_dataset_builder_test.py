"""Builds PF-WILLOW from dummy_data (extracted folder and archive) and checks every value."""

import csv
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_builders import common
from data_builders.pf_willow import pf_willow_dataset_builder as pf_willow

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
ROOT = DUMMY / "PF-WILLOW"


def _build(manual_dir: pathlib.Path, data_dir: pathlib.Path) -> pf_willow.PfWillow:
    builder = pf_willow.PfWillow(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return _build(DUMMY, tmp_path_factory.mktemp("pf_willow_data"))


def _examples(builder):
    source = builder.as_data_source("test")
    return {ex["pair_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def test_registered_name():
    import data_builders

    data_builders.register()

    assert tfds.builder_cls("pf_willow") is pf_willow.PfWillow


def test_test_split_only(builder):
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"test": 3}


def test_first_pair_values(builder):
    example = _examples(builder)["test-00000"]
    source_y = [2, 5, 8, 11, 3, 6, 9, 12, 4, 7]
    target_x = [3, 5, 7, 9, 11, 13, 15, 4, 6, 8]
    np.testing.assert_array_equal(
        example["source_keypoints"], np.stack([np.arange(10) + 1.5, source_y], 1)
    )
    np.testing.assert_array_equal(
        example["target_keypoints"], np.stack([target_x, np.arange(10) + 1.25], 1)
    )
    np.testing.assert_array_equal(example["source_bbox"], [1.5, 2, 10.5, 12])
    np.testing.assert_array_equal(example["target_bbox"], [3, 1.25, 15, 10.25])
    assert pf_willow.CATEGORIES[example["category"]] == "car(G)"
    assert example["source_image_name"] == b"car(G)/car_001a.png"
    assert example["target_image_name"] == b"car(G)/car_002a.png"
    assert example["source_image"].shape == (20, 28, 3)
    assert not example["flip"]


def test_every_pair_matches_its_csv_row(builder):
    examples = _examples(builder)
    with open(ROOT / "test_pairs.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(examples) == [f"test-{i:05d}" for i in range(len(rows))]
    for index, row in enumerate(rows):
        example = examples[f"test-{index:05d}"]
        values = np.asarray(row[2:], np.float32)
        np.testing.assert_array_equal(example["source_keypoints"][:, 0], values[0:10])
        np.testing.assert_array_equal(example["source_keypoints"][:, 1], values[10:20])
        np.testing.assert_array_equal(example["target_keypoints"][:, 0], values[20:30])
        np.testing.assert_array_equal(example["target_keypoints"][:, 1], values[30:40])
        subset = row[0].split("/")[1]
        assert pf_willow.CATEGORIES[example["category"]] == subset
        with Image.open(ROOT / row[1].split("/", 1)[1]) as image:
            expected = np.asarray(image.convert("RGB"))
        np.testing.assert_array_equal(example["target_image"], expected)


def test_grayscale_png_is_stored_as_rgb(builder):
    example = _examples(builder)["test-00001"]
    assert example["target_image_name"] == b"duck(S)/duck_004a.png"
    assert example["target_image"].shape == (23, 34, 3)


def test_training_images_of_the_test_split(builder):
    images = common.training_images(builder, split="test")
    assert len(images) == 6
    by_name = {image.image_name: image for image in images}
    assert by_name["duck(S)/duck_003a.png"].category == "duck(S)"


def test_zip_archive_in_manual_dir_builds(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "PF-WILLOW.zip", "w") as archive:
        for path in sorted(ROOT.rglob("*")):
            archive.write(path, pathlib.Path("PF-WILLOW") / path.relative_to(ROOT))
    builder = _build(manual, tmp_path / "data")
    assert builder.info.splits["test"].num_examples == 3


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _remove(path: pathlib.Path) -> None:
    path.unlink()


def _bad_number(path: pathlib.Path) -> None:
    path.write_text(path.read_text().replace(",1.5,", ",one,", 1))


def _bad_subset(path: pathlib.Path) -> None:
    path.write_text(path.read_text().replace("PF-dataset/car(G)/car_001a", "car_001a", 1))


def _short_row(path: pathlib.Path) -> None:
    path.write_text(path.read_text() + "PF-dataset/car(G)/car_001a.png,PF-dataset/car(G)/x.png\n")


@pytest.mark.parametrize(
    "relative,breaker",
    [
        ("test_pairs.csv", _remove),
        ("test_pairs.csv", _bad_number),
        ("test_pairs.csv", _bad_subset),
        ("test_pairs.csv", _short_row),
        ("winebottle(woC)/winebottle_006a.png", _remove),
        ("winebottle(woC)/winebottle_006a.png", _truncate),
    ],
    ids=["missing-csv", "bad-number", "bad-path", "short-row", "missing-png", "truncated-png"],
)
def test_malformed_file_is_named_and_nothing_looks_prepared(tmp_path, relative, breaker):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    breaker(manual / "PF-WILLOW" / relative)
    builder = pf_willow.PfWillow(data_dir=str(tmp_path / "data"), file_format="array_record")
    with pytest.raises(common.DatasetFileError) as error:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    assert pathlib.Path(relative).name in str(error.value)
    assert not builder.is_prepared()
