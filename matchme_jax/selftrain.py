"""MatchMe's generations: a supervised teacher, then students trained on its pseudo labels.

Generation 0 trains a teacher on the labeled pairs with the official (weak) augmentation.
Generation g >= 1 lets teacher g-1 annotate unlabeled pairs, trains a student on labeled +
pseudo-labeled pairs with strong augmentation, from the same initialisation and with the same
step budget as the teacher, evaluates it, and makes it the next teacher. One compiled train step
serves every generation. Each generation writes W/gen_<g>/ (checkpoints, pseudo labels, logs,
summary.json); W/results.json collects the summaries. In a multi-process run every process
computes everything but its shard of the training batches, and only process 0 writes files
(Orbax coordinates the checkpoints).

A finished generation is never redone: rerunning the same command continues where it stopped.
"""

import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging

from matchme_jax import (
    annotate,
    checkpoint,
    config_checks,
    corruption_benchmark,
    evaluate,
    init_from,
    parallel,
    visualize,
)
from matchme_jax.data import pipeline, sources, unlabeled
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.models import build_model
from matchme_jax.train.loop import train_generation
from matchme_jax.train.state import create_train_state, make_optimizer
from matchme_jax.train.step import TrainStep

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "pck_per_generation.png"


class Run:
    """Everything a self-training run builds once: data sources, model, compiled steps."""

    def __init__(self, config, workdir: Path):
        self.config = config
        self.workdir = workdir
        dataset_cfg = config.dataset
        self.test_source = sources.open_split(dataset_cfg, dataset_cfg.test_split)
        self.categories = sources.category_names(dataset_cfg)
        self.dataset_name = sources.full_name(dataset_cfg)  # recorded with the results
        self.model = build_model(config.model)
        self.optimizer = make_optimizer(
            config.optim,
            total_steps=config.train.steps,
            freeze_backbone=config.model.freeze_backbone,
        )
        self.train_step = TrainStep(
            self.model,
            self.optimizer,
            config.model,
            dataset_cfg,
            receptive_field=config.train.receptive_field,
        )
        self.eval_step = evaluate.make_eval_step(self.model, dataset_cfg, config.eval)
        self.annotate_step = annotate.make_annotate_step(
            self.model, consistency=config.selftrain.consistency_radius is not None
        )
        self.init_variables = self._initial_variables()
        self.strengths = {
            role: AugmentStrength.from_config(config.augment[role])
            for role in ("teacher", "student")
        }

    @functools.cached_property
    def train_source(self):
        """The labeled pairs (opened on first use: an evaluation needs no training split)."""
        return sources.open_split(self.config.dataset, self.config.dataset.train_split)

    def _initial_variables(self):
        size = self.config.dataset.image_size
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        rng = jax.random.key(self.config.seed)
        variables = jax.jit(lambda r: self.model.init(r, source=images, target=images))(rng)
        if self.config.model.backbone_weights:
            variables = init_from.with_backbone_weights(self.config, variables)
        if self.config.init_from:
            variables = init_from.load_variables(self.config, variables)
        return parallel.replicate(variables)

    def train(self, generation: int, variables, training_sources, weights, role: str):
        """Trains one generation from `variables`; resumes from its latest checkpoint."""
        gen_dir = self.workdir / f"gen_{generation}"
        # A copy: the train step donates its state, and `variables` (the shared initialisation,
        # or the teacher) must outlive this generation.
        variables = jax.tree.map(jnp.copy, variables)
        state = parallel.replicate(create_train_state(variables, self.optimizer))
        ckpt = checkpoint.GenerationCheckpoints(gen_dir)
        batches = pipeline.training_iterator(
            training_sources,
            weights,
            self.config.dataset,
            batch_size=self.config.train.batch_size,
            seed=self.config.seed + 1000 * generation,
            shard_index=parallel.process_index(),
            shard_count=parallel.process_count(),
        )
        latest = ckpt.latest_step()
        if latest is not None:
            logging.info("Generation %d: resuming from step %d", generation, latest)
            state, data_state = ckpt.restore(latest, checkpoint.abstract(state))
            state = parallel.replicate(state)
            batches.set_state(data_state)
        rng = jax.random.fold_in(jax.random.key(self.config.seed), generation)
        state = train_generation(
            state=state,
            train_step=self.train_step,
            batches=batches,
            strength=self.strengths[role],
            rng=rng,
            train_cfg=self.config.train,
            checkpoints=ckpt,
            log_path=gen_dir / "train_log.jsonl",
            label=f"gen {generation} ({role})",
        )
        ckpt.close()
        return state.variables()

    def test(self, variables) -> dict:
        return evaluate.evaluate(
            self.eval_step,
            variables,
            self.test_source,
            self.config.dataset,
            self.config.eval,
            self.categories,
        )


def _pseudo_labels(run: Run, generation: int, teacher) -> tuple[dict, dict, object]:
    """(pseudo labels, statistics, the source their `index` refers to)."""
    """Annotates this generation's unlabeled pairs (or reloads what an earlier try wrote)."""
    pseudo_dir = run.workdir / f"gen_{generation}" / "pseudo"
    subset = unlabeled.draw_pairs(run.config, generation, run.workdir)
    if (pseudo_dir / annotate.PSEUDO_FILE).exists():
        pseudo, stats = annotate.load(pseudo_dir)
    else:
        pseudo, stats = annotate.annotate_pairs(
            run.annotate_step,
            teacher,
            subset,
            run.config.dataset,
            run.config.selftrain,
            batch_size=run.config.eval.batch_size,
        )
        pseudo["index"] = subset.indices[pseudo["index"]]  # positions in the whole split
        if parallel.is_main_process():
            # Before the pseudo labels: their file marks the annotation done, sweep included.
            annotate.save_tau_sweep(pseudo_dir.parent, stats["tau_sweep"])
            annotate.save(pseudo_dir, pseudo, stats)
    logging.info("Generation %d pseudo labels: %s", generation, stats)
    if not len(pseudo["index"]):
        raise RuntimeError(
            f"Generation {generation}: the teacher kept no pseudo label at tau="
            f"{run.config.selftrain.tau}. Lower config.selftrain.tau or train the teacher longer."
        )
    return pseudo, stats, subset.source


def _write_json(path: Path, content: dict) -> None:
    """Writes `path` whole or not at all: a run killed meanwhile leaves the old file.

    Only the main process writes; the others compute the same content.
    """
    if not parallel.is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    os.replace(tmp, path)


def _public_stats(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    keys = (
        "pairs",
        "points",
        "points_per_pair",
        "mean_confidence",
        "precision@0.05",
        "precision@0.1",
    )
    return {k: stats[k] for k in keys if k in stats}


def run(config, workdir: str | Path) -> dict:
    """Runs (or continues) the whole self-training; returns the results.json content."""
    config_checks.validate(config)
    parallel.initialize_distributed(config.distributed)
    parallel.enable_compilation_cache(config.compilation_cache_dir)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logging.info("Devices: %s", jax.devices())
    if config.mode == "evaluate":
        return evaluate_checkpoint(Run(config, workdir))
    if config.mode == "evaluate_corruptions":
        return corruption_benchmark.evaluate_checkpoint(Run(config, workdir))
    if parallel.is_main_process():
        config_checks.check_workdir(config, workdir)
    run_ = Run(config, workdir)
    generations = config.selftrain.generations if config.mode == "selftrain" else 0
    results = {"dataset": run_.dataset_name, "generations": []}
    teacher = None
    for g in range(generations + 1):
        gen_dir = workdir / f"gen_{g}"
        summary_path = gen_dir / SUMMARY_FILE
        start = time.perf_counter()
        role = "teacher" if g == 0 else "student"
        if g == 0:
            training, weights, stats = [run_.train_source], [1.0], None
        else:
            pseudo, stats, unlabeled = _pseudo_labels(run_, g, teacher)
            pseudo_pairs = pipeline.PseudoLabeledPairs(
                unlabeled, pseudo, config.selftrain.pseudo_weight
            )
            fraction = config.selftrain.labeled_fraction
            training, weights = [run_.train_source, pseudo_pairs], [fraction, 1.0 - fraction]
        if config.selftrain.student_init == "teacher" and g > 0:
            init = teacher
        else:
            init = run_.init_variables
        variables = run_.train(g, init, training, weights, role)
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
        else:
            test = run_.test(variables)
            summary = {
                "generation": g,
                "role": role,
                "test": {k: v for k, v in test.items() if k.startswith("pck@")},
                "test_details": test,
                "pseudo_labels": _public_stats(stats),
                "pseudo_label_details": stats,
                "train_steps": config.train.steps,
                "wall_time_s": round(time.perf_counter() - start, 1),
            }
            _write_json(summary_path, summary)
        results["generations"].append(
            {k: summary[k] for k in ("generation", "role", "test", "pseudo_labels")}
        )
        _write_json(workdir / RESULTS_FILE, results)
        teacher = variables
    results["train_step_compilations"] = run_.train_step.trace_count
    _write_json(workdir / RESULTS_FILE, results)
    if parallel.is_main_process():
        visualize.plot_generations(results, workdir / PLOT_FILE)
        print(format_table(results))
    return results


def evaluate_checkpoint(run_: Run) -> dict:
    """Tests `config.init_from`; writes W/eval/<dataset>_<split>.{json,md} (see `file_stem`)."""
    config = run_.config
    result = run_.test(run_.init_variables)
    result["checkpoint"] = config.init_from
    result["dataset"] = run_.dataset_name
    name = f"{sources.file_stem(config.dataset)}_{config.dataset.test_split}"
    table = evaluate.markdown_table(result, config.eval.alphas, run_.categories)
    if not parallel.is_main_process():
        return result
    out = run_.workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(f"# {name}: {config.init_from}\n\n{table}\n")
    visualize.save_match_pictures(
        visualize.make_flow_fn(run_.model),
        run_.init_variables,
        run_.test_source,
        config.dataset,
        config.eval,
        out / "matches",
        category_names=run_.categories,
    )
    print(table)
    return result


def format_table(results: dict) -> str:
    """The per-generation table printed at the end of a run."""
    lines = [
        "gen  role     PCK@0.05  PCK@0.1  PCK@0.15  pseudo pairs  pseudo points  precision@0.1",
    ]
    for r in results["generations"]:
        t, p = r["test"], r["pseudo_labels"] or {}
        precision = p.get("precision@0.1")
        lines.append(
            f"{r['generation']:>3}  {r['role']:<7}  {t['pck@0.05']:8.2f}  {t['pck@0.1']:7.2f}  "
            f"{t['pck@0.15']:8.2f}  {p.get('pairs', '-'):>12}  {p.get('points', '-'):>13}  "
            f"{'-' if precision is None else f'{precision:.1f}':>13}"
        )
    return "\n".join(lines)
