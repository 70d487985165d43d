"""Bad inputs end with one line that names the field or file and the fix (issue 18, 6 and 7):
damaged weight files and checkpoints, garbled JSON in a workdir, unknown config fields, a
workdir that is a file. Also: the JSON we write is strict, and interrupted dataset
preparations leave nothing behind."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from safetensors.numpy import save_file
from subprocess_env import ROOT, subprocess_env
from test_config import load

from data_builders import common
from matchme_jax import atomic, checkpoint, config_checks, errors, init_from
from matchme_jax.data import sources


def _run_module():
    """run.py as a module (its flags are defined only when it runs as a program)."""
    spec = importlib.util.spec_from_file_location("run_under_test", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_py(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# ---- the JSON files we write and read back ----


def _strict(text: str):
    """json.loads refusing NaN and Infinity, as JavaScript's JSON.parse does."""

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    content = {
        "loss": math.nan,
        "rates": (1.5, math.inf, -math.inf),
        "nested": [{"x": np.float64("nan")}, np.float32(2.0), np.array([1.0, np.nan])],
    }
    atomic.write_json(tmp_path / "a.json", content)
    assert _strict((tmp_path / "a.json").read_text()) == {
        "loss": None,
        "rates": [1.5, None, None],
        "nested": [{"x": None}, 2.0, [1.0, None]],
    }
    line = atomic.json_line({"step": 3, "grad_norm": math.nan})
    assert line.endswith("\n") and line.count("\n") == 1
    assert _strict(line) == {"step": 3, "grad_norm": None}


@pytest.mark.parametrize("garbage", [b'{"generation": 0, "ro', b"\x8b\x00\xff binary"])
def test_a_damaged_json_file_is_named_with_the_fix(tmp_path, garbage):
    path = tmp_path / "summary.json"
    path.write_bytes(garbage)
    with pytest.raises(errors.UserError) as error:
        atomic.read_json(path, fix="delete it; the run evaluates that generation again")
    message = str(error.value)
    assert message.startswith(f"{path} is damaged, not JSON (")
    assert message.endswith("; delete it; the run evaluates that generation again.")
    assert "\n" not in message
    path.write_text('{"generation": 0}')
    assert atomic.read_json(path, fix="unused") == {"generation": 0}


def test_a_garbled_config_json_in_the_workdir_is_named(tmp_path):
    config = load("synthetic.py:tiny")
    (tmp_path / config_checks.CONFIG_FILE).write_text('{"mode": "selftr')
    with pytest.raises(errors.UserError, match=r"config\.json is damaged, not JSON .* delete it"):
        config_checks.check_workdir(config, tmp_path)


# ---- weight files and checkpoints given as config.init_from / model.backbone_weights ----


def _weight_files(folder) -> dict:
    """{case: path} of unreadable weight files: random bytes and cut-short ones."""
    state_dict = {"proj.0.weight": np.ones((40, 50), np.float32), "x_normal": np.ones(300)}
    np.savez(folder / "whole.npz", **state_dict)
    save_file(state_dict, str(folder / "whole.safetensors"))
    files = {}
    for suffix in ("npz", "safetensors"):
        whole = (folder / f"whole.{suffix}").read_bytes()
        files[f"cut.{suffix}"] = folder / f"cut.{suffix}"
        files[f"cut.{suffix}"].write_bytes(whole[: len(whole) // 2])
        files[f"random.{suffix}"] = folder / f"random.{suffix}"
        files[f"random.{suffix}"].write_bytes(np.random.default_rng(0).bytes(3000))
    return files


@pytest.mark.parametrize("case", ["random.npz", "cut.npz", "random.safetensors", "cut.safetensors"])
def test_unreadable_weight_files_are_named_with_the_fix(tmp_path, case):
    path = _weight_files(tmp_path)[case]
    config = ml_collections.ConfigDict({"init_from": str(path)})
    with pytest.raises(errors.UserError) as error:
        init_from.load_variables(config, like=None)  # fails before it compares
    message = str(error.value)
    assert message.startswith(f"config.init_from: {path} is not a readable .")
    assert "it is damaged or cut short (" in message and "allow_pickle" not in message
    assert message.endswith("; download or save it again.") and "\n" not in message
    config = ml_collections.ConfigDict(
        {"model": {"backbone": "resnet101", "backbone_weights": str(path)}}
    )
    with pytest.raises(errors.UserError, match=r"^config\.model\.backbone_weights: "):
        init_from.with_backbone_weights(config, variables=None)


def test_a_cut_pth_file_is_named_or_torch_is_asked_for(tmp_path):
    path = tmp_path / "model_best.pth"
    config = ml_collections.ConfigDict({"init_from": str(path)})
    if importlib.util.find_spec("torch") is None:
        path.write_bytes(b"not read")
        with pytest.raises(errors.MissingPackageError, match="needs torch"):
            init_from.load_variables(config, like=None)
        return
    import torch

    torch.save({"w": torch.ones(100, 100)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(errors.UserError, match=r"model_best\.pth is not a readable \.pth"):
        init_from.load_variables(config, like=None)


def _checkpointed_generation(gen_dir):
    """A generation folder holding one checkpoint of a small model, as a run saves it."""
    saver = checkpoint.GenerationCheckpoints(gen_dir)
    saver.save(1, {"params": {"w": np.arange(6, dtype=np.float32)}, "batch_stats": {}})
    saver.close()
    return gen_dir / "checkpoints" / "1"


@pytest.mark.parametrize("checked", [True, False], ids=["with_checksums", "without"])
def test_a_damaged_checkpoint_folder_is_named_with_the_fix(tmp_path, checked):
    step_dir = _checkpointed_generation(tmp_path / "gen_0")
    config = ml_collections.ConfigDict({"init_from": str(tmp_path / "gen_0")})
    like = {"params": {"w": np.zeros(6, np.float32)}, "batch_stats": {}}
    np.testing.assert_array_equal(init_from.load_variables(config, like)["params"]["w"], range(6))
    if not checked:  # as saved by an older version: Orbax itself meets the damage
        (step_dir / checkpoint.CHECKSUMS_FILE).unlink()
    (step_dir / "state" / "_METADATA").unlink()
    with pytest.raises(errors.UserError) as error:
        init_from.load_variables(config, like)
    message = str(error.value)
    assert message.startswith(f"config.init_from='{tmp_path / 'gen_0'}': its checkpoint {step_dir}")
    assert message.endswith(
        "delete that step folder to start from the step before, or point "
        "config.init_from at another W/gen_<g> folder."
    )
    assert "\n" not in message


def test_the_reads_a_failed_restore_leaves_in_flight_stay_quiet(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    errors.drop_aborted_read_errors()
    errors.drop_aborted_read_errors()  # installed once
    other = SimpleNamespace(exc_value=RuntimeError("something else"))
    sys.unraisablehook(SimpleNamespace(exc_value=RuntimeError("Event loop is closed")))
    sys.unraisablehook(other)
    assert seen == [other]


# ---- config fields and the workdir ----


def test_an_unknown_field_names_the_closest_ones():
    config = load("synthetic.py:tiny")
    assert config_checks.unknown_field(config, "train.steps") is None
    assert config_checks.unknown_field(config, "evals.test.split") is None
    assert config_checks.unknown_field(config, "train.stepz") == (
        "--config.train.stepz: the config has no field 'train.stepz'; "
        "did you mean --config.train.steps?"
    )
    assert "did you mean --config.selftrain.tau?" in config_checks.unknown_field(config, "tau")
    assert "did you mean --config.selftrain.tau?" in config_checks.unknown_field(config, "tua")
    far = config_checks.unknown_field(config, "train.qqqqqqqq")
    assert "config.train has " in far and "steps" in far
    assert config_checks.unknown_field(config, "selftrain.tau.x") == (
        "--config.selftrain.tau.x: config.selftrain.tau is a value (0.0), it has no field 'x'"
    )


def test_a_workdir_must_be_a_folder(tmp_path):
    config_checks.check_workdir_path(tmp_path / "new" / "deeper")
    (tmp_path / "file").write_text("")
    for workdir in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(errors.UserError, match=f"{tmp_path / 'file'} is a file, not a folder"):
            config_checks.check_workdir_path(workdir)


def test_run_py_reads_the_config_flags_and_the_debug_level_from_argv():
    run = _run_module()
    argv = ["run.py", "--config", "c.py:tiny", "--config.a.b=1", "--noconfig.c", "--workdir=w"]
    assert run._config_flags(argv) == ("c.py:tiny", ["a.b", "c"])
    assert run._config_flags(["run.py", "--config=c.py"]) == ("c.py", [])
    assert run._debug_asked(["run.py", "-v", "1"]) and run._debug_asked(["run.py", "--verbosity=2"])
    assert not run._debug_asked(["run.py", "--verbosity=0"]) and not run._debug_asked(["run.py"])


def test_run_py_ends_a_garbled_workdir_file_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"mode": "selftr')
    result = _run_py("--config=configs/synthetic.py:tiny", f"--workdir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert _last_line(result.stderr).startswith(f"run.py: {tmp_path / 'config.json'} is damaged")


def test_run_py_shows_the_traceback_at_debug_level():
    result = _run_py("--config=configs/synthetic.py:tiny", "--config.tua=1", "--workdir=w", "-v=1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "did you mean --config.selftrain.tau?" in result.stderr


# ---- interrupted dataset preparations ----


def _folder(path, modified: float):
    """A folder holding one file, both last modified at `modified`."""
    path.mkdir(parents=True)
    (path / "shard").write_bytes(b"x")
    for p in (path / "shard", path):
        os.utime(p, (modified, modified))
    return path


def test_only_stale_incomplete_folders_of_the_dataset_are_removed(tmp_path):
    version_dir = tmp_path / "dataset" / "config" / "1.0.0"
    version_dir.mkdir(parents=True)
    start = time.time()
    stale = _folder(version_dir.parent / "incomplete.AB12CD_1.0.0", start - 3600)
    live = _folder(version_dir.parent / "incomplete.EF34GH_1.0.0", start - 3600)
    (live / "shard").touch()  # written in during this preparation: someone else's, under way
    other = _folder(version_dir.parent / "incomplete.mine", start - 3600)  # not TFDS's name
    builder = SimpleNamespace(data_path=version_dir)
    assert common.remove_stale_incomplete(builder, start) == [stale]
    assert not stale.exists() and live.exists() and other.exists() and version_dir.exists()


def test_runs_preparing_one_dataset_at_once_take_turns(tmp_path, monkeypatch):
    """Two runs started together on a fresh data dir: one prepares the dataset, the other waits
    and opens it (unlocked, both prepared it and the later failed in TFDS's final rename)."""
    dataset_cfg = load("synthetic.py:tiny").dataset
    dataset_cfg.data_dir = str(tmp_path)
    download_and_prepare = tfds.core.DatasetBuilder.download_and_prepare
    preparations = []

    def slow(builder, *args, **kwargs):
        preparations.append(builder.name)
        time.sleep(1)  # the other run has looked for the data by now
        return download_and_prepare(builder, *args, **kwargs)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", slow)
    with ThreadPoolExecutor(2) as pool:
        builders = list(pool.map(lambda _: sources.prepare(dataset_cfg), range(2)))
    assert preparations == ["synthetic_correspondence"]
    sizes = [builder.info.splits["test"].num_examples for builder in builders]
    assert sizes[0] == sizes[1] > 0


def test_a_successful_preparation_removes_what_an_interrupted_one_left(tmp_path):
    dataset_cfg = load("synthetic.py:tiny").dataset
    dataset_cfg.data_dir = str(tmp_path)
    config_dir = tmp_path / "synthetic_correspondence" / "tiny"
    stale = _folder(config_dir / "incomplete.K1LL3D_1.0.0", time.time() - 60)
    builder = sources.prepare(dataset_cfg)
    assert builder.is_prepared()
    assert sorted(p.name for p in config_dir.iterdir()) == ["1.0.0"]
    assert not stale.exists()
