"""One process of tests/test_multihost.py: the annotator's step on a batch split over processes.

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Joins a CPU multi-process run (gloo collectives over localhost), puts its contiguous share of 8
seeded random pairs on its devices with `parallel.shard_batch`, runs the jitted annotate step on
the global batch and gathers the flow and confidence; then the same step on the whole batch held
by every process (`parallel.run_on_full_batch`, as evaluation and annotation run it); then on the
whole batch replicated on every device, the reference. Then prepares a dataset in a TFDS dir both
processes share. Writes all of it with the process's view of the run (device and process counts,
whether it is the main process).
"""

import sys
from pathlib import Path

import jax

BATCH_SIZE = 8
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def prepare_shared_dataset(data_dir: Path) -> dict:
    """Opens spair71k's dummy test split in a TFDS dir both processes share.

    Returns how many times this process prepared the dataset and the split's size: process 0
    prepares it, process 1 waits and finds it prepared.
    """
    import tensorflow_datasets as tfds

    from matchme_jax import defaults
    from matchme_jax.data import sources

    calls = []
    prepare = tfds.core.DatasetBuilder.download_and_prepare

    def counted(builder, *args, **kwargs):
        calls.append(builder.name)
        return prepare(builder, *args, **kwargs)

    tfds.core.DatasetBuilder.download_and_prepare = counted
    config = defaults.load_config_file(CONFIGS / "spair.py", "tiny")
    config.dataset.data_dir = str(data_dir)
    test_pairs = len(sources.open_split(config.dataset, "test"))
    return {"prepared_here": len(calls), "test_pairs": test_pairs}


def main(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"localhost:{port}", num_processes=num_processes, process_id=process_id
    )
    # Imported after initialize(): nothing may touch a device before it.
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    from matchme_jax import defaults, parallel
    from matchme_jax.annotate.step import make_annotate_step
    from matchme_jax.bench import random_batch
    from matchme_jax.models import build_model

    config = defaults.load_config_file(CONFIGS / "synthetic.py", "tiny")
    model = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    init = jax.jit(lambda key: model.init(key, source=images, target=images))
    variables = init(jax.random.key(0, impl="rbg"))
    full = random_batch(BATCH_SIZE, size, config.dataset.max_keypoints, seed=0)
    share = BATCH_SIZE // num_processes
    local = {k: v[process_id * share : (process_id + 1) * share] for k, v in full.items()}
    batch = parallel.shard_batch(local)
    annotate_step, variables = make_annotate_step(model), parallel.replicate(variables)
    split = annotate_step(variables, batch)
    # Evaluation's and annotation's way: every process holds the whole batch; each device takes
    # its rows and every process gets the whole result back.
    from_full = parallel.run_on_full_batch(annotate_step, variables, full)
    # The reference: the whole batch on every device, no split at all.
    whole = annotate_step(variables, parallel.replicate(full))
    np.savez(
        out_path,
        flow=multihost_utils.process_allgather(split["flow"], tiled=True),
        confidence=multihost_utils.process_allgather(split["confidence"], tiled=True),
        full_batch_flow=from_full["flow"],
        full_batch_confidence=from_full["confidence"],
        whole_flow=np.asarray(whole["flow"]),
        whole_confidence=np.asarray(whole["confidence"]),
        global_batch=np.array(batch["source_image"].shape[0]),
        device_count=np.array(jax.device_count()),
        process_count=np.array(parallel.process_count()),
        is_main=np.array(parallel.is_main_process()),
        **prepare_shared_dataset(Path(out_path).parent / "tensorflow_datasets"),
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
