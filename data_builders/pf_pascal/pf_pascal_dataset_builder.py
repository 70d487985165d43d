"""TFDS builder for PF-PASCAL (Ham et al., 2018) in the layout of the DHPF/CATs tarball.

Layout that this builder reads (the `PF-PASCAL.tar.gz` that DHPF and CATs download):

    PF-PASCAL/{trn,val,test}_pairs.csv     source path, target path, class id (1-20)[, flip]
    PF-PASCAL/JPEGImages/<image>.jpg
    PF-PASCAL/Annotations/<class>/<image stem>.mat    `kps` [K, 2] (NaN rows: absent), `bbox`

Build and read without TensorFlow:

    builder = PfPascal(data_dir=d, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=m))
    source = builder.as_data_source("train")
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders import common

# The DHPF/CATs tarball on Google Drive; it adds the split CSVs (with the training flips) to the
# images and annotations of the authors' PF-dataset-PASCAL.zip.
URL = "https://drive.google.com/uc?export=download&id=1OOwpGzJnTsFXYh-YffMQ9XKM_Kl_zdzg"
TOP_FOLDER = "PF-PASCAL"
# The 20 PASCAL VOC classes; the CSV's class id is 1 + the index in this list.
CATEGORIES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
# TFDS split -> the name PF-PASCAL's CSV files use for it.
SPLITS = {"train": "trn", "validation": "val", "test": "test"}

_DESCRIPTION = """\
PF-PASCAL: 1,351 image pairs of 20 PASCAL VOC classes with keypoints annotated per image; a pair
keeps the keypoints annotated in both of its images, in annotation order. Splits are the
DHPF/CATs CSVs (about 700 / 300 / 300 pairs, Han et al.'s split); the training CSV also lists
pairs with a horizontal `flip` flag, which is stored, not applied.
"""

_CITATION = """\
@article{ham2018proposal,
  title = {Proposal Flow: Semantic Correspondences from Object Proposals},
  author = {Ham, Bumsub and Cho, Minsu and Schmid, Cordelia and Ponce, Jean},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume = {40},
  number = {7},
  pages = {1711--1725},
  year = {2018},
}
"""


class PfPascal(tfds.core.GeneratorBasedBuilder):
    """PF-PASCAL semantic-correspondence pairs (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: DHPF/CATs splits with the training flips."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the PF-PASCAL tarball that DHPF and CATs use, {URL}
(Google Drive), and put it in the manual dir as `<manual_dir>/PF-PASCAL.tar.gz`.
Its extracted top folder works too: `<manual_dir>/PF-PASCAL/` holding `JPEGImages/`,
`Annotations/` and `{{trn,val,test}}_pairs.csv`.
Where the network is reachable and the manual dir is absent or empty, the tarball is downloaded.
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=common.benchmark_features(CATEGORIES),
            supervised_keys=None,
            homepage="https://www.di.ens.fr/willow/research/proposalflow/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = common.dataset_root(dl_manager, TOP_FOLDER, "trn_pairs.csv", URL)
        return {split: self._generate_examples(root, name) for split, name in SPLITS.items()}

    def _generate_examples(
        self, root: epath.Path, split_name: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        csv_path = root / f"{split_name}_pairs.csv"
        has_flip = split_name == "trn"  # Only the training CSV has the flip column.
        rows = common.read_csv_rows(csv_path, min_columns=4 if has_flip else 3)
        for index, row in enumerate(rows):
            pair_id = f"{split_name}-{index:05d}"  # A pair may repeat with another flip.
            where = f"{csv_path} row {index + 2}"
            category = _category(row[2], where)
            flip = _flip(row[3], where) if has_flip else False
            yield pair_id, _pair_features(root, row[0], row[1], category, flip, pair_id)


def _category(cell: str, where: str) -> str:
    """The class name of the CSV's 1-based class id `cell`."""
    try:
        class_id = int(float(cell))
    except ValueError:
        class_id = 0
    if not 1 <= class_id <= len(CATEGORIES):
        raise common.file_error(where, f"class id {cell!r} is not an integer in 1..20")
    return CATEGORIES[class_id - 1]


def _flip(cell: str, where: str) -> bool:
    """The training CSV's flip cell (0 or 1) as a bool."""
    if cell.strip() not in ("0", "1"):
        raise common.file_error(where, f"flip {cell!r} is neither 0 nor 1")
    return cell.strip() == "1"


def _pair_features(
    root: epath.Path, source: str, target: str, category: str, flip: bool, pair_id: str
) -> dict[str, Any]:
    """The example of one CSV row; only the basenames of the CSV's image paths are used."""
    source_name, target_name = posixpath.basename(source), posixpath.basename(target)
    source_ann = _annotation(root / "Annotations" / category, source_name)
    target_ann = _annotation(root / "Annotations" / category, target_name)
    source_keypoints, source_box = source_ann
    target_keypoints, target_box = target_ann
    if len(source_keypoints) != len(target_keypoints):
        raise common.file_error(
            root / "Annotations" / category / _mat_name(target_name),
            f"has {len(target_keypoints)} keypoints, but the pair's source image "
            f"{source_name} has {len(source_keypoints)}",
        )
    # Keep the keypoints annotated in both images (no NaN in either), in annotation order.
    both = ~(np.isnan(source_keypoints).any(1) | np.isnan(target_keypoints).any(1))
    return {
        "source_image": common.read_image(root / "JPEGImages" / source_name),
        "target_image": common.read_image(root / "JPEGImages" / target_name),
        "source_keypoints": source_keypoints[both],
        "target_keypoints": target_keypoints[both],
        "source_bbox": source_box,
        "target_bbox": target_box,
        "category": category,
        "source_image_name": source_name,
        "target_image_name": target_name,
        "pair_id": pair_id,
        **common.default_difficulty(),
        "flip": flip,
    }


def _mat_name(image_name: str) -> str:
    """The annotation file name of an image: its stem with `.mat`."""
    return f"{posixpath.splitext(image_name)[0]}.mat"


def _annotation(folder: epath.Path, image_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints `[K, 2]` float32 with NaN rows, box `[4]` float32) of one image's .mat file."""
    path = folder / _mat_name(image_name)
    variables = common.read_mat(path)
    missing = [name for name in ("kps", "bbox") if name not in variables]
    if missing:
        raise common.file_error(path, f"has no variable(s) {', '.join(missing)}")
    keypoints = np.asarray(variables["kps"], dtype=np.float32)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise common.file_error(path, f"kps has shape {keypoints.shape}, expected [K, 2]")
    return keypoints, common.as_box(path, "bbox", np.asarray(variables["bbox"])[0])
