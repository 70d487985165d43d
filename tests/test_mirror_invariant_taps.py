"""`mirror_invariant_taps`: each grid tap is the maximum over the image and its mirror image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config import load

from matchme_jax.models import build_model


@pytest.fixture(scope="module")
def models():
    """(plain, mirror-invariant) tiny CATs sharing one set of parameters."""
    config = load("synthetic.py:tiny")  # the embedded default: mirror-invariant taps
    config.model.mirror_invariant_taps = False
    plain = build_model(config.model)
    config.model.mirror_invariant_taps = True
    invariant = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3))
    variables = plain.init(jax.random.key(0), images, images)
    # The option adds no parameter: the plain model's weights load unchanged.
    assert jax.tree.structure(variables) == jax.tree.structure(
        invariant.init(jax.random.key(0), images, images)
    )
    return plain, invariant, variables, size


def _source_taps(model, variables, source):
    _, state = model.apply(variables, source, jnp.zeros_like(source), mutable=["intermediates"])
    (taps,) = state["intermediates"]["source_feats"]
    return [np.asarray(t) for t in taps]


def _images(size):
    return jax.random.normal(jax.random.key(1), (2, size, size, 3))


def test_taps_are_the_maximum_over_both_orientations(models):
    plain, invariant, variables, size = models
    images = _images(size)
    straight = _source_taps(plain, variables, images)
    mirrored = _source_taps(plain, variables, jnp.flip(images, axis=2))
    for got, a, b in zip(
        _source_taps(invariant, variables, images), straight, mirrored, strict=True
    ):
        np.testing.assert_allclose(got, np.maximum(a, np.flip(b, axis=2)), rtol=1e-5, atol=1e-5)


def test_a_mirrored_image_has_the_mirrored_taps(models):
    plain, invariant, variables, size = models
    images = _images(size)
    flipped = jnp.flip(images, axis=2)
    for a, b in zip(
        _source_taps(invariant, variables, images),
        _source_taps(invariant, variables, flipped),
        strict=True,
    ):
        np.testing.assert_allclose(b, np.flip(a, axis=2), rtol=1e-5, atol=1e-5)
    # Without the option a part and its mirror image are described differently.
    a, b = _source_taps(plain, variables, images)[-1], _source_taps(plain, variables, flipped)[-1]
    assert not np.allclose(b, np.flip(a, axis=2), rtol=1e-3, atol=1e-3)
