"""The quality of a model's pseudo labels on a split with truth:
`config.evals.<name> = dict(type="pseudo_labels", split=...)`.

The model annotates every pair of the split by the run's own rules (`config.selftrain`: tau, query,
consistency check, point limits), and the pairs' dense truth scores what it kept: points, pairs,
precision@0.05/0.1, and the tau sweep. On the embedded benchmark's validation split this is how
tau is chosen without looking at the test pairs or the unlabeled pairs' hidden truth.
"""

import functools
from pathlib import Path

from matchme_jax import annotate, results
from matchme_jax.data import sources


class Evaluator:
    """`annotate.annotate_pairs` of a model on `split`, without keeping the pseudo labels."""

    def __init__(
        self, name: str, eval_cfg, config, *, eval_step, annotate_step, model, workdir: Path
    ):
        del eval_step, model, workdir  # the annotator's step is all it runs; nothing is kept
        self.name = name
        self.split = eval_cfg.split
        self._config = config
        self._step = annotate_step

    @functools.cached_property
    def source(self):
        """The split's pairs, opened on first use."""
        return sources.open_split(self._config.dataset, self.split)

    @property
    def settings(self) -> dict:
        return {
            "type": "pseudo_labels",
            "split": self.split,
            "selftrain": self._config.selftrain.to_dict(),
        }

    def run(self, variables):
        """Yields the annotation statistics (`annotate.summarize` plus `tau_sweep`)."""
        _, stats = annotate.annotate_pairs(
            self._step,
            variables,
            self.source,
            self._config.dataset,
            self._config.selftrain,
            batch_size=self._config.eval.batch_size,
            desc=f"{self.name}: pseudo labels on {self.split}",
        )
        yield from stats.items()

    @staticmethod
    def headline(result: dict) -> dict:
        """What results.json shows: the statistics it shows of a generation's pseudo labels."""
        return results.public_pseudo_label_stats(result)

    def report(self, result: dict, variables, directory: Path) -> str:
        """Writes the tau sweep (JSON and figure) under `directory`; returns a one-line summary."""
        del variables
        annotate.save_tau_sweep(directory / f"pseudo_labels_{self.split}", result["tau_sweep"])
        return f"{self.name}: " + ", ".join(f"{k} {v}" for k, v in self.headline(result).items())
