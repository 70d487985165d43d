"""What the annotator kept and how precise it is: counts, confidences and the tau sweep.

Precision is measured only where the pairs carry the generator's dense truth: a pseudo point is
correct at alpha when its source point lies within alpha of the source box's larger side of the
true one.
"""

import numpy as np

from matchme_jax.annotate.cells import keep_most_confident

SWEEP_TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PRECISION_ALPHAS = (0.05, 0.1)


def precision(rel_error: np.ndarray) -> dict:
    """points_with_truth and precision@alpha of points with these errors.

    Args:
      rel_error: [N] distance to the true source point in source-box sides, NaN unknown.
    Returns:
      {"points_with_truth": int, "precision@0.05": percent, "precision@0.1": percent}; the
      precisions are None without any point with truth.
    """
    known = rel_error[~np.isnan(rel_error)]
    row = {"points_with_truth": int(known.size)}
    for alpha in PRECISION_ALPHAS:
        value = float(np.mean(known <= alpha) * 100) if known.size else None
        row[f"precision@{alpha:g}"] = value
    return row


def summarize(
    pseudo: dict[str, np.ndarray],
    examples: int,
    confidences: list[np.ndarray],
    rel_errors: list[np.ndarray],
    tau: float,
) -> dict:
    """The statistics of one annotation pass's pseudo labels.

    Args:
      pseudo: the pass's arrays (`annotate_pairs`); only "index" and "mask" are read.
      examples: how many pairs were annotated, kept or not.
      confidences: per kept pair, [n] confidence of its kept points.
      rel_errors: per kept pair with truth, [n] `precision`'s rel_error of its kept points;
        empty when the pairs carry no truth (no precision then).
    """
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
        stats.update(precision(np.concatenate(rel_errors)))
    return stats


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
        row = {
            "tau": tau,
            "pairs": pairs,
            "points": points,
            "points_per_pair": points / pairs if pairs else 0.0,
        }
        row.update(precision(rel_error[keep]))
        rows.append(row)
    return rows
