"""The per-generation table a run prints; results.json only grows."""

import json
import logging

from matchme_jax import results


def test_the_table_has_a_row_per_generation_and_dashes_for_missing_values():
    report = {
        "generations": [
            {
                "generation": 0,
                "role": "teacher",
                "test": {"pck@0.05": 1.0, "pck@0.1": 2.5, "pck@0.15": 3.0},
                "pseudo_labels": None,
            },
            {
                "generation": 1,
                "role": "student",
                "test": {"pck@0.05": 1.5, "pck@0.1": 3.25, "pck@0.15": 4.0},
                "validation": {"pck@0.1": 5.0},
                "pseudo_labels": {"pairs": 7, "points": 9, "precision@0.1": 55.55},
            },
        ]
    }
    header, teacher, student = results.format_table(report).splitlines()
    assert header.split()[:6] == ["gen", "role", "PCK@0.05", "PCK@0.1", "PCK@0.15", "val"]
    assert teacher.split() == ["0", "teacher", "1.00", "2.50", "3.00", "-", "-", "-", "-"]
    assert student.split() == ["1", "student", "1.50", "3.25", "4.00", "5.00", "7", "9", "55.5"]


def _generation(g: int, pck: float) -> dict:
    return {"generation": g, "role": "student" if g else "teacher", "test": {"pck@0.1": pck}}


def test_a_rerun_keeps_the_generations_it_has_not_reached(tmp_path):
    path = tmp_path / results.RESULTS_FILE
    earlier = {
        "dataset": "d",
        "generations": [_generation(0, 1.0), _generation(1, 2.0), _generation(2, 3.0)],
        "train_step_compilations": 1,
    }
    path.write_text(json.dumps(earlier))
    before = path.stat().st_mtime_ns
    # Generation 0 again, as it was: the file is not even rewritten.
    report = {"dataset": "d", "generations": [_generation(0, 1.0)]}
    assert results.write_grown(path, earlier, report) == earlier
    assert path.stat().st_mtime_ns == before
    # Generation 1 evaluated again (another evaluator): replaced, generation 2 kept.
    report["generations"].append(_generation(1, 2.5))
    content = results.write_grown(path, earlier, report)
    assert [g["test"]["pck@0.1"] for g in content["generations"]] == [1.0, 2.5, 3.0]
    assert content["train_step_compilations"] == 1
    assert json.loads(path.read_text()) == content
    assert results.grown(None, report) is report


def test_a_damaged_results_file_is_written_again(tmp_path, caplog):
    path = tmp_path / results.RESULTS_FILE
    assert results.read_earlier(path) is None
    path.write_text('{"generations": [{"gen')
    with caplog.at_level(logging.WARNING):
        assert results.read_earlier(path) is None
    assert "is damaged" in caplog.text
    path.write_text("[1, 2]")
    assert results.read_earlier(path) is None
