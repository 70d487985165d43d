"""`configs/spair_catspp.py:tiny`: a CATs++ teacher and one student on SPair-71k dummy data; the
student evaluated on PF-WILLOW dummy data by `configs/pfwillow_catspp.py:tiny`."""

import json

from test_config import load

from matchme_jax import experiment


def test_spair_catspp_tiny_trains_a_teacher_and_a_student(tmp_path, tfds_dir):
    config = load("spair_catspp.py:tiny")
    assert config.model.name == "catspp"
    config.dataset.data_dir = tfds_dir
    config.selftrain.generations = 1
    config.selftrain.tau = 0.0  # an untrained tiny teacher is never confident
    results = experiment.run(config, tmp_path)
    teacher, student = results["generations"]
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    assert 0.0 <= student["test"]["pck@0.1"] <= 100.0
    stats = json.loads((tmp_path / "gen_1" / "pseudo" / "stats.json").read_text())
    assert stats["pairs_annotated"] == config.selftrain.num_unlabeled_pairs
    assert student["pseudo_labels"]["points"] >= 1

    willow = load("pfwillow_catspp.py:tiny")
    assert (willow.model.name, willow.eval.threshold) == ("catspp", "bbox_kp")
    willow.dataset.data_dir = tfds_dir
    willow.init_from = str(tmp_path / "gen_1")
    result = experiment.run(willow, tmp_path / "willow")["test"]
    assert result["threshold"] == "bbox_kp" and result["num_pairs"] > 0
    assert (tmp_path / "willow" / "eval" / "pf_willow_test.json").exists()
