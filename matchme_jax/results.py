"""What a self-training run reports: W/results.json, each W/gen_<g>/summary.json, the table.

results.json only grows: a rerun rewrites it with every generation it held (`grown`), so a rerun
that fails in a later generation (a damaged file, a divergence) leaves the earlier results.
"""

import json
from pathlib import Path

from absl import logging

from matchme_jax import atomic, parallel

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "pck_per_generation.png"
# The per-generation fields of results.json (the evaluators' names are added to them).
GENERATION_FIELDS = ("generation", "role", "pseudo_labels")
# The other fields of a generation's summary.json; no evaluator may take one of these names.
SUMMARY_FIELDS = (
    *GENERATION_FIELDS,
    "pseudo_label_details",
    "labeled_pairs",
    "train_steps",
    "wall_time_s",
)
PSEUDO_LABEL_FIELDS = (
    "annotator",
    "pairs",
    "points",
    "points_per_pair",
    "mean_confidence",
    "precision@0.05",
    "precision@0.1",
)


def write(path: Path, content: dict) -> None:
    """Writes `content` as JSON, whole; only the main process writes (the others agree)."""
    if parallel.is_main_process():
        atomic.write_json(path, content)


def read_earlier(path: Path) -> dict | None:
    """The results.json an earlier run of the workdir wrote, or None when there is none.

    A damaged one is None too, with a warning: it is a copy of the summaries, and the run writes
    it again from them.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for binary garbage
        logging.warning("%s is damaged (%s); the run writes it again.", path, e)
        return None
    if not isinstance(content, dict) or not isinstance(content.get("generations"), list):
        logging.warning("%s is not a results file; the run writes it again.", path)
        return None
    return content


def grown(earlier: dict | None, report: dict) -> dict:
    """`report` with what `earlier` (results.json as a run found it) holds and `report` lacks.

    A rerun's report holds the generations it has reached; the later ones, and the fields it
    sets only at its end (`train_step_compilations`), come from `earlier` until it replaces them.
    """
    if not earlier:
        return report
    reached = {g["generation"] for g in report["generations"]}
    generations = report["generations"] + [
        g for g in earlier["generations"] if g.get("generation") not in reached
    ]
    generations.sort(key=lambda g: g.get("generation", -1))
    return {**earlier, **report, "generations": generations}


def write_grown(path: Path, earlier: dict | None, report: dict) -> dict:
    """Writes `grown(earlier, report)` to `path` where it differs from `earlier`; returns it."""
    content = grown(earlier, report)
    if earlier is None or json.loads(atomic.to_json(content)) != earlier:
        write(path, content)
    return content


def public_pseudo_label_stats(stats: dict | None) -> dict | None:
    """The headline pseudo-label statistics results.json shows (the rest stay in summary.json)."""
    if stats is None:
        return None
    return {k: stats[k] for k in PSEUDO_LABEL_FIELDS if k in stats}


def _cell(value, width: int, digits: int = 2) -> str:
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


def format_table(results: dict) -> str:
    """The per-generation table printed at the end of a run ('-' where a value is missing)."""
    lines = [
        "gen  role     PCK@0.05  PCK@0.1  PCK@0.15  val PCK@0.1  pseudo pairs  pseudo points  "
        "precision@0.1"
    ]
    for r in results["generations"]:
        t, v, p = r.get("test") or {}, r.get("validation") or {}, r["pseudo_labels"] or {}
        lines.append(
            f"{r['generation']:>3}  {r['role']:<7}  {_cell(t.get('pck@0.05'), 8)}  "
            f"{_cell(t.get('pck@0.1'), 7)}  {_cell(t.get('pck@0.15'), 8)}  "
            f"{_cell(v.get('pck@0.1'), 11)}  {p.get('pairs', '-'):>12}  "
            f"{p.get('points', '-'):>13}  {_cell(p.get('precision@0.1'), 13, 1)}"
        )
    return "\n".join(lines)
