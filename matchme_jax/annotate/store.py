"""The annotator's files: pseudo labels with their statistics, and the tau sweep.

Every file is written whole or not at all, so a run killed meanwhile never leaves a half file;
the pseudo labels' file appears last and marks the annotation done.
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from matchme_jax import atomic, errors, visualize

PSEUDO_FILE = "pseudo_labels.npz"
STATS_FILE = "stats.json"
TAU_SWEEP_FILE = "tau_sweep.json"
TAU_SWEEP_PLOT = "tau_sweep.png"
PSEUDO_KEYS = ("index", "source_keypoints", "target_keypoints", "confidence", "mask")


def save(directory: Path, pseudo: dict[str, np.ndarray], stats: dict) -> None:
    """Writes the pseudo labels (`PSEUDO_KEYS`) and their statistics, the arrays last."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / STATS_FILE, stats)
    atomic.write_npz(directory / PSEUDO_FILE, pseudo)


def load(directory: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Reads what `save` wrote; a missing or damaged file gets one clear error."""
    path = directory / PSEUDO_FILE
    try:
        with np.load(path) as f:
            pseudo = {k: f[k] for k in PSEUDO_KEYS}
        stats = json.loads((directory / STATS_FILE).read_text())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise errors.UserError(
            f"The pseudo labels in {directory} are missing or damaged ({errors.gist(e)}); delete "
            "that folder and rerun to annotate again."
        ) from e
    n = len(pseudo["index"])
    if any(len(v) != n for v in pseudo.values()):
        raise errors.UserError(
            f"The pseudo labels in {path} are cut short; delete {directory} and rerun."
        )
    return pseudo, stats


def save_tau_sweep(directory: Path, rows: list[dict]) -> None:
    """Writes `sweep_tau`'s rows as `TAU_SWEEP_FILE` and their figure as `TAU_SWEEP_PLOT`."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / TAU_SWEEP_FILE, rows)
    visualize.plot_tau_sweep(rows, directory / TAU_SWEEP_PLOT)
