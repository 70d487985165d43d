"""sparse_epe: the official EPE fixture and hand-computed cases; cell_cross_entropy by hand."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matchme_jax.losses import cell_cross_entropy, endpoint_error, official_valid_cells, sparse_epe

FIXTURE = Path(__file__).parent / "fixtures" / "eval_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _torch_cpu_sum(values: np.ndarray) -> np.float32:
    """float32 sum of a 1-D array in the order of torch's AVX2 CPU kernel (8 lanes x 4 rows,
    rows cascaded in chunks of 16), which produced the fixture's loss."""
    lanes, ilp = 8, 4
    vectors = values[: len(values) // lanes * lanes].reshape(-1, lanes)
    rows = vectors[: len(vectors) // ilp * ilp].reshape(-1, ilp, lanes)
    levels = np.zeros((4, ilp, lanes), np.float32)
    i = 0
    while i + 16 <= len(rows):
        for _ in range(16):
            levels[0] += rows[i]
            i += 1
        for level in range(1, 4):
            levels[level] += levels[level - 1]
            levels[level - 1] = 0
            if i & (0xF << (4 * level)):
                break
    for row in rows[i:]:
        levels[0] += row
    partial = levels[0] + levels[1] + levels[2] + levels[3]
    for vector in vectors[len(rows) * ilp :]:
        partial[0] += vector
    lanes_sum = partial[0] + partial[1] + partial[2] + partial[3]
    total = np.float32(0)
    for value in values[len(vectors) * lanes :]:
        total = np.float32(total + value)
    for value in lanes_sum:
        total = np.float32(total + value)
    return total


@pytest.mark.parametrize("prefix", ["epe", "epe32"])
def test_matches_official_fixture(ref, prefix):
    pred, gt, loss = ref[f"{prefix}/pred"], ref[f"{prefix}/gt"], ref[f"{prefix}/loss"]
    valid = official_valid_cells(gt)
    np.testing.assert_array_equal(valid, ref[f"{prefix}/valid"])
    # The per-cell errors and the mask are exact: summed in torch's order they give the loss bit
    # for bit.
    errors = np.asarray(endpoint_error(pred, gt))[np.asarray(valid)]
    assert _torch_cpu_sum(errors) / np.float32(errors.size) == loss
    # XLA sums in another order (which also changes under jit): a few float32 ulps.
    ours = jax.jit(sparse_epe)(pred, gt)
    assert ours.dtype == jnp.float32 and ours.shape == ()
    np.testing.assert_allclose(ours, loss, rtol=1e-6)


def _two_pairs():
    gt = np.zeros((2, 2, 2, 2), np.float32)
    pred = np.zeros_like(gt)
    gt[0, 0, 0] = [3.0, 0.0]  # pair 0: one valid cell, error 4 (pred at -1, 0)
    pred[0, 0, 0] = [-1.0, 0.0]
    gt[1, 0, :] = [[0.0, 1.0], [1.0, 0.0]]  # pair 1: three valid cells, error 2 each
    gt[1, 1, 0] = [1.0, 1.0]
    pred[1, 0, :] = [[0.0, 3.0], [-1.0, 0.0]]
    pred[1, 1, 0] = [1.0, 3.0]
    pred[1, 1, 1] = [5.0, 5.0]  # invalid cell (gt = 0): ignored
    return jnp.asarray(pred), jnp.asarray(gt)


def test_mean_runs_over_the_cells_of_the_whole_batch():
    pred, gt = _two_pairs()
    # (4 + 2 + 2 + 2) / 4 cells, not the mean of the per-pair means (4 + 2) / 2.
    np.testing.assert_allclose(sparse_epe(pred, gt), 2.5)


def test_weights_and_explicit_valid():
    pred, gt = _two_pairs()
    weight = jnp.zeros((2, 2, 2)).at[0, 0, 0].set(3.0).at[1, 0, 0].set(1.0).at[1, 1, 1].set(9.0)
    # The cell (1, 1, 1) has weight 9 but is invalid: (3 * 4 + 1 * 2) / 4.
    np.testing.assert_allclose(sparse_epe(pred, gt, weight=weight), 3.5)
    valid = jnp.zeros((2, 2, 2), bool).at[1, 1, 1].set(True)
    np.testing.assert_allclose(sparse_epe(pred, gt, valid=valid), np.hypot(5.0, 5.0), rtol=1e-6)


def test_no_valid_cell_gives_zero_loss_and_zero_gradient():
    pred = jnp.ones((1, 2, 2, 2))
    gt = jnp.zeros((1, 2, 2, 2))
    loss, grad = jax.value_and_grad(sparse_epe)(pred, gt)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))
    weight = jnp.zeros((1, 2, 2))
    loss, grad = jax.value_and_grad(sparse_epe)(pred, pred + 1.0, weight=weight)
    assert loss == 0.0 and np.all(np.isfinite(grad))


def test_gradient_is_finite_where_prediction_equals_target():
    gt = jnp.ones((1, 2, 2, 2))
    pred = gt.at[0, 0, 0].set([0.0, 1.0])  # one cell off by 1, the others exact
    grad = jax.jit(jax.grad(sparse_epe))(pred, gt)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0, 0, 0], [-0.25, 0.0])
    np.testing.assert_array_equal(grad[0, 1], np.zeros((2, 2)))


def test_rejects_bad_input():
    flow = jnp.zeros((1, 2, 2, 2))
    with pytest.raises(ValueError, match="pred_flow and gt_flow"):
        sparse_epe(flow, jnp.zeros((1, 2, 3, 2)))
    with pytest.raises(ValueError, match="valid"):
        sparse_epe(flow, flow, valid=jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="weight"):
        sparse_epe(flow, flow, weight=jnp.ones((2, 2)))


def _log_softmax_over_sources(corr: np.ndarray, beta: float) -> np.ndarray:
    """[B, S, T] log of the beta-softmax over the source axis, in float64."""
    logits = corr.astype(np.float64) / beta
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_cross_entropy_by_hand():
    """Integer flows put the whole target on one source cell; a half-cell flow splits it in two;
    cells without weight do not count; the result is the weighted mean over cells."""
    rng = np.random.default_rng(0)
    b, n, beta = 2, 3, 0.1
    corr = rng.normal(size=(b, n * n, n * n)).astype(np.float32)
    flow = np.zeros((b, n, n, 2), np.float32)
    flow[0, 0, 0] = (2.0, 1.0)  # target (x 0, y 0) -> source (2, 1): cell 1 * 3 + 2 = 5
    flow[0, 1, 2] = (-1.5, 0.0)  # target (x 2, y 1) -> source x 0.5: cells 3 and 4, half each
    flow[1, 2, 1] = (0.0, -5.0)  # clipped onto the grid: source (1, 0), cell 1
    weight = np.zeros((b, n, n), np.float32)
    weight[0, 0, 0], weight[0, 1, 2], weight[1, 2, 1] = 1.0, 2.0, 0.5
    log_prob = _log_softmax_over_sources(corr, beta)
    expected = (
        1.0 * -log_prob[0, 5, 0]
        + 2.0 * -0.5 * (log_prob[0, 3, 5] + log_prob[0, 4, 5])
        + 0.5 * -log_prob[1, 1, 7]
    ) / 3.5
    loss = cell_cross_entropy(jnp.asarray(corr), jnp.asarray(flow), jnp.asarray(weight), beta)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_cross_entropy_is_small_for_a_confident_right_model_and_zero_without_cells():
    n = 4
    flow = np.zeros((1, n, n, 2), np.float32)  # every target cell matches the same source cell
    right = np.full((1, n * n, n * n), -1.0, np.float32)
    right[:, np.arange(n * n), np.arange(n * n)] = 1.0
    weight = np.ones((1, n, n), np.float32)
    assert float(cell_cross_entropy(jnp.asarray(right), jnp.asarray(flow), weight, 0.02)) < 1e-6
    uniform = np.zeros_like(right)
    np.testing.assert_allclose(
        float(cell_cross_entropy(jnp.asarray(uniform), jnp.asarray(flow), weight, 0.1)),
        np.log(n * n),
        rtol=1e-6,
    )
    zero = cell_cross_entropy(jnp.asarray(right), jnp.asarray(flow), 0 * weight, 0.1)
    grad = jax.grad(lambda c: cell_cross_entropy(c, jnp.asarray(flow), 0 * weight, 0.1))(
        jnp.asarray(right)
    )
    assert float(zero) == 0.0 and not np.any(np.asarray(grad))


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="refined_corr must be"):
        cell_cross_entropy(jnp.zeros((1, 9, 4)), jnp.zeros((1, 3, 3, 2)), jnp.ones((1, 3, 3)), 0.1)
