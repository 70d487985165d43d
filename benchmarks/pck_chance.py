r"""The PCK of guessing: each transferred keypoint drawn uniformly inside the source box.

    python benchmarks/pck_chance.py --split=test

The chance level next to which the embedded benchmark's PCK is read. For every pair of the split,
in the evaluated canvas (the evaluation's own resize), each target keypoint's prediction is a
point drawn uniformly inside the source box; it is correct when it lies within alpha x the box's
longer side of the true source keypoint (the SPair-71k threshold the evaluation uses). The
probability of that is computed on the centres of a fine tiling of the box (`GRID` x `GRID`), so
the number is exact up to that grid, with no sampling noise. Per-pair means, averaged over pairs and
per category, as the evaluation averages.
"""

import json

import numpy as np
from absl import app, flags

from matchme_jax import defaults
from matchme_jax.data import pipeline, sources

_SPLIT = flags.DEFINE_string("split", "test", "Split of the embedded benchmark.")
ALPHAS = (0.05, 0.1, 0.15)
GRID = 200  # points per side of the box on which the hit probability is integrated


def hit_probability(box: np.ndarray, point: np.ndarray, radius: float) -> float:
    """Probability that a uniform point of `box` (x1, y1, x2, y2) lies within `radius` of
    `point` (x, y)."""
    # The centres of a GRID x GRID tiling of the box: the midpoint rule, unbiased at its edges.
    steps = (np.arange(GRID) + 0.5) / GRID
    xs = box[0] + steps * (box[2] - box[0])
    ys = box[1] + steps * (box[3] - box[1])
    dx2 = (xs - point[0]) ** 2
    dy2 = (ys - point[1]) ** 2
    return float(np.mean(dy2[:, None] + dx2[None, :] <= radius * radius))


def chance(split: str) -> dict:
    """Chance PCK (percent) at `ALPHAS` over every pair of `split`, overall and per category."""
    config = defaults.load_config_file("configs/synthetic.py")
    names = sources.category_names(config.dataset)
    per_pair = {alpha: [] for alpha in ALPHAS}
    categories = []
    source = sources.open_split(config.dataset, split)
    for batch in pipeline.padded_batches(source, config.dataset, batch_size=50):
        for i in np.flatnonzero(batch["valid"]):
            box = batch["source_bbox"][i]
            threshold = max(box[2] - box[0], box[3] - box[1])
            points = batch["source_keypoints"][i][batch["keypoint_mask"][i]]
            for alpha in ALPHAS:
                hits = [hit_probability(box, p, alpha * threshold) for p in points]
                per_pair[alpha].append(np.mean(hits))
            categories.append(int(batch["category"][i]))
    categories = np.asarray(categories)
    result = {"split": split, "num_pairs": len(categories)}
    for alpha in ALPHAS:
        values = np.asarray(per_pair[alpha]) * 100
        result[f"chance_pck@{alpha:g}"] = round(float(values.mean()), 2)
        result[f"per_category@{alpha:g}"] = {
            name: round(float(values[categories == c].mean()), 2)
            for c, name in enumerate(names)
            if np.any(categories == c)
        }
    return result


def main(argv) -> None:
    del argv
    print(json.dumps(chance(_SPLIT.value), indent=1))


if __name__ == "__main__":
    app.run(main)
