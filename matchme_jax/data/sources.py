"""Opening the prepared TFDS datasets as random-access sources (no TensorFlow needed)."""

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

import data_builders
from data_builders import GENERATED_DATASETS, NOT_SEEDED, SEEDED_DATASET, common
from data_builders.common import training_images
from data_builders.synthetic_correspondence import SyntheticCorrespondence
from data_builders.synthetic_correspondence.synthetic_correspondence_dataset_builder import (
    seeded_config_name,
)
from matchme_jax import errors, parallel
from matchme_jax.data import folder_copy, unlabeled

data_builders.register()

LABELED_DRAW_SEED = 0  # which pairs `dataset.train_pairs` keeps (`labeled_pairs`)


def _builder(dataset_cfg) -> tfds.core.DatasetBuilder:
    name = dataset_cfg.name
    kwargs = {"data_dir": dataset_cfg.data_dir or os.environ.get("TFDS_DATA_DIR")}
    if dataset_cfg.generator_seed:
        kwargs["config"] = _seeded_config(dataset_cfg)
    elif dataset_cfg.builder_config:
        name = f"{name}/{dataset_cfg.builder_config}"
    try:
        return tfds.builder(name, file_format="array_record", **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise errors.UserError(
            f"config.dataset.name={dataset_cfg.name!r} (builder config "
            f"{dataset_cfg.builder_config!r}) is not a dataset this project knows; "
            "see data_builders/ for the available builders."
        ) from e


def _seeded_config(dataset_cfg) -> tfds.core.BuilderConfig:
    """Config `dataset.builder_config` of the synthetic benchmark, from `dataset.generator_seed`.

    It is a dataset of its own, `<config>_seed<N>`. The config object, not its name, goes to
    TFDS: given the name of a prepared config missing from BUILDER_CONFIGS, TFDS would read its
    files without the builder (a ReadOnlyBuilder).
    """
    if dataset_cfg.name != SEEDED_DATASET:
        raise errors.UserError(
            f"config.dataset.generator_seed={dataset_cfg.generator_seed}: {NOT_SEEDED}"
        )
    base = dataset_cfg.builder_config or SyntheticCorrespondence.DEFAULT_CONFIG_NAME
    config = SyntheticCorrespondence.get_builder_config(
        seeded_config_name(base, dataset_cfg.generator_seed)
    )
    if config is None:
        raise errors.UserError(
            f"config.dataset.builder_config={base!r}: not a config of {SEEDED_DATASET}; use one "
            f"of {list(SyntheticCorrespondence.builder_configs)}"
        )
    return config


def _prepared(builder_fn: Callable[[], tfds.core.DatasetBuilder], manual_dir, what: str):
    """`builder_fn()`'s builder, its data prepared first where it is not.

    In a multi-process run, process 0 prepares first while the others wait: on a shared
    filesystem they then find the data prepared; with one disk per host each host prepares its
    own copy, one after the other. Every process must call this at the same points of the run.
    """
    several = parallel.process_count() > 1
    if several and not parallel.is_main_process():
        multihost_utils.sync_global_devices(f"prepared {what}")
    builder = builder_fn()
    if not builder.is_prepared():
        logging.info("Preparing %s in %s", what, builder.data_dir)
        builder = common.prepare(builder_fn, tfds.download.DownloadConfig(manual_dir=manual_dir))
    if several and parallel.is_main_process():
        multihost_utils.sync_global_devices(f"prepared {what}")
    return builder


def prepare(dataset_cfg) -> tfds.core.DatasetBuilder:
    """Returns the dataset's builder, generating the data first when it is procedural."""
    builder = _builder(dataset_cfg)
    if not builder.is_prepared() and dataset_cfg.name not in GENERATED_DATASETS:
        if not dataset_cfg.manual_dir:
            raise errors.MissingFileError(
                f"Dataset {builder.info.full_name} is not prepared in {builder.data_dir}. Prepare "
                "it once (see the README, 'Real datasets'), or set config.dataset.manual_dir to "
                "the folder that holds the downloaded archive."
            )
    return _prepared(lambda: _builder(dataset_cfg), dataset_cfg.manual_dir, builder.info.full_name)


def prepare_unlabeled_folder(folder: str, data_dir: os.PathLike) -> tfds.core.DatasetBuilder:
    """The `unlabeled_images` dataset of a user's image folder, prepared once per workdir.

    Prepared again whenever the folder has changed since (`folder_copy`).

    Args:
        folder: `<folder>/<category>/<image>` files (config.selftrain.unlabeled_folder).
        data_dir: where this run keeps the prepared copy (inside its workdir, so that two runs
            on different folders never share one).
    """
    return _prepared(
        lambda: folder_copy.prepared(folder, data_dir), folder, f"the unlabeled images of {folder}"
    )


def open_split(dataset_cfg, split: str):
    """A random-access source (`len`, `[i]` -> dict of numpy arrays) over one split."""
    builder = prepare(dataset_cfg)
    if split not in builder.info.splits:
        raise errors.UserError(
            f"Dataset {builder.info.full_name} has no split {split!r}; "
            f"it has {sorted(builder.info.splits)}."
        )
    return builder.as_data_source(split=split)


def labeled_pairs(dataset_cfg):
    """The labeled pairs training reads: `train_split`, or `train_pairs` of its pairs.

    The N pairs are a random draw from a fixed seed, the same in every run (whatever
    `config.seed`), so that runs differ only in training; a random draw, not the first N, as
    real splits list their pairs category by category.
    """
    split = open_split(dataset_cfg, dataset_cfg.train_split)
    n = dataset_cfg.train_pairs
    if n is None:
        return split
    if n > len(split):
        raise errors.UserError(
            f"config.dataset.train_pairs={n}, but the {dataset_cfg.train_split!r} split of "
            f"{dataset_cfg.name} has only {len(split)} pairs; set it to {len(split)} or fewer "
            "(or leave it unset to read them all)."
        )
    indices = np.random.default_rng(LABELED_DRAW_SEED).choice(len(split), n, replace=False)
    return unlabeled.Subset(split, np.sort(indices))


def full_name(dataset_cfg) -> str:
    """`<name>/<config>/<version>` of the dataset read (synthetic_correspondence/tiny/1.0.0)."""
    return prepare(dataset_cfg).info.full_name


def file_stem(dataset_cfg) -> str:
    """`<name>`, or `<name>_seed<N>` for generator seed N != 0: names output files per benchmark."""
    seed = dataset_cfg.generator_seed
    return f"{dataset_cfg.name}_seed{seed}" if seed else dataset_cfg.name


def category_names(dataset_cfg) -> list[str]:
    return list(prepare(dataset_cfg).info.features["category"].names)


def draw_unlabeled_pairs(config, generation: int, workdir) -> unlabeled.Subset:
    """The unlabeled pairs a generation's teacher annotates, drawn with a seed.

    Args:
        config: the run's config (`dataset`, `seed`, `selftrain`).
        generation: the student generation (>= 1) the pairs are drawn for.
        workdir: the run's folder (`"folder"` prepares the user's images inside it, so that two
            runs on different folders never share one copy).

    Returns:
        An `unlabeled.Subset` whose `source` the pseudo labels' indices refer to.
    """
    dataset_cfg, n = config.dataset, config.selftrain.num_unlabeled_pairs
    seed = [config.seed, generation]
    if config.selftrain.unlabeled_pairs == "train_images":
        builder = prepare(dataset_cfg)
        pairs = _repaired_training_images(builder, dataset_cfg.train_split, n, seed)
        return unlabeled.Subset(pairs, np.arange(len(pairs)))
    if config.selftrain.unlabeled_pairs == "folder":
        folder = prepare_unlabeled_folder(
            config.selftrain.unlabeled_folder, Path(workdir) / "unlabeled_images"
        )
        pairs = _folder_image_pairs(folder, category_names(dataset_cfg), n, seed)
        return unlabeled.Subset(pairs, np.arange(len(pairs)))
    full = open_split(dataset_cfg, dataset_cfg.unlabeled_split)
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(full), min(n, len(full)), replace=False))
    return unlabeled.Subset(full, indices)


def _repaired_training_images(
    builder, split: str, num_pairs: int, seed
) -> unlabeled.SameCategoryPairs:
    """New same-category pairs of the images of a benchmark split's annotated pairs."""
    pairs_source = builder.as_data_source(split)
    names = builder.info.features["category"].names
    by_category = defaultdict(list)
    for image in training_images(builder, split):
        by_category[names.index(image.category)].append(image)

    def read_image(image):
        return pairs_source[image.pair_index][f"{image.side}_image"], image.bbox

    return unlabeled.SameCategoryPairs(
        by_category, read_image, num_pairs, seed, where=f"The {split!r} split"
    )


def _folder_image_pairs(
    builder, categories: Sequence[str], num_pairs: int, seed
) -> unlabeled.SameCategoryPairs:
    """Same-category pairs of a prepared `unlabeled_images` dataset (the user's folder).

    Args:
        builder: the prepared `unlabeled_images` builder.
        categories: the benchmark's categories, in label order; every subfolder of the
            user's folder must be one of them.
    """
    images = builder.as_data_source("train")
    # The categories, read without decoding every image.
    undecoded = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    by_category = defaultdict(list)
    unknown = set()
    for index in range(len(undecoded)):
        category = undecoded[index]["category"]
        category = category.decode() if isinstance(category, bytes) else category
        if category in categories:
            by_category[list(categories).index(category)].append(index)
        else:
            unknown.add(category)
    if unknown:
        raise ValueError(
            f"config.selftrain.unlabeled_folder has category folders {sorted(unknown)} that the "
            f"benchmark does not know; name each folder after one of {list(categories)}."
        )

    def read_image(index):
        example = images[index]
        return example["image"], example["bbox"]

    return unlabeled.SameCategoryPairs(
        by_category, read_image, num_pairs, seed, where="config.selftrain.unlabeled_folder"
    )
