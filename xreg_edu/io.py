"""NIfTI input/output through nibabel, and ImageGroup files (``.pt``) for prepared datasets.

``load_nifti_group`` keeps the array axes as tensor axes (no reorientation): spacing comes from the header zooms in
array-axis order and each image's affine maps its tensor index to world mm, so results can be written back with
``save_nifti(array, group.affines[j], path)``.
"""
from __future__ import annotations

import itertools
import math
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
        kind = img.get_data_dtype().kind
        if kind == "c" or img.get_data_dtype().names:
            raise UnreadableFileError(
                f"{path} holds {'complex' if kind == 'c' else 'RGB / structured'} voxels "
                f"({img.get_data_dtype()}); registration needs one real intensity per voxel: save the magnitude "
                f"(numpy.abs) or the channel you mean as a real-valued NIfTI")
        arr = np.asarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
    except UnreadableFileError:
        raise
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


def _corner_shift_mm(shape: tuple[int, ...], aff: np.ndarray, ref_aff: np.ndarray) -> float:
    """Largest distance (mm) between the world positions of the grid's corner voxels under two affines."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=float)
    homog = np.zeros((len(corners), 4))
    homog[:, : len(shape)] = corners
    homog[:, 3] = 1.0
    return float(np.linalg.norm((homog @ aff.T - homog @ ref_aff.T)[:, :3], axis=1).max())


def _resample_onto(arr: np.ndarray, aff: np.ndarray, shape: tuple[int, ...], ref_aff: np.ndarray,
                   order: int) -> np.ndarray:
    """nibabel resampling of ``arr`` (voxel-to-world ``aff``) onto the grid ``shape`` / ``ref_aff`` (zeros
    outside); 2-D arrays are treated as one-slice volumes."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    vol = arr[..., None] if arr.ndim == 2 else arr
    ref_shape = tuple(shape) + (1,) * (3 - len(shape))
    out = resample_from_to(nib.Nifti1Image(vol, aff), (ref_shape, ref_aff), order=order, mode="constant", cval=0.0)
    res = np.asarray(out.dataobj)
    return res.reshape(shape).astype(arr.dtype if order == 0 else np.float32)


def load_nifti_group(paths: Sequence[str | os.PathLike], *, labels: Sequence[str | os.PathLike] | None = None,
                     names: Sequence[str] | None = None, device="cpu", dtype=torch.float32, resample: bool = False):
    """Read N >= 2 co-gridded NIfTI images into an :class:`~xreg_edu.group.ImageGroup`.

    Args:
        paths: N image files (``.nii``, ``.nii.gz``, Analyze ``.hdr``); all must share shape, spacing and affine
            (the grid corners within 1 % of a voxel in world space).
        labels: optional N label files on the same grids (read as int64).
        names: optional N display names (default: the file names without extension).
        device: torch device of the returned tensors.
        dtype: floating dtype of ``images`` (default float32).
        resample: resample every image whose shape, spacing or affine differs onto the first image's grid
            (``nibabel.processing.resample_from_to``: linear for images, nearest for labels, 0 outside) instead
            of refusing it. The group then carries the first image's affine for every image.
    Returns:
        ImageGroup with images ``[N, 1, X, Y]`` (3rd axis of size 1 -> 2-D) or ``[N, 1, X, Y, Z]`` in array-axis
        order, spacing = header zooms (mm), affines ``[N, 4, 4]`` from the headers, meta ``{"paths": [...]}``.
    Raises:
        MissingFileError, UnreadableFileError: a path is absent / not an image (the path is in the message).
        GroupMismatchError: N < 2, differing shapes, dimensionality, spacing or affine (without ``resample``),
            non-finite voxels.
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
    ref, ref_aff = arrays[0], affines[0]
    fix = "Resample all images onto one grid first (pass resample=True, or --resample on the command line)"
    moved = []
    for j, (p, a, z, aff) in enumerate(zip(paths, arrays, zooms, affines)):
        if a.ndim != ref.ndim:
            raise GroupMismatchError(f"images differ in dimensionality: {paths[0]} is {ref.shape}, {p} is "
                                     f"{a.shape}; a group is all 2-D or all 3-D")
        shift = _corner_shift_mm(a.shape, aff, ref_aff) if a.shape == ref.shape else math.inf
        same = shift <= 0.01 * min(zooms[0]) and np.allclose(z, zooms[0], rtol=1e-3, atol=1e-4)
        if same:
            continue
        if resample:
            moved.append(j)
        elif a.shape != ref.shape:
            raise GroupMismatchError(f"images differ in shape: {paths[0]} is {ref.shape}, {p} is {a.shape}. {fix}.")
        elif not np.allclose(z, zooms[0], rtol=1e-3, atol=1e-4):
            raise GroupMismatchError(f"voxel spacing differs: {paths[0]} has {zooms[0]} mm, {p} has {z} mm. {fix}.")
        else:
            raise GroupMismatchError(
                f"{p} has the grid of {paths[0]} but a different affine (voxel-to-world matrix): their grid corners "
                f"lie up to {shift:.3g} mm apart in world space (a shift or rotation between the scans), so voxel "
                f"(i, j, k) is not the same place in both. {fix}.")
    for j in moved:
        arrays[j] = _resample_onto(arrays[j], affines[j], ref.shape, ref_aff, order=1)
    images = torch.from_numpy(np.stack(arrays)[:, None]).to(device=device, dtype=dtype)
    lab = None
    if labels is not None:
        larr = []
        for j, p in enumerate(labels):
            a, _, aff = _read(Path(p), label=True)
            if j in moved:
                a = _resample_onto(a, aff, ref.shape, ref_aff, order=0)
            elif a.shape != ref.shape:
                raise GroupMismatchError(f"label map {p} has shape {a.shape}, images have {ref.shape}")
            larr.append(np.rint(a).astype(np.int64))
        lab = torch.from_numpy(np.stack(larr)[:, None]).to(device)
    meta = {"paths": [str(p) for p in paths]}
    if moved:
        meta["resampled"] = [str(paths[j]) for j in moved]
        affines = [ref_aff] * len(paths)
    return ImageGroup(images=images, spacing=zooms[0], names=list(names) if names else [_stem(p) for p in paths],
                      labels=lab, affines=np.stack(affines), meta=meta)


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
