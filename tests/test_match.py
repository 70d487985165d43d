"""`python -m matchme_jax.match`: two photos in, matches.json and matches.png out.

A tiny CATs (configs/synthetic.py:tiny), initialised and saved as a run would save it (W/config.json
and W/gen_0/checkpoints/), no training: the tests check the plumbing, frames and errors, and that
the prediction is the evaluation's and the confidence the annotator's.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from subprocess_env import ROOT, subprocess_env
from test_config import load

from matchme_jax import atomic, checkpoint, config_checks, convert, match, metrics
from matchme_jax.annotate import cell_correspondences
from matchme_jax.data.resize import resize_example
from matchme_jax.models import build_model

SOURCE_HW, TARGET_HW = (37, 50), (64, 64)
# The subprocess compiles with this process's XLA flags, so conftest's shared compilation cache
# holds its programs already (subprocess_env's quick compiles would be a cache miss).
ENV = subprocess_env(XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))


def _seeded_variables(config, seed: int) -> dict:
    """Random variables of the config's model, made with numpy: `model.init` would compile for
    longer than every test here takes."""
    model = build_model(config.model)
    images = jnp.zeros((1, config.dataset.image_size, config.dataset.image_size, 3))
    shapes = jax.eval_shape(
        lambda r: model.init(r, source=images, target=images), jax.random.key(0)
    )
    rng = np.random.default_rng(seed)

    def leaf(path, like):
        name = path[-1].key
        if name in ("x_normal", "y_normal"):  # the soft-argmax grids
            return np.linspace(-1, 1, like.shape[0], dtype=np.float32)
        if name in ("var", "scale"):
            return np.ones(like.shape, np.float32)
        if name in ("mean", "bias"):
            return np.zeros(like.shape, np.float32)
        fan_in = np.prod(like.shape[:-1])  # flax kernels end in their output features
        return (rng.standard_normal(like.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, variables, W/gen_0, source.png, target.jpg) of a saved tiny run."""
    config = load("synthetic.py:tiny")
    variables = _seeded_variables(config, seed=3)
    workdir = tmp_path_factory.mktemp("run")
    saver = checkpoint.GenerationCheckpoints(workdir / "gen_0")
    saver.save(6, variables)
    saver.wait()
    saver.close()
    atomic.write_json(workdir / config_checks.CONFIG_FILE, json.loads(config.to_json()))
    rng = np.random.default_rng(0)
    source = workdir / "source.png"
    target = workdir / "target.jpg"
    Image.fromarray(rng.integers(0, 256, (*SOURCE_HW, 3), np.uint8)).save(source)
    Image.fromarray(rng.integers(0, 256, (*TARGET_HW, 3), np.uint8)).save(target)
    return config, variables, workdir / "gen_0", source, target


def _inside(points, hw) -> bool:
    points = np.asarray(points)
    return bool(((points >= 0) & (points < [hw[1], hw[0]])).all())


def test_match_writes_json_and_png_in_each_images_pixels(tiny, tmp_path):
    _, _, gen, source, target = tiny
    out = tmp_path / "out"
    matches = match.run(str(gen), str(source), str(target), str(out), grid=5, tau=0.3)
    saved = json.loads((out / match.JSON_FILE).read_text())
    assert len(saved["matches"]) == 25
    assert _inside([m["source"] for m in saved["matches"]], SOURCE_HW)
    assert _inside([m["target"] for m in saved["matches"]], TARGET_HW)
    assert all(0.0 <= m["confidence"] <= 1.0 for m in saved["matches"])
    assert saved["tau"] == 0.3 and saved["num_above_tau"] == int(matches.above_tau.sum())
    assert saved["source_size"] == {"height": 37, "width": 50}
    assert saved["target_size"] == {"height": 64, "width": 64}
    np.testing.assert_allclose(matches.source, match.grid_points(*SOURCE_HW, 5))
    with Image.open(out / match.PNG_FILE) as picture:
        assert picture.format == "PNG" and picture.width > 500
    assert not list(out.glob("*.tmp*"))  # written whole, then renamed


def test_explicit_points_come_back_exactly(tiny, tmp_path):
    config, variables, _, source, target = tiny
    text = "0,0;49.5,36.5;12.25,7"
    points = match.parse_points(text)
    (tmp_path / "points.json").write_text(json.dumps(points.tolist()))
    np.testing.assert_array_equal(match.parse_points(str(tmp_path / "points.json")), points)
    matches = match.match_images(variables, config, source, target, points)
    np.testing.assert_array_equal(matches.source, [[0, 0], [49.5, 36.5], [12.25, 7]])
    assert matches.target.shape == (3, 2) and matches.confidence.shape == (3,)
    assert matches.tau == config.selftrain.tau  # the run's tau by default
    with pytest.raises(ValueError, match=r"outside the 50 x 37 source image: \(50, 1\)"):
        match.match_images(variables, config, source, target, [[50, 1]])
    with pytest.raises(ValueError, match="x1,y1;x2,y2"):
        match.parse_points("1,2;three,4")


@pytest.mark.parametrize("mode", ["official", "bilinear"])
def test_prediction_is_the_evaluations_and_confidence_the_annotators(tiny, mode):
    config, variables, _, source, target = tiny
    config = load("synthetic.py:tiny")
    config.eval.flow_to_keypoints = mode
    size = config.dataset.image_size
    source_rgb, target_rgb = match.load_image(source), match.load_image(target)
    # Evaluation transfers the *target* keypoints into the source; match_images with the two
    # images swapped must give exactly that, in original pixels.
    points = np.array([[3.0, 60.0], [31.7, 2.2], [63.0, 63.0]], np.float32)
    target_canvas, canvas_points, _ = resize_example(target_rgb, points, np.zeros(4), size)
    source_canvas, _, _ = resize_example(source_rgb, np.zeros((0, 2)), np.zeros(4), size)
    # The annotator's step (compiled once by match_images already): its flow is the model's.
    step = match._correspondence_step(config.model.to_json())
    out = step(
        variables, {"source_image": source_canvas[None], "target_image": target_canvas[None]}
    )
    expected = metrics.flow_to_keypoints(out["flow"], jnp.asarray(canvas_points)[None], size, mode)[
        0
    ]
    expected = np.clip(expected, 0, size - 1) * [SOURCE_HW[1] / size, SOURCE_HW[0] / size]
    swapped = match.match_images(variables, config, target_rgb, source_rgb, points)
    np.testing.assert_allclose(swapped.target, expected, atol=1e-4)
    # At the centre of a feature cell (read bilinearly) the confidence is the annotator's.
    cells, _ = cell_correspondences(np.asarray(out["flow"]), size)
    centres = cells[0] * [TARGET_HW[1] / size, TARGET_HW[0] / size]
    at_centres = match.match_images(variables, config, target_rgb, source_rgb, centres)
    annotator = np.asarray(out["confidence"]).reshape(-1)
    if mode == "bilinear":
        np.testing.assert_allclose(at_centres.confidence, annotator, rtol=1e-5)
    assert ((at_centres.confidence >= 0) & (at_centres.confidence <= 1)).all()


def test_missing_empty_and_broken_images_are_named(tiny, tmp_path):
    config, variables, _, source, _ = tiny
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(np.random.default_rng(1).bytes(500))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=r"target image '.*missing\.jpg' does not exist"):
        match.match_images(variables, config, source, missing)
    with pytest.raises(ValueError, match=r"Cannot read the target image '.*broken\.jpg'"):
        match.match_images(variables, config, source, broken)
    with pytest.raises(ValueError, match=r"source image '.*empty\.png' is an empty file"):
        match.match_images(variables, config, empty, source)


def test_an_official_file_needs_a_config(tiny, tmp_path):
    assert match.RUN_CONFIG_FILE == config_checks.CONFIG_FILE  # how a run's folder is found
    config, variables, _, source, target = tiny
    state_dict = convert.cats_to_torch(build_model(config.model), variables)
    # An official checkpoint also holds entries the model never uses; the converter wants them.
    for key in ("decoder.norm.weight", "decoder.norm.bias", "feature_extraction.backbone.fc.bias"):
        state_dict[key] = np.zeros(1, np.float32)
    state_dict["feature_extraction.backbone.fc.weight"] = np.zeros((1, 1), np.float32)
    official = tmp_path / "cats.npz"
    np.savez(official, **state_dict)
    with pytest.raises(ValueError, match="give the config .* with --config"):
        match.match_images(str(official), None, source, target)
    points = [[5.0, 5.0], [40.0, 30.0]]
    from_file = match.match_images(str(official), config, source, target, points)
    direct = match.match_images(variables, config, source, target, points)
    np.testing.assert_allclose(from_file.target, direct.target, atol=1e-5)
    np.testing.assert_allclose(from_file.confidence, direct.confidence, atol=1e-6)


def test_cli_writes_the_files_and_reports_errors_in_one_line(tiny, tmp_path):
    _, _, gen, source, target = tiny
    command = [
        sys.executable,
        "-m",
        "matchme_jax.match",
        f"--init_from={gen}",
        f"--source={source}",
    ]
    ok = subprocess.run(
        [*command, f"--target={target}", f"--out={tmp_path}", "--points=10,20;30,5"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    saved = json.loads((tmp_path / match.JSON_FILE).read_text())
    assert [m["source"] for m in saved["matches"]] == [[10, 20], [30, 5]]
    assert saved["checkpoint"] == str(gen) and (tmp_path / match.PNG_FILE).is_file()
    assert "2 matches" in ok.stdout
    bad = subprocess.run(
        [*command, f"--target={tmp_path / 'nope.jpg'}", f"--out={tmp_path}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("match:")]
    assert len(errors) == 1 and "nope.jpg" in errors[0] and "Traceback" not in bad.stderr
