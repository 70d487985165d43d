"""TFDS builder for a folder of unannotated images, one subfolder per category.

The self-training can draw its unlabeled pairs from photos that nobody annotated
(`config.selftrain.unlabeled_pairs="folder"`, `config.selftrain.unlabeled_folder=PATH`):

    PATH/<category>/<image>.jpg|.jpeg|.png|.bmp|.webp    (any case)

Category folders carry the benchmark's own category names (e.g. `cat`, `aeroplane` for
SPair-71k); the run pairs two distinct images of one category. Other files (`.DS_Store`, notes)
and hidden files are ignored. Every image is checked to decode completely while the dataset is
prepared. No image has a box: the stored box is the whole image, so `selftrain.query="bbox"`
queries every cell. One split, `train`. Build and read without TensorFlow:

    builder = UnlabeledImages(data_dir=d, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=PATH))
    source = builder.as_data_source("train")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders import common

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_DESCRIPTION = """\
A user's own unannotated images, one subfolder per category, for drawing unlabeled
same-category pairs that a teacher annotates. No keypoints, no boxes (the box is the image).
"""


class UnlabeledImages(tfds.core.GeneratorBasedBuilder):
    """Unannotated images of a user's folder (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Nothing to download: the manual dir is your folder of images, one subfolder per category named
as the benchmark names it, e.g. `<manual_dir>/cat/0001.jpg`, `<manual_dir>/dog/a.png`.
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "category": tfds.features.Text(),
                    "image_name": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        try:
            folder = dl_manager.manual_dir
        except AssertionError:  # tfds' way to say that the manual dir is missing or empty.
            raise common.DatasetFileError(
                "The unlabeled image folder is missing or empty; set "
                "config.selftrain.unlabeled_folder to a folder holding <category>/<image> files."
            ) from None
        return {"train": self._generate_examples(image_files(folder))}

    def _generate_examples(self, files: list[epath.Path]) -> Iterator[tuple[str, dict[str, Any]]]:
        for path in files:
            name = f"{path.parent.name}/{path.name}"
            data = common.read_image(path, fix="Replace or remove it, then prepare again.")
            width, height = common.image_size(path, data)
            yield (
                name,
                {
                    "image": data,
                    # Pixel centres 0 .. size-1 span the whole image.
                    "bbox": np.array([0, 0, width - 1, height - 1], np.float32),
                    "category": path.parent.name,
                    "image_name": name,
                },
            )


def image_files(folder: epath.Path) -> list[epath.Path]:
    """The images of `folder`'s category subfolders, sorted; an error when there are none."""
    files = sorted(
        path
        for category in folder.iterdir()
        if category.is_dir() and not category.name.startswith(".")
        for path in category.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )
    if not files:
        raise common.DatasetFileError(
            f"{folder}: no images in category subfolders; put them at "
            f"<folder>/<category>/<image> with a suffix among {IMAGE_SUFFIXES}."
        )
    return files
