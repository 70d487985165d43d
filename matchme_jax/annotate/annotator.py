"""The annotation pass: a teacher turns unlabeled pairs into pseudo keypoint pairs.

For every target feature cell the teacher predicts a source point (its flow) and a confidence
(the peak probability of its soft-argmax distribution over source cells). Cells with confidence
>= tau (inside the target box, by default) become pseudo keypoint pairs, stored in original-image
pixels so that the student's augmentation moves them exactly like ground truth. (A diagnostic,
`selftrain.query="true_keypoints"`, asks at the pairs' own annotated target keypoints instead.)

Optionally (`selftrain.consistency_radius`), the teacher also annotates the swapped pair, and a
cell is kept only when its round trip target -> source -> target returns within that many feature
cells of where it started: a forward-backward consistency check, at twice the annotation cost.

The same pass also answers what tau would have kept: the count and precision of the pseudo
points at every tau of `SWEEP_TAUS` (`sweep_tau`).
"""

from collections.abc import Callable

import numpy as np

from matchme_jax import parallel, progress
from matchme_jax.annotate.cells import (
    candidate_cells,
    cell_correspondences,
    keep_most_confident,
    keypoint_correspondences,
    round_trip_error,
    to_original,
    truth_distance,
)
from matchme_jax.annotate.statistics import summarize, sweep_tau
from matchme_jax.data import pipeline


def annotate_pairs(
    annotate_step: Callable,
    variables,
    source,
    dataset_cfg,
    selftrain_cfg,
    *,
    batch_size: int,
    desc: str = "annotate",
) -> tuple[dict[str, np.ndarray], dict]:
    """Annotates every pair of `source`; returns (pseudo-label arrays, statistics).

    The arrays (one row per kept pair; M = selftrain.max_pseudo_points):
      index [P] int64: the pair's position in `source`;
      source_keypoints, target_keypoints [P, M, 2] float32: original pixels;
      confidence [P, M] float32; mask [P, M] bool.
    Where the examples carry the generator's dense truth, the statistics include the precision
    of the kept points at 0.05 and 0.1 of the source box's larger side. `stats["tau_sweep"]`
    is what every tau of `SWEEP_TAUS` would have kept (`sweep_tau`), from this same pass.
    `desc` names the pass on its progress line.
    """
    image_size = dataset_cfg.image_size
    m = selftrain_cfg.max_pseudo_points
    radius = selftrain_cfg.get("consistency_radius")
    failed_round_trips = 0  # cells whose round trip ends beyond the consistency radius
    rows = {k: [] for k in ("index", "source_keypoints", "target_keypoints", "confidence", "mask")}
    confidences, rel_errors = [], []
    # Every example's cells before thresholding, for the tau sweep.
    cells_seen = {"confidence": [], "candidates": [], "rel_error": []}
    examples = 0
    batch_size = parallel.padded_batch_size(batch_size)
    batches = pipeline.padded_batches(
        source, dataset_cfg, batch_size=batch_size, extra_keys=pipeline.TRUTH_KEYS
    )
    for batch in progress.track(
        batches, total=-(-len(source) // batch_size), desc=desc, unit="batches"
    ):
        out = parallel.run_on_full_batch(annotate_step, variables, pipeline.device_batch(batch))
        if selftrain_cfg.query == "true_keypoints":
            target_c, source_c, conf = keypoint_correspondences(
                out["flow"], out["confidence"], batch["target_keypoints"], image_size
            )
        else:
            target_c, source_c = cell_correspondences(out["flow"], image_size)
            conf = out["confidence"].reshape(len(out["confidence"]), -1)
        round_trip = None
        if radius is not None:
            round_trip = round_trip_error(target_c, source_c, out["backward_flow"], image_size)
            valid = batch["valid"][:, None]
            failed_round_trips += int(np.sum((round_trip > radius) & valid))
        candidates = candidate_cells(
            target_c,
            source_c,
            batch["target_bbox"],
            query=selftrain_cfg.query,
            image_size=image_size,
            round_trip=round_trip,
            consistency_radius=radius,
            keypoint_mask=batch["keypoint_mask"],
        )
        keep = keep_most_confident(conf, candidates, tau=selftrain_cfg.tau, max_points=m)
        target_o = to_original(target_c, batch["target_size"], image_size)
        source_o = to_original(source_c, batch["source_size"], image_size)
        for b in np.flatnonzero(batch["valid"]):
            examples += 1
            rel_error = _relative_truth_error(batch, b, target_o[b], source_o[b])
            cells_seen["confidence"].append(conf[b])
            cells_seen["candidates"].append(candidates[b])
            cells_seen["rel_error"].append(rel_error)
            kept = np.flatnonzero(keep[b])
            kept = kept[np.argsort(-conf[b, kept], kind="stable")]
            if len(kept) < max(selftrain_cfg.min_pseudo_points, 1):
                continue
            n = len(kept)
            rows["index"].append(int(batch["index"][b]))
            for key, points in (("source_keypoints", source_o), ("target_keypoints", target_o)):
                padded = np.zeros((m, 2), np.float32)
                padded[:n] = points[b, kept]
                rows[key].append(padded)
            c = np.zeros(m, np.float32)
            c[:n] = conf[b, kept]
            rows["confidence"].append(c)
            rows["mask"].append(np.arange(m) < n)
            confidences.append(conf[b, kept])
            if rel_error is not None:
                rel_errors.append(rel_error[kept])
    pseudo = {
        "index": np.asarray(rows["index"], np.int64),
        "source_keypoints": np.asarray(rows["source_keypoints"], np.float32).reshape(-1, m, 2),
        "target_keypoints": np.asarray(rows["target_keypoints"], np.float32).reshape(-1, m, 2),
        "confidence": np.asarray(rows["confidence"], np.float32).reshape(-1, m),
        "mask": np.asarray(rows["mask"], bool).reshape(-1, m),
    }
    stats = summarize(pseudo, examples, confidences, rel_errors, selftrain_cfg.tau)
    stats["consistency_radius"] = radius
    if radius is not None:
        stats["cells_failing_round_trip"] = failed_round_trips
    stats["tau_sweep"] = sweep_tau(
        *_stacked(cells_seen),
        max_points=m,
        min_points=selftrain_cfg.min_pseudo_points,
    )
    return pseudo, stats


def _relative_truth_error(batch, b: int, target_points, source_points) -> np.ndarray | None:
    """Each cell's error against the dense truth, in source-box sides: [N], NaN where unknown.

    None when the examples carry no dense truth (a real benchmark's unlabeled pairs).
    """
    if "dense_correspondence" not in batch:
        return None
    dist = truth_distance(
        target_points,
        source_points,
        batch["target_size"][b],
        batch["dense_correspondence"][b],
        batch["dense_correspondence_mask"][b],
    )
    box = batch["source_bbox_original"][b]
    return dist / max(box[2] - box[0], box[3] - box[1])


def _stacked(cells_seen: dict[str, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, candidates, rel_error), each [P, N]; rel_error NaN without truth."""
    if not cells_seen["confidence"]:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), bool), np.zeros((0, 0))
    confidence = np.stack(cells_seen["confidence"])
    rel_error = [
        np.full(confidence.shape[1], np.nan) if e is None else e for e in cells_seen["rel_error"]
    ]
    return confidence, np.stack(cells_seen["candidates"]), np.stack(rel_error)
