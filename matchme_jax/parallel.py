"""Devices: the data-parallel mesh, batch shardings, device prefetch, multi-host processes.

One mesh axis `data` over every device of every process: batches are split along it, the train
state is replicated. In a multi-host run each process reads its own shard of the data
(`pipeline.training_iterator(shard_index=process_index(), ...)`), `shard_batch` assembles the
global batch from the processes' parts, and only process 0 writes the files we write ourselves
(Orbax coordinates its own checkpoint writes). Evaluation and annotation batches are read whole
by every process and split over all devices (`run_on_full_batch`).
"""

import collections
import copy
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Set by a launcher (or by hand) when a run spans several processes; jax.distributed.initialize
# reads it, and the other cluster variables, itself.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"


def initialize_distributed(requested: bool) -> bool:
    """Joins a multi-process run when `requested` (config.distributed) or the environment asks.

    Must run before anything touches a device. `jax.distributed.initialize()` finds the
    coordinator, the process count and this process's id from the cluster (SLURM, Open MPI, TPU
    pods, Kubernetes) or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.

    Returns:
        Whether this call initialised the distributed runtime.
    """
    if not (requested or os.environ.get(COORDINATOR_ENV)):
        return False
    if jax.distributed.is_initialized():
        return False
    jax.distributed.initialize()
    logging.info(
        "Process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def process_index() -> int:
    """This process's id (0 in a single-process run)."""
    return jax.process_index()


def process_count() -> int:
    """How many processes share the run."""
    return jax.process_count()


def is_main_process() -> bool:
    """True on the one process that writes logs, results, pseudo labels and figures."""
    return process_index() == 0


def enable_compilation_cache(directory: str | None) -> None:
    """Keeps compiled programs in `directory` across runs (JAX's persistent cache); None: off.

    Call before the first compilation: JAX reads the setting when it first compiles.
    """
    if not directory:
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # The default (1 s) skips the small programs; those cost little to recompile anyway.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@functools.cache
def mesh() -> jax.sharding.Mesh:
    # Auto axes: XLA propagates the shardings; code inside the step needs no sharding types.
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding() -> NamedSharding:
    return NamedSharding(mesh(), P("data"))


def replicated() -> NamedSharding:
    return NamedSharding(mesh(), P())


def shard_batch(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Puts this process's part of a batch on its devices, split along the first axis.

    With one process the part is the whole batch; with several, the global batch is the
    processes' parts concatenated in process order.
    """
    n = jax.local_device_count()
    size = len(next(iter(batch.values())))
    if size % n:
        raise ValueError(
            f"The batch size {size} per process does not split over its {n} devices; set the "
            "batch sizes (config.train.batch_size, config.eval.batch_size) to multiples of "
            f"{jax.device_count()}."
        )
    if jax.process_count() == 1:
        return jax.device_put(batch, batch_sharding())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(), x), batch
    )


def padded_batch_size(batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the device count, so a batch splits evenly.

    For evaluation and annotation, whose results do not depend on the batch size (BatchNorm in
    inference mode); the extra rows are padding (`valid=False`).
    """
    n = jax.device_count()
    return -(-batch_size // n) * n


def run_on_full_batch(step: Callable, variables, batch: dict[str, np.ndarray]):
    """`step(variables, batch)` split over every device; its result on every process's host.

    For evaluation and annotation, where every process holds the whole batch (the same rows in
    the same order): each device gets its slice of the rows, so N devices share the work instead
    of each computing the whole batch, and the result is gathered back whole on every process.
    """
    sharding = batch_sharding()
    on_devices = jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), batch
    )
    out = step(variables, on_devices)
    if jax.process_count() == 1:
        return jax.device_get(out)
    return multihost_utils.process_allgather(out, tiled=True)


def replicate(tree):
    """Puts a pytree (params, train state) on every device."""
    return jax.device_put(tree, replicated())


class DevicePrefetch:
    """Batches already on the devices, `size` ahead: the next copy overlaps the current step.

    `jax.device_put` returns at once and copies in the background, so putting batch k+1 before
    the step on batch k runs hides the host-to-device transfer. `get_state()` is the host
    iterator's state right after the last batch handed out, not after the ones read ahead, so a
    checkpoint taken between steps resumes on exactly the next batch.
    """

    def __init__(self, batches: Iterator, put: Callable[[Any], Any], size: int = 2):
        """`batches`: a host iterator with get_state/close (grain); `put`: host -> device."""
        if size < 1:
            raise ValueError(f"DevicePrefetch size={size}: keep at least 1 batch in flight")
        self._batches = batches
        self._put = put
        self._size = size
        self._queue = collections.deque()
        self._state = copy.deepcopy(batches.get_state())

    def __iter__(self) -> "DevicePrefetch":
        return self

    def __next__(self):
        while len(self._queue) < self._size:
            host_batch = next(self._batches)
            self._queue.append((self._put(host_batch), copy.deepcopy(self._batches.get_state())))
        batch, self._state = self._queue.popleft()
        return batch

    def get_state(self) -> dict:
        """The host iterator's state after the last batch this prefetcher returned."""
        return self._state

    def close(self) -> None:
        """Closes the host iterator (its read-ahead threads and workers)."""
        self._batches.close()
