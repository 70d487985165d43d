r"""Measures the host input pipeline alone: prepared training pairs per second.

    python -m matchme_jax.data.throughput --config=configs/synthetic.py --batches=50 \
        --config.dataset.num_workers=2

Reads, decodes, resizes and pads the training split exactly as a run does (augmentation happens
on device and is not part of this), after `--warmup` batches, and prints one JSON line.
"""

import json
import time

from absl import app, flags
from ml_collections import config_flags

from matchme_jax.data import pipeline, sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_BATCHES = flags.DEFINE_integer("batches", 50, "Batches to time.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Batches read before timing (worker start-up).")
flags.mark_flags_as_required(["config"])


def measure(config, batches: int, warmup: int) -> dict:
    """Pairs per second of the training iterator over `batches` batches after `warmup`."""
    dataset_cfg = config.dataset
    source = sources.open_split(dataset_cfg, dataset_cfg.train_split)
    batch_size = config.train.batch_size
    iterator = pipeline.training_iterator(
        [source], [1.0], dataset_cfg, batch_size=batch_size, seed=config.seed
    )
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    pairs_per_s = batches * batch_size / seconds
    workers = dataset_cfg.num_workers
    return {
        "dataset": dataset_cfg.name,
        "image_size": dataset_cfg.image_size,
        "batch_size": batch_size,
        "num_workers": workers,
        "pairs_per_s": round(pairs_per_s, 1),
        "pairs_per_s_per_worker": round(pairs_per_s / max(workers, 1), 1),
    }


def main(argv):
    del argv
    print(json.dumps(measure(_CONFIG.value, _BATCHES.value, _WARMUP.value)))


if __name__ == "__main__":
    app.run(main)
