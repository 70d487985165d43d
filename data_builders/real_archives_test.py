"""The builders on the real archives, for users who have them (CI has none: these skip there).

    MATCHME_REAL_MANUAL_DIR=~/downloads MATCHME_REAL_DATA_DIR=~/tensorflow_datasets \
        python -m pytest -q -rs data_builders/real_archives_test.py

`MATCHME_REAL_DATA_DIR` is a TFDS data dir: a dataset already prepared there is checked as it is;
otherwise it is prepared there from `MATCHME_REAL_MANUAL_DIR` (the folder with the downloaded
archives or their extracted top folders), which takes a while and ~20 GB for SPair-71k.
The checks: the published split sizes, the category names, and, on the first pairs of every
split, that keypoints pair up and are finite, and that boxes are ordered and inside the image.
"""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_builders
from data_builders.pf_pascal import pf_pascal_dataset_builder as pf_pascal
from data_builders.pf_willow import pf_willow_dataset_builder as pf_willow
from data_builders.prepare import prepare
from data_builders.spair71k import spair71k_dataset_builder as spair

data_builders.register()

# Pairs per split as the datasets' authors (SPair-71k) and the DHPF/CATs split files publish them.
PUBLISHED = {
    "spair71k": ({"train": 53_340, "validation": 5_384, "test": 12_234}, spair.CATEGORIES),
    "pf_pascal": ({"train": 2_941, "validation": 308, "test": 299}, pf_pascal.CATEGORIES),
    "pf_willow": ({"test": 900}, pf_willow.CATEGORIES),
}
PAIRS_CHECKED_PER_SPLIT = 200


def _real_builder(name: str) -> tfds.core.DatasetBuilder:
    data_dir = os.environ.get("MATCHME_REAL_DATA_DIR")
    manual_dir = os.environ.get("MATCHME_REAL_MANUAL_DIR")
    if not (data_dir or manual_dir):
        pytest.skip(
            f"{name}: set MATCHME_REAL_DATA_DIR (prepared) and/or MATCHME_REAL_MANUAL_DIR "
            "(archives) to test the builder on the real dataset"
        )
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return builder
    if not manual_dir:
        pytest.fail(f"{name} is not prepared in {data_dir}; set MATCHME_REAL_MANUAL_DIR too.")
    return prepare(name, data_dir, os.path.expanduser(manual_dir))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_dataset_has_the_published_splits_and_sane_pairs(name):
    builder = _real_builder(name)
    sizes, categories = PUBLISHED[name]
    found = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert found == sizes
    assert builder.info.features["category"].names == categories
    for split in sizes:
        source = builder.as_data_source(split)
        for index in range(min(PAIRS_CHECKED_PER_SPLIT, len(source))):
            example = source[index]
            where = f"{name} {split} pair {example['pair_id'].decode()}"
            assert len(example["source_keypoints"]) == len(example["target_keypoints"]) > 0, where
            for side in ("source", "target"):
                height, width = example[f"{side}_image"].shape[:2]
                keypoints, box = example[f"{side}_keypoints"], example[f"{side}_bbox"]
                assert np.all(np.isfinite(keypoints)), where
                assert 0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height, where
