"""The oracle annotator: every pair's own annotated keypoints, as pseudo labels.

A diagnostic (`selftrain.annotator="oracle"`), never a default: a student trained on these shows
the most any pseudo labels of these pairs can give.
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
