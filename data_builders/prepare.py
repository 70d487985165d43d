r"""Prepares a registered dataset builder into ArrayRecord files, without TensorFlow.

The `tfds build` command needs TensorFlow, which this project does not install; this does the
same for every builder that `data_builders.register()` registers:

    python -m data_builders.prepare --dataset=spair71k --data_dir=~/tensorflow_datasets \
        --manual_dir=~/downloads

`--dataset` takes a TFDS name with an optional config (`synthetic_correspondence/tiny`).
Read the result with `tfds.data_source("spair71k", split="train", data_dir=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app, flags, logging

import data_builders
from data_builders import common

_DATASET = flags.DEFINE_string("dataset", None, "Builder name, e.g. spair71k.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where TFDS writes the prepared dataset.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Where the downloaded archive (or its extracted folder) lies."
)
_REGISTER_CHECKSUMS = flags.DEFINE_bool(
    "register_checksums",
    False,
    "Record the sizes and checksums of downloaded archives in the builder's checksums.tsv.",
)


def prepare(
    dataset: str,
    data_dir: str | None,
    manual_dir: str | None = None,
    register_checksums: bool = False,
) -> tfds.core.DatasetBuilder:
    """Builds `dataset` into ArrayRecord files under `data_dir` and returns its builder.

    Args:
        dataset: a registered name, optionally with a config (`name/config`).
        data_dir: the TFDS data dir (TFDS' default when None).
        manual_dir: the manual dir (TFDS' default `<data_dir>/downloads/manual` when None).
        register_checksums: record the downloaded archives' checksums.

    Returns:
        The prepared builder.
    """
    data_builders.register()
    return common.prepare(
        lambda: tfds.builder(dataset, data_dir=data_dir, file_format="array_record"),
        tfds.download.DownloadConfig(manual_dir=manual_dir, register_checksums=register_checksums),
    )


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        builder = prepare(
            _DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value, _REGISTER_CHECKSUMS.value
        )
    except common.DatasetFileError as err:
        # The message names the file and the fix; a traceback through tfds adds nothing.
        raise SystemExit(f"Preparing {_DATASET.value} failed: {err}") from None
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    logging.info("Prepared %s in %s: %s", builder.name, builder.data_dir, sizes)


if __name__ == "__main__":
    app.run(main)
