"""Where the teacher's unlabeled pairs come from.

Three sources, chosen by `config.selftrain.unlabeled_pairs`:
  "split": a seeded draw from a split of unannotated pairs (the synthetic benchmark's `unlabeled`
    split, whose hidden ground truth scores the pseudo labels);
  "train_images": the benchmark's own training images paired anew — two distinct images of the
    same category, drawn with a seed per generation — never using the annotation of those pairs;
  "folder": the user's own images (`config.selftrain.unlabeled_folder`, one subfolder per
    category, read by the `unlabeled_images` builder), paired the same way.
All give random-access sources of examples in the TFDS feature layout, without keypoints.
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_builders.common import training_images
from matchme_jax.data import sources

UNLABELED_PAIRS = ("split", "train_images", "folder")


class Subset:
    """The examples of `source` at `indices`, as a random-access source."""

    def __init__(self, source, indices: np.ndarray):
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def draw_pairs(config, generation: int, workdir) -> Subset:
    """The unlabeled pairs a generation's teacher annotates, drawn with a seed.

    Args:
        config: the run's config (`dataset`, `seed`, `selftrain`).
        generation: the student generation (>= 1) the pairs are drawn for.
        workdir: the run's folder (`"folder"` prepares the user's images inside it, so that two
            runs on different folders never share one copy).

    Returns:
        A `Subset` whose `source` the pseudo labels' indices refer to.
    """
    dataset_cfg, n = config.dataset, config.selftrain.num_unlabeled_pairs
    seed = [config.seed, generation]
    if config.selftrain.unlabeled_pairs == "train_images":
        builder = sources.prepare(dataset_cfg)
        pairs = repaired_training_images(builder, dataset_cfg.train_split, n, seed)
        return Subset(pairs, np.arange(len(pairs)))
    if config.selftrain.unlabeled_pairs == "folder":
        folder = sources.prepare_unlabeled_folder(
            config.selftrain.unlabeled_folder, Path(workdir) / "unlabeled_images"
        )
        pairs = folder_image_pairs(folder, sources.category_names(dataset_cfg), n, seed)
        return Subset(pairs, np.arange(len(pairs)))
    full = sources.open_split(dataset_cfg, dataset_cfg.unlabeled_split)
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(full), min(n, len(full)), replace=False))
    return Subset(full, indices)


class SameCategoryPairs:
    """`num_pairs` pairs of two distinct images of one category, drawn with a seed.

    Categories are drawn in proportion to their number of images; categories with fewer than
    two images are never drawn.

    Args:
        images_by_category: category label -> its images (any objects `read_image` accepts).
        read_image: image -> (uint8 [H, W, 3] pixels, [4] float32 box x1 y1 x2 y2).
        num_pairs: how many pairs to draw.
        seed: anything `np.random.default_rng` accepts.
        where: names the images' origin in the error raised when nothing can be paired.
    """

    def __init__(
        self,
        images_by_category: dict[int, Sequence[Any]],
        read_image: Callable[[Any], tuple[np.ndarray, np.ndarray]],
        num_pairs: int,
        seed,
        where: str,
    ):
        categories = sorted(c for c, images in images_by_category.items() if len(images) >= 2)
        if not categories:
            raise ValueError(
                f"{where} has no category with two distinct images to pair; add images, or use "
                "config.selftrain.unlabeled_pairs='split' with a dataset that has unlabeled pairs."
            )
        self._read_image = read_image
        weights = np.array([len(images_by_category[c]) for c in categories], np.float64)
        rng = np.random.default_rng(seed)
        self._pairs = []
        for category in rng.choice(categories, size=num_pairs, p=weights / weights.sum()):
            images = images_by_category[category]
            first, second = rng.choice(len(images), size=2, replace=False)
            self._pairs.append((int(category), images[first], images[second]))

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        category, source, target = self._pairs[i]
        source_image, source_bbox = self._read_image(source)
        target_image, target_bbox = self._read_image(target)
        return {
            "source_image": source_image,
            "target_image": target_image,
            "source_bbox": source_bbox,
            "target_bbox": target_bbox,
            "category": category,
            "source_keypoints": np.zeros((0, 2), np.float32),
            "target_keypoints": np.zeros((0, 2), np.float32),
        }


def repaired_training_images(builder, split: str, num_pairs: int, seed) -> SameCategoryPairs:
    """New same-category pairs of the images of a benchmark split's annotated pairs."""
    pairs_source = builder.as_data_source(split)
    names = builder.info.features["category"].names
    by_category = defaultdict(list)
    for image in training_images(builder, split):
        by_category[names.index(image.category)].append(image)

    def read_image(image):
        return pairs_source[image.pair_index][f"{image.side}_image"], image.bbox

    return SameCategoryPairs(by_category, read_image, num_pairs, seed, where=f"The {split!r} split")


def folder_image_pairs(
    builder, category_names: Sequence[str], num_pairs: int, seed
) -> SameCategoryPairs:
    """Same-category pairs of a prepared `unlabeled_images` dataset (the user's folder).

    Args:
        builder: the prepared `unlabeled_images` builder.
        category_names: the benchmark's categories, in label order; every subfolder of the
            user's folder must be one of them.
    """
    images = builder.as_data_source("train")
    # The categories, read without decoding every image.
    undecoded = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    by_category = defaultdict(list)
    unknown = set()
    for index in range(len(undecoded)):
        category = undecoded[index]["category"]
        category = category.decode() if isinstance(category, bytes) else category
        if category in category_names:
            by_category[list(category_names).index(category)].append(index)
        else:
            unknown.add(category)
    if unknown:
        raise ValueError(
            f"config.selftrain.unlabeled_folder has category folders {sorted(unknown)} that the "
            f"benchmark does not know; name each folder after one of {list(category_names)}."
        )

    def read_image(index):
        example = images[index]
        return example["image"], example["bbox"]

    return SameCategoryPairs(
        by_category, read_image, num_pairs, seed, where="config.selftrain.unlabeled_folder"
    )
