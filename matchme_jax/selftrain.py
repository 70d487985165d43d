"""MatchMe's generations: a supervised teacher, then students trained on its pseudo labels.

Generation 0 trains a teacher on the labeled pairs with the official (weak) augmentation.
Generation g >= 1 lets teacher g-1 annotate unlabeled pairs, trains a student on labeled +
pseudo-labeled pairs with strong augmentation, from the same initialisation and with the same
step budget as the teacher, evaluates it, and makes it the next teacher. Each generation writes
W/gen_<g>/ (checkpoints, pseudo labels, logs, summary.json); W/results.json collects the
summaries, and W/tensorboard/ their curves (matchme_jax/curves.py). In a multi-process run every
process computes everything but its shard of the training batches, and only process 0 writes
files (Orbax coordinates the checkpoints).

A finished generation is never redone: rerunning the same command continues where it stopped.
results.json only grows: a rerun keeps the generations it has not reached yet (`results.grown`),
so one that fails on its way leaves every earlier result in place.
"""

import time
from pathlib import Path

from absl import logging

from matchme_jax import (
    annotate,
    atomic,
    curves,
    init_from,
    parallel,
    results,
    visualize,
)
from matchme_jax.data import pipeline, sources
from matchme_jax.evaluators import build as build_evaluators
from matchme_jax.models import build_model
from matchme_jax.train.trainer import GenerationTrainer


def run(config, workdir: Path) -> dict:
    """Runs (or continues) generations 0 .. selftrain.generations; returns results.json."""
    directory = workdir / curves.TENSORBOARD_DIR
    with curves.Curves(directory, enabled=config.logging.tensorboard) as board:
        return _run(config, workdir, board)


def _run(config, workdir: Path, board: curves.Curves) -> dict:
    model = build_model(config.model)
    trainer = GenerationTrainer(config, model, workdir, board)
    # Compiled on first use, once for every generation's pseudo labels and evaluators.
    annotate_step = annotate.make_annotate_step(
        model, consistency=config.selftrain.consistency_radius is not None
    )
    evals = build_evaluators.from_config(config, model, workdir, annotate_step=annotate_step)
    init = init_from.initial_variables(config, model)
    labeled = sources.labeled_pairs(config.dataset)
    generations = config.selftrain.generations if config.mode == "selftrain" else 0
    report = {"dataset": sources.full_name(config.dataset), "generations": []}
    results_path = workdir / results.RESULTS_FILE
    earlier = results.read_earlier(results_path)
    teacher = None
    for g in range(generations + 1):
        start = time.perf_counter()
        if g == 0:
            role, training, weights, stats = "teacher", [labeled], [1.0], None
        else:
            pseudo, stats, source = _pseudo_labels(config, workdir, g, annotate_step, teacher)
            pseudo_pairs = pipeline.PseudoLabeledPairs(
                source, pseudo, config.selftrain.pseudo_weight
            )
            fraction = config.selftrain.labeled_fraction
            role, training, weights = "student", [labeled, pseudo_pairs], [fraction, 1 - fraction]
        start_from = init_from.generation_start(config, g, init, teacher)
        variables = trainer.train(g, start_from, training, weights, role)
        gen_dir = workdir / f"gen_{g}"
        header = {
            "generation": g,
            "role": role,
            "pseudo_labels": results.public_pseudo_label_stats(stats),
            "pseudo_label_details": stats,
            "labeled_pairs": len(labeled),
            "train_steps": config.train.steps,
        }
        summary = _summary(gen_dir, evals, variables, header, start, board)
        report["generations"].append({k: summary[k] for k in (*results.GENERATION_FIELDS, *evals)})
        results.write_grown(results_path, earlier, report)
        teacher = variables
    # A rerun of finished generations traces no step: the count is that of the process that
    # compiled the most (1 when every process compiled the step once, however often resumed).
    report["train_step_compilations"] = max(
        trainer.train_step.trace_count, (earlier or {}).get("train_step_compilations") or 0
    )
    report = results.write_grown(results_path, earlier, report)
    if parallel.is_main_process():
        visualize.plot_generations(report, workdir / results.PLOT_FILE)
        print(results.format_table(report))
    return report


def _summary(gen_dir: Path, evals: dict, variables, header: dict, start, board) -> dict:
    """The generation's summary.json, with every evaluator's result.

    `header`: what a new summary starts with (how the generation was trained).

    A finished generation's summary is reused; an evaluator it lacks, or whose settings changed,
    is run now and added. What is new (the pseudo-label statistics of a new summary, the headline
    of every evaluator run now) goes to the `generations` curves, before the summary is saved: a
    kill in between costs a repeated point, not a missing one.
    """
    path = gen_dir / results.SUMMARY_FILE
    summary = None
    if path.exists():
        summary = atomic.read_json(path, fix="delete it; the run evaluates that generation again")
    new_curves = {}
    if summary is None:
        summary = dict(header)
        new_curves["pseudo_labels"] = summary["pseudo_labels"]  # None for a teacher
    changed = False
    for name, evaluator in evals.items():
        details = summary.get(f"{name}_details")
        if details is not None and details.get("settings") == evaluator.settings:
            continue
        details = dict(evaluator.run(variables))
        details["settings"] = evaluator.settings
        summary[name] = evaluator.headline(details)
        summary[f"{name}_details"] = details
        new_curves[name] = summary[name]
        changed = True
    if "wall_time_s" not in summary:
        summary["wall_time_s"] = round(time.perf_counter() - start, 1)
    board.write(curves.GENERATIONS_RUN, summary["generation"], new_curves)
    board.flush()
    if changed or not path.exists():
        results.write(path, summary)
    return summary


def _pseudo_labels(config, workdir: Path, generation: int, annotate_step, teacher) -> tuple:
    """Annotates this generation's unlabeled pairs (or reloads what an earlier try wrote).

    Returns (pseudo labels, statistics, the source their `index` refers to).
    """
    pseudo_dir = workdir / f"gen_{generation}" / "pseudo"
    subset = sources.draw_unlabeled_pairs(config, generation, workdir)
    st = config.selftrain
    if (pseudo_dir / annotate.PSEUDO_FILE).exists():
        pseudo, stats = annotate.load(pseudo_dir)
    else:
        if st.annotator == "oracle":
            pseudo, stats = annotate.true_labels(subset, st.max_pseudo_points)
        elif st.annotator == "oracle_dense":
            pseudo, stats = annotate.dense_true_labels(subset, st.max_pseudo_points)
        else:
            pseudo, stats = annotate.annotate_pairs(
                annotate_step,
                teacher,
                subset,
                config.dataset,
                st,
                batch_size=config.eval.batch_size,
                desc=f"gen {generation} annotate",
            )
        pseudo["index"] = subset.indices[pseudo["index"]]  # positions in the whole split
        if parallel.is_main_process():
            if "tau_sweep" in stats:
                # Before the pseudo labels: their file marks the annotation done, sweep included.
                annotate.save_tau_sweep(pseudo_dir.parent, stats["tau_sweep"])
            annotate.save(pseudo_dir, pseudo, stats)
    logging.info(
        "Generation %d pseudo labels: %s", generation, results.public_pseudo_label_stats(stats)
    )
    if not len(pseudo["index"]):
        raise RuntimeError(
            f"Generation {generation}: the teacher kept no pseudo label at tau={st.tau}. "
            "Lower config.selftrain.tau or train the teacher longer."
        )
    return pseudo, stats, subset.source
