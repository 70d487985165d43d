"""PCK evaluation of a model on a split, following the official CATs protocol.

Images in the square canvas (the official 256-px frame at image_size 256), target keypoints
transferred to the source through the predicted flow, a keypoint correct when its distance is
<= alpha * threshold, per-pair PCK averaged over pairs (the official number), per category and
over categories. The padded last batch is masked, so every pair counts exactly once.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from matchme_jax import metrics, parallel, progress
from matchme_jax.data import pipeline
from matchme_jax.models.inputs import normalize_uint8

# Target keypoints are transferred to the source and compared with its annotation, as officially.
DIRECTION = "target->source"


def check_threshold(eval_cfg) -> None:
    if eval_cfg.threshold not in metrics.THRESHOLDS:
        raise ValueError(
            f"config.eval.threshold={eval_cfg.threshold!r}: use one of {metrics.THRESHOLDS}."
        )


def pck_threshold(batch, mode: str, image_size: int) -> jax.Array:
    """[B] PCK threshold before alpha, in the evaluated frame (see `metrics.THRESHOLDS`)."""
    if mode == "bbox":
        return metrics.bbox_threshold(batch["source_bbox"])
    if mode == "bbox_kp":
        return metrics.bbox_kp_threshold(batch["source_keypoints"], batch["keypoint_mask"])
    if mode == "willow_cats":
        return metrics.willow_cats_threshold(batch["source_keypoints"], batch["keypoint_mask"])
    batch_size = batch["source_bbox"].shape[0]
    return jnp.full((batch_size,), metrics.img_threshold(image_size), jnp.float32)


def make_eval_step(model, dataset_cfg, eval_cfg) -> Callable:
    """`eval_step(variables, batch) -> per-pair PCK [len(alphas), B]` (fractions), jitted."""
    check_threshold(eval_cfg)
    image_size = dataset_cfg.image_size
    alphas = tuple(float(a) for a in eval_cfg.alphas)

    def eval_step(variables, batch):
        flow = model.apply(
            variables,
            source=normalize_uint8(batch["source_image"]),
            target=normalize_uint8(batch["target_image"]),
            train=False,
        )
        predicted = metrics.flow_to_keypoints(
            flow, batch["target_keypoints"], image_size, mode=eval_cfg.flow_to_keypoints
        )
        threshold = pck_threshold(batch, eval_cfg.threshold, image_size)
        mask = batch["keypoint_mask"]
        return jnp.stack(
            [metrics.pck(predicted, batch["source_keypoints"], mask, threshold, a) for a in alphas]
        )

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable,
    variables,
    source,
    dataset_cfg,
    eval_cfg,
    category_names: Sequence[str],
    *,
    desc: str = "evaluate",
) -> dict:
    """PCK in percent on every pair of `source`: overall, per category, mean over categories.

    Each batch is split over every device (`parallel.run_on_full_batch`); `eval_cfg.batch_size`
    is rounded up to a multiple of the device count. `desc` names the pass on its progress line.
    """
    accumulators = [metrics.PCKAccumulator(category_names) for _ in eval_cfg.alphas]
    batch_size = parallel.padded_batch_size(eval_cfg.batch_size)
    batches = pipeline.padded_batches(source, dataset_cfg, batch_size=batch_size)
    total = -(-len(source) // batch_size)
    for batch in progress.track(batches, total=total, desc=desc, unit="batches"):
        per_pair = parallel.run_on_full_batch(eval_step, variables, pipeline.device_batch(batch))
        for acc, pck in zip(accumulators, per_pair, strict=True):
            acc.update(pck, batch["valid"], batch["category"])
    result = {}
    for alpha, acc in zip(eval_cfg.alphas, accumulators, strict=True):
        r = acc.result()
        result[f"pck@{alpha:g}"] = r["overall"]
        result[f"per_category@{alpha:g}"] = r["per_category"]
        result[f"mean_over_categories@{alpha:g}"] = r["mean_over_categories"]
        result["num_pairs"] = r["num_pairs"]
    result["threshold"] = eval_cfg.threshold
    result["direction"] = DIRECTION
    return result


def markdown_table(result: dict, alphas: Sequence[float], category_names: Sequence[str]) -> str:
    """PCK (percent) per category, over all pairs and averaged over categories, as Markdown."""
    header = "| | " + " | ".join(f"PCK@{a:g}" for a in alphas) + " |"
    lines = [header, "|---" * (len(alphas) + 1) + "|"]
    for name in category_names:
        cells = [result[f"per_category@{a:g}"].get(name) for a in alphas]
        lines.append(
            f"| {name} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |"
        )
    lines.append(
        "| **all pairs** | " + " | ".join(f"{result[f'pck@{a:g}']:.2f}" for a in alphas) + " |"
    )
    lines.append(
        "| **mean over categories** | "
        + " | ".join(f"{result[f'mean_over_categories@{a:g}']:.2f}" for a in alphas)
        + " |"
    )
    return "\n".join(lines)
