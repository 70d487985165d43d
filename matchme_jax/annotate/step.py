"""The machine annotator's jitted step: the teacher's flow and confidence on a batch of pairs.

It imports no input pipeline: the benchmark (`matchme_jax.bench`) times it on machines that have
JAX but not grain or TFDS.
"""

from collections.abc import Callable

import jax

from matchme_jax.models.inputs import normalize_uint8


def make_annotate_step(model, *, consistency: bool = False) -> Callable:
    """`annotate_step(variables, batch) -> dict`, jitted.

    `batch` holds `source_image` and `target_image`, [B, H, W, 3] uint8. The dict holds "flow"
    [B, h, w, 2] (target grid -> source) and "confidence" [B, h, w]; with `consistency`, also
    "backward_flow" [B, h, w, 2], the flow of the swapped pair (source grid -> target).
    """

    def correspondence(variables, source, target):
        return model.apply(
            variables, source=source, target=target, train=False, method="correspondence"
        )

    def annotate_step(variables, batch):
        source = normalize_uint8(batch["source_image"])
        target = normalize_uint8(batch["target_image"])
        forward = correspondence(variables, source, target)
        out = {"flow": forward["flow"], "confidence": forward["confidence"]}
        if consistency:
            out["backward_flow"] = correspondence(variables, target, source)["flow"]
        return out

    return jax.jit(annotate_step)
