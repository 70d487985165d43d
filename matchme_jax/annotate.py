"""The machine annotator: a teacher turns unlabeled pairs into pseudo keypoint pairs.

For every target feature cell the teacher predicts a source point (its flow) and a confidence
(the peak probability of its soft-argmax distribution over source cells). Cells with confidence
>= tau (inside the target box, by default) become pseudo keypoint pairs, stored in original-image
pixels so that the student's augmentation moves them exactly like ground truth.
"""

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from matchme_jax.data import pipeline
from matchme_jax.data.augment import normalize_uint8

PSEUDO_FILE = "pseudo_labels.npz"
STATS_FILE = "stats.json"
QUERIES = ("bbox", "all")


def make_annotate_step(model) -> Callable:
    """`annotate_step(variables, batch) -> (flow [B,h,w,2], confidence [B,h,w])`, jitted."""

    def annotate_step(variables, batch):
        out = model.apply(
            variables,
            source=normalize_uint8(batch["source_image"]),
            target=normalize_uint8(batch["target_image"]),
            train=False,
            method="correspondence",
        )
        return out["flow"], out["confidence"]

    return jax.jit(annotate_step)


def cell_correspondences(flow: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas-pixel (target point, source point) of every target cell.

    The target point is the cell centre, where the official flow upsampling (align_corners=False)
    takes exactly the cell's value; the source point is that centre moved by the flow.

    Args:
      flow: [B, h, w, 2] in feature cells.
    Returns:
      target_points, source_points: [B, h*w, 2] (x, y) canvas pixels, cells in row-major order.
    """
    b, h, w, _ = flow.shape
    stride = np.array([image_size / w, image_size / h], np.float32)
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    centres = (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5) * stride - 0.5
    target = np.broadcast_to(centres, (b, h * w, 2))
    source = target + flow.reshape(b, h * w, 2) * stride
    return target.astype(np.float32), source.astype(np.float32)


def select_points(
    confidence: np.ndarray,
    target_points: np.ndarray,
    source_points: np.ndarray,
    target_bbox: np.ndarray,
    *,
    tau: float,
    query: str,
    max_points: int,
    image_size: int,
) -> np.ndarray:
    """Which cells become pseudo points: [B, h*w] bool.

    A cell is kept when its confidence >= tau, it is queried (inside the target box for
    query="bbox"), its source point lies in the canvas, and it is among the `max_points` most
    confident kept cells of its pair.
    """
    if query not in QUERIES:
        raise ValueError(f"config.selftrain.query={query!r}: use one of {QUERIES}.")
    conf = confidence.reshape(len(confidence), -1)
    keep = conf >= tau
    keep &= np.all((source_points >= 0) & (source_points <= image_size - 1), axis=-1)
    if query == "bbox":
        x, y = target_points[..., 0], target_points[..., 1]
        box = target_bbox[:, None, :]
        keep &= (x >= box[..., 0]) & (x <= box[..., 2]) & (y >= box[..., 1]) & (y <= box[..., 3])
    # Rank the kept cells by confidence and drop all but the first max_points.
    ranked = np.argsort(np.where(keep, -conf, np.inf), axis=1, kind="stable")
    rank = np.empty_like(ranked)
    np.put_along_axis(rank, ranked, np.arange(conf.shape[1])[None], axis=1)
    return keep & (rank < max_points)


def _to_original(points: np.ndarray, size_hw: np.ndarray, image_size: int) -> np.ndarray:
    """Canvas pixels -> original pixels; points [B, N, 2], size_hw [B, 2] = (height, width)."""
    scale = size_hw[:, ::-1].astype(np.float32) / image_size
    return points * scale[:, None, :]


def truth_distance(
    target_points: np.ndarray,
    source_points: np.ndarray,
    target_size_hw: np.ndarray,
    dense: np.ndarray,
    dense_mask: np.ndarray,
) -> np.ndarray:
    """Per point: distance to the true source point in original pixels, NaN without truth.

    Args:
      target_points, source_points: [N, 2] original pixels of one pair.
      target_size_hw: [2] the target image's (height, width).
      dense: [G, G, 2] true source point of target grid point [j, i] at
        ((i + 0.5) W / G, (j + 0.5) H / G); dense_mask: [G, G] bool.
    """
    g = dense.shape[0]
    h, w = target_size_hw
    i = np.clip((target_points[:, 0] * g / w).astype(int), 0, g - 1)
    j = np.clip((target_points[:, 1] * g / h).astype(int), 0, g - 1)
    dist = np.linalg.norm(source_points - dense[j, i], axis=-1)
    return np.where(dense_mask[j, i], dist, np.nan)


def annotate_pairs(
    annotate_step: Callable,
    variables,
    source,
    dataset_cfg,
    selftrain_cfg,
    *,
    batch_size: int,
) -> tuple[dict[str, np.ndarray], dict]:
    """Annotates every pair of `source`; returns (pseudo-label arrays, statistics).

    The arrays (one row per kept pair; M = selftrain.max_pseudo_points):
      index [P] int64: the pair's position in `source`;
      source_keypoints, target_keypoints [P, M, 2] float32: original pixels;
      confidence [P, M] float32; mask [P, M] bool.
    Where the examples carry the generator's dense truth, the statistics include the precision
    of the kept points at 0.05 and 0.1 of the source box's larger side.
    """
    image_size = dataset_cfg.image_size
    m = selftrain_cfg.max_pseudo_points
    rows = {k: [] for k in ("index", "source_keypoints", "target_keypoints", "confidence", "mask")}
    confidences, rel_errors = [], []
    examples = 0
    for batch in pipeline.padded_batches(
        source, dataset_cfg, batch_size=batch_size, extra_keys=pipeline.TRUTH_KEYS
    ):
        flow, conf = jax.device_get(annotate_step(variables, pipeline.device_batch(batch)))
        target_c, source_c = cell_correspondences(flow, image_size)
        keep = select_points(
            conf,
            target_c,
            source_c,
            batch["target_bbox"],
            tau=selftrain_cfg.tau,
            query=selftrain_cfg.query,
            max_points=m,
            image_size=image_size,
        )
        target_o = _to_original(target_c, batch["target_size"], image_size)
        source_o = _to_original(source_c, batch["source_size"], image_size)
        conf = conf.reshape(len(conf), -1)
        for b in np.flatnonzero(batch["valid"]):
            examples += 1
            cells = np.flatnonzero(keep[b])
            cells = cells[np.argsort(-conf[b, cells], kind="stable")]
            if len(cells) < max(selftrain_cfg.min_pseudo_points, 1):
                continue
            n = len(cells)
            rows["index"].append(int(batch["index"][b]))
            for key, points in (("source_keypoints", source_o), ("target_keypoints", target_o)):
                padded = np.zeros((m, 2), np.float32)
                padded[:n] = points[b, cells]
                rows[key].append(padded)
            c = np.zeros(m, np.float32)
            c[:n] = conf[b, cells]
            rows["confidence"].append(c)
            rows["mask"].append(np.arange(m) < n)
            confidences.append(conf[b, cells])
            if "dense_correspondence" in batch:
                dist = truth_distance(
                    target_o[b, cells],
                    source_o[b, cells],
                    batch["target_size"][b],
                    batch["dense_correspondence"][b],
                    batch["dense_correspondence_mask"][b],
                )
                original_box = batch["source_bbox_original"][b]
                side = max(original_box[2] - original_box[0], original_box[3] - original_box[1])
                rel_errors.append(dist / side)
    pseudo = {
        "index": np.asarray(rows["index"], np.int64),
        "source_keypoints": np.asarray(rows["source_keypoints"], np.float32).reshape(-1, m, 2),
        "target_keypoints": np.asarray(rows["target_keypoints"], np.float32).reshape(-1, m, 2),
        "confidence": np.asarray(rows["confidence"], np.float32).reshape(-1, m),
        "mask": np.asarray(rows["mask"], bool).reshape(-1, m),
    }
    return pseudo, _statistics(pseudo, examples, confidences, rel_errors, selftrain_cfg.tau)


def _statistics(pseudo, examples, confidences, rel_errors, tau) -> dict:
    conf = np.concatenate(confidences) if confidences else np.zeros(0, np.float32)
    points = int(pseudo["mask"].sum())
    pairs = len(pseudo["index"])
    histogram, edges = np.histogram(conf, bins=10, range=(0.0, 1.0))
    stats = {
        "pairs_annotated": examples,
        "pairs": pairs,
        "points": points,
        "points_per_pair": points / pairs if pairs else 0.0,
        "mean_confidence": float(conf.mean()) if points else None,
        "tau": tau,
        "confidence_histogram": {"edges": edges.round(2).tolist(), "counts": histogram.tolist()},
    }
    if rel_errors:
        err = np.concatenate(rel_errors)
        known = err[~np.isnan(err)]
        stats["points_with_truth"] = int(known.size)
        for alpha in (0.05, 0.1):
            value = float(np.mean(known <= alpha) * 100) if known.size else None
            stats[f"precision@{alpha:g}"] = value
    return stats


def save(directory: Path, pseudo: dict[str, np.ndarray], stats: dict) -> None:
    """Writes the pseudo labels and their statistics; the arrays appear only once complete."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (PSEUDO_FILE + ".tmp.npz")
    np.savez(tmp, **pseudo)
    (directory / STATS_FILE).write_text(json.dumps(stats, indent=1))
    os.replace(tmp, directory / PSEUDO_FILE)


def load(directory: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Reads what `save` wrote; a missing or damaged file gets one clear error."""
    path = directory / PSEUDO_FILE
    try:
        with np.load(path) as f:
            pseudo = {
                k: f[k]
                for k in ("index", "source_keypoints", "target_keypoints", "confidence", "mask")
            }
        stats = json.loads((directory / STATS_FILE).read_text())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise RuntimeError(
            f"The pseudo labels in {directory} are missing or damaged ({e}); delete that folder "
            "and rerun to annotate again."
        ) from e
    n = len(pseudo["index"])
    if any(len(v) != n for v in pseudo.values()):
        raise RuntimeError(
            f"The pseudo labels in {path} are cut short; delete {directory} and rerun."
        )
    return pseudo, stats
