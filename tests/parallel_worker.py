"""One device count's side of tests/test_parallel.py: train and eval steps on every device.

    XLA_FLAGS=--xla_force_host_platform_device_count=N python tests/parallel_worker.py OUT.npz

Runs the real train step (tiny synthetic CATs, `configs/synthetic.py:tiny`, weak augmentation)
for a few steps with BatchNorm "frozen" and "official" on one random batch of 8 pairs split over
all devices by `parallel.shard_batch`, then the eval step and the eval-mode flow. Everything but
the device count is fixed by seeds, so runs with different N must agree up to reduction order.
Writes the losses, final params and batch_stats, per-pair PCK, flow and what the batch's
sharding looked like to OUT.npz.
"""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from matchme_jax import parallel
from matchme_jax.data.augment import AugmentStrength, normalize_uint8
from matchme_jax.evaluate import make_eval_step
from matchme_jax.models import build_model
from matchme_jax.train.state import create_train_state, make_optimizer
from matchme_jax.train.step import TrainStep

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"
BATCH_SIZE = 8
MAX_KEYPOINTS = 8
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


def evaluate(config, batch) -> dict[str, np.ndarray]:
    """Per-pair PCK and the eval-mode flow of the seeded init on the sharded batch."""
    config.model.bn_mode = "official"
    model = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = parallel.replicate(model.init(jax.random.key(2), source=images, target=images))
    eval_step = make_eval_step(model, config.dataset, config.eval)
    compiled = eval_step.lower(variables, batch).compile()
    _, batch_in = compiled.input_shardings[0]
    flow = jax.jit(
        lambda v, b: model.apply(
            v, source=normalize_uint8(b["source_image"]), target=normalize_uint8(b["target_image"])
        )
    )(variables, batch)
    return {
        "eval/pck": np.asarray(compiled(variables, batch)),
        "eval/flow": np.asarray(flow),
        "eval/compiled_batch_spec": np.array(str(batch_in["source_image"].spec)),
    }


def tiny_config():
    """`--config=configs/synthetic.py:tiny`, loaded as the flag would load it."""
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


def main(out_path: str) -> None:
    config = tiny_config()
    batch = parallel.shard_batch(random_batch(config.dataset.image_size))
    results = {"device_count": np.array(jax.device_count()), **sharding_record(batch)}
    for bn_mode in STEPS:
        results.update(train(config, batch, bn_mode))
    results.update(evaluate(config, batch))
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
