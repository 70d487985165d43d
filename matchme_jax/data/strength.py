"""How strongly to augment: one `AugmentStrength` of float32 scalars per role.

Teacher and student run the same compiled augmentation; only these values differ. Presets:
"none", "weak" (the official CATs set) and "strong" (the student's, ours).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

_PROBABILITIES = ("photometric_p", "crop_p", "affine_p", "tps_p")

_PRESETS: dict[str, dict[str, float]] = {
    "none": dict(
        photometric_p=0.0,
        photometric_magnitude=0.0,
        crop_p=0.0,
        affine_p=0.0,
        rotation_deg=0.0,
        scale=0.0,
        shear_deg=0.0,
        translate=0.0,
        tps_p=0.0,
        tps_magnitude=0.0,
    ),
    # The official CATs training augmentation (CATs commit d01785a, `data/dataset.py`).
    "weak": dict(
        photometric_p=0.2,
        photometric_magnitude=1.0,
        crop_p=0.5,
        affine_p=0.0,
        rotation_deg=0.0,
        scale=0.0,
        shear_deg=0.0,
        translate=0.0,
        tps_p=0.0,
        tps_magnitude=0.0,
    ),
    # The student's. MatchMe gives no values; these are ours: stronger photometric ops, and warps
    # mild enough that almost every keypoint stays on the canvas.
    "strong": dict(
        photometric_p=0.4,
        photometric_magnitude=1.5,
        crop_p=0.5,
        affine_p=0.5,
        rotation_deg=15.0,
        scale=0.15,
        shear_deg=8.0,
        translate=0.05,
        tps_p=0.5,
        tps_magnitude=0.04,
    ),
}


@struct.dataclass
class AugmentStrength:
    """How strongly to augment; every field is a float32 scalar so that strengths share one trace.

    Build with `none()`, `weak()`, `strong()`, `create()` or `from_config()`, which convert the
    values to float32 arrays (plain Python floats would trace differently).

    Attributes:
        photometric_p: probability of each photometric op, drawn independently per op.
        photometric_magnitude: scales every photometric range; 1.0 is the official albumentations
            default ranges.
        crop_p: probability of the official box-preserving random crop.
        affine_p: probability of a random affine warp.
        rotation_deg: rotation drawn from U(-rotation_deg, rotation_deg).
        scale: zoom factor exp(U(-scale, scale)) (a log range).
        shear_deg: horizontal shear angle drawn from U(-shear_deg, shear_deg).
        translate: shift per axis drawn from U(-translate, translate) times the canvas side.
        tps_p: probability of a thin-plate-spline warp.
        tps_magnitude: control-point displacement drawn from U(-m, m) times the canvas side.
    """

    photometric_p: jax.Array
    photometric_magnitude: jax.Array
    crop_p: jax.Array
    affine_p: jax.Array
    rotation_deg: jax.Array
    scale: jax.Array
    shear_deg: jax.Array
    translate: jax.Array
    tps_p: jax.Array
    tps_magnitude: jax.Array

    @classmethod
    def create(cls, preset: str = "none", **overrides: float) -> AugmentStrength:
        """A preset's values with some fields overridden (host side: values must be concrete).

        Args:
            preset: "none", "weak" or "strong".
            **overrides: field name -> value.
        """
        if preset not in _PRESETS:
            raise ValueError(
                f"Unknown augmentation preset {preset!r}; use one of {sorted(_PRESETS)}."
            )
        unknown = sorted(set(overrides) - set(_PRESETS[preset]))
        if unknown:
            raise ValueError(
                f"Unknown augmentation field(s) {unknown}; the fields are {list(_PRESETS['none'])}."
            )
        values = {**_PRESETS[preset], **overrides}
        for name, value in values.items():
            _check_field(name, float(value))
        return cls(**{name: jnp.asarray(value, jnp.float32) for name, value in values.items()})

    @classmethod
    def none(cls) -> AugmentStrength:
        """No augmentation: the identity (evaluation, tests)."""
        return cls.create("none")

    @classmethod
    def weak(cls) -> AugmentStrength:
        """The official CATs set: photometric ops at p=0.2 each, box-preserving crop at p=0.5."""
        return cls.create("weak")

    @classmethod
    def strong(cls) -> AugmentStrength:
        """The student's: stronger photometric ops, the crop, random affine and spline warps."""
        return cls.create("strong")

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict | str) -> AugmentStrength:
        """A strength from a config entry.

        Args:
            cfg: a preset name ("weak"), or a ConfigDict with an optional `preset` field plus any
                fields of this class; without `preset`, it must give every field.
        """
        if isinstance(cfg, str):
            return cls.create(cfg)
        values = dict(cfg.to_dict())
        preset = values.pop("preset", None)
        if preset is None:
            missing = sorted(set(_PRESETS["none"]) - set(values))
            if missing:
                raise ValueError(
                    f"Augmentation config lacks {missing}; give every field or a `preset` "
                    f"(one of {sorted(_PRESETS)}) to start from."
                )
            preset = "none"
        return cls.create(preset, **values)


def _check_field(name: str, value: float) -> None:
    """Raises a ValueError naming the field when its value is out of range."""
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(f"Augmentation field {name}={value} must be a finite number >= 0.")
    if name in _PROBABILITIES and value > 1.0:
        raise ValueError(f"Augmentation field {name}={value} is a probability; use [0, 1].")
    if name == "shear_deg" and value >= 90.0:
        raise ValueError(f"Augmentation field shear_deg={value} must be below 90 degrees.")


def symmetric_uniform(key: jax.Array, limit: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """U(-limit, limit): a random parameter drawn within a strength's limit."""
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) * limit
