"""CATs on a DINOv2 backbone: the configs, official weights as `backbone_weights`, fine-tuning
the last blocks only, and the tiny config through teacher -> annotate -> student."""

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file
from test_config import load
from test_resume import ROOT, _run, kill_environment
from test_spair_tiny import pascal_teacher_on_willow

from matchme_jax import convert, errors, init_from
from matchme_jax.models import backbones, build_model, dinov2
from matchme_jax.train.state import make_optimizer, param_labels

DINOV2_CONFIGS = ("spair_dinov2.py", "pfpascal_dinov2.py", "pfwillow_dinov2.py")


@pytest.mark.parametrize("name", DINOV2_CONFIGS)
def test_configs_put_cats_on_a_frozen_vitb14_at_its_patch_grid(name):
    model = load(name).model
    assert (model.backbone, model.freeze_backbone) == ("dinov2_vitb14", True)
    assert load(name).dataset.image_size == 224 == 14 * model.feature_size
    tiny = load(f"{name}:tiny").model
    assert tiny.backbone == backbones.CUSTOM_VIT


def test_vit_sizes_are_those_of_the_official_hub():
    sizes = {name: (e.embed_dim, e.depth, e.num_heads) for name, e in dinov2.HUB.items()}
    assert sizes["dinov2_vitb14"] == sizes["dinov2_vitb14_reg"] == (768, 12, 12)
    assert sizes["dinov2_vitl14"] == (1024, 24, 16)
    assert dinov2.HUB["dinov2_vitg14"].ffn_layer == "swiglufused"


def _tiny_cats(**overrides):
    config = load("spair_dinov2.py:tiny")
    config.model.update(overrides)
    return config, build_model(config.model)


def _init(model, size: int = 56):
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.jit(model.init)(jax.random.key(0), source=images, target=images)


def test_the_vit_builds_only_the_blocks_up_to_the_last_tap():
    _, model = _tiny_cats(backbone_blocks=(4,), hyperpixel_ids=(0, 2))
    backbone = _init(model)["params"]["backbone"]
    assert sorted(k for k in backbone if k.startswith("blocks_")) == [
        "blocks_0",
        "blocks_1",
        "blocks_2",
    ]
    assert "batch_stats" not in _init(model)


def test_bfloat16_runs_the_vit_blocks_in_bfloat16_with_float32_parameters():
    _, model = _tiny_cats(dtype="bfloat16")
    variables = _init(model)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    images = jax.random.normal(jax.random.key(2), (2, 56, 56, 3))
    sown = jax.jit(lambda v, x: model.apply(v, x, x[::-1], mutable=["intermediates"])[1])
    taps = sown(variables, images)["intermediates"]["source_feats"][0]
    assert {t.dtype for t in taps} == {jnp.dtype("bfloat16")}
    flow = jax.jit(model.apply)(variables, source=images, target=images[::-1])
    assert flow.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(flow)))


def _official_weights(depth: int, width: int = 32, heads: int = 2) -> dict[str, np.ndarray]:
    """A seeded ViT's weights in the official torch-hub layout."""
    vit = dinov2.DinoVisionTransformer(embed_dim=width, depth=depth, num_heads=heads)
    variables = vit.init(jax.random.key(7), jnp.zeros((1, 28, 28, 3)))
    return convert.dinov2_to_torch(vit, jax.tree.map(np.asarray, variables))


@pytest.mark.parametrize("layout", ["torch", "huggingface"])
def test_backbone_weights_load_into_the_tapped_blocks(tmp_path, layout):
    state_dict = _official_weights(depth=3)
    if layout == "huggingface":
        vit, variables = convert.dinov2_from_torch(state_dict, "dinov2_vits14", num_heads=2)
        state_dict = convert.dinov2_to_huggingface(vit, variables)
    path = tmp_path / "weights.safetensors"
    save_file(state_dict, str(path))
    config, model = _tiny_cats(backbone_blocks=(3,), hyperpixel_ids=(0, 1))
    config.model.backbone_weights = str(path)
    loaded = init_from.with_backbone_weights(config, _init(model))["params"]["backbone"]
    assert "blocks_2" not in loaded  # the file's last block is never run
    qkv = np.asarray(loaded["blocks_1"]["attn"]["qkv"]["kernel"])
    np.testing.assert_array_equal(qkv, _official_weights(depth=3)["blocks.1.attn.qkv.weight"].T)


def test_backbone_weights_of_another_size_are_refused_naming_both(tmp_path):
    path = tmp_path / "wide.npz"
    np.savez(path, **_official_weights(depth=2, width=64))
    config, model = _tiny_cats()
    config.model.backbone_weights = str(path)
    with pytest.raises(errors.UserError, match=r"64 wide.*config.model.*32 wide"):
        init_from.with_backbone_weights(config, _init(model))


def test_trainable_blocks_fine_tune_the_last_blocks_alone():
    config, model = _tiny_cats(
        backbone_blocks=(3,), hyperpixel_ids=(1, 2), freeze_backbone=False, trainable_blocks=1
    )
    params = _init(model)["params"]
    trainable = lambda path: backbones.is_trainable(model, path)  # noqa: E731
    labels = param_labels(params, trainable)["backbone"]
    assert labels["blocks_2"]["attn"]["qkv"]["kernel"] == "backbone"
    assert labels["norm"]["scale"] == "backbone"
    assert {
        labels["blocks_1"]["mlp"]["fc1"]["kernel"],
        labels["patch_embed"]["proj"]["kernel"],
    } == {"frozen"}
    # One AdamW update with weight decay: the frozen blocks keep every bit.
    optimizer = make_optimizer(
        config.optim, total_steps=10, freeze_backbone=False, trainable_backbone=trainable
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)["backbone"]
    old = params["backbone"]
    np.testing.assert_array_equal(new["blocks_1"]["ls1"]["gamma"], old["blocks_1"]["ls1"]["gamma"])
    assert not np.array_equal(new["blocks_2"]["ls1"]["gamma"], old["blocks_2"]["ls1"]["gamma"])

    # And the frozen part gets no gradient: the forward stops it after block 1.
    images = jax.random.normal(jax.random.key(1), (2, 56, 56, 3))

    def loss(p):
        return jnp.sum(model.apply({"params": p}, source=images, target=images[::-1]) ** 2)

    grad = jax.jit(jax.grad(loss))(params)["backbone"]
    assert not np.any(np.asarray(grad["patch_embed"]["proj"]["kernel"]))
    assert not np.any(np.asarray(grad["blocks_1"]["attn"]["qkv"]["kernel"]))
    assert np.any(np.asarray(grad["blocks_2"]["attn"]["qkv"]["kernel"]))


@pytest.mark.parametrize("trainable_blocks", [1, 2, 3])
def test_the_optimizer_freezes_exactly_what_gets_no_gradient(trainable_blocks):
    _, model = _tiny_cats(
        backbone_blocks=(3,),
        hyperpixel_ids=(0, 2),
        freeze_backbone=False,
        trainable_blocks=trainable_blocks,
    )
    params = _init(model)["params"]
    images = jax.random.normal(jax.random.key(1), (2, 56, 56, 3))

    def loss(p):
        return jnp.sum(model.apply({"params": p}, source=images, target=images[::-1]) ** 2)

    grads = jax.jit(jax.grad(loss))(params)["backbone"]
    grads = jax.tree_util.tree_leaves_with_path(grads)
    labels = param_labels(params, lambda path: backbones.is_trainable(model, path))["backbone"]
    labels = dict(jax.tree_util.tree_leaves_with_path(labels))
    for path, grad in grads:
        if path[0].key == "mask_token":  # a parameter that no forward without masks reads
            continue
        frozen = labels[path] == "frozen"
        assert frozen == (not np.any(np.asarray(grad))), jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(trainable_blocks=1), "freeze_backbone=False"),
        (dict(freeze_backbone=False, trainable_blocks=3), "between 0 and the 2 blocks"),
        (dict(hyperpixel_ids=(0, 2)), r"block indices must lie in \[0, 1\]"),
        (dict(backbone_heads=3), "heads >= 1 that divide its width"),
    ],
)
def test_bad_vit_fields_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        _tiny_cats(**overrides)


# Killed in gen 0 after its step-3 checkpoint, then in gen 1's annotation, then mid-training.
DINOV2_KILLS = ("saved:1", "annotate:2", "train:3")


def _dinov2_command(workdir, data_dir: str) -> list[str]:
    return [
        str(ROOT / "run.py"),
        "--config=configs/spair_dinov2.py:tiny",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        "--config.selftrain.generations=1",
        "--config.selftrain.tau=0.0",  # an untrained tiny teacher is never confident
    ]


@pytest.fixture(scope="module")
def dinov2_runs(tmp_path_factory, tfds_dir) -> dict:
    """The tiny DINOv2 run unbroken, and killed at DINOV2_KILLS then completed, side by side:
    {"unbroken": workdir, "killed": workdir}."""
    env, hook, data_dir = kill_environment(tmp_path_factory, tfds_dir)
    workdirs = {name: tmp_path_factory.mktemp(name) for name in ("unbroken", "killed")}

    def unbroken():
        done = _run(_dinov2_command(workdirs["unbroken"], data_dir), env)
        assert done.returncode == 0, done.stderr[-3000:]

    def killed_and_resumed():
        for kill_at in DINOV2_KILLS:
            args = [str(hook), *_dinov2_command(workdirs["killed"], data_dir)]
            killed = _run(args, dict(env, MATCHME_KILL_AT=kill_at))
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        done = _run(_dinov2_command(workdirs["killed"], data_dir), env)
        assert done.returncode == 0, done.stderr[-3000:]

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(unbroken), pool.submit(killed_and_resumed)]:
            future.result()
    return workdirs


def _generations(workdir) -> list[dict]:
    return json.loads((workdir / "results.json").read_text())["generations"]


def test_tiny_dinov2_trains_a_teacher_and_a_student(dinov2_runs):
    workdir = dinov2_runs["unbroken"]
    teacher, student = _generations(workdir)
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    assert student["pseudo_labels"]["points"] >= 1
    assert 0.0 <= student["test"]["pck@0.1"] <= 100.0
    stats = json.loads((workdir / "gen_1" / "pseudo" / "stats.json").read_text())
    assert stats["pairs_annotated"] == load("spair_dinov2.py:tiny").selftrain.num_unlabeled_pairs


def test_killed_dinov2_run_ends_like_an_unbroken_run(dinov2_runs):
    assert _generations(dinov2_runs["killed"]) == _generations(dinov2_runs["unbroken"])


def test_a_dinov2_pf_pascal_model_is_evaluated_on_pf_willow(tmp_path, tfds_dir):
    result = pascal_teacher_on_willow(
        tmp_path, tfds_dir, "pfpascal_dinov2.py:tiny", "pfwillow_dinov2.py:tiny"
    )
    assert result["num_pairs"] > 0 and 0.0 <= result["pck@0.1"] <= 100.0
