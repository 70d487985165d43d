"""One generation's training loop: batches in, a trained state and per-step logs out."""

import json
import math
import os
import time
from pathlib import Path

import jax
from absl import logging

from matchme_jax import atomic, parallel
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

    Logs one line (and, on the main process, one JSON line in `log_path`) every `log_every`
    steps, stops with a clear error on a non-finite loss, and checkpoints every
    `checkpoint_every` steps and at the end, with the iterator state so that a resumed run
    replays the same batches. Closes `batches`.

    The host waits for the device only at log steps (metrics) and checkpoints: between them
    the steps are dispatched asynchronously, and the next batch is copied to the devices while
    the current step runs.
    """
    steps = train_cfg.steps
    start = int(jax.device_get(state.step))
    main = parallel.is_main_process()
    if main:
        _drop_lines_after(log_path, start)
    device_batches = parallel.DevicePrefetch(
        batches, lambda b: parallel.shard_batch(pipeline.device_batch(b))
    )
    tick, tick_step = time.perf_counter(), start
    # Every process computes the metrics; only the main one keeps them.
    with open(log_path if main else os.devnull, "a") as log:
        for step in range(start + 1, steps + 1):
            state, metrics = train_step(state, next(device_batches), rng, strength)
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
                checkpoints.save(step, state, device_batches.get_state())
    # The iterator reads ahead on background threads; left running, they keep decoding batches
    # nobody takes and starve the checkpoint writer (seconds per generation on 2 cores).
    device_batches.close()
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
    atomic.write_text(log_path, "".join(kept))
