"""One run per workdir: a second run is refused naming the holder; a killed run's lock is taken
over; the lock goes at the end of a run, an exception included."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_config import load

from matchme_jax import experiment, workdir_lock
from matchme_jax.workdir_lock import LOCK_FILE, WorkdirBusyError, WorkdirLock

ROOT = Path(__file__).resolve().parents[1]

# Takes the lock of argv[1] once argv[2] exists (a start line for racers), prints what happened,
# and holds the lock until stdin closes.
HOLDER = """
import os, sys, time
from matchme_jax.workdir_lock import WorkdirBusyError, WorkdirLock

while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
lock = WorkdirLock(sys.argv[1])
try:
    lock.acquire()
except WorkdirBusyError:
    print("busy", flush=True)
    sys.exit(0)
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def _holder(workdir: Path, *start_line: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir), *map(str, start_line)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _fake_lock(workdir: Path, **fields) -> None:
    record = {"host": workdir_lock._host(), "since": "2026-12-04T10:00:00+00:00", **fields}
    (workdir / LOCK_FILE).write_text(json.dumps(record))


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        assert holder.stdout.readline() == "held\n"
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["pid"] == holder.pid and held["host"] == workdir_lock._host()
        with pytest.raises(WorkdirBusyError) as error:
            WorkdirLock(tmp_path).acquire()
        message = str(error.value)
        assert f"pid {holder.pid} on host {workdir_lock._host()}" in message
        assert held["since"] in message and "use another --workdir" in message
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not (tmp_path / LOCK_FILE).exists()  # released at its end


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    holder = _holder(tmp_path)
    assert holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"a run that is gone: pid {holder.pid}" in caplog.text
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_pid_of_this_host_is_refused(tmp_path):
    _fake_lock(tmp_path, pid=os.getppid())
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getppid()} on host"):
        WorkdirLock(tmp_path).acquire()


def test_a_dead_pid_of_this_host_is_taken_over(tmp_path):
    _fake_lock(tmp_path, pid=_dead_pid())
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_taken_over(tmp_path):
    """The pid is alive but started at another time than the lock's run: not that run."""
    _fake_lock(tmp_path, pid=os.getppid(), pid_start="1")
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    lock.release()


def test_a_lock_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
    _fake_lock(tmp_path, pid=_dead_pid(), host="another-host")
    with pytest.raises(WorkdirBusyError) as error:
        WorkdirLock(tmp_path).acquire()
    assert f"if you are sure it does not, delete {tmp_path / LOCK_FILE}" in str(error.value)


def test_of_processes_finding_one_stale_lock_exactly_one_takes_it(tmp_path):
    _fake_lock(tmp_path, pid=_dead_pid())
    start = tmp_path / "start"
    racers = [_holder(tmp_path, start) for _ in range(4)]
    time.sleep(1.5)  # all started and waiting at the start line
    start.touch()
    try:
        outcomes = sorted(racer.stdout.readline().strip() for racer in racers)
    finally:
        for racer in racers:
            racer.communicate("")
    assert outcomes == ["busy", "busy", "busy", "held"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start"]


def test_a_live_lock_that_replaced_the_stale_one_is_put_back(tmp_path):
    """A racer removes only the file it judged stale, not the lock another racer made since."""
    _fake_lock(tmp_path, pid=_dead_pid())
    lock = WorkdirLock(tmp_path)
    stale, text = lock._read()
    (tmp_path / LOCK_FILE).unlink()  # the other racer removed it and took the workdir
    _fake_lock(tmp_path, pid=os.getppid())
    lock._remove_stale(stale, text)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getppid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]


@pytest.fixture
def config(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    return config


def test_a_run_holds_the_lock_and_releases_it_at_its_end(config, tmp_path, monkeypatch):
    seen = []

    def selftrain_run(config, workdir):
        seen.append(json.loads((workdir / LOCK_FILE).read_text())["pid"])
        with pytest.raises(WorkdirBusyError):  # a second run meanwhile
            experiment.run(config, workdir)
        return {"done": True}

    monkeypatch.setattr(experiment.selftrain, "run", selftrain_run)
    assert experiment.run(config, tmp_path) == {"done": True}
    assert seen == [os.getpid()] and not (tmp_path / LOCK_FILE).exists()


def test_a_run_that_fails_releases_the_lock(config, tmp_path, monkeypatch):
    def selftrain_run(config, workdir):
        raise FloatingPointError("non-finite loss")

    monkeypatch.setattr(experiment.selftrain, "run", selftrain_run)
    with pytest.raises(FloatingPointError):
        experiment.run(config, tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()
    monkeypatch.setattr(experiment.selftrain, "run", lambda config, workdir: {})
    assert experiment.run(config, tmp_path) == {}
