"""Backbone pretraining on generator-rendered objects (matchme_jax/pretrain.py)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from subprocess_env import subprocess_env
from test_config import ROOT

from data_builders.synthetic_correspondence import generator as gen
from data_builders.synthetic_correspondence import pretraining_images as images
from matchme_jax import convert, defaults, init_from, pretrain
from matchme_jax.models import build_model


def _config(arg=None):
    return defaults.load_config_file(ROOT / "configs" / "pretrain" / "synthetic.py", arg)


def test_backbone_and_canvas_are_the_benchmark_configs():
    config, synthetic = _config(), defaults.load_config_file(ROOT / "configs" / "synthetic.py")
    assert synthetic.model.backbone_weights.endswith("weights/synthetic_backbone.npz")
    synthetic.model.backbone_weights = None  # the pretraining makes them
    # Pretrained strided, dilated where used: the same weights.
    assert config.model.dilated_stages == () and synthetic.model.dilated_stages == (2,)
    synthetic.model.dilated_stages = ()
    assert config.model.to_dict() == synthetic.model.to_dict()
    assert config.data.image_size == synthetic.dataset.image_size
    from data_builders.synthetic_correspondence import SyntheticCorrespondence

    benchmark = next(c for c in SyntheticCorrespondence.BUILDER_CONFIGS if c.name == "default")
    assert tuple(config.data.render_size) == (benchmark.min_image_size, benchmark.max_image_size)
    assert config.data.num_classes == len(images.CATEGORIES) == 11
    assert images.CATEGORIES[:5] == gen.CATEGORIES


@pytest.mark.parametrize("category", range(len(gen.CATEGORIES)))
def test_render_object_is_the_benchmark_renderer(category):
    seq = np.random.SeedSequence([7, category])
    image = images.render_object(np.random.default_rng(seq), gen.CATEGORIES[category], (48, 64))
    expected = gen.render_instance(np.random.default_rng(seq), category, (48, 64)).image
    np.testing.assert_array_equal(image, expected)


def test_pretraining_seeds_never_are_benchmark_seeds():
    # NumPy hashes a SeedSequence's entropy words followed by its spawn key. A benchmark image's
    # generator is seeded by a child of pair_seed, whose spawn key is (0,) or (1,); a pretraining
    # image's spawn key is (NAMESPACE,): the hashed words always differ in the last one.
    assert images.NAMESPACE not in (0, 1)
    for seed, index in ((0, 0), (3, 17), (2**32 - 1, 2**31)):
        for split in images.SPLITS:
            words = images.image_seed(seed, split, index)
            assert words.spawn_key == (images.NAMESPACE,)
        for split in gen.SPLITS:
            for child in gen.pair_seed(seed, split, index).spawn(2):
                assert child.spawn_key in ((0,), (1,))
    # And the streams differ in practice: no pretraining image equals a benchmark image.
    states = {
        tuple(child.generate_state(4))
        for split in gen.SPLITS
        for index in range(20)
        for child in gen.pair_seed(0, split, index).spawn(2)
    }
    ours = {
        tuple(images.image_seed(0, split, i).generate_state(4))
        for split in images.SPLITS
        for i in range(200)
    }
    assert not states & ours
    benchmark = [
        instance.image
        for index in range(10)
        for instance in gen.sample_instances(0, "test", index, (48, 64))
    ]
    for i in range(10):
        image, _ = images.render_example(0, "train", i, 5, (48, 64), 64)
        assert not any(b.shape == image.shape and np.array_equal(b, image) for b in benchmark)


def test_labels_are_balanced_and_images_reproducible():
    first = [images.render_example(1, "heldout", i, 11, (48, 64), 32) for i in range(22)]
    assert [label for _, label in first] == list(range(11)) * 2
    again, label = images.render_example(1, "heldout", 3, 11, (48, 64), 32)
    np.testing.assert_array_equal(again, first[3][0])
    assert again.shape == (32, 32, 3) and again.dtype == np.uint8 and label == 3


def _coloured_images(n):
    """[n, 8, 8, 3] uint8, each image one colour with three different channel values."""
    shade = np.arange(n) % 50
    colours = np.stack([shade + 10, shade + 80, shade + 150], axis=1)
    return np.broadcast_to(colours[:, None, None, :], (n, 8, 8, 3)).astype(np.uint8)


@pytest.mark.parametrize("permute", [False, True])
def test_augmentation_permutes_the_channels_of_each_image(permute):
    train_cfg = _config().train
    train_cfg.shift_pixels, train_cfg.grayscale_p, train_cfg.permute_channels = 0, 0.0, permute
    batch = _coloured_images(64)
    out = pretrain._augment(np.random.default_rng(0), batch, train_cfg)
    np.testing.assert_array_equal(np.sort(out, axis=-1), batch)  # the same values, reordered
    reordered = np.any(out != batch, axis=(1, 2, 3))
    assert reordered.any() == permute
    if permute:  # 5 of the 6 orders move a channel
        assert 0.6 < reordered.mean() < 0.99


def test_augmentation_makes_images_grey_with_the_given_probability():
    train_cfg = _config().train
    train_cfg.shift_pixels, train_cfg.grayscale_p = 0, 0.5
    batch = _coloured_images(400)
    out = pretrain._augment(np.random.default_rng(0), batch, train_cfg)
    grey = np.all(out == out[..., :1], axis=(1, 2, 3))
    assert 0.4 < grey.mean() < 0.6
    np.testing.assert_array_equal(
        out[grey][:, 0, 0, 0], batch[grey].mean(axis=(1, 2, 3)).astype(np.uint8)
    )
    config = _config()
    config.train.grayscale_p = 1.5
    with pytest.raises(ValueError, match=r"train.grayscale_p=1.5 \(a probability"):
        pretrain.check_config(config)


def test_tiny_pretraining_writes_weights_that_the_benchmark_model_loads(tmp_path):
    config = _config("tiny")
    pretrain.check_config(config)
    variables, summary = pretrain.train(config)
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0
    out = tmp_path / "backbone.npz"
    digest = pretrain.save(config, variables, summary, out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == digest and len(record["classes"]) == 11
    state_dict = convert.load_state_dict_file(out)
    assert state_dict["fc.weight"].shape == (11, 256)  # torchvision layout, [classes, features]
    assert state_dict["layer3.1.conv3.weight"].shape == (256, 64, 1, 1)  # OIHW

    # As run.py loads it: config.model.backbone_weights on the benchmark's own config.
    synthetic = defaults.load_config_file(ROOT / "configs" / "synthetic.py")
    synthetic.model.backbone_weights = str(out)
    model = build_model(synthetic.model)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    like = jax.eval_shape(lambda x: model.init(jax.random.key(0), source=x, target=x), image)
    loaded = init_from.with_backbone_weights(synthetic, like)
    for collection in ("params", "batch_stats"):
        want = jax.tree.map(lambda x: (x.shape, x.dtype), like[collection]["backbone"])
        got = jax.tree.map(lambda x: (x.shape, x.dtype), loaded[collection]["backbone"])
        assert got == want
        jax.tree.map(
            np.testing.assert_array_equal,
            loaded[collection]["backbone"],
            variables[collection]["backbone"],
        )
    # The pretrained running statistics came along (bn_mode="frozen" normalises with them).
    assert not np.allclose(loaded["batch_stats"]["backbone"]["bn1"]["mean"], 0.0)
    assert set(loaded["params"]) - {"backbone"}  # the correspondence head stays as initialised


def test_the_command_line_writes_the_weights_and_its_record(tmp_path):
    out = tmp_path / "backbone.npz"
    command = [
        sys.executable,
        "-m",
        "matchme_jax.pretrain",
        f"--config={ROOT / 'configs' / 'pretrain' / 'synthetic.py'}:tiny",
        f"--out={out}",
    ]
    proc = subprocess.run(
        command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"].startswith("python -m matchme_jax.pretrain --config=")
    assert f"sha256 {record['sha256']}" in proc.stdout


def test_importing_it_defines_no_flags():
    # absl flags are global: a module-level `--config` would clash with run.py's in one process.
    code = "import matchme_jax.pretrain, matchme_jax.study"
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), check=True, timeout=120
    )
