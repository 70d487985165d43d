"""The machine annotator: a teacher turns unlabeled pairs into pseudo keypoint pairs.

For every target feature cell the teacher predicts a source point (its flow) and a confidence
(the peak probability of its soft-argmax distribution over source cells). Cells with confidence
>= tau (inside the target box, by default) become pseudo keypoint pairs, stored in original-image
pixels so that the student's augmentation moves them exactly like ground truth.

Optionally (`selftrain.consistency_radius`), the teacher also annotates the swapped pair, and a
cell is kept only when its round trip target -> source -> target returns within that many feature
cells of where it started: a forward-backward consistency check, at twice the annotation cost.

The same annotation pass also answers what tau would have kept: the count and precision of the
pseudo points at tau = 0.1 ... 0.9 (`sweep_tau`, written by `save_tau_sweep`).
"""

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from matchme_jax import parallel

# The jitted step lives apart (no grain import); selftrain builds it as annotate.make_annotate_step.
from matchme_jax.annotate_step import make_annotate_step  # noqa: F401
from matchme_jax.data import pipeline

PSEUDO_FILE = "pseudo_labels.npz"
STATS_FILE = "stats.json"
QUERIES = ("bbox", "all")
SWEEP_TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TAU_SWEEP_FILE = "tau_sweep.json"
TAU_SWEEP_PLOT = "tau_sweep.png"


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


def round_trip_error(
    target_points: np.ndarray, source_points: np.ndarray, backward_flow: np.ndarray, image_size: int
) -> np.ndarray:
    """How far each cell's round trip target -> source -> target ends from its start, in cells.

    The backward flow is read bilinearly at the forward source point (between the source cells'
    centres, clamped at the border cells).

    Args:
      target_points, source_points: [B, N, 2] (x, y) canvas pixels (`cell_correspondences`).
      backward_flow: [B, h, w, 2] flow of the swapped pair (source grid -> target), in cells.
    Returns:
      [B, N] distance in feature cells.
    """
    b, h, w, _ = backward_flow.shape
    stride = np.array([image_size / w, image_size / h], np.float32)
    grid = (source_points + 0.5) / stride - 0.5  # position among the source cells' centres
    u = np.clip(grid[..., 0], 0, w - 1)
    v = np.clip(grid[..., 1], 0, h - 1)
    u0 = np.clip(np.floor(u).astype(int), 0, max(w - 2, 0))
    v0 = np.clip(np.floor(v).astype(int), 0, max(h - 2, 0))
    u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    rows = np.arange(b)[:, None]
    flow = (
        backward_flow[rows, v0, u0] * (1 - fu) * (1 - fv)
        + backward_flow[rows, v0, u1] * fu * (1 - fv)
        + backward_flow[rows, v1, u0] * (1 - fu) * fv
        + backward_flow[rows, v1, u1] * fu * fv
    )
    returned = source_points + flow * stride
    return np.linalg.norm((returned - target_points) / stride, axis=-1)


def candidate_cells(
    target_points: np.ndarray,
    source_points: np.ndarray,
    target_bbox: np.ndarray,
    *,
    query: str,
    image_size: int,
    round_trip: np.ndarray | None = None,
    consistency_radius: float | None = None,
) -> np.ndarray:
    """Cells that may become pseudo points at some tau: [B, h*w] bool.

    A cell is a candidate when it is queried (inside the target box for query="bbox"), its
    source point lies in the canvas, and, with a `consistency_radius`, its round trip ends
    within that many cells of its start.

    Args:
      target_points, source_points: [B, h*w, 2] (x, y) canvas pixels.
      target_bbox: [B, 4] (x0, y0, x1, y1) canvas pixels.
      round_trip: [B, h*w] `round_trip_error`, needed with a consistency_radius.
    """
    if query not in QUERIES:
        raise ValueError(f"config.selftrain.query={query!r}: use one of {QUERIES}.")
    candidates = np.all((source_points >= 0) & (source_points <= image_size - 1), axis=-1)
    if query == "bbox":
        x, y = target_points[..., 0], target_points[..., 1]
        box = target_bbox[:, None, :]
        inside = (x >= box[..., 0]) & (x <= box[..., 2]) & (y >= box[..., 1]) & (y <= box[..., 3])
        candidates &= inside
    if consistency_radius is not None:
        candidates &= round_trip <= consistency_radius
    return candidates


def keep_most_confident(
    confidence: np.ndarray, candidates: np.ndarray, *, tau: float, max_points: int
) -> np.ndarray:
    """Candidates with confidence >= tau, at most the `max_points` most confident per pair.

    Args:
      confidence, candidates: [B, N].
    Returns:
      [B, N] bool.
    """
    keep = candidates & (confidence >= tau)
    # Rank the kept cells by confidence and drop all but the first max_points.
    ranked = np.argsort(np.where(keep, -confidence, np.inf), axis=1, kind="stable")
    rank = np.empty_like(ranked)
    np.put_along_axis(rank, ranked, np.arange(confidence.shape[1])[None], axis=1)
    return keep & (rank < max_points)


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
    candidates = candidate_cells(
        target_points, source_points, target_bbox, query=query, image_size=image_size
    )
    conf = confidence.reshape(len(confidence), -1)
    return keep_most_confident(conf, candidates, tau=tau, max_points=max_points)


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
    of the kept points at 0.05 and 0.1 of the source box's larger side. `stats["tau_sweep"]`
    is what every tau of `SWEEP_TAUS` would have kept (`sweep_tau`), from this same pass.
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
    for batch in pipeline.padded_batches(
        source,
        dataset_cfg,
        batch_size=parallel.padded_batch_size(batch_size),
        extra_keys=pipeline.TRUTH_KEYS,
    ):
        out = parallel.run_on_full_batch(annotate_step, variables, pipeline.device_batch(batch))
        target_c, source_c = cell_correspondences(out["flow"], image_size)
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
        )
        conf = out["confidence"].reshape(len(out["confidence"]), -1)
        keep = keep_most_confident(conf, candidates, tau=selftrain_cfg.tau, max_points=m)
        target_o = _to_original(target_c, batch["target_size"], image_size)
        source_o = _to_original(source_c, batch["source_size"], image_size)
        for b in np.flatnonzero(batch["valid"]):
            examples += 1
            rel_error = _relative_truth_error(batch, b, target_o[b], source_o[b])
            cells_seen["confidence"].append(conf[b])
            cells_seen["candidates"].append(candidates[b])
            cells_seen["rel_error"].append(rel_error)
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
            if rel_error is not None:
                rel_errors.append(rel_error[cells])
    pseudo = {
        "index": np.asarray(rows["index"], np.int64),
        "source_keypoints": np.asarray(rows["source_keypoints"], np.float32).reshape(-1, m, 2),
        "target_keypoints": np.asarray(rows["target_keypoints"], np.float32).reshape(-1, m, 2),
        "confidence": np.asarray(rows["confidence"], np.float32).reshape(-1, m),
        "mask": np.asarray(rows["mask"], bool).reshape(-1, m),
    }
    stats = _statistics(pseudo, examples, confidences, rel_errors, selftrain_cfg.tau)
    stats["consistency_radius"] = radius
    if radius is not None:
        stats["cells_failing_round_trip"] = failed_round_trips
    stats["tau_sweep"] = sweep_tau(
        *_stacked(cells_seen),
        max_points=m,
        min_points=selftrain_cfg.min_pseudo_points,
    )
    return pseudo, stats


def true_labels(source, max_points: int) -> tuple[dict[str, np.ndarray], dict]:
    """The oracle annotator: every pair's own annotated keypoints, as pseudo labels.

    A diagnostic (`selftrain.annotator="oracle"`), never a default: a student trained on these
    shows the most any pseudo labels of these pairs can give. Returns the arrays of
    `annotate_pairs` (first `max_points` keypoints of a pair, confidence 1) and their counts.
    """
    m = max_points
    rows = {k: [] for k in ("index", "source_keypoints", "target_keypoints", "mask")}
    for i in range(len(source)):
        example = source[i]
        if "source_keypoints" not in example:
            raise ValueError(
                "selftrain.annotator='oracle' needs unlabeled pairs with annotated keypoints "
                "(selftrain.unlabeled_pairs='split' on the synthetic benchmark)."
            )
        n = min(len(example["source_keypoints"]), m)
        if not n:
            continue
        rows["index"].append(i)
        for key in ("source_keypoints", "target_keypoints"):
            padded = np.zeros((m, 2), np.float32)
            padded[:n] = example[key][:n]
            rows[key].append(padded)
        rows["mask"].append(np.arange(m) < n)
    mask = np.asarray(rows["mask"], bool).reshape(-1, m)
    pseudo = {
        "index": np.asarray(rows["index"], np.int64),
        "source_keypoints": np.asarray(rows["source_keypoints"], np.float32).reshape(-1, m, 2),
        "target_keypoints": np.asarray(rows["target_keypoints"], np.float32).reshape(-1, m, 2),
        "confidence": mask.astype(np.float32),
        "mask": mask,
    }
    points, pairs = int(mask.sum()), len(pseudo["index"])
    stats = {
        "annotator": "oracle",
        "pairs_annotated": len(source),
        "pairs": pairs,
        "points": points,
        "points_per_pair": points / pairs if pairs else 0.0,
        "precision@0.05": 100.0,
        "precision@0.1": 100.0,
    }
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


def sweep_tau(
    confidence: np.ndarray,
    candidates: np.ndarray,
    rel_error: np.ndarray,
    *,
    max_points: int,
    min_points: int,
    taus: tuple[float, ...] = SWEEP_TAUS,
) -> list[dict]:
    """What each tau would have kept from one annotation pass, by the annotator's own rules.

    Args:
      confidence: [P, N] every annotated pair's cells; candidates: [P, N] bool (`candidate_cells`);
      rel_error: [P, N] distance to the true source point in source-box sides, NaN unknown.
      max_points, min_points: selftrain.max_pseudo_points and selftrain.min_pseudo_points.
    Returns:
      One row per tau: tau, pairs, points, points_per_pair, points_with_truth, precision@0.05,
      precision@0.1 (percent of the points with truth; None without any).
    """
    rows = []
    for tau in taus:
        keep = keep_most_confident(confidence, candidates, tau=tau, max_points=max_points)
        kept_pairs = keep.sum(axis=1) >= max(min_points, 1)
        keep &= kept_pairs[:, None]
        points, pairs = int(keep.sum()), int(kept_pairs.sum())
        known = rel_error[keep]
        known = known[~np.isnan(known)]
        row = {
            "tau": tau,
            "pairs": pairs,
            "points": points,
            "points_per_pair": points / pairs if pairs else 0.0,
            "points_with_truth": int(known.size),
        }
        for alpha in (0.05, 0.1):
            value = float(np.mean(known <= alpha) * 100) if known.size else None
            row[f"precision@{alpha:g}"] = value
        rows.append(row)
    return rows


def save_tau_sweep(directory: Path, rows: list[dict]) -> None:
    """Writes `sweep_tau`'s rows as `TAU_SWEEP_FILE` and a plot `TAU_SWEEP_PLOT`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TAU_SWEEP_FILE).write_text(json.dumps(rows, indent=1))
    taus = [r["tau"] for r in rows]
    figure = Figure(figsize=(5.0, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    count_axes = figure.add_subplot()
    count_axes.plot(taus, [r["points"] for r in rows], "o-", color="tab:blue")
    count_axes.set_xlabel("tau (confidence threshold)")
    count_axes.set_ylabel("pseudo points kept", color="tab:blue")
    precision_axes = count_axes.twinx()
    precision = [np.nan if r["precision@0.1"] is None else r["precision@0.1"] for r in rows]
    precision_axes.plot(taus, precision, "s--", color="tab:orange")
    precision_axes.set_ylabel("precision@0.1 (%)", color="tab:orange")
    precision_axes.set_ylim(0.0, 100.0)
    figure.savefig(directory / TAU_SWEEP_PLOT, dpi=100)


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
