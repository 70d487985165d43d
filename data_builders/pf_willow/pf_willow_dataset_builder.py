"""TFDS builder for PF-WILLOW (Ham et al., 2016) in the layout of the DHPF/CATs tarball.

Layout that this builder reads (the `PF-WILLOW.tar.gz` that DHPF and CATs download):

    PF-WILLOW/test_pairs.csv        source path, target path, then 10 source x, 10 source y,
                                    10 target x, 10 target y (pixels)
    PF-WILLOW/<subset>/<image>.png  subsets car(G) ... winebottle(woC)

The CSV's image paths start with a folder that the tarball does not have
(`PF-dataset/car(G)/car_009a.png`): as in the official loader, that first component is dropped.
Test split only. Build and read without TensorFlow:

    builder = PfWillow(data_dir=d, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=m))
    source = builder.as_data_source("test")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders import common

# The DHPF/CATs tarball on Google Drive: the authors' PF-WILLOW images with the test pairs CSV.
URL = "https://drive.google.com/uc?export=download&id=1tDP0y8RO5s45L-vqnortRaieiWENQco_"
TOP_FOLDER = "PF-WILLOW"
# The 10 subsets (object class and its viewpoint/background condition), used as categories.
CATEGORIES = [
    "car(G)",
    "car(M)",
    "car(S)",
    "duck(S)",
    "motorbike(G)",
    "motorbike(M)",
    "motorbike(S)",
    "winebottle(M)",
    "winebottle(wC)",
    "winebottle(woC)",
]
NUM_KEYPOINTS = 10  # Every PF-WILLOW image has all 10 keypoints annotated.
_NUM_COLUMNS = 2 + 4 * NUM_KEYPOINTS

_DESCRIPTION = """\
PF-WILLOW: 900 test pairs of 10 object subsets (car, duck, motorbike, wine bottle under several
viewpoint and background conditions), with 10 keypoints annotated in both images of every pair.
There is no object box; the boxes stored here are the keypoints' extent (x1 y1 x2 y2).
"""

_CITATION = """\
@inproceedings{ham2016proposal,
  title = {Proposal Flow},
  author = {Ham, Bumsub and Cho, Minsu and Schmid, Cordelia and Ponce, Jean},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {3475--3484},
  year = {2016},
}
"""


class PfWillow(tfds.core.GeneratorBasedBuilder):
    """PF-WILLOW semantic-correspondence test pairs (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: the test pairs of the DHPF/CATs CSV."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the PF-WILLOW tarball that DHPF and CATs use, {URL}
(Google Drive), and put it in the manual dir as `<manual_dir>/PF-WILLOW.tar.gz`.
Its extracted top folder works too: `<manual_dir>/PF-WILLOW/` holding `test_pairs.csv` and the
subset folders `car(G)/` ... `winebottle(woC)/`.
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
        root = common.dataset_root(dl_manager, TOP_FOLDER, "test_pairs.csv", URL)
        return {"test": self._generate_examples(root)}

    def _generate_examples(self, root: epath.Path) -> Iterator[tuple[str, dict[str, Any]]]:
        csv_path = root / "test_pairs.csv"
        rows = common.read_csv_rows(csv_path, min_columns=_NUM_COLUMNS)
        for index, row in enumerate(rows):
            pair_id = f"test-{index:05d}"
            yield pair_id, _pair_features(root, row, f"{csv_path} row {index + 2}", pair_id)


def _pair_features(root: epath.Path, row: list[str], where: str, pair_id: str) -> dict[str, Any]:
    """The example of one CSV row."""
    source_name, category = _image_path(row[0], where)
    target_name, target_category = _image_path(row[1], where)
    if target_category != category:
        raise common.file_error(where, f"pairs subsets {category} and {target_category}")
    try:
        coordinates = np.asarray(row[2:_NUM_COLUMNS], dtype=np.float32)
    except ValueError:
        raise common.file_error(where, "a keypoint coordinate is not a number") from None
    # Columns: source x1..x10, source y1..y10, target x1..x10, target y1..y10.
    source_keypoints = coordinates[: 2 * NUM_KEYPOINTS].reshape(2, NUM_KEYPOINTS).T
    target_keypoints = coordinates[2 * NUM_KEYPOINTS :].reshape(2, NUM_KEYPOINTS).T
    return {
        "source_image": common.read_image(root / source_name),
        "target_image": common.read_image(root / target_name),
        "source_keypoints": source_keypoints,
        "target_keypoints": target_keypoints,
        "source_bbox": keypoint_extent(source_keypoints),
        "target_bbox": keypoint_extent(target_keypoints),
        "category": category,
        "source_image_name": source_name,
        "target_image_name": target_name,
        "pair_id": pair_id,
        **common.default_difficulty(),
    }


def _image_path(cell: str, where: str) -> tuple[str, str]:
    """(path under PF-WILLOW/, subset) of a CSV image path, whose first component is dropped."""
    parts = cell.strip().split("/")[1:]
    if len(parts) < 2 or parts[0] not in CATEGORIES:
        raise common.file_error(where, f"image path {cell!r} is not <folder>/<subset>/<file>")
    return "/".join(parts), parts[0]


def keypoint_extent(keypoints: np.ndarray) -> np.ndarray:
    """The box x1 y1 x2 y2 `[4]` spanned by keypoints `[N, 2]` (PF-WILLOW has no object box)."""
    return np.concatenate([keypoints.min(0), keypoints.max(0)]).astype(np.float32)
