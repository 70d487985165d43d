"""`from_config`: the evaluators of a config's mode, sharing one compiled eval step."""

import importlib
from pathlib import Path

from matchme_jax import annotate, evaluate
from matchme_jax.evaluators import TYPES


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
