"""Evaluators built from `config.evals`, in the manner of big_vision.

Each entry names a type and the modes it runs in:

    config.evals.validation = dict(type="pck", split="validation", modes=("selftrain", "train"))

`from_config(config, model, workdir)` builds the evaluators of `config.mode`, all sharing one
compiled eval step; `evaluator.run(variables)` yields `(metric, value)` pairs, and
`evaluator.report(result, variables, directory)` writes them as files for a user. In
self-training every evaluator runs after each generation (its whole result goes into summary.json,
its `headline` into results.json, under its name); `mode=evaluate` / `evaluate_corruptions` run
them once on `config.init_from`.

Types: `pck` (PCK on a split), `corruptions` (SPair-C), `pseudo_labels` (the precision of the
model's pseudo labels on a split with truth, and the tau sweep).
"""

import importlib
from pathlib import Path

from matchme_jax import annotate, evaluate

# type -> the module whose `Evaluator` implements it (imported on use: SPair-C needs extras).
TYPES = {
    "pck": "matchme_jax.evaluators.pck",
    "corruptions": "matchme_jax.evaluators.corruptions",
    "pseudo_labels": "matchme_jax.evaluators.pseudo_labels",
}


def from_config(config, model, workdir: Path, *, annotate_step=None) -> dict:
    """{name: evaluator} for every entry of `config.evals` whose `modes` hold `config.mode`.

    `annotate_step`: the run's own `annotate.make_annotate_step`, so that a self-training run
    compiles the annotator once for its pseudo labels and its evaluators (made here if None).
    """
    eval_step = evaluate.make_eval_step(model, config.dataset, config.eval)
    if annotate_step is None:
        annotate_step = annotate.make_annotate_step(
            model, consistency=config.selftrain.consistency_radius is not None
        )
    evaluators = {}
    for name, eval_cfg in config.evals.items():
        if config.mode in eval_cfg.modes:
            module = importlib.import_module(TYPES[eval_cfg.type])
            evaluators[name] = module.Evaluator(
                name,
                eval_cfg,
                config,
                eval_step=eval_step,
                annotate_step=annotate_step,
                model=model,
                workdir=Path(workdir),
            )
    return evaluators
