"""The study runner: a sweep of overrides over seeds, finished runs skipped, one table."""

import json

import pytest

from matchme_jax import study


def _write_study(path, config="configs/synthetic.py:tiny", **extra):
    cells = extra.pop(
        "cells", {"tau=0.0": {"selftrain.tau": 0.0}, "tau=0.5": {"selftrain.tau": 0.5}}
    )
    path.write_text(
        "def get_study():\n"
        f"    return dict(config={config!r}, cells={cells!r}, seeds={{'seed': (0, 1)}}, "
        f"overrides={extra.get('overrides', {})!r})\n"
    )
    return path


def _fake_results(seed: int, tau: float) -> dict:
    return {
        "dataset": "synthetic_correspondence/tiny/1.0.0",
        "generations": [
            {
                "generation": g,
                "role": "teacher" if g == 0 else "student",
                "test": {"pck@0.1": 10.0 + g + seed + tau},
                "validation": {"pck@0.1": 20.0 + g},
                "pseudo_labels": None if g == 0 else {"points": 100 * g, "precision@0.1": 50.0},
            }
            for g in range(3)
        ],
        "train_step_compilations": 1,
    }


def test_runs_each_cell_per_seed_and_skips_finished_runs(tmp_path):
    path = _write_study(tmp_path / "s.py")
    calls = []

    def runner(config, workdir, flags):
        calls.append((config, workdir.relative_to(tmp_path / "W"), flags))
        seed = int(next(f for f in flags if f.startswith("--config.seed=")).split("=")[-1])
        tau = float(
            next(f for f in flags if f.startswith("--config.selftrain.tau=")).split("=")[-1]
        )
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "results.json").write_text(json.dumps(_fake_results(seed, tau)))
        return _fake_results(seed, tau)

    table = study.run_study(path, tmp_path / "W", runner=runner)
    assert [str(c[1]) for c in calls] == [
        "tau=0.0/seed0",
        "tau=0.0/seed1",
        "tau=0.5/seed0",
        "tau=0.5/seed1",
    ]
    assert calls[0][0] == "configs/synthetic.py:tiny"
    assert calls[3][2] == ["--config.selftrain.tau=0.5", "--config.seed=1"]
    final = table["cells"]["tau=0.5"]["per_generation"]["test_pck@0.1"][2]
    assert final == {"mean": pytest.approx(13.0), "std": pytest.approx(0.5), "n": 2}
    assert table["cells"]["tau=0.0"]["per_generation"]["pseudo_points"][0]["n"] == 0
    for name in (study.STUDY_FILE, study.TABLE_FILE, study.PLOT_FILE):
        assert (tmp_path / "W" / name).stat().st_size > 0
    assert (
        "| tau=0.5 | 2 | 11.00 ± 0.50 | 13.00 ± 0.50 |" in (tmp_path / "W" / "study.md").read_text()
    )

    # Rerun: every run is finished, nothing runs again; an unfinished one (no
    # train_step_compilations yet) runs (continues) again.
    calls.clear()
    unfinished = tmp_path / "W" / "tau=0.0" / "seed1" / "results.json"
    content = json.loads(unfinished.read_text())
    del content["train_step_compilations"]
    unfinished.write_text(json.dumps(content))
    study.run_study(path, tmp_path / "W", runner=runner)
    assert [str(c[1]) for c in calls] == ["tau=0.0/seed1"]


def test_a_bad_study_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.py"):
        study.load_study(tmp_path / "no_such.py")
    (tmp_path / "empty.py").write_text("def get_study():\n    return dict(config='c', seeds={})\n")
    with pytest.raises(ValueError, match=r"empty.py: get_study\(\) lacks \['cells'\]"):
        study.load_study(tmp_path / "empty.py")


def test_a_real_tiny_run_takes_the_flags(tmp_path, tfds_dir):
    path = _write_study(
        tmp_path / "s.py",
        cells={"one generation": {"selftrain.generations": 1}},
        overrides={"dataset.data_dir": tfds_dir},
    )
    planned = study.runs(study.load_study(path))[:1]
    run_dir = tmp_path / "W" / planned[0]["workdir"]
    done = study.run_one("configs/synthetic.py:tiny", run_dir, planned[0]["flags"])
    assert [g["generation"] for g in done["generations"]] == [0, 1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 0 and config["dataset"]["data_dir"] == tfds_dir
