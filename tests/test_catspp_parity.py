"""CATs++ against the official model (compact fixture), plus model behaviour on a tiny config.

The fixture tests/fixtures/catspp_seed0_compact.npz comes from the shared parity fixture
catspp_seed0.npz (official ``CATsImproved``, ResNet-101, 512-px inputs, seeded weights; see
make_catspp_compact.py). The weights are regenerated with our seeded_weights and checked against
the fixture's sha256. Tolerances are the fixture README's (section 6).
"""

import hashlib
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matchme_jax.convert import catspp_from_torch
from matchme_jax.models import CATsPP
from matchme_jax.testing.seeded_weights import fixture_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "catspp_seed0_compact.npz"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
INTERMEDIATE_RTOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def state_dict(fixture):
    return fixture_state_dict(fixture)


@pytest.fixture(scope="module")
def converted(state_dict):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official key set converts without a warning
        return catspp_from_torch(state_dict)


def _normalise(u8):
    return (u8.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def images(fixture):
    return _normalise(fixture["input/source_u8"]), _normalise(fixture["input/target_u8"])


def test_uint8_inputs_renormalise_to_the_official_float_inputs(fixture, images):
    for role, nhwc in zip(("source", "target"), images, strict=True):
        nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2).astype("<f4"))
        assert hashlib.sha256(nchw.tobytes()).hexdigest() == str(fixture[f"input/{role}_sha256"])


def test_weights_are_regenerated_bit_for_bit(state_dict):
    # fixture_state_dict checked the sha256; the count is the official model's state dict.
    assert len(state_dict) == 733  # 421 parameters + 312 BatchNorm buffers


def test_the_official_state_dict_gives_the_official_config(converted):
    model, variables = converted
    assert model == CATsPP()  # every field inferred or at its official default
    assert variables["params"]["transformers_2"]["pos_embed"].shape == (1024, 128)
    assert variables["params"]["transformers_2"]["qk_conv"]["query_conv"]["kernel"].shape == (
        5,
        5,
        4,
        4,
    )


def test_bad_keys_are_listed_in_one_error(state_dict):
    bad = dict(state_dict)
    del bad["hpn_learner.transformers.1.layer.0.norm2.bias"]
    bad["hpn_learner.decoder.proj.weight"] = np.zeros((2, 2), np.float32)
    bad["hpn_learner.affinity_proj.0.0.bias"] = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="does not fit the CATs\\+\\+ model") as err:
        catspp_from_torch(bad)
    message = str(err.value)
    assert "missing keys (1): hpn_learner.transformers.1.layer.0.norm2.bias" in message
    assert "unexpected keys (1): hpn_learner.decoder.proj.weight" in message
    assert "hpn_learner.affinity_proj.0.0.bias: (64,), expected (128,)" in message


def _sliced_intermediates(inter, slices):
    """Our intermediates, cut as the compact fixture's (names as in the fixture)."""
    ours = {f"source_feat/{i}": f for i, f in enumerate(inter["source_feats"][0])}
    for name in ("source_affinity", "corr", "early_conv"):
        ours.update({f"{name}/{j}": x for j, x in enumerate(inter[name][0])})
    ours.update({f"stage_out/{j}": x for j, x in enumerate(inter["stage_out"][:2])})
    ours["refined_corr"] = inter["refined_corr"][0]
    return {name: ours[name][tuple(slice(*s) for s in spec)] for name, spec in slices.items()}


def _flow_errors(flow, ref):
    err = np.abs(np.asarray(flow, np.float64) - ref)
    return err.max(), err.mean(), (err <= 1e-3).mean()


def test_float32_matches_the_official_flow_and_intermediates(converted, images, fixture):
    model, variables = converted
    slices = json.loads(str(fixture["meta/slices_json"]))

    def run(v, s, t):
        flow, state = model.apply(v, source=s, target=t, mutable=["intermediates"])
        return flow, _sliced_intermediates(state["intermediates"], slices)

    flow, inter = jax.jit(run)(variables, *images)
    errors = {
        name: float(
            np.abs(np.asarray(value, np.float64) - fixture[f"inter/{name}"]).max()
            / fixture[f"scale/{name}"]
        )
        for name, value in inter.items()
    }
    assert len(errors) == 30 + 3 + 3 + 3 + 2 + 1
    bad = {name: err for name, err in errors.items() if not err <= INTERMEDIATE_RTOL}
    assert not bad, f"intermediates differ: {bad}"
    max_err, mean_err, within = _flow_errors(flow, fixture["output/flow"])
    assert flow.shape == (2, 32, 32, 2)
    assert max_err <= 5e-3 and mean_err <= 2e-4 and within >= 0.99, (max_err, mean_err, within)


def test_float64_matches_the_official_float64_flow(converted, images, fixture):
    model, variables = converted
    with jax.enable_x64(True):
        model64 = model.clone(dtype="float64")
        variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        run = jax.jit(lambda v, s, t: model64.apply(v, source=s, target=t))
        flow = run(variables64, *(jnp.asarray(x, jnp.float64) for x in images))
        assert flow.dtype == jnp.float64
        flow = np.asarray(flow)
    max_err, mean_err, _ = _flow_errors(flow, fixture["output/flow_float64"])
    assert max_err <= 2e-5 and mean_err <= 2e-6, (max_err, mean_err)
