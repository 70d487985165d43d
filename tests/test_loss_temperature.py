"""`train.loss_temperature`, `model.confidence_temperature`: temperatures apart from `beta`."""

import jax
import numpy as np
import pytest
from test_config import load

from matchme_jax import config_checks
from matchme_jax.losses import cell_cross_entropy
from matchme_jax.models.correlation import peak_probability
from matchme_jax.train.state import create_train_state, make_optimizer
from matchme_jax.train.step import make_train_forward, make_update_fn


@pytest.fixture(scope="module")
def setup(tiny_cats):
    config, model, variables, (source, target, flow, weight) = tiny_cats
    optimizer = make_optimizer(config.optim, total_steps=1, freeze_backbone=False)
    state = create_train_state(variables, optimizer)
    forward = make_train_forward(model, bn_train=False, output="refined_corr")
    refined, _ = jax.jit(forward)(variables["params"], variables["batch_stats"], source, target)
    return model, optimizer, state, (source, target, flow, weight), refined


def test_the_step_reports_the_cross_entropy_at_its_temperature(setup):
    model, optimizer, state, (source, target, flow, weight), refined = setup
    update = make_update_fn(
        model, optimizer, bn_train=False, loss="cross_entropy", loss_temperature=0.1
    )
    _, metrics = jax.jit(update)(state, source, target, flow, weight)
    expected = cell_cross_entropy(refined, flow, weight, 0.1)
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
    at_beta = cell_cross_entropy(refined, flow, weight, model.beta)
    assert abs(float(at_beta) - float(expected)) > 1e-3


def test_a_loss_temperature_needs_the_cross_entropy_and_a_positive_value():
    config = load("synthetic.py:tiny")
    config.train.loss_temperature = 0.1
    config_checks.validate(config)  # the embedded default trains with the cross-entropy
    config.train.loss_temperature = 0.0
    with pytest.raises(ValueError, match=r"train.loss_temperature=0.0: None, or a positive"):
        config_checks.validate(config)
    config = load("spair.py")  # the official end-point error
    config.train.loss_temperature = 0.1
    with pytest.raises(ValueError, match=r"train.loss_temperature=0.1: None, or a positive"):
        config_checks.validate(config)


def test_the_confidence_is_the_peak_probability_at_its_temperature(setup):
    model, _, state, (source, target, _, _), _ = setup
    variables = state.variables()

    def confidence_at(temperature):
        at = model.clone(confidence_temperature=temperature)
        out = jax.jit(lambda v: at.apply(v, source, target, method="correspondence"))(variables)
        return np.asarray(out["confidence"]).reshape(source.shape[0], -1), out["refined_corr"]

    confidence, refined = confidence_at(0.1)
    np.testing.assert_allclose(confidence, peak_probability(refined, 0.1), rtol=1e-5)
    at_beta, refined = confidence_at(0.0)  # 0: the readout's temperature, beta
    np.testing.assert_allclose(at_beta, peak_probability(refined, model.beta), rtol=1e-5)
    assert np.abs(confidence - at_beta).max() > 1e-3
