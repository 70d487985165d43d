"""`clamp_correlation`: negative similarities are zeroed before the mutual-NN filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config import load

from matchme_jax.models import build_model, correlation
from matchme_jax.models.correlation import mutual_nn_filter

# One row whose best similarity is barely positive while the rest are negative: the official
# filter divides by that maximum.
NEAR_ZERO_ROW = jnp.array([[[1e-4, -0.5, -0.3], [0.9, 0.2, 0.1], [0.5, 0.8, -0.2]]])


def test_the_official_filter_explodes_where_a_row_peaks_near_zero():
    assert float(jnp.abs(mutual_nn_filter(NEAR_ZERO_ROW)).max()) > 100.0


def test_clamped_the_filter_stays_in_unit_range():
    filtered = mutual_nn_filter(jnp.maximum(NEAR_ZERO_ROW, 0.0))
    assert float(filtered.min()) >= 0.0 and float(filtered.max()) <= 1.0


def _intermediates(clamp: bool, monkeypatch):
    config = load("synthetic.py:tiny")
    config.model.clamp_correlation = clamp
    model = build_model(config.model)
    size = config.dataset.image_size
    source = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    target = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    variables = model.init(jax.random.key(0), source, target)
    # A random tiny backbone's similarities are all positive; shifted down, many are negative.
    cosine = correlation.cosine_correlation
    monkeypatch.setattr(correlation, "cosine_correlation", lambda s, t: cosine(s, t) - 0.9)
    _, state = model.apply(variables, source, target, mutable=["intermediates"])
    inter = state["intermediates"]
    raw, filtered = np.asarray(inter["corr_raw"][0]), np.asarray(inter["corr_mnn"][0])
    assert (raw < 0).any() and (raw > 0).any()
    return raw, filtered


@pytest.mark.parametrize("clamp", [True, False])
def test_the_model_filters_the_clamped_correlation_only_when_asked(clamp, monkeypatch):
    raw, filtered = _intermediates(clamp, monkeypatch)
    expected = mutual_nn_filter(jnp.maximum(raw, 0.0) if clamp else jnp.asarray(raw))
    np.testing.assert_allclose(filtered, expected, rtol=1e-5, atol=1e-6)


def test_off_in_the_official_configs():
    assert build_model(load("spair.py").model).clamp_correlation is False
