"""Correlation, soft-argmax and resize ops against small NumPy references."""

import numpy as np
import pytest

from matchme_jax.models import correlation
from matchme_jax.models.cats import resize_bilinear_align_corners


def _rng():
    return np.random.default_rng(0)


def test_l2_normalize_puts_eps_inside_the_sqrt():
    f = np.array([[3.0, 4.0], [1e-4, 0.0], [0.0, 0.0]], np.float32)
    out = np.asarray(correlation.l2_normalize(f))
    want = f / np.sqrt((f.astype(np.float64) ** 2).sum(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # eps outside the sqrt would give 1e-4 / (1e-4 + 1e-6) = 0.990 instead of 0.0995.
    assert abs(out[1, 0] - 0.0995037) < 1e-6
    assert np.all(out[2] == 0)


def test_cosine_correlation_matches_numpy():
    rng = _rng()
    src = rng.normal(size=(2, 6, 5)).astype(np.float32)
    trg = rng.normal(size=(2, 7, 5)).astype(np.float32)
    out = np.asarray(correlation.cosine_correlation(src, trg))

    def unit(f):
        return f / np.sqrt((f**2).sum(-1, keepdims=True) + 1e-6)

    want = np.einsum("bsc,btc->bst", unit(src), unit(trg))
    assert out.shape == (2, 6, 7)
    np.testing.assert_allclose(out, want, atol=1e-6)


def _mnn_reference(corr):
    max_t = corr.max(axis=-1, keepdims=True)
    max_s = corr.max(axis=-2, keepdims=True)
    max_t = np.where(max_t == 0, max_t + np.float32(1e-30), max_t)
    max_s = np.where(max_s == 0, max_s + np.float32(1e-30), max_s)
    return corr * ((corr / max_t) * (corr / max_s))


def test_mutual_nn_filter_matches_numpy_without_clamp():
    corr = _rng().uniform(-1, 1, size=(2, 3, 5, 6)).astype(np.float32)
    out = np.asarray(correlation.mutual_nn_filter(corr))
    np.testing.assert_allclose(out, _mnn_reference(corr), rtol=1e-6)
    # No ReLU or clamp: where both maxima are positive a negative score stays negative.
    assert np.all(np.sign(out) == np.sign(corr))


def test_mutual_nn_filter_guards_exact_zero_maxima():
    corr = np.array(
        [[0.0, -0.5, -0.2], [0.4, 0.3, 0.1], [0.2, 0.6, 0.05]], np.float32
    )  # row 0's maximum is exactly 0
    corr[:, 2] = [0.0, -0.1, -0.3]  # column 2's maximum is exactly 0
    out = np.asarray(correlation.mutual_nn_filter(corr[None]))[0]
    want = _mnn_reference(corr)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # The 1e-30 really enters: -0.5 * (-0.5 / 1e-30) * (-0.5 / 0.6) is about -2e29.
    assert out[0, 1] < -1e29


def test_softmax_with_temperature_matches_numpy():
    x = _rng().normal(size=(2, 9, 4)).astype(np.float32) * 0.1
    out = np.asarray(correlation.softmax_with_temperature(x, beta=0.02, axis=1))
    e = np.exp((x - x.max(1, keepdims=True)).astype(np.float64) / 0.02)
    np.testing.assert_allclose(out, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)


def test_soft_argmax_is_the_expected_source_position():
    hs, ws, ht, wt = 3, 4, 2, 5
    corr = _rng().normal(size=(2, hs * ws, ht * wt)).astype(np.float32) * 0.05
    x_normal = np.linspace(-1, 1, ws).astype(np.float32)
    y_normal = np.linspace(-1, 1, hs).astype(np.float32) * 0.5  # not the x grid
    gx, gy = correlation.soft_argmax(corr, x_normal, y_normal, 0.02, target_hw=(ht, wt))
    p = np.exp((corr - corr.max(1, keepdims=True)).astype(np.float64) / 0.02)
    p /= p.sum(1, keepdims=True)
    s = np.arange(hs * ws)
    want_x = np.einsum("bst,s->bt", p, x_normal[s % ws]).reshape(2, ht, wt)
    want_y = np.einsum("bst,s->bt", p, y_normal[s // ws]).reshape(2, ht, wt)
    np.testing.assert_allclose(np.asarray(gx), want_x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gy), want_y, atol=1e-6)


def test_peak_probability_is_the_max_of_the_source_softmax():
    corr = _rng().normal(size=(2, 12, 7)).astype(np.float32) * 0.05
    out = np.asarray(correlation.peak_probability(corr, 0.02))
    p = np.asarray(correlation.softmax_with_temperature(corr, 0.02, axis=1))
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out, p.max(1))


def test_grid_to_flow_cells_and_direction():
    n = 4
    lin = np.linspace(-1, 1, n).astype(np.float32)
    gx = np.broadcast_to(lin[None, None, :], (1, n, n)).copy()
    gy = np.broadcast_to(lin[None, :, None], (1, n, n)).copy()
    np.testing.assert_allclose(np.asarray(correlation.grid_to_flow(gx, gy)), 0.0, atol=1e-6)
    # Every target cell points at source cell (x, y) = (3, 0): flow = (3 - x, 0 - y).
    flow = np.asarray(correlation.grid_to_flow(np.ones((1, n, n)), -np.ones((1, n, n))))
    ys, xs = np.mgrid[:n, :n]
    np.testing.assert_allclose(flow[0, ..., 0], 3 - xs, atol=1e-6)
    np.testing.assert_allclose(flow[0, ..., 1], -ys, atol=1e-6)


def test_grid_to_flow_unnormalises_in_float32_like_the_official_code():
    import jax

    with jax.enable_x64(True):
        g = np.full((1, 16, 16), 0.123456789012345, np.float64)
        flow = correlation.grid_to_flow(g, g)
        assert flow.dtype == np.float64
        mapped = (np.float32(g[0, 0, 0]) + np.float32(1)) * np.float32(15) / np.float32(2)
        assert np.asarray(flow)[0, 0, 0, 0] == np.float64(mapped)
        assert np.float64(mapped) != (g[0, 0, 0] + 1) * 15 / 2


def _resize_reference(x, size):
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], size, size, x.shape[3]))
    for i in range(size):
        for j in range(size):
            sy, sx = i * (h - 1) / (size - 1), j * (w - 1) / (size - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[:, i, j] = (1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1]) + fy * (
                (1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]
            )
    return out


@pytest.mark.parametrize("h, w, size", [(64, 64, 16), (7, 5, 4), (3, 3, 8)])
def test_resize_align_corners_matches_reference(h, w, size):
    x = _rng().normal(size=(2, h, w, 3)).astype(np.float32)
    out = np.asarray(resize_bilinear_align_corners(x, size))
    np.testing.assert_allclose(out, _resize_reference(x.astype(np.float64), size), atol=1e-5)
    np.testing.assert_allclose(out[:, -1, -1], x[:, -1, -1], atol=1e-6)  # corners aligned


def test_resize_is_identity_at_the_target_size():
    x = _rng().normal(size=(1, 16, 16, 2)).astype(np.float32)
    assert resize_bilinear_align_corners(x, 16) is x
