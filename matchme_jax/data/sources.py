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


def prepare_unlabeled_folder(folder: str, data_dir: os.PathLike) -> tfds.core.DatasetBuilder:
    """The `unlabeled_images` dataset of a user's image folder, prepared once per workdir.

    Args:
        folder: `<folder>/<category>/<image>` files (config.selftrain.unlabeled_folder).
        data_dir: where this run keeps the prepared copy (inside its workdir, so that two runs
            on different folders never share one).
    """
    builder = tfds.builder(
        "unlabeled_images", data_dir=os.fspath(data_dir), file_format="array_record"
    )
    if not builder.is_prepared():
        logging.info("Preparing the unlabeled images of %s in %s", folder, data_dir)
        download_config = tfds.download.DownloadConfig(manual_dir=folder)
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
