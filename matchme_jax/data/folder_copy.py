"""A run's prepared copy of the user's image folder (W/unlabeled_images/), kept in step with it.

The copy records what it was built from in `W/unlabeled_images/source.json`: the folder and,
for each image the builder reads, its path, size and modification time. When the folder differs
(an image fixed, removed or added; a category folder renamed) the copy is built again, so that
a rerun after fixing what an error named reads the fixed folder, not the copy of the old one.

A copy is built whole or not at all: in `W/unlabeled_images.building/`, renamed into place once
complete with its record. A build that fails or is killed leaves the previous copy (if any), which
the next run finds out of date and builds again.
"""

import json
import os
import shutil
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

from data_builders.unlabeled_images.unlabeled_images_dataset_builder import IMAGE_SUFFIXES
from matchme_jax import atomic

SOURCE_FILE = "source.json"
BUILDER = "unlabeled_images"


def listing(folder: str | os.PathLike) -> dict:
    """What a copy of `folder` is built from: {"folder", "files": [[path, size, mtime_ns], ...]}.

    The files are those the builder reads (`<folder>/<category>/<image>`, not hidden, an image
    suffix), sorted; paths relative to `folder`. A missing folder lists no file (the build then
    fails with the builder's error).
    """
    folder = Path(folder).expanduser().absolute()
    files = []
    if folder.is_dir():
        for category in sorted(folder.iterdir()):
            if not category.is_dir() or category.name.startswith("."):
                continue
            for path in sorted(category.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    stat = path.stat()
                    files.append([f"{category.name}/{path.name}", stat.st_size, stat.st_mtime_ns])
    return {"folder": str(folder), "files": files}


def _builder(data_dir: Path) -> tfds.core.DatasetBuilder:
    return tfds.builder(BUILDER, data_dir=os.fspath(data_dir), file_format="array_record")


def _recorded(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def prepared(folder: str | os.PathLike, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """The `unlabeled_images` builder of `data_dir`'s copy of `folder`, built if out of date.

    Args:
        folder: `<folder>/<category>/<image>` files (config.selftrain.unlabeled_folder).
        data_dir: the copy's TFDS data dir (W/unlabeled_images).

    Returns:
        A prepared builder whose data are `folder`'s images as they are now.
    """
    data_dir = Path(data_dir)
    source = listing(folder)
    recorded = _recorded(data_dir)
    if recorded == source:
        return _builder(data_dir)
    if data_dir.exists():
        logging.warning(
            "%s changed since its copy in %s was prepared (%s images then, %d now): preparing it "
            "again.",
            folder,
            data_dir,
            len(recorded["files"]) if recorded else "unknown",
            len(source["files"]),
        )
    else:
        logging.info("Preparing the unlabeled images of %s in %s", folder, data_dir)
    building = data_dir.with_name(data_dir.name + ".building")
    shutil.rmtree(building, ignore_errors=True)  # what a killed build left
    try:
        _builder(building).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(folder))
        )
        atomic.write_json(building / SOURCE_FILE, source)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    # Killed between these two lines, no copy is left: the next run builds one.
    shutil.rmtree(data_dir, ignore_errors=True)
    os.replace(building, data_dir)
    return _builder(data_dir)
