"""One generation's training loop: batches in, a trained state and per-step logs out."""

import json
import math
import time
from pathlib import Path

import jax
from absl import logging

from matchme_jax import parallel
from matchme_jax.checkpoint import GenerationCheckpoints
from matchme_jax.data import pipeline
from matchme_jax.train.state import TrainState
from matchme_jax.train.step import TrainStep


def train_generation(
    *,
    state: TrainState,
    train_step: TrainStep,
    batches,
    strength,
    rng: jax.Array,
    train_cfg,
    checkpoints: GenerationCheckpoints,
    log_path: Path,
    label: str,
) -> TrainState:
    """Runs train steps from `state.step` to `train_cfg.steps`.

    Logs one line (and one JSON line in `log_path`) every `log_every` steps, stops with a clear
    error on a non-finite loss, and checkpoints every `checkpoint_every` steps and at the end,
    with the iterator state so that a resumed run replays the same batches. Closes `batches`.
    """
    steps = train_cfg.steps
    start = int(jax.device_get(state.step))
    _drop_lines_after(log_path, start)
    tick, tick_step = time.perf_counter(), start
    with open(log_path, "a") as log:
        for step in range(start + 1, steps + 1):
            batch = parallel.shard_batch(pipeline.device_batch(next(batches)))
            state, metrics = train_step(state, batch, rng, strength)
            if step % train_cfg.log_every == 0 or step == steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"{label}: the loss is {metrics['loss']} at step {step}. Lower "
                        "config.optim.head_lr / backbone_lr or check the input data."
                    )
                now = time.perf_counter()
                metrics["steps_per_s"] = (step - tick_step) / (now - tick)
                tick, tick_step = now, step
                logging.info(
                    "%s step %d/%d  loss %.4f  grad_norm %.3f  %.2f steps/s",
                    label,
                    step,
                    steps,
                    metrics["loss"],
                    metrics["grad_norm"],
                    metrics["steps_per_s"],
                )
                log.write(json.dumps({"step": step, **metrics}) + "\n")
                log.flush()
            if step % train_cfg.checkpoint_every == 0 or step == steps:
                checkpoints.save(step, state, batches.get_state())
    # The iterator reads ahead on background threads; left running, they keep decoding batches
    # nobody takes and starve the checkpoint writer (seconds per generation on 2 cores).
    batches.close()
    checkpoints.wait()
    return state


def _drop_lines_after(log_path: Path, step: int) -> None:
    """Forgets the log lines of steps after `step`: a resumed run logs them again."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    # A kill can cut the last line short: it is not JSON, and nothing follows it.
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except json.JSONDecodeError:
            break
    tmp = log_path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(log_path)
