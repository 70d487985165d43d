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
import ml_collections
import numpy as np
import pytest

from matchme_jax import init_from
from matchme_jax.convert import catspp_from_torch, catspp_to_torch
from matchme_jax.models import CATsPP, build_model
from matchme_jax.models.cats import resize_bilinear_align_corners
from matchme_jax.models.conv4d import Conv4d, interpolate4d, max_pool_ceil, transpose4d
from matchme_jax.testing.seeded_weights import fixture_state_dict
from matchme_jax.train.state import param_labels

pytestmark = pytest.mark.full_optimization  # compares with the official code's outputs

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
    """The first pair only: in evaluation every op is per sample (BatchNorm uses its running
    statistics), so the second pair takes no other code path, and float64 is slow on CPU."""
    model, variables = converted
    with jax.enable_x64(True):
        model64 = model.clone(dtype="float64")
        variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        run = jax.jit(lambda v, s, t: model64.apply(v, source=s, target=t))
        flow = run(variables64, *(jnp.asarray(x[:1], jnp.float64) for x in images))
        assert flow.dtype == jnp.float64
        flow = np.asarray(flow)
    max_err, mean_err, _ = _flow_errors(flow, fixture["output/flow_float64"][:1])
    assert max_err <= 2e-5 and mean_err <= 2e-6, (max_err, mean_err)


# ---- the 4-D ops and the model's behaviour on a tiny config (64 x 64 images) ----


def test_max_pool_ceil_keeps_the_partial_last_window():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    np.testing.assert_array_equal(max_pool_ceil(x, (2, 1))[0, :, 0, 0], [1.0, 3.0, 4.0])


def test_interpolate4d_is_align_corners_bilinear_on_both_pairs_of_dims():
    x = np.random.default_rng(0).standard_normal((1, 3, 3, 2, 2, 2)).astype(np.float32)

    def reference(x):
        # Separable: the source pair, then the target pair, each an align-corners resize.
        y = resize_bilinear_align_corners(x.reshape(9, 2, 2, 2), 5).reshape(1, 3, 3, 5, 5, 2)
        y = resize_bilinear_align_corners(transpose4d(y).reshape(25, 3, 3, 2), 5)
        return transpose4d(y.reshape(1, 5, 5, 5, 5, 2))

    got, want = jax.jit(lambda x: (interpolate4d(x, 5), reference(x)))(x)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got[:, ::2, ::2, ::4, ::4], x, atol=1e-6)  # corners kept


def test_conv4d_sums_a_target_conv_and_a_source_conv_on_pooled_inputs():
    """A 1x1 kernel reduces each branch to a channel mix of the other pair's max-pool."""
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 4, 4, 2)).astype(np.float32)
    conv = Conv4d(3, kernel_size=(1, 1, 1, 1), strides=(2, 2, 1, 1), padding=(0, 0, 0, 0))
    variables = _numpy_init(jax.eval_shape(conv.init, jax.random.key(0), x))
    variables["params"]["supp_conv"]["bias"] = np.array([0.1, -0.2, 0.3], np.float32)
    p = variables["params"]
    got = np.asarray(jax.jit(conv.apply)(variables, x))
    assert got.shape == (1, 2, 2, 4, 4, 3)
    # Query branch: strided 1x1 conv over the target dims (no source pooling: stride 1).
    query = x[:, ::2, ::2] @ p["query_conv"]["kernel"][0, 0] + p["query_conv"]["bias"]
    # Source branch: its input is max-pooled 2x2 over the target dims first.
    pooled = x.reshape(1, 2, 2, 2, 2, 4, 4, 2).max(axis=(2, 4))
    supp = pooled @ p["supp_conv"]["kernel"][0, 0] + p["supp_conv"]["bias"]
    np.testing.assert_allclose(got, query + supp, atol=1e-5)


TINY = dict(
    name="catspp",
    backbone="custom",
    backbone_blocks=(1, 1, 1, 1),
    backbone_width=8,
    feature_size=4,
    qk_dim=16,
    affinity_dim=8,
    mlp_ratio=2.0,
)


def _tiny_model(**overrides):
    return build_model(ml_collections.ConfigDict({**TINY, **overrides}))


def _numpy_init(shapes):
    """Variables of the given shapes without compiling ``model.init`` (slow on CPU).

    Kernels ~ N(0, 1 / fan_in); norm scales 1, biases and BN means 0, BN variances 1, the
    soft-argmax grids linspace(-1, 1).
    """
    rng = np.random.default_rng(0)

    def leaf(path, shape):
        name = jax.tree_util.keystr(path[-1:])
        if name in ("['x_normal']", "['y_normal']"):
            return np.linspace(-1, 1, shape.shape[0], dtype=np.float32)
        if name in ("['scale']", "['var']"):
            return np.ones(shape.shape, np.float32)
        if len(shape.shape) < 2:
            return np.zeros(shape.shape, np.float32)
        fan_in = int(np.prod(shape.shape[:-1]))
        return (rng.standard_normal(shape.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def tiny():
    model = _tiny_model()
    k1, k2 = jax.random.split(jax.random.key(0))
    source = jax.random.normal(k1, (2, 64, 64, 3))
    target = jax.random.normal(k2, (2, 64, 64, 3))
    shapes = jax.eval_shape(
        lambda s, t: model.init(jax.random.key(0), source=s, target=t), source, target
    )
    return model, _numpy_init(shapes), source, target


@pytest.fixture(scope="module")
def tiny_outputs(tiny):
    """Every forward variant in one jit (XLA shares the identical parts; CPU compiles are slow)."""
    model, variables, source, target = tiny

    def outputs(v, s, t):
        rngs = {"dropout": jax.random.key(0)}
        return {
            "correspondence": model.apply(v, source=s, target=t, method=CATsPP.correspondence),
            "train": model.apply(
                v, source=s, target=t, train=True, mutable=["batch_stats"], rngs=rngs
            ),
        }

    return jax.jit(outputs)(variables, source, target)


def test_tiny_model_param_tree_splits_backbone_and_head(tiny):
    _, variables, _, _ = tiny
    params = variables["params"]
    head = {f"{m}_{j}" for m in ("early_conv", "affinity_proj", "transformers") for j in range(3)}
    assert set(params) == {"backbone", "x_normal", "y_normal"} | head
    assert set(variables["batch_stats"]) == {"backbone"}
    labels = param_labels(params)
    assert set(jax.tree.leaves(labels["backbone"])) == {"backbone"}
    assert set(jax.tree.leaves({k: v for k, v in labels.items() if k != "backbone"})) == {"head"}
    # Positional embeddings per level: one per source token (1, 2, 4 cells a side).
    assert [params[f"transformers_{j}"]["pos_embed"].shape for j in range(3)] == [
        (1, 4),
        (4, 4),
        (16, 4),
    ]


def test_tiny_model_correspondence_and_train(tiny, tiny_outputs):
    model, variables, source, target = tiny
    out = tiny_outputs["correspondence"]
    flow = out["flow"]
    assert flow.shape == (2, 4, 4, 2) and np.all(np.isfinite(flow))
    assert out["confidence"].shape == (2, 4, 4) and out["refined_corr"].shape == (2, 16, 16)
    probs = jax.nn.softmax(out["refined_corr"] / 0.02, axis=1)
    np.testing.assert_allclose(out["confidence"], probs.max(axis=1).reshape(2, 4, 4), atol=1e-4)
    flow_train, updates = tiny_outputs["train"]
    assert np.all(np.isfinite(flow_train)) and not np.allclose(flow_train, flow)
    old = variables["batch_stats"]["backbone"]["layer3_0"]["bn2"]["var"]
    assert not np.allclose(updates["batch_stats"]["backbone"]["layer3_0"]["bn2"]["var"], old)


def test_bfloat16_keeps_float32_params_and_outputs(tiny):
    _, variables, source, target = tiny
    model = _tiny_model(dtype="bfloat16")
    shapes = jax.eval_shape(
        lambda s, t: model.init(jax.random.key(0), source=s, target=t), source, target
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    out = jax.eval_shape(
        lambda v, s, t: model.apply(
            v, source=s, target=t, mutable=["intermediates"], method=CATsPP.correspondence
        ),
        variables,
        source,
        target,
    )
    assert out[0]["flow"].dtype == out[0]["confidence"].dtype == jnp.float32
    corr = out[1]["intermediates"]["corr"][0]
    assert {c.dtype for c in corr} == {jnp.dtype("bfloat16")}  # the 4-D tensors at half size


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(feature_size=6), "feature_size=6"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(backbone_blocks=(1, 1, 1)), "four stages"),
        (dict(backbone="vgg16"), "backbone='vgg16'"),
        (dict(affinity_dropout=1.0), "affinity_dropout"),
        (dict(bn_mode="train"), "bn_mode"),
        (dict(dtype="int8"), "dtype"),
        (dict(beta=0.0), "beta"),
    ],
)
def test_invalid_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match="invalid CATs\\+\\+ config") as err:
        _tiny_model(**overrides)
    assert message in str(err.value)


def test_images_of_the_wrong_size_are_refused(tiny):
    model, variables, source, target = tiny
    with pytest.raises(ValueError, match="needs 64-px images"):
        jax.eval_shape(
            lambda s, t: model.apply(variables, source=s, target=t), source[:, :32], target
        )


def test_converter_round_trip_and_init_from_an_official_file(tiny, tmp_path):
    """A tiny CATs++ -> official keys and layouts -> ``config.init_from`` -> the same variables."""
    model, variables, _, _ = tiny
    state_dict = catspp_to_torch(model, variables)
    assert state_dict["hpn_learner.transformers.2.layer.0.pos_embed"].shape == (1, 16, 1, 4)
    # The tiny ResNet's layer 3 has one block, so its level has one correlation map.
    early = state_dict["hpn_learner.early_conv.1.conv4d.0.0.query_conv.weight"]
    assert early.shape == (4, 1, 3, 3)
    # The official model also holds torchvision's unused classifier.
    state_dict["backbone.fc.weight"] = np.zeros((10, 64), np.float32)
    state_dict["backbone.fc.bias"] = np.zeros(10, np.float32)
    np.savez(tmp_path / "official.npz", **state_dict)
    config = ml_collections.ConfigDict({"model": {**TINY, "backbone_weights": None}})
    config.init_from = str(tmp_path / "official.npz")
    loaded = init_from.load_variables(config, variables)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
