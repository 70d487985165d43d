"""The real-benchmark configs on their builders' dummy data: SPair-71k self-training and
evaluation, and a PF-PASCAL model evaluated on PF-WILLOW."""

import json

from test_config import load

from matchme_jax import experiment


def test_spair_tiny_trains_a_teacher_and_a_student(tmp_path, tfds_dir):
    config = load("spair.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.generations = 1
    config.selftrain.tau = 0.0  # an untrained tiny teacher is never confident
    results = experiment.run(config, tmp_path)
    assert set(results["generations"][0]) >= {"test", "validation"}
    teacher, student = results["generations"]
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    assert 0.0 <= student["test"]["pck@0.1"] <= 100.0
    # The unlabeled pairs are training images paired anew: no truth to score them against.
    stats = json.loads((tmp_path / "gen_1" / "pseudo" / "stats.json").read_text())
    assert stats["pairs_annotated"] == config.selftrain.num_unlabeled_pairs
    assert "precision@0.1" not in stats
    assert student["pseudo_labels"]["points"] >= 1

    # The evaluation command on the same data, from the student's checkpoint.
    config.mode = "evaluate"
    config.init_from = str(tmp_path / "gen_1")
    result = experiment.run(config, tmp_path / "eval_run")["test"]
    assert result["pck@0.1"] == student["test"]["pck@0.1"]
    assert (tmp_path / "eval_run" / "eval" / "spair71k_test.md").exists()


def pascal_teacher_on_willow(tmp_path, tfds_dir, pascal: str, willow: str) -> dict:
    """Trains the PF-PASCAL config's teacher alone, then evaluates it with the PF-WILLOW config;
    the latter's `test` result."""
    config = load(pascal)
    config.dataset.data_dir = tfds_dir
    config.mode = "train"  # the teacher alone
    experiment.run(config, tmp_path / "pascal")
    evaluation = load(willow)
    evaluation.dataset.data_dir = tfds_dir
    evaluation.init_from = str(tmp_path / "pascal" / "gen_0")
    return experiment.run(evaluation, tmp_path / "willow")["test"]


def test_pf_pascal_model_is_evaluated_on_pf_willow(tmp_path, tfds_dir):
    result = pascal_teacher_on_willow(tmp_path, tfds_dir, "pfpascal.py:tiny", "pfwillow.py:tiny")
    assert result["threshold"] == "willow_cats" and result["direction"] == "target->source"
    saved = json.loads((tmp_path / "willow" / "eval" / "pf_willow_test.json").read_text())
    assert saved["num_pairs"] == result["num_pairs"] > 0
