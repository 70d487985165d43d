"""Exact resume: `run.py` killed with SIGKILL, then run again, ends with an unbroken run's results.

The same command (`configs/synthetic.py:tiny` as shipped) runs once unbroken, then in fresh workdirs
it is killed again and again, each time at a later point, and finally run to completion:
- at chosen points, by a wrapper that sends SIGKILL to its own process on the N-th occurrence of
  an event (a checkpoint written or still being written, an annotation batch, an evaluation
  batch, a train step), so that every phase of a generation is hit on every run of the test;
- at moments picked from outside, as a user would, when a file of the run appears.
Its TensorBoard curves must end up as the unbroken run's too (timings aside): what a killed try
logged after its checkpoint is hidden, and the resumed try logs those steps again.
The subprocesses share the suite's persistent compilation cache: each restart then loads its
compiled functions instead of compiling them again (about 20 s instead of 70 s on 2 cores).
"""

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from subprocess_env import subprocess_env
from test_curves import read_scalars

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600

# Runs run.py (argv[1:]) and kills its own process at the N-th EVENT, MATCHME_KILL_AT=EVENT:N.
KILL_HOOK = """
import os, runpy, signal, sys

from matchme_jax import annotate, checkpoint, evaluate
from matchme_jax.train.step import TrainStep

EVENT, NTH = os.environ["MATCHME_KILL_AT"].split(":")
seen = {}


def reached(event):
    seen[event] = seen.get(event, 0) + 1
    if event == EVENT and seen[event] == int(NTH):
        print(f"KILLED AT {EVENT}:{NTH}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def counting(event, fn):
    def counted(*args, **kwargs):
        reached(event)
        return fn(*args, **kwargs)

    return counted


save = checkpoint.GenerationCheckpoints.save


def save_and_count(self, *args, **kwargs):
    save(self, *args, **kwargs)
    reached("save")  # Orbax is still writing it in the background.
    if EVENT == "saved":
        self.wait()
        reached("saved")


checkpoint.GenerationCheckpoints.save = save_and_count
TrainStep.__call__ = counting("train", TrainStep.__call__)
make_annotate_step, make_eval_step = annotate.make_annotate_step, evaluate.make_eval_step
annotate.make_annotate_step = lambda *a, **k: counting("annotate", make_annotate_step(*a, **k))
evaluate.make_eval_step = lambda *a: counting("eval", make_eval_step(*a))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# One fresh tiny run's events: gen 0 trains 6 steps (checkpoints at 3 and 6) and evaluates 3
# test and 3 validation batches; generations 1 and 2 annotate 2 batches, train 6 steps and
# evaluate the same. Each kill is counted in the process it ends, which continues where the one
# before stopped.
CHOSEN_KILLS = (
    "saved:1",  # gen 0, after its step-3 checkpoint
    "annotate:2",  # finishes gen 0 (steps 4-6, evaluations), then mid-annotation for gen 1
    "save:1",  # annotates gen 1 again, then its step-3 checkpoint half written
    "eval:2",  # finishes training gen 1, then mid-test
    "train:4",  # evaluates gen 1, annotates for gen 2, then in its training
)


@pytest.fixture(scope="module")
def environment(tmp_path_factory, tfds_dir):
    return kill_environment(tmp_path_factory, tfds_dir)


def kill_environment(tmp_path_factory, tfds_dir) -> tuple[dict, Path, str]:
    """(subprocess env, the kill hook script, the TFDS dir).

    The env keeps the suite's persistent compilation cache (tests/conftest.py), so the runs
    share compiled programs with each other and with every other test's subprocesses.
    """
    env = subprocess_env()
    hook = tmp_path_factory.mktemp("hook") / "kill_hook.py"
    hook.write_text(KILL_HOOK)
    return env, hook, tfds_dir


def _command(workdir: Path, data_dir: str) -> list[str]:
    return [
        str(ROOT / "run.py"),
        "--config=configs/synthetic.py:tiny",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
    ]


def _run(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        **kwargs,
    )


def _complete(workdir: Path, environment) -> tuple[list[dict], dict]:
    """(results.json's generations, the TensorBoard curves but the timings) of a finished run."""
    env, _, data_dir = environment
    done = _run(_command(workdir, data_dir), env)
    assert done.returncode == 0, done.stderr[-3000:]
    board = {
        run.name: {tag: v for tag, v in read_scalars(run).items() if tag != "train/steps_per_s"}
        for run in (workdir / "tensorboard").iterdir()
    }
    return json.loads((workdir / "results.json").read_text())["generations"], board


def _killed_by_hook(workdir: Path, environment, kill_at: str) -> None:
    env, hook, data_dir = environment
    killed = _run([str(hook), *_command(workdir, data_dir)], dict(env, MATCHME_KILL_AT=kill_at))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert f"KILLED AT {kill_at}" in killed.stderr


def _killed_when_present(workdir: Path, environment, path: Path, delay_s: float) -> None:
    """Starts the run and sends it SIGKILL `delay_s` after `path` appears."""
    env, _, data_dir = environment
    process = subprocess.Popen(
        [sys.executable, *_command(workdir, data_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"the run ended before {path.name} appeared"


@pytest.fixture(scope="module")
def unbroken(environment, tmp_path_factory):
    return _complete(tmp_path_factory.mktemp("unbroken"), environment)


def _chosen_kills(workdir: Path, environment) -> tuple[list[dict], dict]:
    for kill_at in CHOSEN_KILLS:
        _killed_by_hook(workdir, environment, kill_at)
    return _complete(workdir, environment)


def _kills_from_outside(workdir: Path, environment) -> tuple[list[dict], dict]:
    # Moments a user might pick: as the teacher's pseudo labels land, and a second into the
    # second student's generation.
    _killed_when_present(workdir, environment, workdir / "gen_1" / "pseudo" / "stats.json", 0.0)
    _killed_when_present(workdir, environment, workdir / "gen_2", 1.0)
    return _complete(workdir, environment)


@pytest.fixture(scope="module")
def resumed(unbroken, environment, tmp_path_factory):
    """Both kill sequences, run side by side (each process is mostly one busy core)."""
    with ThreadPoolExecutor(2) as pool:
        yield {
            name: pool.submit(chain, tmp_path_factory.mktemp(name), environment)
            for name, chain in (("chosen", _chosen_kills), ("outside", _kills_from_outside))
        }


def test_killed_at_chosen_points_ends_like_an_unbroken_run(unbroken, resumed):
    assert resumed["chosen"].result() == unbroken


def test_killed_from_outside_ends_like_an_unbroken_run(unbroken, resumed):
    assert resumed["outside"].result() == unbroken
