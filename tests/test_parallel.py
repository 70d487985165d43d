"""Data parallelism: train and eval steps on 4 emulated CPU devices equal the 1-device run.

`XLA_FLAGS=--xla_force_host_platform_device_count=N` only works before jax is imported, so each
device count runs tests/parallel_worker.py in its own process (both at once) and the results are
compared here. `MATCHME_PARALLEL_DEVICE_COUNTS=1,2,4` checks more counts (1 must be among them).

Tolerances: every run computes the same math on the same seeded inputs; only the order of the
float32 reductions differs (per-device partial sums, then an all-reduce, for the loss, the
gradients and the BatchNorm batch statistics). Measured on a 2-core CPU, 1 vs 4 devices:
- frozen BatchNorm, 3 steps: losses and grad norms within 4e-7, params within 8e-6 (Adam
  divides by sqrt(v), so ~1e-7 relative gradient noise shows up as ~1e-5 of one lr=1e-3 step);
- official BatchNorm (global batch statistics), 1 step: loss within 7e-6, running statistics
  within 2e-7. Its gradient (norm ~850 on random noise images: the backward pass through the
  batch statistics cancels heavily) is only equal to 3e-4 relative, and Adam's first update is
  lr * sign(g), so a few entries whose gradient is ~0 move by up to 2 lr the other way (19 of
  62k measured). A per-device batch statistic would change the loss and the running statistics
  at the 1e-2 level;
- eval: per-pair PCK exactly equal, flow within 9e-7; a whole evaluation (`evaluate.evaluate`)
  and annotation pass (`annotate.annotate_pairs`) over 7 pairs in batches split over the devices
  give the same PCK and the same pseudo labels.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from subprocess_env import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("parallel_worker.py")
DEVICE_COUNTS = tuple(
    int(n) for n in os.environ.get("MATCHME_PARALLEL_DEVICE_COUNTS", "1,4").split(",")
)
BATCH_SIZE = 8
LEARNING_RATE = 1e-3  # configs/synthetic.py:tiny, head and backbone


def _start(n: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out)],
        cwd=ROOT,
        env=subprocess_env(f"--xla_force_host_platform_device_count={n}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, dict[str, np.ndarray]]:
    """Device count -> the worker's results."""
    out_dir = tmp_path_factory.mktemp("parallel")
    procs = {n: _start(n, out_dir / f"devices_{n}.npz") for n in DEVICE_COUNTS}
    for n, proc in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"worker with {n} devices failed:\n{log[-4000:]}"
    return {n: dict(np.load(out_dir / f"devices_{n}.npz")) for n in DEVICE_COUNTS}


def _keys(run: dict[str, np.ndarray], prefix: str) -> list[str]:
    keys = sorted(k for k in run if k.startswith(prefix + "["))
    assert keys, prefix
    return keys


@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_the_batch_is_split_over_every_device(runs, n):
    run = runs[n]
    assert int(run["device_count"]) == n
    assert str(run["batch_spec"]) == "P('data',)"
    # The compiled eval step takes the batch split too, not gathered onto one device.
    assert str(run["eval/compiled_batch_spec"]) == "P('data',)"
    np.testing.assert_array_equal(run["batch_shard_rows"], [BATCH_SIZE // n] * n)
    assert run["frozen/params_replicated"] and run["official/params_replicated"]


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_frozen_batchnorm_train_steps_equal_one_device(runs, n):
    one, many = runs[1], runs[n]
    np.testing.assert_allclose(many["frozen/loss"], one["frozen/loss"], rtol=2e-6)
    np.testing.assert_allclose(many["frozen/grad_norm"], one["frozen/grad_norm"], rtol=2e-6)
    for key in _keys(one, "frozen/params") + _keys(one, "frozen/batch_stats"):
        np.testing.assert_allclose(many[key], one[key], rtol=1e-5, atol=3e-5, err_msg=key)


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_official_batchnorm_uses_the_global_batch_statistics(runs, n):
    one, many = runs[1], runs[n]
    np.testing.assert_allclose(many["official/loss"], one["official/loss"], rtol=2e-5)
    np.testing.assert_allclose(many["official/grad_norm"], one["official/grad_norm"], rtol=2e-3)
    stats = _keys(one, "official/batch_stats")
    for key in stats:
        np.testing.assert_allclose(many[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # The running statistics moved: the comparison above is not between two initial values.
    initial = {k: 1.0 if k.endswith("['var']") else 0.0 for k in stats}
    assert max(np.abs(one[k] - initial[k]).max() for k in stats) > 1e-2


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_official_batchnorm_params_equal_one_device_but_for_sign_flips(runs, n):
    one, many = runs[1], runs[n]
    differing = total = 0
    for key in _keys(one, "official/params"):
        diff = np.abs(many[key] - one[key])
        assert diff.max() <= 2 * LEARNING_RATE + 1e-5, key
        differing += int(np.sum(diff > 3e-5))
        total += diff.size
    assert differing <= total // 1000, f"{differing} of {total} parameters differ"


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_eval_step_equals_one_device(runs, n):
    one, many = runs[1], runs[n]
    np.testing.assert_array_equal(many["eval/pck"], one["eval/pck"])
    assert one["eval/pck"].any()  # some keypoints are correct: the equality is not of zeros
    np.testing.assert_allclose(many["eval/flow"], one["eval/flow"], rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_evaluation_and_annotation_batches_are_split_over_every_device(runs, n):
    # Eval batches of 3 are rounded up to a multiple of the device count: 3 (+ padding) on one
    # device, 4 on two or four; each device gets its rows, none the whole batch.
    size = 3 if n == 1 else 4
    batches = -(-7 // size)
    for key in ("evaluate/shard_rows", "annotate/shard_rows"):
        np.testing.assert_array_equal(runs[n][key], [[size // n] * n] * batches, err_msg=key)


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_evaluation_and_annotation_equal_one_device(runs, n):
    one, many = runs[1], runs[n]
    result = json.loads(str(one["evaluate/result"]))
    assert result == json.loads(str(many["evaluate/result"]))
    assert result["num_pairs"] == 7 and result["pck@0.5"] > 0
    np.testing.assert_array_equal(many["annotate/tau_sweep"], one["annotate/tau_sweep"])
    assert one["annotate/tau_sweep"][:, 2].max() > 0  # the sweep kept points at some tau
    np.testing.assert_array_equal(many["annotate/index"], one["annotate/index"])
    for key in ("source_keypoints", "target_keypoints", "confidence"):
        np.testing.assert_allclose(
            many[f"annotate/{key}"], one[f"annotate/{key}"], atol=1e-4, err_msg=key
        )
