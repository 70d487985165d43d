"""TFDS builder for SPair-C: the SPair-71k test pairs under one ImageNet-C corruption each.

One builder config per corruption and severity, named `<corruption>_<severity>` (75 in all, e.g.
`spair_c/fog_3`), each with a single `test` split holding the 12,234 SPair-71k test pairs with both
images corrupted by `data_builders.corruption_recipe.corrupt_pair`, exactly as the on-the-fly
evaluation (`--config.mode=evaluate_corruptions`) corrupts them. Features are SPair-71k's; the
images are stored as lossless PNG at their original resolution.

It reads the same manual dir as `spair71k` (the archive or its extracted folder), with its reader:

    python -m data_builders.prepare --dataset=spair_c/fog_3 --data_dir=D --manual_dir=M
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from data_builders import common
from data_builders.corruption_recipe import CORRUPTIONS, SEVERITIES, corrupt_pair
from data_builders.spair71k import spair71k_dataset_builder as spair71k

_DESCRIPTION = """\
SPair-C: the 12,234 SPair-71k test pairs (Layout/large/test.txt) with both images corrupted by one
of the 15 ImageNet-C corruptions (Hendrycks & Dietterich, 2019) at one severity, as built by
matchme_jax (imagecorruptions-imaug 1.1.5, a fixed seed per pair, corruption, severity and image;
see the builder's README). The official SPair-C files are not available to us: this is our own,
documented construction.
"""

_CITATION = """\
@article{min2019spair,
  title = {SPair-71k: A Large-scale Benchmark for Semantic Correspondence},
  author = {Min, Juhong and Lee, Jongmin and Ponce, Jean and Cho, Minsu},
  journal = {arXiv preprint arXiv:1908.10543},
  year = {2019},
}

@inproceedings{hendrycks2019benchmarking,
  title = {Benchmarking Neural Network Robustness to Common Corruptions and Perturbations},
  author = {Hendrycks, Dan and Dietterich, Thomas},
  booktitle = {International Conference on Learning Representations},
  year = {2019},
}
"""


@dataclasses.dataclass
class SpairCConfig(tfds.core.BuilderConfig):
    """One corruption at one severity.

    Attributes:
        corruption: one of `data_builders.corruption_recipe.CORRUPTIONS`.
        severity: 1 to 5.
    """

    corruption: str = "gaussian_noise"
    severity: int = 1


def _configs() -> list[SpairCConfig]:
    return [
        SpairCConfig(
            name=f"{corruption}_{severity}",
            description=f"SPair-71k test pairs under {corruption}, severity {severity}.",
            corruption=corruption,
            severity=severity,
        )
        for corruption in CORRUPTIONS
        for severity in SEVERITIES
    ]


class SpairC(tfds.core.GeneratorBasedBuilder):
    """SPair-71k test pairs under ImageNet-C corruptions (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 15 corruptions x 5 severities of the test split."}
    BUILDER_CONFIGS = _configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = spair71k.Spair71k.MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=common.benchmark_features(spair71k.CATEGORIES),
            supervised_keys=None,
            homepage="https://cvlab.postech.ac.kr/research/SPair-71k/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = common.dataset_root(dl_manager, spair71k.TOP_FOLDER, spair71k.MARKER, spair71k.URL)
        return {"test": self._generate_examples(root)}

    def _generate_examples(self, root: epath.Path) -> Iterator[tuple[str, dict[str, Any]]]:
        config = self.builder_config
        # Decoded as a prepared spair71k is read (OpenCV or PIL, as TFDS picks), so the pixels
        # corrupted here are those the on-the-fly evaluation corrupts.
        decode = self.info.features["source_image"].decode_example_np
        for pair_id, features in spair71k.generate_pairs(root, spair71k.SPLITS["test"]):
            pixels = {
                **features,
                "source_image": decode(features["source_image"]),
                "target_image": decode(features["target_image"]),
            }
            corrupted = corrupt_pair(pixels, config.corruption, config.severity)
            for side in ("source_image", "target_image"):
                features[side] = common.encode_png(corrupted[side])
            yield pair_id, features
