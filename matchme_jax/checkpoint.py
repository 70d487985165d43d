"""Orbax checkpoints, one directory per generation: W/gen_<g>/checkpoints/<step>/.

Each checkpoint holds the train state and the input iterator's state, so a resumed generation
continues with the very batches an unbroken run would have seen.
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class GenerationCheckpoints:
    """Saves and restores one generation's train state and data-iterator state."""

    def __init__(self, generation_dir: Path, max_to_keep: int = 2):
        self.directory = Path(generation_dir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            # A kill mid-save leaves a temporary step folder; it is never a checkpoint to resume.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
            ),
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step`, shaped like `abstract_state` (from `jax.eval_shape`)."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # Orbax raises many types for a damaged or foreign checkpoint.
            raise RuntimeError(
                f"Cannot restore the checkpoint {self.directory / str(step)}: {e}. "
                "It is damaged or was written by a different config; delete that step folder "
                "(or use a fresh --workdir) to start this generation again."
            ) from e
        return restored["state"], dict(restored["data"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract(tree: Any) -> Any:
    """Shapes and dtypes of `tree`, as Orbax's restore wants them."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
