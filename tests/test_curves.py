"""TensorBoard event files: what `curves.Curves` writes, read back as TensorBoard reads it.

The end-to-end check (the tiny self-training run's curves) is in test_selftrain.py, on its run.
"""

import struct
from pathlib import Path

import jax
import pytest
from tensorboardX.proto import event_pb2

from matchme_jax import curves


def read_events(run_dir: Path) -> list:
    """Every event of a run folder's event files, in TensorBoard's order (file name, then
    record); the files are TFRecords: length, its CRC, the Event proto, its CRC."""
    events = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return events


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} as TensorBoard shows a run: a SessionLog START at step s (a restart)
    hides every earlier event at step s and later."""
    scalars = {}
    for event in read_events(run_dir):
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            for values in scalars.values():
                for step in [s for s in values if s >= event.step]:
                    del values[step]
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return {tag: values for tag, values in scalars.items() if values}


def test_nested_numbers_become_tags_text_and_none_are_left_out():
    values = {
        "test": {"pck@0.1": 50.0, "pck@0.05": 25},
        "pseudo_labels": {"annotator": "teacher", "pairs": 8, "precision@0.1": None},
        "corruptions": {"mean_over_corruptions": {"1": 40.0}},
        "flag": True,
    }
    assert curves.scalars(values) == {
        "test/pck_0.1": 50.0,
        "test/pck_0.05": 25.0,
        "pseudo_labels/pairs": 8.0,
        "corruptions/mean_over_corruptions/1": 40.0,
    }


def test_a_resumed_run_hides_what_the_killed_try_wrote_after_its_checkpoint(tmp_path):
    killed = curves.Curves(tmp_path)
    killed.start("gen_0", 1)
    for step in (2, 4, 6):  # logged; the try is killed after step 6, its checkpoint is at 3
        killed.write("gen_0", step, {"train": {"loss": float(step)}})
        killed.flush()
    # Flushed is on disk, though the writer was never closed.
    assert read_scalars(tmp_path / "gen_0") == {"train/loss": {2: 2.0, 4: 4.0, 6: 6.0}}
    with curves.Curves(tmp_path) as board:
        board.start("gen_0", 4)  # resumed from the step-3 checkpoint
        for step in (4, 6, 8):
            board.write("gen_0", step, {"train": {"loss": 10.0 * step}})
        board.write(curves.GENERATIONS_RUN, 0, {"test": {"pck@0.1": 12.5}})
    assert len(list((tmp_path / "gen_0").iterdir())) == 2  # one event file per try
    assert read_scalars(tmp_path / "gen_0") == {"train/loss": {2: 2.0, 4: 40.0, 6: 60.0, 8: 80.0}}
    assert read_scalars(tmp_path / curves.GENERATIONS_RUN) == {"test/pck_0.1": {0: 12.5}}
    killed.close()


def test_nothing_to_write_opens_no_file(tmp_path):
    with curves.Curves(tmp_path) as board:
        board.write(curves.GENERATIONS_RUN, 0, {"pseudo_labels": {}})
        board.flush()
    assert not tmp_path.joinpath(curves.GENERATIONS_RUN).exists()


@pytest.mark.parametrize("process, enabled", [(1, True), (0, False)])
def test_other_processes_and_a_disabled_board_write_nothing(
    tmp_path, monkeypatch, process, enabled
):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    with curves.Curves(tmp_path / "tb", enabled=enabled) as board:
        board.start("gen_0", 1)
        board.write("gen_0", 2, {"train": {"loss": 1.0}})
        board.flush()
    assert not (tmp_path / "tb").exists()
