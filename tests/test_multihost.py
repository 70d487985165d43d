"""Two CPU processes joined by `jax.distributed` form one run.

Each process puts its half of a batch on its device (`parallel.shard_batch`); the jitted
annotate step runs on the global batch of both halves. Its flow must equal the flow of the whole
batch given to every device, and so must the flow of the whole batch held by both processes and
split over their devices (`parallel.run_on_full_batch`, evaluation's and annotation's path). Only
process 0 may count as the main (writing) process, and only process 0 prepares a dataset in a
TFDS dir they share while process 1 waits for it (`sources.prepare`).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest
from subprocess_env import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multihost_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, dict[str, np.ndarray]]:
    """Process id -> that worker's results."""
    out = tmp_path_factory.mktemp("multihost")
    port = portpicker.pick_unused_port()
    env = subprocess_env()
    jobs = {}
    for pid in (0, 1):
        command = [sys.executable, str(WORKER), str(pid), "2", str(port), f"{out}/{pid}.npz"]
        jobs[pid] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for key, proc in jobs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"worker {key} failed:\n{log[-4000:]}"
    return {pid: dict(np.load(f"{out}/{pid}.npz")) for pid in jobs}


def test_two_processes_form_one_run(runs):
    for pid, run in runs.items():
        assert int(run["process_count"]) == 2 and int(run["device_count"]) == 2
        assert int(run["global_batch"]) == 8  # two local halves of 4
        assert bool(run["is_main"]) == (pid == 0)


def test_the_split_batch_gives_the_flow_of_the_whole_batch(runs):
    for run in runs.values():
        np.testing.assert_allclose(run["flow"], run["whole_flow"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(run["confidence"], run["whole_confidence"], atol=1e-6)
        assert run["flow"].shape[0] == 8
        assert np.abs(run["whole_flow"]).max() > 0.1  # a real flow, not zeros


def test_a_full_batch_held_by_every_process_is_split_and_gathered_back(runs):
    # Evaluation and annotation: each process reads the whole batch, the devices share it.
    for run in runs.values():
        np.testing.assert_allclose(run["full_batch_flow"], run["whole_flow"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(run["full_batch_confidence"], run["whole_confidence"], atol=1e-6)


def test_process_0_prepares_a_shared_dataset_the_other_waits_for_it(runs):
    assert [int(runs[pid]["prepared_here"]) for pid in (0, 1)] == [1, 0]
    assert int(runs[0]["test_pairs"]) == int(runs[1]["test_pairs"]) == 2
