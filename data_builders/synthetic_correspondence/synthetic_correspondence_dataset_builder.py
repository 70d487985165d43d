"""TFDS builder for the embedded synthetic semantic-correspondence benchmark.

Nothing is downloaded: every pair is rendered by `generator.generate_pair` from
`(config.seed, split, index)`, so a build is reproducible bit for bit. Config `<config>_seed<N>`
is config `<config>` rendered from seed N (see `SyntheticCorrespondence.get_builder_config`).
Build and read without TensorFlow:

    builder = SyntheticCorrespondence(config="tiny", data_dir=d, file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source("train")
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_builders import common
from data_builders.synthetic_correspondence import generator

_DESCRIPTION = """\
A small semantic-correspondence benchmark rendered procedurally from a seed. Five categories
(quadruped, bird, car, aeroplane, fish), each a parametric family of 2-D shapes built from parts,
with 10-12 named keypoints per category. Instances vary in part proportions and angles, pose
(rotation, scale, translation, horizontal mirror), colours and stripes, over cluttered backgrounds;
clutter in front of the object and the image border hide some keypoints. A pair holds the keypoints
visible in both images, in the category's keypoint order, plus a dense ground-truth correspondence
on a 32x32 target grid. Splits: a few labeled `train` pairs, many `unlabeled` pairs of other
instances (annotated, but only for measuring pseudo-label precision), `validation` and `test`.
"""

# Splits of this many pairs per core or more render in worker processes, one per core: starting
# one costs about a second, rendering a default-sized pair about 20 ms.
PAIRS_PER_WORKER = 128

_CITATION = """\
@misc{matchme_jax_synthetic,
  title = {Synthetic semantic correspondence benchmark of matchme\\_jax},
  note = {Procedurally generated; see data_builders/synthetic_correspondence/generator.py},
}
"""


@dataclasses.dataclass
class SyntheticCorrespondenceConfig(tfds.core.BuilderConfig):
    """Sizes, image size range and seed of one synthetic benchmark variant.

    Attributes:
        num_train: labeled training pairs.
        num_unlabeled: pairs for self-training (their annotation is kept for evaluation only).
        num_validation: validation pairs.
        num_test: test pairs.
        min_image_size: smallest image height and width, in pixels.
        max_image_size: largest image height and width, in pixels (inclusive).
        seed: dataset seed; every pair is a pure function of `(seed, split, index)`.
    """

    num_train: int = 200
    num_unlabeled: int = 2000
    num_validation: int = 100
    num_test: int = 400
    min_image_size: int = 112
    max_image_size: int = 160
    seed: int = 0

    def split_sizes(self) -> dict[str, int]:
        """Number of pairs per split name."""
        return {
            "train": self.num_train,
            "unlabeled": self.num_unlabeled,
            "validation": self.num_validation,
            "test": self.num_test,
        }


class SyntheticCorrespondence(tfds.core.GeneratorBasedBuilder):
    """Procedurally rendered semantic-correspondence pairs (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 5 categories, dense 32x32 ground truth, 4 splits.",
    }
    BUILDER_CONFIGS = [
        SyntheticCorrespondenceConfig(
            name="default",
            description=(
                "~1 minute build: 200 train, 2000 unlabeled, 100 val, 400 test pairs, 112-160 px."
            ),
        ),
        SyntheticCorrespondenceConfig(
            name="tiny",
            description="Seconds to build, for tests: 10 pairs per split (20 unlabeled), 48-64 px.",
            num_train=10,
            num_unlabeled=20,
            num_validation=10,
            num_test=10,
            min_image_size=48,
            max_image_size=64,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @classmethod
    def get_builder_config(
        cls, name: str, version: str | tfds.core.Version | None = None
    ) -> tfds.core.BuilderConfig | None:
        """Also knows every `<config>_seed<N>` (see `seeded_config_name`), made on demand.

        TFDS looks configs up by name here, so `tfds.builder("synthetic_correspondence/tiny_seed3")`
        and `tfds build --config=tiny_seed3` both work, and each seed is prepared in its own folder.
        """
        config = super().get_builder_config(name, version)
        match = _SEEDED_NAME.fullmatch(name)
        if config is None and match and super().get_builder_config(match["base"], version):
            config = _seeded_config(match["base"], int(match["seed"]))
        return config

    def _info(self) -> tfds.core.DatasetInfo:
        grid = generator.GRID_SIZE
        image = tfds.features.Image(shape=(None, None, 3), encoding_format="png")
        keypoints = tfds.features.Tensor(shape=(None, 2), dtype=np.float32)
        box = tfds.features.Tensor(shape=(4,), dtype=np.float32)
        count = tfds.features.Tensor(shape=(), dtype=np.int32)
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "source_image": image,
                    "target_image": image,
                    "source_keypoints": keypoints,
                    "target_keypoints": keypoints,
                    "source_bbox": box,
                    "target_bbox": box,
                    "category": tfds.features.ClassLabel(names=generator.CATEGORY_NAMES),
                    "source_image_name": tfds.features.Text(),
                    "target_image_name": tfds.features.Text(),
                    "pair_id": tfds.features.Text(),
                    "flip": tfds.features.Tensor(shape=(), dtype=np.bool_),
                    "viewpoint_variation": count,
                    "scale_variation": count,
                    "truncation": count,
                    "occlusion": count,
                    "dense_correspondence": tfds.features.Tensor(
                        shape=(grid, grid, 2), dtype=np.float32
                    ),
                    "dense_correspondence_mask": tfds.features.Tensor(
                        shape=(grid, grid), dtype=np.bool_
                    ),
                }
            ),
            supervised_keys=None,
            homepage="https://github.com/matchme-jax/matchme_jax",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Everything is rendered; nothing to download.
        return {
            split: self._generate_examples(split, size)
            for split, size in self.builder_config.split_sizes().items()
        }

    def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
        config = self.builder_config
        image_size = (config.min_image_size, config.max_image_size)
        workers = _render_workers(size)
        if workers < 2:
            render = functools.partial(_render_features, config.seed, split, image_size)
            yield from enumerate(map(render, range(size)))
        else:
            yield from enumerate(_render_in_workers(config.seed, split, image_size, size, workers))


# `<config>_seed<N>`, N >= 1 without leading zeros: seed 0 is the named config itself.
_SEEDED_NAME = re.compile(r"(?P<base>.+)_seed(?P<seed>[1-9][0-9]*)")


def seeded_config_name(config_name: str, seed: int) -> str:
    """The name of builder config `config_name` rendered from generator seed `seed` instead.

    Seed 0 is the named config itself (the data prepared before seeds could be chosen); any other
    seed gets its own name, hence its own prepared folder, `<config>_seed<N>`.
    """
    if seed < 0:
        raise ValueError(f"A generator seed is 0 or more, got {seed}")
    return f"{config_name}_seed{seed}" if seed else config_name


@functools.cache
def _seeded_config(base_name: str, seed: int) -> SyntheticCorrespondenceConfig:
    """Config `base_name` with another seed; cached: TFDS wants the very object it looked up."""
    base = SyntheticCorrespondence.builder_configs[base_name]
    return dataclasses.replace(
        base,
        name=seeded_config_name(base_name, seed),
        description=f"{base.description} Rendered from generator seed {seed}.",
        seed=seed,
    )


def _render_workers(size: int) -> int:
    """How many processes render a split of `size` pairs: one per core, PAIRS_PER_WORKER each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, size // PAIRS_PER_WORKER)


# A render worker: pairs k, k + n, k + 2n, ... of a split, pickled to stdout in that order.
_RENDER_WORKER = """
import pickle, sys
from data_builders.synthetic_correspondence.synthetic_correspondence_dataset_builder import (
    _render_features,
)
seed, split, low, high, k, n, size = sys.argv[1:]
for index in range(int(k), int(size), int(n)):
    features = _render_features(int(seed), split, (int(low), int(high)), index)
    pickle.dump(features, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()
"""


def _render_in_workers(
    seed: int, split: str, image_size: tuple[int, int], size: int, workers: int
) -> Iterator[dict]:
    """Pairs 0 .. size - 1 in index order, rendered by `workers` Python processes in turn.

    Each pair is a pure function of its index, so the files are those of rendering here. The
    workers are plain `python -c` processes, not `multiprocessing` ones: those import the
    caller's main script again (a script without a `__main__` guard would build recursively),
    and forking a process that runs JAX is unsafe.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}
    args = [str(seed), split, *map(str, image_size)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RENDER_WORKER, *args, str(k), str(workers), str(size)],
            stdout=subprocess.PIPE,
            env=env,
        )
        for k in range(workers)
    ]
    try:
        for index in range(size):
            worker = procs[index % workers]
            try:
                yield pickle.load(worker.stdout)
            except EOFError:
                code = worker.wait()
                raise RuntimeError(
                    f"A render worker of split {split!r} stopped at pair {index} (exit code "
                    f"{code}; its error is above)"
                ) from None
    finally:
        for worker in procs:
            worker.kill()
            worker.wait()
            worker.stdout.close()


def _render_features(seed: int, split: str, image_size: tuple[int, int], index: int) -> dict:
    """Pair `index` of `split`, rendered from `seed` as this builder's feature dict."""
    record = generator.generate_pair(seed, split, index, image_size)
    return _to_features(record, split, index)


def _to_features(record: dict[str, Any], split: str, index: int) -> dict[str, Any]:
    """Turns a `generator.generate_pair` record into this builder's feature dict."""
    features = dict(record)
    features["source_image"] = common.encode_png(record["source_image"])
    features["target_image"] = common.encode_png(record["target_image"])
    del features["keypoint_ids"]  # Not part of the schema shared with the real benchmarks.
    category = generator.CATEGORY_NAMES[record["category"]]
    stem = f"{split}/{category}/{index:05d}"
    features["source_image_name"] = f"{stem}_source.png"
    features["target_image_name"] = f"{stem}_target.png"
    features["pair_id"] = f"{split}-{index:05d}"
    return features
