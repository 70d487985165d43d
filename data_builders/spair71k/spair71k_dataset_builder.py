"""TFDS builder for SPair-71k (Min et al., 2019), read as its authors publish it.

Layout of `SPair-71k.tar.gz` that this builder reads:

    SPair-71k/Layout/large/{trn,val,test}.txt   one pair per line, e.g.
                                                000001-2008_000585-2008_004704:aeroplane
    SPair-71k/PairAnnotation/{trn,val,test}/<line>.json
    SPair-71k/JPEGImages/<category>/<image>.jpg

Build and read without TensorFlow:

    builder = Spair71k(data_dir=d, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=m))
    source = builder.as_data_source("train")
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from data_builders import common

URL = "http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"
TOP_FOLDER = "SPair-71k"
MARKER = "Layout/large/trn.txt"  # a file every copy of the top folder has
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
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "train",
    "tvmonitor",
]
# TFDS split -> the folder/file name SPair-71k uses for it.
SPLITS = {"train": "trn", "validation": "val", "test": "test"}
_PAIR_LINE = re.compile(r"^\d+-(?P<source>[^-:]+)-(?P<target>[^-:]+):(?P<category>\w+)$")
_DIFFICULTY = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")

_DESCRIPTION = """\
SPair-71k: 70,958 image pairs of 18 PASCAL VOC categories with large viewpoint and scale changes,
with the keypoints annotated in both images of each pair (in the pair's annotation order), the two
object boxes, and per-pair difficulty labels (viewpoint and scale variation, truncation,
occlusion). Splits follow Layout/large: 53,340 train, 5,384 validation, 12,234 test pairs.
"""

_CITATION = """\
@article{min2019spair,
  title = {SPair-71k: A Large-scale Benchmark for Semantic Correspondence},
  author = {Min, Juhong and Lee, Jongmin and Ponce, Jean and Cho, Minsu},
  journal = {arXiv preprint arXiv:1908.10543},
  year = {2019},
}
"""


class Spair71k(tfds.core.GeneratorBasedBuilder):
    """SPair-71k semantic-correspondence pairs (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: Layout/large splits, all pair annotations."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {URL} and put the file, as downloaded, in the manual dir:
`<manual_dir>/SPair-71k.tar.gz`. Its extracted top folder works too:
`<manual_dir>/SPair-71k/` holding `Layout/`, `PairAnnotation/` and `JPEGImages/`.
Where the network is reachable and the manual dir is absent or empty, the archive is downloaded.
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=common.benchmark_features(CATEGORIES),
            supervised_keys=None,
            homepage="https://cvlab.postech.ac.kr/research/SPair-71k/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = common.dataset_root(dl_manager, TOP_FOLDER, MARKER, URL)
        return {split: self._generate_examples(root, name) for split, name in SPLITS.items()}

    def _generate_examples(
        self, root: epath.Path, split_name: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        return generate_pairs(root, split_name)


def generate_pairs(root: epath.Path, split_name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(pair id, features) of every pair of a split, in Layout order, read from `root`.

    Args:
        root: the extracted `SPair-71k` top folder.
        split_name: SPair-71k's own split name (`trn`, `val` or `test`; see `SPLITS`).
    """
    for pair_id in read_pair_list(root / "Layout" / "large" / f"{split_name}.txt"):
        annotation = root / "PairAnnotation" / split_name / f"{pair_id}.json"
        yield pair_id, _pair_features(root, pair_id, annotation)


def read_pair_list(path: epath.Path) -> list[str]:
    """The pair ids listed in a Layout txt file, one per non-blank line.

    The official loader drops the file's last line because it assumes a trailing newline; this
    reads every non-blank line instead, so a file with or without a trailing newline gives the
    same pairs (where a file ends with a newline, the two readings agree).
    """
    lines = [line.strip() for line in common.require_file(path).read_text().splitlines()]
    pair_ids = [line for line in lines if line]
    for line_number, pair_id in enumerate(pair_ids, start=1):
        if not _PAIR_LINE.match(pair_id):
            raise common.file_error(
                path,
                f"pair {line_number} ({pair_id!r}) is not <index>-<source>-<target>:<category>",
            )
    return pair_ids


def _pair_features(root: epath.Path, pair_id: str, path: epath.Path) -> dict[str, Any]:
    """The example of one pair, from its annotation JSON at `path` and its two images."""
    annotation = common.read_json(path)
    missing = [
        key
        for key in ("src_kps", "trg_kps", "src_bndbox", "trg_bndbox", "category", *_DIFFICULTY)
        if key not in annotation
    ]
    if missing:
        raise common.file_error(path, f"missing the field(s) {', '.join(missing)}")
    line = _PAIR_LINE.match(pair_id)
    category = annotation["category"]
    if category != line["category"]:
        raise common.file_error(path, f"category {category!r} differs from the pair id's")
    if category not in CATEGORIES:
        raise common.file_error(path, f"unknown category {category!r}")
    source_keypoints = common.as_points(path, "src_kps", annotation["src_kps"])
    target_keypoints = common.as_points(path, "trg_kps", annotation["trg_kps"])
    if len(source_keypoints) != len(target_keypoints):
        raise common.file_error(
            path,
            f"{len(source_keypoints)} src_kps but {len(target_keypoints)} trg_kps; "
            "SPair-71k lists the same keypoints in both images",
        )
    images = root / "JPEGImages" / category
    features = {
        "source_image": common.read_image(images / f"{line['source']}.jpg"),
        "target_image": common.read_image(images / f"{line['target']}.jpg"),
        "source_keypoints": source_keypoints,
        "target_keypoints": target_keypoints,
        "source_bbox": common.as_box(path, "src_bndbox", annotation["src_bndbox"]),
        "target_bbox": common.as_box(path, "trg_bndbox", annotation["trg_bndbox"]),
        "category": category,
        "source_image_name": f"{line['source']}.jpg",
        "target_image_name": f"{line['target']}.jpg",
        "pair_id": pair_id,
        "flip": False,
    }
    for key in _DIFFICULTY:
        try:
            features[key] = int(annotation[key])
        except (TypeError, ValueError):
            raise common.file_error(path, f"{key} is not an integer") from None
    return features
