"""`dilated_stages`: a ResNet stage whose stride 2 is replaced by dilation (torchvision's
`replace_stride_with_dilation`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config import load

from matchme_jax import config_checks
from matchme_jax.models import build_model
from matchme_jax.models.resnet import ResNet

BLOCKS, TAPS = (1, 1, 2), (0, 1, 2, 3, 4)  # the embedded default's stages, every tap


def _taps(dilated_stages, variables=None):
    net = ResNet(stage_blocks=BLOCKS, tap_ids=TAPS, width=4, dilated_stages=dilated_stages)
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    if variables is None:
        variables = net.init(jax.random.key(1), images, use_running_average=True)
        # Non-trivial running statistics, so that BatchNorm is no identity.
        variables = jax.tree_util.tree_map_with_path(
            lambda path, x: x + 0.1 if path[-1].key == "mean" else x, variables
        )
    return variables, net.apply(variables, images, use_running_average=True)


def test_a_dilated_last_stage_is_the_strided_one_at_twice_the_resolution():
    variables, strided = _taps(())
    _, dilated = _taps((2,), variables)  # the same parameters load unchanged
    assert [t.shape[1] for t in strided] == [16, 16, 8, 4, 4]
    assert [t.shape[1] for t in dilated] == [16, 16, 8, 8, 8]
    for a, b in zip(strided[:3], dilated[:3], strict=True):  # stages before: untouched
        np.testing.assert_array_equal(a, b)
    for a, b in zip(strided[3:], dilated[3:], strict=True):  # every other position: the same
        np.testing.assert_allclose(b[:, ::2, ::2], a, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dilated[4][:, 1::2, 1::2], dilated[4][:, ::2, ::2])  # new positions


def test_dilating_two_stages_keeps_the_resolution_of_the_first():
    variables, strided = _taps(())
    _, dilated = _taps((1, 2), variables)
    assert [t.shape[1] for t in dilated] == [16, 16, 16, 16, 16]
    np.testing.assert_allclose(dilated[2][:, ::2, ::2], strided[2], rtol=1e-5, atol=1e-5)


def test_the_cats_model_reads_dilated_stages_and_checks_them():
    config = load("synthetic.py:tiny")
    config.model.dilated_stages = (2,)
    config_checks.validate(config)
    model = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3))
    flow = model.apply(model.init(jax.random.key(0), images, images), images, images)
    assert flow.shape[-1] == 2
    for wrong in ((0,), (3,), (2, 1)):
        config.model.dilated_stages = wrong
        with pytest.raises(ValueError, match=r"dilated_stages=.*: increasing stage indices in"):
            config_checks.validate(config)
