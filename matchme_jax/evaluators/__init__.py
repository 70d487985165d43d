"""Evaluators built from `config.evals`, in the manner of big_vision.

Each entry names a type and the modes it runs in:

    config.evals.validation = dict(type="pck", split="validation", modes=("selftrain", "train"))

`build.from_config(config, model, workdir)` builds the evaluators of `config.mode`, all sharing one
compiled eval step; `evaluator.run(variables)` yields `(metric, value)` pairs, and
`evaluator.report(result, variables, directory)` writes them as files for a user. In
self-training every evaluator runs after each generation (its whole result goes into summary.json,
its `headline` into results.json, under its name); `mode=evaluate` / `evaluate_corruptions` run
them once on `config.init_from`.

Types: `pck` (PCK on a split), `corruptions` (SPair-C), `pseudo_labels` (the precision of the
model's pseudo labels on a split with truth, and the tau sweep).
"""

# type -> the module whose `Evaluator` implements it (imported on use: SPair-C needs extras, and
# config checks read this table without grain or TFDS).
TYPES = {
    "pck": "matchme_jax.evaluators.pck",
    "corruptions": "matchme_jax.evaluators.corruptions",
    "pseudo_labels": "matchme_jax.evaluators.pseudo_labels",
}
