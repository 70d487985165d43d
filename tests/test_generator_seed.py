"""`--config.dataset.generator_seed=N`: the synthetic benchmark from seed N, its own dataset."""

import numpy as np
import pytest
from test_config import load

from data_builders.synthetic_correspondence import SyntheticCorrespondence
from matchme_jax.data import sources
from matchme_jax.evaluators import corruptions


def _tiny(data_dir, seed: int):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = str(data_dir)
    config.dataset.generator_seed = seed
    return config.dataset


def _pair(dataset_cfg, split: str, pair_id: str) -> dict:
    source = sources.open_split(dataset_cfg, split)
    examples = (source[i] for i in range(len(source)))
    return next(example for example in examples if example["pair_id"] == pair_id.encode())


def test_seed_builds_its_own_benchmark_next_to_seed_0(tmp_path):
    zero, one = _tiny(tmp_path, 0), _tiny(tmp_path, 1)
    assert sources.full_name(zero) == "synthetic_correspondence/tiny/1.0.0"  # as before seeds
    assert sources.full_name(one) == "synthetic_correspondence/tiny_seed1/1.0.0"
    for config in ("tiny", "tiny_seed1"):  # both prepared, side by side
        assert (tmp_path / "synthetic_correspondence" / config / "1.0.0").is_dir()
    first, other = _pair(zero, "train", "train-00000"), _pair(one, "train", "train-00000")
    assert not np.array_equal(first["source_image"], other["source_image"])
    assert len(sources.open_split(one, "unlabeled")) == 20  # the tiny sizes
    assert sources.category_names(one) == sources.category_names(zero)


def test_reopening_a_seed_reads_what_was_prepared(tmp_path, monkeypatch):
    dataset_cfg = _tiny(tmp_path, 2)
    expected = _pair(dataset_cfg, "test", "test-00003")

    def fail(*args, **kwargs):
        raise AssertionError("the prepared seed-2 benchmark was generated again")

    monkeypatch.setattr(SyntheticCorrespondence, "_generate_examples", fail)
    builder = sources.prepare(dataset_cfg)
    # The builder itself (not a ReadOnlyBuilder TFDS makes from files), with the seed's config.
    assert type(builder) is SyntheticCorrespondence and builder.builder_config.seed == 2
    again = _pair(dataset_cfg, "test", "test-00003")
    for key in ("source_image", "source_keypoints", "dense_correspondence"):
        np.testing.assert_array_equal(again[key], expected[key])


def test_a_seed_of_a_real_dataset_or_an_unknown_config_is_refused(tmp_path):
    dataset_cfg = _tiny(tmp_path, 1)
    dataset_cfg.builder_config = "huge"
    with pytest.raises(ValueError, match=r"builder_config='huge': not a config .* \['default'"):
        sources.prepare(dataset_cfg)
    dataset_cfg.name = "spair71k"
    with pytest.raises(ValueError, match="generator_seed=1: only dataset.name='synthetic_corr"):
        sources.prepare(dataset_cfg)


def test_output_files_of_a_seed_are_named_apart():
    zero, three = _tiny(None, 0), _tiny(None, 3)
    assert sources.file_stem(zero) == "synthetic_correspondence"
    assert sources.file_stem(three) == "synthetic_correspondence_seed3"
    assert corruptions.output_stem(three, "test") == "synthetic_correspondence_seed3_c_test"
    assert corruptions.output_stem(load("spair.py").dataset, "test") == "spair_c_test"
