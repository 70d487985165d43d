"""The per-generation table a run prints."""

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
