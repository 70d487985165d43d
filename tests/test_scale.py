"""Scale-out plumbing on CPU: device prefetch, per-process data shards, one writing process.

A real multi-host run cannot happen in CI; what is tested here is each piece it relies on, with
the process index and count faked: the data shards of the processes add up to the one-process
batches, only process 0 writes files, and distributed initialisation happens only when asked.
"""

import json
import types

import jax
import ml_collections
import numpy as np
import pytest

from matchme_jax import parallel, results
from matchme_jax.data import pipeline
from matchme_jax.train import loop
from matchme_jax.train.state import TrainState


class CountingBatches:
    """A host iterator with grain's get_state/close: batch k is {"x": [k]}, its state k."""

    def __init__(self):
        self.read = 0
        self.closed = False

    def __next__(self):
        self.read += 1
        return {"x": np.array([self.read], np.float32)}

    def get_state(self) -> dict:
        return {"next_index": self.read}

    def close(self) -> None:
        self.closed = True


def test_prefetch_reads_ahead_but_reports_the_state_of_the_batches_taken():
    host = CountingBatches()
    prefetch = parallel.DevicePrefetch(host, lambda b: jax.device_put(b), size=2)
    assert prefetch.get_state() == {"next_index": 0}
    first = next(prefetch)
    assert isinstance(first["x"], jax.Array) and float(first["x"][0]) == 1
    assert host.read == 2  # the next batch is already on its way to the device
    assert prefetch.get_state() == {"next_index": 1}
    assert [float(next(prefetch)["x"][0]) for _ in range(3)] == [2, 3, 4]
    assert prefetch.get_state() == {"next_index": 4}
    prefetch.close()
    assert host.closed
    with pytest.raises(ValueError, match="at least 1"):
        parallel.DevicePrefetch(CountingBatches(), jax.device_put, size=0)


class RecordingCheckpoints:
    def __init__(self):
        self.saved = {}

    def save(self, step, state, data_state):
        self.saved[step] = data_state

    def wait(self):
        pass


def _train(tmp_path, monkeypatch, process: int):
    """train_generation with a stand-in step (adds the batch to the state) as `process`."""
    monkeypatch.setattr(parallel, "process_index", lambda: process)
    monkeypatch.setattr(pipeline, "device_batch", lambda b: b)

    def step(state, batch, rng, strength):
        del rng, strength
        total = state.params["total"] + batch["x"][0]
        new_state = state.replace(step=state.step + 1, params={"total": total})
        return new_state, {"loss": total, "grad_norm": total}

    train_cfg = ml_collections.ConfigDict(dict(steps=5, log_every=2, checkpoint_every=2))
    checkpoints, host = RecordingCheckpoints(), CountingBatches()
    state = loop.train_generation(
        state=TrainState(
            step=np.int32(0), params={"total": np.float32(0)}, batch_stats={}, opt_state=()
        ),
        train_step=step,
        batches=host,
        strength=None,
        rng=None,
        train_cfg=train_cfg,
        checkpoints=checkpoints,
        log_path=tmp_path / "train_log.jsonl",
        label="test",
    )
    return state, checkpoints, host


def test_the_loop_checkpoints_the_iterator_state_of_the_last_batch_it_trained_on(
    tmp_path, monkeypatch
):
    state, checkpoints, host = _train(tmp_path, monkeypatch, process=0)
    assert float(state.params["total"]) == 1 + 2 + 3 + 4 + 5
    # The prefetcher read batch 6 ahead, but a resume after step 5 must start with batch 6.
    assert checkpoints.saved == {2: {"next_index": 2}, 4: {"next_index": 4}, 5: {"next_index": 5}}
    assert host.closed
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 5]


def test_only_process_zero_writes_the_train_log_and_results(tmp_path, monkeypatch):
    _, checkpoints, _ = _train(tmp_path, monkeypatch, process=1)
    assert set(checkpoints.saved) == {2, 4, 5}  # Orbax coordinates checkpoints itself
    results.write(tmp_path / "results.json", {"generations": []})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(parallel, "process_index", lambda: 0)
    results.write(tmp_path / "results.json", {"generations": []})
    assert json.loads((tmp_path / "results.json").read_text()) == {"generations": []}


def _example(i: int) -> dict[str, np.ndarray]:
    image = np.full((20, 24, 3), i, np.uint8)
    points = np.array([[1.0, 2.0], [5.0, 6.0]], np.float32)
    box = np.array([0.0, 0.0, 10.0, 10.0], np.float32)
    return dict(
        source_image=image,
        target_image=image,
        source_keypoints=points,
        target_keypoints=points,
        source_bbox=box,
        target_bbox=box,
        category=0,
    )


def test_the_process_shards_add_up_to_the_one_process_batches():
    source = [_example(i) for i in range(10)]
    dataset_cfg = ml_collections.ConfigDict(dict(image_size=16, max_keypoints=4, num_workers=0))

    def first_batches(shard_index: int = 0, shard_count: int = 1) -> list[np.ndarray]:
        it = pipeline.training_iterator(
            [source],
            [1.0],
            dataset_cfg,
            batch_size=4,
            seed=0,
            shard_index=shard_index,
            shard_count=shard_count,
        )
        # The pixel value identifies the pair.
        return [next(it)["source_image"][:, 0, 0, 0] for _ in range(4)]

    whole = first_batches()
    shards = [first_batches(i, 2) for i in range(2)]
    for k in range(4):
        assert all(len(shard[k]) == 2 for shard in shards)
        assert sorted(np.concatenate([s[k] for s in shards])) == sorted(whole[k])
    assert not set(shards[0][0]) & set(shards[1][0])
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.training_iterator(
            [source], [1.0], dataset_cfg, batch_size=3, seed=0, shard_index=0, shard_count=2
        )


def test_every_process_resumes_from_the_iterator_state_process_0_saved():
    # A checkpoint holds process 0's data-iterator state only (Orbax writes JSON on the primary
    # host); every process restores it. That is right only if the shards' states agree.
    source = [_example(i) for i in range(10)]
    dataset_cfg = ml_collections.ConfigDict(dict(image_size=16, max_keypoints=4, num_workers=0))

    def shard(index: int):
        return pipeline.training_iterator(
            [source], [1.0], dataset_cfg, batch_size=4, seed=0, shard_index=index, shard_count=2
        )

    first, second = shard(0), shard(1)
    for _ in range(3):  # into the second epoch: 10 pairs are 2.5 global batches
        next(first), next(second)
    saved = first.get_state()
    assert saved == second.get_state()
    resumed = shard(1)
    resumed.set_state(saved)
    for _ in range(4):
        np.testing.assert_array_equal(next(resumed)["index"], next(second)["index"])


def test_distributed_initialisation_only_when_the_config_or_environment_asks(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, initialize=lambda: calls.append(1))
    monkeypatch.setattr(jax, "distributed", fake)
    monkeypatch.delenv(parallel.COORDINATOR_ENV, raising=False)
    assert not parallel.initialize_distributed(False) and not calls
    assert parallel.initialize_distributed(True) and len(calls) == 1
    monkeypatch.setenv(parallel.COORDINATOR_ENV, "10.0.0.1:1234")
    assert parallel.initialize_distributed(False) and len(calls) == 2


def test_the_compilation_cache_is_set_only_when_a_directory_is_given(monkeypatch):
    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.update({name: value}))
    parallel.enable_compilation_cache(None)
    assert updates == {}
    parallel.enable_compilation_cache("/tmp/jax_cache")
    assert updates["jax_compilation_cache_dir"] == "/tmp/jax_cache"
