"""Reading a checkpoint file (.npz, .safetensors, .pth/.pt) into ``{torch key: numpy array}``."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from matchme_jax import errors


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a checkpoint file into ``{torch key: numpy array}``.

    ``.npz`` and ``.safetensors`` need no torch; ``.pth``/``.pt`` need torch installed. A
    checkpoint dict that wraps the weights under ``"state_dict"`` is unwrapped, and the
    ``module.`` prefix of ``nn.DataParallel`` is removed.

    Args:
        path: the file.

    Returns:
        The state dict.

    Raises:
        FileNotFoundError: no such file (an ``errors.MissingFileError``).
        ValueError: an unsupported extension, a damaged or cut-short file, a .pth that needs
            full unpickling, no tensors (each an ``errors.UserError`` naming the file).
        ImportError: a ``.pth`` file without torch installed (``errors.MissingPackageError``).
    """
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(f"checkpoint file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors", ".pth", ".pt"):
        raise errors.UserError(
            f"{path}: unsupported checkpoint extension {suffix!r}; use .npz, .safetensors, "
            ".pth or .pt"
        )
    try:
        raw = _read_checkpoint_file(path, suffix)
    except errors.UserError:
        raise
    except Exception as e:  # numpy, zipfile, safetensors and torch each raise their own kinds
        raise errors.UserError(
            f"{path} is not a readable {suffix} checkpoint, it is damaged or cut short "
            f"({errors.gist(e)}); download or save it again."
        ) from e
    return _unwrap_state_dict(raw, path)


def _read_checkpoint_file(path: Path, suffix: str) -> Mapping[str, Any]:
    """{key: array} of a .npz, .safetensors or .pth/.pt file, as its library reads it."""
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):  # numpy would speak of pickles and allow_pickle
            raise zipfile.BadZipFile("not a zip archive, as every .npz file is")
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    return _load_torch_file(path)


def _load_torch_file(path: Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError as err:
        raise errors.MissingPackageError(
            f"reading {path} needs torch (pip install torch); or save the state dict as .npz "
            "or .safetensors where torch is installed"
        ) from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise errors.UserError(
            f"{path}: torch.load(weights_only=True) refused it ({errors.gist(err)}). If you "
            "trust the file, save its state dict alone: torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'clean.pth')"
        ) from err
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    # A state dict holds only tensors; bfloat16 has no numpy dtype, hence .float().
    return {
        k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        for k, v in checkpoint.items()
        if isinstance(v, torch.Tensor)
    }


def _unwrap_state_dict(raw: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    if isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    state_dict = {k.removeprefix("module."): np.asarray(v) for k, v in raw.items()}
    if not state_dict:
        raise errors.UserError(f"{path}: no tensors found")
    if len(state_dict) != len(raw):
        raise errors.UserError(f"{path}: keys collide once the 'module.' prefix is removed")
    return state_dict
