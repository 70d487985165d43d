"""Data parallelism: one mesh axis `data` over every device; batches split, state replicated."""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


@functools.cache
def mesh() -> jax.sharding.Mesh:
    # Auto axes: XLA propagates the shardings; code inside the step needs no sharding types.
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding() -> NamedSharding:
    return NamedSharding(mesh(), P("data"))


def replicated() -> NamedSharding:
    return NamedSharding(mesh(), P())


def shard_batch(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Puts a host batch on the devices, split along its first axis."""
    n = jax.device_count()
    size = len(next(iter(batch.values())))
    if size % n:
        raise ValueError(
            f"The batch size {size} does not split over {n} devices; set the batch sizes "
            f"(config.train.batch_size, config.eval.batch_size) to multiples of {n}."
        )
    return jax.device_put(batch, batch_sharding())


def replicate(tree):
    """Puts a pytree (params, train state) on every device."""
    return jax.device_put(tree, replicated())
