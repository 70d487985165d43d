"""One device count's side of tests/test_parallel.py: train and eval steps on every device.

    XLA_FLAGS=--xla_force_host_platform_device_count=N python tests/parallel_worker.py OUT.npz

Runs the real train step (tiny synthetic CATs, `configs/synthetic.py:tiny`, weak augmentation)
for a few steps with BatchNorm "frozen" and "official" on one random batch of 8 pairs split over
all devices by `parallel.shard_batch`, then the eval step and the eval-mode flow, then a whole
evaluation and annotation pass over 7 of its pairs (`parallel.run_on_full_batch`). Everything but
the device count is fixed by seeds, so runs with different N must agree up to reduction order.
Writes the losses, final params and batch_stats, per-pair PCK, flow, the evaluation result, the
pseudo labels and what the batches' sharding looked like to OUT.npz.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from matchme_jax import annotate, defaults, evaluate, parallel
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.models import build_model
from matchme_jax.models.inputs import normalize_uint8
from matchme_jax.train.state import create_train_state, make_optimizer
from matchme_jax.train.step import TrainStep

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"
BATCH_SIZE = 8
MAX_KEYPOINTS = 8
EVAL_PAIRS, EVAL_BATCH_SIZE = 7, 3
# Train steps per BatchNorm mode. "official" takes one: its backward pass through the batch
# statistics cancels heavily, so reduction-order noise grows fast over further Adam steps (whose
# first update is lr * sign(g) for every gradient entry, flipping entries that are ~0).
STEPS = {"frozen": 3, "official": 1}


def random_batch(image_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """8 random pairs with the device keys of a prepared batch (matchme_jax/data/pipeline.py)."""
    rng = np.random.default_rng(seed)
    b, k, s = BATCH_SIZE, MAX_KEYPOINTS, image_size

    def images() -> np.ndarray:
        return rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)

    def keypoints() -> np.ndarray:
        return rng.uniform(2.0, s - 2.0, (b, k, 2)).astype(np.float32)

    box = np.array([1.0, 1.0, s - 2.0, s - 2.0], np.float32)
    return {
        "source_image": images(),
        "target_image": images(),
        "source_keypoints": keypoints(),
        "target_keypoints": keypoints(),
        # 3..K keypoints per pair: padded slots exercise the masks.
        "keypoint_mask": np.arange(k) < rng.integers(3, k + 1, (b, 1)),
        "keypoint_weight": np.ones((b, k), np.float32),
        "source_bbox": np.tile(box, (b, 1)),
        "target_bbox": np.tile(box, (b, 1)),
        "flip": rng.random(b) < 0.5,
        "valid": np.ones(b, bool),
    }


def sharding_record(batch: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """How the batch sits on the devices: its spec and the leading size of every shard."""
    image = batch["source_image"]
    return {
        "batch_spec": np.array(str(image.sharding.spec)),
        "batch_shard_rows": np.array([s.data.shape[0] for s in image.addressable_shards]),
    }


def train(config, batch, bn_mode: str) -> dict[str, np.ndarray]:
    """`STEPS[bn_mode]` steps from a seeded init: losses, grad norms, final variables (flat)."""
    config.model.bn_mode = bn_mode
    model = build_model(config.model)
    optimizer = make_optimizer(config.optim, total_steps=STEPS[bn_mode], freeze_backbone=False)
    step = TrainStep(
        model,
        optimizer,
        config.model,
        config.dataset,
        receptive_field=config.train.receptive_field,
    )
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = model.init(jax.random.key(0), source=images, target=images)
    state = parallel.replicate(create_train_state(variables, optimizer))
    rng, strength = jax.random.key(1), AugmentStrength.weak()
    history = []
    for _ in range(STEPS[bn_mode]):
        state, metrics = step(state, batch, rng, strength)
        history.append(metrics)
    history = jax.device_get(history)
    out = {f"{bn_mode}/{k}": np.array([m[k] for m in history]) for k in ("loss", "grad_norm")}
    out[f"{bn_mode}/params_replicated"] = np.array(
        all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.params))
    )
    for collection in ("params", "batch_stats"):
        leaves = jax.tree_util.tree_leaves_with_path(getattr(state, collection))
        for path, leaf in leaves:
            out[f"{bn_mode}/{collection}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    return out


def raw_examples(batch: dict[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` pairs of `batch` as raw examples (TFDS features) for a grain source."""
    return [
        {
            "source_image": batch["source_image"][i],
            "target_image": batch["target_image"][i],
            "source_keypoints": batch["source_keypoints"][i][batch["keypoint_mask"][i]],
            "target_keypoints": batch["target_keypoints"][i][batch["keypoint_mask"][i]],
            "source_bbox": batch["source_bbox"][i],
            "target_bbox": batch["target_bbox"][i],
            "category": np.int32(i % 2),
        }
        for i in range(count)
    ]


class SplitRecorder:
    """Wraps a jitted step; records how each batch it gets is split over the devices."""

    def __init__(self, step):
        self.step = step
        self.rows = []

    def __call__(self, variables, batch):
        self.rows.append([s.data.shape[0] for s in batch["source_image"].addressable_shards])
        return self.step(variables, batch)


def evaluate_and_annotate(config, batch) -> dict[str, np.ndarray]:
    """The seeded init through `evaluate.evaluate` and `annotate.annotate_pairs` on 7 pairs.

    Batches of `EVAL_BATCH_SIZE` (3), rounded up to the device count: 1 device takes batches of
    3 (the last padded), 2 and 4 devices batches of 4. Also the eval step on the sharded batch.
    """
    config.model.bn_mode = "official"
    config.eval.batch_size = EVAL_BATCH_SIZE
    config.eval.alphas = (0.1, 0.5)  # 0.5: random weights get some keypoints right
    model = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = parallel.replicate(model.init(jax.random.key(2), source=images, target=images))
    eval_step = evaluate.make_eval_step(model, config.dataset, config.eval)
    on_devices = parallel.shard_batch(batch)
    compiled = eval_step.lower(variables, on_devices).compile()
    _, batch_in = compiled.input_shardings[0]
    flow = jax.jit(
        lambda v, b: model.apply(
            v, source=normalize_uint8(b["source_image"]), target=normalize_uint8(b["target_image"])
        )
    )(variables, on_devices)
    pairs = raw_examples(batch, EVAL_PAIRS)
    eval_recorder = SplitRecorder(eval_step)
    result = evaluate.evaluate(
        eval_recorder, variables, pairs, config.dataset, config.eval, ("even", "odd")
    )
    annotate_recorder = SplitRecorder(annotate.make_annotate_step(model))
    pseudo, stats = annotate.annotate_pairs(
        annotate_recorder,
        variables,
        pairs,
        config.dataset,
        config.selftrain,
        batch_size=config.eval.batch_size,
    )
    sweep = np.array([[row["tau"], row["pairs"], row["points"]] for row in stats["tau_sweep"]])
    return {
        "eval/pck": np.asarray(compiled(variables, on_devices)),
        "eval/flow": np.asarray(flow),
        "eval/compiled_batch_spec": np.array(str(batch_in["source_image"].spec)),
        "evaluate/result": np.array(json.dumps(result, sort_keys=True)),
        "evaluate/shard_rows": np.array(eval_recorder.rows),
        "annotate/shard_rows": np.array(annotate_recorder.rows),
        "annotate/tau_sweep": sweep,
        **{f"annotate/{k}": v for k, v in pseudo.items()},
    }


def main(out_path: str) -> None:
    config = defaults.load_config_file(CONFIG, "tiny")
    # The official initialisation and a soft temperature (the train step's loss is the official
    # end-point error): the checks compare float32 runs at rtol 2e-6, and the embedded default's
    # identity aggregator at beta 0.02 amplifies reduction-order rounding (grad norms 5e-5 apart
    # after one Adam step, measured).
    config.model.aggregator_init, config.model.beta = "official", 0.1
    batch = random_batch(config.dataset.image_size)
    on_devices = parallel.shard_batch(batch)
    results = {"device_count": np.array(jax.device_count()), **sharding_record(on_devices)}
    for bn_mode in STEPS:
        results.update(train(config, on_devices, bn_mode))
    results.update(evaluate_and_annotate(config, batch))
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
