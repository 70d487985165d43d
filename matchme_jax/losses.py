"""Training losses on the sparse flow targets of `matchme_jax.data.targets`."""

import jax
import jax.numpy as jnp


def official_valid_cells(gt_flow: jax.Array) -> jax.Array:
    """The official sparse mask: a cell is invalid when both flow components are exactly 0.

    Args:
      gt_flow: [B, h, w, 2] ground-truth flow.

    Returns:
      [B, h, w] bool.
    """
    return (gt_flow[..., 0] != 0) | (gt_flow[..., 1] != 0)


def endpoint_error(pred_flow: jax.Array, gt_flow: jax.Array) -> jax.Array:
    """Per-cell L2 distance between two flows, with a zero (not NaN) gradient where they agree.

    Args:
      pred_flow: [B, h, w, 2].
      gt_flow: [B, h, w, 2].

    Returns:
      [B, h, w] float32.
    """
    diff = gt_flow.astype(jnp.float32) - pred_flow.astype(jnp.float32)
    squared = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def sparse_epe(
    pred_flow: jax.Array,
    gt_flow: jax.Array,
    valid: jax.Array | None = None,
    weight: jax.Array | None = None,
) -> jax.Array:
    """The official sparse end-point error: mean L2 flow error over the valid cells of the batch.

    The mean runs over the valid cells of the WHOLE batch (not a mean of per-pair means), as in
    the official `EPE(sparse=True, mean=True)`. With `weight`, it is
    `sum(weight * epe) / sum(weight)` over the valid cells. Returns 0, with a zero gradient, when
    no cell is valid (or the valid weights sum to 0). The per-cell errors equal the official ones
    bit for bit; the float32 sum differs from torch's by a few ulps (another summation order).

    Args:
      pred_flow: [B, h, w, 2] predicted flow in cells.
      gt_flow: [B, h, w, 2] ground-truth flow in cells.
      valid: optional [B, h, w] bool; defaults to the official rule, `official_valid_cells`.
      weight: optional [B, h, w] per-cell weights (e.g. `cell_weight` from `keypoints_to_flow`).

    Returns:
      [] float32 loss.
    """
    if pred_flow.shape != gt_flow.shape or pred_flow.ndim != 4 or pred_flow.shape[-1] != 2:
        raise ValueError(
            f"pred_flow and gt_flow must both be [B, h, w, 2]; got {pred_flow.shape} and "
            f"{gt_flow.shape}."
        )
    if valid is None:
        valid = official_valid_cells(gt_flow)
    elif valid.shape != gt_flow.shape[:-1] or valid.dtype != jnp.bool_:
        raise ValueError(
            f"valid must be a [B, h, w] bool array like {gt_flow.shape[:-1]}; got "
            f"{valid.shape} {valid.dtype}."
        )
    if weight is None:
        weight = jnp.ones(valid.shape, jnp.float32)
    elif weight.shape != valid.shape:
        raise ValueError(f"weight must be [B, h, w] like {valid.shape}; got {weight.shape}.")
    epe = endpoint_error(pred_flow, gt_flow)
    weight = jnp.where(valid, weight.astype(jnp.float32), 0.0)
    total_weight = jnp.sum(weight)
    safe_total = jnp.where(total_weight > 0, total_weight, 1.0)
    return jnp.where(total_weight > 0, jnp.sum(weight * epe) / safe_total, 0.0)


def cell_cross_entropy(
    refined_corr: jax.Array, gt_flow: jax.Array, weight: jax.Array, beta: float
) -> jax.Array:
    """Cross-entropy of the beta-softmax over source cells against the true source position.

    The soft-argmax of `refined_corr` is the model's flow; the end-point error of that expectation
    rewards a model unsure of a match for predicting the middle of its candidates, which no PCK
    threshold counts as correct. This loss instead asks the distribution itself to put its mass
    on the true cell: the target of each target cell is the true source position (the cell plus
    its flow), spread over the four nearest source cells with bilinear weights. Trained so, the
    peak probability (the annotator's confidence) is the chance of the true cell, which is what
    tau thresholds. Not in the official recipe (see `config.train.loss`).

    Args:
      refined_corr: [B, S, T] the model's refined correlation (source cells S = h * w, row
        major, over target cells T = h * w).
      gt_flow: [B, h, w, 2] ground-truth flow in cells, target grid pointing into the source.
      weight: [B, h, w] per-cell weights, 0 where the cell has no truth (`cell_weight` of
        `data.targets.keypoints_to_flow`).
      beta: the model's soft-argmax temperature.

    Returns:
      [] float32: `sum(weight * cross_entropy) / sum(weight)`, 0 when no cell has weight.
    """
    b, h, w, _ = gt_flow.shape
    if refined_corr.shape != (b, h * w, h * w):
        raise ValueError(
            f"refined_corr must be [B, S, T] = {[b, h * w, h * w]} for gt_flow {gt_flow.shape}; "
            f"got {refined_corr.shape}."
        )
    xs = jnp.arange(w, dtype=jnp.float32)
    ys = jnp.arange(h, dtype=jnp.float32)
    source_x = jnp.clip(xs[None, None, :] + gt_flow[..., 0], 0.0, w - 1.0)  # [B, h, w]
    source_y = jnp.clip(ys[None, :, None] + gt_flow[..., 1], 0.0, h - 1.0)
    # Tent weights over source columns and rows: the bilinear split of a point between cells.
    weight_x = jnp.maximum(0.0, 1.0 - jnp.abs(source_x[..., None] - xs))  # [B, h, w, w]
    weight_y = jnp.maximum(0.0, 1.0 - jnp.abs(source_y[..., None] - ys))  # [B, h, w, h]
    target = (weight_y[..., :, None] * weight_x[..., None, :]).reshape(b, h * w, h * w)  # [B,T,S]
    log_prob = jax.nn.log_softmax(refined_corr.astype(jnp.float32) / beta, axis=1)  # [B, S, T]
    cross_entropy = -jnp.einsum("bts,bst->bt", target, log_prob).reshape(b, h, w)
    weight = weight.astype(jnp.float32)
    total = jnp.sum(weight)
    return jnp.where(total > 0, jnp.sum(weight * cross_entropy) / jnp.maximum(total, 1e-12), 0.0)
