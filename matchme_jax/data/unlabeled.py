"""The teacher's unlabeled pairs: where they come from, and the pair sources.

Three origins, chosen by `config.selftrain.unlabeled_pairs` (drawn by
`sources.draw_unlabeled_pairs`):
  "split": a seeded draw from a split of unannotated pairs (the synthetic benchmark's `unlabeled`
    split, whose hidden ground truth scores the pseudo labels);
  "train_images": the benchmark's own training images paired anew — two distinct images of the
    same category, drawn with a seed per generation — never using the annotation of those pairs;
  "folder": the user's own images (`config.selftrain.unlabeled_folder`, one subfolder per
    category, read by the `unlabeled_images` builder), paired the same way.
All give random-access sources of examples in the TFDS feature layout, without keypoints.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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
