"""Training and per-generation curves as TensorBoard event files (tensorboardX, no TensorFlow).

W/tensorboard/ holds one TensorBoard run (folder) per curve family, so that
`tensorboard --logdir W/tensorboard` overlays the generations:

    gen_<g>/      x = the generation's train step: train/loss, train/grad_norm, train/keypoints,
                  train/steps_per_s, lr/head, lr/backbone (at every logged step)
    generations/  x = the generation: <evaluator>/<metric> (test/pck_0.1, validation/pck_0.1,
                  annotation/precision_0.1, ...) and pseudo_labels/<statistic>

Only the main process writes; tags keep the characters TensorBoard allows ("pck@0.1" becomes
"pck_0.1"). A resumed generation opens a new event file that hides the interrupted try's events
from its first step on (a SessionLog START, TensorBoard's purge), as train_log.jsonl drops their
lines. Events are written synchronously with tensorboardX's `EventsWriter`: its `SummaryWriter`
hands them to a thread of its own, so that its `flush` may leave the latest ones off the disk.
"""

import itertools
import numbers
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2

from matchme_jax import parallel

TENSORBOARD_DIR = "tensorboard"
GENERATIONS_RUN = "generations"
_BAD_TAG_CHARACTERS = re.compile(r"[^-/\w.]")  # as tensorboardX's own cleaning, but silent
_file_numbers = itertools.count()  # event file names differ even when opened the same second


def train_run(generation: int) -> str:
    return f"gen_{generation}"


def scalars(values: Mapping, prefix: str = "") -> dict[str, float]:
    """{tag: value} of every number in the nested `values` ("a/b/c"), others (text, None) left
    out."""
    out = {}
    for key, value in values.items():
        tag = _BAD_TAG_CHARACTERS.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(scalars(value, tag + "/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class Curves:
    """The event files of the runs under `directory`, each opened on first use; a no-op when not
    `enabled` and on every process but the main one."""

    def __init__(self, directory: Path, *, enabled: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled and parallel.is_main_process()
        self._files = {}

    def start(self, run: str, step: int) -> None:
        """Opens `run` for steps `step` and on, hiding what an earlier try wrote there."""
        if self.enabled:
            self._close(run)
            self._files[run] = self._open(run)
            self._files[run].write_event(
                event_pb2.Event(
                    wall_time=time.time(),
                    step=step,
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
                )
            )

    def write(self, run: str, step: int, values: Mapping) -> None:
        """Adds every number of the nested `values` to `run` at `step` (see `scalars`)."""
        tagged = scalars(values)
        if not (self.enabled and tagged):
            return
        if run not in self._files:
            self._files[run] = self._open(run)
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in tagged.items()]
        )
        self._files[run].write_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        )

    def flush(self) -> None:
        """Puts everything written so far on disk."""
        for file in self._files.values():
            file.flush()

    def close(self) -> None:
        for run in list(self._files):
            self._close(run)

    def __enter__(self) -> "Curves":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, run: str) -> EventsWriter:
        (self.directory / run).mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.{next(_file_numbers):04d}"
        return EventsWriter(str(self.directory / run / "events"), suffix)

    def _close(self, run: str) -> None:
        file = self._files.pop(run, None)
        if file is not None:
            file.close()
