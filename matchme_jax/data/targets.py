"""Sparse ground-truth flow on the target feature grid from keypoint pairs (official rule).

The official rule (CATs commit d01785a, `data/keypoint_to_flow.py`): target feature cell (y, x)
owns the inclusive pixel box of side `receptive_field` centred on `(jsz*x + jsz//2, jsz*y + jsz//2)`
with `jsz = image_size // feature_size`. For every masked-in TARGET keypoint k inside the box the
official code writes

    flow[cell] = (src_kps[k] - mean of the target keypoints in the box) / jsz

in ascending k, so the last keypoint in the box wins. XLA scatters with duplicate indices are
unordered, so here the winner is found with a scan over the keypoint index instead.
"""

import jax
import jax.numpy as jnp


def _cell_box_membership(
    coords: jax.Array, feature_size: int, cell_stride: int, receptive_field: int
) -> jax.Array:
    """[B, K] pixel coordinates -> [B, feature_size, K] bool: inside each cell's inclusive box."""
    centres = jnp.arange(feature_size, dtype=jnp.float32) * cell_stride + cell_stride // 2
    half = receptive_field // 2
    coords = coords[:, None, :]
    return (coords >= (centres - half)[None, :, None]) & (coords <= (centres + half)[None, :, None])


# The official mean sums a [n_pts, cells, 2] tensor over its first axis; torch's CPU kernel does
# that in chunks of 16 rows cascaded over 4 levels (a chunk's sum moves one level up after every
# 16 rows, the next level after every 256, ...), then adds the levels to the partial chunk. The
# float32 result depends on that association, so it is reproduced here row by row.
_CASCADE_LEVELS = 4
_CASCADE_CHUNK_BITS = 4


def _cascade_add(
    levels: jax.Array, value: jax.Array, is_row: jax.Array, row: jax.Array
) -> jax.Array:
    """Adds one row to torch's cascaded sum.

    Args:
      levels: [4, B, h, w, 2] partial sums, level 0 first.
      value: [B, h, w, 2] the row's value for every cell (0 outside the cell's box).
      is_row: [B] bool, whether this keypoint is a row at all (masked in).
      row: [B] int32, 1-based row number among the masked-in keypoints.

    Returns:
      [4, B, h, w, 2] updated partial sums.
    """
    is_row = is_row[:, None, None, None]
    out = [jnp.where(is_row, levels[0] + value, levels[0]), *levels[1:]]
    for level in range(1, _CASCADE_LEVELS):
        period = 1 << (_CASCADE_CHUNK_BITS * level)
        carry_up = is_row & (row % period == 0)[:, None, None, None]
        out[level] = jnp.where(carry_up, out[level] + out[level - 1], out[level])
        out[level - 1] = jnp.where(carry_up, 0.0, out[level - 1])
    return jnp.stack(out)


def keypoints_to_flow(
    src_kps: jax.Array,
    trg_kps: jax.Array,
    mask: jax.Array,
    *,
    feature_size: int,
    image_size: int,
    receptive_field: int = 35,
    weight: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The official KeypointToFlow, batched and jit-able (sizes are static).

    `valid` is box membership: a cell is valid when its box holds at least one masked-in target
    keypoint. The official loss instead treats a cell as invalid when both flow components are
    exactly 0, which also drops a covered cell whose flow happens to be exactly (0, 0);
    `losses.sparse_epe` follows the official rule unless it is given `valid`.

    Args:
      src_kps: [B, K, 2] (x, y) source keypoints in pixels of the image_size frame.
      trg_kps: [B, K, 2] (x, y) target keypoints in pixels of the image_size frame.
      mask: [B, K] bool, True for real keypoint pairs.
      feature_size: side h = w of the target feature grid (16 for CATs, 32 for CATs++).
      image_size: side of the square frame (256 for CATs, 512 for CATs++).
      receptive_field: side of each cell's box in pixels (35 in both official models).
      weight: optional [B, K] per-pair weights (e.g. pseudo-label confidences); default 1.

    Returns:
      flow: [B, h, w, 2] float32 (x, y) in cells, target grid pointing into the source; 0 where
        no keypoint covers the cell.
      valid: [B, h, w] bool, box membership.
      cell_weight: [B, h, w] float32, the weight of the keypoint that wins the cell; 0 where
        invalid.
    """
    if src_kps.shape != trg_kps.shape or src_kps.ndim != 3 or src_kps.shape[-1] != 2:
        raise ValueError(
            f"src_kps and trg_kps must both be [B, K, 2]; got {src_kps.shape} and {trg_kps.shape}."
        )
    if mask.shape != src_kps.shape[:2] or mask.dtype != jnp.bool_:
        raise ValueError(
            f"mask must be a [B, K] bool array (no -1 sentinels); got {mask.shape} {mask.dtype}."
        )
    if weight is None:
        weight = jnp.ones(mask.shape, jnp.float32)
    elif weight.shape != mask.shape:
        raise ValueError(f"weight must be [B, K] like mask {mask.shape}; got {weight.shape}.")
    if image_size % feature_size:
        raise ValueError(
            f"image_size ({image_size}) must be a multiple of feature_size ({feature_size})."
        )
    cell_stride = image_size // feature_size
    src_kps = src_kps.astype(jnp.float32)
    trg_kps = trg_kps.astype(jnp.float32)

    in_x = _cell_box_membership(trg_kps[..., 0], feature_size, cell_stride, receptive_field)
    in_y = _cell_box_membership(trg_kps[..., 1], feature_size, cell_stride, receptive_field)
    # [K, B, h, w]: keypoint k lies in cell (y, x)'s box; the scan runs over the leading K.
    inside = (in_y[:, :, None, :] & in_x[:, None, :, :] & mask[:, None, None, :]).transpose(
        3, 0, 1, 2
    )
    rows_seen = jnp.cumsum(mask, axis=1, dtype=jnp.int32)
    per_kp = (
        inside,
        mask.T,
        rows_seen.T,
        trg_kps.transpose(1, 0, 2)[:, :, None, None, :],
        src_kps.transpose(1, 0, 2)[:, :, None, None, :],
        weight.astype(jnp.float32).T[:, :, None, None],
    )

    def add_keypoint(carry, xs):
        # Ascending k, so a later keypoint overwrites the winner: the official "last one wins".
        levels, count, winner_src, winner_weight = carry
        is_in, is_row, row, trg, src, w = xs
        levels = _cascade_add(levels, jnp.where(is_in[..., None], trg, 0.0), is_row, row)
        count = count + is_in.astype(jnp.int32)
        winner_src = jnp.where(is_in[..., None], src, winner_src)
        winner_weight = jnp.where(is_in, w, winner_weight)
        return (levels, count, winner_src, winner_weight), None

    b = src_kps.shape[0]
    grid = (b, feature_size, feature_size)
    init = (
        jnp.zeros((_CASCADE_LEVELS, *grid, 2), jnp.float32),
        jnp.zeros(grid, jnp.int32),
        jnp.zeros((*grid, 2), jnp.float32),
        jnp.zeros(grid, jnp.float32),
    )
    (levels, count, winner_src, winner_weight), _ = jax.lax.scan(add_keypoint, init, per_kp)
    trg_sum = levels[0]
    for level in range(1, _CASCADE_LEVELS):
        trg_sum = trg_sum + levels[level]
    valid = count > 0
    # One division per component: XLA turns a division by a broadcast divisor into a product
    # with its reciprocal, which is not the official float32 mean bit for bit.
    safe_count = jnp.maximum(count, 1).astype(jnp.float32)
    trg_mean = jnp.stack([trg_sum[..., 0] / safe_count, trg_sum[..., 1] / safe_count], axis=-1)
    flow = jnp.where(valid[..., None], (winner_src - trg_mean) / jnp.float32(cell_stride), 0.0)
    return flow, valid, jnp.where(valid, winner_weight, 0.0)
