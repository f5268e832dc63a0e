"""Loaders: registered files -> :class:`xreg_edu.group.ImageGroup` (teaching-size 2-D groups or full 3-D groups).

Pipeline (the same for every dataset):

1. read one subject's co-gridded volumes in *tensor order* ``[D, H, W]`` (slices, rows, columns; 2-D sources are
   one slice), with spacing in mm per axis and a voxel-to-world affine;
2. region of interest: the bounding box of the foreground (intensity above 5 % of the 99th percentile, union over
   the group's images) or of the label maps plus a margin (cardiac: 25 mm around the heart);
3. resample with ``scipy.ndimage`` to a square in-plane field of view (FOV) of ``size x size`` pixels, so
   ``spacing = FOV / size`` mm (Gaussian anti-aliasing before down-sampling; labels by nearest neighbour);
   3-D groups keep the slice axis at ``max(native slice spacing, in-plane spacing)``. ``size=None`` keeps the
   native in-plane spacing (crop only);
4. intensity normalisation (``normalize=True``): robust percentiles (0.5 % and 99.5 % of the foreground) to [0, 1].

Subjects that share one space (same grid, e.g. MNI-registered brains) share one crop, so their alignment is kept;
subjects with different grids (cardiac cases) are each centred on their own ROI, at a common spacing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .fetch import fetch_file
from .registry import ASEG_TISSUE, get_spec

__all__ = ["load_dataset", "list_datasets"]


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    from .registry import dataset_names

    return dataset_names()


# --------------------------------------------------------------------------------------------------- readers
@dataclass
class _Subject:
    """One subject's co-gridded arrays in tensor order [D, H, W]."""

    name: str
    images: dict[str, np.ndarray]
    spacing: tuple[float, float, float]
    affine: np.ndarray  # tensor index (d, h, w) -> world mm
    labels: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more label-like maps (nearest resampling)


def _file(dataset: str, rel: str) -> Path:
    for rf in get_spec(dataset).files:
        if rf.path == rel:
            return fetch_file(rf)
    raise KeyError(f"{rel} is not registered under {dataset}")  # programming error


def _nib_tensor_order(path: Path, *, canonical: bool, label: bool = False):
    """NIfTI/Analyze -> (array [D,H,W], spacing, affine). canonical: reorient to RAS and show anterior at the top."""
    import nibabel as nib

    img = nib.load(str(path))
    if img.get_data_dtype().kind == "c":
        from .errors import UnreadableFileError

        raise UnreadableFileError(f"{path} holds complex voxels ({img.get_data_dtype()}); the loaders need real "
                                  f"intensities (save the magnitude, numpy.abs, as a real-valued NIfTI)")
    arr = np.asarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    aff = img.affine.copy()
    zooms = np.abs(np.asarray(img.header.get_zooms()[:3], dtype=float))
    if canonical:
        ornt = nib.orientations.io_orientation(aff)
        arr = nib.orientations.apply_orientation(arr, ornt)
        aff = aff @ nib.orientations.inv_ornt_aff(ornt, img.shape[:3])
        zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
        ny = arr.shape[1]
        vol = arr.transpose(2, 1, 0)[:, ::-1, :]
        perm = np.array([[0, 0, 1, 0], [0, -1, 0, ny - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    else:
        vol = arr.transpose(2, 1, 0)
        perm = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return np.ascontiguousarray(vol), spacing, aff @ perm


# BrainWeb-style relative class intensities used for the simulated contrasts.
_SIM = {  # contrast: (CSF, GM, WM)
    "T2": (1.0, 0.6, 0.42),
    "PD": (1.0, 0.85, 0.7),
}
# BrainWeb classes 0..9: background, CSF, GM, WM, fat, muscle/skin, skin, skull, glial matter, connective
_BRAINWEB_SIM = {
    "T1": (0.0, 0.15, 0.55, 0.8, 0.95, 0.45, 0.6, 0.1, 0.7, 0.5),
    "T2": (0.0, 1.0, 0.6, 0.42, 0.35, 0.25, 0.5, 0.05, 0.65, 0.4),
    "PD": (0.0, 1.0, 0.85, 0.7, 0.9, 0.55, 0.7, 0.15, 0.8, 0.6),
}


@functools.lru_cache(maxsize=2)
def _icbm152(skull_strip: bool) -> _Subject:
    from scipy import ndimage

    vols = {}
    for key in ("t1", "gm", "wm"):
        path = _file("icbm152", f"icbm152/mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz")
        vols[key], spacing, affine = _nib_tensor_order(path, canonical=True)
        vols[key] = vols[key] / 255.0
    gm, wm = vols["gm"], vols["wm"]
    tissue = gm + wm > 0.1
    (z0, z1), (y0, y1), (x0, x1) = _bbox(tissue, 1)
    box = (slice(max(z0 - 3, 0), z1 + 4), slice(max(y0 - 3, 0), y1 + 4), slice(max(x0 - 3, 0), x1 + 4))
    brain = np.zeros_like(tissue)
    brain[box] = ndimage.binary_fill_holes(ndimage.binary_closing(tissue[box], iterations=2))
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    gm, wm = gm * brain, wm * brain
    t1 = vols["t1"] * brain if skull_strip else vols["t1"]
    images = {"T1": t1.astype(np.float32)}
    for contrast, (c, g, w) in _SIM.items():
        images[f"{contrast}_simulated"] = (c * csf + g * gm + w * wm).astype(np.float32)
    labels = np.where(wm >= gm, 3, 2)
    labels = np.where((csf > gm) & (csf > wm), 1, labels)
    labels = np.where(brain, labels, 0).astype(np.int64)
    return _Subject("ICBM152", images, spacing, affine, labels)


def _read_icbm152(subject, modalities, skull_strip=True):
    s = _icbm152(bool(skull_strip))
    return _Subject(s.name, {m: s.images[m] for m in modalities}, s.spacing, s.affine, s.labels)


def _read_open_ms(subject, modalities):
    folder = f"open_ms_data_mni/{subject}"
    images = {}
    for m in modalities:
        images[m], spacing, affine = _nib_tensor_order(
            _file("open_ms", f"{folder}/{m}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"),
            canonical=True)
    lab, _, _ = _nib_tensor_order(
        _file("open_ms", f"{folder}/GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"),
        canonical=True, label=True)
    return _Subject(subject, images, spacing, affine, (lab > 0).astype(np.int64))


_MYOPS_MAP = {0: (0, 0), 200: (1, 1), 500: (2, 2), 600: (3, 3), 1220: (1, 4), 2221: (1, 5)}


def _remap(raw: np.ndarray, table: dict[int, int], what: str) -> np.ndarray:
    raw = np.rint(raw).astype(np.int64)
    found = set(np.unique(raw).tolist())
    unknown = found - set(table)
    if unknown:
        raise ValueError(f"{what}: unexpected label values {sorted(unknown)} (known: {sorted(table)})")
    lut = np.zeros(max(table) + 1, dtype=np.int64)
    for k, v in table.items():
        lut[k] = v
    return lut[raw]


def _read_myops_cmr(subject, modalities, pathology=False):
    folder = f"myops2020_multiseq_cmr/{subject}/{subject}"
    images = {}
    for m in modalities:
        images[m], spacing, affine = _nib_tensor_order(_file("myops_cmr", f"{folder}_{m}.nii.gz"), canonical=False)
    raw, _, _ = _nib_tensor_order(_file("myops_cmr", f"{folder}_gd.nii.gz"), canonical=False, label=True)
    cardiac = _remap(raw, {k: v[0] for k, v in _MYOPS_MAP.items()}, subject)
    patho = _remap(raw, {k: v[1] for k, v in _MYOPS_MAP.items()}, subject)
    labels, extra = (patho, {"cardiac_labels": cardiac}) if pathology else (cardiac, {"pathology": patho})
    return _Subject(subject, images, spacing, affine, labels, extra)


def _read_mscmrseg_lge(subject, modalities):
    img, spacing, affine = _nib_tensor_order(_file("mscmrseg_lge", f"mscmrseg2019_lge_oolka1/{subject}_LGE.nii.gz"),
                                             canonical=False)
    raw, _, _ = _nib_tensor_order(_file("mscmrseg_lge", f"mscmrseg2019_lge_oolka1/{subject}_LGE_manual.nii.gz"),
                                  canonical=False, label=True)
    labels = _remap(raw, {0: 0, 200: 1, 500: 2, 600: 3}, subject)
    return _Subject(subject, {"LGE": img}, spacing, affine, labels)


def _read_brats2012(subject, modalities):
    import SimpleITK as sitk

    def read(key):
        path = _file("brats2012", f"brats2012_HG0015_mpr/BRATS_HG0015_{key}.mha")
        try:
            im = sitk.ReadImage(str(path))
        except RuntimeError as err:
            from .errors import UnreadableFileError

            raise UnreadableFileError(f"cannot read {path} with SimpleITK: {err}") from err
        return im, sitk.GetArrayFromImage(im)  # [z, y, x]

    images = {}
    for m in modalities:
        im, arr = read(m)
        images[m] = arr.astype(np.float32)
    im, lab = read("truth")
    sx, sy, sz = im.GetSpacing()
    direction = np.asarray(im.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag([sx, sy, sz])
    lps[:3, 3] = im.GetOrigin()
    perm = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # (d,h,w)->(x,y,z)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps @ perm  # LPS -> RAS world
    labels = _remap(lab, {0: 0, 1: 1, 2: 2}, "BRATS_HG0015_truth")
    return _Subject(subject, images, (sz, sy, sx), affine, labels)


def _read_oasis(subject, modalities, labels="aseg"):
    if labels not in ("aseg", "tissue"):
        raise ValueError(f"labels must be 'aseg' or 'tissue', got {labels!r}")
    if subject == "vxm_test":
        with np.load(_file("oasis", "voxelmorph_oasis/test_scan.npz")) as z:
            vol, seg = z["vol"], z["seg"]
    elif subject == "l2r_subject1":
        with np.load(_file("oasis", "learn2reg_tutorial2019_oasis/subject_1_vol.npz")) as z:
            vol = z["vol_data"]
        with np.load(_file("oasis", "learn2reg_tutorial2019_oasis/subject_1_seg.npz")) as z:
            seg = z["vol_data"]
    else:  # "atlas": a 2-D slice (index 100 of the last axis) of the voxelmorph atlas
        with np.load(_file("oasis", "learn2reg_tutorial2019_oasis/atlas_norm_2d.npz")) as z:
            vol, seg = z["vol"][:, :, None], z["seg"][:, :, None]
    seg = np.rint(seg).astype(np.int64)
    if labels == "tissue":
        lut = np.zeros(256, dtype=np.int64)
        for k, v in ASEG_TISSUE.items():
            lut[k] = v
        seg = lut[seg]
    perm = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # (d,h,w)->(i,j,k)
    return _Subject(subject, {"T1": np.ascontiguousarray(vol.transpose(2, 0, 1), dtype=np.float32)},
                    (1.0, 1.0, 1.0), perm, np.ascontiguousarray(seg.transpose(2, 0, 1)))


def _read_brainweb_labels(subject, modalities):
    _file("brainweb_labels", "brainweb_crisp_3mm_nrough/ANA_3CRISP00001.img")  # the Analyze pair: data ...
    hdr = _file("brainweb_labels", "brainweb_crisp_3mm_nrough/ANA_3CRISP00001.hdr")  # ... and header
    import logging

    log = logging.getLogger("nibabel.global")
    level = log.level
    log.setLevel(logging.ERROR)  # "pixdim[1,2,3] should be positive": nibabel takes abs, as intended
    try:
        vol, spacing, affine = _nib_tensor_order(hdr, canonical=True)
    finally:
        log.setLevel(level)
    classes = np.clip(np.rint(vol), 0, 9).astype(np.int64)
    images = {m: np.asarray(_BRAINWEB_SIM[m.split("_")[0]], dtype=np.float32)[classes] for m in modalities}
    return _Subject(subject, images, spacing, affine, classes)


_ITK_FILES = {
    "T1": "BrainT1Slice", "PD": "BrainProtonDensitySlice", "T1_border20": "BrainT1SliceBorder20",
    "PD_border20": "BrainProtonDensitySliceBorder20", "PD_shifted13x17y": "BrainProtonDensitySliceShifted13x17y",
    "PD_rotated10": "BrainProtonDensitySliceRotated10", "PD_R10X13Y17": "BrainProtonDensitySliceR10X13Y17",
    "PD_R10X13Y17S12": "BrainProtonDensitySliceR10X13Y17S12",
}


def _read_picture(dataset, rel):
    from PIL import Image

    path = _file(dataset, rel)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32)
    except OSError as err:
        from .errors import UnreadableFileError

        raise UnreadableFileError(f"cannot read image {path}: {err}") from err


def _pad_to(arr, shape):
    pads = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(arr.shape, shape)]
    return np.pad(arr, pads)


def _read_brainweb_slices(subject, modalities):
    arrs = {m: _read_picture("brainweb_slices", f"brainweb_itk_slices/{_ITK_FILES[m]}.png") for m in modalities}
    shape = tuple(max(a.shape[i] for a in arrs.values()) for i in range(2))  # centred padding keeps alignment
    images = {m: _pad_to(a, shape)[None] for m, a in arrs.items()}
    return _Subject(subject, images, (1.0, 1.0, 1.0), np.eye(4)[[2, 0, 1, 3]].T.copy())


def _read_ants_slices(subject, modalities):
    img = _read_picture("ants_slices", f"antspy_r_slices/{subject}slice.jpg")
    return _Subject(subject, {"T1": img[None]}, (1.0, 1.0, 1.0), np.eye(4)[[2, 0, 1, 3]].T.copy())


def _read_cine(slices, frames):
    """Stack of the given slices (tensor axis D) for each frame; labels per slice (phase undocumented)."""
    images = {f"frame{t:02d}": [] for t in frames}
    labs = []
    for s in slices:
        for t in frames:
            arr, spacing, affine = _nib_tensor_order(
                _file("cine_cmr", f"cinemyops_demo_case1002/image/Case1002_{s}_{t:04d}.nii.gz"), canonical=False)
            images[f"frame{t:02d}"].append(arr)
        lab, _, _ = _nib_tensor_order(_file("cine_cmr", f"cinemyops_demo_case1002/label/Case1002_{s}.nii.gz"),
                                      canonical=False, label=True)
        labs.append(lab.astype(np.int64))
    images = {k: np.concatenate(v, axis=0) for k, v in images.items()}
    first = int(slices[0][1:]) - 1
    spacing = (6.0, spacing[1], spacing[2])
    return images, np.concatenate(labs, axis=0), spacing, affine, first


# ---- BrainWeb 20-subject models (MINC-1, 0.5 mm, 12 classes) and subject 47's simulations (5x1x1 mm)
_BW47 = "brainweb_subject47_t1t2pd_deepsynmri"
_BW47_FILES = {"T1": f"{_BW47}/noise-1-INU-00/brainweb_0.mnc.gz", "T2": f"{_BW47}/noise-1-INU-00/brainweb_1.mnc.gz",
               "PD": f"{_BW47}/noise-1-INU-00/brainweb_2.mnc.gz"}
_BW_CLASSES = 12


def _minc(dataset: str, rel: str):
    """MINC-1 file -> (array [D, H, W] in file order (z, y, x), affine tensor index -> world), rows flipped so
    that anterior is at the top."""
    import nibabel as nib

    img = nib.load(str(_file(dataset, rel)))
    arr = np.asarray(img.dataobj)
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, arr.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    return np.ascontiguousarray(arr[:, ::-1, :]), img.affine @ flip


def _bw_model(dataset: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
    rel = (f"{_BW47}/mask/subject47_crisp_v.mnc.gz" if subject == "subject47"
           else f"brainweb20_crisp_eecs556/{subject}_crisp_v.mnc.gz")
    import nibabel as nib

    img = nib.load(str(_file(dataset, rel)))
    mid = img.shape[0] // 2
    try:  # the stored integers are the classes (scaling to float64 takes seconds): check on the middle slice
        raw = np.asarray(img.dataobj.minc_file._image.data)
        fast = raw.dtype.kind in "iu" and np.array_equal(raw[mid], np.rint(np.asarray(img.dataobj[mid])))
    except AttributeError:
        fast = False
    arr = raw if fast else np.rint(np.asarray(img.dataobj))
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, arr.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    arr = np.clip(arr[:, ::-1, :], 0, _BW_CLASSES - 1).astype(np.uint8)
    return arr, img.affine @ flip


def _model_on_grid(model: np.ndarray, model_aff: np.ndarray, shape, aff: np.ndarray):
    """Majority class of the model voxels inside each voxel of the grid (``shape``, ``aff``), from the affines.

    Both grids must be axis-aligned with the same axis order, the grid's voxels an integer number of model voxels,
    and the voxel borders must coincide; model voxels outside the model count as background.
    Returns (classes [D, H, W] int64, purity [D, H, W] = fraction of the majority class).
    """
    factors, starts = [], []
    for a in range(3):
        col, mcol = aff[:3, a], model_aff[:3, a]
        w = int(np.argmax(np.abs(col)))
        if np.argmax(np.abs(mcol)) != w or np.sign(col[w]) != np.sign(mcol[w]):
            raise ValueError("model and image grids have different axis orders")
        f = col[w] / mcol[w]
        n0 = (aff[w, 3] - col[w] / 2 + mcol[w] / 2 - model_aff[w, 3]) / mcol[w]
        if abs(f - round(f)) > 1e-6 or abs(n0 - round(n0)) > 1e-6:
            raise ValueError(f"axis {a}: grid voxel is not a whole block of model voxels (ratio {f}, offset {n0})")
        factors.append(int(round(f)))
        starts.append(int(round(n0)))
    block = np.zeros([n * f for n, f in zip(shape, factors)], dtype=model.dtype)  # background outside the model
    src = tuple(slice(max(s, 0), min(s + n, m)) for s, n, m in zip(starts, block.shape, model.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, starts))
    block[dst] = model[src]
    counts = np.zeros((_BW_CLASSES, int(np.prod(shape))), dtype=np.uint8)  # <= 255 model voxels per grid voxel
    cells = np.arange(counts.shape[1])
    for sub in _blocks(block, factors):  # one model voxel of every grid voxel at a time: no repeated index
        counts[sub.ravel(), cells] += 1
    classes = counts.argmax(0).reshape(shape).astype(np.int64)
    return classes, (counts.max(0) / float(np.prod(factors))).reshape(shape)


def _blocks(arr: np.ndarray, factors):
    """The prod(factors) strided sub-arrays of ``arr``, one per offset inside a block of ``factors`` voxels."""
    import itertools

    for off in itertools.product(*(range(f) for f in factors)):
        yield arr[tuple(slice(o, None, f) for o, f in zip(off, factors))]


def _bw_labels(classes: np.ndarray, labels: str) -> np.ndarray:
    if labels not in ("tissue", "classes"):
        raise ValueError(f"labels must be 'tissue' (0 bg, 1 CSF, 2 GM, 3 WM) or 'classes' (all 12), got {labels!r}")
    return np.where(classes <= 3, classes, 0) if labels == "tissue" else classes


@functools.lru_cache(maxsize=1)
def _brainweb47() -> _Subject:
    images = {}
    for m, rel in _BW47_FILES.items():
        arr, aff = _minc("brainweb47", rel)
        images[m] = arr.astype(np.float32)
    model, model_aff = _bw_model("brainweb47", "subject47")
    classes, purity = _model_on_grid(model, model_aff, images["T1"].shape, aff)
    spacing = tuple(float(np.linalg.norm(aff[:3, a])) for a in range(3))
    return _Subject("subject47", images, spacing, aff, classes, {"purity": purity})


def _read_brainweb47(subject, modalities, labels="tissue"):
    s = _brainweb47()
    return _Subject(s.name, {m: s.images[m] for m in modalities}, s.spacing, s.affine, _bw_labels(s.labels, labels))


@functools.lru_cache(maxsize=1)
def _t1_lookup() -> np.ndarray:
    """Median intensity of each of the 12 classes in subject 47's BrainWeb T1 simulation, over the image voxels
    whose 10x2x2 model voxels are >= 90 % that class (>= 50 % where no voxel is that pure; 0 if none)."""
    s = _brainweb47()
    t1, purity = s.images["T1"], s.extra["purity"]
    lut = np.zeros(_BW_CLASSES, dtype=np.float32)
    for c in range(_BW_CLASSES):
        for p in (0.9, 0.5):
            sel = (s.labels == c) & (purity >= p)
            if sel.any():
                lut[c] = np.median(t1[sel])
                break
    return lut


@functools.lru_cache(maxsize=12)
def _brainweb20(subject: str) -> _Subject:
    model, model_aff = _bw_model("brainweb20", subject)
    shape = tuple(n // 2 for n in model.shape)
    aff = model_aff.copy()  # 1 mm grid of 2x2x2 model blocks: same world frame
    aff[:3, :3] = model_aff[:3, :3] * 2
    aff[:3, 3] = model_aff[:3, 3] + model_aff[:3, :3].sum(1) / 2
    classes, _ = _model_on_grid(model, model_aff, shape, aff)
    lut = _t1_lookup()
    t1 = sum(lut[sub] for sub in _blocks(model[:2 * shape[0], :2 * shape[1], :2 * shape[2]], (2, 2, 2))) / 8
    return _Subject(subject, {"T1_simulated": t1}, (1.0, 1.0, 1.0), aff, classes)


def _read_brainweb20(subject, modalities, labels="tissue"):
    s = _brainweb20(subject)
    return _Subject(s.name, dict(s.images), s.spacing, s.affine, _bw_labels(s.labels, labels))


# ---- BRATS 2015 (DeepMedic example patient)
def _read_brats2015(subject, modalities):
    folder = "brats2015_deepmedic_pat0004/brats_2013_pat0004_1"
    files = {"FLAIR": "Flair_subtrMeanDivStd", "T1c": "T1c_subtrMeanDivStd"}
    images = {}
    for m in modalities:
        images[m], spacing, affine = _nib_tensor_order(_file("brats2015", f"{folder}/{files[m]}.nii.gz"),
                                                       canonical=True)
    raw, _, _ = _nib_tensor_order(_file("brats2015", f"{folder}/OTMultiClass.nii.gz"), canonical=True, label=True)
    brain, _, _ = _nib_tensor_order(_file("brats2015", f"{folder}/brainmask.nii.gz"), canonical=True, label=True)
    labels = _remap(raw, {k: k for k in range(5)}, "brats_2013_pat0004_1/OTMultiClass")
    return _Subject(subject, images, spacing, affine, labels, {"brain_mask": (brain > 0.5).astype(np.int64)})


# ---- QPerf perfusion series: (x, y, time) arrays -> one [1, H, W] image per frame
_QPERF_FRAMES = {"aif": 99, "rest": 68, "stress": 59}
_TENSOR_PERM = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # (d,h,w)->(x,y,z)


def _read_qperf(subject: str, frames: list[int]) -> tuple[_Subject, np.ndarray | None]:
    """One series as a subject whose 'modalities' are its frames; also the arterial input function (or None)."""
    aif = None
    if subject == "aif":
        series = np.load(_file("qperf", "qperf_perfusion_nhlbi/aif_example1/aif_scc.npy")).transpose(2, 1, 0)
        mask = np.load(_file("qperf", "qperf_perfusion_nhlbi/aif_example1/aif_masks_final.npy")).T[None]
        extra = {"series_labels": _remap(mask, {0: 0, 1: 1, 2: 2}, "aif_masks_final.npy")}
    else:
        stem = "data" if subject == "rest" else "data_stress"
        _file("qperf", f"qperf_perfusion_nhlbi/examples/{stem}.img")  # the Analyze pair: data ...
        series, _, _ = _nib_tensor_order(_file("qperf", f"qperf_perfusion_nhlbi/examples/{stem}.hdr"), canonical=False)
        extra = {}
        astem = "aif" if subject == "rest" else "aif_stress"
        _file("qperf", f"qperf_perfusion_nhlbi/examples/{astem}.img")
        import nibabel as nib

        aif = np.asarray(nib.load(str(_file("qperf", f"qperf_perfusion_nhlbi/examples/{astem}.hdr"))).dataobj)
        aif = aif.reshape(-1)
    images = {f"frame{t:02d}": np.ascontiguousarray(series[t][None], dtype=np.float32) for t in frames}
    return _Subject(subject, images, (1.0, 1.0, 1.0), _TENSOR_PERM.copy(), None, extra), aif


def _qperf_subjects(spec, slice_index, subjects, modalities, frames=None):
    if slice_index is not None:
        raise ValueError("qperf: slice_index does not apply (each frame is one 2-D image); use frames=")
    if frames is not None and modalities is not None:
        raise ValueError("give frames= or modalities=, not both")
    names = _resolve("subject", subjects, spec.subjects, spec.subjects[:1], "qperf")
    out, aifs = [], []
    for s in names:
        count = _QPERF_FRAMES[s]
        if frames is not None:
            sel = [frames] if isinstance(frames, (int, np.integer)) else list(frames)
            if not sel or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < count
                              for t in sel):
                raise ValueError(f"qperf/{s}: frames must be integers in 0..{count - 1}, got {frames!r}")
        elif modalities is not None:
            sel = [int(m[5:]) for m in _resolve("frame", modalities, spec.modalities[:count], (), f"qperf/{s}")]
        else:
            sel = list(range(count))
        subj, aif = _read_qperf(s, [int(t) for t in sel])
        out.append(subj)
        aifs.append(aif)
    return out, aifs


# --------------------------------------------------------------------------------------------------- geometry
def _bbox(mask: np.ndarray, min_count: int = 2):
    """Per-axis (lo, hi) index range of ``mask`` (rows with fewer than ``min_count`` voxels ignored)."""
    out = []
    for ax in range(mask.ndim):
        counts = mask.sum(axis=tuple(i for i in range(mask.ndim) if i != ax))
        idx = np.flatnonzero(counts >= min_count)
        if idx.size == 0:
            idx = np.flatnonzero(counts > 0)
        out.append((int(idx[0]), int(idx[-1])) if idx.size else (0, mask.shape[ax] - 1))
    return out


def _foreground(images: dict[str, np.ndarray]) -> np.ndarray:
    mask = None
    for a in images.values():
        hi = np.percentile(a, 99)
        m = a > 0.05 * hi if hi > 0 else a > a.min()
        mask = m if mask is None else mask | m
    return mask


def _roi_mask(subj: _Subject, roi: str | None) -> np.ndarray | None:
    if roi is None:
        return None
    if roi == "labels" and subj.labels is not None and (subj.labels > 0).any():
        return subj.labels > 0
    if roi == "brain_mask" and "brain_mask" in subj.extra:
        return subj.extra["brain_mask"] > 0
    return _foreground(subj.images)


def _sample(arr, in_sp, centre, out_shape, out_sp, order):
    """Values of ``arr`` on the grid of ``out_shape`` points, spacing ``out_sp``, centred at index ``centre``."""
    from scipy import ndimage

    scale = np.asarray(out_sp, float) / np.asarray(in_sp, float)
    if order > 0 and (scale > 1).any():
        arr = ndimage.gaussian_filter(arr.astype(np.float32), sigma=np.maximum(0.0, (scale - 1) / 2), mode="nearest")
    axes = [c + (np.arange(n) - (n - 1) / 2) * s for c, n, s in zip(centre, out_shape, scale)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = ndimage.map_coordinates(arr, coords, order=order, mode="constant", cval=0.0, prefilter=False)
    matrix = np.eye(len(out_shape) + 1)
    matrix[:-1, :-1] = np.diag(scale)
    matrix[:-1, -1] = [a[0] for a in axes]
    return out, matrix


def _normalise(x: np.ndarray) -> np.ndarray:
    lo = np.percentile(x, 0.5)
    fg = x[x > lo]
    hi = np.percentile(fg, 99.5) if fg.size else lo
    if hi - lo <= 1e-8 * max(1.0, abs(hi)):
        return np.zeros_like(x, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------- settings
# dataset -> (reader, roi mode, margin mm, default 2-D slice rule, modalities loaded by default, subjects by default)
_SETTINGS = {
    "icbm152": (_read_icbm152, "foreground", 4.0, 0.6, None, "first"),
    "myops_cmr": (_read_myops_cmr, "labels", 25.0, "labels", None, "first"),
    "open_ms": (_read_open_ms, "foreground", 4.0, "labels", None, "first"),
    "brats2012": (_read_brats2012, "foreground", 4.0, "labels", None, "first"),
    "mscmrseg_lge": (_read_mscmrseg_lge, "labels", 25.0, "labels", None, "all"),
    "oasis": (_read_oasis, "foreground", 4.0, 100, None, "all"),
    "brainweb_labels": (_read_brainweb_labels, "foreground", 4.0, 0.6, None, "first"),
    "brainweb_slices": (_read_brainweb_slices, "foreground", 4.0, 0, ("T1", "PD"), "first"),
    "ants_slices": (_read_ants_slices, "foreground", 4.0, 0, None, "all"),
    "brainweb47": (_read_brainweb47, "foreground", 4.0, 0.6, None, "first"),
    "brainweb20": (_read_brainweb20, "foreground", 4.0, 0.6, None, "all"),
    "brats2015": (_read_brats2015, "brain_mask", 4.0, "labels", None, "first"),
}
_KW = {"icbm152": {"skull_strip"}, "myops_cmr": {"pathology"}, "oasis": {"labels", "include_atlas"},
       "cine_cmr": {"frames", "group_by"}, "brainweb47": {"labels"}, "brainweb20": {"labels"}, "qperf": {"frames"}}


def _resolve(kind: str, requested, valid: tuple[str, ...], default: tuple[str, ...], dataset: str) -> list[str]:
    if requested is None:
        return list(default)
    if isinstance(requested, str):
        if requested == "all":
            return list(valid)
        requested = [requested]
    out = []
    for r in requested:
        match = [v for v in valid if v.lower() == str(r).lower()] or \
                [v for v in valid if v.lower().split("_")[0] == str(r).lower()]
        if len(match) != 1:
            raise ValueError(f"{dataset}: unknown {kind} {r!r}; valid {kind} names: {', '.join(valid)}")
        out.append(match[0])
    if not out:
        raise ValueError(f"{dataset}: empty {kind} selection")
    return out


def _default_slice(subj: _Subject, rule, mask) -> int:
    depth = next(iter(subj.images.values())).shape[0]
    if depth == 1:
        return 0
    if isinstance(rule, int):
        return rule
    if rule == "labels" and subj.labels is not None and (subj.labels > 0).any():
        return int(np.argmax((subj.labels > 0).sum(axis=(1, 2))))
    if mask is None:
        return depth // 2
    lo, hi = _bbox(mask)[0]
    return int(round(lo + float(rule if isinstance(rule, float) else 0.5) * (hi - lo)))


# --------------------------------------------------------------------------------------------------- main entry
def load_dataset(name: str, *, dim: int = 2, size: int | None = 128, slice_index: int | None = None,
                 subjects=None, modalities=None, device="cpu", normalize: bool = True, **kw):
    """Load a registered dataset as an :class:`~xreg_edu.group.ImageGroup`.

    Args:
        name: a name from :func:`list_datasets` (see :func:`dataset_card` for each dataset's default group).
        dim: 2 (one slice per subject, ``[N, 1, size, size]``) or 3 (``[N, 1, D, size, size]``).
        size: in-plane grid size after cropping to the ROI (square FOV, spacing = FOV / size mm);
            ``None`` keeps the native in-plane spacing (crop only).
        slice_index: 2-D slice along the first tensor axis of the native volume (same index for every subject);
            default: a dataset-specific rule (largest labelled area for cardiac/tumour data, 60 % of the brain's
            extent for brains). For ``cine_cmr`` it selects the slice (0..9) whose frames form the group.
        subjects: ``None`` (dataset default: the first subject for multi-modal sets, all subjects for
            single-modality sets), ``"all"``, one name or a list. N = subjects x modalities, subject-major.
        modalities: ``None`` (all / dataset default), one name or a list; case-insensitive, ``"T2"`` matches
            ``"T2_simulated"``.
        device: torch device of the returned tensors.
        normalize: robust percentile scaling of each image to [0, 1]; ``False`` keeps resampled raw intensities.
        **kw: dataset options - icbm152: ``skull_strip=True``; myops_cmr: ``pathology=False`` (True: labels 4 edema,
            5 scar); oasis: ``labels="aseg"|"tissue"``, ``include_atlas=False`` (2-D); cine_cmr:
            ``frames=None`` (list of 0..16), ``group_by="slice"|"frame"``; brainweb47, brainweb20:
            ``labels="tissue"|"classes"`` (0-3 or all 12 BrainWeb classes); qperf: ``frames=None`` (the series'
            frame indices; the group is the frames of each series in ``subjects``).
    Returns:
        ImageGroup with images ``[N, 1, *S]`` float32, labels ``[N, 1, *S]`` int64 (or None), spacing in mm,
        names ``"subject/modality"``, affines ``[N, 4, 4]`` (tensor index -> world mm; 2-D: ``(row, col, 0)``),
        meta with ``dataset``, ``simulated`` (bool per image), ``subjects``, ``modalities``, ``slice_index`` ...
    """
    from ..group import ImageGroup

    spec = get_spec(name)
    unknown = set(kw) - _KW.get(name, set())
    if unknown:
        raise TypeError(f"{name}: unexpected option(s) {sorted(unknown)}; accepted: {sorted(_KW.get(name, set()))}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if dim not in spec.dims:
        raise ValueError(f"{name} holds 2-D images only; use dim=2")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ValueError(f"size must be an integer >= 8 or None, got {size!r}")

    if name == "cine_cmr":
        subs, roi, margin, rule = _cine_subjects(spec, dim, slice_index, subjects, modalities, **kw)
        slice_index = None if dim == 3 else 0
    elif name == "qperf":
        subs, aifs = _qperf_subjects(spec, slice_index, subjects, modalities, **kw)
        roi, margin, rule = None, 0.0, 0
    else:
        reader, roi, margin, rule, default_mods, default_subs = _SETTINGS[name]
        subject_list = _resolve("subject", subjects, spec.subjects,
                                spec.subjects if default_subs == "all" else spec.subjects[:1], name)
        mods = _resolve("modality", modalities, spec.modalities, default_mods or spec.modalities, name)
        opts = {k: v for k, v in kw.items() if k != "include_atlas"}
        subs = [reader(s, mods, **opts) for s in subject_list]
        if name == "oasis" and kw.get("include_atlas"):
            if dim != 2:
                raise ValueError("include_atlas=True needs dim=2 (the atlas is one 2-D slice)")
            if slice_index not in (None, 100):
                raise ValueError("the oasis atlas is slice 100; use slice_index=None or 100 with include_atlas")
            subs.append(_AtlasSubject(_read_oasis("atlas", mods, labels=kw.get("labels", "aseg"))))
    group = _build(ImageGroup, spec, subs, dim, size, slice_index, roi, margin, rule, device, normalize)
    if name == "qperf":
        group.meta["frame_interval_s"] = 0.5
        if "series_labels" in group.meta:
            group.meta["series_label_names"] = dict(spec.label_names)
        group.meta["aif"] = {s.name: torch.from_numpy(a.astype(np.float32)) for s, a in zip(subs, aifs)
                             if a is not None}
    if name in ("brainweb47", "brainweb20") and kw.get("labels", "tissue") == "classes":
        from .registry import BRAINWEB20_CLASSES

        group.label_names = dict(BRAINWEB20_CLASSES)
    if name == "oasis" and kw.get("labels", "aseg") == "tissue":
        group.label_names = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
    return group


class _AtlasSubject(_Subject):
    """A 2-D-only subject that is already the slice (depth 1) of the other subjects' plane."""

    def __init__(self, s: _Subject):
        super().__init__(s.name, s.images, s.spacing, s.affine, s.labels, s.extra)


def _cine_subjects(spec, dim, slice_index, subjects, modalities, frames=None, group_by="slice"):
    if group_by not in ("slice", "frame"):
        raise ValueError(f"group_by must be 'slice' or 'frame', got {group_by!r}")
    if frames is not None and modalities is not None:
        raise ValueError("give frames= or modalities=, not both")
    if frames is not None:
        frames = [frames] if isinstance(frames, int) else list(frames)
        if not frames or any(not isinstance(t, (int, np.integer)) or not 0 <= t < 17 for t in frames):
            raise ValueError(f"frames must be integers in 0..16, got {frames!r}")
        modalities = [f"frame{int(t):02d}" for t in frames]
    default_frames = spec.modalities if group_by == "slice" else spec.modalities[:1]
    mods = _resolve("frame", modalities, spec.modalities, default_frames, "cine_cmr")
    tframes = [int(m[5:]) for m in mods]
    if slice_index is not None:
        if not isinstance(slice_index, (int, np.integer)) or not 0 <= slice_index < 10:
            raise ValueError(f"cine_cmr: slice_index must be in 0..9, got {slice_index!r}")
        if subjects is not None:
            raise ValueError("cine_cmr: give slice_index= or subjects=, not both")
        subjects = [spec.subjects[slice_index]]
    default_slices = (spec.subjects[4],) if (group_by == "slice" and dim == 2) else spec.subjects
    slices = _resolve("slice", subjects, spec.subjects, default_slices, "cine_cmr")
    if dim == 3:
        if group_by == "frame":
            raise ValueError("cine_cmr: dim=3 groups are the frames of the 10-slice stack; use group_by='slice'")
        images, labels, spacing, affine, _ = _read_cine(slices, tframes)
        subs = [_Subject("Case1002", images, spacing, affine, None, {"slice_labels": labels})]
    else:
        subs = []
        for s in slices:
            images, labels, spacing, affine, _ = _read_cine([s], tframes)
            if group_by == "frame":
                subs.append(_Subject(s, images, spacing, affine, labels))
            else:
                subs.append(_Subject(s, images, spacing, affine, None, {"slice_labels": labels}))
    return subs, None, 0.0, 0


def _check_slice_has_anatomy(name: str, s: _Subject, k: int) -> None:
    """A requested 2-D slice must show something in every image (a constant slice normalises to all zeros)."""
    for m, arr in s.images.items():
        flat = arr.reshape(arr.shape[0], -1)
        varies = flat.max(1) - flat.min(1) > 1e-6 * max(1.0, float(np.abs(flat).max()))
        if not varies[k]:
            idx = np.flatnonzero(varies)
            where = f"slices {idx[0]}..{idx[-1]} hold anatomy" if idx.size else "no slice holds anatomy"
            raise ValueError(f"{name}/{s.name}/{m}: slice_index={k} lies outside the anatomy (the slice is constant, "
                             f"the group would be all zeros); {where}, or use slice_index=None for the default")


def _build(ImageGroup, spec, subs, dim, size, slice_index, roi, margin, rule, device, normalize):
    name = spec.name
    shapes = {next(iter(s.images.values())).shape for s in subs if not isinstance(s, _AtlasSubject)}
    common = len(shapes) == 1 and len({s.spacing for s in subs}) == 1  # one shared space -> one crop
    # ---- per-subject slice + ROI
    plans = []
    for s in subs:
        depth = next(iter(s.images.values())).shape[0]
        mask = _roi_mask(s, roi)
        if dim == 2:
            if isinstance(s, _AtlasSubject) or depth == 1:
                k = 0
            elif slice_index is not None:
                if not isinstance(slice_index, (int, np.integer)) or not 0 <= slice_index < depth:
                    raise ValueError(f"{name}/{s.name}: slice_index must be an integer in 0..{depth - 1}, "
                                     f"got {slice_index!r}")
                k = int(slice_index)
                _check_slice_has_anatomy(name, s, k)
            else:
                k = _default_slice(s, rule, mask)
            plans.append([s, k, None if mask is None else mask[k]])
        else:
            if depth == 1:
                raise ValueError(f"{name} holds 2-D images only; use dim=2")
            plans.append([s, None, mask])
    if common and dim == 2 and slice_index is None and len(plans) > 1:  # same space: same slice for everyone
        for p in plans[1:]:
            if not isinstance(p[0], _AtlasSubject):
                p[1] = plans[0][1]
                m = _roi_mask(p[0], roi)
                p[2] = None if m is None else m[p[1]]
    # ---- ROI boxes (index space of each subject's array; 2-D: rows/cols of the slice)
    boxes = []
    for s, k, mask in plans:
        arr = next(iter(s.images.values()))
        arr = arr[k] if dim == 2 else arr
        boxes.append(_bbox(mask) if mask is not None and mask.any() else [(0, n - 1) for n in arr.shape])
    if common:
        union = [(min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(len(boxes[0]))]
        boxes = [union] * len(boxes)
    sp_all = [s.spacing[1:] if dim == 2 else s.spacing for s, _, _ in plans]
    centres = [[(lo + hi) / 2 for lo, hi in b] for b in boxes]
    extents = [[(hi - lo + 1) * sp + 2 * margin for (lo, hi), sp in zip(b, sps)] for b, sps in zip(boxes, sp_all)]
    fov_plane = max(max(e[-2:]) for e in extents)
    if size is None:
        sp_plane = min(min(sps[-2:]) for sps in sp_all)
        n_plane = int(np.ceil(fov_plane / sp_plane - 1e-6))
    else:
        sp_plane, n_plane = fov_plane / size, size
    out_shape, out_sp = (n_plane, n_plane), (sp_plane, sp_plane)
    if dim == 3:
        sp_d = max(max(sps[0] for sps in sp_all), sp_plane)
        n_d = max(1, int(round(max(e[0] for e in extents) / sp_d)))
        out_shape, out_sp = (n_d,) + out_shape, (sp_d,) + out_sp
    # ---- resample
    images, labels, names, affines, sim, subj_of, mod_of, slices = [], [], [], [], [], [], [], []
    extra = {}
    has_labels = any(s.labels is not None for s, _, _ in plans)
    for (s, k, _), c, sps in zip(plans, centres, sp_all):
        def take(a):
            return a[k] if dim == 2 else a

        lab_out = None
        if s.labels is not None:
            lab_out, _ = _sample(take(s.labels), sps, c, out_shape, out_sp, 0)
        ex_out = {key: _sample(take(v), sps, c, out_shape, out_sp, 0)[0] for key, v in s.extra.items()}
        for m, arr in s.images.items():
            img, matrix = _sample(take(arr).astype(np.float32), sps, c, out_shape, out_sp, 1)
            images.append(_normalise(img) if normalize else img.astype(np.float32))
            if has_labels:
                labels.append(lab_out if lab_out is not None else np.zeros(out_shape, np.int64))
            for key, v in ex_out.items():
                extra.setdefault(key, []).append(v)
            names.append(f"{s.name}/{m}")
            sim.append(m in spec.simulated)
            subj_of.append(s.name)
            mod_of.append(m)
            slices.append(k)
            if dim == 2:  # (row, col, q) -> native (k + q, h, w)
                m4 = np.array([[0, 0, 1, k], [matrix[0, 0], 0, 0, matrix[0, 2]],
                               [0, matrix[1, 1], 0, matrix[1, 2]], [0, 0, 0, 1]], dtype=float)
            else:
                m4 = matrix
            affines.append(s.affine @ m4)
    t = torch.from_numpy(np.stack(images)[:, None].astype(np.float32)).to(device)
    lab_t = torch.from_numpy(np.stack(labels)[:, None].astype(np.int64)).to(device) if has_labels else None
    meta = {
        "dataset": name, "simulated": sim, "subjects": subj_of, "modalities": mod_of,
        "slice_index": slices if dim == 2 else None, "normalized": bool(normalize),
        "roi": roi, "source": spec.source, "licence": spec.licence, "citation": spec.citation,
        "original_spacing": [s.spacing for s, _, _ in plans],
    }
    if name == "cine_cmr":
        meta["cine_note"] = ("labels are one map per slice, cardiac phase undocumented upstream; with the default "
                             "group_by='slice' they are only in meta['slice_labels'], not copied to every frame")
    for key, v in extra.items():
        meta[key] = torch.from_numpy(np.stack(v)[:, None].astype(np.int64)).to(device)
    label_names = dict(spec.label_names) if (has_labels and spec.label_names) else None
    if name == "myops_cmr" and any(s.extra.get("cardiac_labels") is not None for s, _, _ in plans):
        from .registry import MYOPS_PATHOLOGY_LABELS

        label_names = dict(MYOPS_PATHOLOGY_LABELS)
    return ImageGroup(images=t, spacing=tuple(float(x) for x in out_sp), names=names, labels=lab_t,
                      label_names=label_names, affines=np.stack(affines), meta=meta)
