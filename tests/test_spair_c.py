"""SPair-C evaluation (`--config.mode=evaluate_corruptions`) on the SPair-71k dummy data."""

import json

import pytest
from test_config import load

from matchme_jax import config_checks, evaluate, experiment, init_from
from matchme_jax.data.corruptions import CorruptedPairs
from matchme_jax.evaluators import build as build_evaluators
from matchme_jax.evaluators import corruptions
from matchme_jax.models import build_model


@pytest.fixture(scope="module")
def compiled(tfds_dir):
    """One tiny SPair-71k model, its random variables and one compiled eval step for the module
    (compiling is the slow part).

    The variables are the random initialisation, not a loaded checkpoint: loading
    `config.init_from` belongs to the plain evaluation (tests/test_spair_tiny.py); this tests
    what the corruption benchmark adds.
    """
    config = load("spair.py:tiny")
    config.dataset.data_dir = tfds_dir
    model = build_model(config.model)
    variables = init_from.initial_variables(config, model)
    return config, model, variables, evaluate.make_eval_step(model, config.dataset, config.eval)


@pytest.fixture
def corruption_run(compiled, monkeypatch):
    """`experiment.run` in mode evaluate_corruptions, on the module's model and eval step."""
    config, model, variables, eval_step = compiled
    monkeypatch.setattr(experiment, "build_model", lambda _: model)
    monkeypatch.setattr(experiment.init_from, "initial_variables", lambda *_: variables)
    monkeypatch.setattr(build_evaluators.evaluate, "make_eval_step", lambda *_: eval_step)
    config = config.copy_and_resolve_references()
    config.mode = "evaluate_corruptions"
    config.init_from = "/the/checkpoint"
    return config, lambda workdir: experiment.run(config, workdir)["corruptions"]


def _evaluated_cells(monkeypatch) -> list:
    """Records (corruption, severity) of every evaluation (None: clean)."""
    cells = []
    evaluate_fn = corruptions.evaluate.evaluate

    def recording(eval_step, variables, source, *args, **kwargs):
        corrupted = isinstance(source, CorruptedPairs)
        cells.append((source.corruption, source.severity) if corrupted else None)
        return evaluate_fn(eval_step, variables, source, *args, **kwargs)

    monkeypatch.setattr(corruptions.evaluate, "evaluate", recording)
    return cells


def _table_rows(path) -> tuple[list[str], list[str]]:
    """(header cells, first cell of every other row) of the Markdown table in `path`."""
    rows = [line.strip("|").split("|") for line in path.read_text().splitlines()]
    rows = [[cell.strip() for cell in row] for row in rows if len(row) > 1]
    return rows[0], [row[0] for row in rows[2:]]


def test_writes_the_corruption_table_and_continues(corruption_run, tmp_path, monkeypatch):
    cells = _evaluated_cells(monkeypatch)
    config, run = corruption_run
    config.evals.corruptions.names = ("gaussian_noise", "contrast")
    config.evals.corruptions.severities = (1, 5)
    result = run(tmp_path)

    assert cells == [None, ("gaussian_noise", 1), ("gaussian_noise", 5)] + [
        ("contrast", 1),
        ("contrast", 5),
    ]
    assert result["complete"]
    assert result["settings"]["num_pairs"] == 2
    assert result["settings"]["checkpoint"] == "/the/checkpoint"
    table = result["pck@0.1"]
    assert set(table) == {"gaussian_noise", "contrast"}
    assert set(table["contrast"]) == set(result["mean_over_corruptions"]) == {"1", "5", "mean"}
    for severity in ("1", "5"):
        mean = (table["gaussian_noise"][severity] + table["contrast"][severity]) / 2
        assert result["mean_over_corruptions"][severity] == pytest.approx(mean)
    clean, mean = result["clean"]["pck@0.1"], result["mean_over_corruptions"]["5"]
    drop = result["relative_drop_percent"]["5"]
    assert drop == (pytest.approx(100 * (clean - mean) / clean) if clean else None)

    header, labels = _table_rows(tmp_path / "eval" / "spair_c_test.md")
    assert header == ["corruption", "severity 1", "severity 5", "mean"]
    assert labels == [
        "gaussian_noise",
        "contrast",
        "**mean over corruptions**",
        "**relative drop from clean (%)**",
    ]
    saved = json.loads((tmp_path / "eval" / "spair_c_test.json").read_text())
    assert saved["pck@0.1"] == table and saved["complete"]

    # The same command with one more corruption evaluates that one alone.
    cells.clear()
    config.evals.corruptions.names = ("gaussian_noise", "contrast", "fog")
    again = run(tmp_path)
    assert cells == [("fog", 1), ("fog", 5)]
    assert again["pck@0.1"]["contrast"] == table["contrast"]
    assert _table_rows(tmp_path / "eval" / "spair_c_test.md")[1][2] == "fog"
    # A cap on the pairs changes what the numbers mean: everything again, on the first pair.
    cells.clear()
    config.evals.corruptions.names = ("fog",)
    config.evals.corruptions.max_pairs = 1
    capped = run(tmp_path)
    assert cells == [None, ("fog", 1), ("fog", 5)]
    assert capped["settings"]["num_pairs"] == 1
    assert list(capped["pck@0.1"]) == ["fog"]


def test_bad_corruption_settings_are_listed():
    config = load("spair.py:tiny")
    config.mode = "evaluate_corruptions"
    config.evals.corruptions.names = ("fog", "fogg")
    config.evals.corruptions.severities = (0, 1)
    config.evals.corruptions.max_pairs = 0
    config.eval.alphas = (0.05,)
    with pytest.raises(ValueError) as error:
        config_checks.validate(config)
    message = str(error.value)
    for field in (
        "'evaluate_corruptions' needs config.init_from",
        "evals.corruptions.names=('fog', 'fogg'): distinct names among ('gaussian_noise',",
        "evals.corruptions.severities=(0, 1): distinct severities among (1, 2, 3, 4, 5)",
        "evals.corruptions.max_pairs=0",
        "eval.alphas=(0.05,): must hold 0.1",
    ):
        assert field in message
