"""Official PyTorch state dicts -> Flax variables, and the checkpoint file loaders.

The state dict is the complete official CATs one (674 keys) of the compact parity fixture:
parameters regenerated from their seed, BatchNorm buffers from the file.
"""

import importlib.util
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from matchme_jax import convert
from matchme_jax.convert import (
    backbone_from_torchvision,
    cats_from_torch,
    infer_cats_fields,
    load_state_dict_file,
)
from matchme_jax.convert.cats import BACKBONE_PREFIX
from matchme_jax.testing.seeded_weights import fixture_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "cats_depth1_seed0_compact.npz"
OFFICIAL_MODEL_CONFIG = dict(
    name="cats",
    backbone="resnet101",
    backbone_blocks=[3, 4, 23, 3],
    backbone_width=64,
    backbone_weights=None,
    hyperpixel_ids=[0, 8, 20, 21, 26, 28, 29, 30],
    feature_size=16,
    feature_proj_dim=128,
    depth=1,
    num_heads=6,
    mlp_ratio=4.0,
    beta=0.02,
    freeze_backbone=False,
    bn_mode="official",
    dtype="float32",
)


@pytest.fixture(scope="module")
def state_dict():
    with np.load(FIXTURE) as npz:
        return fixture_state_dict(npz)


@pytest.fixture(scope="module")
def converted(state_dict):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cats_from_torch(state_dict)


def _shapes(tree):
    return jax.tree.map(lambda x: tuple(x.shape), tree)


def test_full_official_key_set_converts_to_the_official_model(converted):
    model, variables = converted
    assert (model.backbone, model.depth, model.feature_size, model.feature_proj_dim) == (
        "resnet101",
        1,
        16,
        128,
    )
    assert model.mlp_ratio == 4.0 and tuple(model.hyperpixel_ids) == (0, 8, 20, 21, 26, 28, 29, 30)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    want = jax.eval_shape(lambda s: model.init(jax.random.key(0), source=s, target=s), x)
    assert _shapes(variables) == _shapes(want)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))
    assert "layer4_0" not in variables["params"]["backbone"]  # never used, never built


def test_conversion_layouts(converted, state_dict):
    _, variables = converted
    params, stats = variables["params"], variables["batch_stats"]
    bb = BACKBONE_PREFIX
    np.testing.assert_array_equal(
        params["backbone"]["conv1"]["kernel"], state_dict[bb + "conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        params["backbone"]["layer3_0"]["downsample_bn"]["scale"],
        state_dict[bb + "layer3.0.downsample.1.weight"],
    )
    np.testing.assert_array_equal(
        stats["backbone"]["layer3_22"]["bn3"]["var"], state_dict[bb + "layer3.22.bn3.running_var"]
    )
    np.testing.assert_array_equal(params["proj_7"]["kernel"], state_dict["proj.7.weight"].T)
    block = params["decoder"]["blocks_0"]
    np.testing.assert_array_equal(
        block["attn_multiscale"]["qkv"]["kernel"],
        state_dict["decoder.blocks.0.attn_multiscale.qkv.weight"].T,
    )
    np.testing.assert_array_equal(
        block["norm4"]["scale"], state_dict["decoder.blocks.0.norm4.weight"]
    )
    np.testing.assert_array_equal(
        params["decoder"]["pos_embed_x"][3, 5], state_dict["decoder.pos_embed_x"][0, 3, 0, 5]
    )
    np.testing.assert_array_equal(
        params["decoder"]["pos_embed_y"][3, 5], state_dict["decoder.pos_embed_y"][0, 3, 5, 0]
    )
    np.testing.assert_array_equal(params["x_normal"], state_dict["x_normal"])


def _broken(state_dict, drop=(), add=None, reshape=None):
    broken = {k: v for k, v in state_dict.items() if k not in drop}
    broken.update(add or {})
    for key in reshape or ():
        broken[key] = np.zeros(np.shape(state_dict[key])[::-1], np.float32)
    return broken


@pytest.mark.parametrize(
    "change, names",
    [
        (dict(drop=["decoder.blocks.0.attn.qkv.bias"]), ["missing keys (1)", "attn.qkv.bias"]),
        (dict(add={"decoder.head.weight": np.zeros(3)}), ["unexpected keys (1)", "decoder.head"]),
        (dict(reshape=["proj.3.weight"]), ["wrong shapes (1)", "proj.3.weight: (1024, 128)"]),
        (dict(drop=["decoder.norm.weight"]), ["missing keys (1)", "decoder.norm.weight"]),
        (
            dict(
                drop=[BACKBONE_PREFIX + "layer3.5.bn2.running_mean"],
                add={BACKBONE_PREFIX + "layer3.0.conv4.weight": np.zeros((256, 1024, 1, 1))},
                reshape=["decoder.proj.weight"],
            ),
            ["layer3.5.bn2.running_mean", "layer3.0.conv4.weight", "decoder.proj.weight"],
        ),
        (
            # A stray block reads as a 24-block layer3, whose other keys are then missing.
            dict(add={BACKBONE_PREFIX + "layer3.23.conv1.weight": np.zeros((256, 1024, 1, 1))}),
            ["(3, 4, 24, 3)", "missing keys (14)", "layer3.23.bn1.weight"],
        ),
    ],
    ids=["missing", "unexpected", "wrong_shape", "unused_missing", "all_at_once", "stray_block"],
)
def test_bad_keys_fail_with_one_error_naming_them(state_dict, change, names):
    with pytest.raises(ValueError, match="checkpoint does not fit the CATs model") as err:
        cats_from_torch(_broken(state_dict, **change))
    for name in names:
        assert name in str(err.value)


def test_num_batches_tracked_is_optional(state_dict, converted):
    # PyTorch < 0.4 checkpoints (torchvision's ImageNet ResNets among them) lack the counter.
    old = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert len(old) == len(state_dict) - 104
    _, variables = cats_from_torch(old)
    jax.tree.map(np.testing.assert_array_equal, variables, converted[1])


def test_depth_is_inferred_from_the_decoder_blocks(state_dict):
    deeper = dict(state_dict)
    for key, value in state_dict.items():
        if key.startswith("decoder.blocks.0."):
            deeper[key.replace("blocks.0.", "blocks.1.")] = value
    model, variables = cats_from_torch(deeper)
    assert model.depth == 2
    blocks = variables["params"]["decoder"]
    np.testing.assert_array_equal(
        blocks["blocks_1"]["mlp2"]["fc1"]["kernel"], blocks["blocks_0"]["mlp2"]["fc1"]["kernel"]
    )


def test_a_whole_model_config_is_accepted_as_overrides(state_dict):
    model, _ = cats_from_torch(state_dict, **OFFICIAL_MODEL_CONFIG)
    assert model.bn_mode == "official" and model.hyperpixel_ids == (0, 8, 20, 21, 26, 28, 29, 30)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(depht=2), "unknown CATs fields ['depht']"),
        (dict(name="catspp"), "builds CATs"),
        (dict(depth=2), "missing keys"),
        (dict(num_heads=7), "num_heads=7"),
    ],
)
def test_bad_overrides_fail_clearly(state_dict, overrides, message):
    with pytest.raises(ValueError) as err:
        cats_from_torch(state_dict, **overrides)
    assert message in str(err.value)


def test_hyperpixel_ids_must_be_given_for_another_level_count(state_dict):
    fewer = {k: v for k, v in state_dict.items() if not k.startswith(("proj.6.", "proj.7."))}
    with pytest.raises(ValueError, match="has 6 hyperpixel levels.*pass hyperpixel_ids"):
        cats_from_torch(fewer)


def test_a_single_level_checkpoint_drops_the_unused_cross_level_layers(state_dict):
    # The official one-level block still holds attn_multiscale, mlp2, norm3 and norm4.
    single = {k: v for k, v in state_dict.items() if not k.startswith("proj.")}
    single["proj.0.weight"] = state_dict["proj.0.weight"]
    single["proj.0.bias"] = state_dict["proj.0.bias"]
    for key in ("decoder.pos_embed_x", "decoder.pos_embed_y"):
        single[key] = state_dict[key][:, :1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, variables = cats_from_torch(single, hyperpixel_ids=(0,))
    assert set(variables["params"]["decoder"]["blocks_0"]) == {"attn", "mlp", "norm1", "norm2"}
    assert set(variables["params"]["backbone"]) == {"conv1", "bn1"}


def test_infer_cats_fields_reads_a_custom_backbone():
    keys = {
        BACKBONE_PREFIX + "conv1.weight": np.zeros((16, 3, 7, 7)),
        "x_normal": np.zeros(8),
        "proj.0.weight": np.zeros((32, 16)),
        "decoder.blocks.0.mlp.fc1.weight": np.zeros((192, 96)),
        "decoder.blocks.2.norm1.weight": np.zeros(96),
    }
    for stage, blocks in enumerate((1, 1, 2), start=1):
        for block in range(blocks):
            keys[f"{BACKBONE_PREFIX}layer{stage}.{block}.conv1.weight"] = np.zeros((1, 1, 1, 1))
    assert infer_cats_fields(keys) == dict(
        depth=3,
        backbone="custom",
        backbone_blocks=(1, 1, 2),
        backbone_width=16,
        feature_size=8,
        feature_proj_dim=32,
        mlp_ratio=2.0,
    )


def _torchvision_names(state_dict):
    """What torchvision's resnet101 state dict holds: the CATs backbone keys, unprefixed."""
    return {
        k.removeprefix(BACKBONE_PREFIX): v
        for k, v in state_dict.items()
        if k.startswith(BACKBONE_PREFIX)
    }


def test_backbone_from_torchvision_matches_the_cats_backbone(state_dict, converted):
    _, variables = converted
    torchvision = _torchvision_names(state_dict)
    assert {"fc.weight", "layer4.2.bn3.num_batches_tracked"} <= set(torchvision)
    backbone = backbone_from_torchvision(torchvision, OFFICIAL_MODEL_CONFIG)
    jax.tree.map(np.testing.assert_array_equal, backbone["params"], variables["params"]["backbone"])
    jax.tree.map(
        np.testing.assert_array_equal, backbone["batch_stats"], variables["batch_stats"]["backbone"]
    )


def test_backbone_from_torchvision_names_a_missing_key(state_dict):
    torchvision = _torchvision_names(state_dict)
    del torchvision["layer2.0.downsample.1.running_var"]
    with pytest.raises(
        ValueError, match=r"missing keys \(1\): layer2\.0\.downsample\.1\.running_var"
    ):
        backbone_from_torchvision(torchvision, OFFICIAL_MODEL_CONFIG)


# ---- checkpoint files ----


def _small_state_dict():
    return {"proj.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "x_normal": np.ones(4)}


def _assert_same(got, want):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_npz_round_trip_strips_the_data_parallel_prefix(tmp_path):
    sd = _small_state_dict()
    np.savez(tmp_path / "ckpt.npz", **{"module." + k: v for k, v in sd.items()})
    _assert_same(load_state_dict_file(tmp_path / "ckpt.npz"), sd)


def test_safetensors_round_trip(tmp_path):
    sd = _small_state_dict()
    save_file(sd, str(tmp_path / "ckpt.safetensors"))
    _assert_same(load_state_dict_file(tmp_path / "ckpt.safetensors"), sd)


def test_pth_needs_torch_or_round_trips_a_wrapped_checkpoint(tmp_path):
    sd = _small_state_dict()
    path = tmp_path / "model_best.pth"
    if importlib.util.find_spec("torch") is None:
        path.write_bytes(b"not read")
        with pytest.raises(ImportError, match="needs torch"):
            load_state_dict_file(path)
        return
    import torch

    wrapped = {
        "epoch": 3,
        "state_dict": {"module." + k: torch.from_numpy(v) for k, v in sd.items()},
    }
    torch.save(wrapped, path)
    _assert_same(load_state_dict_file(path), sd)


def test_unreadable_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict_file(tmp_path / "absent.npz")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported checkpoint extension '.bin'"):
        load_state_dict_file(tmp_path / "weights.bin")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="no tensors"):
        load_state_dict_file(tmp_path / "empty.npz")


def test_converter_module_documents_its_public_api():
    assert set(convert.__all__) == {
        "backbone_from_dinov2",
        "backbone_from_torchvision",
        "backbone_to_torchvision",
        "cats_from_torch",
        "cats_to_torch",
        "catspp_from_torch",
        "catspp_to_torch",
        "dinov2_from_torch",
        "dinov2_to_huggingface",
        "dinov2_to_torch",
        "infer_cats_fields",
        "infer_catspp_fields",
        "load_state_dict_file",
    }
