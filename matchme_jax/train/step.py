"""THE train step: augment on device, keypoints -> sparse flow targets, the loss, AdamW.

Built once and jitted once; every generation calls the same compiled function. What differs
between the teacher and a student (augmentation strength, the mix of labeled and pseudo pairs,
the keypoint weights) arrives as array arguments, never as Python constants.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from matchme_jax.data.augment import AugmentStrength, augment_batch
from matchme_jax.data.targets import keypoints_to_flow
from matchme_jax.losses import cell_cross_entropy, sparse_epe
from matchme_jax.models.inputs import normalize_images
from matchme_jax.train.state import TrainState

# The training losses (`config.train.loss`): the official end-point error of the soft-argmax flow,
# or the cross-entropy of the soft-argmax distribution against the true source cell.
LOSSES = ("epe", "cross_entropy")


def make_train_forward(model, *, bn_train: bool, output: str = "flow") -> Callable:
    """`forward(params, batch_stats, source, target, dropout_rng=None) -> (out, batch_stats)`.

    The model in training mode on ImageNet-normalised images `[B, H, W, 3]`, giving what the loss
    compares: with `output="flow"` the flow `[B, h, w, 2]`, with `output="refined_corr"` the
    refined correlation `[B, S, T]` the flow is the soft-argmax of. With `bn_train` the backbone
    BatchNorm uses batch statistics and the returned `batch_stats` are the updated running
    statistics, as the official training does (even with a frozen backbone); otherwise they come
    back unchanged. `dropout_rng` feeds the model's dropout (CATs++'s affinity Dropout2d; CATs has
    none).
    """
    if output not in ("flow", "refined_corr"):
        raise ValueError(f"output={output!r}: use 'flow' or 'refined_corr'.")
    method = None if output == "flow" else "correspondence"  # None: the model's __call__

    def pick(out):
        return out if output == "flow" else out["refined_corr"]

    def forward(params, batch_stats, source, target, dropout_rng=None):
        variables = {"params": params, "batch_stats": batch_stats}
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        kwargs = dict(source=source, target=target, train=True, rngs=rngs, method=method)
        if not bn_train:
            return pick(model.apply(variables, **kwargs)), batch_stats
        out, updated = model.apply(variables, mutable=["batch_stats"], **kwargs)
        return pick(out), updated["batch_stats"]

    return forward


def make_update_fn(
    model,
    optimizer: optax.GradientTransformation,
    *,
    bn_train: bool,
    loss: str = "epe",
    loss_temperature: float | None = None,
) -> Callable:
    """`update(state, source, target, flow_gt, cell_weight, dropout_rng=None) -> (state, metrics)`.

    One optimizer step on ImageNet-normalised images `[B, H, W, 3]` against a sparse flow target
    `flow_gt: [B, h, w, 2]` with per-cell weights `[B, h, w]` (0 where a cell has no truth).
    `loss` (see `LOSSES`): "epe", the official end-point error of the `make_train_forward` flow,
    or "cross_entropy" of the model's soft-argmax distribution (`losses.cell_cross_entropy`), at
    `loss_temperature` (None: the model's soft-argmax temperature, `model.beta`).
    `metrics`: the scalars "loss" and "grad_norm".
    """
    if loss not in LOSSES:
        raise ValueError(f"config.train.loss={loss!r}: use one of {LOSSES}.")
    temperature = model.beta if loss_temperature is None else loss_temperature
    output = "flow" if loss == "epe" else "refined_corr"
    forward = make_train_forward(model, bn_train=bn_train, output=output)

    def loss_fn(params, batch_stats, source, target, flow_gt, cell_weight, dropout_rng):
        out, batch_stats = forward(params, batch_stats, source, target, dropout_rng)
        if loss == "epe":
            return sparse_epe(out, flow_gt, weight=cell_weight), batch_stats
        return cell_cross_entropy(out, flow_gt, cell_weight, temperature), batch_stats

    def update(state: TrainState, source, target, flow_gt, cell_weight, dropout_rng=None):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, batch_stats), grads = grad_fn(
            state.params, state.batch_stats, source, target, flow_gt, cell_weight, dropout_rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return update


class TrainStep:
    """`step(state, batch, rng, strength) -> (state, metrics)`, jitted once with the state donated.

    `batch` holds the device keys of a prepared batch (see matchme_jax/data/pipeline.py);
    `strength` is an `AugmentStrength`. `trace_count` counts how often JAX traced the step: it
    must stay at 1 for a whole self-training run.
    """

    def __init__(
        self,
        model,
        optimizer,
        model_cfg,
        dataset_cfg,
        *,
        receptive_field: int = 35,
        loss: str = "epe",
        loss_temperature: float | None = None,
    ):
        self._update = make_update_fn(
            model,
            optimizer,
            bn_train=model_cfg.bn_mode == "official",
            loss=loss,
            loss_temperature=loss_temperature,
        )
        self._feature_size = model_cfg.feature_size
        self._image_size = dataset_cfg.image_size
        self._receptive_field = receptive_field
        self.trace_count = 0
        self._jitted = jax.jit(self._step, donate_argnums=(0,))

    def _step(self, state: TrainState, batch, rng, strength: AugmentStrength):
        self.trace_count += 1  # runs only while tracing
        rng = jax.random.fold_in(rng, state.step)
        batch = augment_batch(rng, batch, strength)
        mask = batch["keypoint_mask"] & batch["valid"][:, None]
        flow_gt, _, cell_weight = keypoints_to_flow(
            batch["source_keypoints"],
            batch["target_keypoints"],
            mask,
            feature_size=self._feature_size,
            image_size=self._image_size,
            receptive_field=self._receptive_field,
            weight=batch["keypoint_weight"],
        )
        state, metrics = self._update(
            state,
            normalize_images(batch["source_image"]),
            normalize_images(batch["target_image"]),
            flow_gt,
            cell_weight,
            # Dropout draws from a stream of its own; the augmentation uses `rng` itself.
            dropout_rng=jax.random.fold_in(rng, 1),
        )
        metrics["keypoints"] = jnp.sum(mask)
        return state, metrics

    def __call__(self, state, batch, rng, strength):
        return self._jitted(state, batch, rng, strength)

    def lower(self, state, batch, rng, strength) -> jax.stages.Lowered:
        """The step lowered for these arguments (for its compiled cost analysis)."""
        return self._jitted.lower(state, batch, rng, strength)
