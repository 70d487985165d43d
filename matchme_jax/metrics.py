"""PCK metrics, keypoint transfer and PCK thresholds, following the official CATs protocol.

Every function except `PCKAccumulator` is pure `jnp`, batched and jit-able (pass `image_size`
and `mode` as static arguments). The official protocol (CATs `test.py` and
`utils_training/utils.py`) is:

1. The model returns the flow on the TARGET feature grid pointing into the SOURCE image.
2. `flow_to_keypoints(..., mode="official")` transfers the target keypoints to the source image.
3. `pck` compares them with the ground-truth SOURCE keypoints against `alpha * threshold`,
   where the threshold is measured on the SOURCE image (`bbox_threshold` for SPair-71k,
   `img_threshold` for PF-PASCAL, `willow_cats_threshold` for PF-WILLOW).
4. The reported number is the mean of the per-pair PCK over pairs (`PCKAccumulator`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FLOW_TO_KEYPOINTS_MODES = ("official", "bilinear")
# bbox: the source box's larger side (SPair-71k); img: the image side (PF-PASCAL); bbox_kp: the
# source keypoints' extent (CATs++'s PF-WILLOW `bbox-kp`); willow_cats: the official CATs PF-WILLOW
# quirk, max(max_x, max_y) + 1 of the source keypoints.
THRESHOLDS = ("bbox", "img", "bbox_kp", "willow_cats")


def _check_last_dim(name: str, x: jax.Array, size: int) -> None:
    if x.shape[-1] != size:
        raise ValueError(f"{name} must end in a dimension of size {size}, got shape {x.shape}.")


def _check_keypoints(pred_kps: jax.Array, gt_kps: jax.Array, mask: jax.Array) -> None:
    _check_last_dim("pred_kps", pred_kps, 2)
    if pred_kps.shape != gt_kps.shape or pred_kps.shape[:-1] != mask.shape:
        raise ValueError(
            "pred_kps and gt_kps must be [B, K, 2] and mask [B, K]; got "
            f"{pred_kps.shape}, {gt_kps.shape} and {mask.shape}."
        )
    if mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be a bool array (no -1 sentinels), got dtype {mask.dtype}.")


def correct_keypoints(
    pred_kps: jax.Array,
    gt_kps: jax.Array,
    mask: jax.Array,
    threshold: jax.Array,
    alpha: float,
) -> jax.Array:
    """Which keypoints the official PCK counts as correct.

    A keypoint is correct iff it is masked in and its Euclidean distance is `<= alpha * threshold`.
    Everything is float32 as in the official code: `alpha` is rounded to float32 before the
    product (for threshold 100 and alpha 0.15 the bound is 15.000000953674316, not 15.0).

    Args:
      pred_kps: [B, K, 2] predicted (x, y) pixels.
      gt_kps: [B, K, 2] ground-truth (x, y) pixels.
      mask: [B, K] bool, True for real keypoints.
      threshold: [B] (or a scalar, broadcast) threshold before alpha, e.g. from `bbox_threshold`.
      alpha: the PCK fraction, e.g. 0.1.

    Returns:
      [B, K] bool.
    """
    _check_keypoints(pred_kps, gt_kps, mask)
    diff = pred_kps.astype(jnp.float32) - gt_kps.astype(jnp.float32)
    dist = jnp.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])
    bound = jnp.asarray(threshold, jnp.float32) * jnp.float32(alpha)
    return mask & (dist <= jnp.broadcast_to(bound, mask.shape[:1])[:, None])


def pck_counts(
    pred_kps: jax.Array,
    gt_kps: jax.Array,
    mask: jax.Array,
    threshold: jax.Array,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """Per-pair number of correct keypoints and of masked-in keypoints.

    Args: as `correct_keypoints`.

    Returns:
      (num_correct [B] int32, num_points [B] int32).
    """
    correct = correct_keypoints(pred_kps, gt_kps, mask, threshold, alpha)
    return correct.sum(axis=-1, dtype=jnp.int32), mask.sum(axis=-1, dtype=jnp.int32)


def pck(
    pred_kps: jax.Array,
    gt_kps: jax.Array,
    mask: jax.Array,
    threshold: jax.Array,
    alpha: float,
) -> jax.Array:
    """Per-pair PCK as a fraction in [0, 1] (the official `#correct / n_pts`, not in percent).

    A pair with no masked-in keypoint gets PCK 0 (the official code never sees one). Use
    `pck_counts` to get the number of points and skip such pairs when aggregating.

    Args: as `correct_keypoints`.

    Returns:
      [B] float32.
    """
    num_correct, num_points = pck_counts(pred_kps, gt_kps, mask, threshold, alpha)
    safe_points = jnp.maximum(num_points, 1).astype(jnp.float32)
    return jnp.where(num_points > 0, num_correct.astype(jnp.float32) / safe_points, 0.0)


def bbox_threshold(bbox: jax.Array) -> jax.Array:
    """The SPair-71k threshold: the longer side of the SOURCE bbox in the evaluated frame.

    Args:
      bbox: [B, 4] (x1, y1, x2, y2) pixels of the source box, already scaled to the evaluated
        (e.g. 256 x 256) frame.

    Returns:
      [B] float32.
    """
    _check_last_dim("bbox", bbox, 4)
    bbox = bbox.astype(jnp.float32)
    return jnp.maximum(bbox[..., 2] - bbox[..., 0], bbox[..., 3] - bbox[..., 1])


def img_threshold(image_size: int) -> jax.Array:
    """The PF-PASCAL threshold: the side of the square evaluated frame (256 in CATs).

    Returns:
      [] float32; `pck` broadcasts it over the batch.
    """
    return jnp.float32(image_size)


def willow_cats_threshold(kps: jax.Array, mask: jax.Array) -> jax.Array:
    """The official CATs PF-WILLOW `bbox` threshold: max(max_x, max_y) + 1 of the SOURCE kps.

    The official code takes the box of all 40 keypoint slots, so the -1 padding becomes the
    minimum of both axes and the box side is `max - (-1)`. This reproduces that quirk for real
    keypoints (which are >= 0) whatever the padding of `kps`. `bbox_kp_threshold` is the correct
    keypoint extent.

    Args:
      kps: [B, K, 2] (x, y) source keypoints.
      mask: [B, K] bool.

    Returns:
      [B] float32.
    """
    _check_keypoints(kps, kps, mask)
    masked_max = jnp.where(mask[..., None], kps.astype(jnp.float32), -jnp.inf).max(axis=1)
    return masked_max.max(axis=-1) - jnp.float32(-1.0)


def bbox_kp_threshold(kps: jax.Array, mask: jax.Array) -> jax.Array:
    """The CATs++ PF-WILLOW `bbox-kp` threshold: the longer side of the keypoints' extent.

    Args:
      kps: [B, K, 2] (x, y) source keypoints.
      mask: [B, K] bool.

    Returns:
      [B] float32.
    """
    _check_keypoints(kps, kps, mask)
    kps = kps.astype(jnp.float32)
    upper = jnp.where(mask[..., None], kps, -jnp.inf).max(axis=1)
    lower = jnp.where(mask[..., None], kps, jnp.inf).min(axis=1)
    extent = upper - lower
    return jnp.maximum(extent[..., 0], extent[..., 1])


def _upsample_weights(
    position: jax.Array, scale: np.float32, grid_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Indices and weights of `F.interpolate(bilinear, align_corners=False)` at `position`.

    `position` is in output pixels (an integer pixel index for the official lookup); the
    arithmetic follows PyTorch's float32 steps so the official numbers come out bit for bit.
    """
    source = jnp.maximum(scale * (position + jnp.float32(0.5)) - jnp.float32(0.5), 0.0)
    low = jnp.minimum(jnp.floor(source), grid_size - 1).astype(jnp.int32)
    high = jnp.minimum(low + 1, grid_size - 1)
    upper_weight = jnp.clip(source - low.astype(jnp.float32), 0.0, 1.0)
    return low, high, upper_weight


def sample_flow(flow: jax.Array, points: jax.Array, image_size: int) -> jax.Array:
    """Bilinearly upsampled flow (align_corners=False) at `points`, without upsampling all of it.

    Args:
      flow: [B, h, w, 2] in cells.
      points: [B, K, 2] (x, y) positions in pixels of the image_size x image_size frame.

    Returns:
      [B, K, 2] flow at the points, in cells.
    """
    b, h, w, _ = flow.shape
    # Static scales, rounded like torch's float32 `input_size / output_size`.
    x0, x1, wx = _upsample_weights(points[..., 0], np.float32(w) / np.float32(image_size), w)
    y0, y1, wy = _upsample_weights(points[..., 1], np.float32(h) / np.float32(image_size), h)
    batch = jnp.arange(b)[:, None]

    def row(y: jax.Array) -> jax.Array:
        left, right = flow[batch, y, x0], flow[batch, y, x1]
        return (1.0 - wx)[..., None] * left + wx[..., None] * right

    return (1.0 - wy)[..., None] * row(y0) + wy[..., None] * row(y1)


def flow_to_keypoints(
    flow: jax.Array, keypoints: jax.Array, image_size: int, mode: str = "official"
) -> jax.Array:
    """Transfers target keypoints to the source image with a flow from the target grid.

    `official` (CATs `flow2kps`): the flow is bilinearly upsampled (align_corners=False) to
    image_size x image_size and scaled by image_size / h to pixels; each keypoint is truncated
    toward 0, clamped to [0, image_size - 1], and moved by the upsampled flow at that integer
    pixel. Only the needed pixels of the upsampled flow are computed.

    `bilinear`: the same continuous field read at the keypoint itself, without truncation. The
    official lookup gives pixel p the field's value at position p (its centre sits at cell
    (p + 0.5) * h / image_size - 0.5), so the two modes agree on integer keypoints inside the
    frame. Positions beyond the outer cell centres take the border cells' value.

    Args:
      flow: [B, h, w, 2] (x, y) in feature cells, on the target grid pointing into the source.
      keypoints: [B, K, 2] (x, y) target keypoints in pixels of the image_size frame.
      image_size: side of the square evaluated frame (256 for CATs, 512 for CATs++).
      mode: "official" or "bilinear".

    Returns:
      [B, K, 2] float32 (x, y) predicted source keypoints in pixels; padded slots are computed
      too (at their clamped position) and should be ignored with the keypoint mask.
    """
    if mode not in FLOW_TO_KEYPOINTS_MODES:
        raise ValueError(f"mode must be one of {FLOW_TO_KEYPOINTS_MODES}, got {mode!r}.")
    _check_last_dim("flow", flow, 2)
    _check_last_dim("keypoints", keypoints, 2)
    if flow.ndim != 4 or keypoints.ndim != 3 or flow.shape[0] != keypoints.shape[0]:
        raise ValueError(
            "flow must be [B, h, w, 2] and keypoints [B, K, 2] with the same B; got "
            f"{flow.shape} and {keypoints.shape}."
        )
    flow = flow.astype(jnp.float32)
    keypoints = keypoints.astype(jnp.float32)
    if mode == "official":
        # `.long()` truncates toward zero before the clamp.
        keypoints = jnp.clip(jnp.trunc(keypoints), 0.0, image_size - 1.0)
    # (x, y) cell sizes in pixels; the official code multiplies by the float32 of img / h.
    cells_to_pixels = np.array([image_size / flow.shape[2], image_size / flow.shape[1]], np.float32)
    return keypoints + sample_flow(flow, keypoints, image_size) * cells_to_pixels


class PCKAccumulator:
    """Host-side (numpy) mean of per-pair PCK: overall, per category, and over categories.

    Every valid pair is counted exactly once; padded examples of the last eval batch are
    dropped through `valid`. Results are in percent. The official number is `overall`, the
    mean over pairs; `mean_over_categories` weighs every category equally.
    """

    def __init__(self, category_names: Sequence[str] | None = None) -> None:
        """Creates an empty accumulator.

        Args:
          category_names: optional names indexed by category id, used as the keys of
            `per_category`; without them the keys are the integer ids.
        """
        self._names = list(category_names) if category_names is not None else None
        self._sums: dict[int, float] = {}
        self._counts: dict[int, int] = {}

    def update(self, per_pair: np.ndarray, valid: np.ndarray, category: np.ndarray) -> None:
        """Adds a batch.

        Args:
          per_pair: [B] PCK fractions in [0, 1] (from `pck`).
          valid: [B] bool, False for padded examples (and for any pair to skip).
          category: [B] int category ids.
        """
        per_pair = np.asarray(per_pair, np.float64)
        valid = np.asarray(valid)
        category = np.asarray(category)
        if not (per_pair.shape == valid.shape == category.shape) or per_pair.ndim != 1:
            raise ValueError(
                "per_pair, valid and category must all be [B]; got "
                f"{per_pair.shape}, {valid.shape} and {category.shape}."
            )
        if valid.dtype != np.bool_:
            raise ValueError(f"valid must be a bool array, got dtype {valid.dtype}.")
        for cat in np.unique(category[valid]):
            chosen = valid & (category == cat)
            key = int(cat)
            self._sums[key] = self._sums.get(key, 0.0) + float(per_pair[chosen].sum())
            self._counts[key] = self._counts.get(key, 0) + int(chosen.sum())

    @property
    def num_pairs(self) -> int:
        """Number of pairs accumulated so far."""
        return sum(self._counts.values())

    def result(self) -> dict:
        """The accumulated means in percent.

        Returns:
          {"overall": float, "per_category": {name or id: float}, "mean_over_categories": float,
           "num_pairs": int, "pairs_per_category": {name or id: int}}.
        """
        if not self._counts:
            raise ValueError("PCKAccumulator.result() called before any valid pair was added.")
        ids = sorted(self._counts)
        means = {i: 100.0 * self._sums[i] / self._counts[i] for i in ids}
        overall = 100.0 * sum(self._sums.values()) / self.num_pairs
        return {
            "overall": overall,
            "per_category": {self._name(i): means[i] for i in ids},
            "mean_over_categories": float(np.mean([means[i] for i in ids])),
            "num_pairs": self.num_pairs,
            "pairs_per_category": {self._name(i): self._counts[i] for i in ids},
        }

    def _name(self, category_id: int) -> str | int:
        if self._names is None:
            return category_id
        if not 0 <= category_id < len(self._names):
            raise ValueError(
                f"category id {category_id} has no entry in category_names "
                f"({len(self._names)} names)."
            )
        return self._names[category_id]
