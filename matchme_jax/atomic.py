"""Files written whole or not at all: a run killed meanwhile leaves the previous file."""

import json
import os
from pathlib import Path

import numpy as np


def write_text(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, content) -> None:
    """`write_text` of `content` as indented JSON."""
    write_text(path, json.dumps(content, indent=1))


def write_npz(path: Path, arrays: dict) -> None:
    """`np.savez` of `arrays` to a temporary file beside `path`, then renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez appends .npz to other names
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
