"""`configs/spair.py:tiny` trains and self-trains on the SPair-71k builder's dummy data."""

import json

from test_config import load

from matchme_jax import selftrain


def test_spair_tiny_trains_a_teacher_and_a_student(tmp_path, tfds_dir):
    config = load("spair.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.generations = 1
    config.selftrain.tau = 0.0  # an untrained tiny teacher is never confident
    results = selftrain.run(config, tmp_path)
    teacher, student = results["generations"]
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    assert 0.0 <= student["test"]["pck@0.1"] <= 100.0
    # The unlabeled pairs are training images paired anew: no truth to score them against.
    stats = json.loads((tmp_path / "gen_1" / "pseudo" / "stats.json").read_text())
    assert stats["pairs_annotated"] == config.selftrain.num_unlabeled_pairs
    assert "precision@0.1" not in stats
    assert student["pseudo_labels"]["points"] >= 1
