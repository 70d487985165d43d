"""PCK on one split: `config.evals.<name> = dict(type="pck", split=...)`."""

import functools
import json
from pathlib import Path

from matchme_jax import atomic, evaluate, visualize
from matchme_jax.data import sources

MATCH_PICTURES = 8  # pairs drawn by `report`


class Evaluator:
    """`evaluate.evaluate` of a model on `split` (every pair once, per category too)."""

    def __init__(
        self, name: str, eval_cfg, config, *, eval_step, annotate_step, model, workdir: Path
    ):
        del annotate_step, workdir  # PCK keeps nothing between runs
        self.name = name
        self.split = eval_cfg.split
        self._config = config
        self._eval_step = eval_step
        self._model = model

    @functools.cached_property
    def source(self):
        """The split's pairs, opened on first use."""
        return sources.open_split(self._config.dataset, self.split)

    @property
    def settings(self) -> dict:
        """What the result depends on besides the variables: a saved result is reused only
        while these are unchanged."""
        # As JSON reads it back from summary.json (lists, not tuples), or it never matches.
        eval_cfg = json.loads(self._config.eval.to_json())
        return {"type": "pck", "split": self.split, "eval": eval_cfg}

    @staticmethod
    def headline(result: dict) -> dict:
        """What results.json shows: the overall PCK at each alpha."""
        return {k: v for k, v in result.items() if k.startswith("pck@")}

    def run(self, variables):
        """Yields `(metric, value)`: `pck@<alpha>`, `per_category@<alpha>`, ..., `num_pairs`."""
        config = self._config
        categories = sources.category_names(config.dataset)
        yield from evaluate.evaluate(
            self._eval_step,
            variables,
            self.source,
            config.dataset,
            config.eval,
            categories,
            desc=f"{self.name}: PCK on {self.split}",
        ).items()

    def report(self, result: dict, variables, directory: Path) -> str:
        """Writes <dataset>_<split>.json, .md and match pictures in `directory`; returns the
        Markdown table."""
        config = self._config
        categories = sources.category_names(config.dataset)
        stem = f"{sources.file_stem(config.dataset)}_{self.split}"
        table = evaluate.markdown_table(result, config.eval.alphas, categories)
        atomic.write_json(directory / f"{stem}.json", result)
        atomic.write_text(directory / f"{stem}.md", f"# {stem}: {config.init_from}\n\n{table}\n")
        visualize.save_match_pictures(
            visualize.make_flow_fn(self._model),
            variables,
            self.source,
            config.dataset,
            config.eval,
            directory / f"{stem}_matches",
            num_pairs=MATCH_PICTURES,
            category_names=categories,
        )
        return table
