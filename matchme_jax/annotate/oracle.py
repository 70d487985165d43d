"""The oracle annotators: the pairs' own truth, as pseudo labels.

Diagnostics, never defaults. `selftrain.annotator="oracle"` gives every pair its annotated
keypoints: a student trained on these shows the most any pseudo labels of these pairs can give.
"oracle_dense" gives up to `max_pseudo_points` true points drawn anywhere on the object from the
generator's dense truth: the most an annotator of feature cells, which are not at keypoints,
could give.
"""

import numpy as np


def true_labels(source, max_points: int) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of `annotate_pairs` from the pairs' own keypoints, and their counts.

    Args:
      source: random-access pairs with "source_keypoints" and "target_keypoints" [K, 2].
      max_points: M; a pair keeps its first M keypoints, each with confidence 1.
    Returns:
      index [P] int64; source_keypoints, target_keypoints [P, M, 2] float32 original pixels;
      confidence [P, M] float32; mask [P, M] bool. Pairs without keypoints are left out.
    """

    def keypoints(index: int, example) -> tuple[np.ndarray, np.ndarray]:
        if "source_keypoints" not in example:
            raise ValueError(
                "selftrain.annotator='oracle' needs unlabeled pairs with annotated keypoints "
                "(selftrain.unlabeled_pairs='split' on the synthetic benchmark)."
            )
        return example["source_keypoints"], example["target_keypoints"]

    return _labels(source, max_points, "oracle", keypoints)


def dense_true_labels(source, max_points: int) -> tuple[dict[str, np.ndarray], dict]:
    """As `true_labels`, but up to M points of each pair's dense truth instead of its keypoints.

    The points are grid points of the generator's dense truth ([G, G] target points, each with
    its true source point where the part is visible in both images), M drawn at random per pair
    (seeded by the pair's position, so every run draws the same).
    """

    def dense_points(index: int, example) -> tuple[np.ndarray, np.ndarray]:
        if "dense_correspondence" not in example:
            raise ValueError(
                "selftrain.annotator='oracle_dense' needs unlabeled pairs with the generator's "
                "dense truth (the synthetic benchmark, selftrain.unlabeled_pairs='split')."
            )
        visible = np.argwhere(example["dense_correspondence_mask"])  # [V, 2] (j, i)
        chosen = np.random.default_rng(index).permutation(len(visible))[:max_points]
        j, i = visible[chosen].T
        g = example["dense_correspondence_mask"].shape[0]
        h, w = example["target_image"].shape[:2]
        target = np.stack([(i + 0.5) * w / g, (j + 0.5) * h / g], -1)
        return example["dense_correspondence"][j, i], target

    return _labels(source, max_points, "oracle_dense", dense_points)


def _labels(source, m: int, annotator: str, points_of) -> tuple[dict, dict]:
    """Every pair's first M true points, padded, as `annotate_pairs`' arrays; and their counts.

    `points_of(index, example)` gives a pair's (source, target) points, [N, 2] each; pairs with
    none are left out.
    """
    rows = {k: [] for k in ("index", "source_keypoints", "target_keypoints", "mask")}
    for index in range(len(source)):
        source_points, target_points = points_of(index, source[index])
        n = min(len(source_points), m)
        if not n:
            continue
        rows["index"].append(index)
        for key, pair_points in (
            ("source_keypoints", source_points),
            ("target_keypoints", target_points),
        ):
            padded = np.zeros((m, 2), np.float32)
            padded[:n] = pair_points[:n]
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
        "annotator": annotator,
        "pairs_annotated": len(source),
        "pairs": pairs,
        "points": points,
        "points_per_pair": points / pairs if pairs else 0.0,
        "precision@0.05": 100.0,
        "precision@0.1": 100.0,
    }
    return pseudo, stats
