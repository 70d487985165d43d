"""One generation's training loop: batches in, a trained state and per-step logs out."""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from matchme_jax import atomic, errors, parallel, progress
from matchme_jax.checkpoint import GenerationCheckpoints
from matchme_jax.data import pipeline
from matchme_jax.train.state import TrainState
from matchme_jax.train.step import TrainStep

# What the loop watches for NaN and infinities after every step, one bit each (see `_watched`).
WATCHED = ("the loss", "the gradient norm", "the parameters", "the BatchNorm statistics")
# What a diverged run is told to do (the trainer names the learning rates of its config).
DIVERGENCE_FIX = "Lower config.optim.head_lr and config.optim.backbone_lr, or check the input data."


class DivergedError(errors.UserError):
    """The training went non-finite: a NaN or infinite loss, gradient norm or parameter."""


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
    on_log: Callable[[int, dict], None] | None = None,
    divergence_fix: str = DIVERGENCE_FIX,
) -> TrainState:
    """Runs train steps from `state.step` to `train_cfg.steps`.

    Logs one line (and, on the main process, one JSON line in `log_path`) every `log_every`
    steps, and checkpoints every `checkpoint_every` steps and at the end, with the iterator
    state so that a resumed run replays the same batches. Closes `batches`. On the main process,
    `on_log(step, metrics)` gets the logged metrics too, and a progress line
    (`progress.Progress`) counts the steps.

    Divergence stops the run: after every step, a flag on the device records the first step
    whose loss, gradient norm, parameters or BatchNorm statistics hold a NaN or an infinity
    (`WATCHED`). It is read at log steps and before every checkpoint, and a non-finite one raises
    DivergedError (naming the step, what went non-finite, and `divergence_fix`) before anything
    of that step is logged or saved: every checkpoint is finite, and the latest one stays the
    last one saved before the divergence.

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
    # Counted as the steps are dispatched: the progress line never waits for the device.
    bar = progress.Progress(steps, desc=f"{label} train", unit="steps", initial=start)
    # (first non-finite step or 0, its WATCHED bits); global, as the state, for multi-process.
    health = parallel.replicate(np.zeros(2, np.int32))

    def check_health() -> None:
        """Raises DivergedError when a step so far went non-finite (waits for the device)."""
        bad_step, bits = (int(v) for v in jax.device_get(health))
        if bad_step:
            raise _diverged(label, bad_step, steps, bits, checkpoints, divergence_fix)

    # Every process computes the metrics; only the main one keeps them.
    try:
        with open(log_path if main else os.devnull, "a") as log, bar:
            for step in range(start + 1, steps + 1):
                state, metrics = train_step(state, next(device_batches), rng, strength)
                # Dispatched like the step: no wait for the device here.
                health = _watched(health, state, metrics["loss"], metrics["grad_norm"])
                bar.update()
                if step % train_cfg.log_every == 0 or step == steps:
                    check_health()
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    metrics["steps_per_s"] = (step - tick_step) / (now - tick)
                    tick, tick_step = now, step
                    bar.clear()
                    logging.info(
                        "%s step %d/%d  loss %.4f  grad_norm %.3f  %.2f steps/s",
                        label,
                        step,
                        steps,
                        metrics["loss"],
                        metrics["grad_norm"],
                        metrics["steps_per_s"],
                    )
                    log.write(atomic.json_line({"step": step, **metrics}))
                    log.flush()
                    if main and on_log is not None:
                        on_log(step, metrics)
                if step % train_cfg.checkpoint_every == 0 or step == steps:
                    check_health()
                    checkpoints.save(step, state, device_batches.get_state())
    except DivergedError:
        # The last finite checkpoint may still be being written: let it finish, as the latest.
        device_batches.close()
        checkpoints.wait()
        raise
    # The iterator reads ahead on background threads; left running, they keep decoding batches
    # nobody takes and starve the checkpoint writer (seconds per generation on 2 cores).
    device_batches.close()
    checkpoints.wait()
    return state


@jax.jit
def _watched(health: jax.Array, state: TrainState, loss: jax.Array, grad_norm: jax.Array):
    """`health` (first non-finite step or 0, its `WATCHED` bits) updated with this step's."""

    def finite(tree) -> jax.Array:
        leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.array(True)]))

    ok = jnp.stack(
        [
            jnp.isfinite(loss),
            jnp.isfinite(grad_norm),
            finite(state.params),
            finite(state.batch_stats),
        ]
    )
    bits = jnp.sum(jnp.where(ok, 0, 2 ** jnp.arange(len(WATCHED), dtype=jnp.int32)))
    first = (health[0] == 0) & (bits != 0)
    return jnp.where(first, jnp.stack([state.step.astype(jnp.int32), bits]), health)


def _diverged(
    label: str, step: int, steps: int, bits: int, checkpoints: GenerationCheckpoints, fix: str
) -> DivergedError:
    """The error of a run whose step `step` went non-finite (`bits`: which `WATCHED`)."""
    what = [name for i, name in enumerate(WATCHED) if bits >> i & 1]
    what = what[0] if len(what) == 1 else ", ".join(what[:-1]) + " and " + what[-1]
    latest = checkpoints.latest_step()
    kept = (
        f"the latest checkpoint, {checkpoints.step_dir(latest)}, is finite"
        if latest is not None
        else "this generation has no checkpoint yet"
    )
    return DivergedError(
        f"{label}: the training diverged at step {step} of {steps}: {what} went NaN or "
        f"infinite. Nothing since was saved ({kept}). {fix}"
    )


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
