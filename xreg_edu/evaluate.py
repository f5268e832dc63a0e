"""Evaluation of a groupwise registration (spec §8): gRE, gWI, groupwise Dice, ASSD, folding.

Convention: ``points`` / ``displacement`` fields are ``[N, d, *S]`` in mm on the common-space grid and map a
common-space point to the *true* (phantom) space of image j, i.e. ``psi_j = phi_j^sim ∘ phi_hat_j``; obtain them
with ``Misalignment.true_points(transform(grid))`` from :mod:`xreg_edu.simulate`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_finite, check_mask
from .spatial._validate import as_spacing, check_vector_field
from .spatial.jacobian import folding_fraction


def _check_group_field(x: Tensor, name: str) -> int:
    d = check_vector_field(x, name)
    if x.shape[0] < 2:
        raise ValueError(f"{name} must hold a group of N >= 2 images, got N = {x.shape[0]}")
    return d


def _check_weights(w: Tensor) -> None:
    """A soft mask holds finite weights >= 0."""
    check_finite(w, "mask")
    if bool((w < 0).any()):
        raise ValueError(f"mask has {int((w < 0).sum())} negative weight(s) (min {float(w.min()):.3g}); a soft mask "
                         f"holds weights >= 0 (e.g. a probability map): clamp it with mask.clamp(min=0)")


def _weights(mask, n: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Mask ``[*S] | [1,1,*S] | [N,1,*S]`` (bool or soft) -> weights ``[N|1, *S]``; ones if ``None``."""
    if mask is None:
        return torch.ones((1, *shape), device=like.device, dtype=like.dtype)
    mask = torch.as_tensor(mask, device=like.device)
    if mask.dim() == len(shape) + 2 and mask.shape[0] == n and mask.shape[0] > 1:
        if tuple(mask.shape[2:]) != shape or mask.shape[1] != 1:
            raise ValueError(f"mask {tuple(mask.shape)} does not match [N, 1, *S] = [{n}, 1, *{shape}]")
        w = mask[:, 0].to(like.dtype)
        _check_weights(w)
        if (w.flatten(1).sum(1) <= 0).any():
            raise ValueError("mask is empty for at least one image: it selects no voxel")
        return w
    if mask.is_floating_point() and not ((mask == 0) | (mask == 1)).all():
        if mask.numel() != torch.Size(shape).numel():
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the spatial shape {shape}")
        w = mask.reshape(shape).to(like.dtype)
        _check_weights(w)
        if w.sum() <= 0:
            raise ValueError("mask is empty: it selects no voxel")
        return w.unsqueeze(0)
    return check_mask(mask, shape).to(like.dtype).unsqueeze(0)


def group_registration_error(points: Tensor, mask=None, rms: bool = False) -> Tensor:
    """Groupwise registration error gRE (mm, spec §8.2).

    ``gRE = (1/N) sum_j (1/|F|) sum_{x in F} || psi_j(x) - mean_i psi_i(x) ||``; with ``rms=True`` the inner
    mean is a root-mean-square. Subtracting the group mean removes the unobservable common offset.

    Args:
        points: ``[N, d, *S]`` mm, ``psi_j`` mapping common space -> true space.
        mask: foreground ``F`` as ``[*S]``, ``[1, 1, *S]`` or per-image ``[N, 1, *S]`` (bool or soft weights).
        rms: root-mean-square instead of the mean Euclidean norm.

    Returns:
        scalar tensor (mm), differentiable.
    """
    _check_group_field(points, "points")
    shape = tuple(points.shape[2:])
    w = _weights(mask, points.shape[0], shape, points)
    dev = points - points.mean(dim=0, keepdim=True)
    norm2 = dev.pow(2).sum(1)  # [N, *S]
    if rms:
        per = torch.sqrt((norm2 * w).flatten(1).sum(1) / w.expand_as(norm2).flatten(1).sum(1))
    else:
        pos = norm2 > 0  # safe sqrt: finite gradient at a perfect registration
        norm = torch.where(pos, torch.sqrt(torch.where(pos, norm2, torch.ones_like(norm2))), torch.zeros_like(norm2))
        per = (norm * w).flatten(1).sum(1) / w.expand_as(norm2).flatten(1).sum(1)
    return per.mean()


def group_warping_index(displacement: Tensor, mask=None, unbiased: bool = True) -> Tensor:
    """Groupwise warping index gWI (spec §8.1): mean over images of the masked RMS residual displacement.

    Args:
        displacement: ``[N, d, *S]`` mm, residual ``res_j = psi_j - id`` (common -> true space).
        mask: ``[*S]``, ``[1, 1, *S]`` or per-image ``[N, 1, *S]`` (bool or soft weights, e.g. a warped label mask).
        unbiased: subtract the group mean residual first (the common space is only defined up to it).

    Returns:
        scalar tensor (mm).
    """
    _check_group_field(displacement, "displacement")
    shape = tuple(displacement.shape[2:])
    w = _weights(mask, displacement.shape[0], shape, displacement)
    res = displacement - displacement.mean(0, keepdim=True) if unbiased else displacement
    norm2 = res.pow(2).sum(1)
    per = torch.sqrt((norm2 * w).flatten(1).sum(1) / w.expand_as(norm2).flatten(1).sum(1))
    return per.mean()


def _check_labels(labels: Tensor) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() not in (4, 5) or labels.shape[1] != 1:
        raise ValueError(f"labels must have shape [N, 1, H, W] or [N, 1, D, H, W], got {tuple(labels.shape)}")
    if labels.shape[0] < 2:
        raise ValueError(f"labels must hold a group of N >= 2 label maps, got N = {labels.shape[0]}")
    return labels[:, 0]


def _classes(labels: Tensor, classes) -> list[int]:
    if classes is None:
        classes = [int(c) for c in torch.unique(labels).tolist() if c != 0]
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("no foreground class to evaluate (labels hold only background 0)")
    return classes


def group_dice(labels: Tensor, classes: Sequence[int] | None = None, per_class: bool = False):
    """Groupwise Dice: mean over ordered pairs i != j of the mean foreground-class Dice ``2|A∩B| / (|A|+|B|)``.

    Empty structures: a class absent from *both* maps of a pair is skipped for that pair (undefined); absent from
    one only gives 0. A class absent from every map is reported as NaN per class and left out of the mean.

    Args:
        labels: ``[N, 1, *S]`` integer label maps in the common space (0 = background).
        classes: foreground labels to evaluate; default = all non-zero values present.
        per_class: return ``{class: mean Dice over pairs}`` instead of the overall mean.

    Returns:
        float (or dict of floats).
    """
    lab = _check_labels(labels)
    classes = _classes(lab, classes)
    n = lab.shape[0]
    onehot = torch.stack([(lab == c).flatten(1) for c in classes], 1).double()  # [N, K, M]
    inter = torch.einsum("ikm,jkm->ijk", onehot, onehot)
    size = onehot.sum(-1)  # [N, K]
    denom = size[:, None, :] + size[None, :, :]
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.full_like(denom, float("nan")))
    off = ~torch.eye(n, dtype=torch.bool, device=dice.device)
    pairs = dice[off]  # [N(N-1), K]
    if per_class:
        return {c: float(torch.nanmean(pairs[:, k])) for k, c in enumerate(classes)}
    pair_mean = torch.nanmean(pairs, dim=1)
    if torch.isnan(pair_mean).all():
        raise ValueError("no pair of label maps contains any of the requested classes")
    return float(torch.nanmean(pair_mean))


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from the boundary voxels of ``a`` to the boundary of ``b`` and vice versa."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(a.ndim, 1)
    ba = a & ~ndimage.binary_erosion(a, structure, border_value=0)
    bb = b & ~ndimage.binary_erosion(b, structure, border_value=0)
    da = ndimage.distance_transform_edt(~bb, sampling=spacing)[ba]
    db = ndimage.distance_transform_edt(~ba, sampling=spacing)[bb]
    return da, db


def assd(labels: Tensor, spacing: Sequence[float] | float, classes: Sequence[int] | None = None) -> float:
    """Average symmetric surface distance (mm), averaged over classes and pairs i < j.

    Boundary = voxels of the structure removed by one erosion (face connectivity, image edge counts as outside);
    distances by ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``;
    ``ASSD(A, B) = (sum_{a in dA} d(a, dB) + sum_{b in dB} d(b, dA)) / (|dA| + |dB|)``.
    A pair where the class is missing from either map is skipped (undefined).

    Args:
        labels: ``[N, 1, *S]`` integer label maps in the common space; spacing: mm per axis.

    Returns:
        float (mm).
    """
    lab = _check_labels(labels)
    spacing = as_spacing(spacing, lab.dim() - 1)
    classes = _classes(lab, classes)
    arr = lab.detach().cpu().numpy()
    n = arr.shape[0]
    per_pair = []
    for i in range(n):
        for j in range(i + 1, n):
            vals = []
            for c in classes:
                a, b = arr[i] == c, arr[j] == c
                if not a.any() or not b.any():
                    continue
                da, db = _surface_distances(a, b, spacing)
                vals.append((da.sum() + db.sum()) / (da.size + db.size))
            if vals:
                per_pair.append(float(np.mean(vals)))
    if not per_pair:
        raise ValueError("ASSD undefined: no pair of label maps shares any of the requested classes")
    return float(np.mean(per_pair))


def folding_percentage(displacement: Tensor, spacing: Sequence[float] | float) -> Tensor:
    """Percentage of voxels with ``det(I + grad u) <= 0``: ``[N, d, *S]`` (mm) -> ``[N]`` in [0, 100]."""
    return 100 * folding_fraction(displacement, spacing)
