"""SPair-C: PCK of a model on the clean test pairs and under ImageNet-C corruptions.

    python run.py --config=configs/spair.py --workdir=W --config.mode=evaluate_corruptions \
        --config.init_from=CHECKPOINT --config.dataset.num_workers=8

`config.evals.corruptions = dict(type="corruptions", split=..., names=..., severities=...,
max_pairs=...)` evaluates the split (optionally its first `max_pairs` pairs), clean and under
every corruption x severity, and writes W/eval/spair_c_<split>.json (every PCK, per category too)
and .md: a corruption x severity table of PCK@0.1, the mean over corruptions per severity, and
the relative drop from clean.

Each cell is the ordinary evaluation (`evaluate.evaluate`, one compiled eval step for all) of the
split read through `corruptions.CorruptedPairs`: grain corrupts the original images on the host,
in its reader threads and in `dataset.num_workers` worker processes, before the resize.

A full run corrupts the 12,234 test pairs 75 times; the JSON is rewritten after every cell and
the same command, rerun, keeps the cells it holds when the checkpoint and the evaluation settings
are unchanged, so a killed run continues where it stopped (delete the file to start afresh).
"""

import functools
import json
import time
from pathlib import Path

import numpy as np
from absl import logging

from data_builders.corruption_recipe import TABLE_ALPHA
from matchme_jax import atomic, evaluate, progress
from matchme_jax.data import sources
from matchme_jax.data.corruptions import CorruptedPairs
from matchme_jax.data.unlabeled import Subset

# The file stem per dataset; other datasets get "<name>_c".
STEMS = {"spair71k": "spair_c"}


def output_stem(dataset_cfg, split: str) -> str:
    """`spair_c_<split>` for SPair-71k, `<dataset>_c_<split>` otherwise."""
    stem = STEMS.get(dataset_cfg.name, f"{sources.file_stem(dataset_cfg)}_c")
    return f"{stem}_{split}"


def first_pairs(source, max_pairs: int | None):
    """The first `max_pairs` examples of `source` (all of them when None)."""
    if max_pairs is None or max_pairs >= len(source):
        return source
    return Subset(source, np.arange(max_pairs))


def _settings(config, split: str, num_pairs: int) -> dict:
    """What the numbers depend on: a saved cell is reused only when these are unchanged."""
    dataset = json.loads(config.dataset.to_json())
    for field in ("data_dir", "manual_dir", "num_workers"):  # where and how fast, not what
        dataset.pop(field)
    if not dataset["generator_seed"]:  # seed 0: the benchmark as named, without a seed
        dataset.pop("generator_seed")
    return {
        "checkpoint": config.init_from,
        "split": split,
        "num_pairs": num_pairs,
        "dataset": dataset,
        "model": json.loads(config.model.to_json()),
        "eval": json.loads(config.eval.to_json()),
    }


def _saved_cells(path: Path, settings: dict) -> tuple[dict | None, dict]:
    """(clean result, {corruption: {severity: result}}) of an earlier run with `settings`."""
    if not path.exists():
        return None, {}
    saved = atomic.read_json(path, fix="delete it; the evaluation starts over")
    if saved.get("settings") != settings:
        logging.info("%s was made with other settings; evaluating afresh.", path)
        return None, {}
    return saved["clean"], saved["details"]


def summarize(clean: dict, details: dict, names, severities) -> dict:
    """The PCK@0.1 table, its mean over corruptions and the relative drop from clean (percent).

    Args:
        clean: the clean `evaluate.evaluate` result.
        details: {corruption: {str(severity): evaluate result}}; missing cells are skipped.
        names: the corruptions, in table order.
        severities: the severities, in table order.

    Returns:
        `pck@0.1`: {corruption: {severity | "mean": PCK}}; `mean_over_corruptions` and
        `relative_drop_percent`: {severity | "mean": value}, the drop being
        100 * (clean - mean) / clean (None when the clean PCK is 0).
    """
    key = f"pck@{TABLE_ALPHA:g}"
    table = {}
    for name in names:
        row = {
            str(s): details[name][str(s)][key]
            for s in severities
            if str(s) in details.get(name, {})
        }
        if row:
            row["mean"] = float(np.mean(list(row.values())))
            table[name] = row
    columns = [str(s) for s in severities] + ["mean"]
    means = {}
    for column in columns:
        values = [row[column] for row in table.values() if column in row]
        if values:
            means[column] = float(np.mean(values))
    clean_pck = clean[key]
    drops = {
        c: (100.0 * (clean_pck - m) / clean_pck if clean_pck else None) for c, m in means.items()
    }
    return {key: table, "mean_over_corruptions": means, "relative_drop_percent": drops}


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(result: dict, names, severities) -> str:
    """The corruption x severity table of PCK@0.1 (percent), as Markdown."""
    key = f"pck@{TABLE_ALPHA:g}"
    columns = [str(s) for s in severities] + ["mean"]
    lines = [
        "| corruption | " + " | ".join(f"severity {s}" for s in severities) + " | mean |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name in names:
        row = result[key].get(name, {})
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    for label, field in (
        ("**mean over corruptions**", "mean_over_corruptions"),
        ("**relative drop from clean (%)**", "relative_drop_percent"),
    ):
        values = result[field]
        lines.append(f"| {label} | " + " | ".join(_cell(values.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _write(out: Path, stem: str, result: dict, names, severities) -> None:
    """Rewrites <stem>.json and .md whole (a kill meanwhile leaves the previous files)."""
    clean = result["clean"][f"pck@{TABLE_ALPHA:g}"]
    header = (
        f"# {stem}: PCK@{TABLE_ALPHA:g} (%) of {result['settings']['checkpoint']}\n\n"
        f"{result['settings']['num_pairs']} pairs; clean PCK@{TABLE_ALPHA:g}: {clean:.2f}. "
        "Corruptions: data_builders/corruption_recipe.py (README, SPair-C)."
    )
    if not result["complete"]:
        header += " Incomplete: rerun the same command to continue."
    contents = {
        f"{stem}.json": atomic.to_json(result, indent=1),
        f"{stem}.md": f"{header}\n\n{markdown_table(result, names, severities)}\n",
    }
    for name, text in contents.items():
        atomic.write_text(out / name, text)


class Evaluator:
    """The clean split and every corruption x severity of `eval_cfg`, saved cell by cell."""

    def __init__(
        self, name: str, eval_cfg, config, *, eval_step, annotate_step, model, workdir: Path
    ):
        del annotate_step, model  # the shared eval step is all it runs
        self.name = name
        self.split = eval_cfg.split
        self.names, self.severities = tuple(eval_cfg.names), tuple(eval_cfg.severities)
        self.max_pairs = eval_cfg.max_pairs
        self._config = config
        self._eval_step = eval_step
        self._out = workdir / "eval"

    @functools.cached_property
    def pairs(self):
        """The (first `max_pairs`) pairs of the split, opened on first use."""
        return first_pairs(sources.open_split(self._config.dataset, self.split), self.max_pairs)

    @property
    def settings(self) -> dict:
        return _settings(self._config, self.split, len(self.pairs))

    def run(self, variables):
        """Yields the result's fields: `settings`, `clean` (an `evaluate.evaluate` result),
        `details` ({corruption: {severity: result}}), `complete`, and the `summarize` fields.

        Writes W/eval/<stem>.{json,md} after every cell; the cells of an earlier run with the
        same settings are kept, not evaluated again.
        """
        config = self._config
        categories = sources.category_names(config.dataset)
        names, severities = self.names, self.severities
        self._out.mkdir(parents=True, exist_ok=True)
        stem = output_stem(config.dataset, self.split)
        settings = self.settings
        clean, details = _saved_cells(self._out / f"{stem}.json", settings)

        def evaluate_on(source, cell: str) -> dict:
            start = time.perf_counter()
            result = evaluate.evaluate(
                self._eval_step,
                variables,
                source,
                config.dataset,
                config.eval,
                categories,
                desc=f"{stem} {cell}",
            )
            result["wall_time_s"] = round(time.perf_counter() - start, 2)
            return result

        def save(complete: bool) -> dict:
            result = {
                "settings": settings,
                "clean": clean,
                "details": details,
                "complete": complete,
            }
            result.update(summarize(clean, details, names, severities))
            _write(self._out, stem, result, names, severities)
            return result

        todo = [(n, s) for n in names for s in severities if str(s) not in details.get(n, {})]
        with progress.Progress(
            len(todo) + (clean is None), desc=f"{stem} cells", unit="cells"
        ) as cells:
            if clean is None:
                clean = evaluate_on(self.pairs, "clean")
                save(complete=False)
                cells.update()
            for name, severity in todo:
                cell = evaluate_on(CorruptedPairs(self.pairs, name, severity), f"{name} {severity}")
                details.setdefault(name, {})[str(severity)] = cell
                pck = cell[f"pck@{TABLE_ALPHA:g}"]
                cells.clear()
                logging.info("%s %d: PCK %.2f (%.1f s)", name, severity, pck, cell["wall_time_s"])
                save(complete=False)
                cells.update()
        yield from save(complete=True).items()

    @staticmethod
    def headline(result: dict) -> dict:
        """What results.json shows: clean and mean corrupted PCK@0.1."""
        key = f"pck@{TABLE_ALPHA:g}"
        return {
            "clean": result["clean"][key],
            "mean_over_corruptions": result["mean_over_corruptions"],
        }

    def report(self, result: dict, variables, directory: Path) -> str:
        """The corruption table (`run` has written the files already)."""
        del variables, directory
        return markdown_table(result, self.names, self.severities)
