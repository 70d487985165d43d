"""The train state pytree and the two-learning-rate AdamW of the official CATs recipe."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; a pure pytree (Orbax saves it as is)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    def variables(self) -> dict[str, Any]:
        """The model variables, as `model.apply` takes them."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(base_lr: float, optim_cfg, total_steps: int) -> optax.Schedule:
    """constant, multistep (halving, like the official MultiStepLR) or cosine decay."""
    if optim_cfg.schedule == "constant":
        return optax.constant_schedule(base_lr)
    if optim_cfg.schedule == "multistep":
        boundaries = {int(f * total_steps): optim_cfg.gamma for f in optim_cfg.milestones}
        return optax.piecewise_constant_schedule(base_lr, boundaries)
    if optim_cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(
            base_lr, decay_steps=max(total_steps, 1), alpha=optim_cfg.min_lr / base_lr
        )
    raise ValueError(
        f"config.optim.schedule={optim_cfg.schedule!r}: use 'constant', 'multistep' or 'cosine'."
    )


def param_labels(params) -> dict[str, Any]:
    """'backbone' for every parameter under the top-level `backbone` key, 'head' otherwise.

    The official code splits its AdamW groups by whether the torch name contains
    `feature_extraction`; the head group includes the trainable soft-argmax grids.
    """
    return {
        name: jax.tree.map(lambda _, n=name: "backbone" if n == "backbone" else "head", sub)
        for name, sub in params.items()
    }


def make_optimizer(optim_cfg, *, total_steps: int, freeze_backbone: bool):
    """AdamW with decoupled weight decay on every trained parameter, one lr per group.

    A frozen backbone gets no update at all (no weight decay either), as in the official code,
    where parameters without a gradient are skipped by torch's AdamW.
    """

    def adamw(base_lr: float) -> optax.GradientTransformation:
        return optax.adamw(
            learning_rate_schedule(base_lr, optim_cfg, total_steps),
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        )

    transforms = {
        "head": adamw(optim_cfg.head_lr),
        "backbone": optax.set_to_zero() if freeze_backbone else adamw(optim_cfg.backbone_lr),
    }
    return optax.multi_transform(transforms, param_labels)


def learning_rates(optim_cfg, *, total_steps: int, freeze_backbone: bool):
    """`rates(step) -> {"head": lr, "backbone": lr}`: what `make_optimizer` applies at train step
    `step` (1-based), computed on the host from the same schedules (0 for a frozen backbone)."""
    head = learning_rate_schedule(optim_cfg.head_lr, optim_cfg, total_steps)
    backbone = learning_rate_schedule(optim_cfg.backbone_lr, optim_cfg, total_steps)

    def rates(step: int) -> dict[str, float]:
        count = step - 1  # optax reads the schedule at the count of updates before this one
        return {
            "head": float(head(count)),
            "backbone": 0.0 if freeze_backbone else float(backbone(count)),
        }

    return rates


def create_train_state(variables, optimizer: optax.GradientTransformation) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
    )
