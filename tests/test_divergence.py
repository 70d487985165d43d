"""A diverging training stops with one message (issue 18, item 1): which generation, step and
quantity went NaN or infinite, and the fix; nothing non-finite is saved or recorded as a result,
and the latest checkpoint stays the last finite one."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from subprocess_env import ROOT, subprocess_env

from matchme_jax import checkpoint, init_from, results
from matchme_jax.data import pipeline
from matchme_jax.train import loop
from matchme_jax.train.state import TrainState


class _Batches:
    """A host iterator of tiny batches with grain's get_state / set_state / close."""

    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return {key: np.full((1,), self.position, np.float32) for key in pipeline.DEVICE_KEYS}

    def get_state(self) -> dict:
        return {"position": self.position}

    def close(self) -> None:
        pass


def _step_going_bad(at: int, what: str):
    """A train step (the real one's signature) whose step `at` makes `what` non-finite."""

    def step(state, batch, rng, strength):
        n = state.step + 1
        bad = n >= at
        params = {"w": state.params["w"] + 1.0}
        loss, grad_norm = jnp.float32(1.0), jnp.float32(2.0)
        if what == "params":  # and stays so, as NaN weights do
            params = {"w": jnp.where(bad, jnp.nan, params["w"])}
        if what == "loss":  # at that step only: the flag must remember it
            loss = jnp.where(n == at, jnp.inf, loss)
        if what == "grad_norm":
            grad_norm = jnp.where(n == at, jnp.nan, grad_norm)
        new = state.replace(step=n, params=params)
        return new, {"loss": loss, "grad_norm": grad_norm, "keypoints": jnp.int32(1)}

    return step


def _train(tmp_path, step_fn, *, steps=6, log_every=2, checkpoint_every=3):
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.zeros(3)},
        batch_stats={"mean": jnp.ones(2)},
        opt_state=(),
    )
    ckpt = checkpoint.GenerationCheckpoints(tmp_path / "gen_1")
    train_cfg = ConfigDict(
        dict(steps=steps, log_every=log_every, checkpoint_every=checkpoint_every)
    )
    try:
        return loop.train_generation(
            state=state,
            train_step=step_fn,
            batches=_Batches(),
            strength=None,
            rng=jax.random.key(0),
            train_cfg=train_cfg,
            checkpoints=ckpt,
            log_path=tmp_path / "gen_1" / "train_log.jsonl",
            label="gen 1 (student)",
        )
    finally:
        ckpt.close()


def _saved_steps(tmp_path) -> list[int]:
    return sorted(int(p.name) for p in (tmp_path / "gen_1" / "checkpoints").iterdir())


def test_non_finite_parameters_stop_before_the_next_checkpoint(tmp_path):
    with pytest.raises(loop.DivergedError) as error:
        _train(tmp_path, _step_going_bad(5, "params"))
    message = str(error.value)
    assert message.startswith(
        "gen 1 (student): the training diverged at step 5 of 6: the parameters went NaN or "
        "infinite. Nothing since was saved (the latest checkpoint, "
    )
    assert message.endswith(loop.DIVERGENCE_FIX)
    assert _saved_steps(tmp_path) == [3]  # step 6 was never saved
    restored = init_from._from_our_checkpoint(tmp_path / "gen_1")
    assert np.isfinite(restored["params"]["w"]).all()
    logged = [json.loads(line) for line in (tmp_path / "gen_1" / "train_log.jsonl").open()]
    assert [line["step"] for line in logged] == [2, 4]  # the log of step 6 is not written


@pytest.mark.parametrize("what, name", [("loss", "the loss"), ("grad_norm", "the gradient norm")])
def test_a_non_finite_step_between_logs_is_caught(tmp_path, what, name):
    """Step 1 alone goes non-finite; the loop reads the flag only at step 3's checkpoint."""
    with pytest.raises(loop.DivergedError, match=f"at step 1 of 6: {name} went NaN") as error:
        _train(tmp_path, _step_going_bad(1, what), log_every=10)
    assert "this generation has no checkpoint yet" in str(error.value)
    assert _saved_steps(tmp_path) == []


def test_a_finite_training_runs_to_its_end(tmp_path):
    state = _train(tmp_path, _step_going_bad(99, "params"))
    assert int(state.step) == 6 and _saved_steps(tmp_path) == [3, 6]


def test_run_py_stops_a_diverging_run_with_one_line(tmp_path, tfds_dir):
    """The tiny run with learning rates of 1e6 diverges at its second step."""
    workdir = tmp_path / "W"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--config=configs/synthetic.py:tiny",
            f"--workdir={workdir}",
            f"--config.dataset.data_dir={tfds_dir}",
            "--config.optim.head_lr=1e6",
            "--config.optim.backbone_lr=1e6",
            "--config.model.freeze_backbone=False",
            "--config.train.checkpoint_every=1",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("run.py: gen 0 (teacher): the training diverged at step "), last
    assert last.endswith(
        "Lower config.optim.head_lr (1e+06) and config.optim.backbone_lr (1e+06), or check the "
        "input data."
    )
    diverged_at = int(last.split(" at step ")[1].split()[0])
    gen_dir = workdir / "gen_0"
    steps = sorted(int(p.name) for p in (gen_dir / "checkpoints").iterdir())
    assert steps == list(range(max(1, diverged_at - 2), diverged_at))  # kept: the last two
    variables = init_from._from_our_checkpoint(gen_dir)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
    assert not (gen_dir / results.SUMMARY_FILE).exists()
    assert not (workdir / results.RESULTS_FILE).exists()
