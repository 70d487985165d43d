r"""Runs a named study: a sweep of config overrides over seeds, then one table and one figure.

    python -m matchme_jax.study --study=configs/studies/tau.py --workdir=W

A study file's `get_study()` returns a dict:
  config:    the experiment config as run.py's --config takes it, relative to the repository
             root ("configs/synthetic.py");
  overrides: {field: value} applied to every run (may be empty);
  cells:     {label: {field: value}}, the settings compared;
  seeds:     {field: values}, e.g. {"seed": (0, 1)}; every cell runs once per combination.
Each run is `python run.py --config=... --workdir=W/<cell>/<seeds> --config.<field>=<value> ...`
(a workdir per run, so reruns continue or skip it). A run whose results.json is complete, with
the student generations its settings ask for, is skipped; an unfinished one continues where it
stopped, and so does one that finished fewer generations (a study raised to more).

Runs that differ only in fields the teacher does not read (`STUDENT_ONLY_FIELDS`: the
self-training and student augmentation settings) share one teacher: the first trains it, and its
generation 0 (gen_0/, checkpoints and summary) is kept under the teachers folder (W/teachers/,
or --teachers to share it between studies) and copied into the others' workdirs, where run.py
resumes after it. A sweep over tau then compares the students of one teacher, and trains each
teacher once. At the end W/study.json holds every run's per-generation PCK and pseudo-label
statistics with the mean and sample standard deviation (n - 1) per cell, W/study.md the table and
W/study.png the final PCK@0.1 per cell. A run that fails (say, a teacher that keeps no pseudo
label at a high tau) is listed with its error in those files, the other runs go on, and the
command exits with an error naming the failed runs once the tables are written. With
--report_only nothing runs: the tables hold the runs finished so far and list the others as not
finished (to follow a long sweep, or one whose runs were launched as separate jobs with the same
workdirs).
"""

import hashlib
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from matchme_jax import atomic, defaults, results

ROOT = Path(__file__).resolve().parent.parent
STUDY_FILE, TABLE_FILE, PLOT_FILE = "study.json", "study.md", "study.png"
TEACHERS_DIR = "teachers"
# Config fields that generation 0 does not read: runs whose overrides differ only in these train
# the same teacher. (An evaluator of the teacher whose settings they change, such as the
# pseudo-label evaluator's tau, runs again in the run that reuses it.)
STUDENT_ONLY_FIELDS = ("selftrain.", "augment.student.")


def load_study(path: str | Path) -> dict:
    """The study file's `get_study()`, checked: one clear error per missing or bad field."""
    study = _get_study(Path(path))
    missing = [k for k in ("config", "cells", "seeds") if k not in study]
    if missing:
        raise ValueError(f"Study {path}: get_study() lacks {missing}.")
    if not study["cells"]:
        raise ValueError(f"Study {path}: 'cells' is empty; give at least one setting to run.")
    for field, values in study["seeds"].items():
        if not values:
            raise ValueError(f"Study {path}: seeds[{field!r}] is empty.")
    study.setdefault("overrides", {})
    return study


def _get_study(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"--study={str(path)!r} is not a file (see configs/studies/).")
    spec = importlib.util.spec_from_file_location(f"study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.get_study())


def _flag_value(value) -> str:
    """How config_flags reads a value back: strings raw, the rest as Python literals."""
    return value if isinstance(value, str) else repr(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def config_texts(config: str) -> list[str]:
    """The text of the config's file and of the defaults it builds on."""
    paths = (ROOT / config.split(":")[0], ROOT / "matchme_jax" / "defaults.py")
    return [p.read_text() for p in paths]


def teacher_key(config: str, texts: list[str], overrides: dict) -> str:
    """Names the teacher of a run: its config (name and `config_texts`, so that an edited config
    trains a new teacher) and the overrides generation 0 reads. Code changes are not in it: after
    one, give the studies a new --teachers folder."""
    read = {
        k: _flag_value(v) for k, v in overrides.items() if not k.startswith(STUDENT_ONLY_FIELDS)
    }
    content = json.dumps([config, texts, read], sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def _default_generations(config: str) -> int:
    """`selftrain.generations` of the experiment config, as run.py's --config loads it."""
    file, _, arg = config.partition(":")
    if not (ROOT / file).is_file():
        raise FileNotFoundError(
            f"The study's config {config!r} names no file under {ROOT} (see configs/)."
        )
    return defaults.load_config_file(ROOT / file, arg or None).selftrain.generations


def runs(study: dict) -> list[dict]:
    """Every (cell, seeds) run: its label, seeds, relative workdir, override flags, the key of
    its teacher (`teacher_key`) and the number of student generations it trains."""
    fields = list(study["seeds"])
    default_generations = _default_generations(study["config"])  # first: checks the file is there
    texts = config_texts(study["config"])
    planned = []
    for cell, settings in study["cells"].items():
        for values in itertools.product(*(study["seeds"][f] for f in fields)):
            seeds = dict(zip(fields, values, strict=True))
            name = "_".join(f"{f.split('.')[-1]}{v}" for f, v in seeds.items())
            overrides = {**study["overrides"], **settings, **seeds}
            planned.append(
                {
                    "cell": cell,
                    "seeds": seeds,
                    "workdir": Path(_slug(cell)) / name,
                    "flags": [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()],
                    "teacher": teacher_key(study["config"], texts, overrides),
                    "generations": overrides.get("selftrain.generations", default_generations),
                }
            )
    return planned


def finished(workdir: Path, generations: int | None = None) -> dict | None:
    """A run's results.json when the run completed (`train_step_compilations` is written last)
    with at least `generations` student generations, else None: a run finished with fewer
    (a study that now asks for more) continues."""
    path = workdir / results.RESULTS_FILE
    if not path.exists():
        return None
    content = atomic.read_json(path, fix="delete it; the study then continues that run")
    if "train_step_compilations" not in content:
        return None
    if generations is not None and len(content["generations"]) <= generations:
        return None
    return content


def _teacher_done(gen_dir: Path) -> bool:
    """Whether gen_dir holds a finished generation 0: its summary is written last."""
    return (gen_dir / "summary.json").is_file()


def _copy_teacher(source: Path, destination: Path) -> None:
    """Copies a finished gen_0 folder; a half copy is never left under `destination`'s name."""
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    partial.rename(destination)


def share_teacher(run_dir: Path, shared: Path) -> None:
    """Before a run: the shared teacher, when there is one, becomes the run's generation 0."""
    if _teacher_done(shared) and not (run_dir / "gen_0").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        logging.info("%s: generation 0 is the shared teacher %s", run_dir, shared)
        _copy_teacher(shared, run_dir / "gen_0")


def keep_teacher(run_dir: Path, shared: Path) -> None:
    """After a run: its generation 0 becomes the shared teacher, when there is none yet."""
    if _teacher_done(run_dir / "gen_0") and not _teacher_done(shared):
        shutil.rmtree(shared, ignore_errors=True)  # an unfinished leftover
        shared.parent.mkdir(parents=True, exist_ok=True)
        _copy_teacher(run_dir / "gen_0", shared)


class RunFailed(RuntimeError):
    """A run of the study ended without results; `reason` is its error's last line."""

    def __init__(self, workdir: Path, reason: str):
        super().__init__(f"{workdir}: {reason}")
        self.reason = reason


def run_one(config: str, workdir: Path, flags_: list[str]) -> dict:
    """Runs (or continues) one run.py command; its results.json. Raises RunFailed."""
    command = [sys.executable, str(ROOT / "run.py"), f"--config={config}", f"--workdir={workdir}"]
    logging.info("Running %s", " ".join(command + flags_))
    last_line = ""
    # Its log passes through as it comes; the last line, the error when it fails, is kept.
    with subprocess.Popen(command + flags_, cwd=ROOT, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            last_line = line.strip() or last_line
    if proc.returncode != 0:
        raise RunFailed(workdir, last_line or f"run.py exited with status {proc.returncode}")
    done = finished(workdir)
    if done is None:
        raise RunFailed(workdir, "run.py ended without a complete results.json")
    return done


def _row(results_: dict) -> dict:
    """One run's per-generation numbers."""
    rows = []
    for g in results_["generations"]:
        p = g.get("pseudo_labels") or {}
        rows.append(
            {
                "generation": g["generation"],
                "test_pck@0.1": g["test"]["pck@0.1"],
                "validation_pck@0.1": (g.get("validation") or {}).get("pck@0.1"),
                "pseudo_points": p.get("points"),
                "precision@0.1": p.get("precision@0.1"),
            }
        )
    return rows


def _gains(rows: list, last: int) -> dict:
    """Generation `last` against its own run's teacher, seed by seed: the mechanism's measure."""

    def gain(run: list, key: str) -> float | None:
        return None if run[0][key] is None else run[last][key] - run[0][key]

    test = [gain(r, "test_pck@0.1") for r in rows]
    return {
        "test": _mean_std(test),
        "validation": _mean_std([gain(r, "validation_pck@0.1") for r in rows]),
        "smallest_test": min(test),
    }


def _mean_std(values: list) -> dict:
    """Mean and sample standard deviation (n - 1; None for a single value) of the values given."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "std": std, "n": len(values)}


def collect(
    study: dict,
    planned: list[dict],
    done: dict,
    failed: dict | None = None,
    unfinished: tuple[str, ...] = (),
) -> dict:
    """The study table: every run's rows, and per cell the mean and std over its seeds.

    `failed`: workdir -> error of the runs that ended without results; `unfinished`: workdirs of
    the runs not finished yet (a report only). Both are listed, per cell and in all, and left out
    of the means.
    """
    failed = failed or {}
    table = {"config": study["config"], "overrides": study["overrides"], "cells": {}}
    table["failed"] = [
        {"cell": r["cell"], "seeds": r["seeds"], "workdir": str(r["workdir"]), "error": error}
        for r in planned
        if (error := failed.get(str(r["workdir"]))) is not None
    ]
    table["unfinished"] = [
        {"cell": r["cell"], "seeds": r["seeds"], "workdir": str(r["workdir"])}
        for r in planned
        if str(r["workdir"]) in unfinished
    ]
    for cell in study["cells"]:
        cell_runs = [r for r in planned if r["cell"] == cell and str(r["workdir"]) in done]
        # A workdir may hold more generations than its cell trains (one continued further).
        rows = [_row(done[str(r["workdir"])])[: r["generations"] + 1] for r in cell_runs]
        # A cell whose every run failed keeps its place in the table, without numbers.
        generations = min((len(r) for r in rows), default=0)
        summary = {
            key: [_mean_std([r[g][key] for r in rows]) for g in range(generations)]
            for key in ("test_pck@0.1", "validation_pck@0.1", "pseudo_points", "precision@0.1")
        }
        table["cells"][cell] = {
            "settings": study["cells"][cell],
            "runs": [
                {
                    "seeds": r["seeds"],
                    "workdir": str(r["workdir"]),
                    "teacher": r["teacher"],
                    "generations": rows_,
                }
                for r, rows_ in zip(cell_runs, rows, strict=True)
            ],
            "failed": [f for f in table["failed"] if f["cell"] == cell],
            "unfinished": [u for u in table["unfinished"] if u["cell"] == cell],
            "per_generation": summary if rows else {},
            "final_gain": _gains(rows, generations - 1) if rows else None,
        }
    return table


def _pm(stat: dict, digits: int = 2, sign: str = "") -> str:
    """mean ± std over seeds ("-" without values; the mean alone for one run); sign "+" signs
    the mean (gains)."""
    if stat["mean"] is None:
        return "-"
    mean = f"{stat['mean']:{sign}.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std']:.{digits}f}"


def markdown(table: dict) -> str:
    """Two tables, mean ± std over seeds: per cell the teacher's and the final generation's
    numbers, and the final generation's gain over its teacher (smallest: of the worst seed);
    then every generation of every cell."""
    lines = [
        "Mean ± standard deviation over a cell's seeds (n - 1); gain: the final generation minus "
        "its own run's teacher.",
        "",
        "| cell | seeds | teacher PCK@0.1 | final PCK@0.1 | gain | smallest gain | "
        "final val PCK@0.1 | val gain | final pseudo points | final precision@0.1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, entry in table["cells"].items():
        s, gain = entry["per_generation"], entry["final_gain"]
        if not entry["runs"]:
            lines.append(f"| {cell} | 0 | " + " | ".join(["-"] * 8) + " |")
            continue
        last = len(s["test_pck@0.1"]) - 1
        lines.append(
            f"| {cell} | {len(entry['runs'])} | {_pm(s['test_pck@0.1'][0])} | "
            f"{_pm(s['test_pck@0.1'][last])} | {_pm(gain['test'], sign='+')} | "
            f"{gain['smallest_test']:+.2f} | {_pm(s['validation_pck@0.1'][last])} | "
            f"{_pm(gain['validation'], sign='+')} | {_pm(s['pseudo_points'][last], 0)} | "
            f"{_pm(s['precision@0.1'][last])} |"
        )
    lines += [
        "",
        "| cell | generation | test PCK@0.1 | val PCK@0.1 | pseudo points | precision@0.1 |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for cell, entry in table["cells"].items():
        s = entry["per_generation"]
        for g in range(len(s.get("test_pck@0.1", ()))):
            lines.append(
                f"| {cell} | {g} | {_pm(s['test_pck@0.1'][g])} | "
                f"{_pm(s['validation_pck@0.1'][g])} | {_pm(s['pseudo_points'][g], 0)} | "
                f"{_pm(s['precision@0.1'][g])} |"
            )
    if table["failed"]:
        lines += ["", "Failed runs (left out of the means):", ""]
        lines += [f"- {f['workdir']}: {f['error']}" for f in table["failed"]]
    if table["unfinished"]:
        lines += ["", "Runs not finished yet (left out of the means):", ""]
        lines += [f"- {u['workdir']}" for u in table["unfinished"]]
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    """Test PCK@0.1 per generation, one line per cell, mean ± std over seeds."""
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plotted = {cell: entry for cell, entry in table["cells"].items() if entry["runs"]}
    for cell, entry in plotted.items():
        stats = entry["per_generation"]["test_pck@0.1"]
        x = np.arange(len(stats))
        mean = np.array([s["mean"] for s in stats])
        std = np.array([s["std"] or 0.0 for s in stats])
        axes.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=cell)
    generations = max(
        (len(e["per_generation"]["test_pck@0.1"]) for e in plotted.values()), default=1
    )
    axes.set_xticks(range(generations))
    axes.set_xlabel("generation (0 = teacher)")
    axes.set_ylabel("test PCK@0.1 (%), mean ± std over seeds")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.savefig(path, format="png")


def run_study(
    study_path: str | Path,
    workdir: str | Path,
    runner=run_one,
    teachers: str | Path | None = None,
    report_only: bool = False,
) -> dict:
    """Runs every unfinished run of the study, then writes study.json, .md and .png.

    `teachers`: the folder of shared teachers (default W/teachers). `report_only`: run nothing;
    the tables hold the finished runs and list the others as unfinished.
    """
    study = load_study(study_path)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    teachers = Path(teachers) if teachers else workdir / TEACHERS_DIR
    planned = runs(study)
    done, failed, unfinished = {}, {}, []
    for r in planned:
        run_dir = workdir / r["workdir"]
        shared = teachers / r["teacher"] / "gen_0"
        previous = finished(run_dir, r["generations"])
        if previous is not None:
            logging.info("Skipping %s: finished.", run_dir)
            done[str(r["workdir"])] = previous
        elif report_only:
            unfinished.append(str(r["workdir"]))
        else:
            share_teacher(run_dir, shared)
            try:
                done[str(r["workdir"])] = runner(study["config"], run_dir, r["flags"])
            except RunFailed as e:
                logging.error("%s (the study goes on without it)", e)
                failed[str(r["workdir"])] = e.reason
        if not report_only:  # a report changes no folder but its tables
            keep_teacher(run_dir, shared)
    table = collect(study, planned, done, failed, tuple(unfinished))
    atomic.write_json(workdir / STUDY_FILE, table)
    atomic.write_text(workdir / TABLE_FILE, markdown(table) + "\n")
    plot(table, workdir / PLOT_FILE)
    print(markdown(table))
    return table


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    table = run_study(
        flags.FLAGS.study,
        flags.FLAGS.workdir,
        teachers=flags.FLAGS.teachers,
        report_only=flags.FLAGS.report_only,
    )
    if table["failed"]:
        names = ", ".join(f["workdir"] for f in table["failed"])
        sys.exit(f"{len(table['failed'])} run(s) of the study failed: {names} (errors in study.md)")


if __name__ == "__main__":
    flags.DEFINE_string("study", None, "A study file (configs/studies/*.py).")
    flags.DEFINE_string("workdir", None, "Folder of the study's runs and tables.")
    flags.DEFINE_string(
        "teachers", None, "Folder of the teachers runs share (default: <workdir>/teachers)."
    )
    flags.DEFINE_bool(
        "report_only",
        False,
        "Run nothing: write the tables from the runs finished so far, listing the others.",
    )
    flags.mark_flags_as_required(["study", "workdir"])
    app.run(main)
