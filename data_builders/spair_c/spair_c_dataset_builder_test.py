"""Builds two SPair-C configs from the SPair-71k dummy data and checks them against the
on-the-fly corruption of the prepared SPair-71k test split."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.corruption_recipe import CORRUPTIONS, SEVERITIES
from data_builders.spair71k import spair71k_dataset_builder as spair71k
from data_builders.spair_c import spair_c_dataset_builder as spair_c
from matchme_jax.data.corruptions import CorruptedPairs

DUMMY = pathlib.Path(spair71k.__file__).parent / "dummy_data"
FEATURES = ("source_keypoints", "target_keypoints", "source_bbox", "target_bbox", "category")


def _prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY))
    )
    return builder


@pytest.fixture(scope="module")
def clean_test_pairs(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("spair71k"))
    builder = _prepare(spair71k.Spair71k(data_dir=data_dir, file_format="array_record"))
    return builder.as_data_source("test")


def test_one_config_per_corruption_and_severity():
    import data_builders

    data_builders.register()

    names = [config.name for config in spair_c.SpairC.BUILDER_CONFIGS]
    assert names == [f"{c}_{s}" for c in CORRUPTIONS for s in SEVERITIES]
    assert len(names) == 75
    assert tfds.builder_cls("spair_c") is spair_c.SpairC


@pytest.mark.parametrize("config", ["gaussian_noise_2", "zoom_blur_5"])
def test_builds_the_corrupted_test_pairs(config, clean_test_pairs, tmp_path):
    builder = spair_c.SpairC(config=config, data_dir=str(tmp_path), file_format="array_record")
    corrupted = _prepare(builder).as_data_source("test")
    assert list(builder.info.splits) == ["test"]
    expected = CorruptedPairs(
        clean_test_pairs, builder.builder_config.corruption, builder.builder_config.severity
    )
    assert len(corrupted) == len(expected) == 2
    for i in range(len(expected)):
        built, want, clean = corrupted[i], expected[i], clean_test_pairs[i]
        assert built["pair_id"] == clean["pair_id"]
        for side in ("source_image", "target_image"):
            # Exactly what the on-the-fly evaluation feeds the model, and not the clean image.
            np.testing.assert_array_equal(built[side], want[side])
            assert not np.array_equal(built[side], clean[side])
        for key in FEATURES:
            np.testing.assert_array_equal(built[key], clean[key])
