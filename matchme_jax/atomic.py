"""Files written whole or not at all: a run killed meanwhile leaves the previous file.

And our JSON files both ways: written as strict JSON (NaN and infinities as null, which every
reader parses), read back with an error that names a damaged file and the fix.
"""

import json
import math
import os
from pathlib import Path

import numpy as np

from matchme_jax import errors


def write_text(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_json(content, indent: int | None = None, **dumps_kwargs) -> str:
    """`content` as strict JSON text: NaN and +-inf, which JSON lacks, become null.

    Python's json would write them as bare NaN / Infinity, which strict readers (JavaScript's
    JSON.parse, most other languages' parsers) refuse.
    """
    return json.dumps(_finite(content), indent=indent, allow_nan=False, **dumps_kwargs)


def json_line(record: dict) -> str:
    """One line of a .jsonl log: `record` as compact strict JSON, with its newline."""
    return to_json(record) + "\n"


def _finite(value):
    """`value` with every non-finite float replaced by None; numpy values as Python's."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, content) -> None:
    """`write_text` of `content` as indented strict JSON (`to_json`)."""
    write_text(path, to_json(content, indent=1))


def read_json(path: Path, fix: str):
    """The content of one of our JSON files; a damaged one is a UserError naming it and `fix`.

    Args:
        path: the file (a missing one raises FileNotFoundError, as `Path.read_text`).
        fix: what the user should do, e.g. "delete it; the run evaluates that generation again".
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for binary garbage
        raise errors.UserError(f"{path} is damaged, not JSON ({errors.gist(e)}); {fix}.") from e


def write_npz(path: Path, arrays: dict) -> None:
    """`np.savez` of `arrays` to a temporary file beside `path`, then renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez appends .npz to other names
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
