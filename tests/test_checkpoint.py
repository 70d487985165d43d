"""Checkpoint steps carry checksums of their files: a damaged step is refused, an intact one
restores bit for bit, one saved without checksums (an older version) restores with a warning."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from matchme_jax import checkpoint
from matchme_jax.train.state import TrainState


def _train_state() -> TrainState:
    """A small train state whose AdamW moments are not zero (one update applied)."""
    keys = jax.random.split(jax.random.key(0), 2)
    params = {"w": jax.random.normal(keys[0], (64, 48)), "b": jax.random.normal(keys[1], (48,))}
    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    return TrainState(
        step=jnp.int32(7), params=params, batch_stats={"mean": jnp.ones(3)}, opt_state=opt_state
    )


@pytest.fixture
def saved(tmp_path):
    """A generation folder with steps 3 and 6 of the same state saved (closed, so finished)."""
    state = _train_state()
    ckpt = checkpoint.GenerationCheckpoints(tmp_path / "gen_0")
    ckpt.save(3, state, {"position": 3})
    ckpt.save(6, state, {"position": 6})
    ckpt.close()
    return tmp_path / "gen_0", state


def _restore(gen_dir, state, step: int = 6):
    ckpt = checkpoint.GenerationCheckpoints(gen_dir)
    try:
        return ckpt.restore(step, checkpoint.abstract(state))
    finally:
        ckpt.close()


def _largest_data_file(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != checkpoint.CHECKSUMS_FILE]
    return max(files, key=lambda p: p.stat().st_size)


def test_every_saved_step_records_the_checksums_of_its_files(saved):
    gen_dir, _ = saved
    for step in (3, 6):
        step_dir = gen_dir / "checkpoints" / str(step)
        recorded = json.loads((step_dir / checkpoint.CHECKSUMS_FILE).read_text())["files"]
        on_disk = {
            p.relative_to(step_dir).as_posix()
            for p in step_dir.rglob("*")
            if p.is_file() and p.name != checkpoint.CHECKSUMS_FILE
        }
        assert set(recorded) == on_disk and len(on_disk) > 3
        assert checkpoint.verify_step(step_dir) is True


def test_an_intact_step_restores_bit_for_bit(saved):
    gen_dir, state = saved
    restored, data_state = _restore(gen_dir, state)
    assert data_state == {"position": 6}
    want, have = jax.tree.leaves(state), jax.tree.leaves(restored)
    assert len(want) == len(have)
    for a, b in zip(want, have, strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_a_flipped_byte_is_refused_naming_the_step_and_the_fix(saved):
    gen_dir, state = saved
    step_dir = gen_dir / "checkpoints" / "6"
    damaged = _largest_data_file(step_dir)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    name = damaged.relative_to(step_dir).as_posix()
    with pytest.raises(checkpoint.DamagedCheckpointError) as error:
        _restore(gen_dir, state)
    message = str(error.value)
    assert str(step_dir) in message and f"{name} has changed" in message
    assert "Delete that step folder; the run resumes from the previous step" in message
    # The previous step is intact: removing the damaged one resumes from it.
    _, data_state = _restore(gen_dir, state, step=3)
    assert data_state == {"position": 3}


def test_a_missing_file_is_refused(saved):
    gen_dir, state = saved
    step_dir = gen_dir / "checkpoints" / "6"
    removed = _largest_data_file(step_dir)
    removed.unlink()
    with pytest.raises(checkpoint.DamagedCheckpointError, match=" is missing"):
        checkpoint.verify_step(step_dir)
    with pytest.raises(checkpoint.DamagedCheckpointError, match=str(step_dir)):
        _restore(gen_dir, state)


def test_a_step_without_checksums_restores_with_a_warning(saved, caplog):
    gen_dir, state = saved
    step_dir = gen_dir / "checkpoints" / "6"
    (step_dir / checkpoint.CHECKSUMS_FILE).unlink()  # as an older version saved it
    with caplog.at_level(logging.WARNING):
        assert checkpoint.verify_step(step_dir) is False
        restored, _ = _restore(gen_dir, state)
    assert f"{step_dir} has no {checkpoint.CHECKSUMS_FILE}" in caplog.text
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])


def test_checksums_follow_a_save_without_waiting_for_the_next_one(tmp_path):
    """A run killed between two saves leaves its latest step with checksums."""
    state = _train_state()
    ckpt = checkpoint.GenerationCheckpoints(tmp_path / "gen_0")
    ckpt.save(3, state)
    ckpt._recorder.join()  # the background thread alone, as if the run were killed now
    assert checkpoint.verify_step(ckpt.step_dir(3)) is True
    ckpt.close()
