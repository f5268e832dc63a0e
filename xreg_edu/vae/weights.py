"""Committed network weights: ``<name>.pt`` plus ``<name>.json`` (how they were made), checked before loading.

:func:`save_weights` writes both files atomically (never a partial file under its final name); the JSON records the
sha256 and size of the ``.pt``, the exact command, the configuration and the held-out numbers. :func:`load_weights`
checks the JSON and the sha256 *before* ``torch.load(weights_only=True)``, so a corrupted, truncated, empty or
foreign file is a clear error naming the file and the fix, never silently wrong weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .._files import atomic_path, file_sha256

#: keys every weights JSON must hold
REQUIRED_META = ("sha256", "bytes", "command", "config")


def meta_path(path: str | os.PathLike) -> Path:
    """``foo.pt`` -> ``foo.json``."""
    return Path(path).with_suffix(".json")


def save_weights(state_dict: dict, path: str | os.PathLike, meta: dict) -> Path:
    """Write ``path`` (``torch.save`` of ``state_dict``) and its ``.json`` sidecar, both atomically.

    Args:
        state_dict: tensors (and plain containers) to save; tensors are detached and moved to CPU.
        path: destination ``<name>.pt``.
        meta: JSON-serialisable record; must hold ``command`` (exact command line) and ``config``; ``sha256`` and
            ``bytes`` are filled in here. Add the held-out numbers (e.g. ``"held_out": {...}``).

    Returns:
        the ``.pt`` path.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"weights path must end in .pt, got {path}")
    missing = [k for k in ("command", "config") if k not in meta]
    if missing:
        raise ValueError(f"meta must hold {missing} (the exact command and the configuration of {path.name})")
    state = torch.utils._pytree.tree_map(lambda v: v.detach().cpu() if torch.is_tensor(v) else v, state_dict)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)
        digest, size = file_sha256(tmp), os.path.getsize(tmp)
        record = {"file": path.name, **meta, "sha256": digest, "bytes": size}
        text = json.dumps(record, indent=1)  # fails before the .pt is renamed if meta is not JSON-able
        with atomic_path(meta_path(path)) as jtmp:
            Path(jtmp).write_text(text + "\n")
            os.chmod(jtmp, 0o644)
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON sidecar of ``path``, checked for the required keys."""
    path = Path(path)
    mp = meta_path(path)
    if not mp.exists():
        raise FileNotFoundError(f"weights {path} have no sidecar {mp.name}: it records the sha256 that loading "
                                f"checks; re-create both with xreg_edu.vae.weights.save_weights")
    try:
        meta = json.loads(mp.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{mp} is not valid JSON ({err}); restore it from git (git checkout -- {mp})") from err
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_META):
        raise ValueError(f"{mp} must be a JSON object with keys {list(REQUIRED_META)}; restore it from git or "
                         f"re-create it with save_weights")
    return meta


def load_weights(path: str | os.PathLike, map_location="cpu") -> tuple[dict, dict]:
    """Verify and load weights written by :func:`save_weights`.

    Args:
        path: ``<name>.pt`` (its ``<name>.json`` must be beside it).
        map_location: passed to ``torch.load``.

    Returns:
        ``(state_dict, meta)``.

    Raises:
        FileNotFoundError: missing ``.pt`` or ``.json``.
        ValueError: size or sha256 differ from the JSON (corrupted, truncated, replaced file), or unreadable JSON.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    meta = read_meta(path)
    size = path.stat().st_size
    fix = (f"the file is corrupted or was replaced; restore it (git checkout -- {path}, or git lfs pull) or "
           f"retrain it with the command in {meta_path(path).name}: {meta.get('command')}")
    if size != int(meta["bytes"]):
        raise ValueError(f"weights {path} have {size} bytes but {meta_path(path).name} records {meta['bytes']} "
                         f"(truncated or empty?): {fix}")
    digest = file_sha256(path)
    if digest != meta["sha256"]:
        raise ValueError(f"sha256 of weights {path} is {digest[:16]}…, {meta_path(path).name} records "
                         f"{str(meta['sha256'])[:16]}…: {fix}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    return state, meta
