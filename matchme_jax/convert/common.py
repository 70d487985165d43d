"""What the checkpoint converters share: the Flax <-> PyTorch tensor layouts, and one message
listing every key a state dict lacks, holds in excess or holds mis-shaped."""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from typing import Any

import numpy as np


def to_flax(leaf: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A PyTorch tensor in the Flax layout of the leaf named `leaf` (conv OIHW -> HWIO, linear
    [out, in] -> [in, out], else reshaped to `shape`), float32."""
    value = np.asarray(value, np.float32)
    if leaf == "kernel" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value.reshape(shape)


def to_torch(leaf: str, value: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``to_flax``; keeps the dtype (a float64 run stays float64)."""
    value = np.asarray(value)
    if leaf == "kernel" and value.ndim == 4:  # HWIO -> OIHW
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if leaf == "kernel" and value.ndim == 2:  # [in, out] -> [out, in]
        return np.ascontiguousarray(value.T)
    return value.reshape(torch_shape)


def tree_leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """`tree[path[0]][path[1]]...`."""
    for name in path:
        tree = tree[name]
    return tree


def count_indexed(keys: list[str], pattern: str) -> int:
    """1 + the largest index `pattern`'s group 1 matches among `keys` (0 when none does)."""
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def key_problems(
    expected: Mapping[str, tuple[int, ...]],
    state_dict: Mapping[str, Any],
    *,
    required: Set[str] = frozenset(),
    optional: Set[str] = frozenset(),
) -> list[str]:
    """The missing, unexpected and mis-shaped keys of `state_dict`, one line per kind.

    Args:
        expected: {key: shape} of the tensors that become variables.
        state_dict: the checkpoint.
        required: keys that must be there but are dropped (unused by the model's output).
        optional: keys that may be there and are dropped.
    """
    missing = sorted((set(expected) | set(required)) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected) - set(required) - set(optional))
    wrong_shape = [
        f"{key}: {tuple(np.shape(state_dict[key]))}, expected {shape}"
        for key, shape in expected.items()
        if key in state_dict and tuple(np.shape(state_dict[key])) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if wrong_shape:
        problems.append(f"wrong shapes ({len(wrong_shape)}): " + "; ".join(wrong_shape))
    return problems
