"""`model.readout_window`: the soft-argmax over the source cells around the peak; and the
soft-argmax grids, which a loss that does not read the flow leaves untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config import load

from matchme_jax.models import build_model, correlation
from matchme_jax.train.state import create_train_state, make_optimizer, trains_soft_argmax_grids
from matchme_jax.train.step import make_update_fn

N = 5  # source and target grids are N x N
GRID = np.linspace(-1, 1, N).astype(np.float32)


def _split_match_with_a_far_rival() -> np.ndarray:
    """[1, S, T] correlation whose every target cell matches source cells (row 2, columns 2 and
    3) equally, and source cell (0, 0), far away, almost as well."""
    corr = np.zeros((1, N * N, N * N), np.float32)
    corr[0, 2 * N + 2] = corr[0, 2 * N + 3] = 1.0
    corr[0, 0] = 0.97
    return corr


def _read(corr, window, beta=0.05):
    gx, gy = correlation.soft_argmax(corr, GRID, GRID, beta, target_hw=(N, N), window=window)
    return np.asarray(gx)[0, 0, 0], np.asarray(gy)[0, 0, 0]


def test_the_window_reads_a_split_match_between_its_cells_and_ignores_a_far_rival():
    corr = _split_match_with_a_far_rival()
    x, y = _read(corr, window=3)
    np.testing.assert_allclose([x, y], [(GRID[2] + GRID[3]) / 2, GRID[2]], atol=1e-6)
    x_all, y_all = _read(corr, window=0)  # the official readout: pulled toward (0, 0)
    assert x_all < x - 0.1 and y_all < y - 0.1
    np.testing.assert_allclose(_read(corr, window=1), [GRID[2], GRID[2]], atol=1e-6)  # the peak


def test_a_window_that_covers_every_cell_is_the_official_readout():
    corr = np.random.default_rng(0).normal(size=(2, N * N, N * N)).astype(np.float32) * 0.05
    wide = correlation.soft_argmax(corr, GRID, GRID, 0.02, (N, N), window=2 * N - 1)
    official = correlation.soft_argmax(corr, GRID, GRID, 0.02, (N, N))
    np.testing.assert_allclose(np.asarray(wide), np.asarray(official), atol=1e-6)


def test_the_window_is_cut_at_the_border():
    corr = np.zeros((1, N * N, 1), np.float32)
    corr[0, N + 1] = 1.0  # the peak at row 1, column 1
    corr[0, 0] = 2.0  # outranked by the corner, row 0, column 0
    mask = np.asarray(correlation.peak_window(corr, (N, N), 3))
    assert np.flatnonzero(mask[0, :, 0]).tolist() == [0, 1, N, N + 1]


@pytest.mark.parametrize("window", [2, -1, 2 * 8 + 1])
def test_a_readout_window_must_be_odd_and_fit_the_grid(window):
    config = load("synthetic.py")
    config.model.readout_window = window
    with pytest.raises(ValueError, match=rf"readout_window={window}: 0 \(the official"):
        build_model(config.model)


def test_the_model_reads_its_flow_in_the_window(tiny_cats):
    config, model, variables, (source, target, _, _) = tiny_cats
    assert model.readout_window == 3  # the embedded default's
    out = jax.jit(lambda v: model.apply(v, source, target, method="correspondence"))(variables)
    n = config.model.feature_size
    for window in (3, 0):
        gx, _ = correlation.soft_argmax(
            out["refined_corr"],
            jnp.linspace(-1, 1, n),
            jnp.linspace(-1, 1, n),
            model.beta,
            (n, n),
            window=window,
        )
        want_x = (np.asarray(gx) + 1) * (n - 1) / 2 - np.arange(n)
        if window == 3:
            np.testing.assert_allclose(np.asarray(out["flow"])[..., 0], want_x, atol=1e-5)
        else:
            assert np.abs(np.asarray(out["flow"])[..., 0] - want_x).max() > 1e-3


@pytest.mark.parametrize("loss", ["cross_entropy", "epe"])
def test_only_a_loss_that_reads_the_flow_moves_the_soft_argmax_grids(tiny_cats, loss):
    config, model, variables, batch = tiny_cats
    optim = config.optim.copy_and_resolve_references()
    optim.weight_decay = 0.5  # a visible decay in three steps
    optimizer = make_optimizer(
        optim,
        total_steps=3,
        freeze_backbone=True,
        train_soft_argmax_grids=trains_soft_argmax_grids(loss),
    )
    state = create_train_state(variables, optimizer)
    update = jax.jit(make_update_fn(model, optimizer, bn_train=False, loss=loss))
    for _ in range(3):
        state, _ = update(state, *batch)
    before, after = variables["params"], state.params
    moved = np.abs(np.asarray(after["x_normal"]) - np.asarray(before["x_normal"])).max()
    if loss == "cross_entropy":  # no gradient reaches the grids: weight decay alone would act
        assert moved == 0
    else:
        assert moved > 1e-4
    proj = jax.tree.leaves(after["proj_0"])[0] - jax.tree.leaves(before["proj_0"])[0]
    assert np.abs(np.asarray(proj)).max() > 0  # the rest of the head trains either way
