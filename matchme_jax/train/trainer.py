"""Trains one generation: data, optimizer state and checkpoints around the shared train step."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging

from matchme_jax import checkpoint, curves, parallel
from matchme_jax.data import pipeline
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.models.backbones import is_trainable
from matchme_jax.train.loop import train_generation
from matchme_jax.train.state import (
    create_train_state,
    learning_rates,
    make_optimizer,
    trains_soft_argmax_grids,
)
from matchme_jax.train.step import TrainStep

ROLES = ("teacher", "student")


class GenerationTrainer:
    """Trains generation g in W/gen_<g>/, resuming from its latest checkpoint.

    One compiled train step serves every generation: the augmentation strength of a role
    (`config.augment.<role>`) is data, not a compile-time constant. With `board`, every logged
    step also goes to its run `gen_<g>`, with the learning rates of that step.
    """

    def __init__(self, config, model, workdir: Path, board: curves.Curves | None = None):
        self._config = config
        self._workdir = Path(workdir)
        self._board = board
        schedule = dict(
            total_steps=config.train.steps, freeze_backbone=config.model.freeze_backbone
        )
        self.optimizer = make_optimizer(
            config.optim,
            **schedule,
            trainable_backbone=functools.partial(is_trainable, model),
            train_soft_argmax_grids=trains_soft_argmax_grids(config.train.loss),
        )
        self._learning_rates = learning_rates(config.optim, **schedule)
        self.train_step = TrainStep(
            model,
            self.optimizer,
            config.model,
            config.dataset,
            receptive_field=config.train.receptive_field,
            loss=config.train.loss,
            loss_temperature=config.train.loss_temperature,
        )
        self._strengths = {
            role: AugmentStrength.from_config(config.augment[role]) for role in ROLES
        }

    def train(self, generation: int, variables, training_sources, weights, role: str):
        """The variables after `config.train.steps` steps from `variables` on the sources.

        Args:
          generation: names the folder and seeds the batches and the step rng.
          variables: where training starts (not donated: the shared initialisation or the
            teacher outlives the generation).
          training_sources: random-access sources mixed with `weights` (fractions of a batch).
          role: "teacher" or "student", the augmentation strength.
        """
        config = self._config
        gen_dir = self._workdir / f"gen_{generation}"
        variables = jax.tree.map(jnp.copy, variables)  # the train step donates its state
        state = parallel.replicate(create_train_state(variables, self.optimizer))
        ckpt = checkpoint.GenerationCheckpoints(gen_dir)
        batches = pipeline.training_iterator(
            training_sources,
            weights,
            config.dataset,
            batch_size=config.train.batch_size,
            seed=config.seed + 1000 * generation,
            shard_index=parallel.process_index(),
            shard_count=parallel.process_count(),
        )
        latest = ckpt.latest_step()
        if latest is not None:
            logging.info("Generation %d: resuming from step %d", generation, latest)
            state, data_state = ckpt.restore(latest, checkpoint.abstract(state))
            state = parallel.replicate(state)
            batches.set_state(data_state)
        state = train_generation(
            state=state,
            train_step=self.train_step,
            batches=batches,
            strength=self._strengths[role],
            rng=jax.random.fold_in(jax.random.key(config.seed), generation),
            train_cfg=config.train,
            checkpoints=ckpt,
            log_path=gen_dir / "train_log.jsonl",
            label=f"gen {generation} ({role})",
            on_log=self._curves_of(generation, start=latest or 0),
            divergence_fix=self._divergence_fix(),
        )
        ckpt.close()
        return state.variables()

    def _divergence_fix(self) -> str:
        """What a diverged generation's error advises: the learning rates that apply."""
        optim = self._config.optim
        rates = f"config.optim.head_lr ({optim.head_lr:g})"
        if not self._config.model.freeze_backbone:
            rates += f" and config.optim.backbone_lr ({optim.backbone_lr:g})"
        return f"Lower {rates}, or check the input data."

    def _curves_of(self, generation: int, start: int):
        """The loop's `on_log`: the step's metrics and learning rates to run `gen_<g>`."""
        if self._board is None or start >= self._config.train.steps:
            return None
        run = curves.train_run(generation)
        self._board.start(run, start + 1)  # hides what a killed try logged after `start`

        def on_log(step: int, metrics: dict) -> None:
            self._board.write(run, step, {"train": metrics, "lr": self._learning_rates(step)})
            self._board.flush()

        return on_log
