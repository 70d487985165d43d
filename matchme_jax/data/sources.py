"""Opening the prepared TFDS datasets as random-access sources (no TensorFlow needed)."""

import os

import tensorflow_datasets as tfds
from absl import logging

import data_builders  # noqa: F401  (registers the project's builders with TFDS)

# Builders whose data is generated on the spot: preparing them needs nothing from outside,
# so a run prepares them on first use instead of asking the user to.
GENERATED_DATASETS = ("synthetic_correspondence",)


def _builder(dataset_cfg) -> tfds.core.DatasetBuilder:
    name = dataset_cfg.name
    if dataset_cfg.builder_config:
        name = f"{name}/{dataset_cfg.builder_config}"
    data_dir = dataset_cfg.data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"config.dataset.name={dataset_cfg.name!r} (builder config "
            f"{dataset_cfg.builder_config!r}) is not a dataset this project knows; "
            "see data_builders/ for the available builders."
        ) from e


def prepare(dataset_cfg) -> tfds.core.DatasetBuilder:
    """Returns the dataset's builder, generating the data first when it is procedural."""
    builder = _builder(dataset_cfg)
    if not builder.is_prepared():
        if dataset_cfg.name not in GENERATED_DATASETS and not dataset_cfg.manual_dir:
            raise FileNotFoundError(
                f"Dataset {builder.info.full_name} is not prepared in {builder.data_dir}. Prepare "
                "it once (see the README, 'Real datasets'), or set config.dataset.manual_dir to "
                "the folder that holds the downloaded archive."
            )
        logging.info("Preparing %s in %s", builder.info.full_name, builder.data_dir)
        download_config = tfds.download.DownloadConfig(manual_dir=dataset_cfg.manual_dir)
        builder.download_and_prepare(download_config=download_config)
    return builder


def open_split(dataset_cfg, split: str):
    """A random-access source (`len`, `[i]` -> dict of numpy arrays) over one split."""
    builder = prepare(dataset_cfg)
    if split not in builder.info.splits:
        raise ValueError(
            f"Dataset {builder.info.full_name} has no split {split!r}; "
            f"it has {sorted(builder.info.splits)}."
        )
    return builder.as_data_source(split=split)


def category_names(dataset_cfg) -> list[str]:
    return list(prepare(dataset_cfg).info.features["category"].names)
