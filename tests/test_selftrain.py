"""End to end: `configs/synthetic.py:tiny`, a teacher and two student generations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config import load
from test_curves import read_scalars

from matchme_jax import convert, curves, errors, experiment, init_from, results
from matchme_jax.data import sources
from matchme_jax.models import build_model
from matchme_jax.train.state import learning_rates


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    workdir = tmp_path_factory.mktemp("run")
    return config, workdir, experiment.run(config, workdir)


def test_results_json_has_every_generation(tiny_run):
    config, workdir, results = tiny_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["generations"] == results["generations"]
    assert on_disk["dataset"] == results["dataset"] == "synthetic_correspondence/tiny/1.0.0"
    gens = results["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    assert [g["role"] for g in gens] == ["teacher", "student", "student"]
    assert gens[0]["pseudo_labels"] is None
    for g in gens:
        assert set(g["test"]) == {"pck@0.05", "pck@0.1", "pck@0.15"}
        assert all(0.0 <= v <= 100.0 for v in g["test"].values())
        assert g["test"]["pck@0.05"] <= g["test"]["pck@0.1"] <= g["test"]["pck@0.15"]
        assert set(g["validation"]) == set(g["test"])  # every generation is validated too
        quality = g["annotation"]  # its pseudo labels on the validation pairs, with truth
        assert 0.0 <= quality["precision@0.1"] <= 100.0 and quality["points"] >= 0
    for g in gens[1:]:
        stats = g["pseudo_labels"]
        assert stats["pairs"] >= 1 and stats["points"] >= stats["pairs"]
        assert 0.0 <= stats["mean_confidence"] <= 1.0
        assert 0.0 <= stats["precision@0.1"] <= 100.0  # the generator knows the truth


def test_every_generation_trains_on_every_labeled_pair_by_default(tiny_run):
    config, workdir, results = tiny_run
    for g in results["generations"]:
        summary = json.loads((workdir / f"gen_{g['generation']}" / "summary.json").read_text())
        assert summary["labeled_pairs"] == 10  # the tiny train split


def test_train_pairs_is_one_fixed_draw_of_the_labeled_split(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    split = sources.open_split(config.dataset, "train")
    config.dataset.train_pairs = 4
    kept = [example["pair_id"] for example in sources.labeled_pairs(config.dataset)]
    config.seed = 7  # the same pairs for every training seed
    assert [example["pair_id"] for example in sources.labeled_pairs(config.dataset)] == kept
    ids = [split[i]["pair_id"] for i in range(len(split))]
    assert len(set(kept)) == 4 and set(kept) < set(ids)
    assert kept == sorted(kept, key=ids.index)  # in the split's order
    assert kept != ids[:4]  # a random draw: real splits list their pairs category by category
    config.dataset.train_pairs = 11
    with pytest.raises(errors.UserError, match=r"train_pairs=11, .* has only 10 pairs; set it to"):
        sources.labeled_pairs(config.dataset)


def test_one_checkpoint_directory_per_generation(tiny_run):
    config, workdir, _ = tiny_run
    for g in range(3):
        steps = sorted(p.name for p in (workdir / f"gen_{g}" / "checkpoints").iterdir())
        assert str(config.train.steps) in steps
    assert (workdir / "gen_1" / "pseudo" / "pseudo_labels.npz").exists()
    assert (workdir / results.PLOT_FILE).stat().st_size > 0


def test_students_reuse_the_teachers_compiled_step(tiny_run):
    _, _, results = tiny_run
    assert results["train_step_compilations"] == 1


def test_tensorboard_holds_the_train_curves_and_every_generations_results(tiny_run):
    config, workdir, results = tiny_run
    board = workdir / curves.TENSORBOARD_DIR
    assert sorted(p.name for p in board.iterdir()) == ["gen_0", "gen_1", "gen_2", "generations"]
    rates = learning_rates(
        config.optim, total_steps=config.train.steps, freeze_backbone=config.model.freeze_backbone
    )
    for g in range(3):
        scalars = read_scalars(board / f"gen_{g}")
        logged = [json.loads(line) for line in (workdir / f"gen_{g}" / "train_log.jsonl").open()]
        assert [line["step"] for line in logged] == [2, 4, 6]
        for line in logged:
            step = line["step"]
            for name in ("loss", "grad_norm", "steps_per_s"):
                assert scalars[f"train/{name}"][step] == pytest.approx(line[name], rel=1e-6)
            for group in ("head", "backbone"):
                assert scalars[f"lr/{group}"][step] == pytest.approx(rates(step)[group], rel=1e-6)
        assert set(scalars["train/loss"]) == {2, 4, 6}
    per_generation = read_scalars(board / curves.GENERATIONS_RUN)
    for r in results["generations"]:
        g = r["generation"]
        for evaluator in ("test", "validation"):
            for alpha in ("0.05", "0.1", "0.15"):
                tag = f"{evaluator}/pck_{alpha}"
                assert per_generation[tag][g] == pytest.approx(r[evaluator][f"pck@{alpha}"])
        precision = per_generation["annotation/precision_0.1"][g]
        assert precision == pytest.approx(r["annotation"]["precision@0.1"])
        for field in ("pairs", "points", "mean_confidence", "precision@0.1"):
            tag = "pseudo_labels/" + field.replace("@", "_")
            assert per_generation[tag].get(g) == (
                None if g == 0 else pytest.approx(r["pseudo_labels"][field])
            )


def test_rerun_continues_instead_of_redoing(tiny_run):
    config, workdir, results = tiny_run
    logs = [(workdir / f"gen_{g}" / "train_log.jsonl").read_text() for g in range(3)]
    board = workdir / curves.TENSORBOARD_DIR
    events = {p: p.read_bytes() for p in board.rglob("*") if p.is_file()}
    again = experiment.run(config, workdir)
    assert again["generations"] == results["generations"]
    # Nothing was trained again: no new log lines, no new event files.
    assert logs == [(workdir / f"gen_{g}" / "train_log.jsonl").read_text() for g in range(3)]
    assert events == {p: p.read_bytes() for p in board.rglob("*") if p.is_file()}
    # The rerun traced no train step: the count stays the first run's.
    assert again["train_step_compilations"] == 1
    assert json.loads((workdir / "results.json").read_text())["train_step_compilations"] == 1


@pytest.mark.parametrize("damaged", ["gen_1/pseudo/pseudo_labels.npz", "gen_1/summary.json"])
def test_a_rerun_failing_in_a_later_generation_leaves_results_json_as_it_was(tiny_run, damaged):
    config, workdir, _ = tiny_run
    before = (workdir / "results.json").read_bytes()
    path = workdir / damaged
    kept = path.read_bytes()
    try:
        path.write_bytes(kept[: len(kept) // 2])
        with pytest.raises(errors.UserError, match="damaged"):
            experiment.run(config, workdir)
    finally:
        path.write_bytes(kept)
    assert (workdir / "results.json").read_bytes() == before


def test_the_oracle_student_learns_the_unlabeled_pairs_true_keypoints(tmp_path, tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.selftrain.generations = 1
    config.selftrain.annotator = "oracle"
    config.dataset.train_pairs = 3  # and fewer labeled pairs
    student = experiment.run(config, tmp_path)["generations"][1]
    stats = student["pseudo_labels"]
    assert stats["annotator"] == "oracle" and stats["precision@0.1"] == 100.0
    assert stats["pairs"] == config.selftrain.num_unlabeled_pairs  # every drawn pair has keypoints
    assert not (tmp_path / "gen_1" / "tau_sweep.json").exists()  # no confidence to sweep
    for g in (0, 1):
        assert (
            json.loads((tmp_path / f"gen_{g}" / "summary.json").read_text())["labeled_pairs"] == 3
        )


def _fresh_variables(config):
    model = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    return model, model.init(jax.random.key(1), source=images, target=images)


def test_evaluate_mode_tests_our_checkpoint(tiny_run, tmp_path):
    config, workdir, results = tiny_run
    config = config.copy_and_resolve_references()
    config.mode = "evaluate"
    config.init_from = str(workdir / "gen_0")
    evaluated = experiment.run(config, tmp_path)
    assert set(evaluated) == {"test", "validation", "annotation"}
    assert (tmp_path / "eval" / "pseudo_labels_validation" / "tau_sweep.json").exists()
    result = evaluated["test"]
    assert result["pck@0.1"] == results["generations"][0]["test"]["pck@0.1"]
    assert evaluated["validation"]["pck@0.1"] == results["generations"][0]["validation"]["pck@0.1"]
    saved = json.loads((tmp_path / "eval" / "synthetic_correspondence_test.json").read_text())
    assert saved["pck@0.1"] == result["pck@0.1"]
    assert saved["dataset"] == "synthetic_correspondence/tiny/1.0.0"
    table = (tmp_path / "eval" / "synthetic_correspondence_test.md").read_text()
    assert "| fish |" in table and "**mean over categories**" in table
    pictures = (tmp_path / "eval" / "synthetic_correspondence_test_matches").glob("*.png")
    assert len(list(pictures)) == 8  # the first 8 pairs


def test_init_from_an_official_checkpoint_file(tiny_run, tmp_path):
    config, _, _ = tiny_run
    config = config.copy_and_resolve_references()
    model, original = _fresh_variables(config)
    state_dict = convert.cats_to_torch(model, original)
    # An official checkpoint also holds entries the model never uses; the converter wants them.
    for key in ("decoder.norm.weight", "decoder.norm.bias", "feature_extraction.backbone.fc.bias"):
        state_dict[key] = np.zeros(1, np.float32)
    state_dict["feature_extraction.backbone.fc.weight"] = np.zeros((1, 1), np.float32)
    path = tmp_path / "cats.npz"
    np.savez(path, **state_dict)
    config.init_from = str(path)
    _, fresh = _fresh_variables(config)
    loaded = init_from.load_variables(config, jax.tree.map(jnp.zeros_like, fresh))
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(original))


def test_init_from_a_checkpoint_of_another_model_is_refused(tiny_run, tmp_path):
    config, workdir, _ = tiny_run
    config = config.copy_and_resolve_references()
    config.init_from = str(workdir / "gen_0")
    config.model.feature_proj_dim = 8
    _, fresh = _fresh_variables(config)
    with pytest.raises(ValueError, match="does not fit config.model"):
        init_from.load_variables(config, fresh)
