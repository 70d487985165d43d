"""Where the teacher's unlabeled pairs come from.

Two sources, chosen by `config.selftrain.unlabeled_pairs`:
  "split": a seeded draw from a split of unannotated pairs (the synthetic benchmark's `unlabeled`
    split, whose hidden ground truth scores the pseudo labels);
  "train_images": the benchmark's own training images paired anew — two distinct images of the
    same category, drawn with a seed per generation — never using the annotation of those pairs.
Both give random-access sources of examples in the TFDS feature layout, without keypoints.
"""

from collections import defaultdict

import numpy as np

from data_builders.common import training_images

UNLABELED_PAIRS = ("split", "train_images")


class Subset:
    """The examples of `source` at `indices`, as a random-access source."""

    def __init__(self, source, indices: np.ndarray):
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


class RepairedTrainingImages:
    """`num_pairs` new same-category pairs of a split's images, as unannotated examples."""

    def __init__(self, builder, split: str, num_pairs: int, seed: int):
        self._pairs_source = builder.as_data_source(split)
        names = builder.info.features["category"].names
        by_category = defaultdict(list)
        for image in training_images(builder, split):
            by_category[names.index(image.category)].append(image)
        categories = sorted(c for c, images in by_category.items() if len(images) >= 2)
        if not categories:
            raise ValueError(
                f"The {split!r} split has no category with two distinct images to pair; use "
                "config.selftrain.unlabeled_pairs='split' with a dataset that has unlabeled pairs."
            )
        weights = np.array([len(by_category[c]) for c in categories], np.float64)
        rng = np.random.default_rng(seed)
        self._pairs = []
        for category in rng.choice(categories, size=num_pairs, p=weights / weights.sum()):
            first, second = rng.choice(len(by_category[category]), size=2, replace=False)
            images = by_category[category]
            self._pairs.append((int(category), images[first], images[second]))

    def __len__(self) -> int:
        return len(self._pairs)

    def _image(self, image) -> np.ndarray:
        return self._pairs_source[image.pair_index][f"{image.side}_image"]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        category, source, target = self._pairs[i]
        return {
            "source_image": self._image(source),
            "target_image": self._image(target),
            "source_bbox": source.bbox,
            "target_bbox": target.bbox,
            "category": category,
            "source_keypoints": np.zeros((0, 2), np.float32),
            "target_keypoints": np.zeros((0, 2), np.float32),
        }
