"""Files written whole or not at all: a run killed meanwhile leaves the previous file."""

import json
import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, content) -> None:
    """`write_text` of `content` as indented JSON."""
    write_text(path, json.dumps(content, indent=1))
