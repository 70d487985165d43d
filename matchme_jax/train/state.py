"""The train state pytree and the two-learning-rate AdamW of the official CATs recipe."""

from collections.abc import Callable
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


# Path below `params/backbone` -> whether that parameter is fine-tuned (`backbones.is_trainable`).
TrainableBackbone = Callable[[tuple[str, ...]], bool]
# The soft-argmax grids: the source coordinates of the cells, which only the flow reads.
SOFT_ARGMAX_GRIDS = ("x_normal", "y_normal")


def trains_soft_argmax_grids(loss: str) -> bool:
    """Whether `config.train.loss` reaches the soft-argmax grids: only the end-point error reads
    the flow (the cross-entropy reads the distribution over source cells)."""
    return loss == "epe"


def param_labels(
    params,
    trainable_backbone: TrainableBackbone | None = None,
    *,
    train_soft_argmax_grids: bool = True,
) -> dict[str, Any]:
    """'backbone' for every parameter under the top-level `backbone` key, 'head' otherwise;
    'frozen' for the backbone parameters `trainable_backbone` says are not fine-tuned, and for
    the soft-argmax grids unless `train_soft_argmax_grids`.

    The official code splits its AdamW groups by whether the torch name contains
    `feature_extraction`; the head group includes the trainable soft-argmax grids.
    """

    def backbone_label(path, _) -> str:
        names = tuple(key.key for key in path)
        return "backbone" if trainable_backbone is None or trainable_backbone(names) else "frozen"

    def head_label(name: str, sub) -> Any:
        label = "frozen" if name in SOFT_ARGMAX_GRIDS and not train_soft_argmax_grids else "head"
        return jax.tree.map(lambda _: label, sub)

    labels = {name: head_label(name, sub) for name, sub in params.items()}
    if "backbone" in params:
        labels["backbone"] = jax.tree_util.tree_map_with_path(backbone_label, params["backbone"])
    return labels


def make_optimizer(
    optim_cfg,
    *,
    total_steps: int,
    freeze_backbone: bool,
    trainable_backbone: TrainableBackbone | None = None,
    train_soft_argmax_grids: bool = True,
):
    """AdamW with decoupled weight decay on every trained parameter, one lr per group.

    A frozen backbone, and the parameters `trainable_backbone` rejects (a ViT's blocks before
    the fine-tuned ones), get no update at all (no weight decay either), as in the official
    code, where parameters without a gradient are skipped by torch's AdamW. So do the
    soft-argmax grids unless `train_soft_argmax_grids`: a loss that does not read the flow
    (the cross-entropy) gives them no gradient, and weight decay alone would shrink them,
    pulling every predicted point toward the image centre (by 1.2 % in 1600 steps of the
    embedded default).
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
        "frozen": optax.set_to_zero(),
    }
    return optax.multi_transform(
        transforms,
        lambda p: param_labels(
            p, trainable_backbone, train_soft_argmax_grids=train_soft_argmax_grids
        ),
    )


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
