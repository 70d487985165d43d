"""The host pipeline's bookkeeping: every example's `index` is its position in its source."""

import ml_collections
import numpy as np

from matchme_jax.data import pipeline


class _Pairs:
    """Ten blank pairs of 8x8 images with two keypoints each, all of one category."""

    def __init__(self, category: int = 0):
        self.category = category

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        image = np.zeros((8, 8, 3), np.uint8)
        points = np.full((2, 2), float(i % 8), np.float32)
        box = np.array([0, 0, 7, 7], np.float32)
        return {
            "source_image": image,
            "target_image": image,
            "source_keypoints": points,
            "target_keypoints": points,
            "source_bbox": box,
            "target_bbox": box,
            "category": self.category,
        }


def test_training_batches_index_each_pair_by_its_position_over_every_epoch():
    config = ml_collections.ConfigDict(dict(image_size=16, max_keypoints=4, num_workers=0))
    batches = pipeline.training_iterator([_Pairs()], [1.0], config, batch_size=5, seed=0)
    indices = np.concatenate([next(batches)["index"] for _ in range(6)])  # three epochs
    assert sorted(indices[:10]) == sorted(indices[10:20]) == sorted(indices[20:]) == list(range(10))


def test_a_source_of_weight_zero_is_never_drawn():
    """A student at labeled_fraction 1.0 trains on its labeled pairs alone (grain refuses to mix
    a zero weight)."""
    config = ml_collections.ConfigDict(dict(image_size=16, max_keypoints=4, num_workers=0))
    batches = pipeline.training_iterator(
        [_Pairs(category=0), _Pairs(category=1)], [1.0, 0.0], config, batch_size=5, seed=0
    )
    categories = np.concatenate([next(batches)["category"] for _ in range(6)])
    assert np.all(categories == 0)
