"""Shared helpers of the ``prepare_*.py`` scripts: read volumes, put them on one grid, save ImageGroup files.

Each prepared group is written as ``OUT/<group>.pt`` (``xreg_edu.io.load_group`` reads it) and, with ``--nifti``,
as ``OUT/<group>/<modality>.nii.gz`` (+ ``labels.nii.gz``), so ``xreg_edu.io.load_nifti_group`` reads it too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("input", type=Path, help="folder of the downloaded dataset")
    p.add_argument("output", type=Path, help="folder for the prepared groups")
    p.add_argument("--nifti", action="store_true", help="also write NIfTI files per group")
    p.add_argument("--limit", type=int, default=None, help="prepare at most this many groups")
    return p


def read(path: Path, label: bool = False):
    """(array, affine) of a NIfTI/MINC/Analyze/MetaImage file; MetaImage/.mha via SimpleITK."""
    if path.suffix in (".mha", ".mhd", ".nrrd"):
        import SimpleITK as sitk

        im = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(im).transpose(2, 1, 0)  # -> x, y, z like nibabel
        aff = np.eye(4)
        aff[:3, :3] = np.asarray(im.GetDirection()).reshape(3, 3) @ np.diag(im.GetSpacing())
        aff[:3, 3] = im.GetOrigin()
        aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # LPS -> RAS
    else:
        import nibabel as nib

        img = nib.load(str(path))
        arr, aff = np.asarray(img.dataobj), img.affine
    arr = np.squeeze(arr)
    return (np.rint(arr).astype(np.int64) if label else arr.astype(np.float32)), np.asarray(aff, float)


def resample_like(arr: np.ndarray, affine: np.ndarray, ref_shape, ref_affine, order: int = 1) -> np.ndarray:
    """Resample ``arr`` (voxel->world ``affine``) onto a reference grid using the world coordinates (no registration)."""
    from scipy import ndimage

    vox = np.linalg.inv(affine) @ ref_affine
    return ndimage.affine_transform(arr, vox[:3, :3], vox[:3, 3], output_shape=tuple(ref_shape), order=order,
                                    mode="constant", cval=0.0)


def remap(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Map label values through ``table`` (values not listed -> 0)."""
    lut = np.zeros(int(max(max(table), labels.max())) + 1, dtype=np.int64)
    for k, v in table.items():
        lut[k] = v
    return lut[labels]


def save(out: Path, group: str, images: dict[str, np.ndarray], affine: np.ndarray, labels: np.ndarray | None,
         label_names: dict[int, str] | None, meta: dict, nifti: bool = False) -> Path:
    """Write one co-gridded group (arrays in x, y, z order, like nibabel) as ``.pt`` (+ NIfTI).

    ``labels``: one map ``[*S]`` shared by all images, or one per image ``[N, *S]``.
    """
    from xreg_edu.group import ImageGroup
    from xreg_edu.io import save_group, save_nifti

    shape = next(iter(images.values())).shape
    for m, a in images.items():
        if a.shape != shape:
            raise ValueError(f"{group}/{m}: shape {a.shape} differs from {shape}; resample_like() it first")
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(0))[: len(shape)])
    names = [f"{group}/{m}" for m in images]
    imgs = torch.from_numpy(np.stack(list(images.values()))[:, None].astype(np.float32))
    if labels is not None and labels.shape == shape:  # one map shared by every image of the group
        labels = np.stack([labels] * len(images))
    lab = None if labels is None else torch.from_numpy(labels[:, None].astype(np.int64))
    g = ImageGroup(images=imgs, spacing=spacing, names=names, labels=lab, label_names=label_names,
                   affines=np.stack([affine] * len(images)), meta={**meta, "simulated": [False] * len(images)})
    out.mkdir(parents=True, exist_ok=True)
    path = save_group(g, out / f"{group}.pt")
    if nifti:
        for m, a in images.items():
            save_nifti(a, affine, out / group / f"{m}.nii.gz")
        if labels is not None:
            for m, lab_m in zip(images, labels):
                save_nifti(lab_m, affine, out / group / f"{m}_labels.nii.gz")
    print(f"wrote {path} ({len(images)} images {shape})")
    return path


def need(paths: list[Path], what: str) -> list[Path]:
    """Exit with a clear message when a dataset folder holds none of the expected files."""
    if not paths:
        sys.exit(f"error: found no {what}; check the input folder (see data_scripts/README.md)")
    return paths
