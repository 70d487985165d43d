"""Seeded synthetic weights for the official-model parity fixtures (recipe version 1).

The parity fixtures store only a parameter spec (ordered torch keys and shapes) and a seed; the
weights themselves are regenerated bit for bit from those two with numpy alone. This module is our
implementation of that recipe, so that tests can rebuild the weights without the shared fixture
folder:

* each key has its own stream, ``default_rng(SeedSequence([seed, *w]))`` where ``w`` are the eight
  little-endian uint32 words of ``sha256(key)``;
* draws are ``standard_normal(shape)`` (float64), scaled in float64, rounded once to float32;
* the value depends on the key's last component and the shape, first matching rule:
  ``x_normal``/``y_normal`` -> ``linspace(-1, 1, n)``; ``*pos_embed*`` -> ``0.02 z``;
  ``gamma`` (a LayerScale, DINOv2 ``blocks.<i>.ls1.gamma``) -> ``0.1 * (1 + 0.1 z)``;
  ndim >= 2 -> ``g * sqrt(2 / fan_in) * z`` with ``fan_in = prod(shape[1:])``;
  1-D ``weight`` -> ``g * (1 + 0.1 z)``; 1-D ``bias`` next to a 1-D ``weight`` (a norm layer)
  -> ``g * 0.1 z``; any other 1-D ``bias`` -> ``0.01 z``;
* the gain ``g`` is 1 except for the keys matched by ``GAINS`` (first match wins).

BatchNorm buffers are not generated: they come from a calibration run and are stored in fixtures.
A fixture stores the spec as ``meta/spec_keys`` (strings) and ``meta/spec_shapes`` (a JSON list),
the seed as ``meta/seed``, the digest as ``meta/params_sha256`` and the buffers as ``bn/<key>``;
``fixture_state_dict`` turns such a file into the complete PyTorch state dict.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Spec = list[tuple[str, tuple[int, ...]]]

# (regex searched in the full torch key, gain); the first match wins.
GAINS: tuple[tuple[str, float], ...] = (
    # Last conv of each ResNet bottleneck and its BN affine: keeps the residual stream bounded.
    (r"(^|\.)layer\d+\.\d+\.(conv3|bn3)\.(weight|bias)$", 0.2),
    # CATs aggregator output projection, which writes the refined correlation.
    (r"^decoder\.proj\.weight$", 0.08),
    # CATs++ modules that write into the 4-D correlation stream.
    (r"^hpn_learner\.early_conv\.\d+\.conv4d\.\d+\.1\.(weight|bias)$", 0.05),
    (r"^hpn_learner\.transformers\.\d+\.layer\.\d+\.v\.1\.(weight|bias)$", 0.05),
    (
        r"^hpn_learner\.transformers\.\d+\.layer\.\d+\.mlp\.mlp\.2\."
        r"(query_conv|supp_conv)\.weight$",
        0.05,
    ),
)

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def key_rng(seed: int, key: str) -> np.random.Generator:
    """The random stream of one parameter: seeded by the seed and the sha256 of its key."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    words = [int(w) for w in np.frombuffer(digest, dtype="<u4")]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def key_gain(key: str) -> float:
    """Gain of a key: the first matching entry of ``GAINS``, else 1."""
    for pattern, gain in GAINS:
        if re.search(pattern, key):
            return gain
    return 1.0


def _is_norm_bias(key: str, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    weight_shape = shapes.get(key.removesuffix("bias") + "weight")
    return weight_shape is not None and len(weight_shape) == 1


def make_param(
    key: str, shape: Sequence[int], seed: int, shapes: Mapping[str, tuple[int, ...]]
) -> np.ndarray:
    """One parameter of the spec, float32 in the PyTorch layout.

    Args:
        key: torch state-dict key.
        shape: its shape.
        seed: the fixture's weight seed.
        shapes: every key of the spec -> shape; tells a norm-layer bias from a linear bias.

    Returns:
        The parameter, float32.
    """
    shape = tuple(int(s) for s in shape)
    last = key.rsplit(".", 1)[-1]
    if last in _BN_BUFFERS:
        raise ValueError(f"{key} is a BatchNorm buffer; take it from the fixture's bn/ entries")
    if last in ("x_normal", "y_normal"):
        return np.linspace(-1.0, 1.0, shape[0]).astype(np.float32)
    z = key_rng(seed, key).standard_normal(shape)
    gain = key_gain(key)
    if "pos_embed" in last:
        value = 0.02 * z
    elif last == "gamma":
        # The DINOv2 fixtures' rule for LayerScale, drawn from the key's own stream like the rest.
        value = 0.1 * (1.0 + 0.1 * z)
    elif len(shape) >= 2:
        value = gain * np.sqrt(2.0 / int(np.prod(shape[1:]))) * z
    elif len(shape) == 1 and last == "weight":
        value = gain * (1.0 + 0.1 * z)
    elif len(shape) == 1 and last == "bias":
        value = gain * 0.1 * z if _is_norm_bias(key, shapes) else 0.01 * z
    else:
        raise ValueError(f"no weight rule for {key} with shape {shape}")
    return value.astype(np.float32)


def make_state_dict(spec: Iterable[tuple[str, Sequence[int]]], seed: int) -> dict[str, np.ndarray]:
    """Every parameter of a spec.

    Args:
        spec: ordered ``(torch key, shape)`` pairs.
        seed: the fixture's weight seed.

    Returns:
        ``{torch key: float32 array}`` in spec order, PyTorch layouts.
    """
    spec = [(str(k), tuple(int(s) for s in shape)) for k, shape in spec]
    shapes = dict(spec)
    if len(shapes) != len(spec):
        raise ValueError("the spec names a key twice")
    return {k: make_param(k, shape, seed, shapes) for k, shape in spec}


def params_digest(
    params: Mapping[str, np.ndarray], spec: Iterable[tuple[str, Sequence[int]]]
) -> str:
    """sha256 over each key (utf-8) and its little-endian float32 bytes, in spec order."""
    digest = hashlib.sha256()
    for key, _ in spec:
        digest.update(str(key).encode("utf-8"))
        digest.update(np.ascontiguousarray(params[key], dtype="<f4").tobytes())
    return digest.hexdigest()


def load_spec(fixture: Mapping[str, np.ndarray]) -> Spec:
    """The ordered ``(torch key, shape)`` spec stored in a fixture (an ``np.load`` result)."""
    keys = [str(k) for k in fixture["meta/spec_keys"]]
    shapes = json.loads(str(fixture["meta/spec_shapes"]))
    return [(k, tuple(int(s) for s in shape)) for k, shape in zip(keys, shapes, strict=True)]


def fixture_state_dict(fixture: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Complete PyTorch state dict of a fixture: regenerated parameters plus its BN buffers.

    Raises:
        RuntimeError: the regenerated parameters do not match ``meta/params_sha256`` (numpy
            may have changed its random stream).
    """
    spec = load_spec(fixture)
    state_dict = make_state_dict(spec, int(fixture["meta/seed"]))
    got, want = params_digest(state_dict, spec), str(fixture["meta/params_sha256"])
    if got != want:
        raise RuntimeError(
            f"regenerated weights differ from the fixture (sha256 {got[:12]} != {want[:12]}); "
            f"numpy {np.__version__} may draw a different random stream than numpy 2.4.6"
        )
    for name in fixture:
        if name.startswith("bn/"):
            state_dict[name.removeprefix("bn/")] = np.asarray(fixture[name])
    return state_dict
