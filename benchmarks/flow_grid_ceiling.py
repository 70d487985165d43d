r"""The PCK a perfect flow on a feature grid would score: the true correspondence at each cell.

    python benchmarks/flow_grid_ceiling.py --image_size=64 --feature_size=8 --split=validation

For every pair of the embedded benchmark's split, the generator's dense truth (a 32 x 32 map of
target points to source points) gives the true flow at each target cell centre; cells without
truth (background, hidden) take the nearest truthful cell's flow. That flow goes through the
evaluation's own keypoint transfer and PCK (`metrics.flow_to_keypoints`, `metrics.pck`, the
source box threshold). What it scores is the most a model predicting one flow per cell can reach
at that image and grid size, up to the 32 x 32 truth's own resolution.
"""

import json

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from matchme_jax import annotate, defaults, metrics
from matchme_jax.data import pipeline, sources

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Canvas side in pixels.")
_FEATURE_SIZE = flags.DEFINE_integer("feature_size", 8, "Flow grid side.")
_SPLIT = flags.DEFINE_string("split", "validation", "Split of the embedded benchmark.")
ALPHAS = (0.05, 0.1, 0.15)


def true_flow(batch, i: int, image_size: int, feature_size: int) -> np.ndarray:
    """[h*w, 2] flow in cells of pair i from its dense truth, gaps filled by the nearest cell."""
    zero = np.zeros((1, feature_size, feature_size, 2), np.float32)
    centres = annotate.cell_correspondences(zero, image_size)[0][0]  # canvas pixels
    h, w = batch["target_size"][i]
    source_h, source_w = batch["source_size"][i]
    dense, known = batch["dense_correspondence"][i], batch["dense_correspondence_mask"][i]
    g = dense.shape[0]
    original = centres * np.array([w / image_size, h / image_size])
    col = np.clip((original[:, 0] * g / w).astype(int), 0, g - 1)
    row = np.clip((original[:, 1] * g / h).astype(int), 0, g - 1)
    ok = known[row, col]
    if not ok.any():
        return np.zeros((feature_size * feature_size, 2), np.float32)
    source = dense[row, col] * np.array([image_size / source_w, image_size / source_h])
    flow = (source - centres) / (image_size / feature_size)
    nearest = np.argmin(np.linalg.norm(centres[:, None] - centres[ok][None], axis=-1), axis=1)
    return np.where(ok[:, None], flow, flow[ok][nearest]).astype(np.float32)


def ceiling(image_size: int, feature_size: int, split: str) -> dict:
    """PCK (percent) at `ALPHAS` of the true flow on the grid, over every pair of `split`."""
    config = defaults.load_config_file("configs/synthetic.py")
    config.dataset.image_size = image_size
    source = sources.open_split(config.dataset, split)
    per_pair = {alpha: [] for alpha in ALPHAS}
    for batch in pipeline.padded_batches(
        source, config.dataset, batch_size=20, extra_keys=pipeline.TRUTH_KEYS
    ):
        flow = np.stack(
            [true_flow(batch, i, image_size, feature_size) for i in range(len(batch["valid"]))]
        ).reshape(-1, feature_size, feature_size, 2)
        predicted = metrics.flow_to_keypoints(
            jnp.asarray(flow), jnp.asarray(batch["target_keypoints"]), image_size
        )
        threshold = metrics.bbox_threshold(jnp.asarray(batch["source_bbox"]))
        for alpha in ALPHAS:
            pck = metrics.pck(
                predicted,
                jnp.asarray(batch["source_keypoints"]),
                jnp.asarray(batch["keypoint_mask"]),
                threshold,
                alpha,
            )
            per_pair[alpha] += list(np.asarray(pck)[batch["valid"]])
    return {
        "image_size": image_size,
        "feature_size": feature_size,
        "split": split,
        "pairs": len(per_pair[ALPHAS[0]]),
        **{f"pck@{a:g}": round(100 * float(np.mean(v)), 2) for a, v in per_pair.items()},
    }


def main(argv):
    del argv
    print(json.dumps(ceiling(_IMAGE_SIZE.value, _FEATURE_SIZE.value, _SPLIT.value)))


if __name__ == "__main__":
    app.run(main)
