r"""Throughput benchmark: the train step, the annotator and the host input pipeline, as JSON.

    python -m matchme_jax.bench --config=configs/spair.py --json=OUT.json \
        --modes=train,annotate --batch_sizes=32 --precisions=bf16,fp32 \
        --backbones=fine_tuned,frozen --steps=20 --warmup=3

`--backbones`: the train rows' backbone, fine-tuned whole, frozen, or (a ViT) with only its last
`config.model.trainable_blocks` blocks fine-tuned (`last_blocks`; 2 where the config sets none).

One row per (mode, batch size, precision, backbone): pairs/s as the median over `--steps` timed
calls after `--warmup` untimed ones (each call waits for the device, `block_until_ready`), the
model FLOPs per pair from XLA's cost analysis of the lowered program, and the model FLOPs
utilisation (MFU) they imply against the device's dense peak (`matchme_jax.peaks`; null where the
device is not in the table, e.g. a CPU). Train and annotate rows run the real jitted steps on
random batches of the config's shapes (image_size, max_keypoints), so they need neither the
dataset nor grain/TFDS; the `input` row reads the config's training split through the real
grain pipeline (host only) and needs both.

Each train/annotate row also records memory: `memory_planned` (XLA's buffer assignment of the
compiled program: arguments, outputs, temporaries) and `peak_bytes`, the device allocator's peak
in use, which covers the whole process so far (run one row per process for a row's own peak;
null where the device keeps no statistics, e.g. a CPU). `compile_only=True` compiles the rows and
records compile time, FLOPs and planned memory without running them (the GPU script's CATs++
memory rows); `profile_dir` traces a few more calls of each timed row (`bench.profile`).

Any config field can be overridden as in run.py (`--config.model.attention=xla`). A row that
fails (say, a kernel the device refuses) is recorded with its error and the others still run.
The command line lives in `__main__.py`; this module holds the measurements.
"""

import functools
import importlib.metadata
import itertools
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from matchme_jax import parallel
from matchme_jax.annotate.step import make_annotate_step
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.models import build_model
from matchme_jax.models.backbones import is_trainable
from matchme_jax.peaks import peak_flops
from matchme_jax.train.state import (
    create_train_state,
    make_optimizer,
    trains_soft_argmax_grids,
)
from matchme_jax.train.step import TrainStep

MODES = ("train", "annotate", "input")
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
BACKBONES = ("fine_tuned", "frozen", "last_blocks")
DEFAULT_LAST_BLOCKS = 2

VERSIONED_PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "flax",
    "optax",
    "numpy",
)


def random_batch(batch_size: int, image_size: int, max_keypoints: int, seed: int = 0) -> dict:
    """Random pairs with the device keys and dtypes of a prepared batch (data/pipeline.py)."""
    rng = np.random.default_rng(seed)
    b, k, s = batch_size, max_keypoints, image_size

    def images() -> np.ndarray:
        return rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)

    def keypoints() -> np.ndarray:
        return rng.uniform(1.0, s - 1.0, (b, k, 2)).astype(np.float32)

    box = np.tile(np.array([0.0, 0.0, s - 1.0, s - 1.0], np.float32), (b, 1))
    return {
        "source_image": images(),
        "target_image": images(),
        "source_keypoints": keypoints(),
        "target_keypoints": keypoints(),
        "keypoint_mask": np.ones((b, k), bool),
        "keypoint_weight": np.ones((b, k), np.float32),
        "source_bbox": box,
        "target_bbox": box.copy(),
        "flip": np.zeros(b, bool),
        "valid": np.ones(b, bool),
    }


def program_flops(stage: jax.stages.Lowered | jax.stages.Compiled) -> float | None:
    """FLOPs of one call of a program per device, from XLA's cost analysis of `stage`."""
    costs = stage.cost_analysis()
    if isinstance(costs, list | tuple):  # older jax: one dict per program
        costs = costs[0] if costs else None
    flops = (costs or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def planned_memory(compiled: jax.stages.Compiled) -> dict | None:
    """Bytes of XLA's buffer assignment for one call (per device); None where not reported."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if stats is None:
        return None
    sizes = {
        name: int(getattr(stats, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "alias", "temp", "generated_code")
        if hasattr(stats, f"{name}_size_in_bytes")
    }
    # Donated arguments alias outputs: count those bytes once.
    sizes["total"] = sum(sizes.get(k, 0) for k in ("argument", "output", "temp")) - sizes.get(
        "alias", 0
    )
    peak = getattr(stats, "peak_memory_in_bytes", None)
    if peak:
        sizes["peak"] = int(peak)
    return sizes


def peak_bytes_in_use() -> int | None:
    """The first device's allocator peak since the process started; None if not tracked."""
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def time_calls(call: Callable[[], object], steps: int, warmup: int) -> list[float]:
    """Seconds of `steps` calls after `warmup`, each waited for on the device."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        seconds.append(time.perf_counter() - start)
    return seconds


def profile_calls(call: Callable[[], object], directory: str, calls: int = 3) -> None:
    """A `jax.profiler` trace of `calls` more calls in `directory`, with the Perfetto JSON file
    (`plugins/profile/*/perfetto_trace.json.gz`) that `matchme_jax.bench.profile` summarises."""
    try:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(call())
    # A profiler the machine cannot run must not lose the row's timing, taken before.
    except Exception:  # noqa: BLE001
        logging.error("bench: no trace in %s:\n%s", directory, traceback.format_exc())


def _compile(
    lowered: jax.stages.Lowered, batch_size: int, precision: str
) -> tuple[jax.stages.Compiled, dict]:
    """The compiled program and what it says of itself: compile time, FLOPs per pair, planned
    memory.

    `flops_per_pair` counts the lowered program, the model's arithmetic on any backend; MFU uses
    it. `flops_per_pair_compiled` counts what XLA compiled, which on a GPU leaves out the
    convolutions and matmuls it hands to cuDNN and cuBLAS (about 3 % of the total on an H200).
    """
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # The cost analysis is of one device's share of the batch.
    per_pair = jax.device_count() / batch_size
    flops, flops_compiled = program_flops(lowered), program_flops(compiled)
    return compiled, {
        "compile_s": round(compile_s, 2),
        "flops_per_pair": flops * per_pair if flops else None,
        "flops_per_pair_compiled": flops_compiled * per_pair if flops_compiled else None,
        "peak_flops_per_device": peak_flops(jax.devices()[0].device_kind, precision),
        "memory_planned": planned_memory(compiled),
    }


def _timed_summary(
    compiled_summary: dict,
    call: Callable[[], object],
    batch_size: int,
    steps: int,
    warmup: int,
    profile_dir: str | None,
) -> dict:
    """Times `call`: pairs/s (median) and the MFU it implies, with the allocator's peak after the
    calls; then traces a few more calls into `profile_dir`, if given."""
    times = time_calls(call, steps, warmup)
    if profile_dir:
        profile_calls(call, profile_dir)
    median = statistics.median(times)
    pairs_per_s = batch_size / median
    flops_per_pair = compiled_summary["flops_per_pair"]
    peak = compiled_summary["peak_flops_per_device"]
    devices = jax.device_count()
    mfu = pairs_per_s * flops_per_pair / (peak * devices) if flops_per_pair and peak else None
    return {
        "pairs_per_s": round(pairs_per_s, 2),
        "step_time_median_s": median,
        "step_times_s": times,
        **compiled_summary,
        "mfu": mfu,
        "peak_bytes": peak_bytes_in_use(),
    }


def _model_config(config, precision: str, backbone: str):
    model_cfg = config.model.copy_and_resolve_references()
    model_cfg.dtype = PRECISIONS[precision]
    model_cfg.freeze_backbone = backbone == "frozen"
    if "trainable_blocks" in model_cfg:
        last = model_cfg.trainable_blocks or DEFAULT_LAST_BLOCKS
        model_cfg.trainable_blocks = last if backbone == "last_blocks" else 0
    return model_cfg


def _init_variables(model, image_size: int):
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    init = jax.jit(lambda rng: model.init(rng, source=images, target=images))
    # The rbg generator compiles faster than threefry; random weights are all a benchmark needs.
    return init(jax.random.key(0, impl="rbg"))


def train_row(
    config,
    batch_size: int,
    precision: str,
    backbone: str,
    steps: int,
    warmup: int,
    compile_only: bool = False,
    profile_dir: str | None = None,
):
    """Times THE train step (augmentation, targets, forward, backward, AdamW) on random pairs."""
    model_cfg = _model_config(config, precision, backbone)
    model = build_model(model_cfg)
    optimizer = make_optimizer(
        config.optim,
        total_steps=config.train.steps,
        freeze_backbone=model_cfg.freeze_backbone,
        trainable_backbone=functools.partial(is_trainable, model),
        train_soft_argmax_grids=trains_soft_argmax_grids(config.train.loss),
    )
    train_step = TrainStep(
        model,
        optimizer,
        model_cfg,
        config.dataset,
        receptive_field=config.train.receptive_field,
        loss=config.train.loss,
        loss_temperature=config.train.loss_temperature,
    )
    size = config.dataset.image_size
    state = parallel.replicate(create_train_state(_init_variables(model, size), optimizer))
    batch = parallel.shard_batch(random_batch(batch_size, size, config.dataset.max_keypoints))
    rng, strength = jax.random.key(1), AugmentStrength.from_config(config.augment.teacher)

    compiled, summary = _compile(
        train_step.lower(state, batch, rng, strength), batch_size, precision
    )
    if compile_only:
        return summary

    metrics = {}

    def call():
        nonlocal state, metrics  # donated: each call consumes the last state
        state, metrics = compiled(state, batch, rng, strength)
        return state, metrics

    return {
        **_timed_summary(summary, call, batch_size, steps, warmup, profile_dir),
        "final_loss": float(metrics["loss"]),
        # Mixed precision keeps parameters and optimizer state in float32.
        "state_float_dtypes": _float_dtypes((state.params, state.opt_state)),
    }


def _float_dtypes(tree) -> list[str]:
    leaves = jax.tree.leaves(tree)
    return sorted({str(x.dtype) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)})


def annotate_row(
    config,
    batch_size: int,
    precision: str,
    steps: int,
    warmup: int,
    compile_only: bool = False,
    profile_dir: str | None = None,
):
    """Times the annotator's jitted step (eval-mode forward: flow and confidence)."""
    model = build_model(_model_config(config, precision, "fine_tuned"))
    size = config.dataset.image_size
    variables = parallel.replicate(_init_variables(model, size))
    batch = parallel.shard_batch(random_batch(batch_size, size, config.dataset.max_keypoints))
    compiled, summary = _compile(
        make_annotate_step(model).lower(variables, batch), batch_size, precision
    )
    if compile_only:
        return summary
    return _timed_summary(
        summary, lambda: compiled(variables, batch), batch_size, steps, warmup, profile_dir
    )


def input_row(config, batch_size: int, batches: int, warmup: int) -> dict:
    """Prepared training pairs per second of the host pipeline alone (grain, TFDS)."""
    # Imported here: train and annotate rows must run where grain and TFDS are not installed.
    from matchme_jax.data import pipeline, sources

    dataset_cfg = config.dataset
    iterator = pipeline.training_iterator(
        [sources.labeled_pairs(dataset_cfg)],
        [1.0],
        dataset_cfg,
        batch_size=batch_size,
        seed=config.seed,
    )
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    iterator.close()
    return {
        "pairs_per_s": round(batches * batch_size / seconds, 2),
        "num_workers": dataset_cfg.num_workers,
        "host_cpus": os.cpu_count(),
    }


def environment() -> dict:
    """Device, host and software versions the numbers were taken with."""
    device = jax.devices()[0]
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _rows(config, modes, batch_sizes, precisions, backbones, input_batches, timing: dict):
    """(row description, function computing its numbers) for every requested combination.

    `timing`: the keyword arguments of the train and annotate rows (steps, warmup, compile_only).
    """
    for mode, batch_size in itertools.product(modes, batch_sizes):
        if mode == "input":
            row = {"framework": "jax", "mode": mode, "batch_size": batch_size}
            yield (
                row,
                functools.partial(input_row, config, batch_size, input_batches, timing["warmup"]),
            )
            continue
        for precision in precisions:
            row = {
                "framework": "jax",
                "model": config.model.name,
                "mode": mode,
                "batch_size": batch_size,
                "precision": precision,
                # CATs++ has no attention setting: its one path is "auto"'s.
                "attention": config.model.get("attention", "auto"),
            }
            if mode == "annotate":
                yield row, functools.partial(annotate_row, config, batch_size, precision, **timing)
                continue
            for backbone in backbones:
                yield (
                    {**row, "backbone": backbone},
                    functools.partial(train_row, config, batch_size, precision, backbone, **timing),
                )


def check_choices(modes, precisions, backbones, batch_sizes, steps: int, warmup: int) -> None:
    """One ValueError naming every bad flag value."""
    problems = []
    for flag, values, allowed in (
        ("modes", modes, MODES),
        ("precisions", precisions, tuple(PRECISIONS)),
        ("backbones", backbones, BACKBONES),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            problems.append(f"--{flag}={','.join(values)}: use some of {allowed}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        problems.append(f"--batch_sizes={batch_sizes}: positive integers")
    if steps < 1 or warmup < 0:
        problems.append(f"--steps={steps} --warmup={warmup}: steps >= 1, warmup >= 0")
    if problems:
        raise ValueError("Bad benchmark flags: " + "; ".join(problems))


def run(
    config,
    *,
    modes,
    batch_sizes,
    precisions,
    backbones,
    steps: int,
    warmup: int,
    input_batches: int = 30,
    compile_only: bool = False,
    profile_dir: str | None = None,
    after_each_row: Callable[[dict], None] | None = None,
) -> dict:
    """Runs every requested row; returns the JSON content (see the module docstring).

    `compile_only`: train and annotate rows are compiled, not run (no pairs/s); input rows are
    skipped, having nothing to compile. `profile_dir`: after timing, each train/annotate row
    traces 3 more calls there (one subfolder per row).

    `after_each_row(result_so_far)` runs after every row, so that a run stopped by a time
    limit still leaves the rows it finished.
    """
    check_choices(modes, precisions, backbones, batch_sizes, steps, warmup)
    if compile_only:
        modes = [mode for mode in modes if mode != "input"]
    parallel.enable_compilation_cache(config.compilation_cache_dir)
    result = {
        "config": {
            "dataset": config.dataset.name,
            "image_size": config.dataset.image_size,
            "model": config.model.to_dict(),
        },
        "environment": environment(),
        "steps": steps,
        "warmup": warmup,
        "compile_only": compile_only,
        "rows": [],
    }
    timing = dict(steps=steps, warmup=warmup, compile_only=compile_only)
    rows = _rows(config, modes, batch_sizes, precisions, backbones, input_batches, timing)
    for index, (description, measure) in enumerate(rows):
        if profile_dir and description["mode"] != "input":
            measure = functools.partial(measure, profile_dir=os.path.join(profile_dir, str(index)))
        logging.info("bench %s", description)
        try:
            numbers = measure()
        # One refused row (an unsupported kernel, out of memory) must not lose the others.
        except Exception as e:  # noqa: BLE001
            logging.error("bench %s failed:\n%s", description, traceback.format_exc())
            numbers = {"error": f"{type(e).__name__}: {e}"[:2000]}
        result["rows"].append({**description, **numbers})
        logging.info("bench %s -> %s", description, numbers.get("pairs_per_s", numbers))
        if after_each_row:
            after_each_row(result)
    return result
