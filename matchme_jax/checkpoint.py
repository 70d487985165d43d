"""Orbax checkpoints, one directory per generation: W/gen_<g>/checkpoints/<step>/.

Each checkpoint holds the train state and the input iterator's state, so a resumed generation
continues with the very batches an unbroken run would have seen.

Each finished step also holds `matchme_checksums.json`: the size and SHA-256 of every file Orbax
wrote, checked before the step is restored (`verify_step`). Orbax checks nothing of the kind: a
flipped byte in its data files would restore silently as changed weights or optimizer moments.
"""

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from matchme_jax import atomic, errors, parallel

CHECKSUMS_FILE = "matchme_checksums.json"


class DamagedCheckpointError(errors.UserError):
    """A checkpoint step whose files differ from the checksums recorded when it was saved."""


class GenerationCheckpoints:
    """Saves and restores one generation's train state and data-iterator state."""

    def __init__(self, generation_dir: Path, max_to_keep: int = 2):
        self.directory = Path(generation_dir).absolute() / "checkpoints"
        # Orbax saves in the background; a thread of ours waits for the save to finish and then
        # writes its checksums, so that a run killed between two saves leaves them written.
        self._recorder: threading.Thread | None = None
        self._recorder_error: BaseException | None = None
        self._manager = ocp.CheckpointManager(
            self.directory,
            # A kill mid-save leaves a temporary step folder; it is never a checkpoint to resume.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        """Starts saving `step` in the background; its checksums follow once it is written."""
        # The previous step's checksums first: Orbax deletes steps beyond max_to_keep.
        self._join_recorder()
        if self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
            ),
        ):
            self._recorder = threading.Thread(
                target=self._record, args=(step,), name=f"checksums of step {step}", daemon=True
            )
            self._recorder.start()

    def _record(self, step: int) -> None:
        try:
            self._manager.wait_until_finished()
        except BaseException:  # The save failed; `wait` raises that in the main thread.
            return
        try:
            # Process 0 alone: Orbax needs one filesystem shared by all processes.
            if parallel.is_main_process() and self.step_dir(step).is_dir():
                write_checksums(self.step_dir(step))
        except BaseException as e:
            self._recorder_error = e

    def _join_recorder(self) -> None:
        if self._recorder is not None:
            self._recorder.join()
            self._recorder = None
        if self._recorder_error is not None:
            error, self._recorder_error = self._recorder_error, None
            raise error

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step`, shaped like `abstract_state` (from `jax.eval_shape`).

        Raises DamagedCheckpointError when the step's files differ from their checksums.
        """
        self._join_recorder()
        verify_step(self.step_dir(step))
        errors.drop_aborted_read_errors()
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # Orbax raises many types for a damaged or foreign checkpoint.
            raise DamagedCheckpointError(
                f"Cannot restore the checkpoint {self.directory / str(step)} ({errors.gist(e)}). "
                "It is damaged or was written by a different config; delete that step folder "
                "(or use a fresh --workdir) to start this generation again."
            ) from e
        return restored["state"], dict(restored["data"] or {})

    def wait(self) -> None:
        """Waits for the background save and its checksums."""
        self._manager.wait_until_finished()
        self._join_recorder()

    def close(self) -> None:
        self.wait()
        self._manager.close()


def _checksums(step_dir: Path) -> dict[str, dict]:
    """{path relative to `step_dir`: {"size", "sha256"}} of every file but the checksums file."""
    found = {}
    for path in sorted(step_dir.rglob("*")):
        # Not the checksums file, nor what a killed write of it left (its `.tmp`).
        if path.is_file() and not path.name.startswith(CHECKSUMS_FILE):
            found[path.relative_to(step_dir).as_posix()] = {
                "size": path.stat().st_size,
                "sha256": _sha256(path),
            }
    return found


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(step_dir: Path) -> None:
    """Records the size and SHA-256 of each file of a finished step in its CHECKSUMS_FILE."""
    step_dir = Path(step_dir)
    atomic.write_json(step_dir / CHECKSUMS_FILE, {"files": _checksums(step_dir)})


def verify_step(step_dir: Path) -> bool:
    """Checks each file of a checkpoint step folder against the checksums saved with it.

    Files added since (none that Orbax reads) are not checked. A step saved by an older version,
    or whose run was killed between the end of the save and the checksums, has no checksums: it
    restores unchecked, with a warning.

    Returns:
        True when every recorded file is present and matches; False when there are no checksums.

    Raises:
        DamagedCheckpointError naming the step folder, the files that differ and the fix.
    """
    step_dir = Path(step_dir)
    path = step_dir / CHECKSUMS_FILE
    if not path.exists():
        logging.warning(
            "%s has no %s (saved by an older version, or its run was stopped just after "
            "saving): restoring it without checking its files.",
            step_dir,
            CHECKSUMS_FILE,
        )
        return False
    try:
        recorded = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise _damaged(step_dir, [f"{CHECKSUMS_FILE} is unreadable ({e})"]) from None
    problems = []
    for name, want in recorded.items():
        file = step_dir / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != want["size"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, not {want['size']}")
        elif _sha256(file) != want["sha256"]:
            problems.append(f"{name} has changed")
    if problems:
        raise _damaged(step_dir, problems)
    return True


def _damaged(step_dir: Path, problems: list[str]) -> DamagedCheckpointError:
    listed = "; ".join(problems[:5]) + (
        f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    return DamagedCheckpointError(
        f"The checkpoint {step_dir} is damaged: {listed}. Delete that step folder; the run "
        "resumes from the previous step (or starts this generation again if it was the only one)."
    )


def abstract(tree: Any) -> Any:
    """Shapes and dtypes of `tree`, as Orbax's restore wants them."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
