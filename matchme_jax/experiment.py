"""Runs what `config.mode` asks for, in a workdir: the entry point behind run.py.

selftrain: the teacher and its students (`selftrain.run`); train: generation 0 alone;
evaluate / evaluate_corruptions: the evaluators of that mode (`config.evals`) on
`config.init_from`, written to W/eval/.
"""

from pathlib import Path

import jax
from absl import logging

from matchme_jax import config_checks, init_from, parallel, selftrain, workdir_lock
from matchme_jax.data import sources
from matchme_jax.evaluators import build as build_evaluators
from matchme_jax.models import build_model


def run(config, workdir: str | Path) -> dict:
    """Checks the config, prepares the devices and the workdir, and runs `config.mode`.

    Returns results.json's content (selftrain, train) or {evaluator name: its result}.
    Raises workdir_lock.WorkdirBusyError at once when another run uses the workdir.
    """
    config_checks.validate(config)
    parallel.initialize_distributed(config.distributed)
    parallel.enable_compilation_cache(config.compilation_cache_dir)
    workdir = Path(workdir)
    config_checks.check_workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # One run per workdir (W/run.lock), held by process 0 for the processes of a multi-process
    # run; before check_workdir, which writes config.json.
    with workdir_lock.held(workdir, enabled=parallel.is_main_process()):
        logging.info("Devices: %s", jax.devices())
        if config.mode in config_checks.EVALUATION_MODES:
            return evaluate_checkpoint(config, workdir)
        if parallel.is_main_process():
            config_checks.check_workdir(config, workdir)
        return selftrain.run(config, workdir)


def evaluate_checkpoint(config, workdir: Path) -> dict:
    """Runs the mode's evaluators on `config.init_from`; each writes its files in W/eval/.

    Returns {evaluator name: its result}, each naming the checkpoint and the dataset.
    """
    model = build_model(config.model)
    variables = init_from.initial_variables(config, model)
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    evaluated = {}
    for name, evaluator in build_evaluators.from_config(config, model, workdir).items():
        result = dict(evaluator.run(variables))
        result["checkpoint"] = config.init_from
        result["dataset"] = sources.full_name(config.dataset)
        if parallel.is_main_process():
            print(evaluator.report(result, variables, out))
        evaluated[name] = result
    return evaluated
