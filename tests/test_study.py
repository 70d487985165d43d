"""The study runner: a sweep of overrides over seeds, finished runs skipped, one table."""

import json

import pytest
from subprocess_env import subprocess_env

from matchme_jax import config_checks, defaults, study


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
                "test": {"pck@0.1": 10.0 + g * (1 + seed) + seed + tau},
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
    # Sample standard deviations (n - 1): of 12.5 and 15.5, and of the gains 2 and 4.
    assert final == {"mean": pytest.approx(14.0), "std": pytest.approx(1.5 * 2**0.5), "n": 2}
    gain = table["cells"]["tau=0.5"]["final_gain"]  # seed 0: 12.5 - 10.5; seed 1: 15.5 - 11.5
    assert gain["test"] == {"mean": pytest.approx(3.0), "std": pytest.approx(2**0.5), "n": 2}
    assert gain["smallest_test"] == pytest.approx(2.0)
    assert gain["validation"]["mean"] == pytest.approx(2.0)
    assert table["cells"]["tau=0.0"]["per_generation"]["pseudo_points"][0]["n"] == 0
    for name in (study.STUDY_FILE, study.TABLE_FILE, study.PLOT_FILE):
        assert (tmp_path / "W" / name).stat().st_size > 0
    assert (
        "| tau=0.5 | 2 | 11.00 ± 0.71 | 14.00 ± 2.12 | +3.00 ± 1.41 | +2.00 | 22.00 ± 0.00 | "
        "+2.00 ± 0.00 |" in (tmp_path / "W" / "study.md").read_text()
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


def test_a_run_with_fewer_generations_than_its_cell_continues(tmp_path):
    # The tiny config trains two student generations; the cells ask for one and for three.
    cells = {"one": {"selftrain.generations": 1}, "three": {"selftrain.generations": 3}}
    path = _write_study(tmp_path / "s.py", cells=cells)
    for cell in ("one", "three"):
        for seed in (0, 1):
            (tmp_path / "W" / cell / f"seed{seed}").mkdir(parents=True)
            results = json.dumps(_fake_results(seed, 0.0))  # generations 0, 1 and 2
            (tmp_path / "W" / cell / f"seed{seed}" / "results.json").write_text(results)
    planned = {str(r["workdir"]): r["generations"] for r in study.runs(study.load_study(path))}
    assert planned == {"one/seed0": 1, "one/seed1": 1, "three/seed0": 3, "three/seed1": 3}

    table = study.run_study(path, tmp_path / "W", runner=None, report_only=True)
    assert [u["workdir"] for u in table["unfinished"]] == ["three/seed0", "three/seed1"]
    one = table["cells"]["one"]
    assert len(one["per_generation"]["test_pck@0.1"]) == 2  # read up to its own generation 1
    assert one["final_gain"]["test"]["mean"] == pytest.approx(1.5)  # seeds 0, 1: +1, +2


def test_one_run_has_a_mean_and_no_spread():
    assert study._mean_std([3.0, None]) == {"mean": 3.0, "std": None, "n": 1}
    assert study._pm(study._mean_std([3.0])) == "3.00"
    assert study._pm(study._mean_std([])) == "-"


def test_runs_that_differ_only_in_student_settings_share_their_teacher(tmp_path):
    cells = {
        "tau=0.5": {"selftrain.tau": 0.5},
        "weak student": {"selftrain.tau": 0.7, "augment.student.crop_p": 0.5},
        "beta=0.1": {"model.beta": 0.1},  # the teacher reads it: a teacher of its own
    }
    path = _write_study(tmp_path / "s.py", cells=cells)
    trained = []

    def runner(config, workdir, flags):
        gen_0 = workdir / "gen_0"
        if not gen_0.exists():  # run.py trains generation 0 only when it is not there
            gen_0.mkdir(parents=True)
            (gen_0 / "summary.json").write_text(json.dumps({"trained_in": str(workdir)}))
            trained.append(str(workdir.relative_to(tmp_path / "W")))
        (workdir / "results.json").write_text(json.dumps(_fake_results(0, 0.5)))
        return _fake_results(0, 0.5)

    table = study.run_study(path, tmp_path / "W", runner=runner)
    assert trained == ["tau=0.5/seed0", "tau=0.5/seed1", "beta=0.1/seed0", "beta=0.1/seed1"]
    copied = json.loads((tmp_path / "W/weak_student/seed1/gen_0/summary.json").read_text())
    assert copied == {"trained_in": str(tmp_path / "W/tau=0.5/seed1")}
    keys = {c: [r["teacher"] for r in e["runs"]] for c, e in table["cells"].items()}
    assert keys["tau=0.5"] == keys["weak student"]
    assert len(set(keys["tau=0.5"] + keys["beta=0.1"])) == 4
    assert not list((tmp_path / "W" / study.TEACHERS_DIR).glob("*/*.partial"))

    # Another study pointed at the same teachers folder reuses them too.
    other = _write_study(tmp_path / "o.py", cells={"tau=0.9": {"selftrain.tau": 0.9}})
    trained.clear()
    study.run_study(other, tmp_path / "W2", runner=runner, teachers=tmp_path / "W/teachers")
    assert trained == []


def test_a_bad_study_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.py"):
        study.load_study(tmp_path / "no_such.py")
    (tmp_path / "empty.py").write_text("def get_study():\n    return dict(config='c', seeds={})\n")
    with pytest.raises(ValueError, match=r"empty.py: get_study\(\) lacks \['cells'\]"):
        study.load_study(tmp_path / "empty.py")
    missing_config = _write_study(tmp_path / "m.py", config="configs/no_such.py:tiny")
    with pytest.raises(FileNotFoundError, match=r"'configs/no_such.py:tiny' names no file"):
        study.runs(study.load_study(missing_config))


def test_a_failed_run_is_listed_and_the_others_go_on(tmp_path):
    path = _write_study(tmp_path / "s.py")
    ran = []

    def runner(config, workdir, flags):
        ran.append(str(workdir.relative_to(tmp_path / "W")))
        if "--config.selftrain.tau=0.5" in flags or "--config.seed=1" in flags:
            raise study.RunFailed(workdir, "RuntimeError: no pseudo label kept.")
        return _fake_results(0, 0.0)

    table = study.run_study(path, tmp_path / "W", runner=runner)
    assert ran == ["tau=0.0/seed0", "tau=0.0/seed1", "tau=0.5/seed0", "tau=0.5/seed1"]
    failed = ["tau=0.0/seed1", "tau=0.5/seed0", "tau=0.5/seed1"]
    assert [f["workdir"] for f in table["failed"]] == failed
    kept = table["cells"]["tau=0.0"]
    assert [r["workdir"] for r in kept["runs"]] == ["tau=0.0/seed0"]
    assert kept["per_generation"]["test_pck@0.1"][2]["n"] == 1
    assert table["cells"]["tau=0.5"]["runs"] == []
    assert len(table["cells"]["tau=0.5"]["failed"]) == 2
    md = (tmp_path / "W" / study.TABLE_FILE).read_text()
    assert "| tau=0.5 | 0 | - |" in md
    assert "- tau=0.5/seed1: RuntimeError: no pseudo label kept." in md
    assert (tmp_path / "W" / study.PLOT_FILE).stat().st_size > 0


def test_a_report_runs_nothing_and_lists_the_unfinished_runs(tmp_path):
    path = _write_study(tmp_path / "s.py")
    for name, seed in (("tau=0.0/seed1", 1), ("tau=0.5/seed0", 0)):
        (tmp_path / "W" / name).mkdir(parents=True)
        (tmp_path / "W" / name / "results.json").write_text(json.dumps(_fake_results(seed, 0.5)))
    running = tmp_path / "W" / "tau=0.5" / "seed1"  # in flight: no train_step_compilations yet
    running.mkdir(parents=True)
    in_flight = _fake_results(1, 0.5)
    del in_flight["train_step_compilations"]
    (running / "results.json").write_text(json.dumps(in_flight))

    def runner(config, workdir, flags):
        raise AssertionError(f"a report ran {workdir}")

    table = study.run_study(path, tmp_path / "W", runner=runner, report_only=True)
    assert [u["workdir"] for u in table["unfinished"]] == ["tau=0.0/seed0", "tau=0.5/seed1"]
    assert table["failed"] == []
    assert [r["workdir"] for r in table["cells"]["tau=0.5"]["runs"]] == ["tau=0.5/seed0"]
    assert table["cells"]["tau=0.0"]["per_generation"]["test_pck@0.1"][2]["n"] == 1
    md = (tmp_path / "W" / study.TABLE_FILE).read_text()
    assert "Runs not finished yet (left out of the means):\n\n- tau=0.0/seed0\n" in md
    assert not (tmp_path / "W" / study.TEACHERS_DIR).exists()  # nothing copied
    assert not (tmp_path / "W" / "tau=0.0" / "seed0").exists()


def test_run_one_names_the_error_of_a_failed_run(tmp_path):
    with pytest.raises(study.RunFailed, match=r"selftrain\.tau") as failure:
        study.run_one("configs/synthetic.py:tiny", tmp_path / "W", ["--config.selftrain.tau=2.0"])
    assert "\n" not in failure.value.reason


def test_a_real_tiny_run_takes_the_flags_and_resumes_after_a_shared_teacher(
    tmp_path, tfds_dir, monkeypatch
):
    # run.py inherits this environment: quick compiles, as every test's subprocess.
    monkeypatch.setenv("XLA_FLAGS", subprocess_env()["XLA_FLAGS"])
    path = _write_study(
        tmp_path / "s.py",
        cells={"one generation": {"selftrain.generations": 1}, "tau": {"selftrain.tau": 0.1}},
        overrides={"dataset.data_dir": tfds_dir},
    )
    first, second = (r for r in study.runs(study.load_study(path)) if r["seeds"]["seed"] == 0)
    run_dir = tmp_path / "W" / first["workdir"]
    done = study.run_one("configs/synthetic.py:tiny", run_dir, first["flags"])
    assert [g["generation"] for g in done["generations"]] == [0, 1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 0 and config["dataset"]["data_dir"] == tfds_dir

    # The second cell's run starts from the first's teacher and trains only its students.
    assert second["teacher"] == first["teacher"]
    shared = tmp_path / "teachers" / first["teacher"] / "gen_0"
    study.keep_teacher(run_dir, shared)
    other_dir = tmp_path / "W" / second["workdir"]
    study.share_teacher(other_dir, shared)
    log = (other_dir / "gen_0" / "train_log.jsonl").read_text()
    other = study.run_one("configs/synthetic.py:tiny", other_dir, second["flags"])
    assert (other_dir / "gen_0" / "train_log.jsonl").read_text() == log  # not trained again
    assert other["generations"][0]["test"] == done["generations"][0]["test"]
    assert len(other["generations"]) == 3 and other["train_step_compilations"] == 1


@pytest.mark.parametrize(
    "path", sorted(study.ROOT.glob("configs/studies/*.py")), ids=lambda p: p.stem
)
def test_every_shipped_study_names_real_config_fields(path):
    shipped = study.load_study(path)
    file, _, arg = shipped["config"].partition(":")
    settings = [shipped["overrides"], *shipped["cells"].values()]
    settings += [{field: v} for field, values in shipped["seeds"].items() for v in values]
    for overrides in settings:
        config = defaults.load_config_file(study.ROOT / file, arg or None)
        for key in overrides:
            assert config_checks.unknown_field(config, key) is None, f"{path.name}: {key}"
        config.update_from_flattened_dict(overrides)  # a value of the wrong type: TypeError
