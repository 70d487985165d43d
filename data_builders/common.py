"""Helpers shared by the SPair-71k, PF-PASCAL and PF-WILLOW builders.

* `benchmark_features`: the feature dict every benchmark builder writes (the synthetic builder
  writes the same names and types, plus its dense ground truth).
* `dataset_root`: finds the dataset's top folder in the manual dir (archive or extracted folder),
  or downloads the authors' archive when no manual dir was filled.
* `read_image`, `read_json`, `read_csv_rows`, `read_mat`: read one file of the layout or raise one
  `DatasetFileError` that names the file and what is wrong with it.
* `encode_png`: uint8 pixels as PNG bytes, for builders that make or change pixels.
* `training_images`: the distinct images of a prepared split, for drawing unlabeled pairs.
* `prepare`: `download_and_prepare` where the data is not prepared, one process at a time
  (`preparation_lock`), then `remove_stale_incomplete`, which deletes what interrupted
  preparations of the dataset left.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# TFDS prepares a dataset in `<its dir>/incomplete.<6 random>_<version>/`, renamed into place once
# complete; a killed preparation leaves that folder behind (gigabytes for a real benchmark).
INCOMPLETE_FOLDER = re.compile(r"incomplete\.[A-Z0-9]{6}_\d+\.\d+\.\d+")


class DatasetFileError(ValueError):
    """A file that the dataset layout names is missing or malformed."""


ARCHIVE_FIX = (
    "Re-download or re-extract the dataset archive (see the builder's "
    "MANUAL_DOWNLOAD_INSTRUCTIONS) and prepare again."
)


def file_error(path: os.PathLike | str, problem: str, fix: str = ARCHIVE_FIX) -> DatasetFileError:
    """One error naming `path`, what is wrong with it, and the fix (by default: the archive)."""
    return DatasetFileError(f"{path}: {problem}. {fix}")


def benchmark_features(category_names: list[str]) -> tfds.features.FeaturesDict:
    """The per-pair features shared by every correspondence benchmark of this project.

    Args:
        category_names: the dataset's own class names, in label order.

    Returns:
        Images (uint8 `[H, W, 3]`, original resolution), keypoints `[N, 2]` float32 (x, y) in
        original pixels, boxes `[4]` float32 x1 y1 x2 y2, the category label, file names, the
        pair id, PF-PASCAL's `flip` and SPair-71k's difficulty fields (0 elsewhere).
    """
    image = tfds.features.Image(shape=(None, None, 3))
    keypoints = tfds.features.Tensor(shape=(None, 2), dtype=np.float32)
    box = tfds.features.Tensor(shape=(4,), dtype=np.float32)
    count = tfds.features.Tensor(shape=(), dtype=np.int32)
    return tfds.features.FeaturesDict(
        {
            "source_image": image,
            "target_image": image,
            "source_keypoints": keypoints,
            "target_keypoints": keypoints,
            "source_bbox": box,
            "target_bbox": box,
            "category": tfds.features.ClassLabel(names=category_names),
            "source_image_name": tfds.features.Text(),
            "target_image_name": tfds.features.Text(),
            "pair_id": tfds.features.Text(),
            "flip": tfds.features.Tensor(shape=(), dtype=np.bool_),
            "viewpoint_variation": count,
            "scale_variation": count,
            "truncation": count,
            "occlusion": count,
        }
    )


def default_difficulty() -> dict[str, Any]:
    """The `flip` and SPair-71k difficulty features for benchmarks that have none."""
    return {
        "flip": False,
        "viewpoint_variation": 0,
        "scale_variation": 0,
        "truncation": 0,
        "occlusion": 0,
    }


def dataset_root(
    dl_manager: tfds.download.DownloadManager, top_folder: str, marker: str, url: str
) -> epath.Path:
    """The dataset's extracted top folder, from the manual dir or else from the authors' URL.

    The manual dir may hold the extracted top folder (`<manual_dir>/<top_folder>/<marker>`) or the
    archive as downloaded (`<manual_dir>/<top_folder>.tar.gz`, `.tgz`, `.tar` or `.zip`). Only
    when the manual dir is absent or empty is `url` downloaded. Archives are extracted under
    `<download_dir>/extracted/` by `extract_archive`, because tfds' own extractor needs TensorFlow.

    Args:
        dl_manager: the builder's download manager.
        top_folder: the archive's top folder, e.g. `SPair-71k`.
        marker: a path inside the top folder that every copy has, e.g. `Layout/large/trn.txt`.
        url: the authors' archive.

    Returns:
        The top folder.
    """
    extracted_root = dl_manager.download_dir / "extracted"
    try:
        manual_dir = dl_manager.manual_dir
    except AssertionError:  # tfds' way to say that the manual dir is missing or empty.
        archive = dl_manager.download(url)
        return _find_top_folder(extract_archive(archive, extracted_root), top_folder, marker, url)
    if (manual_dir / top_folder / marker).exists():
        return manual_dir / top_folder
    names = [f"{top_folder}{suffix}" for suffix in ARCHIVE_SUFFIXES]
    for name in names:
        if (manual_dir / name).exists():
            extracted = extract_archive(manual_dir / name, extracted_root)
            return _find_top_folder(extracted, top_folder, marker, manual_dir / name)
    raise DatasetFileError(
        f"{manual_dir}: holds neither {top_folder}/{marker} nor an archive named "
        f"{' or '.join(names)}. Put the downloaded archive or its extracted top folder there "
        "(see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS)."
    )


def extract_archive(archive: epath.Path, extracted_root: epath.Path) -> epath.Path:
    """Extracts a zip or (compressed) tar archive once into `<extracted_root>/<archive name>`.

    The contents are written to a temporary folder that is renamed when complete, so an
    interrupted extraction is redone rather than read half-written.

    Returns:
        The folder holding the archive's contents.
    """
    destination = extracted_root / archive.name
    if destination.exists():
        return destination
    partial = extracted_root / f"{archive.name}.incomplete"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):  # By content: a downloaded file's name may not say.
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(partial)
        else:
            with tarfile.open(archive) as tarred:
                tarred.extractall(partial, filter="data")
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as err:
        raise file_error(archive, f"cannot be extracted ({err})") from None
    partial.rename(destination)
    return destination


def _find_top_folder(
    extracted: epath.Path, top_folder: str, marker: str, origin: os.PathLike | str
) -> epath.Path:
    """The top folder inside an extracted archive (or the extraction itself if it has none)."""
    for candidate in (extracted / top_folder, extracted):
        if (candidate / marker).exists():
            return candidate
    raise file_error(origin, f"the extracted archive has no {top_folder}/{marker}")


def require_file(path: epath.Path) -> epath.Path:
    """`path` if it is a file, else the error that names it."""
    if not path.is_file():
        raise file_error(path, "file is missing")
    return path


def read_image(path: epath.Path, fix: str = ARCHIVE_FIX) -> bytes:
    """The encoded bytes of an RGB image file, checked to decode completely.

    Args:
        path: a JPEG or PNG file.
        fix: what the error tells the user to do when the file does not decode.

    Returns:
        The file's bytes when it is RGB; otherwise the image converted to RGB, as PNG bytes
        (the features declare 3 channels).
    """
    data = require_file(path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # Decodes every pixel: a truncated file fails here, not in training.
            if image.mode == "RGB":
                return data
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue()
    except (OSError, SyntaxError, ValueError) as err:
        raise file_error(path, f"not a complete image ({err})", fix) from None


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a `[H, W, 3]` uint8 image.

    TFDS encodes NumPy images with TensorFlow, which this project does not install, so builders
    hand TFDS encoded bytes. The lowest zlib level keeps a build fast; noisy images barely
    compress at higher levels.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_size(path: epath.Path, data: bytes) -> tuple[int, int]:
    """(width, height) of the encoded image `data` read from `path`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except OSError as err:
        raise file_error(path, f"not an image ({err})") from None


def read_json(path: epath.Path) -> dict[str, Any]:
    """The JSON object stored at `path`."""
    try:
        content = json.loads(require_file(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise file_error(path, f"not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise file_error(path, f"holds a JSON {type(content).__name__}, not an object")
    return content


def read_csv_rows(path: epath.Path, min_columns: int) -> list[list[str]]:
    """The data rows of a CSV file with one header row, each with at least `min_columns` cells.

    The official loaders read these files by position (pandas with a header row), so the header's
    names are not checked; blank lines are skipped.
    """
    try:
        rows = list(csv.reader(io.StringIO(require_file(path).read_text())))
    except (csv.Error, UnicodeDecodeError) as err:
        raise file_error(path, f"not valid CSV ({err})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise file_error(path, "empty CSV; expected a header row and one row per pair")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < min_columns:
            raise file_error(path, f"row {line} has {len(row)} columns, expected {min_columns}")
    return rows[1:]


def read_mat(path: epath.Path) -> dict[str, Any]:
    """The variables of a MATLAB .mat file."""
    try:
        with require_file(path).open("rb") as f:
            return scipy.io.loadmat(f)
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise file_error(path, f"not a readable .mat file ({err})") from None


def as_points(path: epath.Path, name: str, value: Any) -> np.ndarray:
    """`value` as a `[N, 2]` float32 array of (x, y) points, or the error naming `path`."""
    try:
        points = np.asarray(value, dtype=np.float32).reshape(-1, 2)
    except (TypeError, ValueError):
        raise file_error(path, f"{name} is not a list of (x, y) points") from None
    return points


def as_box(path: epath.Path, name: str, value: Any) -> np.ndarray:
    """`value` as a `[4]` float32 x1 y1 x2 y2 box, or the error naming `path`."""
    try:
        box = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        box = np.zeros((0,), np.float32)
    if box.shape != (4,):
        raise file_error(path, f"{name} is not 4 numbers x1 y1 x2 y2")
    return box


class TrainingImage(NamedTuple):
    """One distinct image of a split, with where the prepared dataset stores its pixels.

    Attributes:
        image_name: the file name as in the pairs (`source_image_name`/`target_image_name`).
        category: the category name.
        bbox: `[4]` float32 x1 y1 x2 y2 object box in original pixels.
        pair_index: index of the first pair of the split that holds the image.
        side: `"source"` or `"target"`: which image of that pair it is.
    """

    image_name: str
    category: str
    bbox: np.ndarray
    pair_index: int
    side: str


def training_images(
    builder_or_dir: tfds.core.DatasetBuilder | os.PathLike | str, split: str = "train"
) -> list[TrainingImage]:
    """The distinct images of a prepared split, without their pair annotation.

    The benchmarks publish no list of training images, only training pairs; this collects both
    images of every pair, once per (category, file name), in pair order. The self-training draws
    its unlabeled pairs among these, reading the pixels from `pair_index`/`side`.

    Args:
        builder_or_dir: a prepared builder, or the directory of a prepared dataset version
            (e.g. `<data_dir>/spair71k/1.0.0`).
        split: the split to enumerate.

    Returns:
        One `TrainingImage` per distinct image.
    """
    if isinstance(builder_or_dir, tfds.core.DatasetBuilder):
        builder = builder_or_dir
    else:
        builder = tfds.builder_from_directory(os.fspath(builder_or_dir))
    skip = tfds.decode.SkipDecoding()
    source = builder.as_data_source(split, decoders={"source_image": skip, "target_image": skip})
    names = builder.info.features["category"].names
    images: dict[tuple[str, str], TrainingImage] = {}
    for index in range(len(source)):
        example = source[index]
        category = names[int(example["category"])]
        for side in ("source", "target"):
            name = _text(example[f"{side}_image_name"])
            if (category, name) not in images:
                bbox = np.asarray(example[f"{side}_bbox"], np.float32)
                images[(category, name)] = TrainingImage(name, category, bbox, index, side)
    return list(images.values())


def prepare(
    make_builder: Callable[[], tfds.core.DatasetBuilder],
    download_config: tfds.download.DownloadConfig,
) -> tfds.core.DatasetBuilder:
    """`make_builder()`'s builder, its data prepared first where it is not.

    Preparations of one dataset take turns (`preparation_lock`): two runs started at once on a
    fresh data dir would otherwise both prepare it, and the later one fail in TFDS's final rename.
    The builder is made again once the lock is held, so that one which waited sees the data the
    other prepared. A preparation ends by removing what interrupted earlier ones left.
    """
    with preparation_lock(make_builder()):
        builder = make_builder()
        if not builder.is_prepared():
            started = time.time()
            builder.download_and_prepare(download_config=download_config)
            remove_stale_incomplete(builder, started)
    return builder


@contextlib.contextmanager
def preparation_lock(builder: tfds.core.DatasetBuilder) -> Iterator[None]:
    """Holds an exclusive lock on the folder of `builder`'s dataset while inside.

    An advisory `flock` on the folder itself, so that nothing is left beside the versions; the
    kernel releases it when its holder exits, killed or not. Remote data dirs (gs://...) are not
    locked; neither are filesystems without `flock` (logged).
    """
    data_path = os.fspath(builder.data_path)
    if "://" in data_path:
        yield
        return
    dataset_dir = Path(data_path).parent
    dataset_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(dataset_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("Waiting for another process's preparation of %s", dataset_dir)
            fcntl.flock(folder, fcntl.LOCK_EX)
        except OSError as err:
            logging.warning("Preparing %s unlocked: %s", dataset_dir, err)
        yield
    finally:
        os.close(folder)  # releases the lock


def remove_stale_incomplete(builder: tfds.core.DatasetBuilder, before: float) -> list[Path]:
    """Deletes what interrupted preparations of `builder`'s dataset left; returns those folders.

    Only TFDS's temporary folders (`INCOMPLETE_FOLDER`) beside the prepared version, and only
    those nothing was written in since `before`, the start of the preparation that just ended:
    one written in since may be another process's preparation under way.
    """
    dataset_dir = Path(os.fspath(builder.data_path)).parent
    if not dataset_dir.is_dir():  # a remote data dir (gs://...): left to TFDS
        return []
    removed = []
    for folder in sorted(dataset_dir.iterdir()):
        if INCOMPLETE_FOLDER.fullmatch(folder.name) and folder.is_dir():
            if _last_written(folder) < before:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    if removed:
        logging.info("Removed what interrupted preparations left: %s", [str(f) for f in removed])
    return removed


def _last_written(folder: Path) -> float:
    """The latest modification time of `folder` and everything in it; inf while it changes."""
    try:
        return max(p.lstat().st_mtime for p in (folder, *folder.rglob("*")))
    except OSError:  # renamed or deleted meanwhile: someone is at work in it
        return float("inf")


def _text(value: bytes | str) -> str:
    """A Text feature as `str` (data sources return bytes)."""
    return value.decode() if isinstance(value, bytes) else value
