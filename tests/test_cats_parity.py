"""CATs against the official model (compact fixture), plus model behaviour on a tiny config.

The fixture tests/fixtures/cats_depth1_seed0_compact.npz comes from the shared parity fixture
cats_depth1_seed0.npz (official CATs, depth 1, seeded weights; see make_cats_compact.py). The
weights are regenerated with our seeded_weights and checked against the fixture's sha256.
Tolerances are the fixture README's (section 6).
"""

import hashlib
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from matchme_jax.convert import cats_from_torch
from matchme_jax.models import CATs, build_model
from matchme_jax.models.batchnorm import BatchNorm
from matchme_jax.testing.seeded_weights import fixture_state_dict

pytestmark = pytest.mark.full_optimization  # compares with the official code's outputs

FIXTURE = Path(__file__).parent / "fixtures" / "cats_depth1_seed0_compact.npz"
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
    return cats_from_torch(state_dict)


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
    assert len(state_dict) == 674  # 362 parameters + 312 BatchNorm buffers


def test_a_weight_digest_mismatch_raises():
    fake = {
        "meta/spec_keys": np.array(["proj.0.weight"]),
        "meta/spec_shapes": np.asarray("[[4, 3]]"),
        "meta/seed": np.asarray(0),
        "meta/params_sha256": np.asarray("0" * 64),
    }
    with pytest.raises(RuntimeError, match="sha256"):
        fixture_state_dict(fake)


def _flow_errors(flow, ref):
    err = np.abs(np.asarray(flow, np.float64) - ref)
    return err.max(), err.mean(), (err <= 1e-3).mean()


def _intermediate_errors(inter, fixture):
    """Relative errors (max abs error / max abs value of the full tensor) in forward order."""
    compact = json.loads(str(fixture["meta/compact_json"]))
    ours = {}
    channels = compact["feat_channels"]
    for i, feat in enumerate(inter["source_feats"][0]):
        ours[f"source_feat/{i}"] = feat[..., :channels]
    stride = compact["corr_source_stride"]
    ours["corr_raw"] = inter["corr_raw"][0][:, :, ::stride, :]
    ours["corr_mnn"] = inter["corr_mnn"][0][:, :, ::stride, :]
    ours["refined_corr"] = inter["refined_corr"][0][:, :: compact["refined_source_stride"], :]
    return {
        name: float(
            np.abs(np.asarray(value, np.float64) - fixture[f"inter/{name}"]).max()
            / fixture[f"scale/{name}"]
        )
        for name, value in ours.items()
    }


def test_float32_matches_the_official_flow_and_intermediates(converted, images, fixture):
    model, variables = converted
    run = jax.jit(lambda v, s, t: model.apply(v, source=s, target=t, mutable=["intermediates"]))
    flow, state = run(variables, *images)
    errors = _intermediate_errors(state["intermediates"], fixture)
    bad = {name: err for name, err in errors.items() if not err <= INTERMEDIATE_RTOL}
    assert not bad, f"intermediates differ, first at {next(iter(bad))}: {bad}"
    max_err, mean_err, within = _flow_errors(flow, fixture["output/flow"])
    assert flow.shape == (2, 16, 16, 2)
    assert max_err <= 2e-3 and mean_err <= 1e-4 and within >= 0.99, (max_err, mean_err, within)


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


# ---- behaviour on a tiny custom backbone (64 x 64 images) ----

TINY = dict(
    name="cats",
    backbone="custom",
    backbone_blocks=(1, 1, 2),
    backbone_width=16,
    hyperpixel_ids=(0, 2, 3, 4),
    feature_size=8,
    feature_proj_dim=32,
    num_heads=4,
)


def _tiny_model(**overrides):
    return build_model(ml_collections.ConfigDict({**TINY, **overrides}))


@pytest.fixture(scope="module")
def tiny():
    model = _tiny_model()
    k1, k2 = jax.random.split(jax.random.key(0))
    source = jax.random.normal(k1, (2, 64, 64, 3))
    target = jax.random.normal(k2, (2, 64, 64, 3))
    # The rbg generator compiles about twice as fast as threefry on CPU.
    key = jax.random.key(3, impl="rbg")
    variables = jax.jit(lambda k, s, t: model.init(k, source=s, target=t))(key, source, target)
    return model, variables, source, target


@pytest.fixture(scope="module")
def tiny_outputs(tiny):
    """Every forward variant in one jit (XLA shares the identical parts; CPU compiles are slow)."""
    model, variables, source, target = tiny
    frozen = model.clone(bn_mode="frozen")

    def outputs(v, s, t):
        return {
            "eval": model.apply(v, source=s, target=t),
            "correspondence": model.apply(v, source=s, target=t, method=CATs.correspondence),
            "train": model.apply(v, source=s, target=t, train=True, mutable=["batch_stats"]),
            "frozen": frozen.apply(v, source=s, target=t, train=True, mutable=["batch_stats"]),
        }

    return jax.jit(outputs)(variables, source, target)


def test_tiny_model_param_tree(tiny):
    _, variables, _, _ = tiny
    params = variables["params"]
    assert set(params) == {"backbone", "decoder", "x_normal", "y_normal"} | {
        f"proj_{i}" for i in range(4)
    }
    assert set(variables["batch_stats"]) == {"backbone"}
    np.testing.assert_allclose(params["x_normal"], np.linspace(-1, 1, 8), atol=1e-7)
    assert params["decoder"]["pos_embed_x"].shape == (4, 8, 48)


def test_backbone_is_built_only_up_to_the_last_hyperpixel():
    model = _tiny_model(hyperpixel_ids=(0, 2))
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda s: model.init(jax.random.key(0), source=s, target=s), x)
    assert set(shapes["params"]["backbone"]) == {"conv1", "bn1", "layer1_0", "layer2_0"}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_keeps_float32_params_and_outputs(tiny, dtype):
    _, variables, source, target = tiny
    model = _tiny_model(dtype=dtype)
    shapes = jax.eval_shape(
        lambda s, t: model.init(jax.random.key(0), source=s, target=t), source, target
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    out = jax.eval_shape(
        lambda v, s, t: model.apply(
            v, source=s, target=t, train=True, mutable=["batch_stats"], method=CATs.correspondence
        ),
        variables,
        source,
        target,
    )
    assert out[0]["flow"].dtype == out[0]["confidence"].dtype == jnp.float32


def test_tiny_model_eval_and_train(tiny, tiny_outputs):
    _, variables, _, _ = tiny
    flow = tiny_outputs["eval"]
    assert flow.shape == (2, 8, 8, 2) and np.all(np.isfinite(flow))
    flow_train, updates = tiny_outputs["train"]
    assert flow_train.shape == (2, 8, 8, 2) and np.all(np.isfinite(flow_train))
    assert not np.allclose(flow_train, flow)  # batch statistics, not the running ones
    old = variables["batch_stats"]["backbone"]["layer3_1"]["bn2"]["var"]
    new = updates["batch_stats"]["backbone"]["layer3_1"]["bn2"]["var"]
    assert not np.allclose(old, new)


def test_correspondence_gives_flow_confidence_and_refined_corr(tiny_outputs):
    out = tiny_outputs["correspondence"]
    np.testing.assert_allclose(out["flow"], tiny_outputs["eval"], atol=1e-6)
    assert out["confidence"].shape == (2, 8, 8) and out["refined_corr"].shape == (2, 64, 64)
    probs = jax.nn.softmax(out["refined_corr"] / 0.02, axis=1)
    np.testing.assert_allclose(out["confidence"], probs.max(axis=1).reshape(2, 8, 8), rtol=1e-5)


def test_identity_aggregator_init_passes_the_filtered_correlation_through(tiny):
    """aggregator_init="identity": the untrained refined correlation is the mean over levels of
    the mutual-NN filtered correlation, nearest-neighbour matching of the hyperpixels."""
    _, _, source, target = tiny
    model = _tiny_model(aggregator_init="identity")
    variables = model.init(jax.random.key(3), source=source, target=target)
    assert not np.any(variables["params"]["decoder"]["proj"]["kernel"])
    out, inter = model.apply(
        variables,
        source=source,
        target=target,
        method=CATs.correspondence,
        mutable=["intermediates"],
    )
    corr_mnn = inter["intermediates"]["corr_mnn"][0]  # [B, L, S, T]
    np.testing.assert_allclose(out["refined_corr"], corr_mnn.mean(axis=1), rtol=1e-6, atol=1e-6)


def test_official_bn_mode_updates_running_stats_source_then_target(tiny, tiny_outputs):
    _, variables, source, target = tiny
    init = variables["batch_stats"]["backbone"]["bn1"]
    mean, var = np.asarray(init["mean"], np.float64), np.asarray(init["var"], np.float64)
    kernel = variables["params"]["backbone"]["conv1"]["kernel"]
    for images in (source, target):  # source first, then target; separate statistics
        x = jax.lax.conv_general_dilated(
            images,
            kernel,
            (2, 2),
            ((3, 3), (3, 3)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision="highest",
        )
        x = np.asarray(x, np.float64).reshape(-1, 16)
        mean = 0.9 * mean + 0.1 * x.mean(0)
        var = 0.9 * var + 0.1 * x.var(0, ddof=1)  # unbiased in the running average
    got = tiny_outputs["train"][1]["batch_stats"]["backbone"]["bn1"]
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["var"], var, rtol=1e-5)


def test_frozen_bn_mode_always_uses_running_stats(tiny, tiny_outputs):
    _, variables, _, _ = tiny
    flow, updates = tiny_outputs["frozen"]
    np.testing.assert_allclose(flow, tiny_outputs["eval"], atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])


def test_freeze_backbone_stops_gradients_at_the_features(tiny):
    """Directional derivative of the flow along the backbone parameters.

    Forward mode is cheaper to compile here than a full backward pass; a zero JVP in every
    direction means a zero gradient, the same linear map transposed.
    """
    model, variables, source, target = tiny
    params = variables["params"]
    direction = jax.tree.map(jnp.ones_like, params["backbone"])

    def sensitivity(freeze):
        variant = model.clone(freeze_backbone=freeze)

        def flow(backbone):
            v = {
                "params": {**params, "backbone": backbone},
                "batch_stats": variables["batch_stats"],
            }
            return variant.apply(v, source=source, target=target)

        _, tangent = jax.jvp(flow, (params["backbone"],), (direction,))
        return jnp.abs(tangent).sum()

    sizes = jax.jit(lambda: {freeze: sensitivity(freeze) for freeze in (True, False)})()
    assert sizes[True] == 0.0
    assert sizes[False] > 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=5), "num_heads=5"),
        (dict(hyperpixel_ids=(0, 4, 2)), "strictly increasing"),
        (dict(hyperpixel_ids=(0, 5)), "[0, 4]"),
        (dict(hyperpixel_ids=()), "empty"),
        (dict(backbone="vgg16"), "backbone='vgg16'"),
        (dict(backbone_blocks=(1, 0)), "backbone_blocks"),
        (dict(feature_proj_dim=33, num_heads=1), "even"),
        (dict(bn_mode="train"), "bn_mode"),
        (dict(dtype="int8"), "dtype"),
        (dict(beta=0.0), "beta"),
        (dict(aggregator_init="zeros"), "aggregator_init"),
    ],
)
def test_invalid_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match="invalid CATs config") as err:
        _tiny_model(**overrides)
    assert message in str(err.value)


def test_build_model_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="unknown model name 'dino'"):
        build_model(ml_collections.ConfigDict({**TINY, "name": "dino"}))


def test_images_must_be_nhwc(tiny):
    model, variables, source, target = tiny
    with pytest.raises(ValueError, match=r"source images must be \[B, H, W, 3\]"):
        model.apply(variables, source=source.transpose(0, 3, 1, 2), target=target)


class _TwoCalls(nn.Module):
    """One BatchNorm applied to two batches in turn, as the backbone sees source then target."""

    @nn.compact
    def __call__(self, a, b, use_running_average):
        bn = BatchNorm(name="bn")
        return bn(a, use_running_average), bn(b, use_running_average)


def test_batchnorm_has_torch_training_semantics():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, size=(2, 3, 3, 4)).astype(np.float32)
    b = rng.normal(-1.0, 0.5, size=(2, 3, 3, 4)).astype(np.float32)
    module = _TwoCalls()
    variables = module.init(jax.random.key(0), a, b, True)
    (ya, yb), updates = module.apply(variables, a, b, False, mutable=["batch_stats"])
    for x, y in ((a, ya), (b, yb)):
        flat = x.reshape(-1, 4).astype(np.float64)
        want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)  # biased variance, eps 1e-5
        np.testing.assert_allclose(np.asarray(y).reshape(-1, 4), want, atol=1e-5)
    mean, var = np.zeros(4), np.ones(4)
    for x in (a, b):
        flat = x.reshape(-1, 4).astype(np.float64)
        mean = 0.9 * mean + 0.1 * flat.mean(0)
        var = 0.9 * var + 0.1 * flat.var(0, ddof=1)
    np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(updates["batch_stats"]["bn"]["var"], var, rtol=1e-6)
    (ea, _), _ = module.apply({**variables, **updates}, a, b, True, mutable=["batch_stats"])
    want = (a - mean.astype(np.float32)) / np.sqrt(var.astype(np.float32) + 1e-5)
    np.testing.assert_allclose(ea, want, atol=1e-5)
