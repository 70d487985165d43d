r"""Backbone pretraining on generator-rendered objects: this project's stand-in for ImageNet.

    python -m matchme_jax.pretrain --config=configs/pretrain/synthetic.py --out=W/backbone.npz
    python run.py --config=configs/synthetic.py --workdir=W/run \
        --config.model.backbone_weights=W/backbone.npz

The paper's teachers start from ImageNet features; the embedded benchmark
(`configs/synthetic.py`) trains its small ResNet from scratch on 200 pairs. Here the
procedural generator itself plays ImageNet's role: it renders a disjoint set of single-object
images with image-level labels only (no keypoints), and the same ResNet learns to classify them.
The backbone is saved in torchvision naming (`conv1.weight`, `layer1.0.bn1.running_mean`,
`fc.weight`, ...) as `.npz`, which `config.model.backbone_weights` loads as it loads torchvision's
ImageNet weights (`init_from.with_backbone_weights`); a JSON file next to it records the config,
the held-out accuracy and the file's sha256.

The images, their 11 classes and why none of them is a benchmark image:
`data_builders/synthetic_correspondence/pretraining_images.py`. They are ImageNet-normalised here
as the correspondence pipeline normalises its images.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from data_builders.synthetic_correspondence import generator as gen
from data_builders.synthetic_correspondence.pretraining_images import CATEGORIES, render_example
from matchme_jax import atomic, convert
from matchme_jax.models.inputs import normalize_uint8
from matchme_jax.models.resnet import ResNet, stage_blocks, stem_width


def render_set(
    data_cfg: ml_collections.ConfigDict, split: str, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` images of `split` as `([count, S, S, 3] uint8, [count] int32 labels)`."""
    images = np.zeros((count, data_cfg.image_size, data_cfg.image_size, 3), np.uint8)
    labels = np.zeros(count, np.int32)
    for i in range(count):
        images[i], labels[i] = render_example(
            data_cfg.seed,
            split,
            i,
            data_cfg.num_classes,
            tuple(data_cfg.render_size),
            data_cfg.image_size,
        )
    return images, labels


# --------------------------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """The CATs backbone (every block built) + ReLU, global average pool and a linear `fc`."""

    stage_blocks: tuple[int, ...]
    width: int
    num_classes: int
    dilated_stages: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
        """[B, H, W, 3] ImageNet-normalised -> [B, num_classes] logits."""
        backbone = ResNet(
            stage_blocks=self.stage_blocks,
            tap_ids=(sum(self.stage_blocks),),
            width=self.width,
            dilated_stages=self.dilated_stages,
            name="backbone",
        )
        (features,) = backbone(images, use_running_average=not train)
        pooled = jnp.mean(nn.relu(features), axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(pooled)


def classifier(config: ml_collections.ConfigDict) -> Classifier:
    """The classifier whose backbone is `config.model`'s (the correspondence model's)."""
    model_cfg = config.model
    return Classifier(
        stage_blocks=stage_blocks(model_cfg.backbone, tuple(model_cfg.backbone_blocks)),
        width=stem_width(model_cfg.backbone, model_cfg.backbone_width),
        num_classes=config.data.num_classes,
        dilated_stages=tuple(model_cfg.get("dilated_stages", ())),
    )


def _optimizer(optim_cfg: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, optim_cfg.lr, min(optim_cfg.warmup_steps, steps // 2), steps, optim_cfg.lr * 1e-2
    )

    def decay_mask(params):  # weight decay on conv and linear kernels only
        return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)

    return optax.adamw(schedule, weight_decay=optim_cfg.weight_decay, mask=decay_mask)


def _augment(
    rng: np.random.Generator, images: np.ndarray, train_cfg: ml_collections.ConfigDict
) -> np.ndarray:
    """[B, S, S, 3] uint8: a random horizontal flip, colour changes, a random shift.

    The colour changes (`train_cfg.permute_channels`: the channels in a random order; then grey
    with probability `train_cfg.grayscale_p`) leave the classes told apart by shape: the
    generator gives each category its typical colours, which a classifier would otherwise learn
    to rely on and the features to match by. The shift is up to `train_cfg.shift_pixels`
    pixels, with edge padding.
    """
    n = len(images)
    flip = rng.uniform(size=n) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    if train_cfg.permute_channels:
        order = np.stack([rng.permutation(3) for _ in range(n)])
        images = np.take_along_axis(images, order[:, None, None, :], axis=3)
    if train_cfg.grayscale_p > 0:
        grey = rng.uniform(size=n) < train_cfg.grayscale_p
        channel_mean = images.mean(axis=-1, keepdims=True).astype(np.uint8)
        images = np.where(grey[:, None, None, None], channel_mean, images)
    pad = train_cfg.shift_pixels
    if pad <= 0:
        return images
    size = images.shape[1]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * pad + 1, size=(len(images), 2))):
        out[i] = padded[i, dy : dy + size, dx : dx + size]
    return out


def _accuracy(model, variables, images: np.ndarray, labels: np.ndarray, batch: int) -> np.ndarray:
    """[N] bool: correct predictions in evaluation mode (running BatchNorm statistics)."""

    @jax.jit
    def predict(x):
        return jnp.argmax(model.apply(variables, normalize_uint8(x), train=False), -1)

    return np.concatenate(
        [
            np.asarray(predict(images[i : i + batch])) == labels[i : i + batch]
            for i in range(0, len(images), batch)
        ]
    )


def train(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Renders the data, trains the classifier and returns `(variables, summary)`."""
    start = time.time()
    train_images, train_labels = render_set(config.data, "train", config.data.num_train_images)
    heldout_images, heldout_labels = render_set(
        config.data, "heldout", config.data.num_heldout_images
    )
    render_s = time.time() - start
    total = len(train_images) + len(heldout_images)
    logging.info("Rendered %d images in %.1f s (%.0f images/s).", total, render_s, total / render_s)

    model = classifier(config)
    size = config.data.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.jit(lambda key: model.init(key, images, train=False))(
        jax.random.key(config.seed)
    )
    params, batch_stats = variables["params"], variables["batch_stats"]
    steps = config.train.steps
    tx = _optimizer(config.optim, steps)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                normalize_uint8(images),
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (updates["batch_stats"], jnp.mean(jnp.argmax(logits, -1) == labels))

        (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss, acc

    rng = np.random.default_rng(config.seed)
    batch = config.train.batch_size
    order = np.zeros(0, np.int64)
    train_start, seen = time.time(), 0
    for i in range(1, steps + 1):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(train_images))])
        take, order = order[:batch], order[batch:]
        images = _augment(rng, train_images[take], config.train)
        params, batch_stats, opt_state, loss, acc = step(
            params, batch_stats, opt_state, images, train_labels[take]
        )
        seen += batch
        if i % config.train.log_every == 0 or i == steps:
            loss, acc = float(loss), float(acc)
            rate = seen / (time.time() - train_start)
            logging.info(
                "step %d/%d loss %.3f batch acc %.3f (%.0f images/s)", i, steps, loss, acc, rate
            )
    train_s = time.time() - train_start

    variables = {"params": params, "batch_stats": batch_stats}
    correct = _accuracy(model, variables, heldout_images, heldout_labels, config.eval.batch_size)
    benchmark = heldout_labels < len(gen.CATEGORIES)
    summary = {
        "heldout_accuracy": float(correct.mean()),
        "heldout_accuracy_benchmark_categories": float(correct[benchmark].mean()),
        "heldout_accuracy_per_class": {
            CATEGORIES[c].name: float(correct[heldout_labels == c].mean())
            for c in range(config.data.num_classes)
        },
        "num_heldout_images": len(heldout_images),
        "steps": steps,
        "render_seconds": round(render_s, 1),
        "train_seconds": round(train_s, 1),
        "train_images_per_second": round(seen / train_s, 1),
    }
    return jax.device_get(variables), summary


def torchvision_state_dict(config: ml_collections.ConfigDict, variables: dict) -> dict:
    """The trained classifier in torchvision ResNet naming, `fc` included."""
    backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
    state_dict = convert.backbone_to_torchvision(backbone, config.model)
    fc = variables["params"]["fc"]
    state_dict["fc.weight"] = np.asarray(fc["kernel"]).T
    state_dict["fc.bias"] = np.asarray(fc["bias"])
    return {k: np.asarray(v, np.float32) for k, v in state_dict.items()}


def save(config: ml_collections.ConfigDict, variables: dict, summary: dict, out: Path) -> str:
    """Writes `out` (.npz, torchvision keys) and `out` + `.json`; returns the sha256."""
    if out.suffix != ".npz":
        raise ValueError(f"--out={str(out)!r}: write a .npz file (backbone_weights reads it).")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_npz(out, torchvision_state_dict(config, variables))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    record = {
        "weights": out.name,
        "sha256": digest,
        "classes": [c.name for c in CATEGORIES[: config.data.num_classes]],
        **summary,
        "config": config.to_dict(),
    }
    text = atomic.to_json(record, indent=2, default=list) + "\n"
    atomic.write_text(out.with_suffix(".json"), text)
    return digest


def check_config(config: ml_collections.ConfigDict) -> None:
    """One ValueError listing the values `train` cannot use."""
    problems = []
    if not 2 <= config.data.num_classes <= len(CATEGORIES):
        problems.append(f"data.num_classes={config.data.num_classes} (2 to {len(CATEGORIES)})")
    if config.data.num_train_images < config.train.batch_size:
        problems.append("data.num_train_images is below train.batch_size")
    if not 0 <= config.train.grayscale_p <= 1:
        problems.append(f"train.grayscale_p={config.train.grayscale_p} (a probability, 0 to 1)")
    if config.model.name != "cats":
        problems.append(f"model.name={config.model.name!r} (the CATs backbone only)")
    if problems:
        raise ValueError("pretraining config: " + "; ".join(problems))


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    config = _CONFIG.value
    check_config(config)
    variables, summary = train(config)
    summary["command"] = shlex.join(["python", "-m", "matchme_jax.pretrain", *sys.argv[1:]])
    out = Path(_OUT.value)
    digest = save(config, variables, summary, out)
    print(
        f"held-out accuracy {summary['heldout_accuracy']:.4f} "
        f"(benchmark categories {summary['heldout_accuracy_benchmark_categories']:.4f}) on "
        f"{summary['num_heldout_images']} images; wrote {out} sha256 {digest}"
    )


if __name__ == "__main__":
    # Flags only when run as a program: absl flags are global, and other modules imported beside
    # this one (run.py's, the benchmark's) define a `--config` of their own.
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "Pretraining config (configs/pretrain/synthetic.py[:tiny]).",
        lock_config=True,
    )
    _OUT = flags.DEFINE_string("out", None, "Where to write the backbone weights (.npz).")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
