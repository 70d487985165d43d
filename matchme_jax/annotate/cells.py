"""Cell geometry and selection: which teacher cells become pseudo keypoint pairs.

Every target feature cell gives one candidate pair: its centre in the target and the point its
flow reaches in the source. A cell is kept when it passes the query, canvas and (optional)
round-trip rules (`candidate_cells`) and its confidence clears tau (`keep_most_confident`).
"""

import jax.numpy as jnp
import numpy as np

from matchme_jax import metrics

# Where the teacher is asked: target cells inside the target box, every cell, or (a diagnostic:
# it reads the unlabeled pairs' hidden truth) the pair's own annotated target keypoints.
QUERIES = ("bbox", "all", "true_keypoints")


def _stride(h: int, w: int, image_size: int) -> np.ndarray:
    """(x, y) size of one feature cell in canvas pixels, float32."""
    return np.array([image_size / w, image_size / h], np.float32)


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
    stride = _stride(h, w, image_size)
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    centres = (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5) * stride - 0.5
    target = np.broadcast_to(centres, (b, h * w, 2))
    source = target + flow.reshape(b, h * w, 2) * stride
    return target.astype(np.float32), source.astype(np.float32)


def keypoint_correspondences(
    flow: np.ndarray, confidence: np.ndarray, target_keypoints: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canvas-pixel (target point, source point) and confidence at given target points.

    The source point is the flow read at the point itself (`metrics.flow_to_keypoints`,
    "bilinear", as the evaluation transfers keypoints), the confidence that of its cell.

    Args:
      flow: [B, h, w, 2] in feature cells; confidence: [B, h, w].
      target_keypoints: [B, K, 2] (x, y) canvas pixels.
    Returns:
      target_points, source_points: [B, K, 2]; confidence: [B, K].
    """
    b, h, w, _ = flow.shape
    source = metrics.flow_to_keypoints(
        jnp.asarray(flow), jnp.asarray(target_keypoints), image_size, mode="bilinear"
    )
    stride = _stride(h, w, image_size)
    cell = np.clip((target_keypoints + 0.5) / stride, 0, [w - 1, h - 1]).astype(int)
    rows = np.arange(b)[:, None]
    return (
        target_keypoints.astype(np.float32),
        np.asarray(source, np.float32),
        confidence[rows, cell[..., 1], cell[..., 0]],
    )


def round_trip_error(
    target_points: np.ndarray, source_points: np.ndarray, backward_flow: np.ndarray, image_size: int
) -> np.ndarray:
    """How far each cell's round trip target -> source -> target ends from its start, in cells.

    The backward flow moves each forward source point as `metrics.flow_to_keypoints` moves a
    keypoint in "bilinear" mode: read between the source cells' centres, clamped at the border
    cells.

    Args:
      target_points, source_points: [B, N, 2] (x, y) canvas pixels (`cell_correspondences`).
      backward_flow: [B, h, w, 2] flow of the swapped pair (source grid -> target), in cells.
    Returns:
      [B, N] float32 distance in feature cells.
    """
    _, h, w, _ = backward_flow.shape
    returned = metrics.flow_to_keypoints(
        jnp.asarray(backward_flow), jnp.asarray(source_points), image_size, mode="bilinear"
    )
    offset = (np.asarray(returned) - target_points) / _stride(h, w, image_size)
    return np.linalg.norm(offset, axis=-1)


def candidate_cells(
    target_points: np.ndarray,
    source_points: np.ndarray,
    target_bbox: np.ndarray,
    *,
    query: str,
    image_size: int,
    round_trip: np.ndarray | None = None,
    consistency_radius: float | None = None,
    keypoint_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Cells that may become pseudo points at some tau: [B, N] bool.

    A cell is a candidate when it is queried (inside the target box for query="bbox"; for
    "true_keypoints" the points are the pair's keypoint slots, and the filled ones are queried),
    its source point lies in the canvas, and, with a `consistency_radius`, its round trip ends
    within that many cells of its start.

    Args:
      target_points, source_points: [B, N, 2] (x, y) canvas pixels, N = h*w cells (or the
        keypoint slots of query="true_keypoints").
      target_bbox: [B, 4] (x0, y0, x1, y1) canvas pixels.
      round_trip: [B, N] `round_trip_error`, needed with a consistency_radius.
      keypoint_mask: [B, N] the filled keypoint slots, needed with query="true_keypoints".
    """
    if query not in QUERIES:
        raise ValueError(f"config.selftrain.query={query!r}: use one of {QUERIES}.")
    candidates = np.all((source_points >= 0) & (source_points <= image_size - 1), axis=-1)
    if query == "bbox":
        x, y = target_points[..., 0], target_points[..., 1]
        box = target_bbox[:, None, :]
        inside = (x >= box[..., 0]) & (x <= box[..., 2]) & (y >= box[..., 1]) & (y <= box[..., 3])
        candidates &= inside
    elif query == "true_keypoints":
        candidates &= keypoint_mask
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


def to_original(points: np.ndarray, size_hw: np.ndarray, image_size: int) -> np.ndarray:
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
    Returns:
      [N] distance in original source pixels.
    """
    g = dense.shape[0]
    h, w = target_size_hw
    i = np.clip((target_points[:, 0] * g / w).astype(int), 0, g - 1)
    j = np.clip((target_points[:, 1] * g / h).astype(int), 0, g - 1)
    dist = np.linalg.norm(source_points - dense[j, i], axis=-1)
    return np.where(dense_mask[j, i], dist, np.nan)
