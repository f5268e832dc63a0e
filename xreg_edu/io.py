"""NIfTI input/output through nibabel, and ImageGroup files (``.pt``) for prepared datasets.

``load_nifti_group`` keeps the array axes as tensor axes (no reorientation): spacing comes from the header zooms in
array-axis order and each image's affine maps its tensor index to world mm, so results can be written back with
``save_nifti(array, group.affines[j], path)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ._files import atomic_path
from .datasets.errors import GroupMismatchError, MissingFileError, UnreadableFileError

__all__ = ["load_nifti_group", "save_nifti", "save_group", "load_group"]


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".img", ".hdr", ".mgz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _read(path: Path, label: bool):
    import nibabel as nib

    if not path.exists():
        raise MissingFileError(f"no such file: {path}. Check the path (or fetch the data first).")
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise UnreadableFileError(f"cannot read {path} as a NIfTI/Analyze image: {type(err).__name__}: {err}") from err
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise GroupMismatchError(f"{path}: expected a 2-D or 3-D image, got array shape {arr.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: arr.ndim])
    return arr, zooms, np.asarray(img.affine, dtype=float)


def load_nifti_group(paths: Sequence[str | os.PathLike], *, labels: Sequence[str | os.PathLike] | None = None,
                     names: Sequence[str] | None = None, device="cpu", dtype=torch.float32):
    """Read N >= 2 co-gridded NIfTI images into an :class:`~xreg_edu.group.ImageGroup`.

    Args:
        paths: N image files (``.nii``, ``.nii.gz``, Analyze ``.hdr``); all must share shape and spacing.
        labels: optional N label files on the same grids (read as int64).
        names: optional N display names (default: the file names without extension).
        device: torch device of the returned tensors.
        dtype: floating dtype of ``images`` (default float32).
    Returns:
        ImageGroup with images ``[N, 1, X, Y]`` (3rd axis of size 1 -> 2-D) or ``[N, 1, X, Y, Z]`` in array-axis
        order, spacing = header zooms (mm), affines ``[N, 4, 4]`` from the headers, meta ``{"paths": [...]}``.
    Raises:
        MissingFileError, UnreadableFileError: a path is absent / not an image (the path is in the message).
        GroupMismatchError: N < 2, differing shapes, dimensionality or spacing (resample first), non-finite voxels.
    """
    from .group import ImageGroup

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if len(paths) < 2:
        raise GroupMismatchError(f"a group needs N >= 2 images, got {len(paths)}: {[str(p) for p in paths]}")
    if labels is not None and len(labels) != len(paths):
        raise GroupMismatchError(f"{len(labels)} label files for {len(paths)} images")
    if names is not None and len(names) != len(paths):
        raise GroupMismatchError(f"{len(names)} names for {len(paths)} images")
    arrays, zooms, affines = [], [], []
    for p in paths:
        a, z, aff = _read(p, label=False)
        if not np.isfinite(a).all():
            raise GroupMismatchError(f"{p} contains {int((~np.isfinite(a)).sum())} non-finite voxel(s) (NaN/Inf)")
        arrays.append(a)
        zooms.append(z)
        affines.append(aff)
    ref = arrays[0]
    for p, a, z in zip(paths, arrays, zooms):
        if a.shape != ref.shape:
            raise GroupMismatchError(
                f"images differ in {'dimensionality' if a.ndim != ref.ndim else 'shape'}: {paths[0]} is "
                f"{ref.shape}, {p} is {a.shape}. Resample all images onto one grid first (e.g. with "
                f"data_scripts/_prepare_common.resample_like or nibabel.processing.resample_from_to).")
        if not np.allclose(z, zooms[0], rtol=1e-3, atol=1e-4):
            raise GroupMismatchError(f"voxel spacing differs: {paths[0]} has {zooms[0]} mm, {p} has {z} mm. "
                                     f"Resample all images onto one grid first.")
    images = torch.from_numpy(np.stack(arrays)[:, None]).to(device=device, dtype=dtype)
    lab = None
    if labels is not None:
        larr = []
        for p in labels:
            a, _, _ = _read(Path(p), label=True)
            if a.shape != ref.shape:
                raise GroupMismatchError(f"label map {p} has shape {a.shape}, images have {ref.shape}")
            larr.append(np.rint(a).astype(np.int64))
        lab = torch.from_numpy(np.stack(larr)[:, None]).to(device)
    return ImageGroup(images=images, spacing=zooms[0], names=list(names) if names else [_stem(p) for p in paths],
                      labels=lab, affines=np.stack(affines), meta={"paths": [str(p) for p in paths]})


def save_nifti(image, affine, path: str | os.PathLike) -> Path:
    """Write one image as NIfTI atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        image: array or tensor ``[*S]``, ``[1, *S]`` or ``[1, 1, *S]`` (2-D or 3-D); floats are written as float32,
            integers/bools as int32/uint8.
        affine: ``[4, 4]`` voxel-to-world matrix (None -> identity).
        path: destination ending in ``.nii`` or ``.nii.gz``.
    """
    import nibabel as nib

    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"save_nifti writes .nii or .nii.gz files, got {path}")
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D or 3-D (after dropping leading size-1 axes), got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int32)
    else:
        arr = arr.astype(np.float32)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(arr, affine), tmp)
    return path


def save_group(group, path: str | os.PathLike) -> Path:
    """Save an ImageGroup as a ``.pt`` file (atomic), readable with :func:`load_group`."""
    path = Path(path)
    payload = {"images": group.images.cpu(), "spacing": tuple(group.spacing), "names": list(group.names),
               "labels": None if group.labels is None else group.labels.cpu(), "label_names": group.label_names,
               "affines": None if group.affines is None else torch.as_tensor(np.asarray(group.affines, float)),
               "meta": {k: v for k, v in group.meta.items() if not isinstance(v, torch.Tensor)}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_group(path: str | os.PathLike, *, device="cpu"):
    """Read a ``.pt`` file written by :func:`save_group` (or the ``data_scripts/prepare_*.py`` scripts)."""
    from .group import ImageGroup

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such file: {path}")
    try:  # weights_only: plain tensors and containers, never arbitrary pickled code
        d = torch.load(path, map_location="cpu", weights_only=True)
        affines = None if d["affines"] is None else d["affines"].numpy()
        return ImageGroup(images=d["images"].float(), spacing=d["spacing"], names=d["names"], labels=d["labels"],
                          label_names=d["label_names"], affines=affines, meta=d["meta"]).to(device)
    except Exception as err:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise UnreadableFileError(f"{path} is not an ImageGroup file: {type(err).__name__}: {err}") from err
