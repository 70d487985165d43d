"""End to end: `configs/synthetic.py:tiny`, a teacher and two student generations."""

import json

import pytest
from test_config import load

from matchme_jax import selftrain


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.tau = 0.0  # an untrained tiny teacher is never confident
    workdir = tmp_path_factory.mktemp("run")
    return config, workdir, selftrain.run(config, workdir)


def test_results_json_has_every_generation(tiny_run):
    config, workdir, results = tiny_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["generations"] == results["generations"]
    gens = results["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    assert [g["role"] for g in gens] == ["teacher", "student", "student"]
    assert gens[0]["pseudo_labels"] is None
    for g in gens:
        assert set(g["test"]) == {"pck@0.05", "pck@0.1", "pck@0.15"}
        assert all(0.0 <= v <= 100.0 for v in g["test"].values())
        assert g["test"]["pck@0.05"] <= g["test"]["pck@0.1"] <= g["test"]["pck@0.15"]
    for g in gens[1:]:
        stats = g["pseudo_labels"]
        assert stats["pairs"] >= 1 and stats["points"] >= stats["pairs"]
        assert 0.0 <= stats["mean_confidence"] <= 1.0
        assert 0.0 <= stats["precision@0.1"] <= 100.0  # the generator knows the truth


def test_one_checkpoint_directory_per_generation(tiny_run):
    config, workdir, _ = tiny_run
    for g in range(3):
        steps = sorted(p.name for p in (workdir / f"gen_{g}" / "checkpoints").iterdir())
        assert str(config.train.steps) in steps
    assert (workdir / "gen_1" / "pseudo" / "pseudo_labels.npz").exists()


def test_students_reuse_the_teachers_compiled_step(tiny_run):
    _, _, results = tiny_run
    assert results["train_step_compilations"] == 1


def test_rerun_continues_instead_of_redoing(tiny_run):
    config, workdir, results = tiny_run
    logs = [(workdir / f"gen_{g}" / "train_log.jsonl").read_text() for g in range(3)]
    again = selftrain.run(config, workdir)
    assert again["generations"] == results["generations"]
    # Nothing was trained again: no new log lines.
    assert logs == [(workdir / f"gen_{g}" / "train_log.jsonl").read_text() for g in range(3)]
