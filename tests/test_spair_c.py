"""SPair-C evaluation (`--config.mode=evaluate_corruptions`) on the SPair-71k dummy data."""

import json

import pytest
from test_config import load

from matchme_jax import config_checks, corruption_benchmark, selftrain
from matchme_jax.data.corruptions import CorruptedPairs


@pytest.fixture(scope="module")
def run_(tmp_path_factory, tfds_dir):
    """One tiny SPair-71k `Run` for the module: its model compiles once (the slow part).

    Its variables are the random initialisation, not a loaded checkpoint: loading
    `config.init_from` belongs to the plain evaluation (tests/test_spair_tiny.py); this tests
    what the corruption benchmark adds.
    """
    config = load("spair.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.mode = "evaluate_corruptions"
    return selftrain.Run(config, tmp_path_factory.mktemp("unused"))


def _evaluated_cells(monkeypatch) -> list:
    """Records (corruption, severity) of every evaluation (None: clean)."""
    cells = []
    evaluate = corruption_benchmark.evaluate.evaluate

    def recording(eval_step, variables, source, *args):
        corrupted = isinstance(source, CorruptedPairs)
        cells.append((source.corruption, source.severity) if corrupted else None)
        return evaluate(eval_step, variables, source, *args)

    monkeypatch.setattr(corruption_benchmark.evaluate, "evaluate", recording)
    return cells


def _table_rows(path) -> tuple[list[str], list[str]]:
    """(header cells, first cell of every other row) of the Markdown table in `path`."""
    rows = [line.strip("|").split("|") for line in path.read_text().splitlines()]
    rows = [[cell.strip() for cell in row] for row in rows if len(row) > 1]
    return rows[0], [row[0] for row in rows[2:]]


def test_writes_the_corruption_table_and_continues(run_, tmp_path, monkeypatch):
    cells = _evaluated_cells(monkeypatch)
    # selftrain.run's own checks and dispatch, on the module's compiled Run.
    monkeypatch.setattr(selftrain, "Run", lambda config, workdir: run_)
    run_.workdir = tmp_path
    config = run_.config
    config.init_from = "/the/checkpoint"
    config.corruptions.names = ("gaussian_noise", "contrast")
    config.corruptions.severities = (1, 5)
    result = selftrain.run(config, tmp_path)

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
    config.corruptions.names = ("gaussian_noise", "contrast", "fog")
    again = selftrain.run(config, tmp_path)
    assert cells == [("fog", 1), ("fog", 5)]
    assert again["pck@0.1"]["contrast"] == table["contrast"]
    assert _table_rows(tmp_path / "eval" / "spair_c_test.md")[1][2] == "fog"
    # A cap on the pairs changes what the numbers mean: everything again, on the first pair.
    cells.clear()
    config.corruptions.names = ("fog",)
    config.corruptions.max_pairs = 1
    capped = selftrain.run(config, tmp_path)
    assert cells == [None, ("fog", 1), ("fog", 5)]
    assert capped["settings"]["num_pairs"] == 1
    assert list(capped["pck@0.1"]) == ["fog"]


def test_bad_corruption_settings_are_listed():
    config = load("spair.py:tiny")
    config.mode = "evaluate_corruptions"
    config.corruptions.names = ("fog", "fogg")
    config.corruptions.severities = (0, 1)
    config.corruptions.max_pairs = 0
    config.eval.alphas = (0.05,)
    with pytest.raises(ValueError) as error:
        config_checks.validate(config)
    message = str(error.value)
    for field in (
        "'evaluate_corruptions' needs config.init_from",
        "corruptions.names=('fog', 'fogg'): distinct names among ('gaussian_noise',",
        "corruptions.severities=(0, 1): distinct severities among (1, 2, 3, 4, 5)",
        "corruptions.max_pairs=0",
        "eval.alphas=(0.05,): must hold 0.1",
    ):
        assert field in message
