"""Builds the user-folder dataset from dummy_data and checks its values and its errors."""

import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_builders import common
from data_builders.unlabeled_images import unlabeled_images_dataset_builder as folder_builder

DUMMY = pathlib.Path(__file__).parent / "dummy_data"


def _build(folder: pathlib.Path, data_dir: pathlib.Path) -> folder_builder.UnlabeledImages:
    builder = folder_builder.UnlabeledImages(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(folder))
    )
    return builder


def test_registered_name():
    import data_builders

    data_builders.register()

    assert tfds.builder_cls("unlabeled_images") is folder_builder.UnlabeledImages


def test_every_image_once_with_its_category_and_whole_image_box(tmp_path):
    source = _build(DUMMY, tmp_path).as_data_source("train")
    examples = {ex["image_name"].decode(): ex for ex in (source[i] for i in range(len(source)))}
    # Suffixes in any case; notes.txt is not an image.
    assert sorted(examples) == ["cat/a.png", "cat/b.jpg", "cat/gray.png", "dog/c.PNG", "dog/d.jpeg"]
    for name, example in examples.items():
        with Image.open(DUMMY / name) as image:
            width, height = image.size
            pixels = np.asarray(image.convert("RGB"))
        assert example["category"].decode() == name.split("/")[0]
        assert example["image"].shape == (height, width, 3)
        np.testing.assert_array_equal(example["bbox"], [0, 0, width - 1, height - 1])
        if not name.endswith(".jpg"):  # lossless files keep their exact pixels
            np.testing.assert_array_equal(example["image"], pixels)


def test_a_truncated_image_is_named(tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(DUMMY, folder)
    broken = folder / "cat" / "a.png"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(common.DatasetFileError, match=r"cat/a\.png: not a complete image"):
        _build(folder, tmp_path / "data")
    assert not folder_builder.UnlabeledImages(data_dir=str(tmp_path / "data")).is_prepared()


def test_a_folder_without_category_images_is_refused(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    shutil.copy(DUMMY / "cat" / "a.png", folder / "a.png")  # an image, but not in a category
    with pytest.raises(common.DatasetFileError, match="no images in category subfolders"):
        _build(folder, tmp_path / "data")
